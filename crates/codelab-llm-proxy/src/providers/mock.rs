//! The deterministic mock model: production code, the default model of `codelab up` when no
//! provider key is set, and the driver of every end-to-end test.
//!
//! Its answer depends only on the request. Lines of the last user message that start with `::`
//! are directives; the request is step k+1 of the turn, where k is the number of assistant
//! messages after that user message:
//! - `::tool NAME JSON` adds a tool call (the raw text is the arguments if it is not JSON);
//! - `::reply TEXT` answers TEXT verbatim; `::error STATUS` answers that upstream status (final);
//! - `::slow MS` sets the per-token delay; `::step N DIRECTIVE` / `::step * DIRECTIVE` scope a
//!   directive to step N / every step (plain directives apply to step 1 only).
//!
//! Without a directive, step 1 answers `Mock LLM response (static)` and later steps summarise the
//! tool results that follow the last assistant message.

use std::time::Duration;

use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage, Usage};
use futures_util::StreamExt;

use super::wire::new_tool_call_id;
use crate::events::{EventStream, FinishReason, LlmEvent, UpstreamError, UpstreamErrorKind};

/// The static answer of step 1, streamed as four chunks.
pub const STATIC_CHUNKS: [&str; 4] = ["Mock ", "LLM ", "response ", "(static)"];
/// How many characters of a tool result a later step quotes.
const RESULT_PREVIEW_CHARS: usize = 200;

/// The mock provider; `token_delay` is the default pause before each streamed piece.
#[derive(Debug, Clone, Default)]
pub struct MockProvider {
    pub token_delay: Duration,
}

/// What the mock decided to answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct MockPlan {
    pub text_chunks: Vec<String>,
    /// (name, arguments as JSON text)
    pub tool_calls: Vec<(String, String)>,
    pub error_status: Option<u16>,
    pub token_delay: Duration,
}

impl MockProvider {
    /// Answers `request` as a stream of events.
    pub fn open(&self, request: &ChatCompletionRequest) -> Result<EventStream, UpstreamError> {
        let plan = plan_reply(&request.messages, self.token_delay);
        if let Some(status) = plan.error_status {
            let mut err = UpstreamError::new(
                UpstreamErrorKind::Status(status),
                format!("mock upstream answered {status} as the ::error directive asked"),
            );
            err.error_type = Some(error_type_for(status).to_owned());
            err.is_final = true;
            if status == 429 || status == 503 {
                err.retry_after = Some(Duration::from_secs(1));
            }
            return Err(err);
        }
        let prompt_tokens: u64 = request
            .messages
            .iter()
            .map(|m| count_words(&message_words(m)))
            .sum();
        let completion_tokens = plan.text_chunks.iter().map(|c| count_words(c)).sum::<u64>()
            + plan
                .tool_calls
                .iter()
                .map(|(n, a)| count_words(n) + count_words(a))
                .sum::<u64>();

        let start = vec![LlmEvent::Start {
            id: None,
            model: Some(request.model.clone()),
        }];
        let mut paced = Vec::new();
        for chunk in &plan.text_chunks {
            paced.push(LlmEvent::Text(chunk.clone()));
        }
        for (index, (name, arguments)) in plan.tool_calls.iter().enumerate() {
            let index = index as u32;
            paced.push(LlmEvent::ToolStart {
                index,
                id: new_tool_call_id(),
                name: name.clone(),
            });
            paced.push(LlmEvent::ToolArgs {
                index,
                fragment: arguments.clone(),
            });
        }
        let reason = if plan.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        };
        let tail = vec![
            LlmEvent::Finish { reason },
            LlmEvent::Usage(Usage::new(prompt_tokens, completion_tokens)),
        ];
        let delay = plan.token_delay;
        let head = futures_util::stream::iter(start.into_iter().map(Ok));
        let body = futures_util::stream::iter(paced).then(move |event| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(event)
        });
        let tail = futures_util::stream::iter(tail.into_iter().map(Ok));
        Ok(Box::pin(head.chain(body).chain(tail)))
    }
}

fn error_type_for(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Decides the answer for a conversation (pure: used by the provider and by tests).
pub fn plan_reply(messages: &[ChatMessage], default_delay: Duration) -> MockPlan {
    let last_user = messages.iter().rposition(|m| m.role == "user");
    let step = match last_user {
        Some(i) => {
            1 + messages[i + 1..]
                .iter()
                .filter(|m| m.role == "assistant")
                .count()
        }
        None => 1,
    };
    let directives = last_user
        .map(|i| directives_for_step(&messages[i].text_content(), step))
        .unwrap_or_default();

    let mut plan = MockPlan {
        text_chunks: Vec::new(),
        tool_calls: Vec::new(),
        error_status: None,
        token_delay: default_delay,
    };
    let mut replies: Vec<String> = Vec::new();
    for directive in directives {
        match directive {
            Directive::Tool { name, arguments } => plan.tool_calls.push((name, arguments)),
            Directive::Reply(text) => replies.push(text),
            Directive::Error(status) => plan.error_status = Some(status),
            Directive::Slow(ms) => plan.token_delay = Duration::from_millis(ms),
        }
    }
    if !replies.is_empty() {
        plan.text_chunks = split_into_tokens(&replies.join("\n"));
    } else if plan.tool_calls.is_empty() {
        plan.text_chunks = if step == 1 {
            STATIC_CHUNKS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            split_into_tokens(&summarise_tool_results(messages))
        };
    }
    plan
}

#[derive(Debug, Clone, PartialEq)]
enum Directive {
    Tool { name: String, arguments: String },
    Reply(String),
    Error(u16),
    Slow(u64),
}

/// The directives of `text` that apply at `step`; lines that do not parse are ignored.
fn directives_for_step(text: &str, step: usize) -> Vec<Directive> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("::"))
        .filter_map(|body| scoped_directive(body, step))
        .collect()
}

fn scoped_directive(body: &str, step: usize) -> Option<Directive> {
    let (word, rest) = split_word(body);
    if word == "step" {
        let (scope, inner) = split_word(rest);
        let applies = scope == "*" || scope.parse::<usize>().ok() == Some(step);
        let inner = inner.trim_start();
        let inner = inner.strip_prefix("::").unwrap_or(inner);
        return if applies {
            parse_directive(inner)
        } else {
            None
        };
    }
    if step == 1 {
        parse_directive(body)
    } else {
        None
    }
}

fn parse_directive(body: &str) -> Option<Directive> {
    let (word, rest) = split_word(body);
    match word {
        "tool" => {
            let (name, arguments) = split_word(rest);
            if name.is_empty() {
                return None;
            }
            let arguments = arguments.trim();
            // Valid JSON is re-encoded compactly; anything else is passed through as written.
            let arguments = match serde_json::from_str::<serde_json::Value>(arguments) {
                Ok(value) => value.to_string(),
                Err(_) => arguments.to_owned(),
            };
            Some(Directive::Tool {
                name: name.to_owned(),
                arguments,
            })
        }
        "reply" => Some(Directive::Reply(
            rest.strip_prefix(' ').unwrap_or(rest).to_owned(),
        )),
        "error" => rest
            .trim()
            .parse()
            .ok()
            .filter(|s| (100..=599).contains(s))
            .map(Directive::Error),
        "slow" => rest.trim().parse().ok().map(Directive::Slow),
        _ => None,
    }
}

fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    }
}

/// One line per tool result after the last assistant message.
fn summarise_tool_results(messages: &[ChatMessage]) -> String {
    let Some(last_assistant) = messages.iter().rposition(|m| m.role == "assistant") else {
        return String::new();
    };
    let calls = messages[last_assistant]
        .tool_calls
        .clone()
        .unwrap_or_default();
    messages[last_assistant + 1..]
        .iter()
        .filter(|m| m.role == "tool")
        .map(|m| {
            let name = calls
                .iter()
                .find(|c| Some(&c.id) == m.tool_call_id.as_ref())
                .map(|c| c.function.name.as_str())
                .or(m.name.as_deref())
                .unwrap_or("unknown");
            let preview: String = m
                .text_content()
                .chars()
                .take(RESULT_PREVIEW_CHARS)
                .collect();
            format!("Tool {name} returned: {preview}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits text into streamable pieces that keep their trailing whitespace ("Mock ", "LLM ").
fn split_into_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if !c.is_whitespace() && in_space {
            tokens.push(std::mem::take(&mut current));
        }
        in_space = c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn message_words(message: &ChatMessage) -> String {
    let mut text = message.text_content();
    for call in message.tool_calls.iter().flatten() {
        text.push(' ');
        text.push_str(&call.function.arguments);
    }
    text
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelab_protocol::openai::ToolCall;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::text("user", text)
    }

    fn assistant_with_calls(calls: &[(&str, &str)]) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            tool_calls: Some(
                calls
                    .iter()
                    .map(|(id, name)| ToolCall::function(*id, *name, "{}"))
                    .collect(),
            ),
            ..ChatMessage::default()
        }
    }

    fn tool_result(id: &str, text: &str) -> ChatMessage {
        ChatMessage {
            tool_call_id: Some(id.into()),
            ..ChatMessage::text("tool", text)
        }
    }

    #[test]
    fn step_one_without_directives_is_the_static_reply() {
        let plan = plan_reply(&[user("hello")], Duration::ZERO);
        assert_eq!(plan.text_chunks, ["Mock ", "LLM ", "response ", "(static)"]);
        assert!(plan.tool_calls.is_empty());
    }

    #[test]
    fn tool_directives_make_one_call_each_and_raw_text_passes_through() {
        let plan = plan_reply(
            &[user(
                "do it\n::tool read_file {\"path\": \"a.py\"}\n::tool list_files not json",
            )],
            Duration::ZERO,
        );
        assert_eq!(
            plan.tool_calls,
            [
                ("read_file".to_owned(), r#"{"path":"a.py"}"#.to_owned()),
                ("list_files".to_owned(), "not json".to_owned())
            ]
        );
        assert!(plan.text_chunks.is_empty());
    }

    #[test]
    fn later_steps_summarise_tool_results_by_name() {
        let long = "x".repeat(300);
        let messages = [
            user("::tool read_file {}"),
            assistant_with_calls(&[("c1", "read_file"), ("c2", "list_files")]),
            tool_result("c2", "a.py b.py"),
            tool_result("c1", &long),
        ];
        let plan = plan_reply(&messages, Duration::ZERO);
        let text = plan.text_chunks.concat();
        assert_eq!(
            text,
            format!(
                "Tool list_files returned: a.py b.py\nTool read_file returned: {}",
                "x".repeat(200)
            )
        );
    }

    #[test]
    fn step_scoped_directives_apply_only_at_their_step() {
        let text = "::step 2 ::reply second\n::step * ::slow 5\n::reply first";
        let first = plan_reply(&[user(text)], Duration::ZERO);
        assert_eq!(first.text_chunks.concat(), "first");
        assert_eq!(first.token_delay, Duration::from_millis(5));
        let second = plan_reply(
            &[
                user(text),
                assistant_with_calls(&[("c", "t")]),
                tool_result("c", "ok"),
            ],
            Duration::ZERO,
        );
        assert_eq!(second.text_chunks.concat(), "second");
        let third = plan_reply(
            &[
                user(text),
                assistant_with_calls(&[("c", "t")]),
                tool_result("c", "ok"),
                assistant_with_calls(&[("d", "t")]),
                tool_result("d", "fine"),
            ],
            Duration::ZERO,
        );
        assert_eq!(third.text_chunks.concat(), "Tool t returned: fine");
    }

    #[test]
    fn step_star_tool_repeats_every_step() {
        let text = "::step * ::tool list_files {}";
        let messages = [
            user(text),
            assistant_with_calls(&[("c", "list_files")]),
            tool_result("c", "x"),
        ];
        assert_eq!(plan_reply(&messages, Duration::ZERO).tool_calls.len(), 1);
    }

    #[test]
    fn error_directive_is_final() {
        let provider = MockProvider::default();
        let request = ChatCompletionRequest {
            model: "mock-llm".into(),
            messages: vec![user("::error 503")],
            ..ChatCompletionRequest::default()
        };
        let err = provider.open(&request).err().expect("error directive");
        assert_eq!(err.kind, UpstreamErrorKind::Status(503));
        assert!(err.is_final && !err.is_retryable());
    }

    #[test]
    fn reply_keeps_text_verbatim() {
        let plan = plan_reply(
            &[user("::reply {\"agent\": \"architect\",  \"x\": 1}")],
            Duration::ZERO,
        );
        assert_eq!(
            plan.text_chunks.concat(),
            "{\"agent\": \"architect\",  \"x\": 1}"
        );
    }

    #[tokio::test]
    async fn usage_counts_whitespace_split_words() {
        let provider = MockProvider::default();
        let request = ChatCompletionRequest {
            model: "mock-llm".into(),
            messages: vec![
                ChatMessage::text("system", "be brief"),
                user("hello there friend"),
            ],
            ..ChatCompletionRequest::default()
        };
        let events: Vec<_> = provider.open(&request).unwrap().collect().await;
        let usage = events.iter().find_map(|e| match e {
            Ok(LlmEvent::Usage(u)) => Some(*u),
            _ => None,
        });
        assert_eq!(usage, Some(Usage::new(5, 4)));
    }
}
