//! `/console/sessions`: the user's sessions, one session's whole conversation and plans, and
//! the decisions on its pending tool calls (which the gateway relays to the IDE).

use std::collections::{HashMap, HashSet};

use askama::Template;
use axum::extract::{Form, Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use codelab_protocol::internal::HistoryToolCall;
use codelab_protocol::plans::PlanStatus;

use super::plans::{PlanCard, plan_cards};
use super::{ConsoleRequest, short_time};
use crate::session::Flash;
use crate::upstream::{
    PendingApprovals, SessionHistory, SessionPlans, SessionSummary, path_segment,
};
use crate::web::{Layout, PageError, render};

/// Sessions per page of the list.
pub const PAGE_SIZE: u32 = 20;

/// A session in a list.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The id.
    pub id: String,
    /// The title, or a stand-in.
    pub title: String,
    /// The current agent.
    pub agent: String,
    /// Messages.
    pub message_count: u64,
    /// When it was last used.
    pub last_activity: String,
    /// When it was created.
    pub created_at: String,
}

impl From<&SessionSummary> for SessionRow {
    fn from(s: &SessionSummary) -> Self {
        Self {
            id: s.id.clone(),
            title: s
                .title
                .clone()
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| "Untitled session".to_owned()),
            agent: s.current_agent.clone().unwrap_or_else(|| "—".to_owned()),
            message_count: s.message_count,
            last_activity: short_time(s.last_activity.as_deref()),
            created_at: short_time(s.created_at.as_deref()),
        }
    }
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    layout: Layout,
    sessions: Vec<SessionRow>,
    query: String,
    previous_url: Option<String>,
    next_url: Option<String>,
    range_text: String,
}

/// A tool call as the session page shows it.
#[derive(Debug, Clone, Default)]
pub struct CallView {
    /// Its id.
    pub call_id: String,
    /// The tool.
    pub tool_name: String,
    /// Its arguments, pretty-printed.
    pub arguments: String,
    /// `pending_approval`, `completed`, ...
    pub status: String,
    /// A CSS-safe form of the status.
    pub status_class: String,
    /// The decision, if one was made (`approve`, `edit`, `reject`).
    pub decision: String,
    /// The result, pretty-printed.
    pub result: String,
    /// The error text.
    pub error: String,
}

/// One message of the conversation.
#[derive(Debug, Clone, Default)]
pub struct EntryView {
    /// `user`, `assistant`, `tool`, `system`.
    pub role: String,
    /// What the page labels it.
    pub role_label: String,
    /// The agent that wrote it.
    pub agent: String,
    /// The text.
    pub content: String,
    /// The tool calls it made.
    pub calls: Vec<CallView>,
}

/// An agent change.
#[derive(Debug, Clone)]
pub struct SwitchView {
    when: String,
    from: String,
    to: String,
    reason: String,
    method: String,
}

/// A call waiting for a person.
#[derive(Debug, Clone)]
pub struct PendingView {
    call_id: String,
    tool_name: String,
    arguments: String,
    reason: String,
    rows: usize,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    layout: Layout,
    session_id: String,
    title: String,
    agent: String,
    message_count: u64,
    last_activity: String,
    tool_call_count: usize,
    has_active_turn: bool,
    pending: Vec<PendingView>,
    plans: Vec<PlanCard>,
    entries: Vec<EntryView>,
    switches: Vec<SwitchView>,
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// JSON for people: pretty-printed; a string holding JSON is unpacked first.
pub fn pretty(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(inner @ (Value::Object(_) | Value::Array(_))) => {
                serde_json::to_string_pretty(&inner).unwrap_or_else(|_| s.clone())
            }
            _ => s.clone(),
        },
        Some(other) => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// The conversation of a `/history` answer: messages in order, each assistant message with
/// its tool calls and their states, decisions, results and errors.
pub fn conversation(history: &SessionHistory) -> Vec<EntryView> {
    let calls: HashMap<&str, &HistoryToolCall> = history
        .tool_calls
        .iter()
        .map(|call| (call.call_id.as_str(), call))
        .collect();
    let mut shown = HashSet::new();
    let mut entries = Vec::new();
    for message in &history.messages {
        let role = message.role.as_str();
        // A tool message repeats its call's result, which is shown with the call.
        if role == "tool" && calls.contains_key(message.tool_call_id.as_deref().unwrap_or_default())
        {
            continue;
        }
        let mut entry = EntryView {
            role_label: match role {
                "user" => "You".to_owned(),
                "assistant" => "Assistant".to_owned(),
                "tool" => "Tool result".to_owned(),
                other => other.to_owned(),
            },
            role: if ["user", "assistant", "tool", "system"].contains(&role) {
                role.to_owned()
            } else {
                "other".to_owned()
            },
            agent: message.name.clone().unwrap_or_default(),
            content: message.content.clone(),
            calls: Vec::new(),
        };
        for requested in message
            .tool_calls
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let call_id = text(requested, "id");
            let function = requested.get("function").cloned().unwrap_or(Value::Null);
            let stored = calls.get(call_id.as_str()).copied();
            entry.calls.push(call_view(&call_id, &function, stored));
            shown.insert(call_id);
        }
        entries.push(entry);
    }
    // Calls no stored message mentions (a turn cut short) are still worth seeing.
    let mut orphans: Vec<CallView> = calls
        .iter()
        .filter(|(id, _)| !shown.contains(**id))
        .map(|(id, stored)| call_view(id, &Value::Null, Some(stored)))
        .collect();
    if !orphans.is_empty() {
        orphans.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        entries.push(EntryView {
            role: "tool".to_owned(),
            role_label: "Other tool calls".to_owned(),
            calls: orphans,
            ..EntryView::default()
        });
    }
    entries
}

fn call_view(call_id: &str, function: &Value, stored: Option<&HistoryToolCall>) -> CallView {
    let tool_name = stored
        .map(|s| s.tool_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| text(function, "name"));
    let arguments = stored
        .map(|s| &s.arguments)
        .or_else(|| function.get("arguments"));
    let status = stored.map(|s| s.status.clone()).unwrap_or_default();
    CallView {
        call_id: call_id.to_owned(),
        tool_name,
        arguments: pretty(arguments),
        status_class: status
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect(),
        status: if status.is_empty() {
            "requested".to_owned()
        } else {
            status.replace('_', " ")
        },
        decision: stored.and_then(|s| s.decision.clone()).unwrap_or_default(),
        result: pretty(stored.and_then(|s| s.result.as_ref())),
        error: stored.and_then(|s| s.error.clone()).unwrap_or_default(),
    }
}

fn switches(history: &SessionHistory) -> Vec<SwitchView> {
    history
        .agent_history
        .iter()
        .map(|s| SwitchView {
            when: short_time(Some(&s.timestamp)),
            from: s
                .from
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "—".into()),
            to: s.to.clone(),
            reason: s.reason.clone(),
            method: s.method.clone(),
        })
        .collect()
}

/// The calls waiting for a person, but the `create_plan` calls of plans awaiting approval: the
/// plan's own Approve / Reject / Modify decide those (editing a plan's arguments is no
/// decision a plan takes, docs/agent-runtime.md "Planning").
fn pending_calls(answer: &PendingApprovals, plans: &SessionPlans) -> Vec<PendingView> {
    let plan_calls: HashSet<&str> = plans
        .plans
        .iter()
        .filter(|plan| plan.status == PlanStatus::AwaitingApproval)
        .map(|plan| plan.approval_request_id.as_str())
        .collect();
    answer
        .pending_approvals
        .iter()
        .filter(|p| !plan_calls.contains(p.call_id.as_str()))
        .map(|p| {
            let arguments = pretty(Some(&p.arguments));
            PendingView {
                call_id: p.call_id.clone(),
                tool_name: p.tool_name.clone(),
                rows: arguments.lines().count().clamp(3, 16),
                arguments,
                reason: p.reason.clone().unwrap_or_default(),
            }
        })
        .collect()
}

/// `GET /console/sessions?q=&page=`.
pub async fn list_sessions(
    console: ConsoleRequest,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    console
        .page(|c| async move {
            let query: String = params
                .get("q")
                .map(|q| q.trim().chars().take(200).collect())
                .unwrap_or_default();
            let page: u64 = params
                .get("page")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 1)
                .unwrap_or(1);
            let (_, gateway, token) = c.clients_and_token().await?;
            let offset = (page - 1) * u64::from(PAGE_SIZE);
            let answer = gateway
                .list_sessions(&token, PAGE_SIZE, offset, &query)
                .await
                .map_err(|e| c.failed(e))?;
            let link = |page: u64| {
                let mut q = form_urlencoded::Serializer::new(String::new());
                if !query.is_empty() {
                    q.append_pair("q", &query);
                }
                q.append_pair("page", &page.to_string());
                format!("/console/sessions?{}", q.finish())
            };
            let total = answer.total;
            let shown = answer.sessions.len() as u64;
            let range_text = if shown == 0 {
                String::new()
            } else {
                format!("{}–{} of {total}", offset + 1, offset + shown)
            };
            Ok(render(&SessionsPage {
                layout: c.layout("Sessions", "sessions"),
                sessions: answer.sessions.iter().map(SessionRow::from).collect(),
                previous_url: (page > 1).then(|| link(page - 1)),
                next_url: (offset + shown < total).then(|| link(page + 1)),
                range_text,
                query,
            }))
        })
        .await
}

/// `GET /console/sessions/{id}`.
pub async fn show_session(console: ConsoleRequest, Path(session_id): Path<String>) -> Response {
    console
        .page(|c| async move {
            let (_, gateway, token) = c.clients_and_token().await?;
            let (summary, history, pending, plans) = tokio::join!(
                gateway.session_part::<SessionSummary>(&token, &session_id),
                gateway.session_part::<SessionHistory>(&token, &session_id),
                gateway.session_part::<PendingApprovals>(&token, &session_id),
                gateway.session_part::<SessionPlans>(&token, &session_id),
            );
            let summary = summary.map_err(|e| c.failed(e))?;
            let history = history.map_err(|e| c.failed(e))?;
            let pending = pending.map_err(|e| c.failed(e))?;
            let plans = plans.map_err(|e| c.failed(e))?;
            let row = SessionRow::from(&summary);
            Ok(render(&SessionPage {
                layout: c.layout(row.title.clone(), "sessions"),
                tool_call_count: history.tool_calls.len(),
                has_active_turn: history.active_turn.is_some(),
                pending: pending_calls(&pending, &plans),
                plans: plan_cards(&plans),
                entries: conversation(&history),
                switches: switches(&history),
                session_id: summary.id,
                title: row.title,
                agent: row.agent,
                message_count: row.message_count,
                last_activity: row.last_activity,
            }))
        })
        .await
}

/// The session page's address.
pub(crate) fn session_url(session_id: &str) -> String {
    format!("/console/sessions/{}", path_segment(session_id))
}

/// What the page says after a decision.
fn decided(decision: &str) -> &'static str {
    match decision {
        "approve" => "Approved: the IDE runs the call now.",
        "edit" => "Approved with your arguments: the IDE runs the changed call now.",
        _ => "Rejected: the agent has been told.",
    }
}

/// The gateway's body for a decision form, or why there is none.
fn decision_body(form: &HashMap<String, String>) -> Result<Option<Value>, PageError> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    Ok(Some(match field("decision") {
        "approve" => json!({ "decision": "approve" }),
        "reject" => {
            let feedback = Some(field("feedback").trim()).filter(|f| !f.is_empty());
            json!({ "decision": "reject", "feedback": feedback.unwrap_or("rejected in the console") })
        }
        "edit" => match serde_json::from_str::<Value>(field("modified_arguments")) {
            Ok(arguments @ Value::Object(_)) => {
                json!({ "decision": "edit", "modified_arguments": arguments })
            }
            _ => return Ok(None),
        },
        other => {
            return Err(PageError::BadRequest(format!(
                "expected a decision of approve, edit or reject, got {other:?}"
            )));
        }
    }))
}

/// `POST /console/sessions/{id}/approvals/{call_id}`: approve, approve with edited
/// arguments, or reject a pending call. The gateway relays the outcome to the IDE's socket.
pub async fn decide_approval(
    console: ConsoleRequest,
    Path((session_id, call_id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let page = session_url(&session_id);
    console
        .action(page.clone(), form, |c, form| async move {
            let Some(body) = decision_body(&form)? else {
                c.flash(Flash::Error(
                    "The edited arguments must be a JSON object.".to_owned(),
                ))
                .await;
                return Ok(Redirect::to(&page).into_response());
            };
            let (_, gateway, token) = c.clients_and_token().await?;
            let outcome = gateway.decide(&token, &session_id, &call_id, &body).await;
            let notice = decided(form.get("decision").map(String::as_str).unwrap_or_default());
            c.after_action(outcome, notice, &[400, 404, 409, 422], &page)
                .await
        })
        .await
}

/// `POST /console/sessions/{id}/cancel`: cancels the running turn.
pub async fn cancel_turn(
    console: ConsoleRequest,
    Path(session_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let page = session_url(&session_id);
    console
        .action(page.clone(), form, |c, _| async move {
            let (_, gateway, token) = c.clients_and_token().await?;
            let cancelled = gateway.cancel(&token, &session_id).await;
            cancelled.map_err(|e| c.failed(e))?;
            c.flash(Flash::Notice("The running turn was cancelled.".to_owned()))
                .await;
            Ok(Redirect::to(&page).into_response())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conversation_pairs_calls_with_their_state() {
        let history: SessionHistory = serde_json::from_value(json!({
            "messages": [
                {"role": "user", "content": "Add a test"},
                {"role": "assistant", "content": "", "name": "coder", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"t.rs\"}"}}
                ]},
                {"role": "tool", "content": "ok", "tool_call_id": "call_1"},
                {"role": "assistant", "content": "Done.", "name": "coder"}
            ],
            "tool_calls": [
                {"call_id": "call_1", "tool_name": "write_file", "arguments": {"path": "t.rs"},
                 "status": "completed", "requires_approval": true,
                 "decision": "approve", "result": {"success": true}, "error": null},
                {"call_id": "call_2", "tool_name": "read_file", "arguments": {"path": "x"},
                 "status": "pending", "decision": null, "result": null, "error": null}
            ]
        }))
        .unwrap();
        let entries = conversation(&history);
        assert_eq!(entries.len(), 4, "{entries:?}");
        assert_eq!(entries[0].role_label, "You");
        let call = &entries[1].calls[0];
        assert_eq!(call.tool_name, "write_file");
        assert_eq!(call.decision, "approve");
        assert_eq!(call.status, "completed");
        assert!(call.arguments.contains("\"path\": \"t.rs\""));
        assert!(call.result.contains("\"success\": true"));
        assert_eq!(entries[2].content, "Done.");
        assert_eq!(entries[3].calls[0].call_id, "call_2");
    }

    #[test]
    fn a_waiting_plans_call_is_decided_with_the_plan_not_as_a_call() {
        let pending: PendingApprovals = serde_json::from_value(json!({"pending_approvals": [
            {"call_id": "call_plan", "tool_name": "create_plan", "arguments": {}},
            {"call_id": "call_write", "tool_name": "write_file", "arguments": {"path": "a"}}
        ]}))
        .unwrap();
        let plan = |status: &str| {
            json!({"id": "p", "session_id": "s", "version": 1, "title": "T", "description": "",
                   "status": status, "approval_request_id": "call_plan", "created_at": "",
                   "updated_at": "", "subtasks": []})
        };
        let waiting: SessionPlans =
            serde_json::from_value(json!({"plans": [plan("awaiting_approval")]})).unwrap();
        let shown: Vec<String> = pending_calls(&pending, &waiting)
            .into_iter()
            .map(|p| p.call_id)
            .collect();
        assert_eq!(shown, ["call_write"]);
        // A call whose plan no longer waits is an ordinary call again.
        let decided: SessionPlans =
            serde_json::from_value(json!({"plans": [plan("approved")]})).unwrap();
        assert_eq!(pending_calls(&pending, &decided).len(), 2);
    }

    #[test]
    fn json_in_strings_is_unpacked_for_reading() {
        assert_eq!(pretty(Some(&json!("{\"a\":1}"))), "{\n  \"a\": 1\n}");
        assert_eq!(pretty(Some(&json!("plain"))), "plain");
        assert_eq!(pretty(Some(&Value::Null)), "");
    }
}
