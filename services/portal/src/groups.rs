//! *Admin → Directory → a group*: its members and owners (added, assigned or activated through
//! PIM for Groups, and until when), adding and removing direct members and owners, and the
//! settings of its membership and ownership (the policy editor at the group's scope). Creating
//! a group is here too. Identity decides who may change which group: a role-assignable group
//! only by a Privileged Role or Global Administrator, as everywhere.

use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use pim_proto::catalogue;
use pim_proto::identity::v1 as ipb;

use crate::lookup::{directory, user_named};
use crate::view::{self, moment, timestamp};
use crate::web::{Caller, CheckedForm, Failure, Fields};

/// Members or owners: the two ways a principal is linked to a group.
#[derive(Clone, Copy)]
enum Link {
    Members,
    Owners,
}

impl Link {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "members" => Some(Self::Members),
            "owners" => Some(Self::Owners),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Members => "members",
            Self::Owners => "owners",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Members => "member",
            Self::Owners => "owner",
        }
    }

    /// The group access role whose settings govern this link (PIM for Groups).
    fn access_role(self) -> &'static str {
        match self {
            Self::Members => catalogue::GROUP_MEMBER,
            Self::Owners => catalogue::GROUP_OWNER,
        }
    }
}

fn link_kind(kind: i32) -> &'static str {
    match ipb::GroupLinkKind::try_from(kind).unwrap_or(ipb::GroupLinkKind::Unspecified) {
        ipb::GroupLinkKind::Direct => "added",
        ipb::GroupLinkKind::Assigned => "assigned (PIM)",
        ipb::GroupLinkKind::Activated => "activated (PIM)",
        ipb::GroupLinkKind::Unspecified => "",
    }
}

/// GET /admin/groups/{id}.
pub async fn page(caller: Caller, Path(id): Path<String>) -> Html<String> {
    let mut title = "Group".to_owned();
    let content = async {
        let group = directory(&caller)
            .get_group(caller.request(ipb::GetGroupRequest { group_id: id.clone() }))
            .await?
            .into_inner();
        title = format!("Group {}", group.display_name);
        let mut sections = Vec::new();
        for link in [Link::Members, Link::Owners] {
            // Everyone at once (0): the page lists them all.
            let request = caller.request(ipb::ListGroupMembersRequest {
                group_id: group.id.clone(),
                page_size: 0,
                ..Default::default()
            });
            let listed = match link {
                Link::Members => directory(&caller).list_group_members(request).await,
                Link::Owners => directory(&caller).list_group_owners(request).await,
            }?
            .into_inner();
            sections.push(linked(&caller, &group, link, &listed.links));
        }
        Ok::<_, Failure>(html! {
            @if !group.description.is_empty() { p { (group.description) } }
            @if group.is_assignable_to_role {
                p { strong { "Role-assignable: " } "its members hold the roles assigned to it. Only Privileged Role and Global Administrators change it." }
            }
            @for section in sections { (section) }
            p { a href="/admin/directory" { "Back to the directory" } }
        })
    }
    .await
    .unwrap_or_else(|failure| caller.failed(failure));
    view::page(&caller, "/admin/directory", &title, content)
}

/// One list (members or owners) with its add and remove forms and its access settings.
fn linked(caller: &Caller, group: &ipb::Group, link: Link, links: &[ipb::GroupLink]) -> Markup {
    let heading = format!("{}-h", link.path());
    let settings = format!(
        "/admin/policies?role={}&scope={}",
        link.access_role(),
        view::in_query(&catalogue::group_scope(&group.id))
    );
    html! {
        section aria-labelledby=(heading) {
            h2 id=(heading) { @match link { Link::Members => "Members", Link::Owners => "Owners" } }
            @if links.is_empty() { p { "None." } } @else {
                table {
                    thead { tr { th scope="col" { "Who" } th scope="col" { "How" } th scope="col" { "Until" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for l in links {
                            @let p = l.principal.clone().unwrap_or_default();
                            @let who = if p.user_name.is_empty() { p.display_name.clone() } else { p.user_name.clone() };
                            tr {
                                td { (who) }
                                td { (link_kind(l.kind)) }
                                td { @if l.end_time.is_some() { (moment(timestamp(&l.end_time))) } @else { "—" } }
                                td {
                                    @if l.kind == ipb::GroupLinkKind::Direct as i32 {
                                        form method="post" action=(format!("/admin/groups/{}/{}/remove", group.id, link.path())) {
                                            (view::csrf(caller))
                                            input type="hidden" name="principal_id" value=(p.id);
                                            button.deny type="submit" aria-label=(format!("Remove {who} as {}", link.noun())) { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form.search method="post" action=(format!("/admin/groups/{}/{}/add", group.id, link.path())) {
                (view::csrf(caller))
                label for=(format!("add-{}", link.path())) { "Add a " (link.noun()) " (user name)" }
                input id=(format!("add-{}", link.path())) name="principal" type="text" required;
                button type="submit" { "Add " (link.noun()) }
            }
            p { a href=(settings) { "Settings of this group's " (link.noun()) "ship (PIM for Groups)" } }
        }
    }
}

/// POST /admin/groups/{id}/members|owners/add|remove.
pub async fn change(
    mut caller: Caller,
    Path((id, link, change)): Path<(String, String, String)>,
    CheckedForm(fields): CheckedForm,
) -> Response {
    // A group's id is a UUID: anything else is not a page to go back to.
    if uuid::Uuid::parse_str(&id).is_err() {
        return Redirect::to("/admin/directory").into_response();
    }
    let back = format!("/admin/groups/{id}");
    let (Some(link), adding) = (Link::parse(&link), change == "add") else {
        return Redirect::to(&back).into_response();
    };
    if !adding && change != "remove" {
        return Redirect::to(&back).into_response();
    }
    // Adding to a role-assignable group may want the administrator's recent MFA: the same
    // form comes back with a code field, and is done once the code is verified.
    let action = format!("/admin/groups/{id}/{}/{change}", link.path());
    let what = format!("Adding a {} to the group", link.noun());
    if let Err(page) = crate::stepup::verify_if_given(&mut caller, &fields, &action, &what).await {
        return page;
    }
    match changed(&caller, &id, link, adding, &fields).await {
        Ok(who) => {
            let done = if adding { "is now" } else { "is no longer" };
            caller.flash(true, format!("{who} {done} a direct {} of the group.", link.noun()));
        }
        Err(Failure::MfaNeeded(why)) => return crate::stepup::asked_again(&caller, &action, &fields, &what, &why),
        Err(failure) => caller.flash(false, format!("Not changed: {}", failure.text())),
    }
    Redirect::to(&back).into_response()
}

async fn changed(
    caller: &Caller,
    group_id: &str,
    link: Link,
    adding: bool,
    fields: &Fields,
) -> Result<String, Failure> {
    let (principal_id, who) = if adding {
        let user = user_named(caller, fields.get("principal")).await?;
        (user.id, user.user_name)
    } else {
        let id = fields.get("principal_id").to_owned();
        (
            id.clone(),
            crate::lookup::Names::of(caller, vec![id.clone()])
                .await
                .get(&id)
                .to_owned(),
        )
    };
    let request = caller.request(ipb::GroupMembershipRequest {
        group_id: group_id.to_owned(),
        principal_id,
    });
    let mut client = directory(caller);
    match (link, adding) {
        (Link::Members, true) => client.add_group_member(request).await?,
        (Link::Members, false) => client.remove_group_member(request).await?,
        (Link::Owners, true) => client.add_group_owner(request).await?,
        (Link::Owners, false) => client.remove_group_owner(request).await?,
    };
    Ok(who)
}

/// The form that creates a group (on the Directory page).
pub fn create_form(caller: &Caller) -> Markup {
    html! {
        details {
            summary { "Create a group" }
            form method="post" action="/admin/groups" {
                (view::csrf(caller))
                label for="group-name" { "Group name" }
                input id="group-name" name="name" type="text" required;
                label for="group-description" { "Description" }
                input id="group-description" name="description" type="text";
                div.check {
                    input type="checkbox" id="group-assignable" name="role_assignable" value="on";
                    label for="group-assignable" { "Roles may be assigned to it (role-assignable; cannot change later)" }
                }
                button type="submit" { "Create the group" }
            }
        }
    }
}

/// POST /admin/groups: a new group; its page opens.
pub async fn create(caller: Caller, CheckedForm(fields): CheckedForm) -> Response {
    let created = directory(&caller)
        .create_group(caller.request(ipb::CreateGroupRequest {
            display_name: fields.get("name").trim().to_owned(),
            description: fields.get("description").trim().to_owned(),
            is_assignable_to_role: fields.get("role_assignable") == "on",
            owner_ids: Vec::new(),
        }))
        .await;
    match created {
        Ok(group) => {
            let group = group.into_inner();
            caller.flash(true, format!("The group {} is created.", group.display_name));
            Redirect::to(&format!("/admin/groups/{}", group.id)).into_response()
        }
        Err(status) => {
            caller.flash(false, format!("Not created: {}", Failure::from(status).text()));
            Redirect::to("/admin/directory").into_response()
        }
    }
}
