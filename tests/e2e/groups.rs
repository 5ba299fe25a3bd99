//! Role-assignable groups across identity and assignment (PostgreSQL + Redis): who may create
//! and change them, members inheriting the group's active and eligible roles ("my roles"
//! shows them, with the group they come through), and a removed member losing them at once.

use std::time::Duration;

use tonic::Code;

use pim_e2e::{TestSuite, assign_for_an_hour as assign, authed, eventually};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
const SECURITY_READER: &str = "5d6b6bb7-de71-4623-b4af-96380a352509";
const USER_ADMINISTRATOR: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_inherit_a_role_assignable_groups_roles() -> anyhow::Result<()> {
    let ts = TestSuite::postgres().await?;
    let result = async {
        let admin = ts.admin_token().await?;
        let mut directory = DirectoryServiceClient::new(ts.channel.clone());
        let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
        let access = AccessServiceClient::new(ts.channel.clone());
        let user = |name: &'static str| {
            let (mut directory, admin) = (directory.clone(), admin.clone());
            async move {
                let password = format!("{name}'s long passphrase");
                let u = directory
                    .create_user(authed(
                        &admin,
                        ipb::CreateUserRequest {
                            user_name: name.into(),
                            password: password.clone(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                anyhow::Ok((u.id, password))
            }
        };
        let (lee, lee_password) = user("lee").await?;
        let (kim, kim_password) = user("kim").await?;

        // A User Administrator may make ordinary groups, not role-assignable ones.
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &kim, USER_ADMINISTRATOR),
            ))
            .await?;
        let kim_token = ts.sign_in("kim", &kim_password).await?;
        let group = |name: &str, assignable: bool| ipb::CreateGroupRequest {
            display_name: name.into(),
            description: String::new(),
            is_assignable_to_role: assignable,
            owner_ids: vec![],
        };
        let refused = directory
            .create_group(authed(&kim_token, group("Exchange admins", true)))
            .await
            .expect_err("not Kim's to make");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let plain = directory
            .create_group(authed(&kim_token, group("Book club", false)))
            .await?
            .into_inner();
        let team = directory
            .create_group(authed(&admin, group("Exchange admins", true)))
            .await?
            .into_inner();
        assert!(team.is_assignable_to_role);
        let flip = ipb::UpdateGroupRequest {
            group_id: team.id.clone(),
            display_name: "Exchange admins".into(),
            description: String::new(),
            is_assignable_to_role: Some(false),
        };
        assert_eq!(
            directory
                .update_group(authed(&admin, flip))
                .await
                .expect_err("fixed at creation")
                .code(),
            Code::InvalidArgument
        );
        let renamed = directory
            .update_group(authed(
                &admin,
                ipb::UpdateGroupRequest {
                    group_id: team.id.clone(),
                    display_name: "Exchange operators".into(),
                    description: "on call".into(),
                    is_assignable_to_role: None,
                },
            ))
            .await?
            .into_inner();
        assert_eq!(
            (renamed.display_name.as_str(), renamed.is_assignable_to_role),
            ("Exchange operators", true)
        );
        let membership = |group: &str, principal: &str| ipb::GroupMembershipRequest {
            group_id: group.into(),
            principal_id: principal.into(),
        };
        let refused = directory
            .add_group_member(authed(&kim_token, membership(&team.id, &lee)))
            .await
            .expect_err("not Kim's to change");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let nested = directory
            .add_group_member(authed(&admin, membership(&team.id, &plain.id)))
            .await
            .expect_err("no nesting");
        assert_eq!(nested.code(), Code::InvalidArgument);
        let not_assignable = assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &plain.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await
            .expect_err("plain group");
        assert_eq!(not_assignable.code(), Code::FailedPrecondition);

        // The group holds Exchange Administrator (active) and may activate Security Reader.
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Active, &team.id, EXCHANGE_ADMINISTRATOR),
            ))
            .await?;
        assignments
            .create_request(authed(
                &admin,
                assign(apb::AssignmentKind::Eligible, &team.id, SECURITY_READER),
            ))
            .await?;
        directory
            .add_group_member(authed(&admin, membership(&team.id, &lee)))
            .await?;
        let check = |principal: String, role: &'static str| {
            let (mut access, admin) = (access.clone(), admin.clone());
            async move {
                let r = access
                    .check_access(authed(
                        &admin,
                        apb::CheckAccessRequest {
                            principal_id: principal,
                            target: Some(apb::check_access_request::Target::RoleId(role.into())),
                            scope: "/".into(),
                            ..Default::default()
                        },
                    ))
                    .await?;
                anyhow::Ok(r.into_inner().allowed)
            }
        };
        eventually(Duration::from_secs(10), "Lee to inherit the group's role", || async {
            Ok(check(lee.clone(), EXCHANGE_ADMINISTRATOR).await?.then_some(()))
        })
        .await?;
        // The answer says the access comes through the group.
        let through = access
            .clone()
            .check_access(authed(
                &admin,
                apb::CheckAccessRequest {
                    principal_id: lee.clone(),
                    target: Some(apb::check_access_request::Target::RoleId(EXCHANGE_ADMINISTRATOR.into())),
                    scope: "/".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assert_eq!(through.grants.len(), 1, "{through:?}");
        assert_eq!(through.grants[0].via_group_id, team.id);
        assert_eq!(through.grants[0].role_name, "Exchange Administrator");

        let lee_token = ts.sign_in("lee", &lee_password).await?;
        let mine = assignments
            .list_active_assignments(authed(
                &lee_token,
                apb::ListAssignmentsRequest {
                    mine: true,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .assignments;
        let inherited = mine
            .iter()
            .find(|a| a.role_id == EXCHANGE_ADMINISTRATOR)
            .expect("my roles include the group's");
        assert_eq!(inherited.member_type, apb::MemberType::Group as i32);
        assert_eq!(
            (inherited.via_group_id.as_str(), inherited.principal_id.as_str()),
            (team.id.as_str(), lee.as_str())
        );
        // Neither has an activation to end: the refusal says how each holds the role.
        let deactivating = |token: &str, role: &str| {
            let request = apb::CreateRequestRequest {
                action: apb::RequestAction::SelfDeactivate as i32,
                role_id: role.into(),
                scope: "/".into(),
                ..Default::default()
            };
            let (mut assignments, request) = (assignments.clone(), authed(token, request));
            async move { assignments.create_request(request).await.expect_err("no activation") }
        };
        for (token, role, how) in [
            (&lee_token, EXCHANGE_ADMINISTRATOR, "member of group Exchange operators"),
            (&kim_token, USER_ADMINISTRATOR, "an administrator's active assignment"),
        ] {
            let refused = deactivating(token, role).await;
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(refused.message().contains(how), "{}", refused.message());
        }

        // Eligible through the group: Lee activates Security Reader.
        let stepped = ts.stepped_up_token(&lee, "lee", pim_runtime::db::now_ms())?;
        let activated = assignments
            .create_request(authed(
                &stepped,
                apb::CreateRequestRequest {
                    action: apb::RequestAction::SelfActivate as i32,
                    kind: apb::AssignmentKind::Active as i32,
                    role_id: SECURITY_READER.into(),
                    scope: "/".into(),
                    justification: "alert triage".into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assert_eq!(activated.status, apb::RequestStatus::Provisioned as i32);
        assert!(check(lee.clone(), SECURITY_READER).await?);
        assert!(
            !check(kim.clone(), EXCHANGE_ADMINISTRATOR).await?,
            "only members inherit"
        );

        // Removed from the group: the inherited role ends at once.
        directory
            .remove_group_member(authed(&admin, membership(&team.id, &lee)))
            .await?;
        eventually(Duration::from_secs(10), "Lee to lose the group's role", || async {
            Ok((!check(lee.clone(), EXCHANGE_ADMINISTRATOR).await?).then_some(()))
        })
        .await?;
        // So does what Lee activated from the group's eligibility (another replica's stream
        // tail may apply the two a moment apart; a consistency token waits for both).
        eventually(
            Duration::from_secs(10),
            "Lee's activation through the group to end",
            || async { Ok((!check(lee.clone(), SECURITY_READER).await?).then_some(())) },
        )
        .await?;
        let groups = directory
            .list_principal_groups(authed(
                &lee_token,
                ipb::ListPrincipalGroupsRequest {
                    principal_id: lee.clone(),
                },
            ))
            .await?
            .into_inner()
            .groups;
        assert!(groups.is_empty());
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// PIM for Groups on PostgreSQL + Redis and on the embedded default, with a manual clock:
/// Lee, eligible member of a role-assignable group that holds Exchange Administrator and
/// Global Reader, activates the membership (refused without MFA), holds both roles through it
/// to the second, and loses them at its end before any timer runs. The group's owner, not a
/// User Administrator, makes Lee eligible and approves when the group's policy asks; removing
/// the eligibility ends a live activation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_in_time_membership_carries_the_groups_roles_until_it_ends() -> anyhow::Result<()> {
    use crate::activation::{HOUR_MS, activation, request, run_on_both};
    use pim_proto::approval::v1 as pb;
    use pim_proto::approval::v1::approval_service_client::ApprovalServiceClient;
    use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
    use pim_proto::catalogue::{GROUP_MEMBER, group_scope};
    use pim_runtime::clock::Clock;
    use pim_runtime::grpc::violated_rules;

    use crate::activation::GLOBAL_READER;
    run_on_both(|w| async move {
        let (lee, ola, uma) = (w.user("lee").await?, w.user("ola").await?, w.user("uma").await?);
        w.assignments()
            .create_request(authed(
                &w.admin,
                assign(apb::AssignmentKind::Active, &uma.id, USER_ADMINISTRATOR),
            ))
            .await?;
        // Owners are named by id or user name, each on one line, at most 100 at creation.
        let too_many = vec![ola.id.clone(); 101];
        for (owner_ids, why) in [
            (too_many, "too many"),
            (vec!["ola\0".into()], "a NUL"),
            (vec!["\u{1b}]0;x\u{7}".into()], "an escape"),
        ] {
            let refused = DirectoryServiceClient::new(w.ts.channel.clone())
                .create_group(authed(
                    &w.admin,
                    ipb::CreateGroupRequest {
                        display_name: "Refused".into(),
                        owner_ids,
                        ..Default::default()
                    },
                ))
                .await
                .expect_err(why);
            assert_eq!(refused.code(), Code::InvalidArgument, "{why}: {refused:?}");
        }
        let group = DirectoryServiceClient::new(w.ts.channel.clone())
            .create_group(authed(
                &w.admin,
                ipb::CreateGroupRequest {
                    display_name: "Exchange Admins".into(),
                    is_assignable_to_role: true,
                    owner_ids: vec![ola.id.clone()],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .id;
        for role in [EXCHANGE_ADMINISTRATOR, GLOBAL_READER] {
            w.assignments()
                .create_request(authed(
                    &w.admin,
                    apb::CreateRequestRequest {
                        justification: "the mail team's roles".into(),
                        ..request(
                            apb::RequestAction::AdminAssign,
                            apb::AssignmentKind::Active,
                            &group,
                            role,
                        )
                    },
                ))
                .await?;
        }
        let scope = group_scope(&group);
        let eligible = |principal: &str| apb::CreateRequestRequest {
            scope: scope.clone(),
            justification: "mail team".into(),
            ..request(
                apb::RequestAction::AdminAssign,
                apb::AssignmentKind::Eligible,
                principal,
                GROUP_MEMBER,
            )
        };
        // A User Administrator may not; the owner may not make herself eligible; she may make Lee.
        let refused = w
            .assignments()
            .create_request(authed(&uma.token, eligible(&lee.id)))
            .await
            .expect_err("not a User Administrator's to give");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let herself = w
            .assignments()
            .create_request(authed(&ola.token, eligible(&ola.id)))
            .await
            .expect_err("nobody grants themselves");
        assert_eq!(herself.code(), Code::PermissionDenied);
        let by_name = w
            .assignments()
            .create_request(authed(&ola.token, eligible(&ola.name)))
            .await
            .expect_err("nor by spelling her user name");
        assert_eq!(by_name.code(), Code::PermissionDenied, "{by_name:?}");
        let below = w
            .assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    scope: "/groups".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Eligible,
                        &lee.id,
                        EXCHANGE_ADMINISTRATOR,
                    )
                },
            ))
            .await
            .expect_err("no role is held over the groups");
        assert_eq!(below.code(), Code::InvalidArgument, "{below:?}");
        let nowhere = w
            .assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    scope: "/".into(),
                    ..eligible(&lee.id)
                },
            ))
            .await
            .expect_err("group access is held at the group's scope");
        assert_eq!(nowhere.code(), Code::InvalidArgument);
        w.assignments()
            .create_request(authed(&ola.token, eligible(&lee.id)))
            .await?;
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "eligible only"
        );

        let activate = |length_ms: i64| apb::CreateRequestRequest {
            scope: scope.clone(),
            ..activation(GROUP_MEMBER, length_ms, "mailbox migration")
        };
        let refused = w
            .assignments()
            .create_request(authed(&lee.token, activate(HOUR_MS)))
            .await
            .expect_err("no MFA");
        assert_eq!(violated_rules(&refused), vec!["MfaRule"]);
        let started = w.clock.now_ms();
        let activated = w
            .assignments()
            .create_request(authed(&w.stepped_up(&lee)?, activate(HOUR_MS)))
            .await?
            .into_inner();
        assert_eq!(activated.status, apb::RequestStatus::Provisioned as i32);
        for role in [EXCHANGE_ADMINISTRATOR, GLOBAL_READER] {
            let yes = w.check(&lee.id, role).await?;
            assert!(yes.allowed, "{role} through the membership");
            assert_eq!(yes.grants[0].via_group_id, group);
            assert_eq!(
                pim_runtime::db::from_timestamp(yes.expires_at.as_ref().expect("it ends")),
                started + HOUR_MS,
                "as long as the membership, not the group's assignment"
            );
        }
        // The group may activate Security Reader: Lee may, through the membership, but never
        // past its end.
        w.assignments()
            .create_request(authed(
                &w.admin,
                request(
                    apb::RequestAction::AdminAssign,
                    apb::AssignmentKind::Eligible,
                    &group,
                    SECURITY_READER,
                ),
            ))
            .await?;
        let reader = w
            .assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(SECURITY_READER, 2 * HOUR_MS, "triage while on the mail team"),
            ))
            .await?
            .into_inner();
        assert_eq!(
            reader.end_time.as_ref().map(pim_runtime::db::from_timestamp),
            Some(started + HOUR_MS),
            "capped at the membership's end"
        );

        // The group's members show Lee, activated until the end.
        let mia = w.user("mia").await?;
        DirectoryServiceClient::new(w.ts.channel.clone())
            .add_group_member(authed(
                &w.admin,
                ipb::GroupMembershipRequest {
                    group_id: group.clone(),
                    principal_id: mia.id.clone(),
                },
            ))
            .await?;
        let everyone = DirectoryServiceClient::new(w.ts.channel.clone())
            .list_group_members(authed(
                &ola.token,
                ipb::ListGroupMembersRequest {
                    group_id: group.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        // Page by page (one principal each, with its links), the same members, once each.
        let (mut paged, mut token) = (Vec::new(), String::new());
        loop {
            let page = DirectoryServiceClient::new(w.ts.channel.clone())
                .list_group_members(authed(
                    &ola.token,
                    ipb::ListGroupMembersRequest {
                        group_id: group.clone(),
                        page_size: 1,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            assert!(page.principals.len() <= 1, "{page:?}");
            let ids: Vec<&str> = page.principals.iter().map(|p| p.id.as_str()).collect();
            assert!(
                page.links
                    .iter()
                    .all(|l| l.principal.as_ref().is_some_and(|p| ids.contains(&p.id.as_str())))
            );
            paged.extend(page.principals);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let mut all = everyone.principals.clone();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(all.len(), 2, "Lee and Mia: {all:?}");
        assert_eq!(paged, all);
        let links = everyone.links;
        let lee_link = links
            .iter()
            .find(|l| l.principal.as_ref().is_some_and(|p| p.id == lee.id))
            .expect("Lee listed among the members");
        assert_eq!(lee_link.kind, ipb::GroupLinkKind::Activated as i32);
        assert_eq!(
            lee_link.end_time.as_ref().map(pim_runtime::db::from_timestamp),
            Some(started + HOUR_MS)
        );
        w.clock.advance(Duration::from_millis((HOUR_MS - 1000) as u64));
        assert!(w.check(&lee.id, GLOBAL_READER).await?.allowed);
        w.clock.advance(Duration::from_secs(1));
        for role in [EXCHANGE_ADMINISTRATOR, GLOBAL_READER] {
            assert!(
                !w.check(&lee.id, role).await?.allowed,
                "{role} ended with the membership"
            );
        }
        w.tick().await?;

        // The group's policy asks for approval; its owner is a default approver.
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let requiring_approval = || apb::UpdateRolePolicyRequest {
            policy: Some(apb::RolePolicy {
                role_id: GROUP_MEMBER.into(),
                scope: scope.clone(),
                approval_required: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["approval_required".into()],
            }),
            validate_only: false,
        };
        policies
            .update_role_policy(authed(&w.admin, requiring_approval()))
            .await?;
        let waiting = w
            .assignments()
            .create_request(authed(&w.stepped_up(&lee)?, activate(HOUR_MS)))
            .await?
            .into_inner();
        assert_eq!(waiting.status, apb::RequestStatus::PendingApproval as i32);
        let mut approvals = ApprovalServiceClient::new(w.ts.channel.clone());
        let approval = pim_e2e::eventually(Duration::from_secs(10), "Ola to see the approval", || {
            let (mut approvals, token) = (approvals.clone(), ola.token.clone());
            async move {
                let listed = approvals
                    .list_approvals(authed(&token, pb::ListApprovalsRequest::default()))
                    .await?
                    .into_inner()
                    .approvals;
                Ok(listed.into_iter().next())
            }
        })
        .await?;
        approvals
            .decide(authed(
                &ola.token,
                pb::DecideRequest {
                    approval_id: approval.id,
                    decision: pb::Decision::Approve as i32,
                    justification: "Lee moves the mailboxes".into(),
                },
            ))
            .await?;
        pim_e2e::eventually(Duration::from_secs(10), "the approved membership", || async {
            Ok(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed.then_some(()))
        })
        .await?;

        // Removing the eligibility ends the live activation.
        w.assignments()
            .create_request(authed(
                &ola.token,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    ..request(
                        apb::RequestAction::AdminRemove,
                        apb::AssignmentKind::Eligible,
                        &lee.id,
                        GROUP_MEMBER,
                    )
                },
            ))
            .await?;
        assert!(
            !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
            "ended with its eligibility"
        );

        // Deleting the group ends its roles and every access to it; the next check, with the
        // deletion's consistency token, says no (on any replica).
        w.assignments()
            .create_request(authed(
                &ola.token,
                apb::CreateRequestRequest {
                    kind: apb::AssignmentKind::Active as i32,
                    ..eligible(&lee.id)
                },
            ))
            .await?;
        assert!(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed);
        // Lee activates Security Reader through the group; Uma's membership waits for approval.
        w.assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                activation(SECURITY_READER, HOUR_MS, "triage before the group goes"),
            ))
            .await?;
        assert!(w.check(&lee.id, SECURITY_READER).await?.allowed);
        w.assignments()
            .create_request(authed(&ola.token, eligible(&uma.id)))
            .await?;
        let umas = w
            .assignments()
            .create_request(authed(&w.stepped_up(&uma)?, activate(HOUR_MS)))
            .await?
            .into_inner();
        assert_eq!(umas.status, apb::RequestStatus::PendingApproval as i32);
        let token = DirectoryServiceClient::new(w.ts.channel.clone())
            .delete_group(authed(
                &ola.token,
                ipb::GetGroupRequest {
                    group_id: group.clone(),
                },
            ))
            .await?
            .into_inner()
            .consistency_token;
        let mut access = AccessServiceClient::new(w.ts.channel.clone());
        let asked = [
            (&lee.id, EXCHANGE_ADMINISTRATOR, "/".to_owned()),
            (&group, GLOBAL_READER, "/".to_owned()),
            (&lee.id, GROUP_MEMBER, scope.clone()),
            (&lee.id, SECURITY_READER, "/".to_owned()),
        ];
        for (principal, role, at) in asked {
            let answer = access
                .check_access(authed(
                    &w.admin,
                    apb::CheckAccessRequest {
                        principal_id: principal.clone(),
                        target: Some(apb::check_access_request::Target::RoleId(role.into())),
                        scope: at,
                        at_least_as_fresh: token.clone(),
                    },
                ))
                .await?
                .into_inner();
            assert!(!answer.allowed, "{role} of {principal} ended with the group");
        }
        let umas = w
            .assignments()
            .get_request(authed(
                &uma.token,
                apb::GetRequestRequest {
                    request_id: umas.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(umas.status, apb::RequestStatus::Canceled as i32, "{umas:?}");
        // Its access policy went with it, and none is set for a group the directory lacks.
        let set = policies
            .list_role_policies(authed(
                &w.admin,
                apb::ListRolePoliciesRequest {
                    role_id: GROUP_MEMBER.into(),
                },
            ))
            .await?
            .into_inner()
            .policies;
        assert!(set.iter().all(|p| p.scope != scope), "{set:?}");
        let refused = policies
            .update_role_policy(authed(&w.admin, requiring_approval()))
            .await
            .expect_err("no such group");
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        Ok(w)
    })
    .await
}

/// An activation never outlives what allowed it. What members activate from a role-assignable
/// group's eligibility ends at once when the group's eligibility is removed, when a
/// just-in-time membership is deactivated, and when a member is removed from the group; a
/// request waiting for approval on such ground is canceled; and an approved activation
/// through a group is applied (on PostgreSQL + Redis and on the embedded default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_members_activate_through_a_group_ends_with_what_allowed_it() -> anyhow::Result<()> {
    use crate::activation::{HOUR_MS, activation, request, run_on_both};
    use apb::AssignmentKind::{Active, Eligible};
    use apb::RequestAction::{AdminAssign, AdminRemove, AdminUpdate, SelfDeactivate};
    use pim_proto::approval::v1 as pb;
    use pim_proto::catalogue::{GROUP_MEMBER, group_scope};
    use pim_runtime::clock::Clock;

    run_on_both(|w| async move {
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        let mut directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let group = w.role_assignable_group("SOC").await?;
        let scope = group_scope(&group);
        // Kim is a member for good; Lee is an eligible member and activates the membership.
        let kim_membership = ipb::GroupMembershipRequest {
            group_id: group.clone(),
            principal_id: kim.id.clone(),
        };
        directory
            .add_group_member(authed(&w.admin, kim_membership.clone()))
            .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    justification: "SOC rota".into(),
                    ..request(AdminAssign, Eligible, &lee.id, GROUP_MEMBER)
                },
            ))
            .await?;
        w.assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    ..activation(GROUP_MEMBER, 4 * HOUR_MS, "on shift")
                },
            ))
            .await?;
        // The group may activate Security Reader, with approval.
        let group_eligibility = || apb::CreateRequestRequest {
            justification: "SOC triage".into(),
            ..request(AdminAssign, Eligible, &group, SECURITY_READER)
        };
        w.assignments()
            .create_request(authed(&w.admin, group_eligibility()))
            .await?;
        w.set_policy(SECURITY_READER, |p| p.approval_required = true).await?;
        let reader = activation(SECURITY_READER, HOUR_MS, "alert triage");
        let asked = w
            .assignments()
            .create_request(authed(&w.stepped_up(&lee)?, reader.clone()))
            .await?
            .into_inner();
        assert_eq!(asked.status, apb::RequestStatus::PendingApproval as i32);
        let approval = w.approval_of(&asked.id).await?;
        w.approvals()
            .decide(authed(
                &w.admin,
                pb::DecideRequest {
                    approval_id: approval.id,
                    decision: pb::Decision::Approve as i32,
                    justification: "on shift".into(),
                },
            ))
            .await?;
        eventually(
            Duration::from_secs(10),
            "the approved activation through the group",
            || async { Ok(w.check(&lee.id, SECURITY_READER).await?.allowed.then_some(())) },
        )
        .await?;
        let kims = w
            .assignments()
            .create_request(authed(&w.stepped_up(&kim)?, reader.clone()))
            .await?
            .into_inner();
        assert_eq!(kims.status, apb::RequestStatus::PendingApproval as i32);

        // The group's eligibility removed: Lee's activation ends at once, Kim's request is
        // canceled.
        w.assignments()
            .create_request(authed(
                &w.admin,
                request(AdminRemove, Eligible, &group, SECURITY_READER),
            ))
            .await?;
        assert!(
            !w.check(&lee.id, SECURITY_READER).await?.allowed,
            "ended with the group's eligibility"
        );
        let kims = w
            .assignments()
            .get_request(authed(
                &kim.token,
                apb::GetRequestRequest {
                    request_id: kims.id.clone(),
                },
            ))
            .await?
            .into_inner();
        assert_eq!(kims.status, apb::RequestStatus::Canceled as i32, "{kims:?}");
        // Its approval closes saying why: not Kim's withdrawal.
        let canceled = eventually(
            Duration::from_secs(10),
            "the approval's cancellation in audit",
            || async {
                let records = pim_proto::audit::v1::audit_service_client::AuditServiceClient::new(w.ts.channel.clone())
                    .query_events(authed(
                        &w.admin,
                        pim_proto::audit::v1::QueryEventsRequest {
                            action: "ApprovalCanceled".into(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .records;
                Ok(records.into_iter().find(|r| r.target_id == kim.id))
            },
        )
        .await?;
        assert!(
            canceled.payload_json.contains("what the request rested on"),
            "{}",
            canceled.payload_json
        );

        // Given back, without approval: both activate Security Reader through the group.
        w.assignments()
            .create_request(authed(&w.admin, group_eligibility()))
            .await?;
        w.set_policy(SECURITY_READER, |p| p.approval_required = false).await?;
        for user in [&lee, &kim] {
            w.assignments()
                .create_request(authed(&w.stepped_up(user)?, reader.clone()))
                .await?;
            assert!(w.check(&user.id, SECURITY_READER).await?.allowed);
        }
        // Lee ends the membership early: Security Reader ends with it.
        w.assignments()
            .create_request(authed(
                &lee.token,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    ..request(SelfDeactivate, Active, "", GROUP_MEMBER)
                },
            ))
            .await?;
        assert!(
            !w.check(&lee.id, SECURITY_READER).await?.allowed,
            "ended with the membership"
        );
        // Kim leaves the group: the next check, with the removal's token, says no.
        let token = directory
            .remove_group_member(authed(&w.admin, kim_membership))
            .await?
            .into_inner()
            .consistency_token;
        let answer = AccessServiceClient::new(w.ts.channel.clone())
            .check_access(authed(
                &w.admin,
                apb::CheckAccessRequest {
                    principal_id: kim.id.clone(),
                    target: Some(apb::check_access_request::Target::RoleId(SECURITY_READER.into())),
                    scope: "/".into(),
                    at_least_as_fresh: token,
                },
            ))
            .await?
            .into_inner();
        assert!(!answer.allowed, "ended with Kim's membership: {answer:?}");

        // The group's eligibility shortened to ten minutes: Lee's hour through it (membership
        // activated again) is shortened with it, so CheckAccess refuses it from then on with
        // or without the timer.
        w.assignments()
            .create_request(authed(
                &w.stepped_up(&lee)?,
                apb::CreateRequestRequest {
                    scope: scope.clone(),
                    ..activation(GROUP_MEMBER, 4 * HOUR_MS, "back on shift")
                },
            ))
            .await?;
        w.assignments()
            .create_request(authed(&w.stepped_up(&lee)?, reader.clone()))
            .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    schedule: crate::activation::lasting(600_000),
                    justification: "rota ends".into(),
                    ..request(AdminUpdate, Eligible, &group, SECURITY_READER)
                },
            ))
            .await?;
        let shortened_to = w.clock.now_ms() + 600_000;
        let answer = w.check(&lee.id, SECURITY_READER).await?;
        assert!(answer.allowed);
        assert_eq!(
            answer.expires_at.as_ref().map(pim_runtime::db::from_timestamp),
            Some(shortened_to),
            "ends with the group's eligibility"
        );
        // Said on the stream, and kept by audit, with who shortened it and why.
        let audited = |action: &'static str| {
            let mut audit = pim_proto::audit::v1::audit_service_client::AuditServiceClient::new(w.ts.channel.clone());
            let admin = w.admin.clone();
            let lee = lee.id.clone();
            async move {
                let query = pim_proto::audit::v1::QueryEventsRequest {
                    action: action.into(),
                    target_id: lee,
                    ..Default::default()
                };
                let records = audit.query_events(authed(&admin, query)).await?.into_inner().records;
                anyhow::Ok(
                    records
                        .into_iter()
                        .filter(|r| r.role_id == SECURITY_READER)
                        .collect::<Vec<_>>(),
                )
            }
        };
        let told = eventually(Duration::from_secs(10), "ActivationShortened in audit", || async {
            Ok(audited("ActivationShortened").await?.pop())
        })
        .await?;
        let told: serde_json::Value = serde_json::from_str(&told.payload_json)?;
        assert_eq!(told["reason"], "eligibility shortened", "{told}");
        assert!(
            told["previous_end_time"].as_str().is_some_and(|t| !t.is_empty()),
            "{told}"
        );
        w.clock.advance(Duration::from_millis(599_999));
        assert!(
            w.check(&lee.id, SECURITY_READER).await?.allowed,
            "until the last millisecond"
        );
        w.clock.advance(Duration::from_millis(1));
        assert!(
            !w.check(&lee.id, SECURITY_READER).await?.allowed,
            "ended with the shortened eligibility, before any timer"
        );
        // The timer then says it ended.
        w.tick().await?;
        eventually(Duration::from_secs(10), "the shortened activation's end", || async {
            let ended = audited("RoleDeactivated").await?;
            Ok(ended.into_iter().find(|r| {
                serde_json::from_str::<serde_json::Value>(&r.payload_json)
                    .is_ok_and(|p| p["assignment_id"] == told["assignment_id"] && p["reason"] == "expired")
            }))
        })
        .await?;
        Ok(w)
    })
    .await
}

/// An eligibility moved earlier takes what rests on it along at once: Lee's own activation
/// ends when the shortened eligibility does, a just-in-time membership shortened ends the
/// activations through the group with it, and moving an eligibility later again gives no
/// activation more time (on PostgreSQL + Redis and on the embedded default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eligibility_moved_earlier_shortens_what_rests_on_it() -> anyhow::Result<()> {
    use crate::activation::{HOUR_MS, activation, request, run_on_both};
    use apb::AssignmentKind::Eligible;
    use apb::RequestAction::{AdminAssign, AdminExtend, AdminUpdate};
    use pim_proto::catalogue::{GROUP_MEMBER, group_scope};
    use pim_runtime::clock::Clock;

    run_on_both(|w| async move {
        let lee = w.user("lee").await?;
        let group = w.role_assignable_group("Responders").await?;
        let scope = group_scope(&group);
        let at = |scope: &str, r: apb::CreateRequestRequest| apb::CreateRequestRequest {
            scope: scope.into(),
            justification: "rota".into(),
            ..r
        };
        let ending_in = |hours: i64, r: apb::CreateRequestRequest| apb::CreateRequestRequest {
            schedule: crate::activation::lasting(hours * HOUR_MS),
            ..r
        };
        for grant in [
            at("/", request(AdminAssign, Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)),
            at(&scope, request(AdminAssign, Eligible, &lee.id, GROUP_MEMBER)),
            at("/", request(AdminAssign, Eligible, &group, SECURITY_READER)),
        ] {
            w.assignments().create_request(authed(&w.admin, grant)).await?;
        }
        for ask in [
            activation(EXCHANGE_ADMINISTRATOR, 4 * HOUR_MS, "incident"),
            at(&scope, activation(GROUP_MEMBER, 4 * HOUR_MS, "incident")),
            activation(SECURITY_READER, 4 * HOUR_MS, "incident"),
        ] {
            w.assignments()
                .create_request(authed(&w.stepped_up(&lee)?, ask))
                .await?;
        }
        let exchange_request = w
            .assignments()
            .list_requests(authed(&lee.token, apb::ListRequestsRequest::default()))
            .await?
            .into_inner()
            .requests
            .into_iter()
            .find(|r| r.role_id == EXCHANGE_ADMINISTRATOR && r.action == apb::RequestAction::SelfActivate as i32)
            .expect("Lee's activation request")
            .id;
        let now = w.clock.now_ms();
        let ends = |role: &'static str| {
            let w = &w;
            let lee = lee.id.clone();
            async move {
                let answer = w.check(&lee, role).await?;
                anyhow::Ok(
                    answer
                        .allowed
                        .then(|| answer.expires_at.as_ref().map(pim_runtime::db::from_timestamp)),
                )
            }
        };
        assert_eq!(ends(SECURITY_READER).await?, Some(Some(now + 4 * HOUR_MS)));

        // Lee's own eligibility moved to end in an hour: the activation ends with it.
        w.assignments()
            .create_request(authed(
                &w.admin,
                ending_in(1, request(AdminUpdate, Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)),
            ))
            .await?;
        assert_eq!(ends(EXCHANGE_ADMINISTRATOR).await?, Some(Some(now + HOUR_MS)));
        // Its request says so too.
        let shown = w
            .assignments()
            .get_request(authed(
                &lee.token,
                apb::GetRequestRequest {
                    request_id: exchange_request,
                },
            ))
            .await?
            .into_inner();
        assert_eq!(
            shown.end_time.as_ref().map(pim_runtime::db::from_timestamp),
            Some(now + HOUR_MS),
            "the request shows the new end"
        );
        // Lee's membership eligibility moved to two hours: the membership and what came
        // through the group end then.
        w.assignments()
            .create_request(authed(
                &w.admin,
                at(
                    &scope,
                    ending_in(2, request(AdminUpdate, Eligible, &lee.id, GROUP_MEMBER)),
                ),
            ))
            .await?;
        assert_eq!(ends(SECURITY_READER).await?, Some(Some(now + 2 * HOUR_MS)));
        // Moved later again: no activation gets its time back.
        w.assignments()
            .create_request(authed(
                &w.admin,
                ending_in(8, request(AdminExtend, Eligible, &lee.id, EXCHANGE_ADMINISTRATOR)),
            ))
            .await?;
        assert_eq!(ends(EXCHANGE_ADMINISTRATOR).await?, Some(Some(now + HOUR_MS)));

        w.clock.advance(Duration::from_millis(HOUR_MS as u64));
        assert_eq!(ends(EXCHANGE_ADMINISTRATOR).await?, None, "ended at the hour");
        assert!(ends(SECURITY_READER).await?.is_some());
        w.clock.advance(Duration::from_millis(HOUR_MS as u64));
        assert_eq!(ends(SECURITY_READER).await?, None, "ended with the membership");
        Ok(w)
    })
    .await
}

/// Assignment lists come a page at a time, in the order of their ids: a member's own with
/// those held through their groups, and anyone's at a scope (each page full until the last),
/// the pages together the same as one listing (on PostgreSQL + Redis and on the embedded
/// default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_lists_come_a_page_at_a_time() -> anyhow::Result<()> {
    use crate::activation::{GLOBAL_READER, request, run_on_both};
    use apb::AssignmentKind::Eligible;
    use apb::RequestAction::AdminAssign;

    run_on_both(|w| async move {
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        let group = w.role_assignable_group("SOC").await?;
        DirectoryServiceClient::new(w.ts.channel.clone())
            .add_group_member(authed(
                &w.admin,
                ipb::GroupMembershipRequest {
                    group_id: group.clone(),
                    principal_id: lee.id.clone(),
                },
            ))
            .await?;
        let mut ids = Vec::new();
        for (principal, role, scope) in [
            (&lee.id, EXCHANGE_ADMINISTRATOR, "/"),
            (&kim.id, USER_ADMINISTRATOR, "/subscriptions/s2"),
            (&group, GLOBAL_READER, "/"),
            (&kim.id, SECURITY_READER, "/subscriptions/s1/rg"),
            (&lee.id, SECURITY_READER, "/subscriptions/s1"),
        ] {
            let made = w
                .assignments()
                .create_request(authed(
                    &w.admin,
                    apb::CreateRequestRequest {
                        scope: scope.into(),
                        ..request(AdminAssign, Eligible, principal, role)
                    },
                ))
                .await?
                .into_inner();
            ids.push(made.assignment_id);
        }
        // Every page of `ask` (at most `size` each, none empty), in order.
        let paged = |token: String, ask: apb::ListAssignmentsRequest, size: i32| {
            let mut client = w.assignments();
            async move {
                let (mut all, mut page_token) = (Vec::new(), String::new());
                loop {
                    let asked = apb::ListAssignmentsRequest {
                        page_size: size,
                        page_token: page_token.clone(),
                        ..ask.clone()
                    };
                    let page = client
                        .list_eligible_assignments(authed(&token, asked))
                        .await?
                        .into_inner();
                    assert!(
                        !page.assignments.is_empty() && page.assignments.len() <= size as usize,
                        "{page:?}"
                    );
                    all.extend(page.assignments);
                    if page.next_page_token.is_empty() {
                        return anyhow::Ok(all);
                    }
                    page_token = page.next_page_token;
                }
            }
        };
        let listed = |token: String, ask: apb::ListAssignmentsRequest| {
            let mut client = w.assignments();
            async move {
                let page = client
                    .list_eligible_assignments(authed(&token, ask))
                    .await?
                    .into_inner();
                assert!(page.next_page_token.is_empty(), "one page holds them all: {page:?}");
                anyhow::Ok(page.assignments)
            }
        };
        let id_of = |a: &apb::Assignment| a.id.clone();

        // Lee's own, one a page: hers and her group's, in the order they were made.
        let mine = apb::ListAssignmentsRequest {
            mine: true,
            ..Default::default()
        };
        let lees = paged(lee.token.clone(), mine.clone(), 1).await?;
        assert_eq!(
            lees.iter().map(id_of).collect::<Vec<_>>(),
            [ids[0].clone(), ids[2].clone(), ids[4].clone()]
        );
        assert_eq!(lees[1].via_group_id, group, "held through the group");
        assert_eq!(lees, listed(lee.token.clone(), mine).await?);

        // Anyone's applying at a resource group: at it or above it, Kim's elsewhere left out,
        // and never an empty page for it.
        let at_rg = apb::ListAssignmentsRequest {
            scope: "/subscriptions/s1/rg".into(),
            ..Default::default()
        };
        let applying = paged(w.admin.clone(), at_rg.clone(), 1).await?;
        assert_eq!(
            applying.iter().map(id_of).collect::<Vec<_>>(),
            [ids[0].clone(), ids[2].clone(), ids[3].clone(), ids[4].clone()]
        );
        assert_eq!(applying, listed(w.admin.clone(), at_rg).await?);
        let everyone = apb::ListAssignmentsRequest::default();
        assert_eq!(
            paged(w.admin.clone(), everyone.clone(), 2).await?,
            listed(w.admin.clone(), everyone).await?
        );

        let refused = w
            .assignments()
            .list_eligible_assignments(authed(
                &w.admin,
                apb::ListAssignmentsRequest {
                    page_size: -1,
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a negative page size");
        assert_eq!(refused.code(), Code::InvalidArgument);
        // A token the service never gave is refused, never read as a place to start or end.
        let last = ids.iter().max().expect("made").clone();
        for forged in ["x".to_owned(), "0".to_owned(), last.to_uppercase(), format!("{last}0")] {
            let asked = apb::ListAssignmentsRequest {
                page_token: forged.clone(),
                ..Default::default()
            };
            let refused = w
                .assignments()
                .list_eligible_assignments(authed(&w.admin, asked))
                .await
                .expect_err("not a token the service gave");
            assert_eq!(refused.code(), Code::InvalidArgument, "{forged}: {refused:?}");
        }
        Ok(w)
    })
    .await
}
