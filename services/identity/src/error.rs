//! What callers of the identity service branch on, and its one mapping to gRPC status.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Sign-in failed; the same words whether the name is unknown or the secret wrong.
    #[error("user name or password is incorrect")]
    BadCredentials,
    #[error("client id or secret is incorrect")]
    BadClientCredentials,
    #[error("the code is incorrect or was used already")]
    BadCode,
    #[error("refresh token is not valid: sign in again")]
    BadRefresh,
    #[error("the enrolment pass is not valid: wrong, expired or used up (ask an administrator for a new one)")]
    BadPass,
    #[error("the current password is incorrect")]
    WrongPassword,
    /// A rule wants a recent MFA; the client steps up and retries (`MfaRule`).
    #[error("{0}")]
    MfaRequired(String),
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Denied(#[from] Status),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Internal(err.into())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, message } => pim_runtime::grpc::invalid_argument(field, &message),
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(err.to_string()),
            Error::BadCredentials | Error::BadClientCredentials | Error::BadCode | Error::BadRefresh => {
                Status::unauthenticated(err.to_string())
            }
            Error::BadPass | Error::WrongPassword => Status::permission_denied(err.to_string()),
            Error::MfaRequired(message) => pim_runtime::grpc::failed_precondition(
                "user",
                &[pim_runtime::grpc::RuleViolation {
                    kind: "MfaRule",
                    message,
                }],
            ),
            Error::Locked(m) => Status::resource_exhausted(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Denied(status) => status,
            Error::Internal(err) => pim_runtime::grpc::internal(err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
