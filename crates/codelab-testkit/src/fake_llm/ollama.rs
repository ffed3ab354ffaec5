//! Ollama native `/api/chat` wire format: NDJSON lines while streaming, one object
//! with `done: true` otherwise, and `{"error":"…"}` bodies.

use axum::body::Bytes;
use serde_json::{Value, json};

use super::{FakeReply, ReplyCtx, rfc3339_now};

fn line(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

fn tool_calls(reply: &FakeReply) -> Value {
    reply
        .tool_calls
        .iter()
        .map(|call| json!({"function": {"name": call.name, "arguments": call.arguments_object()}}))
        .collect()
}

/// The last object of a reply: `message`, `done: true` and the statistics (`done_reason`, token
/// counts, durations in ns).
fn done_object(reply: &FakeReply, ctx: &ReplyCtx, message: Value) -> Value {
    let (prompt, completion) = reply.usage;
    let load = 1_000_000_u64;
    let prompt_eval = prompt.saturating_mul(100_000);
    let eval = completion.saturating_mul(1_000_000);
    json!({
        "model": ctx.model,
        "created_at": rfc3339_now(),
        "message": message,
        "done": true,
        "done_reason": "stop",
        "total_duration": load + prompt_eval + eval,
        "load_duration": load,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": prompt_eval,
        "eval_count": completion,
        "eval_duration": eval,
    })
}

/// The NDJSON lines of a streamed reply, one body chunk each.
pub(super) fn stream_lines(reply: &FakeReply, ctx: &ReplyCtx) -> Vec<Bytes> {
    let piece = |message: Value| {
        line(&json!({
            "model": ctx.model,
            "created_at": rfc3339_now(),
            "message": message,
            "done": false,
        }))
    };
    let mut out = Vec::new();
    for thinking in &reply.reasoning_chunks {
        out.push(piece(
            json!({"role": "assistant", "content": "", "thinking": thinking}),
        ));
    }
    for text in &reply.text_chunks {
        out.push(piece(json!({"role": "assistant", "content": text})));
    }
    if !reply.tool_calls.is_empty() {
        out.push(piece(json!({
            "role": "assistant",
            "content": "",
            "tool_calls": tool_calls(reply),
        })));
    }
    if let Some(message) = &reply.stream_error {
        out.push(line(&json!({"error": message})));
        return out;
    }
    let message = json!({"role": "assistant", "content": ""});
    out.push(line(&done_object(reply, ctx, message)));
    out
}

/// The non-stream response object.
pub(super) fn response(reply: &FakeReply, ctx: &ReplyCtx) -> Value {
    let mut message = json!({"role": "assistant", "content": reply.full_text()});
    if !reply.reasoning_chunks.is_empty() {
        message["thinking"] = Value::String(reply.full_reasoning());
    }
    if !reply.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls(reply);
    }
    done_object(reply, ctx, message)
}

/// `{"error":"…"}` for an HTTP error status.
pub(super) fn error_body(status: u16, message: Option<&str>, model: &str) -> Value {
    let default_message = match status {
        404 => format!("model \"{model}\" not found, try pulling it first"),
        400 => "invalid request (fake)".to_owned(),
        429 => "too many requests (fake)".to_owned(),
        503 => "server busy, please try again. maximum pending requests exceeded".to_owned(),
        _ => "llama runner process has terminated: exit status 2 (fake)".to_owned(),
    };
    json!({"error": message.map_or(default_message, str::to_owned)})
}

/// `GET /api/tags`.
pub(super) fn tags(models: &[String]) -> Value {
    let entries: Vec<Value> = models
        .iter()
        .map(|m| {
            let family = m.split(':').next().unwrap_or(m);
            json!({
                "name": m,
                "model": m,
                "modified_at": "2025-05-01T12:00:00.000000000Z",
                "size": 522_653_767_u64,
                "digest": "7df6b6e09427a769808717c0a93cadc4ae99ed4eb8bf5ca557c90846becea435",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": family,
                    "families": [family],
                    "parameter_size": "751.63M",
                    "quantization_level": "Q4_K_M",
                },
            })
        })
        .collect();
    json!({"models": entries})
}
