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
    /// Rules the request breaks, each machine-readable (`MfaRule`: step up and retry):
    /// FAILED_PRECONDITION with a `PreconditionFailure` naming `subject`.
    #[error("{}", .violations.iter().map(|v| format!("{}: {}", v.kind, v.message)).collect::<Vec<_>>().join("; "))]
    RuleViolated {
        subject: &'static str,
        violations: Vec<crate::grpc::RuleViolation>,
    },
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
            Error::Internal(err) if crate::db::nul_in(err) => crate::db::NUL_REFUSED.to_owned(),
            Error::Internal(err) => crate::db::conflict_in(err).unwrap_or_else(|| "internal error".to_owned()),
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
            Error::FailedPrecondition(_) | Error::RuleViolated { .. } => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Status(status) => status.code(),
            Error::Internal(err) if crate::db::conflict_in(err).is_some() => Code::Aborted,
            Error::Internal(err) if crate::db::nul_in(err) => Code::InvalidArgument,
            Error::Internal(err) if crate::db::busy_in(err) => Code::Unavailable,
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
            Error::NotFound(_) => crate::grpc::not_found(&err.to_string()),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::RuleViolated { subject, violations } => crate::grpc::failed_precondition(subject, &violations),
            Error::Aborted(m) => Status::aborted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Status(status) => status,
            Error::Internal(err) => internal(err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    use super::*;

    /// Two transactions that lock the same rows in opposite orders deadlock on PostgreSQL:
    /// the one it gives up answers ABORTED ("try again"), never INTERNAL, as it comes or
    /// wrapped in context, and so does a serialization failure; any other fault stays INTERNAL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_the_database_gave_up_for_another_is_aborted() -> anyhow::Result<()> {
        let database = crate::testing::TestDatabase::create("conflicts").await?;
        let db = crate::db::connect(&database.url).await?;
        let outcome = async {
            db.execute_unprepared("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0), (2, 0)")
                .await?;
            let update = |id: i32| format!("UPDATE t SET v = v + 1 WHERE id = {id}");
            let (a, b) = (db.begin().await?, db.begin().await?);
            a.execute_unprepared(&update(1)).await?;
            b.execute_unprepared(&update(2)).await?;
            let (a_then, b_then) = (update(2), update(1));
            let (on_a, on_b) = tokio::join!(a.execute_unprepared(&a_then), b.execute_unprepared(&b_then));
            let given_up = match (on_a, on_b) {
                (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
                other => anyhow::bail!("PostgreSQL gives up exactly one of the two: {other:?}"),
            };
            let error = Error::from(given_up);
            assert_eq!((error.code(), error.is_refusal()), (tonic::Code::Aborted, false));
            let status = Status::from(error);
            assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
            assert!(status.message().ends_with("try again"), "{status:?}");

            let serialization = db
                .execute_unprepared("DO $$ BEGIN RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001'; END $$")
                .await
                .expect_err("raised");
            let wrapped = anyhow::Error::new(serialization).context("approving a request");
            let status = Status::from(Error::Internal(wrapped));
            assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
            assert!(!status.message().contains("serialize"), "{status:?}");

            let fault = db
                .execute_unprepared("SELECT * FROM missing")
                .await
                .expect_err("no table");
            let status = Status::from(Error::from(fault));
            assert_eq!(status.code(), tonic::Code::Internal);
            assert_eq!(status.message(), "internal error");

            // Text PostgreSQL cannot keep is the caller's bad input, whichever field held it.
            let nul = crate::db::query(&db, "SELECT id FROM t WHERE id::text = $1", vec!["1\0".into()])
                .await
                .expect_err("PostgreSQL refuses a NUL in text");
            let status = Status::from(Error::from(nul));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("NUL"), "{status:?}");
            anyhow::Ok(())
        }
        .await;
        db.close().await.ok();
        database.drop_database().await?;
        outcome
    }
}
