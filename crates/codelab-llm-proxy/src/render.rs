//! Rendering the normalised event stream as OpenAI's answer: one JSON object, or SSE chunks.

use std::collections::BTreeMap;

use codelab_protocol::openai::{
    AssistantMessage, ChatCompletionChunk, ChatCompletionResponse, Choice, ChunkChoice, Delta,
    ErrorBody, ErrorDetail, FunctionCallDelta, ToolCall, ToolCallDelta, Usage,
};

use crate::events::{FinishReason, LlmEvent, UpstreamError, UpstreamErrorKind};

/// Identity shared by every chunk of one answer.
#[derive(Debug, Clone)]
pub struct AnswerIdentity {
    pub id: String,
    pub created: u64,
    /// The model name the client asked for.
    pub model: String,
}

impl AnswerIdentity {
    /// A fresh `chatcmpl-…` id stamped now.
    pub fn new(model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        AnswerIdentity {
            id: format!("chatcmpl-{}", codelab_core::ids::new_random_id().simple()),
            created,
            model: model.to_owned(),
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
            }],
            usage: None,
        }
    }
}

/// Turns events into SSE `data:` payloads, one chunk per event.
#[derive(Debug)]
pub struct ChunkRenderer {
    identity: AnswerIdentity,
    include_usage: bool,
    role_sent: bool,
    usage: Option<Usage>,
}

impl ChunkRenderer {
    /// A renderer for one answer; `include_usage` adds the final usage chunk.
    pub fn new(identity: AnswerIdentity, include_usage: bool) -> Self {
        ChunkRenderer {
            identity,
            include_usage,
            role_sent: false,
            usage: None,
        }
    }

    /// The JSON payloads for one event (zero, one or two chunks).
    pub fn render(&mut self, event: &LlmEvent) -> Vec<String> {
        let mut out = Vec::new();
        if !self.role_sent {
            self.role_sent = true;
            let role = Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            };
            out.push(self.identity.chunk(role, None));
        }
        match event {
            LlmEvent::Start { .. } => {}
            LlmEvent::Text(text) if !text.is_empty() => {
                out.push(self.identity.chunk(
                    Delta {
                        content: Some(text.clone()),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            LlmEvent::Text(_) => {}
            LlmEvent::Reasoning(text) => out.push(self.identity.chunk(
                Delta {
                    reasoning_content: Some(text.clone()),
                    ..Delta::default()
                },
                None,
            )),
            LlmEvent::ToolStart { index, id, name } => out.push(self.identity.chunk(
                tool_delta(ToolCallDelta {
                    index: *index,
                    id: Some(id.clone()),
                    kind: Some("function".into()),
                    function: Some(FunctionCallDelta {
                        name: Some(name.clone()),
                        arguments: Some(String::new()),
                    }),
                }),
                None,
            )),
            LlmEvent::ToolArgs { index, fragment } => out.push(self.identity.chunk(
                tool_delta(ToolCallDelta {
                    index: *index,
                    function: Some(FunctionCallDelta {
                        name: None,
                        arguments: Some(fragment.clone()),
                    }),
                    ..ToolCallDelta::default()
                }),
                None,
            )),
            LlmEvent::Finish { reason } => {
                out.push(self.identity.chunk(Delta::default(), Some(reason.as_str())))
            }
            LlmEvent::Usage(usage) => self.usage = Some(*usage),
        }
        out.into_iter()
            .filter_map(|c| serde_json::to_string(&c).ok())
            .collect()
    }

    /// The payloads that close a successful stream: the usage chunk when asked for.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.include_usage {
            let chunk = ChatCompletionChunk {
                id: self.identity.id.clone(),
                object: "chat.completion.chunk".to_owned(),
                created: self.identity.created,
                model: self.identity.model.clone(),
                choices: Vec::new(),
                usage: Some(self.usage.unwrap_or_default()),
            };
            out.extend(serde_json::to_string(&chunk).ok());
        }
        out
    }
}

fn tool_delta(call: ToolCallDelta) -> Delta {
    Delta {
        tool_calls: Some(vec![call]),
        ..Delta::default()
    }
}

/// Builds the non-streamed answer from the events of a complete stream.
#[derive(Debug, Default)]
pub struct Accumulator {
    text: String,
    reasoning: String,
    tools: BTreeMap<u32, ToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Accumulator {
    /// Adds one event.
    pub fn push(&mut self, event: LlmEvent) {
        match event {
            LlmEvent::Start { .. } => {}
            LlmEvent::Text(t) => self.text.push_str(&t),
            LlmEvent::Reasoning(t) => self.reasoning.push_str(&t),
            LlmEvent::ToolStart { index, id, name } => {
                self.tools.insert(index, ToolCall::function(id, name, ""));
            }
            LlmEvent::ToolArgs { index, fragment } => {
                if let Some(call) = self.tools.get_mut(&index) {
                    call.function.arguments.push_str(&fragment);
                }
            }
            LlmEvent::Finish { reason } => self.finish = Some(reason),
            LlmEvent::Usage(u) => self.usage = Some(u),
        }
    }

    /// Token counters seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The OpenAI `chat.completion` object.
    pub fn into_response(self, identity: AnswerIdentity) -> ChatCompletionResponse {
        let tool_calls: Vec<ToolCall> = self.tools.into_values().collect();
        let finish = match self.finish {
            Some(reason) => reason,
            None if !tool_calls.is_empty() => FinishReason::ToolCalls,
            None => FinishReason::Stop,
        };
        let content = if self.text.is_empty() && !tool_calls.is_empty() {
            None
        } else {
            Some(self.text)
        };
        ChatCompletionResponse {
            id: identity.id,
            object: "chat.completion".to_owned(),
            created: identity.created,
            model: identity.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".to_owned(),
                    content,
                    tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                    reasoning_content: (!self.reasoning.is_empty()).then_some(self.reasoning),
                },
                finish_reason: Some(finish.as_str().to_owned()),
            }],
            // Always report usage (zeros when the provider gave none): callers budget with it.
            usage: Some(self.usage.unwrap_or_default()),
        }
    }
}

/// The HTTP status the client gets for an upstream failure once retries and fallbacks are
/// exhausted: 429 stays 429, timeouts are 504, client errors keep their status, and every
/// other failure (5xx, connect errors, broken streams, rejected credentials) is 502.
pub fn client_status(error: &UpstreamError) -> u16 {
    match error.kind {
        UpstreamErrorKind::Timeout => 504,
        UpstreamErrorKind::Status(429) => 429,
        UpstreamErrorKind::Status(401 | 403) => 502,
        UpstreamErrorKind::Status(s) if (400..500).contains(&s) => s,
        _ => 502,
    }
}

/// The OpenAI-style error body for an upstream failure.
pub fn upstream_error_body(error: &UpstreamError) -> ErrorBody {
    let (kind, code) = match error.kind {
        UpstreamErrorKind::Timeout => ("timeout", "504".to_owned()),
        UpstreamErrorKind::Status(429) => ("rate_limit_exceeded", "429".to_owned()),
        UpstreamErrorKind::Status(s) if (400..500).contains(&s) && s != 401 && s != 403 => {
            ("invalid_request_error", s.to_string())
        }
        UpstreamErrorKind::Status(s) => ("upstream_error", s.to_string()),
        UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol => {
            ("upstream_error", "502".to_owned())
        }
    };
    ErrorBody {
        error: ErrorDetail {
            message: error.message.clone(),
            kind: kind.to_owned(),
            param: None,
            code: Some(code),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> AnswerIdentity {
        AnswerIdentity {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "m".into(),
        }
    }

    #[test]
    fn stream_starts_with_role_and_carries_tool_deltas() {
        let mut r = ChunkRenderer::new(identity(), true);
        let first = r.render(&LlmEvent::Start {
            id: None,
            model: None,
        });
        assert_eq!(first.len(), 1);
        let role: serde_json::Value = serde_json::from_str(&first[0]).unwrap();
        assert_eq!(
            role["choices"][0]["delta"],
            serde_json::json!({"role":"assistant","content":""})
        );
        let start = r.render(&LlmEvent::ToolStart {
            index: 1,
            id: "call_1".into(),
            name: "read_file".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&start[0]).unwrap();
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"][0],
            serde_json::json!({"index":1,"id":"call_1","type":"function","function":{"name":"read_file","arguments":""}})
        );
        r.render(&LlmEvent::Usage(Usage::new(3, 4)));
        let end = r.finish();
        let usage: serde_json::Value = serde_json::from_str(&end[0]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);
    }

    #[test]
    fn accumulator_joins_argument_fragments() {
        let mut acc = Accumulator::default();
        for e in [
            LlmEvent::ToolStart {
                index: 0,
                id: "a".into(),
                name: "read_file".into(),
            },
            LlmEvent::ToolArgs {
                index: 0,
                fragment: "{\"path\":".into(),
            },
            LlmEvent::ToolStart {
                index: 1,
                id: "b".into(),
                name: "list_files".into(),
            },
            LlmEvent::ToolArgs {
                index: 0,
                fragment: "\"a.py\"}".into(),
            },
            LlmEvent::ToolArgs {
                index: 1,
                fragment: "{}".into(),
            },
            LlmEvent::Finish {
                reason: FinishReason::ToolCalls,
            },
        ] {
            acc.push(e);
        }
        let resp = acc.into_response(identity());
        let msg = &resp.choices[0].message;
        assert_eq!(msg.content, None);
        let calls = msg.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.arguments, "{\"path\":\"a.py\"}");
        assert_eq!(calls[1].function.name, "list_files");
        assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn statuses_map_as_documented() {
        let status = |kind| client_status(&UpstreamError::new(kind, "x"));
        assert_eq!(status(UpstreamErrorKind::Status(429)), 429);
        assert_eq!(status(UpstreamErrorKind::Status(500)), 502);
        assert_eq!(status(UpstreamErrorKind::Status(529)), 502);
        assert_eq!(status(UpstreamErrorKind::Connect), 502);
        assert_eq!(status(UpstreamErrorKind::Timeout), 504);
        assert_eq!(status(UpstreamErrorKind::Status(400)), 400);
        assert_eq!(status(UpstreamErrorKind::Status(401)), 502);
    }
}
