//! Applying a plan: each change made, names looked up again once something was created.

use super::*;

/// Adds or removes a member or an owner of a group.
async fn change_membership(
    session: &Session,
    asked: ipb::GroupMembershipRequest,
    owner: bool,
    add: bool,
) -> Result<tonic::Response<ipb::GroupMembershipResponse>, tonic::Status> {
    let request = session.request(asked).map_err(crate::cli::mfa::status_of)?;
    let mut directory = DirectoryServiceClient::new(session.channel.clone());
    match (owner, add) {
        (false, true) => directory.add_group_member(request).await,
        (false, false) => directory.remove_group_member(request).await,
        (true, true) => directory.add_group_owner(request).await,
        (true, false) => directory.remove_group_owner(request).await,
    }
}

/// Makes each change, looking names up in a snapshot read again after something was created.
pub(super) struct Applier {
    pub(super) session: Session,
    /// Where to step up, with what code, and whether it was done already: once a role's
    /// policy asks for the administrator's recent MFA.
    pub(super) client: ClientArgs,
    pub(super) code: Option<String>,
    pub(super) stepped_up: bool,
    pub(super) snapshot: Snapshot,
    pub(super) stale: bool,
    pub(super) source: String,
    /// Roles whose policy this apply changed already (ids): a later scope of one has a
    /// new version by then, so its write is not tied to the version the plan read.
    pub(super) policies_written: BTreeSet<String>,
}

impl Applier {
    pub(super) async fn fresh(&mut self) -> anyhow::Result<&Snapshot> {
        if self.stale {
            self.snapshot = Snapshot::read(&self.session).await?;
            self.stale = false;
        }
        Ok(&self.snapshot)
    }

    pub(super) async fn principal_id(&mut self, reference: &str) -> anyhow::Result<String> {
        let snapshot = self.fresh().await?;
        Ok(snapshot
            .directory
            .resolve(reference)
            .map_err(anyhow::Error::msg)?
            .id
            .clone())
    }

    pub(super) async fn role_id(&mut self, name: &str) -> anyhow::Result<String> {
        let snapshot = self.fresh().await?;
        Ok(snapshot
            .role(name)
            .with_context(|| format!("no role is named {name:?}"))?
            .id
            .clone())
    }

    pub(super) async fn group_id(&mut self, name: &str) -> anyhow::Result<String> {
        let snapshot = self.fresh().await?;
        match snapshot.groups_named(name).as_slice() {
            [group] => Ok(group.id.clone()),
            _ => bail!("no single group is named {name:?}"),
        }
    }

    /// A scope as the plan wrote it: `group:NAME` for a group this apply created is that
    /// group's scope now.
    pub(super) async fn scope(&mut self, scope: &str) -> anyhow::Result<String> {
        match scope.strip_prefix("group:") {
            Some(name) => Ok(pim_proto::catalogue::group_scope(&self.group_id(name).await?)),
            None => Ok(scope.to_owned()),
        }
    }

    pub(super) async fn apply(&mut self, step: &Step) -> anyhow::Result<()> {
        let session = &self.session.clone();
        let roles = || RoleServiceClient::new(session.channel.clone());
        let directory = || DirectoryServiceClient::new(session.channel.clone());
        let assignments = || AssignmentServiceClient::new(session.channel.clone());
        match step {
            Step::CreateRole(create) => {
                roles()
                    .create_role_definition(session.request(create.clone())?)
                    .await
                    .map_err(explain)?;
                self.stale = true;
            }
            Step::UpdateRole(update) => {
                roles()
                    .update_role_definition(session.request(update.clone())?)
                    .await
                    .map_err(explain)?;
            }
            Step::CreateGroup(spec) => {
                let created = directory()
                    .create_group(session.request(ipb::CreateGroupRequest {
                        display_name: spec.name.clone(),
                        description: spec.description.clone(),
                        is_assignable_to_role: spec.role_assignable,
                        owner_ids: Vec::new(),
                    })?)
                    .await
                    .map_err(explain)?;
                session.remember(created);
                self.stale = true;
            }
            Step::UpdateGroup { id, name, description } => {
                directory()
                    .update_group(session.request(ipb::UpdateGroupRequest {
                        group_id: id.clone(),
                        display_name: name.clone(),
                        description: description.clone(),
                        is_assignable_to_role: None,
                    })?)
                    .await
                    .map_err(explain)?;
            }
            Step::Membership {
                group,
                principal,
                owner,
                add,
            } => {
                let asked = ipb::GroupMembershipRequest {
                    group_id: self.group_id(group).await?,
                    principal_id: self.principal_id(principal).await?,
                };
                let (owner, add) = (*owner, *add);
                let answer = match change_membership(session, asked.clone(), owner, add).await {
                    // A member or owner of a role-assignable group wants the administrator's
                    // recent MFA: step up once, as for an active assignment.
                    Err(status) if !self.stepped_up && crate::cli::mfa::wants_mfa(&status) => {
                        let what = format!("Adding {principal} to {group}");
                        let code = self.code.clone();
                        self.session = crate::cli::mfa::stepped_up_for(&self.client, &what, session, code).await?;
                        self.stepped_up = true;
                        change_membership(&self.session, asked, owner, add).await
                    }
                    answer => answer,
                }
                .map_err(explain)?;
                self.session.remember(answer);
            }
            Step::Policy { spec, mask, etag } => {
                let role_id = self.role_id(&spec.role).await?;
                let spec = PolicySpec {
                    scope: self.scope(&spec.scope).await?,
                    ..spec.as_ref().clone()
                };
                let snapshot = self.fresh().await?;
                let mut policy = policy::to_pb(&spec, |r| snapshot.directory.resolve(r).map(|k| k.id.clone()))
                    .map_err(|errors| {
                        anyhow::anyhow!("{}", errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>().join("; "))
                    })?;
                policy.etag = if self.policies_written.contains(&role_id) {
                    String::new()
                } else {
                    etag.clone()
                };
                self.policies_written.insert(role_id.clone());
                policy.role_id = role_id;
                let updated = PolicyServiceClient::new(session.channel.clone())
                    .update_role_policy(session.request(apb::UpdateRolePolicyRequest {
                        policy: Some(policy),
                        update_mask: Some(prost_types::FieldMask {
                            paths: mask.iter().map(|p| (*p).to_owned()).collect(),
                        }),
                        validate_only: false,
                    })?)
                    .await
                    .map_err(explain)?
                    .into_inner();
                crate::cli::policy::warn_without_people(session, &updated).await;
            }
            Step::Assign {
                kind,
                principal,
                role,
                scope,
                end,
            }
            | Step::ChangeEnd {
                kind,
                principal,
                role,
                scope,
                end,
            } => {
                let action = if matches!(step, Step::Assign { .. }) {
                    apb::RequestAction::AdminAssign
                } else {
                    apb::RequestAction::AdminUpdate
                };
                let principal_id = self.principal_id(principal).await?;
                let role_id = self.role_id(role).await?;
                let scope = self.scope(scope).await?;
                let mut request = assignment_request(action, *kind, &principal_id, &role_id, &scope, *end);
                request.justification = justification(&self.source);
                let answer = match assignments().create_request(session.request(request.clone())?).await {
                    // The role's policy wants the administrator's recent MFA: step up once,
                    // and ask again in the stepped-up session (kept for the changes after).
                    Err(status) if !self.stepped_up && crate::cli::mfa::wants_mfa(&status) => {
                        let what = format!("Assigning {role}");
                        let code = self.code.clone();
                        self.session = crate::cli::mfa::stepped_up_for(&self.client, &what, session, code).await?;
                        self.stepped_up = true;
                        AssignmentServiceClient::new(self.session.channel.clone())
                            .create_request(self.session.request(request)?)
                            .await
                    }
                    answer => answer,
                }
                .map_err(explain)?;
                self.session.remember(answer);
            }
            Step::Remove {
                kind,
                principal,
                role,
                scope,
            } => {
                let request = apb::CreateRequestRequest {
                    action: apb::RequestAction::AdminRemove as i32,
                    kind: *kind as i32,
                    principal_id: principal.clone(),
                    role_id: role.clone(),
                    scope: scope.clone(),
                    schedule: None,
                    justification: format!("not in {}, which prunes the role; removed by pim apply", self.source),
                    ticket: None,
                    validate_only: false,
                };
                let answer = assignments()
                    .create_request(session.request(request)?)
                    .await
                    .map_err(explain)?;
                session.remember(answer);
            }
        }
        Ok(())
    }
}
