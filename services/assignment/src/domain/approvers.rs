//! Who approves: the stages of approval a policy asks for, and whether a requester's stage
//! could be approved at all, since nobody approves their own request.

use super::*;

/// One stage of an approval (the approval service runs them).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ApprovalStage {
    /// Users, groups or service principals; empty means the default approvers.
    pub approver_ids: Vec<String>,
    pub approvals_required: u32,
    pub timeout: Duration,
    pub escalation_approver_ids: Vec<String>,
    pub escalate_after: Duration,
    pub justification_required: bool,
}

impl ApprovalStage {
    /// The refusal of stage `n` (from 1), which needs more approvals than it names approvers
    /// and names no group whose members could make up the number
    /// ([`Policy::stages_outnumbering_approvers`]).
    pub fn outnumbered(&self, n: usize) -> Error {
        Error::invalid(
            "approval_stages.approvals_required",
            format!(
                "stage {n} needs {} approvals and names {} approvers, none of them a group whose members could make up the number",
                self.approvals_required,
                self.approver_ids.len()
            ),
        )
    }
}

impl Default for ApprovalStage {
    fn default() -> Self {
        Self {
            approver_ids: Vec::new(),
            approvals_required: 1,
            timeout: 24 * HOUR,
            escalation_approver_ids: Vec::new(),
            escalate_after: Duration::ZERO,
            justification_required: true,
        }
    }
}

/// A stage of approval that names its approvers, as a request of one requester meets it: the
/// others it names ([`Policy::named_deciders`]). Short where it names the requester and too
/// few others to give the approvals it needs without them
/// ([`Policy::stages_short_of_approvers`]).
#[derive(Debug, PartialEq, Eq)]
pub struct ShortStage {
    /// Which stage (from 1), where the policy has several.
    pub stage: Option<usize>,
    /// The other approvers the stage names (users, service principals or groups).
    pub others: Vec<String>,
    pub approvals_required: u32,
    /// Whether the stage names the requester among its approvers.
    pub names_requester: bool,
}

impl ShortStage {
    /// Whether nobody approves their own request leaves the stage short of approvers.
    pub fn is_short(&self) -> bool {
        self.names_requester && self.others.len() < self.approvals_required as usize
    }

    /// The refusal where only `left` of the others named (none of them a group) are
    /// principals the directory still holds enabled, fewer than the approvals the stage needs:
    /// the others were deleted or disabled since the policy named them.
    pub fn too_few_left(&self, left: usize) -> RuleViolation {
        let of_stage = self.stage.map(|n| format!(" of stage {n}")).unwrap_or_default();
        let who = match left {
            0 => "no approver".to_owned(),
            n => format!("only {n} approver{}", if n == 1 { "" } else { "s" }),
        };
        violation(
            "ApprovalRule",
            format!(
                "{who}{of_stage} of this policy can decide any more, and it needs {} approvals (the others were \
                 deleted or disabled since they were named, or are groups that are not role-assignable, which decide \
                 no privileged access); ask an administrator to name others",
                self.approvals_required
            ),
        )
    }

    /// The refusal, where none of the others named is a group whose members could make up
    /// the number.
    pub fn violation(&self) -> RuleViolation {
        let of_stage = self.stage.map(|n| format!(" of stage {n}")).unwrap_or_default();
        let why = match (self.others.len(), self.approvals_required) {
            (0, _) => format!("you are the only approver{of_stage} of this policy, and nobody"),
            (others, required) => format!(
                "the approvers{of_stage} of this policy must give {required} approvals, and besides you it names \
                 only {others}: nobody"
            ),
        };
        violation(
            "ApprovalRule",
            format!("{why} approves their own request; ask an administrator to name another approver"),
        )
    }
}

impl Policy {
    /// The approval stages a request made under this policy goes through.
    pub fn effective_stages(&self) -> Vec<ApprovalStage> {
        if !self.approval_stages.is_empty() {
            return self.approval_stages.clone();
        }
        vec![ApprovalStage {
            approver_ids: self.approver_ids.clone(),
            timeout: self.approval_timeout,
            ..ApprovalStage::default()
        }]
    }

    /// The stages (from 1) that name approvers and need more approvals than they name: only a
    /// group among them, whose members could make up the number, lets such a stage be
    /// approved at all (the caller asks the directory).
    pub fn stages_outnumbering_approvers(&self) -> Vec<(usize, &ApprovalStage)> {
        self.approval_stages
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.approver_ids.is_empty() && s.approvals_required as usize > s.approver_ids.len())
            .map(|(i, s)| (i + 1, s))
            .collect()
    }

    /// Where approval is required, each stage that names its approvers, with those other than
    /// `requester`. Escalation approvers count only where the stage escalates. (A stage without
    /// names goes to the default approvers, who are never short and never all gone.)
    pub fn named_deciders(&self, requester: &str) -> Vec<ShortStage> {
        if !self.approval_required {
            return Vec::new();
        }
        let stages = self.effective_stages();
        stages
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.approver_ids.is_empty())
            .map(|(i, s)| {
                let escalation = if s.escalate_after.is_zero() {
                    &[][..]
                } else {
                    &s.escalation_approver_ids[..]
                };
                let named: Vec<&String> = s.approver_ids.iter().chain(escalation).collect();
                let mut others: Vec<String> = named
                    .iter()
                    .filter(|a| **a != requester)
                    .map(|a| (*a).clone())
                    .collect();
                others.sort();
                others.dedup();
                ShortStage {
                    stage: (stages.len() > 1).then_some(i + 1),
                    names_requester: named.iter().any(|a| *a == requester),
                    others,
                    approvals_required: s.approvals_required,
                }
            })
            .collect()
    }

    /// Where approval is required, each stage that names `requester` among its approvers and
    /// too few others to give the approvals it needs: it would wait until it expires, since
    /// nobody approves their own request. The others named may be groups, whose members could
    /// make up the number: the caller asks the directory before refusing, unless there are
    /// none ([`ShortStage::violation`]).
    pub fn stages_short_of_approvers(&self, requester: &str) -> Vec<ShortStage> {
        self.named_deciders(requester)
            .into_iter()
            .filter(ShortStage::is_short)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_nobody_but_its_requester_could_approve_is_refused() {
        let named = |approvers: &[&str], escalation: &[&str]| Policy {
            approval_required: true,
            approval_stages: vec![
                ApprovalStage::default(),
                ApprovalStage {
                    approver_ids: approvers.iter().map(|a| (*a).to_owned()).collect(),
                    escalation_approver_ids: escalation.iter().map(|a| (*a).to_owned()).collect(),
                    ..ApprovalStage::default()
                },
            ],
            ..Policy::default()
        };
        let short = |p: &Policy, requester| {
            p.stages_short_of_approvers(requester)
                .first()
                .map(ShortStage::violation)
        };
        let refused = short(&named(&["lee"], &[]), "lee").expect("refused");
        assert_eq!(refused.kind, "ApprovalRule");
        assert!(
            refused.message.contains("only approver of stage 2"),
            "{}",
            refused.message
        );
        assert!(short(&named(&["lee", "ann"], &[]), "lee").is_none());
        assert!(short(&named(&["lee"], &["ann"]), "lee").is_some(), "ann never joins");
        let escalating = |after| Policy {
            approval_stages: vec![ApprovalStage {
                approver_ids: vec!["lee".into()],
                escalation_approver_ids: vec!["ann".into()],
                escalate_after: after,
                ..ApprovalStage::default()
            }],
            ..named(&[], &[])
        };
        assert!(short(&escalating(HOUR), "lee").is_none(), "ann, after an hour");
        assert!(short(&named(&["lee"], &[]), "ann").is_none());
        let off = Policy {
            approval_required: false,
            ..named(&["lee"], &[])
        };
        assert!(short(&off, "lee").is_none());
        let single = Policy {
            approval_required: true,
            approver_ids: vec!["lee".into()],
            ..Policy::default()
        };
        let refused = short(&single, "lee").expect("refused");
        assert!(
            refused.message.starts_with("you are the only approver of this policy"),
            "{}",
            refused.message
        );

        // Two of Lee and Ann: Ann alone cannot give two (unless she is a group: asked).
        let two_of = |approvers: &[&str]| Policy {
            approval_required: true,
            approval_stages: vec![ApprovalStage {
                approver_ids: approvers.iter().map(|a| (*a).to_owned()).collect(),
                approvals_required: 2,
                ..ApprovalStage::default()
            }],
            ..Policy::default()
        };
        let stage = two_of(&["lee", "ann"])
            .stages_short_of_approvers("lee")
            .pop()
            .expect("short");
        assert_eq!(
            stage,
            ShortStage {
                stage: None,
                others: vec!["ann".into()],
                approvals_required: 2,
                names_requester: true,
            }
        );
        assert!(
            stage
                .violation()
                .message
                .starts_with("the approvers of this policy must give 2 approvals, and besides you it names only 1"),
            "{}",
            stage.violation().message
        );
        assert!(
            two_of(&["lee", "ann", "bob"])
                .stages_short_of_approvers("lee")
                .is_empty()
        );
        assert!(two_of(&["ann", "bob"]).stages_short_of_approvers("lee").is_empty());
        // Every stage is weighed: a later one naming the requester alone is short too.
        let both = Policy {
            approval_stages: vec![
                ApprovalStage {
                    approver_ids: vec!["lee".into(), "approvers-group".into()],
                    approvals_required: 2,
                    ..ApprovalStage::default()
                },
                ApprovalStage {
                    approver_ids: vec!["lee".into()],
                    ..ApprovalStage::default()
                },
            ],
            ..two_of(&[])
        };
        let short: Vec<Option<usize>> = both.stages_short_of_approvers("lee").iter().map(|s| s.stage).collect();
        assert_eq!(short, vec![Some(1), Some(2)]);
    }
}
