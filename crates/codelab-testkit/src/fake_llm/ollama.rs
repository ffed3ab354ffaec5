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

/// The final-line statistics (`done_reason`, token counts, durations in ns).
fn add_stats(target: &mut Value, reply: &FakeReply) {
    let (prompt, completion) = reply.usage;
    let load = 1_000_000_u64;
    let prompt_eval = prompt.saturating_mul(100_000);
    let eval = completion.saturating_mul(1_000_000);
    let stats = json!({
        "done_reason": "stop",
        "total_duration": load + prompt_eval + eval,
        "load_duration": load,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": prompt_eval,
        "eval_count": completion,
        "eval_duration": eval,
    });
    if let (Some(target), Value::Object(stats)) = (target.as_object_mut(), stats) {
        target.extend(stats);
    }
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
    let mut last = json!({
        "model": ctx.model,
        "created_at": rfc3339_now(),
        "message": {"role": "assistant", "content": ""},
        "done": true,
    });
    add_stats(&mut last, reply);
    out.push(line(&last));
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
    let mut value = json!({
        "model": ctx.model,
        "created_at": rfc3339_now(),
        "message": message,
        "done": true,
    });
    add_stats(&mut value, reply);
    value
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
