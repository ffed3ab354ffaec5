//! Plans (`docs/agent-runtime.md`, "Planning"): how a plan and its subtasks look on every wire
//! (runtime events, the IDE's frames, REST answers), and the decisions a person takes on one.

use serde::{Deserialize, Serialize};

/// The architect's tool that proposes a plan. Its call is the plan's approval request: no
/// client runs it as a tool.
pub const CREATE_PLAN_TOOL: &str = "create_plan";

/// Where a plan is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// Written by the architect; waits for a person's decision.
    AwaitingApproval,
    /// Approved; its first subtask has not started yet.
    Approved,
    /// Its subtasks are running.
    InProgress,
    /// Every subtask completed or was skipped.
    Completed,
    /// A person rejected it.
    Rejected,
    /// A subtask failed: the plan waits for `retry`, `skip` or `cancel`.
    Failed,
    /// Cancelled before it completed.
    Cancelled,
}

/// Where a subtask is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubtaskStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    Skipped,
    Cancelled,
}

/// `as_str` and `parse` for an enum of fixed wire (or stored) names; also used by the runtime's
/// stored records.
#[macro_export]
macro_rules! wire_names {
    ($kind:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $kind {
            /// The wire (and stored) name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($kind::$variant => $name,)*
                }
            }

            /// The value a wire (or stored) name names.
            pub fn parse(value: &str) -> Option<Self> {
                match value {
                    $($name => Some($kind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

wire_names!(PlanStatus {
    AwaitingApproval => "awaiting_approval",
    Approved => "approved",
    InProgress => "in_progress",
    Completed => "completed",
    Rejected => "rejected",
    Failed => "failed",
    Cancelled => "cancelled",
});

wire_names!(SubtaskStatus {
    Pending => "pending",
    InProgress => "in_progress",
    Completed => "completed",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
});

impl PlanStatus {
    /// Whether nothing more happens to the plan.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PlanStatus::Completed | PlanStatus::Rejected | PlanStatus::Cancelled
        )
    }
}

impl SubtaskStatus {
    /// Whether the subtask no longer keeps its dependents waiting.
    pub fn is_done(self) -> bool {
        matches!(self, SubtaskStatus::Completed | SubtaskStatus::Skipped)
    }
}

/// One subtask as clients see it. `id` is its 0-based position in the plan, which is also how
/// `dependencies` name subtasks (the `create_plan` argument shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskView {
    pub id: u32,
    pub title: String,
    pub description: String,
    /// `coder`, `debug` or `ask`.
    pub agent: String,
    pub estimated_time_minutes: u32,
    #[serde(default)]
    pub dependencies: Vec<u32>,
    pub status: SubtaskStatus,
    /// What the subtask's agent answered when it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A plan as clients see it (events, `GET /plans/{id}`, the session's plan list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub id: String,
    pub session_id: String,
    /// 1, then one more for each revision a `modify` asked for.
    pub version: u32,
    pub title: String,
    pub description: String,
    pub status: PlanStatus,
    /// What a `plan_decision` may name instead of the plan (the `create_plan` call of this
    /// version).
    pub approval_request_id: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// The feedback of the latest `modify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// The final summary, once the plan's run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub subtasks: Vec<SubtaskView>,
    /// Every version as proposed, oldest first, with the feedback that asked for the next
    /// (`GET /plans/{id}` only; empty elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<PlanVersionView>,
}

/// One version of a plan as the architect proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanVersionView {
    pub version: u32,
    pub title: String,
    pub description: String,
    /// The subtasks in `create_plan`'s argument shape.
    pub subtasks: serde_json::Value,
    /// What a person asked to change in it (the `modify` that led to the next version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

impl PlanView {
    /// The short form of `plan_approval_required`.
    pub fn summary_view(&self) -> PlanSummary {
        PlanSummary {
            title: self.title.clone(),
            description: self.description.clone(),
            subtasks_count: u32::try_from(self.subtasks.len()).unwrap_or(u32::MAX),
            total_estimated_time_minutes: self
                .subtasks
                .iter()
                .map(|s| s.estimated_time_minutes)
                .fold(0u32, u32::saturating_add),
        }
    }

    /// The plan as one readable text: a numbered checklist with agents, estimates and states
    /// (what a client that shows no plan frames gets as an assistant message).
    pub fn as_text(&self) -> String {
        let mut text = format!(
            "Plan: {} (version {}, {})\n",
            self.title,
            self.version,
            self.status.as_str()
        );
        if !self.description.trim().is_empty() {
            text.push_str(self.description.trim());
            text.push('\n');
        }
        for subtask in &self.subtasks {
            let mark = match subtask.status {
                SubtaskStatus::Completed => "[x]",
                SubtaskStatus::Skipped => "[-]",
                SubtaskStatus::Failed => "[!]",
                SubtaskStatus::InProgress => "[>]",
                SubtaskStatus::Pending | SubtaskStatus::Cancelled => "[ ]",
            };
            text.push_str(&format!(
                "{mark} {}. {} ({}, ~{} min",
                subtask.id + 1,
                subtask.title,
                subtask.agent,
                subtask.estimated_time_minutes
            ));
            if !subtask.dependencies.is_empty() {
                let after: Vec<String> = subtask
                    .dependencies
                    .iter()
                    .map(|d| (d + 1).to_string())
                    .collect();
                text.push_str(&format!(", after {}", after.join(", ")));
            }
            text.push_str(")\n");
        }
        text
    }
}

/// `plan_summary` of `plan_approval_required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub title: String,
    pub description: String,
    pub subtasks_count: u32,
    pub total_estimated_time_minutes: u32,
}

/// A person's decision on a plan. `approve`, `reject` and `modify` answer a plan that waits
/// for approval (`approved`, `rejected` and `modified` are read as the same: the original's
/// backend and IDE branches disagree); `retry`, `skip` and `cancel` answer a plan whose subtask
/// failed (`cancel` also stops a plan at any other point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanDecision {
    #[serde(alias = "approved")]
    Approve,
    #[serde(alias = "rejected")]
    Reject,
    #[serde(alias = "modified")]
    Modify,
    Retry,
    Skip,
    #[serde(alias = "cancelled")]
    Cancel,
}

wire_names!(PlanDecision {
    Approve => "approve",
    Reject => "reject",
    Modify => "modify",
    Retry => "retry",
    Skip => "skip",
    Cancel => "cancel",
});

impl PlanDecision {
    /// Reads a decision as the wire may spell it (the synonyms included).
    pub fn read(value: &str) -> Option<PlanDecision> {
        PlanDecision::parse(value).or(match value {
            "approved" => Some(PlanDecision::Approve),
            "rejected" => Some(PlanDecision::Reject),
            "modified" => Some(PlanDecision::Modify),
            "cancelled" => Some(PlanDecision::Cancel),
            _ => None,
        })
    }
}

/// The body of `POST /plans/{id}/decision` (runtime and gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDecisionRequest {
    pub decision: PlanDecision,
    /// What to change (`modify`; optional otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

/// `GET /sessions/{id}/plans`: every plan of the session, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionPlans {
    pub plans: Vec<PlanView>,
}

impl crate::internal::SessionResource for SessionPlans {
    const SUFFIX: &'static str = "/plans";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_read_their_synonyms() {
        for (text, decision) in [
            ("approve", PlanDecision::Approve),
            ("approved", PlanDecision::Approve),
            ("rejected", PlanDecision::Reject),
            ("modified", PlanDecision::Modify),
            ("retry", PlanDecision::Retry),
            ("skip", PlanDecision::Skip),
            ("cancel", PlanDecision::Cancel),
        ] {
            assert_eq!(PlanDecision::read(text), Some(decision), "{text}");
            let parsed: PlanDecision = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(parsed, decision, "{text}");
        }
        assert_eq!(PlanDecision::read("Approve"), None);
        assert!(serde_json::from_str::<PlanDecision>("\"yes\"").is_err());
    }

    #[test]
    fn a_plan_reads_as_a_checklist() {
        let subtask = |id: u32, status, dependencies: Vec<u32>| SubtaskView {
            id,
            title: format!("step {id}"),
            description: String::new(),
            agent: "coder".into(),
            estimated_time_minutes: 5,
            dependencies,
            status,
            result: None,
            error: None,
        };
        let plan = PlanView {
            id: "p".into(),
            session_id: "s".into(),
            version: 2,
            title: "Add login".into(),
            description: "Forms and routes".into(),
            status: PlanStatus::InProgress,
            approval_request_id: "call_1".into(),
            created_at: String::new(),
            updated_at: String::new(),
            feedback: None,
            summary: None,
            subtasks: vec![
                subtask(0, SubtaskStatus::Completed, vec![]),
                subtask(1, SubtaskStatus::InProgress, vec![0]),
            ],
            versions: Vec::new(),
        };
        assert_eq!(
            plan.as_text(),
            "Plan: Add login (version 2, in_progress)\nForms and routes\n\
             [x] 1. step 0 (coder, ~5 min)\n[>] 2. step 1 (coder, ~5 min, after 1)\n"
        );
        assert_eq!(plan.summary_view().total_estimated_time_minutes, 10);
        assert_eq!(plan.summary_view().subtasks_count, 2);
    }
}
