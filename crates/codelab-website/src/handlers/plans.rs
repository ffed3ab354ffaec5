//! Plans on the session page (docs/agent-runtime.md, "Planning"): each plan as a checklist,
//! and the decisions a person takes on one, which go to the gateway's
//! `POST /api/v1/plans/{id}/decision` with the user's token.

use std::collections::HashMap;

use axum::extract::{Form, Path};
use axum::response::{IntoResponse, Redirect, Response};
use codelab_protocol::plans::{PlanDecision, PlanStatus, SubtaskStatus};
use serde_json::{Value, json};

use super::sessions::session_url;
use super::{ConsoleRequest, short_time};
use crate::session::Flash;
use crate::upstream::{PlanView, SessionPlans};
use crate::web::PageError;

/// Gateway refusals shown on the session page rather than as an error page: an invalid
/// decision, an unknown (or another user's) plan, a plan that no longer waits for it.
const SHOWN_REFUSALS: [u16; 4] = [400, 404, 409, 422];

/// A subtask as a checklist line.
#[derive(Debug, Clone)]
pub struct SubtaskRow {
    /// The 0-based id the wire uses (`plan_progress`).
    pub id: u32,
    /// 1-based, as people count.
    pub number: u32,
    pub title: String,
    pub description: String,
    pub agent: String,
    pub estimated_minutes: u32,
    /// `after 1, 2` (1-based), or empty.
    pub after: String,
    /// The wire name (`in_progress`).
    pub status: String,
    /// For people (`in progress`).
    pub status_label: String,
    /// The checklist's mark.
    pub marker: &'static str,
    pub result: String,
    pub error: String,
}

/// A plan as the session page shows it.
#[derive(Debug, Clone)]
pub struct PlanCard {
    pub id: String,
    pub title: String,
    pub description: String,
    pub version: u32,
    /// The wire name (`awaiting_approval`).
    pub status: String,
    /// For people (`awaiting approval`).
    pub status_label: String,
    pub updated: String,
    pub feedback: String,
    pub summary: String,
    pub total_minutes: u32,
    pub subtasks: Vec<SubtaskRow>,
    /// Approve, Reject and Modify apply.
    pub awaiting: bool,
    /// Retry and Skip apply.
    pub failed: bool,
    /// Cancel applies.
    pub unfinished: bool,
}

/// The checklist mark of a subtask state (the runtime's text form uses the same idea).
fn marker(status: SubtaskStatus) -> &'static str {
    match status {
        SubtaskStatus::Pending => "○",
        SubtaskStatus::InProgress => "▶",
        SubtaskStatus::Completed => "✔",
        SubtaskStatus::Failed => "✖",
        SubtaskStatus::Skipped => "↷",
        SubtaskStatus::Cancelled => "⊘",
    }
}

impl From<&PlanView> for PlanCard {
    fn from(plan: &PlanView) -> Self {
        let subtasks = plan
            .subtasks
            .iter()
            .map(|s| {
                let after: Vec<String> =
                    s.dependencies.iter().map(|d| (d + 1).to_string()).collect();
                SubtaskRow {
                    id: s.id,
                    number: s.id.saturating_add(1),
                    title: s.title.clone(),
                    description: s.description.clone(),
                    agent: s.agent.clone(),
                    estimated_minutes: s.estimated_time_minutes,
                    after: if after.is_empty() {
                        String::new()
                    } else {
                        format!("after {}", after.join(", "))
                    },
                    status: s.status.as_str().to_owned(),
                    status_label: s.status.as_str().replace('_', " "),
                    marker: marker(s.status),
                    result: s.result.clone().unwrap_or_default(),
                    error: s.error.clone().unwrap_or_default(),
                }
            })
            .collect();
        PlanCard {
            id: plan.id.clone(),
            title: plan.title.clone(),
            description: plan.description.clone(),
            version: plan.version,
            status: plan.status.as_str().to_owned(),
            status_label: plan.status.as_str().replace('_', " "),
            updated: short_time(Some(&plan.updated_at)),
            feedback: plan.feedback.clone().unwrap_or_default(),
            summary: plan.summary.clone().unwrap_or_default(),
            total_minutes: plan.summary_view().total_estimated_time_minutes,
            subtasks,
            awaiting: plan.status == PlanStatus::AwaitingApproval,
            failed: plan.status == PlanStatus::Failed,
            unfinished: !plan.status.is_final(),
        }
    }
}

/// The session's plans, newest first (the gateway lists them oldest first): the plan that
/// may need a decision is at the top.
pub fn plan_cards(plans: &SessionPlans) -> Vec<PlanCard> {
    plans.plans.iter().rev().map(PlanCard::from).collect()
}

/// What the page says after a decision the gateway accepted.
fn decided(decision: PlanDecision) -> &'static str {
    match decision {
        PlanDecision::Approve => "Plan approved: its subtasks run now.",
        PlanDecision::Reject => "Plan rejected: the architect has been told.",
        PlanDecision::Modify => {
            "Changes asked for: the architect writes a new version of the plan."
        }
        PlanDecision::Retry => "Retrying the failed subtask.",
        PlanDecision::Skip => "The failed subtask is skipped: the rest of the plan runs.",
        PlanDecision::Cancel => "Plan cancelled.",
    }
}

/// A decision form read: the decision and the gateway's body, or what the person must fix.
#[derive(Debug, PartialEq)]
enum DecisionForm {
    Ready(PlanDecision, Value),
    /// `modify` without feedback.
    NeedsFeedback,
}

/// Reads a plan decision form: `decision` (one of the six wire names) and `feedback`
/// (required for `modify`, passed on when given for the others).
fn read_decision(form: &HashMap<String, String>) -> Result<DecisionForm, PageError> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let Some(decision) = PlanDecision::parse(field("decision")) else {
        return Err(PageError::BadRequest(format!(
            "expected a decision of approve, reject, modify, retry, skip or cancel, got {:?}",
            field("decision")
        )));
    };
    let feedback = Some(field("feedback").trim()).filter(|f| !f.is_empty());
    if decision == PlanDecision::Modify && feedback.is_none() {
        return Ok(DecisionForm::NeedsFeedback);
    }
    let mut body = json!({ "decision": decision.as_str() });
    if let Some(feedback) = feedback {
        body["feedback"] = Value::String(feedback.to_owned());
    }
    Ok(DecisionForm::Ready(decision, body))
}

/// `POST /console/sessions/{id}/plans/{plan_id}`: approve, reject or modify a plan waiting for
/// approval, retry or skip its failed subtask, or cancel it. The gateway checks that the plan
/// is the user's (404 otherwise) and relays its run to the session's sockets; the session id
/// only says where to come back to.
pub async fn decide_plan(
    console: ConsoleRequest,
    Path((session_id, plan_id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let page = session_url(&session_id);
    console
        .action(page.clone(), form, |c, form| async move {
            let (decision, body) = match read_decision(&form)? {
                DecisionForm::Ready(decision, body) => (decision, body),
                DecisionForm::NeedsFeedback => {
                    c.flash(Flash::Error(
                        "Modify needs feedback: say what should change in the plan.".to_owned(),
                    ))
                    .await;
                    return Ok(Redirect::to(&page).into_response());
                }
            };
            let (_, gateway, token) = c.clients_and_token().await?;
            let outcome = gateway.decide_plan(&token, &plan_id, &body).await;
            c.after_action(outcome, decided(decision), &SHOWN_REFUSALS, &page)
                .await
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn decision_forms_become_the_gateways_bodies() {
        assert_eq!(
            read_decision(&form(&[("decision", "approve"), ("feedback", "  ")])).unwrap(),
            DecisionForm::Ready(PlanDecision::Approve, json!({"decision": "approve"}))
        );
        assert_eq!(
            read_decision(&form(&[
                ("decision", "modify"),
                ("feedback", " add tests ")
            ]))
            .unwrap(),
            DecisionForm::Ready(
                PlanDecision::Modify,
                json!({"decision": "modify", "feedback": "add tests"})
            )
        );
        assert_eq!(
            read_decision(&form(&[("decision", "modify"), ("feedback", " \n ")])).unwrap(),
            DecisionForm::NeedsFeedback
        );
        assert_eq!(
            read_decision(&form(&[("decision", "modify")])).unwrap(),
            DecisionForm::NeedsFeedback
        );
        for refused in ["", "Approve", "approved", "edit", "yes"] {
            assert!(
                matches!(
                    read_decision(&form(&[("decision", refused)])),
                    Err(PageError::BadRequest(_))
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn plans_are_shown_newest_first_with_the_actions_their_state_allows() {
        let plan = |id: &str, status: &str, subtask_status: &str| {
            json!({
                "id": id, "session_id": "s", "version": 2, "title": "T", "description": "D",
                "status": status, "approval_request_id": "call_1",
                "created_at": "2026-12-07T11:00:00Z", "updated_at": "2026-12-07T11:05:00.5Z",
                "feedback": "smaller steps",
                "subtasks": [
                    {"id": 0, "title": "a", "description": "do a", "agent": "coder",
                     "estimated_time_minutes": 3, "dependencies": [], "status": "completed",
                     "result": "did a"},
                    {"id": 1, "title": "b", "description": "do b", "agent": "debug",
                     "estimated_time_minutes": 4, "dependencies": [0], "status": subtask_status,
                     "error": "the model failed"}
                ]
            })
        };
        let plans: SessionPlans = serde_json::from_value(json!({"plans": [
            plan("old", "completed", "completed"),
            plan("failed", "failed", "failed"),
            plan("new", "awaiting_approval", "pending"),
        ]}))
        .unwrap();
        let cards = plan_cards(&plans);
        let ids: Vec<&str> = cards.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["new", "failed", "old"]);

        let waiting = &cards[0];
        assert!(waiting.awaiting && waiting.unfinished && !waiting.failed);
        assert_eq!(waiting.status_label, "awaiting approval");
        assert_eq!(waiting.version, 2);
        assert_eq!(waiting.total_minutes, 7);
        assert_eq!(waiting.updated, "2026-12-07 11:05:00 UTC");
        assert_eq!(waiting.feedback, "smaller steps");
        let second = &waiting.subtasks[1];
        assert_eq!((second.number, second.after.as_str()), (2, "after 1"));
        assert_eq!(second.marker, "○");
        assert_eq!(waiting.subtasks[0].result, "did a");

        let failed = &cards[1];
        assert!(failed.failed && failed.unfinished && !failed.awaiting);
        assert_eq!(failed.subtasks[1].error, "the model failed");
        assert_eq!(failed.subtasks[1].marker, "✖");

        let done = &cards[2];
        assert!(!done.awaiting && !done.failed && !done.unfinished);
        assert_eq!(done.subtasks[1].marker, "✔");
    }
}
