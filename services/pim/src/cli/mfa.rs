//! `pim mfa` and `pim password`: enrol a TOTP authenticator (with an administrator's
//! enrolment pass when needed), step up the current session, recovery codes, remove a
//! method, enrolment passes and MFA resets for administrators, and changing one's password.
//! Where the server asks for a recent MFA (`MfaRule`), the command steps up and retries.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use tonic::Status;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
use pim_runtime::db::from_timestamp;
use pim_runtime::grpc::violated_rules;

use super::{Cell, ClientArgs, Session, explain, print_table, secret_from, time, write_token};

#[derive(Subcommand)]
pub(crate) enum MfaCommand {
    /// Enrol an authenticator app: shows an otpauth:// URI once, then asks for a first code.
    /// A first authenticator needs an enrolment pass (--pass) unless your account is new or
    /// its MFA was just reset; another one needs a code from the one you have.
    Enroll {
        /// The first code, to confirm (otherwise you are prompted, or, with no terminal, it is
        /// read from the first line of standard input).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        /// An enrolment pass from an administrator.
        #[arg(long, env = "PIM_MFA_PASS")]
        pass: Option<String>,
        /// A code from the authenticator you have, when adding a second one.
        #[arg(long)]
        current_code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Step up: check a code (or a recovery code) and keep the stepped-up token.
    Verify {
        /// The authenticator code or a recovery code (otherwise you are prompted on a terminal).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Your methods and recovery codes left (or a user's, for directory readers).
    Methods {
        /// User name or id (default: you).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// New single-use recovery codes (shown once; the old ones stop working, and your other
    /// sessions are signed out). Needs a recent MFA: asks for a code when it is not.
    RecoveryCodes {
        /// The authenticator code, when your MFA is not recent (otherwise you are prompted).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove one of your methods (see `pim mfa methods`). Needs a recent MFA.
    Remove {
        /// The method's id (see `pim mfa methods`).
        method_id: String,
        /// The authenticator code, when your MFA is not recent (otherwise you are prompted).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a user's MFA methods (Privileged Authentication Administrators, Global
    /// Administrators for protected users); they may enrol again with their password for a while.
    Reset {
        /// User name or id.
        user: String,
        /// A code from your authenticator, should the server ask for a recent MFA (otherwise
        /// asked for then).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enrolment passes: one-time codes that let a user with no method enrol a first one.
    #[command(subcommand)]
    Pass(PassCommand),
}

#[derive(Subcommand)]
pub(crate) enum PassCommand {
    /// Issue a pass (the code is shown once: give it to the user out of band).
    Create {
        /// User name or id.
        user: String,
        /// How long it works (10m to 30d).
        #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true, default_value = "1h")]
        lifetime: Duration,
        /// How many enrolments it allows (1 to 10).
        #[arg(long, default_value_t = 1)]
        uses: i32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A user's passes that still work (never their codes).
    List {
        /// User name or id.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `pim password`: change your own password.
#[derive(Args)]
pub(crate) struct PasswordArgs {
    /// Read the current and the new password from the first two lines of standard input
    /// (otherwise PIM_PASSWORD and PIM_NEW_PASSWORD, or prompts).
    #[arg(long)]
    password_stdin: bool,
    /// A code from your authenticator, when you have one (otherwise asked if needed).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// The code from --code (or PIM_MFA_CODE), else a prompt on a terminal. Without a terminal
/// there is no one to ask: a clear refusal, never a silent wait on standard input (a cron job
/// would hang there).
fn code(given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(c) => Ok(c),
        None => secret_from(false, "PIM_MFA_CODE", "Authenticator code: "),
    }
}

/// The first code of an authenticator being enrolled: from --code, a prompt on a terminal,
/// else the first line of standard input (a script reads the URI shown, then answers).
fn first_code(given: Option<String>) -> anyhow::Result<String> {
    if given.is_some() || interactive() {
        return code(given);
    }
    let line = secret_from(true, "PIM_MFA_CODE", "")?;
    if line.trim().is_empty() {
        bail!(
            "no code on standard input: pass --code (or set PIM_MFA_CODE), or write the code from the authenticator to pim's standard input"
        );
    }
    Ok(line)
}

/// After a sign-in or step-up with a recovery code: say so, and how many are left.
pub(crate) fn warn_if_recovery_code(response: &ipb::SignInResponse) {
    if let Some(left) = response.recovery_codes_left {
        eprintln!(
            "A recovery code was used ({left} left); your administrators are alerted. \
             If that was not you, tell them now. Regenerate codes with: pim mfa recovery-codes"
        );
    }
}

/// Checks a code, keeps the stepped-up token and returns a session that carries it.
async fn step_up(client: &ClientArgs, session: &Session, given: Option<String>) -> anyhow::Result<Session> {
    let verified = MfaServiceClient::new(session.channel.clone())
        .verify(session.request(ipb::VerifyRequest { code: code(given)? })?)
        .await
        .map_err(explain)?
        .into_inner();
    warn_if_recovery_code(&verified);
    write_token(client, &verified.access_token)?;
    Session::open(client, true)
}

/// Whether the signed-in user has an MFA method (or recovery codes) to step up with; when the
/// server cannot say, taken to have one (the code is asked for, and the server decides).
pub(crate) async fn has_a_method(session: &Session) -> bool {
    let listed = MfaServiceClient::new(session.channel.clone())
        .list_methods(match session.request(ipb::ListMethodsRequest::default()) {
            Ok(request) => request,
            Err(_) => return true,
        })
        .await;
    listed.map_or(true, |l| {
        let l = l.into_inner();
        !l.methods.is_empty() || l.recovery_codes_left > 0
    })
}

/// Makes `call` in a session of `client`; when the server asks for a recent MFA (`MfaRule`),
/// steps up with a code (`given`: --code or PIM_MFA_CODE, else asked for) and makes it once
/// more. `what` names the action in what it says. The session the answer came in is returned
/// with it, to remember the write.
pub(crate) async fn stepping_up<T, F, Fut>(
    client: &ClientArgs,
    what: &str,
    given: Option<String>,
    mut call: F,
) -> anyhow::Result<(Session, T)>
where
    F: FnMut(Session) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut session = Session::open(client, true)?;
    let mut stepped_up = false;
    loop {
        match call(session.clone()).await {
            Ok(answer) => return Ok((session, answer)),
            Err(status) if !stepped_up && wants_mfa(&status) => {
                session = stepped_up_for(client, what, &session, given.clone()).await?;
                stepped_up = true;
            }
            Err(status) => return Err(explain(status)),
        }
    }
}

/// After the server asked `what` for a recent MFA: a session stepped up with a code (`given`,
/// else asked for on a terminal), or why there is none (no terminal to ask at, no method).
pub(crate) async fn stepped_up_for(
    client: &ClientArgs,
    what: &str,
    session: &Session,
    given: Option<String>,
) -> anyhow::Result<Session> {
    if given.is_none() {
        // Nobody to ask for a code they cannot give: no method first, then no terminal.
        if !has_a_method(session).await {
            bail!(
                "{what} needs a recent multi-factor authentication, and you have no MFA method to give a code from: \
                 enrol one with pim mfa enroll, then try again"
            );
        }
        if !interactive() {
            bail!(
                "{what} needs a recent multi-factor authentication: pass --code (or set PIM_MFA_CODE) with a code from your authenticator"
            );
        }
    }
    eprintln!("{what} needs a recent multi-factor authentication.");
    step_up(client, session, given).await
}

/// Makes an assignment request (`CreateRequest`), stepping up where the role's policy wants a
/// recent MFA of the caller: to activate, or to give or change an active assignment.
pub(crate) async fn create_request_stepping_up(
    client: &ClientArgs,
    what: &str,
    given: Option<String>,
    request: pim_proto::assignment::v1::CreateRequestRequest,
) -> anyhow::Result<(Session, pim_proto::assignment::v1::AssignmentRequest)> {
    use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
    stepping_up(client, what, given, |session| {
        let request = request.clone();
        async move {
            let answer = AssignmentServiceClient::new(session.channel.clone())
                .create_request(session.request(request).map_err(status_of)?)
                .await?;
            Ok(session.remember(answer))
        }
    })
    .await
}

/// A request the session could not make (its stored token unreadable), as the server's word
/// for it: sign in again.
pub(crate) fn status_of(err: anyhow::Error) -> Status {
    Status::unauthenticated(format!("{err:#}"))
}

/// Whether the server refused only for want of a recent MFA: where another rule failed too
/// (no ticket, not eligible), a step-up would not do, and the refusal is shown as it is,
/// every rule named.
pub(crate) fn wants_mfa(status: &Status) -> bool {
    violated_rules(status) == ["MfaRule"]
}

pub(crate) async fn run(cmd: MfaCommand) -> anyhow::Result<i32> {
    match cmd {
        MfaCommand::Enroll {
            code: given,
            pass,
            current_code,
            client,
        } => enroll(given, pass, current_code, client).await?,
        MfaCommand::Verify { code: given, client } => {
            let session = Session::open(&client, true)?;
            step_up(&client, &session, given).await?;
            println!("Verified: this session counts as MFA-authenticated now.");
        }
        MfaCommand::Methods { user, client } => {
            let session = Session::open(&client, true)?;
            let listed = MfaServiceClient::new(session.channel.clone())
                .list_methods(session.request(ipb::ListMethodsRequest {
                    user: user.unwrap_or_default(),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            let rows = listed
                .methods
                .iter()
                .map(|m| {
                    vec![
                        m.id.clone(),
                        m.kind.clone(),
                        time(m.created_at.as_ref().map(from_timestamp)),
                    ]
                })
                .collect();
            print_table(&["ID", "KIND", "ENROLLED"], rows);
            let last = listed
                .recovery_code_last_used_at
                .as_ref()
                .map(|t| format!(", one last used {}", time(Some(from_timestamp(t)))))
                .unwrap_or_default();
            println!("Recovery codes left: {}{last}", listed.recovery_codes_left);
        }
        MfaCommand::RecoveryCodes { code: given, client } => {
            let (_, codes) = stepping_up(&client, "Making new recovery codes", given, |session| async move {
                let request = session
                    .request(ipb::GenerateRecoveryCodesRequest {})
                    .map_err(status_of)?;
                let generated = MfaServiceClient::new(session.channel.clone())
                    .generate_recovery_codes(request)
                    .await?;
                Ok(generated.into_inner().codes)
            })
            .await?;
            println!("Recovery codes (each works once; store them offline; your other sessions are signed out):");
            for c in codes {
                println!("  {c}");
            }
        }
        MfaCommand::Remove {
            method_id,
            code: given,
            client,
        } => {
            stepping_up(&client, "Removing a method", given, |session| {
                let method_id = method_id.clone();
                async move {
                    let request = session
                        .request(ipb::RemoveMethodRequest { method_id })
                        .map_err(status_of)?;
                    MfaServiceClient::new(session.channel.clone())
                        .remove_method(request)
                        .await
                }
            })
            .await?;
            println!("Method {method_id} removed.");
        }
        MfaCommand::Reset {
            user,
            code: given,
            client,
        } => {
            stepping_up(&client, "Resetting a user's MFA", given, |session| {
                let user = user.clone();
                async move {
                    let request = session.request(ipb::ResetMfaRequest { user }).map_err(status_of)?;
                    MfaServiceClient::new(session.channel.clone()).reset_mfa(request).await
                }
            })
            .await?;
            println!("MFA reset for {user}: they may enrol a new authenticator with their password for a while.");
        }
        MfaCommand::Pass(PassCommand::Create {
            user,
            lifetime,
            uses,
            client,
        }) => {
            let session = Session::open(&client, true)?;
            let created = MfaServiceClient::new(session.channel.clone())
                .create_enrollment_pass(session.request(ipb::CreateEnrollmentPassRequest {
                    user: user.clone(),
                    lifetime: Some(pim_runtime::db::duration_pb(lifetime)),
                    uses,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            let pass = created.pass.unwrap_or_default();
            println!("Enrolment pass for {user} (shown once; give it to them out of band):");
            println!("  {}", created.code);
            println!(
                "It works {} time(s) until {}: pim mfa enroll --pass {}",
                pass.uses_left,
                time(pass.expires_at.as_ref().map(from_timestamp)),
                created.code
            );
        }
        MfaCommand::Pass(PassCommand::List { user, client }) => {
            let session = Session::open(&client, true)?;
            let passes = MfaServiceClient::new(session.channel.clone())
                .list_enrollment_passes(session.request(ipb::ListEnrollmentPassesRequest { user })?)
                .await
                .map_err(explain)?
                .into_inner()
                .passes;
            let rows = passes
                .iter()
                .map(|p| {
                    vec![
                        Cell::from(p.id.clone()),
                        p.created_by.clone().into(),
                        time(p.created_at.as_ref().map(from_timestamp)).into(),
                        time(p.expires_at.as_ref().map(from_timestamp)).into(),
                        Cell::Count(p.uses_left.into()),
                    ]
                })
                .collect();
            print_table(&["ID", "CREATED BY", "CREATED", "EXPIRES", "USES LEFT"], rows);
        }
    }
    Ok(0)
}

fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

async fn enroll(
    given: Option<String>,
    pass: Option<String>,
    current_code: Option<String>,
    client: ClientArgs,
) -> anyhow::Result<()> {
    let mut session = Session::open(&client, true)?;
    let mut current_code = current_code;
    let request = ipb::EnrollTotpRequest {
        enrollment_pass: pass.unwrap_or_default(),
    };
    let enrolled = loop {
        match MfaServiceClient::new(session.channel.clone())
            .enroll_totp(session.request(request.clone())?)
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(status) if wants_mfa(&status) && (current_code.is_some() || interactive()) => {
                eprintln!("Adding another authenticator needs a code from the one you have.");
                session = step_up(&client, &session, current_code.take()).await?;
            }
            Err(status) => return Err(explain(status)),
        }
    };
    println!("Add this to your authenticator app (shown once; it is a secret):");
    println!("  {}", enrolled.otpauth_uri);
    // Most authenticator apps scan it instead.
    match qrcode::QrCode::new(enrolled.otpauth_uri.as_bytes()) {
        Ok(qr) => println!(
            "{}",
            qr.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        ),
        Err(err) => eprintln!("(no QR code: {err})"),
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    let code = first_code(given)?;
    let confirmed = MfaServiceClient::new(session.channel.clone())
        .confirm_totp(session.request(ipb::ConfirmTotpRequest {
            method_id: enrolled.method_id,
            code,
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    // The confirming code is an MFA: keep the token it earned (it completes a sign-in that
    // was waiting for an enrolment).
    if let Some(stepped) = confirmed.session {
        write_token(&client, &stepped.access_token)?;
    }
    println!("Authenticator enrolled. Keep recovery codes too: pim mfa recovery-codes");
    Ok(())
}

/// `pim password`: the current password, then the new one; a code when the server asks.
pub(crate) async fn change_password(args: PasswordArgs) -> anyhow::Result<i32> {
    let (current, new) = if args.password_stdin {
        let mut lines = std::io::stdin().lines();
        let mut next = || -> anyhow::Result<String> {
            lines
                .next()
                .transpose()?
                .ok_or_else(|| anyhow::anyhow!("--password-stdin needs two lines: the current and the new password"))
        };
        (next()?, next()?)
    } else {
        (
            secret_from(false, "PIM_PASSWORD", "Current password: ")?,
            secret_from(false, "PIM_NEW_PASSWORD", "New password: ")?,
        )
    };
    let request = ipb::ChangePasswordRequest {
        current_password: current,
        new_password: new,
    };
    stepping_up(&args.client, "Changing your password", args.code, |session| {
        let request = request.clone();
        async move {
            let request = session.request(request).map_err(status_of)?;
            AuthServiceClient::new(session.channel.clone())
                .change_password(request)
                .await
        }
    })
    .await?;
    println!("Password changed; your other sessions are signed out.");
    Ok(0)
}
