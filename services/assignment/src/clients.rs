//! The service assignment asks: the directory (identity), on a caller's behalf: who a
//! principal is, and whether the caller owns a group directly. Identity's answers come back
//! in assignment's words; its outages as UNAVAILABLE to retry, never as a decision.

use tonic::transport::Channel;

use pim_proto::common::v1::PrincipalKind;
use pim_proto::identity::v1::GetPrincipalRequest;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::auth::Caller;

use crate::error::{Error, Result};

/// A principal as the directory knows it.
pub(crate) struct Principal {
    /// The directory's id (asked by id or, for a user, by user name).
    pub id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub is_assignable_to_role: bool,
}

#[derive(Clone)]
pub struct Directory(DirectoryServiceClient<Channel>);

impl Directory {
    pub fn new(channel: Channel) -> Self {
        Self(DirectoryServiceClient::new(channel))
    }

    /// The principal `id` names, enabled; NOT_FOUND, FAILED_PRECONDITION (disabled) or the
    /// directory's own refusal otherwise.
    pub(crate) async fn principal(&self, caller: &Caller, id: &str) -> Result<Principal> {
        let (principal, enabled) = self.any_principal(caller, id).await?;
        if !enabled {
            return Err(Error::FailedPrecondition(format!("principal {id} is disabled")));
        }
        Ok(principal)
    }

    /// The principal `id` names, enabled or not (with which); NOT_FOUND or the directory's
    /// own refusal otherwise.
    pub(crate) async fn any_principal(&self, caller: &Caller, id: &str) -> Result<(Principal, bool)> {
        let request = pim_runtime::access::on_behalf_of(
            caller,
            GetPrincipalRequest {
                principal_id: id.to_owned(),
            },
        )?;
        match self.0.clone().get_principal(request).await {
            Ok(p) => {
                let p = p.into_inner();
                let principal = Principal {
                    id: p.id,
                    kind: PrincipalKind::try_from(p.kind).unwrap_or(PrincipalKind::User),
                    name: p.display_name,
                    is_assignable_to_role: p.is_assignable_to_role,
                };
                Ok((principal, p.enabled))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Err(Error::NotFound(format!("principal {id}"))),
            // The directory's own refusal (the caller may not look principals up), as it said it.
            Err(s) if s.code() == tonic::Code::PermissionDenied => Err(Error::PermissionDenied(s.message().into())),
            Err(s) if s.code() == tonic::Code::InvalidArgument => Err(Error::invalid("principal_id", s.message())),
            Err(s) => {
                tracing::warn!(code = ?s.code(), "identity lookup failed");
                Err(Error::Unavailable(
                    "the identity service is unavailable; try again".into(),
                ))
            }
        }
    }

    /// Whether the caller is a direct owner of the group (added as one, not through PIM).
    pub(crate) async fn directly_owns(&self, caller: &Caller, group_id: &str) -> Result<bool> {
        Ok(pim_runtime::access::directly_owns(&self.0, caller, group_id).await?)
    }
}
