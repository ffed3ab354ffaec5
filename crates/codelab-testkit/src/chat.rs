//! A chat request and key for tests of the agent runtime's LLM client, against the real LLM
//! proxy or a [`crate::FakeLlm`] in its place.

use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};

/// The internal key the client sends (and the proxy under test expects).
pub const PROXY_KEY: &str = "test-internal-key-0123456789";

/// A request to the mock model: a system line and `user`'s message.
pub fn chat_request(user: &str) -> ChatCompletionRequest {
    ChatCompletionRequest {
        model: "mock-llm".into(),
        messages: vec![
            ChatMessage::text("system", "You are a test."),
            ChatMessage::text("user", user),
        ],
        ..ChatCompletionRequest::default()
    }
}
