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
