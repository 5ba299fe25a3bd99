//! Role policies with Entra's shipped defaults, and the checks an assignment or an
//! activation must pass under them.

use super::*;

/// When an assignment holds: from `start` (ms) until `end` (ms), or for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub start: i64,
    pub end: Option<i64>,
}

/// How the request asked for the end of its schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiration {
    At(i64),
    After(Duration),
    Permanent,
    /// Not given: the policy's maximum applies.
    Unspecified,
}

/// The role management policy for a (role, scope). Defaults are Entra's shipped values.
/// Stored as JSON (and recorded on each request, so a later change does not alter the rules
/// for a request already in flight).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Policy {
    pub activation_max_duration: Duration,
    pub activation_requires_mfa: bool,
    /// With `activation_requires_mfa`: only a passkey's MFA counts (phishing-resistant).
    pub activation_requires_phishing_resistant_mfa: bool,
    pub activation_requires_justification: bool,
    pub activation_requires_ticket: bool,
    pub approval_required: bool,
    pub approver_ids: Vec<String>,
    pub approval_timeout: Duration,
    pub eligible_allow_permanent: bool,
    pub eligible_max_duration: Duration,
    pub active_allow_permanent: bool,
    pub active_max_duration: Duration,
    pub active_requires_justification: bool,
    /// An administrator giving or changing an active assignment verified a second factor
    /// within `mfa_freshness` (Entra's "require MFA on active assignment").
    pub active_requires_mfa: bool,
    pub mfa_freshness: Duration,
    pub min_activation_before_deactivate: Duration,
    /// Approval stages in order; empty means one stage of `approver_ids` with
    /// `approval_timeout` where the first decision wins.
    pub approval_stages: Vec<ApprovalStage>,
    /// Who hears of assignments and activations by email; an (event, party) not listed has
    /// the default rule ([`NotificationRule::default_for`]).
    pub notification_rules: Vec<NotificationRule>,
}

const MAX_STAGES: usize = 5;
const MAX_APPROVERS: usize = 100;

impl Default for Policy {
    fn default() -> Self {
        Self {
            activation_max_duration: 8 * HOUR,
            activation_requires_mfa: true,
            activation_requires_phishing_resistant_mfa: false,
            activation_requires_justification: true,
            activation_requires_ticket: false,
            approval_required: false,
            approver_ids: Vec::new(),
            approval_timeout: 24 * HOUR,
            eligible_allow_permanent: true,
            eligible_max_duration: 365 * DAY,
            active_allow_permanent: false,
            active_max_duration: 180 * DAY,
            active_requires_justification: true,
            active_requires_mfa: false,
            mfa_freshness: Duration::from_secs(600),
            min_activation_before_deactivate: Duration::ZERO,
            approval_stages: Vec::new(),
            notification_rules: Vec::new(),
        }
    }
}

/// What an administrator asks to assign.
#[derive(Clone, Debug)]
pub struct AdminAssignment {
    pub kind: Kind,
    pub start: Option<i64>,
    pub expiration: Expiration,
    pub justification: String,
}

/// What a principal asks for when activating an eligible role.
#[derive(Clone, Debug, Default)]
pub struct ActivationAsk {
    pub start: Option<i64>,
    pub duration: Option<Duration>,
    pub end: Option<i64>,
    pub justification: String,
    pub ticket_system: String,
    pub ticket_number: String,
}

/// What the caller's token says about MFA.
#[derive(Clone, Copy, Debug, Default)]
pub struct MfaState {
    /// Whether the token's `amr` includes a second factor.
    pub has_otp: bool,
    /// When MFA last succeeded (ms since the epoch).
    pub mfa_at: Option<i64>,
    /// Whether that MFA was phishing-resistant (a passkey: `amr` `hwk`).
    pub phishing_resistant: bool,
}

const MINUTE: Duration = Duration::from_secs(60);

pub(super) fn violation(kind: &'static str, message: impl Into<String>) -> RuleViolation {
    RuleViolation {
        kind,
        message: message.into(),
    }
}

impl Policy {
    /// Checks a policy an administrator wants to set; every bad field is reported.
    pub fn validate(&self) -> Result<()> {
        let within = |field: &'static str, d: Duration, min: Duration, max: Duration| {
            if d < min || d > max {
                Err(Error::invalid(
                    field,
                    format!("must be between {}s and {}s", min.as_secs(), max.as_secs()),
                ))
            } else {
                Ok(())
            }
        };
        within(
            "activation_max_duration",
            self.activation_max_duration,
            MINUTE,
            24 * HOUR,
        )?;
        within("approval_timeout", self.approval_timeout, MINUTE, 30 * DAY)?;
        within(
            "eligible_max_duration",
            self.eligible_max_duration,
            MINUTE,
            5 * 365 * DAY,
        )?;
        within("active_max_duration", self.active_max_duration, MINUTE, 5 * 365 * DAY)?;
        // An MFA is told to the second: a freshness of none no code could meet.
        within("mfa_freshness", self.mfa_freshness, Duration::from_secs(1), 24 * HOUR)?;
        within(
            "min_activation_before_deactivate",
            self.min_activation_before_deactivate,
            Duration::ZERO,
            24 * HOUR,
        )?;
        // A floor as long as the longest activation: none could ever be ended early.
        if self.min_activation_before_deactivate >= self.activation_max_duration
            && !self.min_activation_before_deactivate.is_zero()
        {
            return Err(Error::invalid(
                "min_activation_before_deactivate",
                format!(
                    "must be shorter than activation_max_duration ({}), or no activation could be ended early",
                    pim_runtime::format::duration(self.activation_max_duration)
                ),
            ));
        }
        let ids_ok = |ids: &[String]| ids.len() <= MAX_APPROVERS && ids.iter().all(|a| !a.trim().is_empty());
        if !ids_ok(&self.approver_ids) {
            return Err(Error::invalid("approver_ids", "at most 100 non-empty principal ids"));
        }
        if self.approval_stages.len() > MAX_STAGES {
            return Err(Error::invalid("approval_stages", "at most 5 stages"));
        }
        for stage in &self.approval_stages {
            if !ids_ok(&stage.approver_ids) || !ids_ok(&stage.escalation_approver_ids) {
                return Err(Error::invalid(
                    "approval_stages.approver_ids",
                    "at most 100 non-empty principal ids",
                ));
            }
            if stage.approvals_required == 0 || stage.approvals_required > 10 {
                return Err(Error::invalid("approval_stages.approvals_required", "must be 1 to 10"));
            }
            within("approval_stages.timeout", stage.timeout, MINUTE, 30 * DAY)?;
            if stage.escalate_after >= stage.timeout {
                return Err(Error::invalid(
                    "approval_stages.escalate_after",
                    "must be shorter than the stage's timeout",
                ));
            }
        }
        self.validate_notifications()
    }

    /// Checks an activation against the policy and resolves its schedule: it starts at the
    /// requested start (or now) and lasts the requested duration (or the policy's maximum),
    /// never past the end of the eligibility it comes from. Every failed rule is reported.
    pub fn check_activation(
        &self,
        ask: &ActivationAsk,
        mfa: MfaState,
        eligible_until: Option<i64>,
        now: i64,
    ) -> std::result::Result<Schedule, Vec<RuleViolation>> {
        let mut violations = Vec::new();
        if self.activation_requires_mfa {
            let fresh = self.mfa_is_fresh(mfa, now);
            // A code can be phished; a passkey is bound to the portal's origin. Where the role
            // wants a passkey, that is what the refusal asks for, however recent a code was.
            let passkey_needed = self.activation_requires_phishing_resistant_mfa;
            if !fresh || (passkey_needed && !mfa.phishing_resistant) {
                let seconds = self.mfa_freshness.as_secs();
                let message = if passkey_needed {
                    format!(
                        "a phishing-resistant multi-factor authentication (a passkey) within the last {seconds} s is required: \
                         verify with your passkey and retry (a code does not do for this role)"
                    )
                } else {
                    format!(
                        "multi-factor authentication within the last {seconds} s is required: verify a code and retry"
                    )
                };
                violations.push(violation("MfaRule", message));
            }
        }
        if self.activation_requires_justification && ask.justification.trim().is_empty() {
            violations.push(violation("JustificationRule", "a justification is required"));
        }
        if self.activation_requires_ticket
            && (ask.ticket_system.trim().is_empty() || ask.ticket_number.trim().is_empty())
        {
            violations.push(violation("TicketingRule", "a ticket (system and number) is required"));
        }
        let start = ask.start.unwrap_or(now).max(now);
        let max = self.activation_max_duration.as_millis() as i64;
        let length = match (ask.duration, ask.end) {
            (Some(d), _) => d.as_millis() as i64,
            (None, Some(end)) => end - start,
            (None, None) => max,
        };
        if length <= 0 {
            violations.push(violation("ExpirationRule", "the activation must last some time"));
        } else if length > max {
            violations.push(violation(
                "ExpirationRule",
                format!(
                    "activations of this role may last at most {}",
                    pim_runtime::format::duration(self.activation_max_duration)
                ),
            ));
        }
        if let Some(until) = eligible_until
            && start >= until
        {
            violations.push(violation(
                "ExpirationRule",
                "the eligibility ends before the activation would start",
            ));
        }
        let asked_end = start.saturating_add(length);
        let end = eligible_until.map_or(asked_end, |until| asked_end.min(until));
        violations.extend(past_the_last_moment(end));
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(Schedule { start, end: Some(end) })
    }

    /// Checks a new end for an assignment that runs from `start`: it must lie ahead, and the
    /// assignment may last at most the policy's maximum from now (or be permanent where allowed);
    /// an active one, given longer or another end, is justified as when it was given.
    pub fn check_new_end(
        &self,
        kind: Kind,
        start: i64,
        end: Option<i64>,
        justification: &str,
        now: i64,
    ) -> std::result::Result<(), Vec<RuleViolation>> {
        let (allow_permanent, max) = match kind {
            Kind::Eligible => (self.eligible_allow_permanent, self.eligible_max_duration),
            Kind::Active => (self.active_allow_permanent, self.active_max_duration),
        };
        let problem = match end {
            None if !allow_permanent => Some(format!(
                "permanent {} assignments are not allowed for this role",
                kind.as_str()
            )),
            None => None,
            Some(end) if end <= now.max(start) => Some("the new end must lie ahead".to_owned()),
            Some(end) if end > pim_runtime::db::LATEST_MS => Some(LAST_MOMENT.to_owned()),
            Some(end) if end - now.max(start) > max.as_millis() as i64 => Some(format!(
                "{} assignments may last at most {}",
                kind.as_str(),
                pim_runtime::format::duration(max)
            )),
            Some(_) => None,
        };
        let mut violations: Vec<RuleViolation> = problem.map(|m| violation("ExpirationRule", &m)).into_iter().collect();
        violations.extend(self.unjustified(kind, justification));
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }

    /// Whether `mfa` was verified within the policy's freshness window.
    fn mfa_is_fresh(&self, mfa: MfaState, now: i64) -> bool {
        pim_runtime::auth::mfa_is_fresh(mfa.has_otp, mfa.mfa_at, now, self.mfa_freshness.as_millis() as i64)
    }

    /// Whether whoever gives or changes an assignment of `kind` (an administrator, or the
    /// approver of a request to keep one) must have verified a second factor recently.
    pub fn wants_administrator_mfa(&self, kind: Kind) -> bool {
        kind == Kind::Active && self.active_requires_mfa
    }

    /// "Require MFA on active assignment": the administrator (`mfa` is theirs) giving or
    /// changing an active assignment verified a second factor recently enough.
    pub fn unverified_administrator(&self, kind: Kind, mfa: MfaState, now: i64) -> Option<RuleViolation> {
        (self.wants_administrator_mfa(kind) && !self.mfa_is_fresh(mfa, now)).then(|| {
            violation(
                "MfaRule",
                format!(
                    "giving or changing an active assignment of this role needs your multi-factor authentication \
                     within the last {} s: verify a code and retry",
                    self.mfa_freshness.as_secs()
                ),
            )
        })
    }

    /// "Active assignments require justification", for whatever gives or changes one.
    fn unjustified(&self, kind: Kind, justification: &str) -> Option<RuleViolation> {
        (kind == Kind::Active && self.active_requires_justification && justification.trim().is_empty())
            .then(|| violation("JustificationRule", "a justification is required"))
    }

    /// Checks an admin assignment against the policy and resolves its schedule; every failed
    /// rule is reported, not only the first.
    pub fn check_admin_assignment(
        &self,
        a: &AdminAssignment,
        administrator: MfaState,
        now: i64,
    ) -> std::result::Result<Schedule, Vec<RuleViolation>> {
        let mut violations: Vec<RuleViolation> = self
            .unverified_administrator(a.kind, administrator, now)
            .into_iter()
            .collect();
        let start = a.start.unwrap_or(now).max(now);
        let (allow_permanent, max) = match a.kind {
            Kind::Eligible => (self.eligible_allow_permanent, self.eligible_max_duration),
            Kind::Active => (self.active_allow_permanent, self.active_max_duration),
        };
        let max_ms = max.as_millis() as i64;
        let end = match a.expiration {
            Expiration::Permanent if allow_permanent => None,
            Expiration::Permanent => {
                violations.push(RuleViolation {
                    kind: "ExpirationRule",
                    message: format!(
                        "permanent {} assignments are not allowed for this role",
                        a.kind.as_str()
                    ),
                });
                None
            }
            Expiration::Unspecified if allow_permanent => None,
            Expiration::Unspecified => Some(start + max_ms),
            Expiration::After(d) => Some(start + d.as_millis() as i64),
            Expiration::At(t) => Some(t),
        };
        if let Some(end) = end {
            if end <= start {
                violations.push(RuleViolation {
                    kind: "ExpirationRule",
                    message: "the schedule ends before it starts".into(),
                });
            } else if end - start > max_ms {
                violations.push(RuleViolation {
                    kind: "ExpirationRule",
                    message: format!(
                        "{} assignments may last at most {}",
                        a.kind.as_str(),
                        pim_runtime::format::duration(max)
                    ),
                });
            }
        }
        violations.extend(end.and_then(past_the_last_moment));
        violations.extend(self.unjustified(a.kind, &a.justification));
        if violations.is_empty() {
            Ok(Schedule { start, end })
        } else {
            Err(violations)
        }
    }
}

const LAST_MOMENT: &str = "the schedule must end by 9999-12-31T23:59:59Z, the last moment a time is told";

/// No schedule ends past the last moment the contracts can tell: a start near it leaves no
/// room for the length asked.
fn past_the_last_moment(end: i64) -> Option<RuleViolation> {
    (end > pim_runtime::db::LATEST_MS).then(|| violation("ExpirationRule", LAST_MOMENT))
}

/// A length as the contracts (events and the API) carry it: whole seconds.
pub fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: 0,
    }
}

impl ApprovalStage {
    /// This stage as the contracts (events and the API) carry it.
    pub fn to_pb(&self) -> pim_proto::common::v1::ApprovalStageSettings {
        pim_proto::common::v1::ApprovalStageSettings {
            approver_ids: self.approver_ids.clone(),
            approvals_required: self.approvals_required as i32,
            timeout: Some(duration_to_pb(self.timeout)),
            escalation_approver_ids: self.escalation_approver_ids.clone(),
            escalate_after: (!self.escalate_after.is_zero()).then(|| duration_to_pb(self.escalate_after)),
            justification_required: self.justification_required,
        }
    }
}

#[cfg(test)]
mod tests;
