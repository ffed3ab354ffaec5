//! Fitting a conversation into the model's context budget (`AGENT_RUNTIME__CONTEXT_TOKENS`).
//!
//! The unit of trimming is the *exchange*: a user message and everything after it up to the
//! next user message. The oldest exchanges go first, whole, so an assistant message with
//! `tool_calls` is never separated from its tool results (providers reject such histories).
//! The system prompt and the latest exchange are always kept.
//!
//! Tokens are estimated, not counted: a tokenizer per provider would be exact but heavy, and
//! the budget is a safety margin, not an exact fit. Estimate of one message: its characters
//! (content text, tool-call names and arguments) divided by 4, rounded up, plus 4 for the
//! message's framing (role, separators).

use std::collections::HashSet;

use codelab_protocol::openai::ChatMessage;

/// Tokens added per message for its role and framing.
pub const TOKENS_PER_MESSAGE: u64 = 4;

/// The conversation cannot fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The system prompt plus the latest exchange alone exceed the budget.
    #[error(
        "the latest message needs about {tokens} tokens with the system prompt, more than the \
         context budget of {budget} tokens"
    )]
    MessageTooLarge { tokens: u64, budget: u64 },
}

/// Estimated tokens of one message (see the module docs).
pub fn estimate_tokens(message: &ChatMessage) -> u64 {
    let mut chars = message
        .content
        .as_ref()
        .map_or(0, |c| c.to_text().chars().count());
    for call in message.tool_calls.iter().flatten() {
        chars += call.function.name.chars().count() + call.function.arguments.chars().count();
    }
    (chars as u64).div_ceil(4) + TOKENS_PER_MESSAGE
}

/// The messages to send: `system` first, then as much of `history` as fits in
/// `budget_tokens`, dropping the oldest whole exchanges first. `budget_tokens == 0` keeps
/// everything.
pub fn fit_to_budget(
    system: ChatMessage,
    history: Vec<ChatMessage>,
    budget_tokens: u64,
) -> Result<Vec<ChatMessage>, ContextError> {
    if budget_tokens == 0 {
        let mut out = Vec::with_capacity(history.len() + 1);
        out.push(system);
        out.extend(history);
        return Ok(out);
    }
    let system_tokens = estimate_tokens(&system);
    let groups = exchanges(history);
    let group_tokens: Vec<u64> = groups
        .iter()
        .map(|g| g.iter().map(estimate_tokens).sum())
        .collect();
    let mut total = system_tokens + group_tokens.iter().sum::<u64>();
    // Drop from the front while over budget, but never the last exchange.
    let mut first_kept = 0;
    while total > budget_tokens && first_kept + 1 < groups.len() {
        total -= group_tokens[first_kept];
        first_kept += 1;
    }
    if total > budget_tokens {
        return Err(ContextError::MessageTooLarge {
            tokens: total,
            budget: budget_tokens,
        });
    }
    let mut out = vec![system];
    out.extend(groups.into_iter().skip(first_kept).flatten());
    Ok(out)
}

/// Splits the history into exchanges. A user message starts a new exchange only when every
/// tool call before it has its result, so a call and its results always share an exchange.
/// Messages before the first user message form an exchange of their own.
fn exchanges(history: Vec<ChatMessage>) -> Vec<Vec<ChatMessage>> {
    let mut groups: Vec<Vec<ChatMessage>> = Vec::new();
    let mut open_calls: HashSet<String> = HashSet::new();
    for message in history {
        let starts_exchange = message.role == "user" && open_calls.is_empty();
        if message.role == "assistant" {
            open_calls.extend(message.tool_calls.iter().flatten().map(|c| c.id.clone()));
        }
        if message.role == "tool"
            && let Some(id) = &message.tool_call_id
        {
            open_calls.remove(id);
        }
        match groups.last_mut() {
            Some(group) if !starts_exchange => group.push(message),
            _ => groups.push(vec![message]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use codelab_protocol::openai::ToolCall;

    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::text("user", text)
    }

    fn assistant(text: &str) -> ChatMessage {
        ChatMessage::text("assistant", text)
    }

    fn call(id: &str) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            tool_calls: Some(vec![ToolCall::function(id, "read_file", r#"{"path":"a"}"#)]),
            ..ChatMessage::default()
        }
    }

    fn result(id: &str, text: &str) -> ChatMessage {
        ChatMessage {
            tool_call_id: Some(id.into()),
            ..ChatMessage::text("tool", text)
        }
    }

    fn texts(messages: &[ChatMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| {
                if m.tool_calls.is_some() {
                    "<call>".to_owned()
                } else {
                    m.text_content()
                }
            })
            .collect()
    }

    #[test]
    fn the_estimate_is_a_quarter_of_the_characters_plus_framing() {
        assert_eq!(estimate_tokens(&user("")), 4);
        assert_eq!(estimate_tokens(&user("abcd")), 5);
        assert_eq!(estimate_tokens(&user("abcde")), 6);
        // "read_file" (9) + {"path":"a"} (12) = 21 chars → 6 + 4.
        assert_eq!(estimate_tokens(&call("c1")), 10);
    }

    #[test]
    fn a_zero_budget_keeps_everything() {
        let history = vec![user(&"x".repeat(10_000)), assistant("ok")];
        let out = fit_to_budget(ChatMessage::text("system", "s"), history, 0).unwrap();
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn everything_is_kept_when_it_fits() {
        let history = vec![user("a"), assistant("b"), user("c")];
        let out = fit_to_budget(ChatMessage::text("system", "s"), history, 1000).unwrap();
        assert_eq!(texts(&out), ["s", "a", "b", "c"]);
    }

    #[test]
    fn oldest_exchanges_go_first_and_tool_pairs_stay_together() {
        let history = vec![
            user(&"old ".repeat(50)),
            call("c1"),
            result("c1", &"file ".repeat(50)),
            assistant("done"),
            user("second"),
            call("c2"),
            result("c2", "short"),
            assistant("ok"),
            user("latest"),
        ];
        // system 5 + first exchange 136 + second 27 + latest 6 = 174: only the first must go.
        let out = fit_to_budget(ChatMessage::text("system", "sys"), history, 60).unwrap();
        assert_eq!(
            texts(&out),
            ["sys", "second", "<call>", "short", "ok", "latest"]
        );
        // Every kept tool result still has its call.
        assert_eq!(out[2].tool_calls.as_ref().unwrap()[0].id, "c2");
        assert_eq!(out[3].tool_call_id.as_deref(), Some("c2"));
    }

    #[test]
    fn a_user_message_inside_an_open_tool_call_does_not_split_it() {
        // The user spoke while c1 was outstanding; its result came after.
        let history = vec![
            user(&"a".repeat(400)),
            call("c1"),
            user("meanwhile"),
            result("c1", "r"),
            user("latest"),
        ];
        let groups = exchanges(history.clone());
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 4);
        let out = fit_to_budget(ChatMessage::text("system", "s"), history, 20).unwrap();
        assert_eq!(texts(&out), ["s", "latest"]);
    }

    #[test]
    fn leading_messages_without_a_user_message_form_their_own_exchange() {
        let history = vec![assistant(&"hello ".repeat(40)), user("hi")];
        let out = fit_to_budget(ChatMessage::text("system", "s"), history, 20).unwrap();
        assert_eq!(texts(&out), ["s", "hi"]);
    }

    #[test]
    fn one_huge_message_is_an_error() {
        let history = vec![user("old"), user(&"x".repeat(4000))];
        let err = fit_to_budget(ChatMessage::text("system", "s"), history, 500).unwrap_err();
        assert_eq!(
            err,
            ContextError::MessageTooLarge {
                tokens: 5 + 1004,
                budget: 500
            }
        );
    }
}
