//! The first Global Administrator (break-glass): a permanent, active assignment at `/`,
//! made once, when the directory has none.

use pim_assignment::Assignment;
use pim_identity::Identity;

/// The break-glass account's user name.
pub const ADMIN_USER: &str = "admin";

/// Returns the administrator's user name and password when it created (or re-keyed) it.
pub async fn run(identity: &Identity, assignment: &Assignment) -> anyhow::Result<Option<(String, String)>> {
    if assignment.assignments().has_active_global_admin().await? {
        return Ok(None);
    }
    // Assignment counts only users it was told are enabled, and may not have been told yet:
    // the directory has the last word.
    let holders = assignment.assignments().permanent_global_admin_holders().await?;
    if identity.directory().any_enabled(&holders).await? {
        return Ok(None);
    }
    let (user, password) = identity.directory().bootstrap_admin(ADMIN_USER).await?;
    assignment
        .assignments()
        .bootstrap_global_admin(&user.id, &user.user_name)
        .await?;
    Ok(Some((user.user_name, password)))
}
