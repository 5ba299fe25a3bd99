//! `pim login`, `pim whoami`, `pim logout`: a session's start, its holder, its end.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use clap::Args;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
use pim_runtime::db::from_timestamp;

use super::{ClientArgs, Names, Session, explain, mfa, secret_from, time, token_path, write_token};

#[derive(Args)]
pub(crate) struct LoginArgs {
    /// User name (password from --password-stdin, PIM_PASSWORD, or a prompt).
    #[arg(long, conflicts_with = "client_id")]
    user: Option<String>,
    /// Service principal client id (secret from --password-stdin or PIM_CLIENT_SECRET).
    #[arg(long)]
    client_id: Option<String>,
    /// Read the password or client secret from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The authenticator code, to step up at once when you have MFA (otherwise asked on a terminal).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, false)?;
    let mut auth = AuthServiceClient::new(session.channel.clone());
    let response = match (&args.user, &args.client_id) {
        (Some(user), None) => {
            let password = secret_from(args.password_stdin, "PIM_PASSWORD", "Password: ")?;
            auth.sign_in(session.request(ipb::SignInRequest {
                user_name: user.clone(),
                password,
            })?)
            .await
        }
        (None, Some(client_id)) => {
            let client_secret = secret_from(args.password_stdin, "PIM_CLIENT_SECRET", "Client secret: ")?;
            auth.sign_in_service_principal(session.request(ipb::SignInServicePrincipalRequest {
                client_id: client_id.clone(),
                client_secret,
            })?)
            .await
        }
        _ => bail!("pass --user NAME or --client-id ID"),
    }
    .map_err(explain)?
    .into_inner();
    let mut response = response;
    if response.mfa_pending {
        // The server holds the sign-in until a code is verified: the token can do nothing else.
        let code = match (&args.code, std::io::stdin().is_terminal()) {
            (Some(code), _) => code.clone(),
            (None, true) => rpassword::prompt_password("Authenticator code (or a recovery code): ")?,
            (None, false) => {
                bail!("this account has MFA: pass --code (or PIM_MFA_CODE) with a code from the authenticator")
            }
        };
        let pending = session.with_token(&response.access_token);
        response = MfaServiceClient::new(session.channel.clone())
            .verify(pending.request(ipb::VerifyRequest { code })?)
            .await
            .map_err(explain)?
            .into_inner();
        mfa::warn_if_recovery_code(&response);
    } else if response.enrollment_required {
        let path = write_token(&args.client, &response.access_token)?;
        println!(
            "Password accepted. This directory requires MFA and you have no authenticator yet: \
             run `pim mfa enroll --pass PASS` within 5 minutes, with the enrolment pass an administrator gave you \
             (sign-in token in {})",
            path.display()
        );
        return Ok(0);
    } else if args.user.is_some()
        && let Some(code) = &args.code
    {
        // MFA is not asked at sign-in here; a code given anyway steps the session up.
        let signed_in = session.with_token(&response.access_token);
        response = MfaServiceClient::new(session.channel.clone())
            .verify(signed_in.request(ipb::VerifyRequest { code: code.clone() })?)
            .await
            .map_err(explain)?
            .into_inner();
    }
    let path = write_token(&args.client, &response.access_token)?;
    let who = Names::new(&session.with_token(&response.access_token))
        .principal(&response.principal_id)
        .await;
    println!(
        "Signed in as {who} ({}) until {} (token in {})",
        response.principal_id,
        time(response.expires_at.as_ref().map(from_timestamp)),
        path.display()
    );
    Ok(0)
}

pub(crate) async fn whoami(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let id = session.whoami()?;
    // Asking the server checks the token is still good (not expired, not signed out).
    let principal = DirectoryServiceClient::new(session.channel.clone())
        .get_principal(session.request(ipb::GetPrincipalRequest {
            principal_id: id.clone(),
        })?)
        .await
        .map_err(explain)?
        .into_inner();
    let name = if principal.user_name.is_empty() {
        principal.display_name
    } else {
        principal.user_name
    };
    let until = session.claims()?["exp"].as_i64().map(|exp| time(Some(exp * 1000)));
    match until {
        Some(until) => println!("{name} ({id}), signed in until {until}"),
        None => println!("{name} ({id})"),
    }
    Ok(0)
}

pub(crate) async fn logout(client: ClientArgs, everywhere: bool) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    AuthServiceClient::new(session.channel.clone())
        .sign_out(session.request(ipb::SignOutRequest {
            refresh_token: String::new(),
            everywhere,
        })?)
        .await
        .map_err(explain)?;
    let path = token_path(&client)?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    match everywhere {
        true => println!("Signed out everywhere; the tokens of every session of yours no longer work."),
        false => println!("Signed out; the session's tokens no longer work."),
    }
    Ok(0)
}
