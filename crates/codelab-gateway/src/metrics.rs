//! Metric names of the gateway's WebSocket side (`codelab_gateway_*`). Labels are bounded sets:
//! client profiles, directions, frame types from fixed lists (anything else is `other`), close
//! codes we know, outcome and reason names. Never a session, user or call id.

use std::sync::Once;
use std::time::Duration;

use codelab_protocol::ide::CLIENT_FRAME_TYPES;

/// Open WebSockets by `profile` (`flutter`, `protocol2`).
pub const WS_ACTIVE_SOCKETS: &str = "codelab_gateway_ws_active_sockets";
/// Frames by `direction` (`in`, `out`) and `type`.
pub const WS_FRAMES: &str = "codelab_gateway_ws_frames_total";
/// Upgrade attempts by `outcome` (`accepted`, `unauthorized`, `forbidden`, `bad_request`,
/// `runtime_unavailable`, `too_many_sockets`).
pub const WS_CONNECTIONS: &str = "codelab_gateway_ws_connections_total";
/// Closed sockets by `code` (`1000`, `1001`, `1008`, `1009`, ..., `1006` without a close frame).
pub const WS_CLOSES: &str = "codelab_gateway_ws_closes_total";
/// Sockets closed with 1013 because they did not read what was queued for them.
pub const WS_SLOW_CONSUMERS: &str = "codelab_gateway_ws_slow_consumers_total";
/// Resumption requests (`hello`, connect with protocol 2, a fan-out gap) by `outcome`:
/// `fetched` (read from the runtime) or `coalesced` (merged into the next fetch).
pub const WS_REPLAYS: &str = "codelab_gateway_ws_replays_total";
/// Refused credentials by `reason`.
pub const AUTH_FAILURES: &str = "codelab_gateway_auth_failures_total";
/// Time from a `user_message` to the first assistant text written to that socket.
pub const TTFT: &str = "codelab_gateway_ttft_seconds";
/// Runtime streams that failed, by `kind` (`status`, `unreachable`, `timeout`, `invalid`).
pub const RUNTIME_STREAM_ERRORS: &str = "codelab_gateway_runtime_stream_errors_total";
/// Events published to the fan-out, by `transport` (`memory`, `redis`, and `local`: delivered
/// on this replica only during a Redis outage).
pub const FANOUT_PUBLISHED: &str = "codelab_gateway_fanout_published_total";
/// Fan-out failures by `kind` (`publish`, `subscribe`, `reconnect`, `decode`, `overflow`).
pub const FANOUT_ERRORS: &str = "codelab_gateway_fanout_errors_total";

/// Frame types counted by name besides the client's ([`CLIENT_FRAME_TYPES`]); any other is
/// counted as `other`.
const OTHER_FRAME_TYPES: [&str; 13] = [
    "invalid",
    "assistant_message",
    "tool_call",
    "agent_switched",
    "error",
    "approval_required",
    "turn_finished",
    "session_info",
    "plan_approval_required",
    "plan_update",
    "plan_progress",
    "execution_completed",
    "warning",
];

/// Close codes counted by number; any other is counted as `other`.
const CLOSE_CODES: [(u16, &str); 11] = [
    (1000, "1000"),
    (1001, "1001"),
    (1002, "1002"),
    (1003, "1003"),
    (1005, "1005"),
    (1006, "1006"),
    (1007, "1007"),
    (1008, "1008"),
    (1009, "1009"),
    (1011, "1011"),
    (1013, "1013"),
];

/// Registers help texts (once per process).
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_gauge!(WS_ACTIVE_SOCKETS, "Open WebSockets by client profile");
        metrics::describe_counter!(WS_FRAMES, "WebSocket frames by direction and type");
        metrics::describe_counter!(WS_CONNECTIONS, "WebSocket upgrade attempts by outcome");
        metrics::describe_counter!(WS_CLOSES, "Closed WebSockets by close code");
        metrics::describe_counter!(
            WS_SLOW_CONSUMERS,
            "WebSockets closed with 1013 because their queue was full"
        );
        metrics::describe_counter!(
            WS_REPLAYS,
            "WebSocket resumptions by outcome (fetched, coalesced)"
        );
        metrics::describe_counter!(AUTH_FAILURES, "Refused credentials by reason");
        metrics::describe_histogram!(
            TTFT,
            metrics::Unit::Seconds,
            "Time from a user_message to the first assistant text on the socket"
        );
        metrics::describe_counter!(
            RUNTIME_STREAM_ERRORS,
            "Agent runtime streams that failed, by kind"
        );
        metrics::describe_counter!(FANOUT_PUBLISHED, "Events published to the fan-out");
        metrics::describe_counter!(FANOUT_ERRORS, "Fan-out failures by kind");
    });
}

/// A bounded label for a frame type.
pub fn frame_type_label(kind: &str) -> &'static str {
    CLIENT_FRAME_TYPES
        .iter()
        .chain(&OTHER_FRAME_TYPES)
        .find(|known| **known == kind)
        .copied()
        .unwrap_or("other")
}

/// A bounded label for a close code.
pub fn close_code_label(code: u16) -> &'static str {
    CLOSE_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map_or("other", |(_, label)| *label)
}

/// Counts one frame received (`in`) or sent (`out`).
pub fn frame(direction: &'static str, kind: &str) {
    metrics::counter!(WS_FRAMES, "direction" => direction, "type" => frame_type_label(kind))
        .increment(1);
}

/// Counts an upgrade attempt.
pub fn connection(outcome: &'static str) {
    metrics::counter!(WS_CONNECTIONS, "outcome" => outcome).increment(1);
}

/// Counts a closed socket.
pub fn close(code: u16) {
    metrics::counter!(WS_CLOSES, "code" => close_code_label(code)).increment(1);
}

/// Counts a socket closed for not reading.
pub fn slow_consumer() {
    metrics::counter!(WS_SLOW_CONSUMERS).increment(1);
}

/// Counts a resumption request (`fetched` or `coalesced`).
pub fn replay(outcome: &'static str) {
    metrics::counter!(WS_REPLAYS, "outcome" => outcome).increment(1);
}

/// Counts refused credentials.
pub fn auth_failure(reason: &'static str) {
    metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

/// Records a time to first token.
pub fn ttft(elapsed: Duration) {
    metrics::histogram!(TTFT).record(elapsed.as_secs_f64());
}

/// Counts a failed runtime stream.
pub fn runtime_stream_error(kind: &'static str) {
    metrics::counter!(RUNTIME_STREAM_ERRORS, "kind" => kind).increment(1);
}

/// Counts a published event.
pub fn fanout_published(transport: &'static str) {
    metrics::counter!(FANOUT_PUBLISHED, "transport" => transport).increment(1);
}

/// Counts a fan-out failure.
pub fn fanout_error(kind: &'static str) {
    metrics::counter!(FANOUT_ERRORS, "kind" => kind).increment(1);
}

/// Keeps `codelab_gateway_ws_active_sockets{profile}` right for one socket: counted while the
/// guard lives, moved between profiles by [`ActiveSocket::set_profile`].
#[derive(Debug)]
pub struct ActiveSocket {
    profile: &'static str,
}

impl ActiveSocket {
    /// Counts a socket of `profile`.
    pub fn new(profile: &'static str) -> Self {
        metrics::gauge!(WS_ACTIVE_SOCKETS, "profile" => profile).increment(1.0);
        ActiveSocket { profile }
    }

    /// Moves the socket to another profile.
    pub fn set_profile(&mut self, profile: &'static str) {
        if profile != self.profile {
            metrics::gauge!(WS_ACTIVE_SOCKETS, "profile" => self.profile).decrement(1.0);
            metrics::gauge!(WS_ACTIVE_SOCKETS, "profile" => profile).increment(1.0);
            self.profile = profile;
        }
    }
}

impl Drop for ActiveSocket {
    fn drop(&mut self) {
        metrics::gauge!(WS_ACTIVE_SOCKETS, "profile" => self.profile).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(frame_type_label("tool_result"), "tool_result");
        assert_eq!(frame_type_label("session-1234"), "other");
        assert_eq!(frame_type_label("plan_decision"), "plan_decision");
        for kind in [
            "plan_approval_required",
            "plan_update",
            "plan_progress",
            "execution_completed",
        ] {
            assert_eq!(frame_type_label(kind), kind);
        }
        assert_eq!(close_code_label(1009), "1009");
        assert_eq!(close_code_label(4321), "other");
    }
}
