//! Anthropic Messages API upstream: translates the OpenAI-shaped request and
//! parses the named-event SSE stream into [`LlmEvent`]s.

use std::collections::BTreeMap;

use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage, MessageContent, Usage};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::wire::{self, EventResult, FrameDecoder, SseEvent, SseParser};
use super::{Deployment, Transport};
use crate::events::{EventStream, FinishReason, LlmEvent, UpstreamError};

/// The `anthropic-version` header value the translation targets.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// User message inserted when the history does not start with a user turn (the API requires it).
pub const PLACEHOLDER_USER_TEXT: &str = "(conversation continues)";

/// Sends `request` to an Anthropic deployment and returns its event stream once the upstream
/// answered with a success status. `default_max_tokens` is sent when the request has none (the
/// field is required by Anthropic).
pub async fn open(
    transport: &Transport<'_>,
    deployment: &Deployment,
    request: &ChatCompletionRequest,
    default_max_tokens: u64,
) -> Result<EventStream, UpstreamError> {
    let url = wire::endpoint_url(&deployment.api_base, Some("/v1"), &["v1", "messages"])?;
    let body = build_body(deployment, request, default_max_tokens);
    let mut builder = transport
        .http
        .post(url)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(&body);
    if let Some(key) = &deployment.api_key {
        builder = builder.header("x-api-key", key.expose_secret());
    }
    tracing::debug!(model = %deployment.upstream_model, "sending messages request to anthropic");
    let framing = SseParser::with_max_line_bytes(transport.max_line_bytes);
    wire::open_stream(
        transport,
        deployment,
        builder,
        framing,
        AnthropicDecoder::new(),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Request translation
// ---------------------------------------------------------------------------------------------

/// The Messages API request body for `request` (always streamed). Fields Anthropic does not
/// know (`presence_penalty`, `frequency_penalty`, `n`, `logit_bias`, `seed`, other extras) are
/// dropped, as LiteLLM's `drop_params` did.
pub fn build_body(
    deployment: &Deployment,
    request: &ChatCompletionRequest,
    default_max_tokens: u64,
) -> Value {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        match message.role.as_str() {
            "system" | "developer" => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "assistant" => push_turn(&mut turns, "assistant", assistant_blocks(message)),
            "tool" => push_turn(&mut turns, "user", vec![tool_result_block(message)]),
            // `user` and anything unknown (legacy `function`) speak as the user.
            _ => push_turn(&mut turns, "user", content_blocks(message.content.as_ref())),
        }
    }
    if turns.first().is_none_or(|(role, _)| *role != "user") {
        turns.insert(0, ("user", vec![text_block(PLACEHOLDER_USER_TEXT)]));
    }
    // A final assistant turn is a prefill, and the API rejects one ending in whitespace.
    if let Some(("assistant", blocks)) = turns.last_mut() {
        if let Some(Value::Object(last)) = blocks.last_mut()
            && last.get("type").and_then(Value::as_str) == Some("text")
            && let Some(Value::String(text)) = last.get_mut("text")
        {
            let trimmed = text.trim_end().len();
            text.truncate(trimmed);
        }
        blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
        if blocks.is_empty() {
            turns.pop();
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": render_content(blocks)}))
        .collect();

    let mut body = Map::new();
    body.insert("model".to_owned(), json!(deployment.upstream_model));
    let max_tokens = wire::max_tokens(request).unwrap_or(default_max_tokens);
    body.insert("max_tokens".to_owned(), json!(max_tokens));
    body.insert("messages".to_owned(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".to_owned(), json!(system.join("\n\n")));
    }
    body.insert("stream".to_owned(), json!(true));
    if let Some(t) = request.temperature {
        // Anthropic accepts 0–1, OpenAI 0–2.
        body.insert("temperature".to_owned(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".to_owned(), json!(p));
    }
    if let Some(k) = request.extra.get("top_k").and_then(Value::as_u64) {
        body.insert("top_k".to_owned(), json!(k));
    }
    if let Some(stop) = &request.stop {
        let stop = stop.to_vec();
        if !stop.is_empty() {
            body.insert("stop_sequences".to_owned(), json!(stop));
        }
    }
    if let Some(user) = request.extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    if let Some(thinking) = request.extra.get("thinking").filter(|t| t.is_object()) {
        body.insert("thinking".to_owned(), thinking.clone());
    }
    let tools: Vec<Value> = request
        .tools
        .iter()
        .flatten()
        .map(|tool| {
            let mut t = Map::new();
            t.insert("name".to_owned(), json!(tool.function.name));
            if let Some(d) = &tool.function.description {
                t.insert("description".to_owned(), json!(d));
            }
            let schema = tool
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            t.insert("input_schema".to_owned(), schema);
            Value::Object(t)
        })
        .collect();
    if !tools.is_empty() {
        body.insert("tools".to_owned(), Value::Array(tools));
        let parallel = request
            .extra
            .get("parallel_tool_calls")
            .and_then(Value::as_bool);
        if let Some(choice) = tool_choice(request.tool_choice.as_ref(), parallel) {
            body.insert("tool_choice".to_owned(), choice);
        }
    }
    Value::Object(body)
}

/// Appends blocks to the conversation, merging consecutive turns of one role (the API wants
/// alternating roles) and skipping empty turns (the API rejects empty content).
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// A single text block renders as a plain string, as the spec's examples show; anything else as
/// blocks.
fn render_content(mut blocks: Vec<Value>) -> Value {
    if blocks.len() == 1
        && blocks[0].get("type").and_then(Value::as_str) == Some("text")
        && let Some(Value::String(text)) = blocks[0].get_mut("text")
    {
        return Value::String(std::mem::take(text));
    }
    Value::Array(blocks)
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// Content blocks of a message: non-empty text parts, and images (data URLs as base64, http(s)
/// URLs as url sources); other part types are dropped.
fn content_blocks(content: Option<&MessageContent>) -> Vec<Value> {
    match content {
        None => Vec::new(),
        Some(MessageContent::Text(text)) if text.is_empty() => Vec::new(),
        Some(MessageContent::Text(text)) => vec![text_block(text)],
        Some(MessageContent::Parts(parts)) => parts.iter().filter_map(part_block).collect(),
    }
}

fn part_block(part: &Value) -> Option<Value> {
    match part.get("type").and_then(Value::as_str)? {
        "text" => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())?;
            Some(text_block(text))
        }
        "image_url" => {
            let url = wire::image_url(part)?;
            if let Some((media_type, data)) = wire::parse_data_url(url) {
                Some(json!({"type": "image", "source":
                    {"type": "base64", "media_type": media_type, "data": data}}))
            } else if url.starts_with("https://") || url.starts_with("http://") {
                Some(json!({"type": "image", "source": {"type": "url", "url": url}}))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn assistant_blocks(message: &ChatMessage) -> Vec<Value> {
    let mut blocks = content_blocks(message.content.as_ref());
    for call in message.tool_calls.iter().flatten() {
        blocks.push(json!({
            "type": "tool_use",
            "id": tool_id(&call.id),
            "name": call.function.name,
            "input": wire::arguments_object(&call.function.arguments),
        }));
    }
    blocks
}

fn tool_result_block(message: &ChatMessage) -> Value {
    json!({
        "type": "tool_result",
        "tool_use_id": tool_id(message.tool_call_id.as_deref().unwrap_or_default()),
        "content": message.text_content(),
    })
}

/// Anthropic ids must match `^[a-zA-Z0-9_-]+$`; ids minted by other providers (e.g.
/// `functions.read_file:0`) are rewritten the same way on the call and on its result.
fn tool_id(id: &str) -> String {
    if id.is_empty() {
        return "call_missing".to_owned();
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// OpenAI `tool_choice` (+ `parallel_tool_calls`) → Anthropic `tool_choice`.
fn tool_choice(choice: Option<&Value>, parallel: Option<bool>) -> Option<Value> {
    let mut mapped = match choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" | "any" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => None,
        },
        Some(obj) => obj
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| obj.get("name"))
            .and_then(Value::as_str)
            .map(|name| json!({"type": "tool", "name": name})),
    };
    if parallel == Some(false) {
        let target = mapped.get_or_insert_with(|| json!({"type": "auto"}));
        // `none` takes no options.
        if target["type"] != "none" {
            target["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    mapped
}

// ---------------------------------------------------------------------------------------------
// Stream parsing
// ---------------------------------------------------------------------------------------------

/// A tool_use content block in progress.
#[derive(Debug)]
struct ToolBlock {
    index: u32,
    got_args: bool,
    /// The block's `input` at `content_block_start` when not empty (not seen in practice while
    /// streaming, but then it is the whole input).
    initial_input: Option<String>,
}

/// State machine from Anthropic SSE events to [`LlmEvent`]s.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    started: bool,
    /// Open tool_use blocks by Anthropic content-block index.
    tools: BTreeMap<u64, ToolBlock>,
    tool_count: u32,
    input_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    output_tokens: u64,
    finished: bool,
    done: bool,
}

impl AnthropicDecoder {
    /// A decoder at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    fn record_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        let count = |name: &str| usage.get(name).and_then(Value::as_u64);
        if let Some(n) = count("input_tokens") {
            self.input_tokens = n;
        }
        if let Some(n) = count("cache_creation_input_tokens") {
            self.cache_creation_tokens = n;
        }
        if let Some(n) = count("cache_read_input_tokens") {
            self.cache_read_tokens = n;
        }
        if let Some(n) = count("output_tokens") {
            self.output_tokens = n;
        }
    }

    fn usage(&self) -> Usage {
        // Prompt tokens include cached ones.
        Usage::new(
            self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens,
            self.output_tokens,
        )
    }

    fn start(&mut self, message: Option<&Value>, out: &mut Vec<EventResult>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(wire::start_event(message));
    }

    /// Closes a tool block: one that got no input deltas still needs arguments.
    fn close_tool(block: &ToolBlock, out: &mut Vec<EventResult>) {
        if !block.got_args {
            let fragment = block
                .initial_input
                .clone()
                .unwrap_or_else(|| "{}".to_owned());
            out.push(Ok(LlmEvent::ToolArgs {
                index: block.index,
                fragment,
            }));
        }
    }

    fn finish(&mut self, reason: FinishReason, out: &mut Vec<EventResult>) {
        if self.finished {
            return;
        }
        self.start(None, out);
        for block in std::mem::take(&mut self.tools).values() {
            Self::close_tool(block, out);
        }
        self.finished = true;
        out.push(Ok(LlmEvent::Finish { reason }));
    }

    fn event(&mut self, name: &str, data: &Value, out: &mut Vec<EventResult>) {
        match name {
            "message_start" => {
                let message = data.get("message");
                self.record_usage(message.and_then(|m| m.get("usage")));
                self.start(message, out);
            }
            "content_block_start" => {
                self.start(None, out);
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(block) = data.get("content_block") else {
                    return;
                };
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let str_field = |name: &str| {
                            block
                                .get(name)
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let mut id = str_field("id");
                        if id.is_empty() {
                            id = wire::new_tool_call_id();
                        }
                        let k = self.tool_count;
                        self.tool_count += 1;
                        out.push(Ok(LlmEvent::ToolStart {
                            index: k,
                            id,
                            name: str_field("name"),
                        }));
                        let initial_input = block
                            .get("input")
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                            .map(Value::to_string);
                        self.tools.insert(
                            index,
                            ToolBlock {
                                index: k,
                                got_args: false,
                                initial_input,
                            },
                        );
                    }
                    Some("text") => {
                        if let Some(text) = wire::non_empty_str(block, "text") {
                            out.push(Ok(LlmEvent::Text(text)));
                        }
                    }
                    Some("thinking") => {
                        if let Some(text) = wire::non_empty_str(block, "thinking") {
                            out.push(Ok(LlmEvent::Reasoning(text)));
                        }
                    }
                    // redacted_thinking, server_tool_use, future block types.
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(delta) = data.get("delta") else {
                    return;
                };
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = wire::non_empty_str(delta, "text") {
                            out.push(Ok(LlmEvent::Text(text)));
                        }
                    }
                    Some("input_json_delta") => {
                        // The first piece is often empty.
                        let Some(fragment) = wire::non_empty_str(delta, "partial_json") else {
                            return;
                        };
                        if let Some(block) = self.tools.get_mut(&index) {
                            block.got_args = true;
                            out.push(Ok(LlmEvent::ToolArgs {
                                index: block.index,
                                fragment,
                            }));
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(text) = wire::non_empty_str(delta, "thinking") {
                            out.push(Ok(LlmEvent::Reasoning(text)));
                        }
                    }
                    // signature_delta, citations_delta, future delta types.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(block) = self.tools.remove(&index) {
                    Self::close_tool(&block, out);
                }
            }
            "message_delta" => {
                self.record_usage(data.get("usage"));
                if let Some(reason) = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.finish(map_stop_reason(reason), out);
                }
            }
            "message_stop" => {
                let reason = if self.tool_count > 0 {
                    FinishReason::ToolCalls
                } else {
                    FinishReason::Stop
                };
                self.finish(reason, out);
                out.push(Ok(LlmEvent::Usage(self.usage())));
                self.done = true;
            }
            "error" => {
                let error_type = data
                    .get("error")
                    .and_then(|e| e.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let status = status_for_error_type(error_type);
                out.push(Err(wire::error_from_body(
                    status,
                    data,
                    "upstream reported an error",
                )));
            }
            // ping and future event types.
            _ => {}
        }
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn map_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn, and anything new.
        _ => FinishReason::Stop,
    }
}

/// The HTTP status Anthropic uses for an error type, so a mid-stream `error` event is
/// classified like the same error answered as a status (e.g. `overloaded_error` → 529,
/// retryable).
fn status_for_error_type(error_type: &str) -> Option<u16> {
    Some(match error_type {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "overloaded_error" => 529,
        _ => return None,
    })
}

impl FrameDecoder for AnthropicDecoder {
    type Frame = SseEvent;

    fn frame(&mut self, frame: SseEvent) -> Vec<EventResult> {
        let mut out = Vec::new();
        if frame.data.trim().is_empty() {
            return out;
        }
        let data = match wire::parse_json(&frame.data, "") {
            Ok(data) => data,
            Err(err) => {
                out.push(Err(err));
                return out;
            }
        };
        // The `event:` name and the payload's `type` repeat each other; trust either.
        let name = match frame.event.as_deref() {
            Some(name) if !name.is_empty() && name != "message" => name.to_owned(),
            _ => data
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        };
        self.event(&name, &data, &mut out);
        out
    }

    fn end(&mut self) -> Vec<EventResult> {
        if self.finished {
            // Finished but the body closed before `message_stop`: report what we have.
            self.done = true;
            vec![Ok(LlmEvent::Usage(self.usage()))]
        } else {
            vec![Err(UpstreamError::protocol("upstream stream ended early"))]
        }
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
    use crate::providers::ProviderKind;
    use wire::test_server::{read_file_call, read_file_tool};

    fn deployment() -> Deployment {
        wire::test_server::deployment(
            ProviderKind::Anthropic,
            "claude-sonnet-4-5",
            "https://api.anthropic.com",
            Some("sk-ant-test"),
        )
    }

    fn request() -> ChatCompletionRequest {
        serde_json::from_value(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": "Read a.py and say hi"},
                {"role": "assistant", "content": "Sure.", "name": "agent", "tool_calls": [
                    read_file_call(),
                    {"id": "functions.echo:1", "type": "function",
                     "function": {"name": "echo", "arguments": "not json"}}]},
                {"role": "tool", "tool_call_id": "call_A", "content": "print(1)"},
                {"role": "tool", "tool_call_id": "functions.echo:1", "content": "hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Now this:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "input_audio", "input_audio": {}}]},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [
                read_file_tool(),
                {"type": "function", "function": {"name": "echo"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "read_file"}},
            "parallel_tool_calls": false,
            "temperature": 1.5,
            "top_p": 0.9,
            "max_tokens": 512,
            "stop": "END",
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "n": 1,
            "logit_bias": {"1": 2},
            "seed": 3,
            "user": "u-1",
            "response_format": {"type": "json_object"},
            "stream": false
        }))
        .unwrap()
    }

    #[test]
    fn translates_the_request_exactly() {
        let body = build_body(&deployment(), &request(), 4096);
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 512,
                "system": "Be brief.\n\nUse tools.",
                "stream": true,
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "u-1"},
                "messages": [
                    {"role": "user", "content": "Read a.py and say hi"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Sure."},
                        {"type": "tool_use", "id": "call_A", "name": "read_file",
                         "input": {"path": "a.py"}},
                        {"type": "tool_use", "id": "functions_echo_1", "name": "echo", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_A", "content": "print(1)"},
                        {"type": "tool_result", "tool_use_id": "functions_echo_1", "content": "hi"},
                        {"type": "text", "text": "Now this:"},
                        {"type": "image", "source":
                            {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                        {"type": "text", "text": "Thanks"}
                    ]}
                ],
                "tools": [
                    {"name": "read_file", "description": "Read a file", "input_schema":
                        {"type": "object", "properties": {"path": {"type": "string"}}}},
                    {"name": "echo", "input_schema": {"type": "object", "properties": {}}}
                ],
                "tool_choice": {"type": "tool", "name": "read_file",
                                "disable_parallel_tool_use": true}
            })
        );
    }

    #[test]
    fn placeholder_user_default_max_tokens_and_prefill_trim() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "assistant", "content": "Earlier answer"},
                {"role": "user", "content": ""},
                {"role": "user", "content": "Go on"},
                {"role": "assistant", "content": "Partial "}
            ],
            "tool_choice": "required"
        }))
        .unwrap();
        let body = build_body(&deployment(), &req, 4096);
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "stream": true,
                "messages": [
                    {"role": "user", "content": PLACEHOLDER_USER_TEXT},
                    {"role": "assistant", "content": "Earlier answer"},
                    {"role": "user", "content": "Go on"},
                    {"role": "assistant", "content": "Partial"}
                ]
            })
        );
    }

    #[test]
    fn tool_choice_mapping() {
        assert_eq!(
            tool_choice(Some(&json!("auto")), None),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            tool_choice(Some(&json!("required")), None),
            Some(json!({"type": "any"}))
        );
        assert_eq!(
            tool_choice(Some(&json!("none")), Some(false)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(tool_choice(None, None), None);
        assert_eq!(
            tool_choice(None, Some(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            tool_choice(Some(&json!("required")), Some(true)),
            Some(json!({"type": "any"}))
        );
    }

    /// Anthropic's documented stream: text, a tool_use whose input arrives split, message_delta,
    /// message_stop — with a ping, an unknown event and cache tokens.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":20,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me look.\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"read_file\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"path\\\": \\\"a\"}}\n\n",
        "event: future_event\ndata: {\"type\":\"future_event\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\".py\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"list\",\"input\":{}}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn stream_events() -> Vec<EventResult> {
        vec![
            Ok(LlmEvent::Start {
                id: Some("msg_1".to_owned()),
                model: Some("claude-sonnet-4-5".to_owned()),
            }),
            Ok(LlmEvent::Text("Let me look.".to_owned())),
            Ok(LlmEvent::ToolStart {
                index: 0,
                id: "toolu_01".to_owned(),
                name: "read_file".to_owned(),
            }),
            Ok(LlmEvent::ToolArgs {
                index: 0,
                fragment: "{\"path\": \"a".to_owned(),
            }),
            Ok(LlmEvent::ToolArgs {
                index: 0,
                fragment: ".py\"}".to_owned(),
            }),
            Ok(LlmEvent::ToolStart {
                index: 1,
                id: "toolu_02".to_owned(),
                name: "list".to_owned(),
            }),
            Ok(LlmEvent::ToolArgs {
                index: 1,
                fragment: "{}".to_owned(),
            }),
            Ok(LlmEvent::Finish {
                reason: FinishReason::ToolCalls,
            }),
            Ok(LlmEvent::Usage(Usage::new(125, 42))),
        ]
    }

    fn decode(chunks: &[&[u8]]) -> Vec<EventResult> {
        wire::decode_all(chunks, SseParser::new(), AnthropicDecoder::new())
    }

    #[test]
    fn parses_the_stream_at_every_split() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(
                decode(&[&bytes[..i], &bytes[i..]]),
                stream_events(),
                "split at {i}"
            );
        }
        let crlf = STREAM.replace('\n', "\r\n");
        assert_eq!(decode(&[crlf.as_bytes()]), stream_events());
    }

    #[tokio::test]
    async fn parse_stream_over_byte_chunks() {
        let decoder = AnthropicDecoder::new();
        let got = wire::test_server::decode_in_chunks(STREAM, 11, SseParser::new(), decoder).await;
        assert_eq!(got, stream_events());
    }

    #[test]
    fn thinking_and_stop_reasons() {
        let input = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(
            decode(&[input.as_bytes()]),
            vec![
                Ok(LlmEvent::Start {
                    id: Some("m".to_owned()),
                    model: Some("c".to_owned())
                }),
                Ok(LlmEvent::Reasoning("hmm".to_owned())),
                Ok(LlmEvent::Text("Hi".to_owned())),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::Length
                }),
                Ok(LlmEvent::Usage(Usage::new(3, 9))),
            ]
        );
        assert_eq!(map_stop_reason("end_turn"), FinishReason::Stop);
        assert_eq!(map_stop_reason("stop_sequence"), FinishReason::Stop);
        assert_eq!(map_stop_reason("pause_turn"), FinishReason::Stop);
        assert_eq!(map_stop_reason("refusal"), FinishReason::ContentFilter);
        assert_eq!(map_stop_reason("tool_use"), FinishReason::ToolCalls);
    }

    #[test]
    fn error_event_ends_the_stream() {
        let input = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let got = decode(&[input.as_bytes()]);
        assert_eq!(got.len(), 2);
        let Err(err) = &got[1] else {
            panic!("expected an error: {got:?}")
        };
        assert_eq!(err.kind, UpstreamErrorKind::Status(529));
        assert!(err.is_retryable());
        assert_eq!(err.message, "Overloaded");
        assert_eq!(err.error_type.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn early_end_and_end_after_finish() {
        let cut = STREAM.find("event: message_delta").unwrap();
        let got = decode(&[&STREAM.as_bytes()[..cut]]);
        assert_eq!(
            got.last(),
            Some(&Err(UpstreamError::protocol("upstream stream ended early")))
        );

        let cut = STREAM.find("event: message_stop").unwrap();
        let got = decode(&[&STREAM.as_bytes()[..cut]]);
        assert_eq!(got, stream_events());

        let got = decode(&[b"event: message_start\ndata: {not json}\n\n"]);
        assert!(matches!(&got[..], [Err(e)] if e.kind == UpstreamErrorKind::Protocol));
    }

    #[tokio::test]
    async fn sends_headers_and_maps_529() {
        let (reply, seen) = wire::test_server::open_once(
            deployment(),
            "/v1/",
            "HTTP/1.1 529 Site Overloaded\r\ncontent-type: application/json\r\nretry-after: 2\r\n",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            async |t, d| open(t, d, &request(), 4096).await,
        )
        .await;
        let err = reply.err().unwrap();
        assert_eq!(err.kind, UpstreamErrorKind::Status(529));
        assert!(err.is_retryable());
        assert_eq!(err.message, "Overloaded");
        assert_eq!(err.error_type.as_deref(), Some("overloaded_error"));
        assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(seen.request_line, "POST /v1/messages HTTP/1.1");
        assert_eq!(seen.header("x-api-key"), Some("sk-ant-test"));
        assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.json(), build_body(&deployment(), &request(), 4096));
    }

    #[tokio::test]
    async fn streams_a_reply_from_a_local_server() {
        let (reply, _seen) = wire::test_server::open_once(
            deployment(),
            "",
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n",
            STREAM,
            async |t, d| open(t, d, &request(), 4096).await,
        )
        .await;
        assert_eq!(reply.unwrap(), stream_events());
    }
}
