//! Every event the services publish, one table: its name, and the services that publish it.
//! An envelope's `type` is `{source}.v1.{name}` (`pim.assignment.v1.RoleActivated`); audit's
//! records carry it as their action, and webhooks subscribe to it by either spelling. Audit's
//! own records (a webhook created, an event refused) are audit's events here too.
//!
//! Publishing takes an [`EventType`], so no service publishes a type this table lacks.

/// A service that publishes events, named as envelopes name their `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Identity,
    Assignment,
    Approval,
    Alerting,
    Audit,
}

impl Source {
    pub const ALL: [Self; 5] = [
        Self::Identity,
        Self::Assignment,
        Self::Approval,
        Self::Alerting,
        Self::Audit,
    ];

    /// `pim.identity`, `pim.assignment`, …
    pub const fn name(self) -> &'static str {
        match self {
            Self::Identity => "pim.identity",
            Self::Assignment => "pim.assignment",
            Self::Approval => "pim.approval",
            Self::Alerting => "pim.alerting",
            Self::Audit => "pim.audit",
        }
    }

    /// The source of that name; None for any other.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

macro_rules! published {
    ($($(#[$doc:meta])* $variant:ident: $($source:ident)+;)+) => {
        /// An event a service publishes (see the module's table).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($(#[$doc])* $variant),+
        }

        impl EventType {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// Its short name: `RoleActivated`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }

            /// The services that publish it.
            pub const fn sources(self) -> &'static [Source] {
                match self {
                    $(Self::$variant => &[$(Source::$source),+]),+
                }
            }
        }
    };
}

published! {
    UserCreated: Identity;
    UserUpdated: Identity;
    /// A user's mail address, told once on upgrade to those who keep addresses.
    UserAddressAnnounced: Identity;
    UserDisabled: Identity;
    /// A user disabled before assignment counted disabled users, told once on upgrade.
    UserDisabledAnnounced: Identity;
    UserEnabled: Identity;
    UserDeleted: Identity;
    GroupCreated: Identity;
    GroupUpdated: Identity;
    GroupDeleted: Identity;
    GroupMemberAdded: Identity;
    GroupMemberRemoved: Identity;
    GroupOwnerAdded: Identity;
    GroupOwnerRemoved: Identity;
    ServicePrincipalCreated: Identity;
    /// Told with `ServicePrincipalCreated`'s fields: the principal now holds nothing.
    ServicePrincipalDisabled: Identity;
    SignInSucceeded: Identity;
    SignInMfaPending: Identity;
    SignInEnrollmentPending: Identity;
    SignInFailed: Identity;
    MfaEnrolled: Identity;
    MfaVerified: Identity;
    MfaFailed: Identity;
    MfaLockedOut: Identity;
    MfaMethodRemoved: Identity;
    MfaReset: Identity;
    RecoveryCodeUsed: Identity;
    RecoveryCodesGenerated: Identity;
    EnrollmentPassCreated: Identity;
    EnrollmentPassUsed: Identity;
    CredentialsReset: Identity;
    PasswordChanged: Identity;
    SessionRevoked: Identity;

    RequestCreated: Assignment;
    RequestStatusChanged: Assignment;
    RequestRefused: Assignment;
    EligibilityGranted: Assignment;
    EligibilityUpdated: Assignment;
    EligibilityRemoved: Assignment;
    ActiveAssignmentGranted: Assignment;
    ActiveAssignmentUpdated: Assignment;
    ActiveAssignmentRemoved: Assignment;
    RoleActivated: Assignment;
    RoleDeactivated: Assignment;
    ActivationShortened: Assignment;
    AssignmentExpiring: Assignment;
    PolicyUpdated: Assignment;
    RoleDefinitionCreated: Assignment;
    RoleDefinitionUpdated: Assignment;
    RoleDefinitionDeleted: Assignment;
    UnmanagedGrantDetected: Assignment;
    UnmanagedGrantCleared: Assignment;
    ReviewRemovalApplied: Assignment;
    ReviewRemovalRefused: Assignment;
    /// A Global Administrator holder counted out before identity disables them.
    UserDisablePrepared: Assignment;

    ApprovalCreated: Approval;
    ApprovalStageStarted: Approval;
    ApprovalDecisionRecorded: Approval;
    ApprovalDecisionRefused: Approval;
    SelfApprovalAttempted: Approval;
    ApprovalGranted: Approval;
    ApprovalDenied: Approval;
    ApprovalExpired: Approval;
    ApprovalCanceled: Approval;
    ApprovalEscalated: Approval;
    ApprovalReminder: Approval;
    ReviewCreated: Approval;
    ReviewStarted: Approval;
    ReviewItemDecided: Approval;
    ReviewRemovalRequested: Approval;
    ReviewCompleted: Approval;

    AlertRaised: Alerting;
    AlertUpdated: Alerting;
    AlertStatusChanged: Alerting;
    RuleSettingsUpdated: Alerting;
    /// An alert as an OCSF Detection Finding, on the SOC's stream.
    DetectionFinding: Alerting;

    /// The audit chain's periodic checkpoint.
    ChainCheckpoint: Audit;
    /// A stream entry no key of its owner signed.
    EventRejected: Audit;
    WebhookSubscriptionCreated: Audit;
    WebhookSubscriptionDeleted: Audit;
    WebhookSubscriptionResumed: Audit;
    WebhookSecretRotated: Audit;
    WebhookTest: Audit;
    WebhookDeadLettered: Audit;
    SsfStreamCreated: Audit;
    SsfStreamUpdated: Audit;
    SsfStreamDeleted: Audit;
    SsfStreamStatusChanged: Audit;
    SsfSubjectAdded: Audit;
    SsfSubjectRemoved: Audit;

    /// Mails or other notices due to people (who, and of what).
    NotificationsDue: Assignment Approval;
    /// A refused call: who tried what, and which rule said no.
    AccessDenied: Identity Assignment Approval Alerting Audit;
}

impl EventType {
    /// The type of that short name; None for any other.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Whether audit keeps it as a record (so webhooks can deliver it): all but the events
    /// audit publishes beside its records (the chain's checkpoints, a delivery given up, for
    /// which alerting raises an alert that is recorded) and the SOC stream's findings.
    pub fn is_recorded(self) -> bool {
        !matches!(
            self,
            Self::ChainCheckpoint | Self::DetectionFinding | Self::WebhookDeadLettered
        )
    }

    /// Whether `source` publishes it.
    pub fn is_from(self, source: Source) -> bool {
        self.sources().contains(&source)
    }

    /// Its name in an envelope `source` publishes: `pim.assignment.v1.RoleActivated`.
    pub fn full_name(self, source: Source) -> String {
        format!("{}.v1.{}", source.name(), self.name())
    }

    /// Whether `name` names a published event: its short name, or its full name with a
    /// source that publishes it (the two spellings a subscription may use).
    pub fn is_published(name: &str) -> bool {
        match name.rsplit_once('.') {
            None => Self::parse(name).is_some(),
            Some((prefix, short)) => prefix
                .strip_suffix(".v1")
                .and_then(Source::parse)
                .is_some_and(|source| Self::parse(short).is_some_and(|t| t.is_from(source))),
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_read_back() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(*t));
            for s in t.sources() {
                assert!(EventType::is_published(&t.full_name(*s)), "{}", t.full_name(*s));
            }
        }
        assert!(EventType::is_published("RoleActivated"));
        assert!(
            !EventType::is_published("pim.identity.v1.RoleActivated"),
            "identity does not publish it"
        );
        assert!(!EventType::is_published("RoleActivate"));
        assert!(!EventType::is_published("pim.assignment.RoleActivated"));
        assert!(!EventType::is_published(""));
    }
}
