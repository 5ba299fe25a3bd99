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
    /// An assertion that did not verify: a key not registered, a wrong signature, or a
    /// signature counter that went back (a copied key).
    #[error("the passkey was not accepted: it is not one of yours, or it looks copied (its counter went back)")]
    BadPasskey,
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
    /// A protection refused (`LastGlobalAdministratorRule`): a security decision, audited.
    #[error("{0}")]
    Protected(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (a permission, an ownership, a protection).
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's token was not accepted by a service asked on their behalf.
    #[error("{0}")]
    Unauthenticated(String),
    /// Another service this one asks could not answer.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Another service's answer (an access check, a lookup made on the caller's behalf), in this
/// service's words: a refusal stays a refusal; anything else is that service being
/// unavailable (its internals are not passed on).
impl From<Status> for Error {
    fn from(status: Status) -> Self {
        match status.code() {
            tonic::Code::PermissionDenied => Self::PermissionDenied(status.message().into()),
            tonic::Code::Unauthenticated => Self::Unauthenticated(status.message().into()),
            tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                Self::FailedPrecondition(status.message().into())
            }
            code => {
                tracing::warn!(?code, "a service asked on the caller's behalf failed");
                Self::Unavailable("a service this call depends on is unavailable; try again".into())
            }
        }
    }
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
            Error::NotFound(_) => pim_runtime::grpc::not_found(&err.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(err.to_string()),
            Error::BadCredentials
            | Error::BadClientCredentials
            | Error::BadCode
            | Error::BadPasskey
            | Error::BadRefresh => Status::unauthenticated(err.to_string()),
            Error::BadPass | Error::WrongPassword => Status::permission_denied(err.to_string()),
            Error::MfaRequired(message) => pim_runtime::grpc::failed_precondition(
                "user",
                &[pim_runtime::grpc::RuleViolation {
                    kind: "MfaRule",
                    message,
                }],
            ),
            Error::Locked(m) => Status::resource_exhausted(m),
            Error::Protected(message) => pim_runtime::grpc::failed_precondition(
                "user",
                &[pim_runtime::grpc::RuleViolation {
                    kind: pim_runtime::grpc::LAST_GLOBAL_ADMINISTRATOR_RULE,
                    message,
                }],
            ),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Internal(err) => pim_runtime::grpc::internal(err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
