//! The error vocabulary services' domain code answers in, and its one mapping to gRPC status
//! (with rich details for a bad field). Domain code returns these; only a service's gRPC
//! adapter turns them into `tonic::Status`. Services with words of their own (assignment's
//! policy violations, identity's lockouts) keep an enum of their own beside it.

use tonic::Status;

use crate::grpc::{internal, invalid_argument};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// The caller may not do this (e.g. not an approver of the stage).
    #[error("{0}")]
    PermissionDenied(String),
    /// A state rule (e.g. already decided, expired, not in progress).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won; nothing was applied (look again).
    #[error("{0}")]
    Aborted(String),
    /// Another service this one asks could not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's token could not be used on their behalf.
    #[error("{0}")]
    Unauthenticated(String),

    /// An answer of another service (e.g. an access check), passed on as it came.
    #[error(transparent)]
    Status(#[from] Status),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// Whether this refuses the request on its merits (the caller may not, the state forbids
    /// it, or there is no such thing), rather than for malformed input, a race to retry or a
    /// fault: what is audited as a refused decision.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.code(),
            tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::NotFound
        )
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// What the caller is told (the message of the answer).
    pub fn message(&self) -> String {
        match self {
            Error::Status(status) => status.message().to_owned(),
            Error::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Status(status) => status.code(),
            Error::Internal(_) => Code::Internal,
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
            Error::InvalidArgument { field, message } => invalid_argument(field, &message),
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Status(status) => status,
            Error::Internal(err) => internal(err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
