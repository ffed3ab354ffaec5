//! The mock model's directive parser (`codelab_llm_proxy::providers::mock::plan_reply`): the
//! `::tool`, `::reply`, `::error`, `::slow` and `::step` lines of the last user message.
//!
//! Input: byte 0 (mod 4) is how many assistant/tool exchanges follow the user message (the
//! step is one more), the rest is the user message's text.
//!
//! Invariants: no panic; the plan is deterministic; a tool call has a non-empty name without
//! whitespace; arguments that are JSON are re-encoded compactly; an error status is an HTTP
//! status (100-599); no streamed piece is empty; a message without directive lines gets the
//! plain answer; the provider answers with an error exactly when the plan has one.
#![no_main]

use std::time::Duration;

use codelab_llm_proxy::providers::mock::{MockProvider, STATIC_CHUNKS, plan_reply};
use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [exchanges, text @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let mut messages = vec![
        ChatMessage::text("system", "You are a test."),
        ChatMessage::text("user", text),
    ];
    for n in 0..exchanges % 4 {
        messages.push(ChatMessage::text("assistant", ""));
        let mut result = ChatMessage::text("tool", format!("result {n}: {text}"));
        result.tool_call_id = Some(format!("call_{n}"));
        messages.push(result);
    }
    let step = 1 + usize::from(exchanges % 4);

    let plan = plan_reply(&messages, Duration::ZERO);
    assert_eq!(
        plan,
        plan_reply(&messages, Duration::ZERO),
        "not deterministic"
    );
    for (name, arguments) in &plan.tool_calls {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "tool name {name:?}"
        );
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(arguments) {
            assert_eq!(&value.to_string(), arguments, "JSON arguments not compact");
        }
    }
    if let Some(status) = plan.error_status {
        assert!((100..=599).contains(&status), "status {status}");
    }
    assert!(
        plan.text_chunks.iter().all(|c| !c.is_empty()),
        "an empty piece"
    );
    let has_directive_lines = text.lines().any(|l| l.trim_start().starts_with("::"));
    if !has_directive_lines {
        assert!(plan.tool_calls.is_empty() && plan.error_status.is_none());
        assert_eq!(plan.token_delay, Duration::ZERO);
        if step == 1 {
            assert_eq!(plan.text_chunks, STATIC_CHUNKS.map(str::to_owned).to_vec());
        }
    }

    let request = ChatCompletionRequest {
        model: "mock".to_owned(),
        messages,
        ..ChatCompletionRequest::default()
    };
    let opened = MockProvider::default().open(&request);
    assert_eq!(opened.is_err(), plan.error_status.is_some());
});
