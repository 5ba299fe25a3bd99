//! An example approval bot: signs in as a service principal, watches the approvals it may
//! decide, and approves those that match one rule — the ticket number matches a pattern and
//! the duration is short enough. Everything else it leaves to people. Copy it to build yours:
//! it only uses the public gRPC API (`AuthService.SignInServicePrincipal`,
//! `ApprovalService.WatchApprovals` and `Decide`).
//!
//! A service principal only approves where a role's policy names it as an approver.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use pim_proto::identity::v1::SignInServicePrincipalRequest;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;

/// When the bot approves.
#[derive(Clone, Debug)]
pub struct Rule {
    /// A glob over the ticket number: `*` any run of characters, `?` one character.
    pub ticket_pattern: String,
    /// The longest activation the bot approves.
    pub max_duration: Duration,
}

/// Whether `text` matches `pattern` (`*` and `?` wildcards).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

impl Rule {
    /// `Ok` with the justification to approve with, or `Err` with why it is left to people.
    pub fn verdict(&self, approval: &pb::Approval) -> Result<String, String> {
        let number = approval.ticket.as_ref().map(|t| t.number.as_str()).unwrap_or_default();
        if number.is_empty() || !glob(self.ticket_pattern.as_bytes(), number.as_bytes()) {
            return Err(format!("ticket {number:?} does not match {}", self.ticket_pattern));
        }
        let seconds = approval.duration.as_ref().map(|d| d.seconds).unwrap_or(i64::MAX);
        if seconds <= 0 || seconds as u64 > self.max_duration.as_secs() {
            return Err(format!("{seconds}s is longer than {}s", self.max_duration.as_secs()));
        }
        Ok(format!(
            "auto-approved: ticket {number} matches {} and {}s <= {}s",
            self.ticket_pattern,
            seconds,
            self.max_duration.as_secs()
        ))
    }
}

pub struct Bot {
    pub channel: Channel,
    pub client_id: String,
    pub client_secret: String,
    pub rule: Rule,
}

impl Bot {
    async fn sign_in(&self) -> Result<String, Status> {
        Ok(AuthServiceClient::new(self.channel.clone())
            .sign_in_service_principal(SignInServicePrincipalRequest {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
            })
            .await?
            .into_inner()
            .access_token)
    }

    fn authed<T>(token: &str, message: T) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("the token is not valid metadata"))?;
        request.metadata_mut().insert("authorization", bearer);
        Ok(request)
    }

    /// Watches and decides, resuming from the last approval seen whenever the stream ends: a
    /// token that expired signs in again; a lost connection, a server restarting or any other
    /// passing fault is retried (waiting 1 s, doubling up to 30 s). It gives up only on what
    /// retrying cannot mend: its credentials refused, a permission missing, a request the
    /// server cannot take.
    pub async fn run(&self) -> anyhow::Result<()> {
        let mut cursor = String::new();
        let mut token = None;
        let mut wait = Duration::from_secs(1);
        loop {
            let before = cursor.clone();
            let watched = self.watch(&mut token, &mut cursor).await;
            if cursor != before {
                // It got somewhere: the next fault waits from the start again.
                wait = Duration::from_secs(1);
            }
            match watched {
                Err(status) if status.code() == Code::Unauthenticated => token = None,
                // A cursor the server never issued (its data restored from before it): from
                // the start again; what was decided already is refused and passed over.
                Err(status) if status.code() == Code::InvalidArgument && !cursor.is_empty() => {
                    tracing::warn!(error = %status.message(), "the cursor is not the server's; watching from the start");
                    cursor.clear();
                }
                Err(status) if lasting(status.code()) => return Err(status.into()),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "approval stream lost; resuming");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                // The stream ended without a word: resume in a moment.
                Ok(()) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Signs in unless `token` holds one, then watches from `cursor` and decides each approval.
    async fn watch(&self, token: &mut Option<String>, cursor: &mut String) -> Result<(), Status> {
        let signed_in = match token.clone() {
            Some(signed_in) => signed_in,
            None => {
                let signed_in = self.sign_in().await.map_err(|status| match status.code() {
                    // Its own secret refused: signing in again will not mend that.
                    Code::Unauthenticated => Status::permission_denied(format!(
                        "the bot's client id and secret were refused: {}",
                        status.message()
                    )),
                    _ => status,
                })?;
                token.insert(signed_in).clone()
            }
        };
        let stream = ApprovalServiceClient::new(self.channel.clone())
            .watch_approvals(Self::authed(
                &signed_in,
                pb::WatchApprovalsRequest { cursor: cursor.clone() },
            )?)
            .await?
            .into_inner();
        self.decide_each(&signed_in, stream, cursor).await
    }

    async fn decide_each(
        &self,
        token: &str,
        mut stream: tonic::Streaming<pb::Approval>,
        cursor: &mut String,
    ) -> Result<(), Status> {
        let mut approvals = ApprovalServiceClient::new(self.channel.clone());
        while let Some(approval) = stream.message().await? {
            match self.rule.verdict(&approval) {
                Ok(justification) => {
                    let decided = approvals
                        .decide(Self::authed(
                            token,
                            pb::DecideRequest {
                                approval_id: approval.id.clone(),
                                decision: pb::Decision::Approve as i32,
                                justification,
                            },
                        )?)
                        .await;
                    match decided {
                        Ok(_) => tracing::info!(approval = %approval.id, "approved"),
                        // Someone else decided first, it expired, or a rule a bot cannot meet
                        // (an approver's own MFA): nothing the bot can do; people decide it.
                        Err(s) if s.code() == Code::FailedPrecondition => {
                            tracing::info!(approval = %approval.id, reason = %s.message(), "not approved by the bot; left to people")
                        }
                        // No longer the bot's to decide (its stage moved on, the policy
                        // changed, it is gone): people decide it.
                        Err(s) if matches!(s.code(), Code::PermissionDenied | Code::NotFound) => {
                            tracing::info!(approval = %approval.id, reason = %s.message(), "not the bot's to decide; left to people")
                        }
                        Err(s) => return Err(s),
                    }
                }
                Err(reason) => tracing::info!(approval = %approval.id, %reason, "left to people"),
            }
            // Past it only once it is decided (or left): a stream lost while deciding resumes
            // with it.
            *cursor = approval.cursor;
        }
        Ok(())
    }
}

/// Whether an error is one retrying cannot mend.
fn lasting(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied | Code::InvalidArgument | Code::NotFound | Code::Unimplemented
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(ticket: &str, seconds: i64) -> pb::Approval {
        pb::Approval {
            ticket: Some(pim_proto::common::v1::Ticket {
                system: "ServiceNow".into(),
                number: ticket.into(),
            }),
            duration: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    /// A connection cut (the server killed: UNKNOWN, an h2 error; stopping: CANCELLED or
    /// UNAVAILABLE) is retried; only what retrying cannot mend ends the bot.
    #[test]
    fn the_bot_gives_up_only_on_what_retrying_cannot_mend() {
        for passing in [
            Code::Unknown,
            Code::Cancelled,
            Code::Unavailable,
            Code::Internal,
            Code::Aborted,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(!lasting(passing), "{passing:?}");
        }
        for lasting_code in [Code::PermissionDenied, Code::InvalidArgument, Code::Unimplemented] {
            assert!(lasting(lasting_code), "{lasting_code:?}");
        }
    }

    #[test]
    fn the_rule_needs_a_matching_ticket_and_a_short_enough_duration() {
        let rule = Rule {
            ticket_pattern: "INC*".into(),
            max_duration: Duration::from_secs(3600),
        };
        assert!(rule.verdict(&approval("INC0042", 3600)).is_ok());
        assert!(rule.verdict(&approval("INC0042", 3601)).is_err());
        assert!(rule.verdict(&approval("CHG0042", 600)).is_err());
        assert!(rule.verdict(&approval("", 600)).is_err());
        assert!(glob(b"INC??42", b"INC0042"));
        assert!(!glob(b"INC??42", b"INC00042"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
    }
}
