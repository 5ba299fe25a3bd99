//! `pim users`: the directory's users, from creation to deletion.

use clap::Subcommand;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use super::mfa::{status_of, stepping_up};
use super::{ClientArgs, Session, explain, print_table, secret_from};

#[derive(Subcommand)]
pub(crate) enum UsersCommand {
    /// Create a user. Without --password-stdin a strong password is generated and shown once.
    Create {
        /// The name the user signs in with (unique).
        #[arg(long)]
        user_name: String,
        /// The name people see, e.g. "Lee Gu".
        #[arg(long, default_value = "")]
        display_name: String,
        /// Where the user is reached.
        #[arg(long, default_value = "")]
        email: String,
        /// Read the initial password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one user (by id or user name).
    Get {
        /// User name or id.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List users.
    List {
        /// Only users whose user name or display name contains this text.
        #[arg(long, default_value = "")]
        filter: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a user's display name or email.
    Update {
        /// User name or id.
        user: String,
        /// The new display name.
        #[arg(long)]
        display_name: Option<String>,
        /// The new email address.
        #[arg(long)]
        email: Option<String>,
        /// A code from your authenticator, should the server ask for a recent MFA (a
        /// privileged user's email is theirs to reset credentials with; otherwise asked then).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a user: no more sign-ins, and their tokens stop working at once.
    Disable {
        /// User name or id.
        user: String,
        /// A code from your authenticator, should the server ask for a recent MFA (otherwise
        /// asked for then).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a disabled user again.
    Enable {
        /// User name or id.
        user: String,
        /// A code from your authenticator, should the server ask for a recent MFA (otherwise
        /// asked for then).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a user (only one without assignments: remove those first).
    Delete {
        /// User name or id.
        user: String,
        /// A code from your authenticator, should the server ask for a recent MFA (otherwise
        /// asked for then).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a user a new password (generated and shown once, or read from stdin); for
    /// administrators of credentials (a privileged user's need a privileged one).
    ResetPassword {
        /// User name or id.
        user: String,
        /// Read the new password from stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        /// A code from your authenticator, should the server ask for a recent MFA (otherwise
        /// asked for then).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The user `user` names (a user name or an id), as the directory holds them now.
async fn user_named(session: &Session, user: String) -> anyhow::Result<ipb::User> {
    Ok(DirectoryServiceClient::new(session.channel.clone())
        .get_user(session.request(ipb::GetUserRequest { user })?)
        .await
        .map_err(explain)?
        .into_inner())
}

/// After an enable: the access the user holds again, said on stderr (what was theirs when
/// disabled comes back with the account, an activation that won a race with the disable
/// included), for whoever enabled them to check. Unsaid where the caller may not read it.
async fn tell_what_comes_back(session: &Session, u: &ipb::User) {
    let ask = pim_proto::assignment::v1::ListAssignmentsRequest {
        principal_id: u.id.clone(),
        ..Default::default()
    };
    let mut held = Vec::new();
    for (active, kind) in [(true, "active"), (false, "eligible")] {
        let Ok(listed) = super::listings::assignments(session, active, &ask).await else {
            return;
        };
        held.extend(listed.into_iter().map(|a| {
            let until = super::time(a.end_time.as_ref().map(pim_runtime::db::from_timestamp));
            format!("  {kind} {} at {} until {until}", a.role_name, a.scope)
        }));
    }
    if !held.is_empty() {
        eprintln!(
            "{} holds again (check each is still wanted: pim unassign removes one):",
            u.user_name
        );
        for line in held {
            eprintln!("{}", super::printable(&line));
        }
    }
}

/// A user's columns, as [`user_row`] fills them.
const USER_COLUMNS: &[&str] = &["ID", "USER NAME", "DISPLAY NAME", "EMAIL", "STATE"];

fn user_row(u: &ipb::User) -> Vec<String> {
    vec![
        u.id.clone(),
        u.user_name.clone(),
        u.display_name.clone(),
        u.email.clone(),
        if u.enabled { "enabled" } else { "disabled" }.into(),
    ]
}

/// A user's new password: read from stdin, or generated (and then shown once); says which.
fn new_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    Ok(if from_stdin {
        (secret_from(true, "", "")?, false)
    } else {
        (pim_identity::generate_password(), true)
    })
}

pub(crate) async fn users(cmd: UsersCommand) -> anyhow::Result<i32> {
    match cmd {
        UsersCommand::Create {
            user_name,
            display_name,
            email,
            password_stdin,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let (password, generated) = new_password(password_stdin)?;
            let user = DirectoryServiceClient::new(session.channel.clone())
                .create_user(session.request(ipb::CreateUserRequest {
                    user_name,
                    display_name,
                    email,
                    password: password.clone(),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            let mut words = format!("Created user {} ({})", user.user_name, user.id);
            if generated {
                words.push_str(&format!("\nInitial password (shown once): {password}"));
            }
            super::print_made(
                &words,
                serde_json::json!({
                    "id": user.id,
                    "user_name": user.user_name,
                    "initial_password": generated.then_some(&password),
                }),
            );
        }
        UsersCommand::Get { user, client } => {
            let session = Session::open(&client, true)?;
            let u = user_named(&session, user).await?;
            print_table(USER_COLUMNS, vec![user_row(&u)]);
        }
        UsersCommand::List { filter, client } => {
            let session = Session::open(&client, true)?;
            let users = super::listings::users(&session, &filter).await?;
            print_table(USER_COLUMNS, users.iter().map(user_row).collect());
        }
        UsersCommand::Update {
            user,
            display_name,
            email,
            code,
            client,
        } => {
            let session = Session::open(&client, true)?;
            // Unchanged fields keep what the user has.
            let current = user_named(&session, user.clone()).await?;
            let update = ipb::UpdateUserRequest {
                user: current.id.clone(),
                display_name: display_name.unwrap_or(current.display_name),
                email: email.unwrap_or(current.email),
            };
            let (_, u) = stepping_up(&client, "Updating a user", code, |session| {
                let update = update.clone();
                async move {
                    let request = session.request(update).map_err(status_of)?;
                    let answer = DirectoryServiceClient::new(session.channel.clone())
                        .update_user(request)
                        .await?;
                    Ok(session.remember(answer))
                }
            })
            .await?;
            print_table(USER_COLUMNS, vec![user_row(&u)]);
        }
        UsersCommand::Disable { user, code, client } => {
            let (session, answer) = stepping_up(&client, "Disabling a user", code, |session| {
                let user = user.clone();
                async move {
                    let request = session.request(ipb::GetUserRequest { user }).map_err(status_of)?;
                    DirectoryServiceClient::new(session.channel.clone())
                        .disable_user(request)
                        .await
                }
            })
            .await?;
            // Its next `pim check` sees the user's access gone.
            let u = session.remember(answer);
            println!("User {} disabled: no sign-ins, and their sessions ended", u.user_name);
        }
        UsersCommand::Enable { user, code, client } => {
            // Already enabled: nothing comes back, so nothing is said to come back.
            let session = Session::open(&client, true)?;
            let current = user_named(&session, user.clone()).await?;
            if current.enabled {
                println!("User {} is already enabled", current.user_name);
                return Ok(0);
            }
            let (session, answer) = stepping_up(&client, "Enabling a user", code, |session| {
                let user = user.clone();
                async move {
                    let request = session.request(ipb::GetUserRequest { user }).map_err(status_of)?;
                    DirectoryServiceClient::new(session.channel.clone())
                        .enable_user(request)
                        .await
                }
            })
            .await?;
            let u = session.remember(answer);
            println!("User {} enabled", u.user_name);
            tell_what_comes_back(&session, &u).await;
        }
        UsersCommand::Delete { user, code, client } => {
            let (session, answer) = stepping_up(&client, "Deleting a user", code, |session| {
                let user = user.clone();
                async move {
                    let request = session.request(ipb::GetUserRequest { user }).map_err(status_of)?;
                    DirectoryServiceClient::new(session.channel.clone())
                        .delete_user(request)
                        .await
                }
            })
            .await?;
            session.remember(answer);
            println!("User {user} deleted");
        }
        UsersCommand::ResetPassword {
            user,
            password_stdin,
            code,
            client,
        } => {
            let (password, generated) = new_password(password_stdin)?;
            stepping_up(&client, "Resetting a password", code, |session| {
                let request = ipb::ResetPasswordRequest {
                    user: user.clone(),
                    new_password: password.clone(),
                };
                async move {
                    let request = session.request(request).map_err(status_of)?;
                    DirectoryServiceClient::new(session.channel.clone())
                        .reset_password(request)
                        .await
                }
            })
            .await?;
            let mut words = format!("Password of {user} reset");
            if generated {
                words.push_str(&format!("\nNew password (shown once): {password}"));
            }
            super::print_made(
                &words,
                serde_json::json!({"user": user, "new_password": generated.then_some(&password)}),
            );
        }
    }
    Ok(0)
}
