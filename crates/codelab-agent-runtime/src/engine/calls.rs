//! The tool calls of one reply: the ids the IDE sees, the checks every call passes, what the
//! tool messages say, and the stored history as the model reads it.

use codelab_protocol::openai::{ChatMessage, ToolCall};
use serde_json::{Value, json};

use crate::agents::{AgentKind, AgentRegistry};
use crate::hitl::HitlPolicy;
use crate::model::{Message, Role, ToolCallRecord, ToolCallStatus};
use crate::tools;

/// Longest provider id kept as our call id (longer ones are replaced).
const MAX_PROVIDER_ID_LEN: usize = 128;
/// Shown to the model when a reply's call has no name.
const UNNAMED_TOOL: &str = "unnamed_tool";
/// Tool message of a call that succeeded without a result.
const NO_RESULT: &str = "Tool executed successfully";

/// A new call id in the providers' usual shape: `call_` and 24 hex digits.
pub fn fresh_call_id() -> String {
    format!("call_{}", codelab_core::random_hex(12))
}

/// The id the IDE will see for a call the provider named `provider_id`: the provider's own
/// id, unless it is empty, unusual (over 128 characters, or characters other than
/// `A-Z a-z 0-9 _ - . :`), or `taken` (already used in the session or earlier in the same
/// reply; some providers repeat ids across replies) — then a fresh one.
pub fn choose_call_id(provider_id: &str, taken: impl Fn(&str) -> bool) -> String {
    if is_usable_id(provider_id) && !taken(provider_id) {
        return provider_id.to_owned();
    }
    loop {
        let id = fresh_call_id();
        if !taken(&id) {
            return id;
        }
    }
}

/// Whether a provider's id may be shown as is.
pub(crate) fn is_usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PROVIDER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// What the checks say about one call of a reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Refused; the error goes back to the model as the call's result.
    Invalid { arguments: Value, error: String },
    /// A server-side tool with valid arguments.
    Server { arguments: Value },
    /// An IDE tool with valid arguments, and whether a person must approve it.
    Ide {
        arguments: Value,
        requires_approval: bool,
        reason: Option<String>,
    },
}

/// What every call of one reply is checked against.
pub(crate) struct CallCheck<'a> {
    pub(crate) registry: &'a AgentRegistry,
    pub(crate) hitl: &'a HitlPolicy,
    /// The agent that made the reply.
    pub(crate) agent: AgentKind,
    /// The user chose `agent`, so its policy exemptions apply.
    pub(crate) exemptions_allowed: bool,
    /// Calls of one reply that are considered; the rest are refused.
    pub(crate) cap: usize,
}

impl CallCheck<'_> {
    /// Checks call number `index` (0-based) of the reply: the per-reply cap, the agent's tool
    /// list and file rule, then the tool's schema; then where it runs and whether it needs
    /// approval.
    pub(crate) fn verdict(&self, index: usize, name: &str, raw_arguments: &str) -> Verdict {
        let CallCheck {
            registry,
            hitl,
            agent,
            exemptions_allowed,
            cap,
        } = *self;
        // What the model sent, as close as JSON allows, for the records and the history page.
        let lenient: Value = serde_json::from_str(raw_arguments.trim()).unwrap_or_else(|_| {
            if raw_arguments.trim().is_empty() {
                json!({})
            } else {
                Value::String(raw_arguments.to_owned())
            }
        });
        let invalid = |error: String| Verdict::Invalid {
            arguments: lenient.clone(),
            error,
        };
        if index >= cap {
            return invalid(format!(
                "too many tool calls in one reply (limit {cap}); call this tool again in your next \
             reply"
            ));
        }
        if name.is_empty() {
            return invalid("the tool call has no tool name".to_owned());
        }
        let as_object = if lenient.is_object() {
            lenient.clone()
        } else {
            json!({})
        };
        if let Err(error) = registry.check_tool_allowed(agent, name, &as_object) {
            return invalid(error);
        }
        let arguments = match tools::validate_arguments(name, raw_arguments) {
            Ok(arguments) => arguments,
            Err(error) => return invalid(error),
        };
        if tools::is_server_side(name) {
            return Verdict::Server { arguments };
        }
        let verdict = hitl.evaluate_in_session(agent, name, exemptions_allowed);
        let reason = verdict.reason.or_else(|| {
            verdict
                .requires_approval
                .then(|| format!("{name} requires user approval"))
        });
        Verdict::Ide {
            arguments,
            requires_approval: verdict.requires_approval,
            reason,
        }
    }
}

/// The arguments string written into the stored assistant message: what the model sent when
/// it is a JSON object, else `{}` (providers such as Anthropic need an object there; the
/// error in the call's result says what was wrong).
pub(crate) fn wire_arguments(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw.trim()) {
        Ok(value) if value.is_object() => raw.trim().to_owned(),
        _ => "{}".to_owned(),
    }
}

/// The tool name written into the stored assistant message.
pub(crate) fn wire_name(name: &str) -> &str {
    if name.is_empty() { UNNAMED_TOOL } else { name }
}

/// The tool message for an IDE result: `Error: <error>` when the IDE reported
/// one, a string result verbatim, any other result as compact JSON (UTF-8 kept), or a
/// success note when there is none. An edited call says so first, since the model's own
/// arguments are not what ran.
pub(crate) fn result_message(
    call: &ToolCallRecord,
    result: Option<&Value>,
    error: Option<&str>,
) -> String {
    let body = if let Some(error) = error {
        format!("Error: {error}")
    } else {
        match result {
            None | Some(Value::Null) => NO_RESULT.to_owned(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        }
    };
    match (&call.decision, &call.modified_arguments) {
        (Some(decision), Some(edited)) if decision == "edit" => {
            format!("(The user edited the arguments before it ran: {edited})\n{body}")
        }
        _ => body,
    }
}

/// The text shown to the user for a completed `attempt_completion` or
/// `ask_followup_question` call; `None` for any other call.
pub(crate) fn completion_text(call: &ToolCallRecord) -> Option<String> {
    if call.status != ToolCallStatus::Executed {
        return None;
    }
    let text = |key: &str| call.arguments.get(key).and_then(Value::as_str);
    match call.tool_name.as_str() {
        "attempt_completion" => text("result").map(str::to_owned),
        "ask_followup_question" => {
            let mut question = text("question")?.to_owned();
            let suggestions: Vec<&str> = call
                .arguments
                .get("suggestions")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !suggestions.is_empty() {
                question.push_str("\n\nSuggested answers:");
                for suggestion in suggestions {
                    question.push_str("\n- ");
                    question.push_str(suggestion);
                }
            }
            Some(question)
        }
        _ => None,
    }
}

/// Whether a settled step with this call ends the turn (the agent finished or asked).
pub(crate) fn ends_turn(call: &ToolCallRecord) -> bool {
    call.status == ToolCallStatus::Executed
        && matches!(
            call.tool_name.as_str(),
            "attempt_completion" | "ask_followup_question"
        )
}

/// The stored history as OpenAI messages: assistant messages carry their `tool_calls` with
/// our call ids, tool messages the `tool_call_id` they answer.
pub(crate) fn to_chat_messages(history: &[Message]) -> Vec<ChatMessage> {
    history
        .iter()
        .map(|message| {
            let text = message.content.clone().unwrap_or_default();
            match message.role {
                Role::Assistant => {
                    let tool_calls: Option<Vec<ToolCall>> = message
                        .tool_calls
                        .clone()
                        .and_then(|calls| serde_json::from_value(calls).ok())
                        .filter(|calls: &Vec<ToolCall>| !calls.is_empty());
                    let mut chat = ChatMessage::text("assistant", text.clone());
                    if tool_calls.is_some() && text.is_empty() {
                        // `content: null` beside tool calls, as OpenAI writes it.
                        chat.content = None;
                    }
                    chat.tool_calls = tool_calls;
                    chat
                }
                Role::Tool => ChatMessage {
                    tool_call_id: message.tool_call_id.clone(),
                    ..ChatMessage::text("tool", text)
                },
                Role::User | Role::System => ChatMessage::text(message.role.as_str(), text),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "tests own their clock, ids and tasks"
    )]
    use std::collections::HashSet;

    use chrono::Utc;

    use super::*;

    fn registry() -> AgentRegistry {
        AgentRegistry::new(true, "mock-llm", "").unwrap()
    }

    fn check(agent: AgentKind, index: usize, name: &str, raw: &str) -> Verdict {
        check_capped(10, agent, index, name, raw)
    }

    /// The verdict on a call when a reply may hold `cap` calls.
    fn check_capped(cap: usize, agent: AgentKind, index: usize, name: &str, raw: &str) -> Verdict {
        let check = CallCheck {
            registry: &registry(),
            hitl: &HitlPolicy::default(),
            agent,
            exemptions_allowed: true,
            cap,
        };
        check.verdict(index, name, raw)
    }

    fn record(tool: &str, arguments: Value) -> ToolCallRecord {
        ToolCallRecord {
            call_id: "call_1".into(),
            session_id: "s".into(),
            turn_id: "t".into(),
            step: 1,
            provider_call_id: None,
            tool_name: tool.into(),
            arguments,
            requires_approval: false,
            approval_reason: None,
            agent: "coder".into(),
            status: ToolCallStatus::Executed,
            decision: None,
            feedback: None,
            modified_arguments: None,
            result: None,
            error: None,
            created_at: Utc::now(),
            settled_at: None,
        }
    }

    #[test]
    fn a_providers_id_is_kept_when_it_is_new_and_usable() {
        assert_eq!(choose_call_id("call_abc", |_| false), "call_abc");
        assert_eq!(
            choose_call_id("toolu_01A:x.y-z", |_| false),
            "toolu_01A:x.y-z"
        );
    }

    #[test]
    fn a_repeated_id_is_replaced_by_a_fresh_one() {
        // A provider that numbers its calls per reply repeats "call_0" in every reply.
        let used_in_session: HashSet<&str> = ["call_0"].into();
        let id = choose_call_id("call_0", |id| used_in_session.contains(id));
        assert_ne!(id, "call_0");
        let hex = id.strip_prefix("call_").unwrap();
        assert_eq!(hex.len(), 24);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));

        // Twice in one reply: the second gets a fresh id.
        let mut in_reply: HashSet<String> = HashSet::new();
        let first = choose_call_id("dup", |id| in_reply.contains(id));
        in_reply.insert(first.clone());
        let second = choose_call_id("dup", |id| in_reply.contains(id));
        assert_eq!(first, "dup");
        assert_ne!(second, "dup");
    }

    #[test]
    fn empty_or_unusual_ids_are_replaced() {
        for id in ["", "has space", "quote\"", &"x".repeat(129), "ünï"] {
            let chosen = choose_call_id(id, |_| false);
            assert!(
                chosen.starts_with("call_") && chosen.len() == 29,
                "{id:?} → {chosen}"
            );
        }
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(fresh_call_id(), fresh_call_id());
    }

    #[test]
    fn calls_beyond_the_cap_are_refused() {
        let verdict = check_capped(3, AgentKind::Coder, 3, "read_file", r#"{"path":"a"}"#);
        let Verdict::Invalid { error, .. } = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            error.starts_with("too many tool calls in one reply (limit 3)"),
            "{error}"
        );
    }

    #[test]
    fn the_agents_list_and_file_rule_come_before_the_schema() {
        let Verdict::Invalid { error, arguments } = check(
            AgentKind::Architect,
            0,
            "write_file",
            r#"{"path":"a.rs","content":"x"}"#,
        ) else {
            panic!()
        };
        assert!(error.contains("Markdown"), "{error}");
        assert_eq!(arguments, json!({"path":"a.rs","content":"x"}));
        let Verdict::Invalid { error, .. } = check(AgentKind::Ask, 0, "write_file", "{}") else {
            panic!()
        };
        assert!(error.contains("never modifies files"), "{error}");
        let Verdict::Invalid { error, arguments } = check(AgentKind::Coder, 0, "read_file", "{pa")
        else {
            panic!()
        };
        assert!(error.contains("not valid JSON"), "{error}");
        assert_eq!(arguments, json!("{pa"));
        assert!(matches!(
            check(AgentKind::Coder, 0, "", "{}"),
            Verdict::Invalid { .. }
        ));
    }

    #[test]
    fn valid_calls_say_where_they_run_and_whether_they_wait_for_a_person() {
        assert_eq!(
            check(
                AgentKind::Coder,
                0,
                "write_file",
                r#"{"path":"a.rs","content":"x"}"#
            ),
            Verdict::Ide {
                arguments: json!({"path":"a.rs","content":"x"}),
                requires_approval: true,
                reason: Some("File modification requires user approval".into()),
            }
        );
        assert!(matches!(
            check(AgentKind::Coder, 0, "search_in_code", r#"{"query":"x"}"#),
            Verdict::Ide {
                requires_approval: false,
                reason: None,
                ..
            }
        ));
        assert!(matches!(
            check(
                AgentKind::Architect,
                0,
                "switch_mode",
                r#"{"mode":"coder"}"#
            ),
            Verdict::Server { .. }
        ));
    }

    #[test]
    fn wire_arguments_are_an_object() {
        assert_eq!(wire_arguments(r#" {"a":1} "#), r#"{"a":1}"#);
        assert_eq!(wire_arguments("[1]"), "{}");
        assert_eq!(wire_arguments("nope"), "{}");
        assert_eq!(wire_name(""), "unnamed_tool");
    }

    #[test]
    fn results_become_tool_messages_as_the_original_wrote_them() {
        let call = record("read_file", json!({}));
        assert_eq!(result_message(&call, None, Some("boom")), "Error: boom");
        assert_eq!(
            result_message(&call, Some(&json!("plain text")), None),
            "plain text"
        );
        assert_eq!(
            result_message(&call, Some(&json!({"content": "é"})), None),
            r#"{"content":"é"}"#
        );
        assert_eq!(
            result_message(&call, None, None),
            "Tool executed successfully"
        );
        let edited = ToolCallRecord {
            decision: Some("edit".into()),
            modified_arguments: Some(json!({"path": "b.md"})),
            ..call
        };
        assert_eq!(
            result_message(&edited, Some(&json!("ok")), None),
            "(The user edited the arguments before it ran: {\"path\":\"b.md\"})\nok"
        );
    }

    #[test]
    fn completion_texts_show_the_result_or_the_question() {
        let done = record("attempt_completion", json!({"result": "All done"}));
        assert_eq!(completion_text(&done).as_deref(), Some("All done"));
        assert!(ends_turn(&done));
        let ask = record(
            "ask_followup_question",
            json!({"question": "Which DB?", "suggestions": ["SQLite", "PostgreSQL"]}),
        );
        assert_eq!(
            completion_text(&ask).as_deref(),
            Some("Which DB?\n\nSuggested answers:\n- SQLite\n- PostgreSQL")
        );
        let switch = record("switch_mode", json!({"mode": "coder"}));
        assert_eq!(completion_text(&switch), None);
        assert!(!ends_turn(&switch));
    }

    #[test]
    fn history_keeps_tool_calls_and_their_results_paired() {
        let at = Utc::now();
        let message =
            |role, content: Option<&str>, calls: Option<Value>, id: Option<&str>| Message {
                id: "m".into(),
                session_id: "s".into(),
                seq: 1,
                role,
                content: content.map(str::to_owned),
                agent: None,
                tool_calls: calls,
                tool_call_id: id.map(str::to_owned),
                created_at: at,
            };
        let history = vec![
            message(Role::User, Some("hi"), None, None),
            message(
                Role::Assistant,
                None,
                Some(json!([{"id": "call_1", "type": "function",
                    "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}])),
                None,
            ),
            message(Role::Tool, Some("x"), None, Some("call_1")),
            message(Role::Assistant, Some("done"), None, None),
        ];
        let chat = to_chat_messages(&history);
        assert_eq!(chat[1].content, None);
        assert_eq!(chat[1].tool_calls.as_ref().unwrap()[0].id, "call_1");
        assert_eq!(chat[2].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(chat[3].text_content(), "done");
        assert!(chat[3].tool_calls.is_none());
    }
}
