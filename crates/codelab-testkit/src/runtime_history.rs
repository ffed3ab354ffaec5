//! Reading the agent runtime's history page (`GET /sessions/{id}/history`, as JSON) in tests.

use serde_json::Value;

/// `(role, content)` of every stored message of a history page (an empty content for a
/// message without text, e.g. an assistant message that only calls tools).
pub fn messages(history: &Value) -> Vec<(String, String)> {
    history["messages"]
        .as_array()
        .expect("a history page has messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().expect("a message has a role").to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
