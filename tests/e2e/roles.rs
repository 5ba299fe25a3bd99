//! Custom roles, on PostgreSQL + Redis and on the embedded default: created with permissions
//! of an app's own, held just in time like a built-in role, checked by permission (wildcards
//! included) at a scope and below, and deleted only once nobody holds them.

use std::time::Duration;

use tonic::Code;

use pim_e2e::authed;
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;

use crate::activation::{
    EXCHANGE_ADMINISTRATOR, GLOBAL_ADMINISTRATOR, HOUR_MS, World, activation, request, run_on_both,
};

const PAYMENTS: &str = "/apps/payments";

impl World {
    fn roles(&self) -> RoleServiceClient<tonic::transport::Channel> {
        RoleServiceClient::new(self.ts.channel.clone())
    }

    /// Whether `principal` holds `permission` at `scope` now.
    async fn check_permission(
        &self,
        principal: &str,
        permission: &str,
        scope: &str,
    ) -> anyhow::Result<apb::CheckAccessResponse> {
        Ok(AccessServiceClient::new(self.ts.channel.clone())
            .check_access(authed(
                &self.admin,
                apb::CheckAccessRequest {
                    principal_id: principal.into(),
                    target: Some(apb::check_access_request::Target::Permission(permission.into())),
                    scope: scope.into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner())
    }
}

fn new_role(name: &str, permissions: &[&str]) -> apb::CreateRoleDefinitionRequest {
    apb::CreateRoleDefinitionRequest {
        name: name.into(),
        description: "Approves refunds of the payments app".into(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        privileged: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_roles_grant_their_permissions_just_in_time_and_go_only_when_unused() -> anyhow::Result<()> {
    run_on_both(|w| async move {
        let mut roles = w.roles();
        let refunder = roles
            .create_role_definition(authed(
                &w.admin,
                new_role(
                    "Payments Refunder",
                    &["app.payments/refunds/approve", "app.payments/reports/*"],
                ),
            ))
            .await?
            .into_inner();
        assert!(!refunder.built_in && !refunder.privileged, "{refunder:?}");
        let listed = roles
            .list_role_definitions(authed(&w.admin, apb::ListRoleDefinitionsRequest {}))
            .await?
            .into_inner()
            .roles;
        assert!(listed.iter().any(|r| r.id == refunder.id));

        // Names are unique whatever their case; permissions are paths; built-ins are read-only;
        // a role with a permission of the suite's own administration is privileged.
        let taken = roles
            .create_role_definition(authed(&w.admin, new_role("payments refunder", &["app.x/y"])))
            .await
            .expect_err("name taken");
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
        // Nor does spacing tell two roles apart.
        for look_alike in ["Global  Administrator", "Security Reader  Extra"] {
            let refused = roles
                .create_role_definition(authed(&w.admin, new_role(look_alike, &["app.x/y"])))
                .await
                .expect_err("a look-alike");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().contains("single spaces"), "{refused:?}");
        }
        let bad = roles
            .create_role_definition(authed(&w.admin, new_role("Bad", &["app.payments//refunds"])))
            .await
            .expect_err("not a permission");
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("permissions"), "{bad:?}");
        let reader = roles
            .create_role_definition(authed(
                &w.admin,
                new_role("Assignment Reader", &["pim.assignments.read"]),
            ))
            .await?
            .into_inner();
        assert!(reader.privileged);
        let built_in = roles
            .update_role_definition(authed(
                &w.admin,
                apb::UpdateRoleDefinitionRequest {
                    role: EXCHANGE_ADMINISTRATOR.into(),
                    permissions: vec!["*".into()],
                    ..Default::default()
                },
            ))
            .await
            .expect_err("built-in");
        assert_eq!(built_in.code(), Code::FailedPrecondition);
        let lee = w.user("lee").await?;
        // Alerting treats a privileged custom role as a built-in one: activating it without
        // MFA is flagged (and weakens its policy), and so does a permission added to it.
        PolicyServiceClient::new(w.ts.channel.clone())
            .update_role_policy(authed(
                &w.admin,
                apb::UpdateRolePolicyRequest {
                    policy: Some(apb::RolePolicy {
                        role_id: reader.id.clone(),
                        scope: "/".into(),
                        activation_requires_mfa: false,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["activation_requires_mfa".into()],
                    }),
                    validate_only: false,
                },
            ))
            .await?;
        w.alert("activation_without_mfa", |a| a.role_id == reader.id).await?;
        roles
            .update_role_definition(authed(
                &w.admin,
                apb::UpdateRoleDefinitionRequest {
                    role: reader.id.clone(),
                    permissions: vec!["pim.assignments.read".into(), "pim.assignments.manage".into()],
                    ..Default::default()
                },
            ))
            .await?;
        let weakened = w
            .alert("policy_weakened", |a| {
                a.role_id == reader.id && a.figures.contains_key("permissions_added")
            })
            .await?;
        assert_eq!(
            weakened.figures.get("permissions_added").map(String::as_str),
            Some("pim.assignments.manage")
        );
        let refused = roles
            .create_role_definition(authed(&lee.token, new_role("Mine", &["app.x/y"])))
            .await
            .expect_err("lee manages no roles");
        assert_eq!(refused.code(), Code::PermissionDenied);
        // Kim manages roles and nothing else: she may not make a role she holds, or a new
        // one, hold more than she does (she would hold everything next); what she holds, she
        // may give a role.
        let editor = roles
            .create_role_definition(authed(&w.admin, new_role("Role Editor", &["pim.roles.manage"])))
            .await?
            .into_inner();
        let kim = w.user("kim").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    justification: "looks after role definitions".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Active,
                        &kim.id,
                        &editor.id,
                    )
                },
            ))
            .await?;
        let everything = roles
            .update_role_definition(authed(
                &kim.token,
                apb::UpdateRoleDefinitionRequest {
                    role: editor.id.clone(),
                    permissions: vec!["pim.roles.manage".into(), "*".into()],
                    ..Default::default()
                },
            ))
            .await
            .expect_err("Kim does not hold everything");
        assert_eq!(everything.code(), Code::PermissionDenied, "{everything:?}");
        assert!(everything.message().contains("* is not one of yours"), "{everything:?}");
        for permissions in [&["pim.assignments.manage"][..], &["app.payments/*"]] {
            let more = roles
                .create_role_definition(authed(&kim.token, new_role("Kim's Own", permissions)))
                .await
                .expect_err("Kim holds neither");
            assert_eq!(more.code(), Code::PermissionDenied, "{more:?}");
        }
        roles
            .create_role_definition(authed(&kim.token, new_role("Role Editor Two", &["pim.roles.manage"])))
            .await?;
        // Nor does one who may edit policies lower a role's protection unless they may assign
        // it there: else they would switch off the approval of a role they may activate, or
        // make their own second account its approver. Tightening is theirs.
        let policy_editor = roles
            .create_role_definition(authed(&w.admin, new_role("Policy Editor", &["pim.policies.manage"])))
            .await?
            .into_inner();
        let pol = w.user("pol").await?;
        use apb::AssignmentKind::{Active, Eligible};
        let give = |kind: apb::AssignmentKind, role: &str, scope: &str| apb::CreateRequestRequest {
            scope: scope.into(),
            justification: "edits policies".into(),
            ..request(apb::RequestAction::AdminAssign, kind, &pol.id, role)
        };
        for (kind, role) in [(Active, policy_editor.id.as_str()), (Eligible, GLOBAL_ADMINISTRATOR)] {
            w.assignments()
                .create_request(authed(&w.admin, give(kind, role, "/")))
                .await?;
        }
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        type Set = fn(&mut apb::RolePolicy);
        let setting = |role: &str, scope: &str, path: &str, set: Set, validate_only: bool| {
            let mut policy = apb::RolePolicy {
                role_id: role.into(),
                scope: scope.into(),
                ..Default::default()
            };
            set(&mut policy);
            apb::UpdateRolePolicyRequest {
                policy: Some(policy),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![path.into()],
                }),
                validate_only,
            }
        };
        let approval = apb::UpdateRolePolicyRequest {
            policy: Some(apb::RolePolicy {
                role_id: GLOBAL_ADMINISTRATOR.into(),
                scope: "/".into(),
                approval_required: true,
                approver_ids: vec![w.admin_id().await?],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["approval_required".into(), "approver_ids".into()],
            }),
            validate_only: false,
        };
        policies.update_role_policy(authed(&w.admin, approval)).await?;
        let weaker: [(&str, Set); 3] = [
            ("approval_required", |p| p.approval_required = false),
            ("approver_ids", |p| p.approver_ids = vec!["pol".into()]),
            ("activation_requires_mfa", |p| p.activation_requires_mfa = false),
        ];
        for (path, set) in weaker {
            for validate_only in [true, false] {
                let refused = policies
                    .update_role_policy(authed(
                        &pol.token,
                        setting(GLOBAL_ADMINISTRATOR, "/", path, set, validate_only),
                    ))
                    .await
                    .expect_err(path);
                assert_eq!(refused.code(), Code::PermissionDenied, "{path}: {refused:?}");
                assert!(
                    refused.message().contains("pim.assignments.manage") && refused.message().contains(path),
                    "{refused:?}"
                );
            }
        }
        let ga = policies
            .get_role_policy(authed(
                &w.admin,
                apb::GetRolePolicyRequest {
                    role_id: GLOBAL_ADMINISTRATOR.into(),
                    scope: "/".into(),
                },
            ))
            .await?
            .into_inner();
        assert!(ga.approval_required && ga.activation_requires_mfa, "unchanged: {ga:?}");
        let ticket: Set = |p| p.activation_requires_ticket = true;
        policies
            .update_role_policy(authed(
                &pol.token,
                setting(GLOBAL_ADMINISTRATOR, "/", "activation_requires_ticket", ticket, false),
            ))
            .await?;
        // Nor does a role's editor unmark a privileged role (its holders' credentials would
        // then be reset by any Authentication Administrator), unless they may hand it out.
        let vault = apb::CreateRoleDefinitionRequest {
            privileged: true,
            ..new_role("Vault Opener", &["app.vault/open"])
        };
        let vault = roles
            .create_role_definition(authed(&w.admin, vault))
            .await?
            .into_inner();
        let unmark = apb::UpdateRoleDefinitionRequest {
            role: vault.id.clone(),
            privileged: Some(false),
            ..Default::default()
        };
        let refused = roles
            .update_role_definition(authed(&kim.token, unmark.clone()))
            .await
            .expect_err("Kim may not hand the role out");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("Vault Opener is privileged"), "{refused:?}");
        // A Privileged Role Administrator may assign the role: they lower it as they like.
        let no_ticket: Set = |p| p.activation_requires_ticket = false;
        w.assignments()
            .create_request(authed(
                &w.admin,
                give(Active, pim_proto::catalogue::PRIVILEGED_ROLE_ADMINISTRATOR, "/"),
            ))
            .await?;
        policies
            .update_role_policy(authed(
                &pol.token,
                setting(
                    GLOBAL_ADMINISTRATOR,
                    "/",
                    "activation_requires_ticket",
                    no_ticket,
                    false,
                ),
            ))
            .await?;
        let unmarked = roles
            .update_role_definition(authed(&pol.token, unmark))
            .await?
            .into_inner();
        assert!(!unmarked.privileged, "{unmarked:?}");
        // Nobody grants themselves access to a group, so nor does one who may assign it lower
        // its policy while they may activate it.
        use pim_proto::catalogue::{GROUP_MEMBER, group_scope};
        let team = pim_proto::identity::v1::directory_service_client::DirectoryServiceClient::new(w.ts.channel.clone())
            .create_group(authed(
                &w.admin,
                pim_proto::identity::v1::CreateGroupRequest {
                    display_name: "pol-team".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let at_team = group_scope(&team.id);
        let member = give(Eligible, GROUP_MEMBER, &at_team);
        w.assignments().create_request(authed(&w.admin, member)).await?;
        let no_reason: Set = |p| p.activation_requires_justification = false;
        let own = setting(
            GROUP_MEMBER,
            &at_team,
            "activation_requires_justification",
            no_reason,
            false,
        );
        let refused = policies
            .update_role_policy(authed(&pol.token, own.clone()))
            .await
            .expect_err("pol may activate it");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("which you may activate"), "{refused:?}");
        policies.update_role_policy(authed(&w.admin, own)).await?;
        // A Privileged Role Administrator holds no app permission, but may hand out any role
        // already: they define an app's roles as they like.
        let pat = w.user("pat").await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    justification: "defines the apps' roles".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Active,
                        &pat.id,
                        pim_proto::catalogue::PRIVILEGED_ROLE_ADMINISTRATOR,
                    )
                },
            ))
            .await?;
        roles
            .create_role_definition(authed(&pat.token, new_role("Payments Auditor", &["app.payments/*"])))
            .await?;

        // Lee is eligible at the payments app and activates the role there, as a built-in one.
        let eligible = apb::CreateRequestRequest {
            scope: PAYMENTS.into(),
            ..request(
                apb::RequestAction::AdminAssign,
                apb::AssignmentKind::Eligible,
                &lee.id,
                &refunder.id,
            )
        };
        w.assignments().create_request(authed(&w.admin, eligible)).await?;
        let refund = "app.payments/refunds/approve";
        assert!(
            !w.check_permission(&lee.id, refund, PAYMENTS).await?.allowed,
            "eligible is not active"
        );
        let activate = apb::CreateRequestRequest {
            scope: PAYMENTS.into(),
            ..activation(&refunder.id, HOUR_MS, "refund backlog INC42")
        };
        w.assignments()
            .create_request(authed(&w.stepped_up(&lee)?, activate))
            .await?;
        let below = w.check_permission(&lee.id, refund, "/apps/payments/eu").await?;
        assert!(
            below.allowed && below.expires_at.is_some() && below.assignment_ids.len() == 1,
            "{below:?}"
        );
        let grant = &below.grants[0];
        assert_eq!(
            (grant.role_id.as_str(), grant.role_name.as_str(), grant.scope.as_str()),
            (refunder.id.as_str(), "Payments Refunder", PAYMENTS)
        );
        assert_eq!(grant.assignment_id, below.assignment_ids[0]);
        assert_eq!(grant.end_time, below.expires_at);
        assert!(grant.via_group_id.is_empty());
        assert!(
            w.check_permission(&lee.id, "app.payments/reports/monthly/pdf", PAYMENTS)
                .await?
                .allowed,
            "a last * matches the rest"
        );
        assert!(
            !w.check_permission(&lee.id, refund, "/apps/shop").await?.allowed,
            "elsewhere"
        );
        assert!(
            !w.check_permission(&lee.id, "app.payments/refunds/read", PAYMENTS)
                .await?
                .allowed
        );
        assert!(
            !w.check_permission(&lee.id, "app.payments/reports", PAYMENTS)
                .await?
                .allowed
        );
        let wildcard = AccessServiceClient::new(w.ts.channel.clone())
            .check_access(authed(
                &w.admin,
                apb::CheckAccessRequest {
                    principal_id: lee.id.clone(),
                    target: Some(apb::check_access_request::Target::Permission("app.payments/*".into())),
                    scope: PAYMENTS.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a check names one permission");
        assert_eq!(wildcard.code(), Code::InvalidArgument);

        // While assigned, the role stays; the refusal says how many hold it.
        let in_use = roles
            .delete_role_definition(authed(
                &w.admin,
                apb::GetRoleDefinitionRequest {
                    role: "Payments Refunder".into(),
                },
            ))
            .await
            .expect_err("assigned");
        assert_eq!(in_use.code(), Code::FailedPrecondition);
        assert!(
            in_use.message().contains("2 eligible or active assignment(s)"),
            "{in_use:?}"
        );

        // Removing a permission from the role removes it from everyone holding the role, at
        // once; what the role still grants stays granted. Apps caching answers are told to
        // ask again about whoever holds it.
        let mut watching = AccessServiceClient::new(w.ts.channel.clone())
            .watch_access_changes(authed(&w.admin, apb::WatchAccessChangesRequest::default()))
            .await?
            .into_inner();
        roles
            .update_role_definition(authed(
                &w.admin,
                apb::UpdateRoleDefinitionRequest {
                    role: refunder.id.clone(),
                    permissions: vec!["app.payments/reports/*".into()],
                    privileged: Some(false),
                    ..Default::default()
                },
            ))
            .await?;
        let got = roles
            .get_role_definition(authed(
                &w.admin,
                apb::GetRoleDefinitionRequest {
                    role: refunder.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(got.permissions, ["app.payments/reports/*"]);
        assert!(
            !w.check_permission(&lee.id, refund, PAYMENTS).await?.allowed,
            "no longer the role's"
        );
        let report = "app.payments/reports/monthly";
        assert!(w.check_permission(&lee.id, report, PAYMENTS).await?.allowed);
        let told = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(change) = watching.message().await? {
                if change.principal_id == lee.id && change.redefined {
                    return anyhow::Ok(change);
                }
            }
            anyhow::bail!("the stream ended")
        })
        .await??;
        assert!(told.active && told.role_id == refunder.id, "{told:?}");

        // An hour later the activation has ended, and with it the permission.
        w.clock.advance(Duration::from_millis(HOUR_MS as u64));
        w.tick().await?;
        assert!(
            !w.check_permission(&lee.id, report, PAYMENTS).await?.allowed,
            "after expiry"
        );

        // Once nobody holds it, it goes: no longer listed, its name free again.
        let remove = apb::CreateRequestRequest {
            scope: PAYMENTS.into(),
            ..request(
                apb::RequestAction::AdminRemove,
                apb::AssignmentKind::Eligible,
                &lee.id,
                &refunder.id,
            )
        };
        w.assignments().create_request(authed(&w.admin, remove)).await?;
        roles
            .delete_role_definition(authed(
                &w.admin,
                apb::GetRoleDefinitionRequest {
                    role: refunder.id.clone(),
                },
            ))
            .await?;
        let gone = roles
            .get_role_definition(authed(
                &w.admin,
                apb::GetRoleDefinitionRequest {
                    role: refunder.id.clone(),
                },
            ))
            .await
            .expect_err("deleted");
        assert_eq!(gone.code(), Code::NotFound);
        roles
            .create_role_definition(authed(
                &w.admin,
                new_role("Payments Refunder", &["app.payments/refunds/approve"]),
            ))
            .await?;
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_defined_on_one_replica_is_known_to_the_others() -> anyhow::Result<()> {
    let replicas = pim_e2e::Replicas::start(2).await?;
    let result = a_role_defined_on_a_reaches_b(&replicas, Duration::from_secs(10)).await;
    replicas.stop().await?;
    result
}

/// The same on a replica that hears none of the other's events (Redis lost them): it reads
/// the role catalogue back from the database, so a role narrowed elsewhere grants less here
/// within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_redefined_reaches_a_replica_whose_events_were_lost() -> anyhow::Result<()> {
    let replicas = pim_e2e::Replicas::start_with_last_unheard(2).await?;
    let result = a_role_defined_on_a_reaches_b(&replicas, Duration::from_secs(20)).await;
    replicas.stop().await?;
    result
}

/// A role made, changed and deleted on replica A is known so on replica B `within` each.
async fn a_role_defined_on_a_reaches_b(replicas: &pim_e2e::Replicas, within: Duration) -> anyhow::Result<()> {
    let admin = replicas.admin.clone();
    let (a, b) = (replicas.assignment(0).await?, replicas.assignment(1).await?);
    replicas.until_replica_knows_the_administrator(1, within).await?;
    let created = RoleServiceClient::new(a.clone())
        .create_role_definition(authed(
            &admin,
            new_role("Payments Refunder", &["app.payments/refunds/approve"]),
        ))
        .await?
        .into_inner();
    let on_b = |role: String| {
        let (b, admin) = (b.clone(), admin.clone());
        async move {
            RoleServiceClient::new(b)
                .get_role_definition(authed(&admin, apb::GetRoleDefinitionRequest { role }))
                .await
        }
    };
    let seen = pim_e2e::eventually(within, "B knows the new role", || async {
        Ok(on_b(created.id.clone()).await.ok().map(|r| r.into_inner()))
    })
    .await?;
    assert_eq!(seen.permissions, created.permissions);
    RoleServiceClient::new(a.clone())
        .update_role_definition(authed(
            &admin,
            apb::UpdateRoleDefinitionRequest {
                role: created.id.clone(),
                permissions: vec!["app.payments/reports/*".into()],
                ..Default::default()
            },
        ))
        .await?;
    pim_e2e::eventually(within, "B knows the changed permissions", || async {
        let role = on_b(created.id.clone()).await?.into_inner();
        Ok((role.permissions == ["app.payments/reports/*"]).then_some(()))
    })
    .await?;
    RoleServiceClient::new(a)
        .delete_role_definition(authed(
            &admin,
            apb::GetRoleDefinitionRequest {
                role: created.id.clone(),
            },
        ))
        .await?;
    pim_e2e::eventually(within, "B forgets the deleted role", || async {
        Ok(matches!(on_b(created.id.clone()).await, Err(s) if s.code() == Code::NotFound).then_some(()))
    })
    .await?;
    anyhow::Ok(())
}
