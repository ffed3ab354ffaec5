//! Rendering the normalised event stream as OpenAI's answer: one JSON object, or SSE chunks.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use codelab_protocol::openai::{
    AssistantMessage, ChatCompletionResponse, Choice, Delta, ErrorBody, ErrorDetail,
    FunctionCallDelta, ToolCall, ToolCallDelta, Usage,
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
            // 128 random bits from the thread's CSPRNG, as many as a UUID's hex form shows,
            // without a system call per answer.
            id: format!("chatcmpl-{}", codelab_core::ids::random_hex(16)),
            created,
            model: model.to_owned(),
        }
    }
}

/// Turns events into SSE events (`data: {chunk}` and a blank line), one chunk per event, written
/// straight into the response buffer.
///
/// The bytes are those of serialising a `ChatCompletionChunk` with serde: the envelope
/// (`id`, `object`, `created`, `model`, `choices`) is the same in every chunk of an answer, so
/// it is serialised once, and each chunk only adds its delta and finish reason.
#[derive(Debug)]
pub struct ChunkRenderer {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`
    head: Vec<u8>,
    include_usage: bool,
    role_sent: bool,
    usage: Option<Usage>,
}

/// The delta of the first chunk of every answer.
const ROLE_DELTA: &[u8] = br#"{"role":"assistant","content":""}"#;

impl ChunkRenderer {
    /// A renderer for one answer; `include_usage` adds the final usage chunk.
    pub fn new(identity: AnswerIdentity, include_usage: bool) -> Self {
        let mut head = Vec::with_capacity(96 + identity.id.len() + identity.model.len());
        head.extend_from_slice(b"data: {\"id\":");
        write_json_str(&mut head, &identity.id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(identity.created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        write_json_str(&mut head, &identity.model);
        head.extend_from_slice(b",\"choices\":[");
        ChunkRenderer {
            head,
            include_usage,
            role_sent: false,
            usage: None,
        }
    }

    /// Writes the SSE events for one event (zero, one or two chunks) to `out`.
    pub fn render(&mut self, event: &LlmEvent, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            self.chunk(out, ROLE_DELTA, None);
        }
        match event {
            LlmEvent::Start { .. } => {}
            LlmEvent::Text(text) if !text.is_empty() => {
                self.text_chunk(out, b"{\"content\":", text);
            }
            LlmEvent::Text(_) => {}
            LlmEvent::Reasoning(text) => {
                self.text_chunk(out, b"{\"reasoning_content\":", text);
            }
            LlmEvent::ToolStart { index, id, name } => self.delta_chunk(
                out,
                &tool_delta(ToolCallDelta {
                    index: *index,
                    id: Some(id.clone()),
                    kind: Some("function".into()),
                    function: Some(FunctionCallDelta {
                        name: Some(name.clone()),
                        arguments: Some(String::new()),
                    }),
                }),
            ),
            LlmEvent::ToolArgs { index, fragment } => self.delta_chunk(
                out,
                &tool_delta(ToolCallDelta {
                    index: *index,
                    function: Some(FunctionCallDelta {
                        name: None,
                        arguments: Some(fragment.clone()),
                    }),
                    ..ToolCallDelta::default()
                }),
            ),
            LlmEvent::Finish { reason } => self.chunk(out, b"{}", Some(reason.as_str())),
            LlmEvent::Usage(usage) => self.usage = Some(*usage),
        }
    }

    /// Writes the events that close a successful stream: the usage chunk when asked for.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.include_usage {
            let mut json = Vec::with_capacity(128);
            // Serialising plain counters cannot fail.
            if serde_json::to_writer(&mut json, &self.usage.unwrap_or_default()).is_ok() {
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"],\"usage\":");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"}\n\n");
            }
        }
    }

    /// A chunk whose delta is one string member, `key` being `{"member":`.
    fn text_chunk(&self, out: &mut BytesMut, key: &[u8], text: &str) {
        out.reserve(self.head.len() + key.len() + text.len() + 64);
        self.open_chunk(out);
        out.extend_from_slice(key);
        write_json_str(out, text);
        out.extend_from_slice(b"}");
        close_chunk(out, None);
    }

    fn delta_chunk(&self, out: &mut BytesMut, delta: &Delta) {
        if let Ok(json) = serde_json::to_vec(delta) {
            self.chunk(out, &json, None);
        }
    }

    /// `head`, the one choice with `delta` (serialised JSON) and `finish_reason`, the blank line.
    fn chunk(&self, out: &mut BytesMut, delta: &[u8], finish_reason: Option<&str>) {
        out.reserve(self.head.len() + delta.len() + 64);
        self.open_chunk(out);
        out.extend_from_slice(delta);
        close_chunk(out, finish_reason);
    }

    /// Everything of a chunk before its delta.
    fn open_chunk(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"{\"index\":0,\"delta\":");
    }
}

/// Everything of a chunk after its delta.
fn close_chunk(out: &mut BytesMut, finish_reason: Option<&str>) {
    out.extend_from_slice(b",\"finish_reason\":");
    match finish_reason {
        Some(reason) => write_json_str(out, reason),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}]}\n\n");
}

/// Writes one SSE event whose data is `payload` (a line without line breaks, such as
/// serialised JSON or `[DONE]`).
pub fn write_sse_data(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

/// `text` as a JSON string, escaped exactly as serde_json escapes a `String` field.
fn write_json_str(out: &mut impl BufMut, text: &str) {
    // Writing a string into memory cannot fail.
    let _ = serde_json::to_writer(BufMut::writer(out), text);
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

    /// The SSE events `render` and `finish` wrote, one JSON payload each.
    fn payloads(out: &BytesMut) -> Vec<String> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
        text.split_terminator("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    fn render_all(renderer: &mut ChunkRenderer, events: &[LlmEvent]) -> Vec<String> {
        let mut out = BytesMut::new();
        for event in events {
            renderer.render(event, &mut out);
        }
        renderer.finish(&mut out);
        payloads(&out)
    }

    #[test]
    fn stream_starts_with_role_and_carries_tool_deltas() {
        let mut r = ChunkRenderer::new(identity(), true);
        let first = render_all(
            &mut r,
            &[LlmEvent::Start {
                id: None,
                model: None,
            }],
        );
        assert_eq!(first.len(), 2, "the role chunk and the (empty) usage chunk");
        let role: serde_json::Value = serde_json::from_str(&first[0]).unwrap();
        assert_eq!(
            role["choices"][0]["delta"],
            serde_json::json!({"role":"assistant","content":""})
        );
        let mut r = ChunkRenderer::new(identity(), true);
        let all = render_all(
            &mut r,
            &[
                LlmEvent::ToolStart {
                    index: 1,
                    id: "call_1".into(),
                    name: "read_file".into(),
                },
                LlmEvent::Usage(Usage::new(3, 4)),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&all[1]).unwrap();
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"][0],
            serde_json::json!({"index":1,"id":"call_1","type":"function","function":{"name":"read_file","arguments":""}})
        );
        let usage: serde_json::Value = serde_json::from_str(&all[2]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);
    }

    /// What the chunks were before they were written directly: a `ChatCompletionChunk` per
    /// event, serialised by serde.
    fn serde_chunk(
        identity: &AnswerIdentity,
        delta: Option<Delta>,
        finish_reason: Option<&str>,
        usage: Option<Usage>,
    ) -> String {
        let chunk = codelab_protocol::openai::ChatCompletionChunk {
            id: identity.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: identity.created,
            model: identity.model.clone(),
            choices: delta
                .map(|delta| codelab_protocol::openai::ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish_reason.map(str::to_owned),
                })
                .into_iter()
                .collect(),
            usage,
        };
        serde_json::to_string(&chunk).unwrap()
    }

    #[test]
    fn chunks_are_byte_for_byte_what_serde_writes() {
        let identity = AnswerIdentity {
            id: "chatcmpl-abc".into(),
            created: 1_700_000_000,
            model: "team/\"quoted\" \\ modèle 🦀\u{1}".into(),
        };
        let texts = [
            "plain",
            "line\nbreak and \"quotes\" and \\ and \t tab",
            "é ü 日本語 🦀",
            "\u{0}\u{1f}\u{7f}</script>",
        ];
        let mut events = vec![LlmEvent::Start {
            id: Some("up".into()),
            model: Some("up-model".into()),
        }];
        let mut expected = vec![serde_chunk(
            &identity,
            Some(Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            }),
            None,
            None,
        )];
        for text in texts {
            events.push(LlmEvent::Text(text.into()));
            expected.push(serde_chunk(
                &identity,
                Some(Delta {
                    content: Some(text.into()),
                    ..Delta::default()
                }),
                None,
                None,
            ));
            events.push(LlmEvent::Reasoning(text.into()));
            expected.push(serde_chunk(
                &identity,
                Some(Delta {
                    reasoning_content: Some(text.into()),
                    ..Delta::default()
                }),
                None,
                None,
            ));
        }
        events.push(LlmEvent::Text(String::new()));
        events.push(LlmEvent::ToolArgs {
            index: 0,
            fragment: "{\"a\":1}".into(),
        });
        expected.push(serde_chunk(
            &identity,
            Some(tool_delta(ToolCallDelta {
                index: 0,
                function: Some(FunctionCallDelta {
                    name: None,
                    arguments: Some("{\"a\":1}".into()),
                }),
                ..ToolCallDelta::default()
            })),
            None,
            None,
        ));
        for reason in [FinishReason::Length, FinishReason::ToolCalls] {
            events.push(LlmEvent::Finish { reason });
            expected.push(serde_chunk(
                &identity,
                Some(Delta::default()),
                Some(reason.as_str()),
                None,
            ));
        }
        let usage = Usage::new(5, 6).with_cached_tokens(2);
        events.push(LlmEvent::Usage(usage));
        expected.push(serde_chunk(&identity, None, None, Some(usage)));

        let mut renderer = ChunkRenderer::new(identity.clone(), true);
        assert_eq!(render_all(&mut renderer, &events), expected);
        // Without `include_usage`, no usage chunk.
        let mut renderer = ChunkRenderer::new(identity, false);
        expected.pop();
        assert_eq!(render_all(&mut renderer, &events), expected);
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
