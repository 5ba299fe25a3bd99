//! `pim mfa`: enrol a TOTP authenticator, step up the current session, recovery codes, reset.

use clap::Subcommand;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;

use super::{ClientArgs, Session, explain, secret_from, write_token};

#[derive(Subcommand)]
pub(crate) enum MfaCommand {
    /// Enrol an authenticator app: shows an otpauth:// URI once, then asks for a first code.
    Enroll {
        /// The first code, to confirm (otherwise you are prompted).
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Step up: check a code (or a recovery code) and keep the stepped-up token.
    Verify {
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// New single-use recovery codes (shown once; the old ones stop working).
    RecoveryCodes {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a user's MFA methods (Privileged Authentication Administrators, Global Administrators).
    Reset {
        /// User name or id.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The code from --code, else a prompt on a terminal, else the next line of standard input.
fn code(given: Option<String>) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    match given {
        Some(c) => Ok(c),
        None if std::io::stdin().is_terminal() => secret_from(false, "PIM_MFA_CODE", "Authenticator code: "),
        None => secret_from(true, "PIM_MFA_CODE", ""),
    }
}

pub(crate) async fn run(cmd: MfaCommand) -> anyhow::Result<i32> {
    match cmd {
        MfaCommand::Enroll { code: given, client } => {
            let session = Session::open(&client, true)?;
            let mut mfa = MfaServiceClient::new(session.channel.clone());
            let enrolled = mfa
                .enroll_totp(session.request(ipb::EnrollTotpRequest {})?)
                .await
                .map_err(explain)?
                .into_inner();
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
            let code = code(given)?;
            mfa.confirm_totp(session.request(ipb::ConfirmTotpRequest {
                method_id: enrolled.method_id,
                code,
            })?)
            .await
            .map_err(explain)?;
            println!("Authenticator enrolled. Keep recovery codes too: pim mfa recovery-codes");
        }
        MfaCommand::Verify { code: given, client } => {
            let session = Session::open(&client, true)?;
            let verified = MfaServiceClient::new(session.channel.clone())
                .verify(session.request(ipb::VerifyRequest { code: code(given)? })?)
                .await
                .map_err(explain)?
                .into_inner();
            write_token(&client, &verified.access_token)?;
            println!("Verified: this session counts as MFA-authenticated now.");
        }
        MfaCommand::RecoveryCodes { client } => {
            let session = Session::open(&client, true)?;
            let codes = MfaServiceClient::new(session.channel.clone())
                .generate_recovery_codes(session.request(ipb::GenerateRecoveryCodesRequest {})?)
                .await
                .map_err(explain)?
                .into_inner()
                .codes;
            println!("Recovery codes (each works once; store them offline):");
            for c in codes {
                println!("  {c}");
            }
        }
        MfaCommand::Reset { user, client } => {
            let session = Session::open(&client, true)?;
            MfaServiceClient::new(session.channel.clone())
                .reset_mfa(session.request(ipb::ResetMfaRequest { user: user.clone() })?)
                .await
                .map_err(explain)?;
            println!("MFA reset for {user}");
        }
    }
    Ok(0)
}
