//! What callers of the assignment service branch on, and its one mapping to gRPC status.

use std::time::Duration;

use tonic::Status;

use pim_runtime::consistency::Stale;
use pim_runtime::grpc::{RuleViolation, failed_precondition, internal, invalid_argument, unavailable_retry};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Policy rules that refused the request, each with its machine-readable kind.
    #[error("policy rules failed: {0:?}")]
    PolicyViolation(Vec<RuleViolation>),
    /// A state rule (e.g. removing the last Global Administrator).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The caller may not do this (a permission it lacks, someone else's request).
    #[error("{0}")]
    PermissionDenied(String),
    /// Another service this one asks could not answer.
    #[error("{0}")]
    Unavailable(String),

    /// A concurrent change committed between this call's read and its write; nothing was
    /// applied (ABORTED: look again, then retry if still wanted).
    #[error("{0}")]
    Aborted(String),

    /// A read asked for a freshness this replica has not reached within the call's deadline.
    #[error("{0}")]
    Stale(pim_runtime::consistency::Stale),

    #[error(transparent)]
    Status(#[from] Status),
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

    /// For an event handler: a fault keeps its chain (so a database conflict is still seen as
    /// one, and the event is applied again at once); anything else becomes its message.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            Self::Internal(fault) => fault,
            other => anyhow::anyhow!("{other}"),
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
            Error::NotFound(_) => pim_runtime::grpc::not_found(&err.to_string()),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::PolicyViolation(v) => failed_precondition("request", &v),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Stale(stale @ Stale::Unfollowed(_)) => invalid_argument("at_least_as_fresh", &stale.to_string()),
            Error::Stale(stale) => unavailable_retry(&stale.to_string(), Duration::from_millis(100)),

            Error::Status(status) => status,
            Error::Internal(err) => internal(err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
