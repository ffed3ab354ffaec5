//! IDE WebSocket frames: the text of one socket message as the gateway decodes it
//! (`codelab_protocol::ide::parse_client_frame`, the same for the Flutter and the protocol-2
//! profile), then as the runtime reads it after the gateway relayed it.
//!
//! Invariants: no panic; a refused frame's `error` frame has a known code and no `null` key; an
//! accepted frame survives the relay (serialised as the gateway sends it, read back by
//! `ClientFrame::from_value` as the runtime does) unchanged, and also when written the Flutter
//! IDE's way (all 15 keys, `null` for the unused ones); every socket's permissions decide it
//! without panicking, and a `hello` names a profile or is refused.
#![no_main]

use codelab_gateway::ws::permissions::FramePermissions;
use codelab_gateway::ws::render::{Profile, frame_error};
use codelab_protocol::ide::{CLIENT_FRAME_TYPES, ClientFrame, parse_client_frame};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The keys of the Flutter IDE's message object (docs/websocket-protocol.md, "Client frames").
const FLUTTER_KEYS: [&str; 15] = [
    "type",
    "content",
    "role",
    "is_final",
    "call_id",
    "tool_name",
    "arguments",
    "requires_approval",
    "result",
    "error",
    "agent_type",
    "from_agent",
    "to_agent",
    "reason",
    "metadata",
];

fn has_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(has_null),
        Value::Object(map) => map.values().any(has_null),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // A WebSocket text message is UTF-8 (tungstenite refuses anything else before us).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match parse_client_frame(text) {
        Err(error) => {
            let answer = serde_json::to_value(frame_error(&error)).expect("error frame serialises");
            assert!(!has_null(&answer), "error frame with a null key: {answer}");
            assert!(
                ["INVALID_FORMAT", "INVALID_TYPE", "MISSING_FIELD"].contains(&error.code()),
                "unknown code {}",
                error.code()
            );
            return;
        }
        Ok(frame) => frame,
    };
    let kind = frame.kind();
    assert!(CLIENT_FRAME_TYPES.contains(&kind));
    for permissions in [
        FramePermissions::All,
        FramePermissions::FlutterIde,
        FramePermissions::ReadOnly,
    ] {
        let verdict = permissions.check(kind);
        if permissions == FramePermissions::All {
            assert!(verdict.is_ok());
        }
    }
    if let ClientFrame::Hello { protocol, .. } = &frame {
        let profile = Profile::from_number(u64::from(*protocol));
        assert_eq!(profile.is_some(), matches!(protocol, 1 | 2));
    }

    // The relay: the gateway serialises the frame into the runtime request's JSON text, the
    // runtime parses that text and reads the frame from the value.
    let relayed = serde_json::to_string(&frame).expect("a frame serialises");
    let value: Value = serde_json::from_str(&relayed).expect("the relayed frame is JSON");
    assert!(
        !has_null_at_top(&value),
        "relayed frame with a null key: {relayed}"
    );
    let read = ClientFrame::from_value(value.clone()).expect("the runtime reads a relayed frame");
    assert_eq!(
        read, frame,
        "the frame changed on the way to the runtime: {relayed}"
    );

    // The Flutter profile's way of writing the same frame: every key present, null if unused.
    let Value::Object(mut object) = value else {
        panic!("a frame serialises to an object");
    };
    for key in FLUTTER_KEYS {
        object.entry(key).or_insert(Value::Null);
    }
    let flutter = ClientFrame::from_value(Value::Object(object)).expect("the Flutter form parses");
    assert_eq!(flutter, frame, "the Flutter form reads differently");
});

/// Outgoing frames never carry `null` keys; a relayed frame is the same shape.
fn has_null_at_top(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|map| map.values().any(Value::is_null))
}
