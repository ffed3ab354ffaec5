//! Upstream NDJSON: an Ollama `/api/chat` stream as the LLM proxy reads it (`NdjsonSplitter`
//! framing, `OllamaDecoder`, `decode_all`).
//!
//! Input: byte 0 picks the line cap (odd: the smallest the settings allow, so overflows are
//! reached), byte 1 the chunk size the body is cut into, the rest is the body.
//!
//! Invariants: no panic; the events do not depend on where the network cut the body; an error
//! is the last item; a tool call's arguments follow its start, and tool indexes are unique.
#![no_main]

use codelab_llm_proxy::config::MIN_STREAM_LINE_BYTES;
use codelab_llm_proxy::events::LlmEvent;
use codelab_llm_proxy::providers::ollama::OllamaDecoder;
use codelab_llm_proxy::providers::wire::{
    DEFAULT_MAX_LINE_BYTES, EventResult, NdjsonSplitter, decode_all,
};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, body @ ..] = data else {
        return;
    };
    let cap = if mode % 2 == 1 {
        MIN_STREAM_LINE_BYTES
    } else {
        DEFAULT_MAX_LINE_BYTES
    };
    let chunk = usize::from(*chunk % 16) + 1;
    let run = |chunks: &[&[u8]]| {
        normalised(decode_all(
            chunks,
            NdjsonSplitter::with_max_line_bytes(cap),
            OllamaDecoder::new(),
        ))
    };
    let whole = run(&[body]);
    if let Some(at) = whole.iter().position(Result::is_err) {
        assert_eq!(at + 1, whole.len(), "items after an error");
    }
    let mut started = Vec::new();
    for event in whole.iter().flatten() {
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
    let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
    assert_eq!(
        whole,
        run(&chunks),
        "events depend on the chunking ({chunk} bytes)"
    );
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(whole, run(&bytes), "events depend on the chunking (1 byte)");
});
