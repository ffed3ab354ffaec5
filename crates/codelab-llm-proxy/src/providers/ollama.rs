//! Ollama native `/api/chat` upstream: NDJSON streaming, tool-call arguments as objects,
//! no tool-call ids (synthesized), usage from `prompt_eval_count` / `eval_count`.

use std::collections::HashMap;

use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage, MessageContent, Usage};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::wire::{self, EventResult, FrameDecoder, NdjsonSplitter};
use super::{Deployment, Transport};
use crate::events::{EventStream, FinishReason, LlmEvent, UpstreamError};

/// Sends `request` to an Ollama deployment and returns its event stream once the upstream
/// answered with a success status.
pub async fn open(
    transport: &Transport<'_>,
    deployment: &Deployment,
    request: &ChatCompletionRequest,
) -> Result<EventStream, UpstreamError> {
    let url = wire::endpoint_url(&deployment.api_base, Some("/v1"), &["api", "chat"])?;
    let body = build_body(deployment, request);
    let mut builder = transport.http.post(url).json(&body);
    // Ollama itself has no auth; a key is for a reverse proxy in front of it.
    if let Some(key) = &deployment.api_key {
        builder = builder.bearer_auth(key.expose_secret());
    }
    tracing::debug!(model = %deployment.upstream_model, "sending chat request to ollama");
    let framing = NdjsonSplitter::with_max_line_bytes(transport.max_line_bytes);
    wire::open_stream(
        transport,
        deployment,
        builder,
        framing,
        OllamaDecoder::new(),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Request translation
// ---------------------------------------------------------------------------------------------

/// The `/api/chat` request body for `request` (always streamed).
pub fn build_body(deployment: &Deployment, request: &ChatCompletionRequest) -> Value {
    // Tool results name their tool in recent Ollama versions; OpenAI results only carry the id.
    let mut tool_names: HashMap<&str, &str> = HashMap::new();
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        for call in message.tool_calls.iter().flatten() {
            tool_names.insert(call.id.as_str(), call.function.name.as_str());
        }
        messages.push(message_json(message, &tool_names));
    }

    let mut body = Map::new();
    body.insert("model".to_owned(), json!(deployment.upstream_model));
    body.insert("messages".to_owned(), Value::Array(messages));
    // Ollama has no `tool_choice`; `"none"` is honoured by not offering the tools.
    let no_tools = request.tool_choice.as_ref().and_then(Value::as_str) == Some("none");
    if let Some(tools) = request
        .tools
        .as_ref()
        .filter(|t| !t.is_empty() && !no_tools)
    {
        body.insert("tools".to_owned(), json!(tools));
    }
    body.insert("stream".to_owned(), json!(true));
    if let Some(format) = response_format(request.extra.get("response_format")) {
        body.insert("format".to_owned(), format);
    }

    let mut options = Map::new();
    if let Some(t) = request.temperature {
        options.insert("temperature".to_owned(), json!(t));
    }
    if let Some(p) = request.top_p {
        options.insert("top_p".to_owned(), json!(p));
    }
    if let Some(k) = request.extra.get("top_k").and_then(Value::as_u64) {
        options.insert("top_k".to_owned(), json!(k));
    }
    if let Some(n) = wire::max_tokens(request) {
        options.insert("num_predict".to_owned(), json!(n));
    }
    if let Some(stop) = &request.stop {
        options.insert("stop".to_owned(), json!(stop.to_vec()));
    }
    if let Some(seed) = request
        .extra
        .get("seed")
        .filter(|s| s.is_i64() || s.is_u64())
    {
        options.insert("seed".to_owned(), seed.clone());
    }
    if !options.is_empty() {
        body.insert("options".to_owned(), Value::Object(options));
    }
    Value::Object(body)
}

fn message_json(message: &ChatMessage, tool_names: &HashMap<&str, &str>) -> Value {
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "assistant" => "assistant",
        "tool" => "tool",
        _ => "user",
    };
    let mut m = Map::new();
    m.insert("role".to_owned(), json!(role));
    // Ollama's content is a plain string: text parts are flattened.
    m.insert("content".to_owned(), json!(message.text_content()));
    let images = images(message.content.as_ref());
    if !images.is_empty() {
        m.insert("images".to_owned(), json!(images));
    }
    if let Some(calls) = message.tool_calls.as_ref().filter(|c| !c.is_empty()) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|call| {
                let arguments = wire::arguments_object(&call.function.arguments);
                json!({"function": {"name": call.function.name, "arguments": arguments}})
            })
            .collect();
        m.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    if role == "tool" {
        let name = message
            .tool_call_id
            .as_deref()
            .and_then(|id| tool_names.get(id).copied())
            .or(message.name.as_deref());
        if let Some(name) = name {
            m.insert("tool_name".to_owned(), json!(name));
        }
    }
    Value::Object(m)
}

/// Base64 data of `data:` URL image parts (Ollama takes raw base64 in `images`).
fn images(content: Option<&MessageContent>) -> Vec<String> {
    let Some(MessageContent::Parts(parts)) = content else {
        return Vec::new();
    };
    parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .filter_map(|p| wire::parse_data_url(wire::image_url(p)?).map(|(_, data)| data.to_owned()))
        .collect()
}

/// OpenAI `response_format` → Ollama `format`: `"json"` or the JSON schema.
fn response_format(format: Option<&Value>) -> Option<Value> {
    let format = format?;
    match format.get("type").and_then(Value::as_str)? {
        "json_object" => Some(json!("json")),
        "json_schema" => format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Stream parsing
// ---------------------------------------------------------------------------------------------

/// State machine from Ollama NDJSON lines to [`LlmEvent`]s.
#[derive(Debug, Default)]
pub struct OllamaDecoder {
    started: bool,
    tool_count: u32,
    done: bool,
}

impl OllamaDecoder {
    /// A decoder at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    fn line(&mut self, line: &Value, out: &mut Vec<EventResult>) {
        if let Some(error) = line.get("error").filter(|e| !e.is_null()) {
            let message = error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            out.push(Err(UpstreamError::protocol(message)));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Ok(LlmEvent::Start {
                id: None,
                model: wire::non_empty_str(line, "model"),
            }));
        }
        if let Some(message) = line.get("message") {
            if let Some(thinking) = wire::non_empty_str(message, "thinking") {
                out.push(Ok(LlmEvent::Reasoning(thinking)));
            }
            if let Some(content) = wire::non_empty_str(message, "content") {
                out.push(Ok(LlmEvent::Text(content)));
            }
            for call in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_call(call, out);
            }
        }
        if line.get("done").and_then(Value::as_bool) == Some(true) {
            // Ollama says `done_reason:"stop"` even after tool calls.
            let reason = if self.tool_count > 0 {
                FinishReason::ToolCalls
            } else if line.get("done_reason").and_then(Value::as_str) == Some("length") {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            out.push(Ok(LlmEvent::Finish { reason }));
            // Either count may be missing (e.g. a fully cached prompt): count it as 0.
            let count = |name: &str| line.get(name).and_then(Value::as_u64).unwrap_or(0);
            out.push(Ok(LlmEvent::Usage(Usage::new(
                count("prompt_eval_count"),
                count("eval_count"),
            ))));
            self.done = true;
        }
    }

    /// A tool call arrives complete in one line, arguments as an object and (historically)
    /// without an id.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<EventResult>) {
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let id = wire::non_empty_str(call, "id").unwrap_or_else(wire::new_tool_call_id);
        let fragment = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(args @ Value::Object(_)) => args.to_string(),
            _ => "{}".to_owned(),
        };
        let index = self.tool_count;
        self.tool_count += 1;
        out.push(Ok(LlmEvent::ToolStart { index, id, name }));
        out.push(Ok(LlmEvent::ToolArgs { index, fragment }));
    }
}

impl FrameDecoder for OllamaDecoder {
    type Frame = String;

    fn frame(&mut self, frame: String) -> Vec<EventResult> {
        let mut out = Vec::new();
        match wire::parse_json(&frame, " line") {
            Ok(line) => self.line(&line, &mut out),
            Err(err) => out.push(Err(err)),
        }
        out
    }

    fn end(&mut self) -> Vec<EventResult> {
        vec![Err(UpstreamError::protocol("upstream stream ended early"))]
    }

    fn is_complete(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::UpstreamErrorKind;
    use crate::providers::ProviderKind;
    use wire::test_server::{read_file_call, read_file_tool};

    fn deployment() -> Deployment {
        wire::test_server::deployment(
            ProviderKind::Ollama,
            "qwen3:0.6b",
            "http://ollama:11434/v1",
            None,
        )
    }

    fn request() -> ChatCompletionRequest {
        serde_json::from_value(json!({
            "model": "qwen3",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Read a.py"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "text", "text": "please"}]},
                {"role": "assistant", "content": null, "tool_calls": [read_file_call()]},
                {"role": "tool", "tool_call_id": "call_A", "content": "print(1)"},
                {"role": "tool", "tool_call_id": "unknown", "name": "echo", "content": "x"}
            ],
            "tools": [read_file_tool()],
            "tool_choice": "auto",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": ["END"],
            "seed": 7,
            "response_format": {"type": "json_object"},
            "presence_penalty": 1.0
        }))
        .unwrap()
    }

    #[test]
    fn translates_the_request_exactly() {
        assert_eq!(
            build_body(&deployment(), &request()),
            json!({
                "model": "qwen3:0.6b",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Read a.py\nplease", "images": ["iVBOR"]},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"function": {"name": "read_file", "arguments": {"path": "a.py"}}}]},
                    {"role": "tool", "content": "print(1)", "tool_name": "read_file"},
                    {"role": "tool", "content": "x", "tool_name": "echo"}
                ],
                "tools": [read_file_tool()],
                "stream": true,
                "format": "json",
                "options": {"temperature": 0.2, "top_p": 0.9, "num_predict": 64,
                            "stop": ["END"], "seed": 7}
            })
        );
    }

    const STREAM: &str = concat!(
        "{\"model\":\"qwen3:0.6b\",\"created_at\":\"2025-06-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"Need the file.\"},\"done\":false}\n",
        "{\"model\":\"qwen3:0.6b\",\"created_at\":\"2025-06-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Reading ü\"},\"done\":false}\r\n",
        "{\"model\":\"qwen3:0.6b\",\"created_at\":\"2025-06-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"read_file\",\"arguments\":{\"path\":\"a.py\"}}},{\"id\":\"call_7\",\"function\":{\"index\":1,\"name\":\"echo\",\"arguments\":{}}}]},\"done\":false}\n",
        "{\"model\":\"qwen3:0.6b\",\"created_at\":\"2025-06-01T00:00:01Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":100,\"prompt_eval_count\":26,\"eval_count\":12}\n",
    );

    fn check_stream(got: &[EventResult]) {
        assert_eq!(
            got[0],
            Ok(LlmEvent::Start {
                id: None,
                model: Some("qwen3:0.6b".to_owned())
            })
        );
        assert_eq!(got[1], Ok(LlmEvent::Reasoning("Need the file.".to_owned())));
        assert_eq!(got[2], Ok(LlmEvent::Text("Reading ü".to_owned())));
        let Ok(LlmEvent::ToolStart { index: 0, id, name }) = &got[3] else {
            panic!("unexpected {got:?}")
        };
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_eq!(name, "read_file");
        assert_eq!(
            got[4..],
            [
                Ok(LlmEvent::ToolArgs {
                    index: 0,
                    fragment: "{\"path\":\"a.py\"}".to_owned()
                }),
                Ok(LlmEvent::ToolStart {
                    index: 1,
                    id: "call_7".to_owned(),
                    name: "echo".to_owned()
                }),
                Ok(LlmEvent::ToolArgs {
                    index: 1,
                    fragment: "{}".to_owned()
                }),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::ToolCalls
                }),
                Ok(LlmEvent::Usage(Usage::new(26, 12))),
            ]
        );
    }

    #[test]
    fn parses_the_stream_at_every_split() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            let got = wire::decode_all(
                &[&bytes[..i], &bytes[i..]],
                NdjsonSplitter::new(),
                OllamaDecoder::new(),
            );
            check_stream(&got);
        }
    }

    #[tokio::test]
    async fn parse_stream_over_byte_chunks() {
        let decoder = OllamaDecoder::new();
        let got =
            wire::test_server::decode_in_chunks(STREAM, 5, NdjsonSplitter::new(), decoder).await;
        check_stream(&got);
    }

    fn decode(input: &str) -> Vec<EventResult> {
        wire::decode_all(
            &[input.as_bytes()],
            NdjsonSplitter::new(),
            OllamaDecoder::new(),
        )
    }

    #[test]
    fn length_missing_counts_errors_and_early_end() {
        let got = decode(concat!(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"length\",\"eval_count\":4}",
        ));
        assert_eq!(
            got,
            vec![
                Ok(LlmEvent::Start {
                    id: None,
                    model: Some("m".to_owned())
                }),
                Ok(LlmEvent::Text("Hi".to_owned())),
                Ok(LlmEvent::Finish {
                    reason: FinishReason::Length
                }),
                Ok(LlmEvent::Usage(Usage::new(0, 4))),
            ]
        );

        let got = decode(concat!(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
            "{\"error\":\"model runner has unexpectedly stopped\"}\n",
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true}\n",
        ));
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Err(UpstreamError::protocol(
                "model runner has unexpectedly stopped"
            ))
        );

        let got = decode(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
        );
        assert_eq!(
            got.last(),
            Some(&Err(UpstreamError::protocol("upstream stream ended early")))
        );

        let got = decode("not json\n");
        assert!(matches!(&got[..], [Err(e)] if e.kind == UpstreamErrorKind::Protocol));
    }

    #[test]
    fn tool_choice_none_withholds_tools() {
        let mut req = request();
        req.tool_choice = Some(json!("none"));
        assert!(build_body(&deployment(), &req).get("tools").is_none());
    }

    #[tokio::test]
    async fn maps_404_model_not_pulled() {
        let (reply, seen) = wire::test_server::open_once(
            deployment(),
            "/v1/",
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n",
            r#"{"error":"model \"qwen3:0.6b\" not found, try pulling it first"}"#,
            async |t, d| open(t, d, &request()).await,
        )
        .await;
        let err = reply.err().unwrap();
        assert_eq!(err.kind, UpstreamErrorKind::Status(404));
        assert_eq!(
            err.message,
            "model \"qwen3:0.6b\" not found, try pulling it first"
        );
        assert!(!err.is_retryable());
        assert_eq!(seen.request_line, "POST /api/chat HTTP/1.1");
        assert_eq!(seen.json(), build_body(&deployment(), &request()));
    }

    #[tokio::test]
    async fn streams_a_reply_from_a_local_server() {
        let (reply, _seen) = wire::test_server::open_once(
            deployment(),
            "",
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n",
            STREAM,
            async |t, d| open(t, d, &request()).await,
        )
        .await;
        check_stream(&reply.unwrap());
    }
}
