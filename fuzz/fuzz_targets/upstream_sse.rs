//! Upstream SSE: an OpenAI or Anthropic event stream as the LLM proxy reads it
//! (`codelab_protocol::sse::SseParser` framing, `OpenAiDecoder` / `AnthropicDecoder` state
//! machines, `decode_all`), plus OpenAI's non-streamed answer (`completion_events`).
//!
//! Input: byte 0 picks the provider (`o`/`O` OpenAI, `a`/`A` Anthropic; upper case: the
//! smallest line cap the settings allow, so overflows are reached), byte 1 the chunk size the
//! body is cut into, the rest is the body.
//!
//! Invariants: no panic; the events do not depend on where the network cut the body (whole,
//! in chunks, byte by byte); an error is the last item; a tool call's arguments follow its
//! start, and tool indexes are unique; OpenAI chunks read by the fast path (`fast_chunk`)
//! give the same events as the general reading; the body's first line read as a `Retry-After`
//! value never panics.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use codelab_llm_proxy::config::MIN_STREAM_LINE_BYTES;
use codelab_llm_proxy::events::LlmEvent;
use codelab_llm_proxy::providers::anthropic::AnthropicDecoder;
use codelab_llm_proxy::providers::openai::{OpenAiDecoder, completion_events};
use codelab_llm_proxy::providers::wire::{
    DEFAULT_MAX_LINE_BYTES, EventResult, FrameDecoder, SseEvent, SseParser, decode_all, retry_after,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Events with generated tool-call ids blanked (ids are random where the upstream sent none).
fn normalised(items: Vec<EventResult>) -> Vec<EventResult> {
    items
        .into_iter()
        .map(|item| match item {
            Ok(LlmEvent::ToolStart { index, name, .. }) => Ok(LlmEvent::ToolStart {
                index,
                id: String::new(),
                name,
            }),
            other => other,
        })
        .collect()
}

fn check_shape(items: &[EventResult]) {
    if let Some(at) = items.iter().position(Result::is_err) {
        assert_eq!(at + 1, items.len(), "items after an error");
    }
    let mut started = Vec::new();
    for event in items.iter().flatten() {
        match event {
            LlmEvent::ToolStart { index, .. } => {
                assert!(!started.contains(index), "tool index {index} started twice");
                started.push(*index);
            }
            LlmEvent::ToolArgs { index, .. } => {
                assert!(
                    started.contains(index),
                    "arguments of tool {index} before its start"
                );
            }
            _ => {}
        }
    }
}

fn decode<D: FrameDecoder<Frame = SseEvent>>(
    body: &[u8],
    cap: usize,
    chunk: usize,
    new: impl Fn() -> D,
) {
    let whole = normalised(decode_all(
        &[body],
        SseParser::with_max_line_bytes(cap),
        new(),
    ));
    check_shape(&whole);
    let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
    let cut = normalised(decode_all(
        &chunks,
        SseParser::with_max_line_bytes(cap),
        new(),
    ));
    assert_eq!(whole, cut, "events depend on the chunking ({chunk} bytes)");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let by_byte = normalised(decode_all(
        &bytes,
        SseParser::with_max_line_bytes(cap),
        new(),
    ));
    assert_eq!(whole, by_byte, "events depend on the chunking (1 byte)");
}

/// The same JSON object with one of the fast path's own keys repeated at its end (same value):
/// the general reading sees the same object, the fast path refuses a repeated key.
fn with_repeated_key(data: &str) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(data) else {
        return None;
    };
    let (key, value) = ["id", "model", "choices", "usage"]
        .iter()
        .find_map(|k| map.get(*k).map(|v| (*k, v)))?;
    let trimmed = data.trim_end().strip_suffix('}')?;
    Some(format!("{trimmed},\"{key}\":{value}}}"))
}

/// OpenAI frames decoded as sent and with every chunk forced through the general reading.
fn fast_equals_general(body: &[u8], cap: usize) {
    let mut parser = SseParser::with_max_line_bytes(cap);
    let mut frames = parser.push(body);
    frames.extend(parser.finish());
    let (mut fast, mut general) = (OpenAiDecoder::new(), OpenAiDecoder::new());
    let (mut fast_out, mut general_out) = (Vec::new(), Vec::new());
    for frame in frames {
        if fast.is_complete() {
            break;
        }
        let rewritten = with_repeated_key(frame.data.trim()).unwrap_or_else(|| frame.data.clone());
        general_out.extend(general.frame(SseEvent {
            event: frame.event.clone(),
            data: rewritten,
        }));
        fast_out.extend(fast.frame(frame));
    }
    fast_out.extend(fast.end());
    general_out.extend(general.end());
    assert_eq!(
        normalised(fast_out),
        normalised(general_out),
        "the fast path reads differently"
    );
}

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, body @ ..] = data else {
        return;
    };
    let cap = if mode.is_ascii_uppercase() {
        MIN_STREAM_LINE_BYTES
    } else {
        DEFAULT_MAX_LINE_BYTES
    };
    let chunk = usize::from(*chunk % 16) + 1;
    if mode.eq_ignore_ascii_case(&b'a') || (!mode.eq_ignore_ascii_case(&b'o') && mode % 2 == 1) {
        decode(body, cap, chunk, AnthropicDecoder::new);
    } else {
        decode(body, cap, chunk, OpenAiDecoder::new);
        fast_equals_general(body, cap);
        // The non-streamed answer of the same upstream: any outcome but a panic.
        let _ = completion_events(body);
    }
    // The same upstream's `Retry-After` / `retry-after-ms`, from the body's first line.
    if let Some(line) = body.split(|&b| b == b'\n').next()
        && let Ok(value) = HeaderValue::from_bytes(line)
    {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", value.clone());
        headers.insert("retry-after-ms", value);
        let _ = retry_after(&headers);
    }
});
