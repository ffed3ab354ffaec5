//! OpenAI Chat Completions upstreams: OpenAI, OpenRouter, vLLM, LM Studio, LiteLLM,
//! Ollama `/v1`, and Azure OpenAI.
//!
//! The client's request is forwarded nearly verbatim (unknown fields included: "forward
//! where supported"). A streamed request is streamed upstream; a non-streamed one is sent
//! non-streamed, so the upstream's JSON answer carries its real `usage` even where a server
//! ignores `stream_options.include_usage` (vLLM, LM Studio, older Azure api-versions). Both
//! are parsed into [`LlmEvent`]s.

use std::collections::BTreeMap;

use codelab_protocol::openai::{ChatCompletionRequest, Usage};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::fast_chunk::{FastChunk, JsonStr, Shape};
use super::wire::{self, EventResult, FrameDecoder, SseEvent, SseParser};
use super::{Deployment, ProviderKind, Transport};
use crate::events::{EventStream, FinishReason, LlmEvent, UpstreamError};

/// Azure `api-version` used when the deployment configures none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-02-15-preview";

/// Sends `request` to an OpenAI-compatible (or Azure) deployment and returns its event stream
/// once the upstream answered with a success status.
pub async fn open(
    transport: &Transport<'_>,
    deployment: &Deployment,
    request: &ChatCompletionRequest,
) -> Result<EventStream, UpstreamError> {
    let azure = deployment.provider == ProviderKind::Azure;
    let body = build_body(deployment, request)?;
    let mut builder = if azure {
        let mut url = wire::endpoint_url(
            &deployment.api_base,
            None,
            &[
                "openai",
                "deployments",
                &deployment.upstream_model,
                "chat",
                "completions",
            ],
        )?;
        let version = deployment
            .api_version
            .as_deref()
            .unwrap_or(DEFAULT_AZURE_API_VERSION);
        url.query_pairs_mut().append_pair("api-version", version);
        let builder = transport.http.post(url);
        match &deployment.api_key {
            Some(key) => builder.header("api-key", key.expose_secret()),
            None => builder,
        }
    } else {
        let url = wire::endpoint_url(&deployment.api_base, None, &["chat", "completions"])?;
        let builder = transport.http.post(url);
        match &deployment.api_key {
            Some(key) => builder.bearer_auth(key.expose_secret()),
            None => builder,
        }
    };
    let stream = request.is_stream();
    let accept = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    builder = builder.header(reqwest::header::ACCEPT, accept).json(&body);
    tracing::debug!(
        provider = deployment.provider.label(),
        model = %deployment.upstream_model,
        stream,
        "sending chat completion upstream"
    );
    if !stream {
        let response = wire::send(builder, deployment.timeout.unwrap_or(transport.timeout)).await?;
        if is_event_stream(&response) {
            // A server that streams regardless of `stream: false`: read it as a stream.
            let framing = SseParser::with_max_line_bytes(transport.max_line_bytes);
            return Ok(wire::decode_stream(
                wire::response_bytes(response),
                framing,
                OpenAiDecoder::new(),
            ));
        }
        let body = wire::read_body_capped(response, transport.max_response_bytes).await?;
        let events = completion_events(&body)?;
        return Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )));
    }
    let framing = SseParser::with_max_line_bytes(transport.max_line_bytes);
    wire::open_stream(
        transport,
        deployment,
        builder,
        framing,
        OpenAiDecoder::new(),
    )
    .await
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// The upstream request body: the client's request with the deployment's model and every field
/// the proxy does not know passed through; when streamed, `stream: true` with usage requested,
/// else `stream: false` without `stream_options` (which servers reject on non-streamed calls).
pub fn build_body(
    deployment: &Deployment,
    request: &ChatCompletionRequest,
) -> Result<Value, UpstreamError> {
    let value = serde_json::to_value(request)
        .map_err(|err| UpstreamError::protocol(format!("cannot encode request: {err}")))?;
    let Value::Object(mut body) = value else {
        return Err(UpstreamError::protocol(
            "request did not encode to a JSON object",
        ));
    };
    // Null-valued keys are dropped when forwarding: strict servers reject e.g.
    // `"function_call": null` on messages.
    body.retain(|_, v| !v.is_null());
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for message in messages {
            if let Value::Object(message) = message {
                message.retain(|_, v| !v.is_null());
            }
        }
    }
    body.insert(
        "model".to_owned(),
        Value::String(deployment.upstream_model.clone()),
    );
    let stream = request.is_stream();
    body.insert("stream".to_owned(), Value::Bool(stream));
    let azure = deployment.provider == ProviderKind::Azure;
    if !stream {
        body.remove("stream_options");
    } else if !azure {
        // Older Azure api-versions reject `stream_options`: only forward the client's own.
        let mut options = match body.remove("stream_options") {
            Some(Value::Object(options)) => options,
            _ => Map::new(),
        };
        options.insert("include_usage".to_owned(), Value::Bool(true));
        body.insert("stream_options".to_owned(), Value::Object(options));
    }
    // o-series reasoning models reject `max_tokens` and want `max_completion_tokens`.
    // Only recognisable by name on OpenAI-kind deployments (Azure names are deployment names).
    if !azure
        && is_reasoning_model(&deployment.upstream_model)
        && let Some(max) = body.remove("max_tokens")
    {
        body.entry("max_completion_tokens").or_insert(max);
    }
    Ok(Value::Object(body))
}

/// The events of a non-streamed `chat.completion` answer: its `message` is read as one delta of
/// a stream (so tool calls, reasoning and finish reasons are translated in one place), then the
/// reply is finished with the answer's own `usage`.
pub fn completion_events(body: &[u8]) -> Result<Vec<LlmEvent>, UpstreamError> {
    if let Some(answer) = std::str::from_utf8(body)
        .ok()
        .and_then(|text| FastChunk::parse(text, Shape::Completion))
        .filter(FastChunk::has_choices)
    {
        let mut decoder = OpenAiDecoder::new();
        let mut out = Vec::new();
        decoder.fast_chunk(&answer, &mut out);
        decoder.finish_reply(&mut out);
        return out.into_iter().collect();
    }
    let mut answer: Value = serde_json::from_slice(body).map_err(|err| {
        UpstreamError::protocol(format!("upstream answer is not valid JSON: {err}"))
    })?;
    let has_choices = answer
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| !choices.is_empty());
    if !has_choices && answer.get("error").is_none_or(Value::is_null) {
        return Err(UpstreamError::protocol("upstream answer has no choices"));
    }
    if let Some(Value::Array(choices)) = answer.get_mut("choices") {
        for choice in choices {
            if let Some(choice) = choice.as_object_mut()
                && let Some(message) = choice.remove("message")
            {
                choice.insert("delta".to_owned(), message);
            }
        }
    }
    let mut decoder = OpenAiDecoder::new();
    let mut out = Vec::new();
    decoder.chunk(&answer, &mut out);
    decoder.finish_reply(&mut out);
    out.into_iter().collect()
}

/// Whether `model` (optionally `vendor/`-prefixed, as on OpenRouter) is an OpenAI o-series model.
fn is_reasoning_model(model: &str) -> bool {
    let name = model.rsplit('/').next().unwrap_or(model);
    let mut chars = name.chars();
    chars.next() == Some('o') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

/// One tool call being assembled from fragments that share an upstream `index`.
#[derive(Debug, Default)]
struct ToolState {
    /// Index in the normalised stream, once `ToolStart` was emitted.
    out_index: Option<u32>,
    id: Option<String>,
    name: Option<String>,
    /// Argument fragments received before `ToolStart` could be emitted.
    pending_args: String,
}

/// State machine from OpenAI SSE events to [`LlmEvent`]s.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    started: bool,
    /// Tool calls by upstream key (the `index`, remapped when a server reuses one).
    tools: BTreeMap<u64, ToolState>,
    /// Upstream `index` → key in `tools`.
    keys: BTreeMap<u64, u64>,
    next_key: u64,
    last_key: Option<u64>,
    next_out_index: u32,
    finished: bool,
    done: bool,
    usage: Option<Usage>,
}

impl OpenAiDecoder {
    /// A decoder at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<EventResult>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(wire::start_event(Some(chunk)));
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<EventResult>) {
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            // OpenRouter and vLLM report failures mid-stream as a data event; a numeric
            // code is the HTTP status they would have answered.
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c));
            out.push(Err(wire::error_from_body(
                status,
                chunk,
                "upstream reported an error",
            )));
            return;
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        // Azure's prompt-filter chunk has empty `choices` and empty id/model: wait for a
        // real chunk to take them from.
        if choices.is_some_and(|c| !c.is_empty()) {
            self.start(chunk, out);
        }
        // Only choice 0 is relayed (the proxy serves one choice).
        let choice = choices.and_then(|c| {
            c.iter()
                .find(|ch| ch.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(choice) = choice {
            if let Some(delta) = choice.get("delta") {
                self.delta(delta, out);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str)
                && !self.finish_reason(reason, out)
            {
                return;
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
            let (prompt, completion) = (count("prompt_tokens"), count("completion_tokens"));
            let cached = usage
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            // Some servers repeat usage in several chunks: keep the last, emit it once at the end.
            self.usage = Some(Usage::new(prompt, completion).with_cached_tokens(cached));
        }
    }

    /// A choice's `finish_reason`: the answer finishes once; `false` when it is OpenRouter's
    /// `"error"` (normally with an `error` object, handled before), which ends it as an error.
    fn finish_reason(&mut self, reason: &str, out: &mut Vec<EventResult>) -> bool {
        if reason == "error" {
            out.push(Err(UpstreamError::protocol(
                "upstream finished with an error",
            )));
            return false;
        }
        if !self.finished {
            self.flush_tools(out);
            self.finished = true;
            out.push(Ok(LlmEvent::Finish {
                reason: FinishReason::from_openai(reason),
            }));
        }
        true
    }

    /// [`Self::chunk`] for a chunk of the simple shape (see [`FastChunk`]): the same events.
    fn fast_chunk(&mut self, chunk: &FastChunk<'_>, out: &mut Vec<EventResult>) {
        if chunk.has_choices() && !self.started {
            self.started = true;
            out.push(Ok(LlmEvent::Start {
                id: chunk.id.as_ref().and_then(JsonStr::non_empty),
                model: chunk.model.as_ref().and_then(JsonStr::non_empty),
            }));
        }
        if let Some(choice) = chunk.choice_zero() {
            if let Some(delta) = choice.text() {
                if let Some(text) = delta.reasoning_text() {
                    out.push(Ok(LlmEvent::Reasoning(text)));
                }
                if let Some(text) = delta.content.as_ref().and_then(JsonStr::non_empty) {
                    out.push(Ok(LlmEvent::Text(text)));
                }
            }
            if let Some(reason) = &choice.finish_reason
                && !self.finish_reason(&reason.0, out)
            {
                return;
            }
        }
        if let Some(usage) = &chunk.usage {
            let cached = usage
                .prompt_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0);
            self.usage = Some(
                Usage::new(
                    usage.prompt_tokens.unwrap_or(0),
                    usage.completion_tokens.unwrap_or(0),
                )
                .with_cached_tokens(cached),
            );
        }
    }

    fn delta(&mut self, delta: &Value, out: &mut Vec<EventResult>) {
        for name in ["reasoning_content", "reasoning"] {
            if let Some(text) = wire::non_empty_str(delta, name) {
                out.push(Ok(LlmEvent::Reasoning(text)));
                break;
            }
        }
        if let Some(text) = wire::non_empty_str(delta, "content") {
            out.push(Ok(LlmEvent::Text(text)));
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                self.tool_fragment(call, out);
            }
        }
    }

    fn tool_fragment(&mut self, call: &Value, out: &mut Vec<EventResult>) {
        let id = wire::non_empty_str(call, "id");
        let function = call.get("function");
        let name = function.and_then(|f| wire::non_empty_str(f, "name"));
        let args = function.and_then(|f| f.get("arguments"));
        // Arguments are a string in OpenAI's format; a few servers send an object.
        let args = match args {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        let key = self.key_for(call, id.as_deref(), name.as_deref());
        let state = self.tools.entry(key).or_default();
        if state.id.is_none() {
            state.id = id;
        }
        if state.name.is_none() {
            state.name = name;
        }
        state.pending_args.push_str(&args);
        if state.out_index.is_none() && state.name.is_some() {
            let index = self.next_out_index;
            self.next_out_index += 1;
            emit_start(state, index, out);
        } else if let Some(index) = state.out_index
            && !state.pending_args.is_empty()
        {
            let fragment = std::mem::take(&mut state.pending_args);
            out.push(Ok(LlmEvent::ToolArgs { index, fragment }));
        }
    }

    /// Which assembled call a fragment belongs to: normally the one of its `index`. A fragment
    /// naming a different id or function than that call's is a new call (servers that reuse
    /// an index or send every call complete under index 0). Without `index` (non-conforming
    /// servers), a fragment joins the call with its id, else the last call unless it names a
    /// function while that one already has a name.
    fn key_for(&mut self, call: &Value, id: Option<&str>, name: Option<&str>) -> u64 {
        let upstream = call.get("index").and_then(Value::as_u64);
        let existing = match (upstream, id) {
            (Some(index), _) => self.keys.get(&index).copied(),
            (None, Some(id)) => self
                .tools
                .iter()
                .find(|(_, t)| t.id.as_deref() == Some(id))
                .map(|(k, _)| *k),
            (None, None) => self.last_key,
        };
        let reuse = existing.filter(|k| {
            let Some(state) = self.tools.get(k) else {
                return false;
            };
            let differs = |known: Option<&str>, new: Option<&str>| {
                matches!((known, new), (Some(known), Some(new)) if known != new)
            };
            let new_name = upstream.is_none() && id.is_none() && name.is_some() && state.name.is_some();
            !differs(state.id.as_deref(), id) && !differs(state.name.as_deref(), name) && !new_name
        });
        let key = match reuse {
            Some(key) => key,
            None => {
                let key = self.next_key;
                self.next_key += 1;
                if let Some(index) = upstream {
                    self.keys.insert(index, key);
                }
                key
            }
        };
        self.last_key = Some(key);
        key
    }

    /// Emits calls that never got a name (a non-conforming server) so their arguments are not
    /// lost, in upstream order.
    fn flush_tools(&mut self, out: &mut Vec<EventResult>) {
        for state in self.tools.values_mut() {
            if state.out_index.is_none() && (state.id.is_some() || !state.pending_args.is_empty()) {
                let index = self.next_out_index;
                self.next_out_index += 1;
                emit_start(state, index, out);
            }
        }
    }

    fn finish_reply(&mut self, out: &mut Vec<EventResult>) {
        if !self.started {
            self.start(&Value::Null, out);
        }
        if !self.finished {
            self.flush_tools(out);
            self.finished = true;
            let reason = if self.next_out_index > 0 {
                FinishReason::ToolCalls
            } else {
                FinishReason::Stop
            };
            out.push(Ok(LlmEvent::Finish { reason }));
        }
        if let Some(usage) = self.usage.take() {
            out.push(Ok(LlmEvent::Usage(usage)));
        }
    }
}

fn emit_start(state: &mut ToolState, index: u32, out: &mut Vec<EventResult>) {
    state.out_index = Some(index);
    let id = state.id.get_or_insert_with(wire::new_tool_call_id).clone();
    let name = state.name.clone().unwrap_or_default();
    out.push(Ok(LlmEvent::ToolStart { index, id, name }));
    if !state.pending_args.is_empty() {
        let fragment = std::mem::take(&mut state.pending_args);
        out.push(Ok(LlmEvent::ToolArgs { index, fragment }));
    }
}

impl FrameDecoder for OpenAiDecoder {
    type Frame = SseEvent;

    fn frame(&mut self, frame: SseEvent) -> Vec<EventResult> {
        let mut out = Vec::new();
        let data = frame.data.trim();
        if data.is_empty() {
            return out;
        }
        if data == "[DONE]" {
            self.done = true;
            self.finish_reply(&mut out);
            return out;
        }
        if let Some(chunk) = FastChunk::parse(data, Shape::Chunk) {
            self.fast_chunk(&chunk, &mut out);
            return out;
        }
        match wire::parse_json(data, "") {
            Ok(chunk) => self.chunk(&chunk, &mut out),
            Err(err) => out.push(Err(err)),
        }
        out
    }

    fn end(&mut self) -> Vec<EventResult> {
        let mut out = Vec::new();
        if self.finished {
            // Finished but no `[DONE]`: some servers just close; nothing was lost.
            self.finish_reply(&mut out);
        } else {
            out.push(Err(UpstreamError::protocol("upstream stream ended early")));
        }
        out
    }

    fn is_complete(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::events::UpstreamErrorKind;
    use serde_json::json;
    use wire::test_server::{read_file_call, read_file_tool};

    fn deployment(provider: ProviderKind) -> Deployment {
        wire::test_server::deployment(
            provider,
            "gpt-4o",
            "https://api.openai.com/v1/",
            Some("sk-test"),
        )
    }

    fn request() -> ChatCompletionRequest {
        serde_json::from_value(json!({
            "model": "gpt-4",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Read a.py"},
                {"role": "assistant", "content": null, "function_call": null, "tool_calls": [read_file_call()]},
                {"role": "tool", "tool_call_id": "call_A", "content": "print(1)"}
            ],
            "logprobs": null,
            "tools": [read_file_tool()],
            "tool_choice": "auto",
            "temperature": 0.2,
            "max_tokens": 100,
            "stream": false,
            "seed": 7,
            "response_format": {"type": "json_object"},
            "parallel_tool_calls": false
        }))
        .unwrap()
    }

    /// [`request`], streamed.
    fn streamed() -> ChatCompletionRequest {
        let mut request = request();
        request.stream = Some(true);
        request
    }

    fn expected_messages() -> Value {
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Read a.py"},
            {"role": "assistant", "tool_calls": [read_file_call()]},
            {"role": "tool", "tool_call_id": "call_A", "content": "print(1)"}
        ])
    }

    #[test]
    fn body_forwards_everything_with_model_stream_and_usage() {
        let body = build_body(&deployment(ProviderKind::OpenAi), &streamed()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "messages": expected_messages(),
                "tools": [read_file_tool()],
                "tool_choice": "auto",
                "temperature": 0.2,
                "max_tokens": 100,
                "stream": true,
                "stream_options": {"include_usage": true},
                "seed": 7,
                "response_format": {"type": "json_object"},
                "parallel_tool_calls": false
            })
        );
    }

    #[test]
    fn a_non_streamed_request_goes_upstream_non_streamed_without_stream_options() {
        for provider in [ProviderKind::OpenAi, ProviderKind::Azure] {
            let mut req = request();
            req.stream_options =
                Some(serde_json::from_value(json!({"include_usage": true})).unwrap());
            let body = build_body(&deployment(provider), &req).unwrap();
            assert_eq!(body["stream"], false, "{provider:?}");
            assert!(body.get("stream_options").is_none(), "{provider:?}");
            assert_eq!(body["max_tokens"], 100);
        }
    }

    #[test]
    fn a_completion_becomes_the_events_of_a_stream_with_its_usage() {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Reading.", "reasoning_content": "think",
                "tool_calls": [read_file_call(),
                    {"id": "call_B", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                      "prompt_tokens_details": {"cached_tokens": 4}}
        });
        let events = completion_events(answer.to_string().as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                LlmEvent::Start {
                    id: Some("chatcmpl-1".into()),
                    model: Some("gpt-4o".into())
                },
                LlmEvent::Reasoning("think".into()),
                LlmEvent::Text("Reading.".into()),
                LlmEvent::ToolStart {
                    index: 0,
                    id: "call_A".into(),
                    name: "read_file".into()
                },
                LlmEvent::ToolArgs {
                    index: 0,
                    fragment: "{\"path\":\"a.py\"}".into()
                },
                LlmEvent::ToolStart {
                    index: 1,
                    id: "call_B".into(),
                    name: "list_files".into()
                },
                LlmEvent::ToolArgs {
                    index: 1,
                    fragment: "{}".into()
                },
                LlmEvent::Finish {
                    reason: FinishReason::ToolCalls
                },
                LlmEvent::Usage(Usage::new(12, 7).with_cached_tokens(4)),
            ]
        );
    }

    #[test]
    fn bad_completions_are_errors() {
        let not_json = completion_events(b"{\"choices\": [").unwrap_err();
        assert_eq!(not_json.kind, UpstreamErrorKind::Protocol);
        let no_choices = completion_events(br#"{"id":"x","choices":[]}"#).unwrap_err();
        assert_eq!(no_choices.message, "upstream answer has no choices");
        let error =
            completion_events(br#"{"error":{"message":"overloaded","code":503}}"#).unwrap_err();
        assert_eq!(error.kind, UpstreamErrorKind::Status(503));
        assert_eq!(error.message, "overloaded");
    }

    #[tokio::test]
    async fn a_non_streamed_reply_is_read_whole_and_an_oversized_one_refused() {
        let answer = json!({"id": "chatcmpl-2", "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        .to_string();
        let (reply, seen) = wire::test_server::open_once(
            deployment(ProviderKind::OpenAi),
            "/v1",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
            &answer,
            async |t, d| open(t, d, &request()).await,
        )
        .await;
        let events: Vec<LlmEvent> = reply.unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(events[1], LlmEvent::Text("hi".into()));
        assert_eq!(events.last(), Some(&LlmEvent::Usage(Usage::new(3, 1))));
        assert_eq!(seen.header("accept"), Some("application/json"));
        assert_eq!(seen.json()["stream"], false);

        let big = format!(
            r#"{{"choices":[{{"message":{{"content":"{}"}}}}]}}"#,
            "x".repeat(4096)
        );
        let (reply, _) = wire::test_server::open_once(
            deployment(ProviderKind::OpenAi),
            "/v1",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
            &big,
            async |t, d| {
                let capped = Transport {
                    max_response_bytes: 1024,
                    ..*t
                };
                open(&capped, d, &request()).await
            },
        )
        .await;
        let err = reply.err().unwrap();
        assert_eq!(err.kind, UpstreamErrorKind::Protocol);
        assert!(err.message.contains("1024 byte limit"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_server_that_streams_despite_stream_false_is_read_as_a_stream() {
        let (reply, seen) = wire::test_server::open_once(
            deployment(ProviderKind::OpenAi),
            "/v1",
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n",
            PARALLEL,
            async |t, d| open(t, d, &request()).await,
        )
        .await;
        assert_eq!(reply.unwrap(), parallel_events());
        assert_eq!(seen.json()["stream"], false);
    }

    #[test]
    fn azure_body_keeps_only_the_clients_stream_options() {
        let mut req = streamed();
        let body = build_body(&deployment(ProviderKind::Azure), &req).unwrap();
        assert!(body.get("stream_options").is_none());
        req.stream_options = Some(serde_json::from_value(json!({"include_usage": true})).unwrap());
        let body = build_body(&deployment(ProviderKind::Azure), &req).unwrap();
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(body["max_tokens"], 100);
    }

    #[test]
    fn o_series_models_get_max_completion_tokens() {
        let mut d = deployment(ProviderKind::OpenAi);
        d.upstream_model = "openai/o3-mini".to_owned();
        let body = build_body(&d, &request()).unwrap();
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["max_completion_tokens"], 100);
        assert!(!is_reasoning_model("gpt-4o"));
        assert!(!is_reasoning_model("olmo-2"));
    }

    fn decode(input: &str) -> Vec<EventResult> {
        wire::decode_all(&[input.as_bytes()], SseParser::new(), OpenAiDecoder::new())
    }

    /// Decodes `input` split at every byte boundary and checks every split gives `expected`.
    fn decode_all_splits(input: &str, expected: &[EventResult]) {
        let bytes = input.as_bytes();
        for i in 0..=bytes.len() {
            let got = wire::decode_all(
                &[&bytes[..i], &bytes[i..]],
                SseParser::new(),
                OpenAiDecoder::new(),
            );
            assert_eq!(got, expected, "split at {i}");
        }
    }

    const PARALLEL: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_A\",\"type\":\"function\",\"function\":{\"name\":\"read_file\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"a.py\\\"}\"}}]},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_B\",\"type\":\"function\",\"function\":{\"name\":\"echo\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{\\\"text\\\":\\\"hi\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":82,\"completion_tokens\":31,\"total_tokens\":113}}\n\n",
        "data: [DONE]\n\n",
    );

    fn parallel_events() -> Vec<EventResult> {
        vec![
            Ok(LlmEvent::Start {
                id: Some("chatcmpl-1".to_owned()),
                model: Some("gpt-4o-2024".to_owned()),
            }),
            Ok(LlmEvent::ToolStart {
                index: 0,
                id: "call_A".to_owned(),
                name: "read_file".to_owned(),
            }),
            Ok(LlmEvent::ToolArgs {
                index: 0,
                fragment: "{\"path\":".to_owned(),
            }),
            Ok(LlmEvent::ToolArgs {
                index: 0,
                fragment: "\"a.py\"}".to_owned(),
            }),
            Ok(LlmEvent::ToolStart {
                index: 1,
                id: "call_B".to_owned(),
                name: "echo".to_owned(),
            }),
            Ok(LlmEvent::ToolArgs {
                index: 1,
                fragment: "{\"text\":\"hi\"}".to_owned(),
            }),
            Ok(LlmEvent::Finish {
                reason: FinishReason::ToolCalls,
            }),
            Ok(LlmEvent::Usage(Usage::new(82, 31))),
        ]
    }

    #[test]
    fn parallel_tool_calls_at_every_split() {
        decode_all_splits(PARALLEL, &parallel_events());
    }

    #[tokio::test]
    async fn parse_stream_over_byte_chunks() {
        let decoder = OpenAiDecoder::new();
        let got = wire::test_server::decode_in_chunks(PARALLEL, 7, SseParser::new(), decoder).await;
        assert_eq!(got, parallel_events());
    }

    #[test]
    fn text_reasoning_azure_filter_chunk_and_multiline_data() {
        let input = concat!(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n",
            "data: {\"id\":\"c2\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"think\"}}]}\n\n",
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"more\"}}]}\n\n",
            // sse-starlette framing: a JSON split over two data lines plus an empty one.
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"Hel\"}}]}\r\ndata: \r\n\r\n",
            "event: chunk\nid: 4\ndata: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
            // A second choice (n>1) is not relayed.
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other\"}}]}\n\n",
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n",
            "data: [DONE]",
        );
        let expected = vec![
            Ok(LlmEvent::Start {
                id: Some("c2".to_owned()),
                model: Some("m".to_owned()),
            }),
            Ok(LlmEvent::Reasoning("think".to_owned())),
            Ok(LlmEvent::Reasoning("more".to_owned())),
            Ok(LlmEvent::Text("Hel".to_owned())),
            Ok(LlmEvent::Text("lo".to_owned())),
            Ok(LlmEvent::Finish {
                reason: FinishReason::ContentFilter,
            }),
        ];
        decode_all_splits(input, &expected);
    }

    #[test]
    fn text_then_finish_then_usage() {
        let input = concat!(
            "data: {\"id\":\"c2\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"id\":\"c2\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]",
        );
        assert_eq!(
            decode(input),
            vec![
                Ok(LlmEvent::Start {
                    id: Some("c2".to_owned()),
                    model: Some("m".to_owned())
                }),
                Ok(LlmEvent::Text("Hel".to_owned())),
                Ok(LlmEvent::Text("lo".to_owned())),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::Length
                }),
                Ok(LlmEvent::Usage(Usage::new(3, 2))),
            ]
        );
    }

    #[test]
    fn sloppy_servers_repeat_names_send_empty_names_and_whole_calls() {
        let input = concat!(
            // Whole call in one fragment, no id (synthesized).
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"echo\",\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n",
            // Arguments before the name is known are buffered.
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_X\",\"function\":{\"name\":\"\",\"arguments\":\"{\\\"b\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_X\",\"function\":{\"name\":\"calc\",\"arguments\":\":2}\"}}]}}]}\n\n",
            // Repeated id and name with an argument piece.
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_X\",\"type\":\"function\",\"function\":{\"name\":\"calc\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let got = decode(input);
        let Ok(LlmEvent::ToolStart { index: 0, id, name }) = &got[1] else {
            panic!("unexpected {got:?}");
        };
        assert!(id.starts_with("call_") && id.len() == 29);
        assert_eq!(name, "echo");
        assert_eq!(
            got[2..],
            [
                Ok(LlmEvent::ToolArgs {
                    index: 0,
                    fragment: "{\"a\":1}".to_owned()
                }),
                Ok(LlmEvent::ToolStart {
                    index: 1,
                    id: "call_X".to_owned(),
                    name: "calc".to_owned()
                }),
                Ok(LlmEvent::ToolArgs {
                    index: 1,
                    fragment: "{\"b\":2}".to_owned()
                }),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::Stop
                }),
            ]
        );
    }

    #[test]
    fn reused_index_with_new_id_is_a_new_call() {
        let input = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"x\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"b\",\"function\":{\"name\":\"y\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" \"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
        );
        let got = decode(input);
        assert_eq!(
            got[1..],
            [
                Ok(LlmEvent::ToolStart {
                    index: 0,
                    id: "a".to_owned(),
                    name: "x".to_owned()
                }),
                Ok(LlmEvent::ToolArgs {
                    index: 0,
                    fragment: "{}".to_owned()
                }),
                Ok(LlmEvent::ToolStart {
                    index: 1,
                    id: "b".to_owned(),
                    name: "y".to_owned()
                }),
                Ok(LlmEvent::ToolArgs {
                    index: 1,
                    fragment: "{}".to_owned()
                }),
                Ok(LlmEvent::ToolArgs {
                    index: 1,
                    fragment: " ".to_owned()
                }),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::ToolCalls
                }),
            ]
        );
    }

    #[test]
    fn calls_without_index_are_told_apart_by_id_and_name() {
        let input = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"a\",\"arguments\":\"{\\\"x\\\":\"}},{\"function\":{\"arguments\":\"1}\"}},{\"function\":{\"name\":\"b\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"k1\",\"function\":{\"name\":\"c\",\"arguments\":\"{}\"}},{\"id\":\"k2\",\"function\":{\"name\":\"c\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
        );
        let got = decode(input);
        let summary: Vec<String> = got
            .iter()
            .map(|e| match e {
                Ok(LlmEvent::ToolStart { index, name, .. }) => format!("start {index} {name}"),
                Ok(LlmEvent::ToolArgs { index, fragment }) => format!("args {index} {fragment}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            summary[1..],
            [
                "start 0 a",
                "args 0 {\"x\":",
                "args 0 1}",
                "start 1 b",
                "args 1 {}",
                "start 2 c",
                "args 2 {}",
                "start 3 c",
                "args 3 {}",
                "Ok(Finish { reason: ToolCalls })",
            ]
        );
    }

    #[test]
    fn mid_stream_error_event_ends_the_stream() {
        let input = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"Provider overloaded\",\"code\":502,\"type\":\"upstream\"},\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ignored\"}}]}\n\n",
            "data: [DONE]\n\n",
        );
        let got = decode(input);
        assert_eq!(got.len(), 3);
        let Err(err) = &got[2] else {
            panic!("expected an error: {got:?}")
        };
        assert_eq!(err.kind, UpstreamErrorKind::Status(502));
        assert_eq!(err.message, "Provider overloaded");
        assert_eq!(err.error_type.as_deref(), Some("upstream"));
    }

    #[test]
    fn early_end_is_a_protocol_error() {
        let input =
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let got = decode(input);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Err(UpstreamError::protocol("upstream stream ended early"))
        );

        // A finished reply whose body closes without `[DONE]` is complete.
        let input = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n";
        let got = decode(input);
        assert_eq!(
            got.last(),
            Some(&Ok(LlmEvent::Finish {
                reason: FinishReason::Stop
            }))
        );
        assert!(got.iter().all(Result::is_ok));

        // `[DONE]` without finish_reason: a finish is synthesized.
        let got = decode("data: [DONE]\n\n");
        assert_eq!(
            got,
            vec![
                Ok(LlmEvent::Start {
                    id: None,
                    model: None
                }),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::Stop
                })
            ]
        );
    }

    /// The events of `payloads` read the general way only (a `Value` tree per chunk), as the
    /// decoder read every chunk before the shortcut existed.
    fn decode_general(payloads: &[&str]) -> Vec<EventResult> {
        let mut decoder = OpenAiDecoder::new();
        let mut out = Vec::new();
        for data in payloads {
            match serde_json::from_str::<Value>(data) {
                Ok(chunk) => decoder.chunk(&chunk, &mut out),
                Err(err) => out.push(Err(UpstreamError::protocol(err.to_string()))),
            }
        }
        decoder.finish_reply(&mut out);
        out
    }

    /// The same payloads through `frame`, which takes the shortcut where it can.
    fn decode_frames(payloads: &[&str]) -> Vec<EventResult> {
        let mut decoder = OpenAiDecoder::new();
        let mut out = Vec::new();
        for data in payloads {
            out.extend(decoder.frame(SseEvent {
                event: None,
                data: (*data).to_owned(),
            }));
        }
        decoder.finish_reply(&mut out);
        out
    }

    #[test]
    fn the_shortcut_reads_every_chunk_as_the_general_reading_does() {
        let streams: &[&[&str]] = &[
            // The usual shape, keys in any order, with the fields real servers add.
            &[
                r#"{"choices":[{"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"chatcmpl-1","model":"gpt-4o","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"tok0 "},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"caf\u00e9 \"quoted\"\n🦀 日本"}}]}"#,
                r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"reasoning_content":"","reasoning":"think"}}]}"#,
                r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
                r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}}"#,
            ],
            // Empty id and model, escaped model names, a second choice, repeated finishes.
            &[
                r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}"#,
                r#"{"id":"","model":"team/\"odd\" name","choices":[{"index":1,"delta":{"content":"other"}},{"delta":{"content":"mine"}}]}"#,
                r#"{"choices":[{"index":0,"delta":null,"finish_reason":"stop"}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"late"},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":null}}"#,
            ],
            // Shapes the shortcut leaves to the general reading, mixed with ones it takes.
            &[
                r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_A","type":"function","function":{"name":"read_file","arguments":""}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"between"}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":7}}]}"#,
                r#"{"choices":[{"index":0.0,"delta":{"content":"float index"}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"choices":[{"index":0,"delta":{"content":"b"}}]}"#,
                r#"{"choices":[{"index":0,"message":{"content":"not a delta"}}]}"#,
                r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
                r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1,"prompt_tokens_details":null}}"#,
            ],
            &[
                r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
                r#"{"error":{"message":"Provider overloaded","code":502},"choices":[{"index":0,"delta":{},"finish_reason":"error"}]}"#,
            ],
            &[
                r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
                r#"{"error":null,"choices":[{"index":0,"delta":{},"finish_reason":"error"}]}"#,
            ],
            &[r#"[1,2]"#, r#""text""#, r#"{"choices":"none","usage":3}"#],
        ];
        for payloads in streams {
            assert_eq!(
                decode_frames(payloads),
                decode_general(payloads),
                "{payloads:#?}"
            );
        }
    }

    #[test]
    fn the_shortcut_reads_completions_as_the_general_reading_does() {
        for answer in [
            r#"{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\"\n","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":null}"#,
            r#"{"model":"m","choices":[{"message":{"content":"","reasoning_content":"why"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"message":null,"delta":{"content":"ignored"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a delta in a completion"}}]}"#,
            r#"{"choices":[{"index":0,"message":{"content":null,"tool_calls":[{"id":"call_A","type":"function","function":{"name":"read_file","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[{"index":0,"message":{"content":"x"},"finish_reason":"error"}]}"#,
            r#"{"choices":[],"error":{"message":"overloaded","code":503}}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":[{"index":0,"message":{"content":"x"}}],"error":{"message":"both"}}"#,
        ] {
            let general = (|| {
                let mut value: Value = serde_json::from_str(answer).map_err(|e| e.to_string())?;
                let has_choices = value["choices"].as_array().is_some_and(|c| !c.is_empty());
                if !has_choices && value.get("error").is_none_or(Value::is_null) {
                    return Err("no choices".to_owned());
                }
                for choice in value["choices"].as_array_mut().into_iter().flatten() {
                    if let Some(message) = choice.as_object_mut().and_then(|c| c.remove("message"))
                    {
                        choice["delta"] = message;
                    }
                }
                let mut decoder = OpenAiDecoder::new();
                let mut out = Vec::new();
                decoder.chunk(&value, &mut out);
                decoder.finish_reply(&mut out);
                out.into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.message)
            })();
            let fast = completion_events(answer.as_bytes()).map_err(|e| e.message);
            match (&fast, &general) {
                (Err(_), Err(general)) if general == "no choices" => {}
                _ => assert_eq!(fast, general, "{answer}"),
            }
        }
    }

    #[test]
    fn garbage_data_is_a_protocol_error() {
        let got = decode("data: <html>\n\n");
        assert!(matches!(&got[..], [Err(e)] if e.kind == UpstreamErrorKind::Protocol));
    }

    #[tokio::test]
    async fn connect_errors_are_retryable() {
        // A closed local port: a connect error without any network.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut d = deployment(ProviderKind::OpenAi);
        d.api_base = format!("http://{addr}/v1");
        let err = open(&wire::test_server::transport(), &d, &request())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, UpstreamErrorKind::Connect);
        assert!(err.is_retryable());
        assert!(!err.message.contains("sk-test"));
    }

    #[tokio::test]
    async fn sends_bearer_request_and_maps_status_errors() {
        let (reply, seen) = wire::test_server::open_once(
            deployment(ProviderKind::OpenAi),
            "/v1/",
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 3\r\n",
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            async |t, d| open(t, d, &request()).await,
        )
        .await;
        let err = reply.err().unwrap();
        assert_eq!(err.kind, UpstreamErrorKind::Status(429));
        assert_eq!(err.message, "Rate limit reached");
        assert_eq!(err.error_type.as_deref(), Some("requests"));
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(seen.request_line, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(seen.header("authorization"), Some("Bearer sk-test"));
        assert_eq!(seen.json()["stream"], false);
    }

    #[tokio::test]
    async fn azure_url_and_api_key_and_a_streamed_reply() {
        let mut d = deployment(ProviderKind::Azure);
        d.upstream_model = "my-gpt4".to_owned();
        let (reply, seen) = wire::test_server::open_once(
            d,
            "/",
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n",
            PARALLEL,
            async |t, d| open(t, d, &streamed()).await,
        )
        .await;
        assert_eq!(reply.unwrap(), parallel_events());
        assert_eq!(
            seen.request_line,
            "POST /openai/deployments/my-gpt4/chat/completions?api-version=2024-02-15-preview HTTP/1.1"
        );
        assert_eq!(seen.header("api-key"), Some("sk-test"));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.json()["model"], "my-gpt4");
    }
}
