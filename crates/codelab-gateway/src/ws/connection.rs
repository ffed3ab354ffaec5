//! One socket after the upgrade: a reader (the upgrade's task) and a writer task.
//!
//! The reader parses frames, applies the rate limit and the heartbeat, and hands each accepted
//! frame to its own task that streams it through the runtime and publishes every event to the
//! fan-out; those tasks run concurrently (a `tool_result` never waits behind a streaming
//! turn), but their requests reach the runtime in arrival order. The writer renders what the
//! session's fan-out subscription delivers for the socket's profile, plus the frames meant
//! for this socket only (errors about its frames, resumption state), through one queue.
//!
//! Limits (docs/websocket-protocol.md, "Limits, heartbeat and close codes"): what waits for
//! the writer (that queue and the fan-out subscription) is bounded by
//! `GATEWAY__WS_MAX_QUEUED_FRAMES` / `_BYTES`, and a socket over either is closed with 1013;
//! at most one resumption is fetched at a time, later requests are merged into one more; only
//! a pong proves the peer alive.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use codelab_protocol::ide::{ClientFrame, ServerFrame, parse_client_frame};
use codelab_protocol::internal::{
    HistoryToolCall, PendingApprovals, SessionHistory, SessionSummary,
};
use codelab_protocol::plans::{CREATE_PLAN_TOOL, PlanStatus, SessionPlans};
use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, oneshot};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::Access;
use super::render::{Frame, Profile, frame_error, frame_type, render};
use crate::AppState;
use crate::fanout::{Delivery, FanoutSubscription, QueueLimits, SocketClaim};
use crate::metrics;
use crate::runtime_client::RuntimeError;

/// Close codes (RFC 6455 §7.4.1).
pub mod close_code {
    /// The peer is leaving or the server shuts down, or the peer stopped answering pings.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A close frame without a code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was violated (the message rate limit).
    pub const POLICY: u16 = 1008;
    /// A message larger than `GATEWAY__WS_MAX_FRAME_BYTES`.
    pub const TOO_BIG: u16 = 1009;
    /// The server cannot go on with this socket.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: the client did not read what was queued for it (a slow consumer).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The close reason of a slow consumer: what the client should do.
const SLOW_CONSUMER_REASON: &str = "client too slow: reconnect and resume";

/// Refused messages in a row (over the rate limit) before the socket is closed with 1008.
pub const MAX_RATE_VIOLATIONS: u32 = 3;
/// How long a resumption waits for the fan-out subscription to be live before it reads the
/// runtime's stored events (events published before that would be missed).
const SUBSCRIPTION_READY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a socket is held open after a message it could not read (too large, broken):
/// time for the peer to read the close frame before the connection is dropped.
const MAX_LINGER: Duration = Duration::from_secs(5);

/// What the writer is asked to do.
enum Command {
    /// A frame for this socket only (boxed: a typed frame is large, and the queue holds
    /// mostly small commands).
    Frame(Box<Frame>),
    /// The client switched profile (`hello`).
    Profile(Profile),
    /// Fetch what the client needs to resume; live events wait meanwhile.
    Sync(Sync),
    /// What a [`Command::Sync`] fetched.
    Replay(Box<Replay>),
    /// A `user_message` arrived now (time to first token starts).
    TurnStarted(Instant),
    /// A heartbeat ping.
    Ping,
    /// Close with this code and reason, then stop.
    Close(u16, &'static str),
    /// The peer closed: flush the close reply, then stop.
    Finish,
}

/// What a resumption fetches.
#[derive(Debug)]
enum Sync {
    /// Protocol 2 on connect or `hello`: `session_info`, then the stored events after
    /// `last_seq`, or (without it) the open tool calls again. `read` is dropped once the
    /// session's state has been read: the socket's next frames wait for it (see
    /// [`Reader::previous`]), so what they cause is delivered live, never also as "open".
    Resume {
        last_seq: Option<u64>,
        read: Option<oneshot::Sender<()>>,
    },
    /// The subscription lost events: the stored events after `after`.
    CatchUp { after: u64 },
    /// The next page of a replay: the stored events after `after`.
    NextPage { after: u64 },
}

/// Stored events fetched per page of a replay: a socket holds at most one page, however long
/// the session's history.
const REPLAY_PAGE: usize = 200;

/// Frames and events of a resumption (one page of it), in the order they go out.
#[derive(Debug, Default)]
struct Replay {
    before: Vec<Frame>,
    events: Vec<SequencedEvent>,
    after: Vec<Frame>,
    /// More stored events follow after this `seq`: the next page is fetched once this one
    /// is written.
    next_page: Option<u64>,
}

/// What one socket shares with its writer and the tasks of its frames.
struct Conn {
    state: Arc<AppState>,
    access: Access,
    /// The writer's queue.
    commands: Mailbox<Command>,
    /// Bounds of the writer's queue (and of the fan-out subscription).
    limits: QueueLimits,
    /// Cancelled when a queue of this socket overflowed: the writer closes with 1013.
    slow: CancellationToken,
}

impl Conn {
    /// Queues a frame for this socket only (nothing happens if it is gone).
    fn direct(&self, frame: Frame) {
        let bytes = crate::fanout::encoded_len(&frame);
        self.queue(Command::Frame(Box::new(frame)), bytes);
    }

    /// Queues a command within the socket's limits; past them the socket is a slow consumer.
    fn queue(&self, command: Command, bytes: usize) {
        if !self.commands.push_bounded(command, bytes, self.limits) {
            self.slow.cancel();
        }
    }
}

/// A single-consumer queue: a mutex-guarded deque and a `Notify`. An idle socket's queue
/// costs a few dozen bytes, where a tokio channel preallocates about 1 KiB (a block and
/// cache-padded state) — and a replica holds 10,000 idle sockets.
struct Mailbox<T> {
    state: Mutex<MailboxState<T>>,
    notify: Notify,
}

struct MailboxState<T> {
    /// Items with the bytes each counts against the limits.
    items: VecDeque<(T, usize)>,
    /// Bytes of the queued items.
    bytes: usize,
    /// The consumer is gone: pushes are dropped.
    closed: bool,
}

impl<T> Mailbox<T> {
    fn new() -> Self {
        Mailbox {
            state: Mutex::new(MailboxState {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MailboxState<T>> {
        // Nothing that can panic runs under the lock; recover the queue regardless.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a control item (ping, close), outside the limits: there are never many.
    fn push(&self, item: T) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.items.push_back((item, 0));
        drop(state);
        self.notify.notify_one();
    }

    /// Queues `item` counting `bytes` unless that takes the queue past `limits`; `false` (and
    /// nothing queued) when it would. One item alone always fits.
    fn push_bounded(&self, item: T, bytes: usize, limits: QueueLimits) -> bool {
        let mut state = self.lock();
        if state.closed {
            return true;
        }
        let too_many = state.items.len() >= limits.events;
        let too_large = !state.items.is_empty() && state.bytes.saturating_add(bytes) > limits.bytes;
        if too_many || too_large {
            return false;
        }
        state.bytes += bytes;
        state.items.push_back((item, bytes));
        drop(state);
        self.notify.notify_one();
        true
    }

    /// The consumer stops: what is queued and what comes later is dropped.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.items.clear();
        state.bytes = 0;
    }

    /// The next item (one consumer: a stored `Notify` permit covers a push between the check
    /// and the wait).
    async fn pop(&self) -> T {
        loop {
            {
                let mut state = self.lock();
                if let Some((item, bytes)) = state.items.pop_front() {
                    state.bytes = state.bytes.saturating_sub(bytes);
                    return item;
                }
            }
            self.notify.notified().await;
        }
    }
}

/// Serves one upgraded socket until it closes, in two tasks of its own (the reader, the
/// writer) started here. The upgrade's task ends at once.
///
/// Memory: a gateway holds up to 100,000 idle sockets (docs/gateway.md#benchmark), so what an
/// idle socket keeps is small: each task's future stays under 1 KiB (checked by
/// `an_idle_sockets_futures_stay_small`; `tasks::spawn` adds only its name), and the work of a
/// wake-up is boxed only while it runs (`Writer::run`). One task driving both halves was measured too:
/// its future is as large as the two tasks together.
pub(super) fn run(
    socket: WebSocket,
    state: Arc<AppState>,
    access: Access,
    profile: Profile,
    last_seq: Option<u64>,
    claim: SocketClaim,
) -> std::future::Ready<()> {
    let heartbeat = Duration::from_secs(state.config.ws_heartbeat_interval);
    let close_timeout = Duration::from_secs(state.config.ws_close_timeout.max(1));
    let rate = state.config.ws_max_messages_per_second;
    let limits = QueueLimits {
        events: state.config.ws_max_queued_frames.max(1),
        bytes: state.config.ws_max_queued_bytes,
    };
    let (sink, stream) = socket.split();
    let closed = CancellationToken::new();
    let slow = CancellationToken::new();
    let subscription = state
        .fanout
        .subscribe_with(&access.session_id, limits, slow.clone());
    let conn = Arc::new(Conn {
        state,
        access,
        commands: Mailbox::new(),
        limits,
        slow,
    });
    // The client's first frames wait until the resumption has read the session.
    let mut resumption_read = None;
    if profile == Profile::V2 {
        // Queued before the writer starts, so no live event can overtake the resumption.
        let (read, barrier) = oneshot::channel();
        resumption_read = Some(barrier);
        conn.queue(
            Command::Sync(Sync::Resume {
                last_seq,
                read: Some(read),
            }),
            0,
        );
    }
    let writer = Writer {
        sink,
        conn: Arc::clone(&conn),
        profile,
        fetching: false,
        next_resume: None,
        next_catch_up: false,
        replayed_up_to: 0,
        max_seen: 0,
        ttft_start: None,
        closed: closed.clone(),
        close_timeout,
    };
    let writer = codelab_core::tasks::spawn("socket-writer", writer.run(subscription));
    let reader = Reader {
        conn: Arc::clone(&conn),
        closed: closed.clone(),
        active: metrics::ActiveSocket::new(profile.label()),
        bucket: TokenBucket::new(rate, Instant::now()),
        violations: 0,
        last_pong: Instant::now(),
        previous: resumption_read,
    };
    let reading = read(
        stream,
        reader,
        conn,
        closed,
        writer,
        heartbeat,
        close_timeout,
        claim,
    );
    codelab_core::tasks::spawn("socket-reader", reading);
    std::future::ready(())
}

/// The reader's task: reads until the socket ends, then closes it (see [`End`]) and waits
/// for the writer.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one socket, moved into its task"
)]
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future keeps its arguments twice; an async block's does not"
)]
fn read(
    mut stream: SplitStream<WebSocket>,
    mut reader: Reader,
    conn: Arc<Conn>,
    closed: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
    heartbeat: Duration,
    close_timeout: Duration,
    claim: SocketClaim,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Held while the socket lives: it counts against its user's socket cap.
        let _claim = claim;
        let end = reader.run(&mut stream, heartbeat).await;
        drop(reader);
        match end {
            End::PeerClosed(code) => {
                metrics::close(code);
                conn.commands.push(Command::Finish);
            }
            End::Gone => {
                metrics::close(close_code::ABNORMAL);
                closed.cancel();
            }
            End::Close {
                code,
                reason,
                readable,
            } => {
                metrics::close(code);
                if code == close_code::TRY_AGAIN_LATER {
                    metrics::slow_consumer();
                }
                tracing::debug!(code, reason, "closing a WebSocket");
                conn.commands.push(Command::Close(code, reason));
                if readable {
                    // The close handshake: read (and ignore) until the peer's close arrives.
                    let _ = tokio::time::timeout(close_timeout, async {
                        while let Some(Ok(_)) = stream.next().await {}
                    })
                    .await;
                } else {
                    // Nothing more can be read; give the peer time to read the close frame
                    // before the connection is dropped (unread input would reset it).
                    tokio::time::sleep(close_timeout.min(MAX_LINGER)).await;
                }
            }
        }
        let mut writer = writer;
        if tokio::time::timeout(close_timeout, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        closed.cancel();
    }
}

/// How the reader loop ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The peer sent a close frame with this code.
    PeerClosed(u16),
    /// The connection is gone (no close frame) or the writer failed.
    Gone,
    /// We close with `code`; `readable` says whether the stream can still be read.
    Close {
        code: u16,
        reason: &'static str,
        readable: bool,
    },
}

struct Reader {
    conn: Arc<Conn>,
    closed: CancellationToken,
    active: metrics::ActiveSocket,
    bucket: TokenBucket,
    violations: u32,
    /// When the peer last answered a ping (or connected). Only a pong counts: a peer that
    /// sends frames but never reads is not alive for us.
    last_pong: Instant,
    /// Completes when the previous frame's request has reached the runtime, or a resumption
    /// this socket asked for has read the session.
    previous: Option<oneshot::Receiver<()>>,
}

impl Reader {
    async fn run(&mut self, stream: &mut SplitStream<WebSocket>, heartbeat: Duration) -> End {
        let mut ticker = (!heartbeat.is_zero()).then(|| {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        let shutdown = self.conn.state.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    return End::Close {
                        code: close_code::GOING_AWAY,
                        reason: "server shutting down",
                        readable: true,
                    };
                }
                // Before `closed`: the writer that stops for a slow consumer also cancels it.
                () = self.conn.slow.cancelled() => {
                    return End::Close {
                        code: close_code::TRY_AGAIN_LATER,
                        reason: SLOW_CONSUMER_REASON,
                        readable: true,
                    };
                }
                () = self.closed.cancelled() => return End::Gone,
                () = tick(&mut ticker) => {
                    // A peer that answered no ping for two intervals is dead or stuck, even
                    // if it keeps sending: frames prove nothing about it reading ours.
                    if self.last_pong.elapsed() >= heartbeat * 2 {
                        return End::Close {
                            code: close_code::GOING_AWAY,
                            reason: "heartbeat timeout",
                            readable: true,
                        };
                    }
                    self.conn.commands.push(Command::Ping);
                }
                message = stream.next() => {
                    let message = match message {
                        None => return End::Gone,
                        Some(Err(error)) => return read_error(error),
                        Some(Ok(message)) => message,
                    };
                    let end = match message {
                        Message::Text(text) => self.on_text(text.as_str()),
                        // The Flutter IDE sends text only; a binary frame holding UTF-8 JSON
                        // is read the same way.
                        Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                            Ok(text) => self.on_text(text),
                            Err(_) => {
                                metrics::frame("in", "invalid");
                                self.conn.direct(ServerFrame::error(
                                    "Invalid JSON message: a binary frame that is not UTF-8 text",
                                    Some("INVALID_FORMAT"),
                                ));
                                None
                            }
                        },
                        Message::Pong(_) => {
                            self.last_pong = Instant::now();
                            None
                        }
                        Message::Ping(_) => None,
                        Message::Close(frame) => Some(End::PeerClosed(
                            frame.map_or(close_code::NO_STATUS, |f| f.code),
                        )),
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles one text message; `Some` ends the connection.
    fn on_text(&mut self, text: &str) -> Option<End> {
        if !self.bucket.take(Instant::now()) {
            self.violations += 1;
            metrics::frame("in", "invalid");
            self.conn.direct(ServerFrame::error(
                "rate limit exceeded",
                Some("RATE_LIMITED"),
            ));
            if self.violations >= MAX_RATE_VIOLATIONS {
                return Some(End::Close {
                    code: close_code::POLICY,
                    reason: "rate limit exceeded",
                    readable: true,
                });
            }
            return None;
        }
        self.violations = 0;
        match parse_client_frame(text) {
            Err(error) => {
                metrics::frame("in", "invalid");
                tracing::debug!(code = error.code(), "refused a WebSocket frame");
                self.conn.direct(frame_error(&error));
            }
            Ok(frame) => {
                let kind = frame.kind();
                metrics::frame("in", kind);
                if !self.permitted(kind) {
                    return None;
                }
                match frame {
                    ClientFrame::Hello {
                        protocol,
                        last_seq,
                        capabilities,
                    } => self.hello(protocol, last_seq, &capabilities),
                    ClientFrame::UserMessage { .. } => {
                        self.conn.queue(Command::TurnStarted(Instant::now()), 0);
                        self.dispatch(frame);
                    }
                    _ => self.dispatch(frame),
                }
            }
        }
        None
    }

    /// Whether this socket may send a frame of type `kind`; a refused frame is answered with
    /// an `error` frame and never reaches the runtime (see `permissions`).
    fn permitted(&self, kind: &str) -> bool {
        match self.conn.access.permissions.check(kind) {
            Ok(()) => true,
            Err(refusal) => {
                metrics::auth_failure("frame_not_permitted");
                tracing::debug!(kind, code = refusal.code, "refused a WebSocket frame");
                self.conn.direct(refusal.frame());
                false
            }
        }
    }

    /// `{"type":"hello","protocol":N,"last_seq"?:S,"capabilities"?:[...]}`: switches the
    /// profile (protocol 1 with the `plans` capability gets the plan frames); protocol 2 gets
    /// its resumption.
    fn hello(&mut self, protocol: u32, last_seq: Option<u64>, capabilities: &[String]) {
        let Some(profile) = Profile::from_hello(u64::from(protocol), capabilities) else {
            self.conn.direct(ServerFrame::error(
                format!("unsupported protocol {protocol}: this gateway speaks 1 and 2"),
                Some("INVALID_FORMAT"),
            ));
            return;
        };
        self.active.set_profile(profile.label());
        self.conn.queue(Command::Profile(profile), 0);
        if profile == Profile::V2 {
            // The writer merges it into the resumption in flight, if any (`Writer::sync`).
            let (read, barrier) = oneshot::channel();
            self.conn.queue(
                Command::Sync(Sync::Resume {
                    last_seq,
                    read: Some(read),
                }),
                0,
            );
            // Frames after the `hello` wait for the frames before it and for that read.
            let (done, next) = oneshot::channel();
            let previous = self.previous.replace(next);
            self.conn.state.tasks.spawn(async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                let _ = barrier.await;
                drop(done);
            });
        }
    }

    /// Relays a frame in its own task, after the previous frame's request was sent.
    fn dispatch(&mut self, frame: ClientFrame) {
        let (done, next) = oneshot::channel();
        let previous = self.previous.replace(next);
        // Tracked by the state: a stream whose socket has gone still runs to its end, so its
        // events reach the session's other sockets (and replicas) and shutdown can drain it.
        let conn = Arc::clone(&self.conn);
        self.conn
            .state
            .tasks
            .spawn(relay(conn, frame, previous, done));
    }
}

/// Ticks `ticker`, or never when heartbeats are off.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// How a read error ends the socket.
fn read_error(error: axum::Error) -> End {
    let inner = error.into_inner();
    let close = |code, reason| End::Close {
        code,
        reason,
        readable: false,
    };
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => close(close_code::TOO_BIG, "message too big"),
        Some(tungstenite::Error::Utf8(_)) => close(close_code::INVALID_PAYLOAD, "invalid UTF-8"),
        Some(tungstenite::Error::Protocol(_)) => {
            close(close_code::PROTOCOL_ERROR, "protocol error")
        }
        Some(tungstenite::Error::WriteBufferFull(_)) => {
            close(close_code::INTERNAL, "client is not reading")
        }
        _ => {
            tracing::debug!(error = %inner, "WebSocket read failed");
            End::Gone
        }
    }
}

/// Streams one frame through the runtime and publishes every event to the session's fan-out.
/// Failures of this frame go to this socket only.
async fn relay(
    conn: Arc<Conn>,
    frame: ClientFrame,
    previous: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
) {
    // Frames reach the runtime in the order they arrived (it then works on one at a time per
    // session); only the sending waits, not the streaming.
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    let access = &conn.access;
    let runtime = &conn.state.runtime;
    let started = if repeatable(&frame) {
        runtime
            .stream_repeatable_frame(
                &access.session_id,
                &access.user_id,
                &frame,
                access.dev_sessions,
            )
            .await
    } else {
        runtime
            .stream_frame(
                &access.session_id,
                &access.user_id,
                &frame,
                access.dev_sessions,
            )
            .await
    };
    drop(done);
    let mut events = match started {
        Ok(events) => events,
        Err(error) => return report(&conn, &error),
    };
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => conn.state.fanout.publish(&access.session_id, &event).await,
            Err(error) => return report_cut(&conn, &error),
        }
    }
}

/// Frames the runtime answers with a notice when they arrive twice, so a request lost on the
/// way is sent again; a message or an agent switch would start a second turn, and a plan
/// decision to modify a second revision.
fn repeatable(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::ToolResult { .. }
            | ClientFrame::HitlDecision { .. }
            | ClientFrame::CancelTurn { .. }
    )
}

/// The `error` frame for a runtime stream that broke after it began (a runtime that died or
/// a link cut mid-turn): the turn is not lost — everything it did is stored and a runtime
/// resumes it from there — so the client is told how to see the rest.
fn report_cut(conn: &Conn, error: &RuntimeError) {
    metrics::runtime_stream_error(error.kind());
    tracing::warn!(error = %error, "an agent runtime stream broke mid-turn");
    conn.direct(ServerFrame::error(
        format!(
            "Streaming error: the connection to the agent runtime broke during the turn \
             ({error}); the turn is kept and resumes from what was stored: reload the \
             session (or send hello with last_seq) to see how it ends"
        ),
        Some("STREAMING_ERROR"),
    ));
}

/// The `error` frame for a failed runtime call, as the original worded it.
fn report(conn: &Conn, error: &RuntimeError) {
    metrics::runtime_stream_error(error.kind());
    let frame = match error {
        RuntimeError::Status { status, detail } if detail.is_empty() => {
            ServerFrame::error(format!("Agent error: {status}"), Some("AGENT_ERROR"))
        }
        RuntimeError::Status { status, detail } => ServerFrame::error(
            format!("Agent error: {status}: {detail}"),
            Some("AGENT_ERROR"),
        ),
        other => {
            tracing::warn!(error = %other, "an agent runtime stream failed");
            ServerFrame::error(format!("Streaming error: {other}"), Some("STREAMING_ERROR"))
        }
    };
    conn.direct(frame);
}

struct Writer {
    sink: SplitSink<WebSocket, Message>,
    conn: Arc<Conn>,
    profile: Profile,
    /// A resumption is being fetched; live events wait meanwhile.
    fetching: bool,
    /// A `hello` resumption asked for while one was being fetched (the latest wins), and the
    /// barriers of every one merged into it (released when it has read the session).
    next_resume: Option<(Option<u64>, Vec<oneshot::Sender<()>>)>,
    /// A fan-out gap reported while a resumption was being fetched.
    next_catch_up: bool,
    /// Live stored events up to here were delivered by a replay.
    replayed_up_to: u64,
    /// The highest `seq` delivered so far.
    max_seen: u64,
    ttft_start: Option<Instant>,
    closed: CancellationToken,
    close_timeout: Duration,
}

/// What the writer loop woke up for.
enum Wake {
    Stop,
    Slow,
    Command(Command),
    Delivery(Option<Delivery>),
}

impl Writer {
    async fn run(mut self, mut subscription: FanoutSubscription) {
        let closed = self.closed.clone();
        let slow = self.conn.slow.clone();
        let conn = Arc::clone(&self.conn);
        loop {
            let wake = tokio::select! {
                biased;
                () = closed.cancelled() => Wake::Stop,
                () = slow.cancelled() => Wake::Slow,
                command = conn.commands.pop() => Wake::Command(command),
                delivery = subscription.recv(), if !self.fetching => Wake::Delivery(delivery),
            };
            // The work of a wake-up is boxed: rendering, writing and replaying make a future
            // of kilobytes, which an idle socket (most of them) would otherwise carry in its
            // task all the time (docs/gateway.md#benchmark).
            let go_on = match wake {
                Wake::Stop | Wake::Slow => false,
                Wake::Command(command) => Box::pin(self.command(command, &mut subscription)).await,
                Wake::Delivery(None) => {
                    tracing::warn!("the fan-out ended under a WebSocket");
                    Box::pin(self.write(close_message(close_code::INTERNAL, "fan-out ended")))
                        .await;
                    false
                }
                Wake::Delivery(Some(delivery)) => {
                    Box::pin(self.delivery(delivery, &mut subscription)).await
                }
            };
            if !go_on {
                break;
            }
        }
        // Nothing queued for this socket is kept: the client resumes after the last event it
        // saw (protocol 2) or reloads the session over REST (the Flutter IDE).
        conn.commands.close();
        drop(subscription);
        if slow.is_cancelled() && !closed.is_cancelled() {
            // Whatever write was stuck is abandoned; the close frame goes out once the peer
            // reads again, or the connection is dropped after the close timeout.
            let close = close_message(close_code::TRY_AGAIN_LATER, SLOW_CONSUMER_REASON);
            let _ = Box::pin(tokio::time::timeout(
                self.close_timeout,
                self.sink.send(close),
            ))
            .await;
        }
        // A writer that stops ends the socket (the reader watches this token); frames for it
        // that come later are dropped.
        closed.cancel();
    }

    /// Handles a command; `false` stops the writer.
    async fn command(&mut self, command: Command, subscription: &mut FanoutSubscription) -> bool {
        match command {
            Command::Frame(frame) => self.send(*frame).await,
            Command::Profile(profile) => {
                self.profile = profile;
                true
            }
            Command::Sync(sync) => {
                self.sync(sync, subscription).await;
                true
            }
            Command::Replay(replay) => self.replay(*replay, subscription).await,
            Command::TurnStarted(at) => {
                self.ttft_start.get_or_insert(at);
                true
            }
            Command::Ping => self.write(Message::Ping(axum::body::Bytes::new())).await,
            Command::Close(code, reason) => {
                self.write(close_message(code, reason)).await;
                false
            }
            Command::Finish => {
                let _ = tokio::time::timeout(MAX_LINGER, self.sink.close()).await;
                false
            }
        }
    }

    /// Whether missed events can be caught up from the store: after the last one this socket
    /// saw, or, on a protocol-2 socket that saw none yet, from the session's start (its client
    /// ignores what it has by `seq`; a subscription that went live late, as after a Redis
    /// restart, otherwise loses the first turn's events). A Flutter socket that saw nothing
    /// would be sent the whole session again as new messages, so it is not caught up.
    fn can_catch_up(&self) -> bool {
        self.max_seen > 0 || self.profile == Profile::V2
    }

    async fn delivery(
        &mut self,
        delivery: Delivery,
        subscription: &mut FanoutSubscription,
    ) -> bool {
        match delivery {
            Delivery::Event(event) => {
                if event.seq > 0 && event.seq <= self.replayed_up_to {
                    return true;
                }
                self.max_seen = self.max_seen.max(event.seq);
                match render(self.profile, &event) {
                    Some(frame) => self.send(frame).await,
                    None => true,
                }
            }
            Delivery::Lagged if self.can_catch_up() => {
                let after = self.max_seen;
                self.sync(Sync::CatchUp { after }, subscription).await;
                true
            }
            Delivery::Lagged => {
                tracing::warn!("a WebSocket lost events before it had seen any; not replayed");
                true
            }
            // The subscription already cancelled `slow`; the loop stops on its next turn.
            Delivery::Overflowed => {
                self.conn.slow.cancel();
                true
            }
        }
    }

    /// Starts a resumption, or merges it into the next one when one is being fetched: a
    /// socket never has more than one fetch of the session's history in flight, however many
    /// `hello` frames it sends (issue 14, finding 7).
    async fn sync(&mut self, sync: Sync, subscription: &mut FanoutSubscription) {
        if !self.fetching {
            return self.start_sync(sync, subscription).await;
        }
        metrics::replay("coalesced");
        match sync {
            Sync::Resume { last_seq, read } => {
                let mut waiting = self
                    .next_resume
                    .take()
                    .map(|(_, waiting)| waiting)
                    .unwrap_or_default();
                waiting.extend(read);
                self.next_resume = Some((last_seq, waiting));
            }
            Sync::CatchUp { .. } | Sync::NextPage { .. } => self.next_catch_up = true,
        }
    }

    /// Pauses live events and fetches a resumption in the background.
    async fn start_sync(&mut self, sync: Sync, subscription: &mut FanoutSubscription) {
        self.fetching = true;
        metrics::replay("fetched");
        if !subscription.ready(SUBSCRIPTION_READY_TIMEOUT).await {
            tracing::warn!("the fan-out subscription is not live yet; resuming anyway");
        }
        let conn = Arc::clone(&self.conn);
        self.conn.state.tasks.spawn(fetch(conn, sync));
    }

    async fn replay(&mut self, mut replay: Replay, subscription: &mut FanoutSubscription) -> bool {
        self.fetching = false;
        let next_page = replay.next_page.take();
        if !self.send_replay(replay).await {
            return false;
        }
        if let Some(after) = next_page {
            // Still the same resumption: live events keep waiting, merged requests too.
            self.fetching = true;
            let conn = Arc::clone(&self.conn);
            self.conn
                .state
                .tasks
                .spawn(fetch(conn, Sync::NextPage { after }));
            return true;
        }
        // What was asked for meanwhile, once: a catch-up covers what this socket missed live,
        // computed from what it has seen by now.
        if let Some((last_seq, waiting)) = self.next_resume.take() {
            let conn = Arc::clone(&self.conn);
            // One barrier for the merged requests: released when this resumption has read.
            let (read, barrier) = oneshot::channel::<()>();
            conn.state.tasks.spawn(async move {
                let _ = barrier.await;
                drop(waiting);
            });
            self.start_sync(
                Sync::Resume {
                    last_seq,
                    read: Some(read),
                },
                subscription,
            )
            .await;
        } else if std::mem::take(&mut self.next_catch_up) && self.can_catch_up() {
            let after = self.max_seen;
            self.start_sync(Sync::CatchUp { after }, subscription).await;
        }
        true
    }

    async fn send_replay(&mut self, replay: Replay) -> bool {
        for frame in replay.before {
            if !self.send(frame).await {
                return false;
            }
        }
        for event in replay.events {
            // Already delivered live on this socket.
            if event.seq > 0 && event.seq <= self.max_seen {
                continue;
            }
            self.replayed_up_to = self.replayed_up_to.max(event.seq);
            self.max_seen = self.max_seen.max(event.seq);
            if let Some(frame) = render(self.profile, &event)
                && !self.send(frame).await
            {
                return false;
            }
        }
        for frame in replay.after {
            if !self.send(frame).await {
                return false;
            }
        }
        true
    }

    /// Writes a frame; `false` when the socket is gone.
    async fn send(&mut self, frame: Frame) -> bool {
        let kind = frame_type(&frame);
        metrics::frame("out", kind);
        match kind {
            "assistant_message" => {
                if let Some(start) = self.ttft_start.take() {
                    metrics::ttft(start.elapsed());
                }
            }
            // A turn that failed before any text must not stretch the next one's measure.
            "error" => self.ttft_start = None,
            _ => {}
        }
        let text = match serde_json::to_string(&frame) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(%error, "cannot encode a frame");
                return true;
            }
        };
        self.write(Message::Text(Utf8Bytes::from(text))).await
    }

    async fn write(&mut self, message: Message) -> bool {
        tokio::select! {
            result = self.sink.send(message) => result.is_ok(),
            () = self.closed.cancelled() => false,
            // A peer that stopped reading blocks the write while its queues fill; once one
            // overflows the write is abandoned and the socket closed with 1013.
            () = self.conn.slow.cancelled() => false,
        }
    }
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Fetches a resumption and hands it to the writer.
async fn fetch(conn: Arc<Conn>, sync: Sync) {
    let replay = match sync {
        Sync::Resume { last_seq, read } => {
            let replay = resume(&conn, last_seq).await;
            // The session is read: the frames the client sent meanwhile may go on.
            drop(read);
            replay
        }
        Sync::CatchUp { after } | Sync::NextPage { after } => catch_up(&conn, after).await,
    };
    // One replay at a time per socket (`Writer::sync`), so it is not counted as queued bytes.
    conn.queue(Command::Replay(Box::new(replay)), 0);
}

async fn resume(conn: &Conn, last_seq: Option<u64>) -> Replay {
    let runtime = &conn.state.runtime;
    let access = &conn.access;
    let mut replay = Replay::default();
    // A session that does not exist yet (`off` mode) has no agent to tell.
    let agent = runtime
        .session_part::<SessionSummary>(&access.session_id, &access.user_id)
        .await
        .ok()
        .and_then(|session| session.current_agent);
    replay.before.push(ServerFrame::session_info(
        &access.session_id,
        agent.as_deref(),
    ));
    match last_seq {
        Some(after) => match runtime
            .events_page(&access.session_id, &access.user_id, after, REPLAY_PAGE)
            .await
        {
            Ok(page) => {
                replay.events = page.events;
                replay.next_page = page.next_after;
            }
            Err(RuntimeError::Status { status: 404, .. }) => {}
            Err(error) => replay.after.push(ServerFrame::error(
                format!("cannot replay missed events: {error}"),
                Some("REPLAY_FAILED"),
            )),
        },
        None => match open_calls(conn).await {
            Ok(frames) => replay.after = frames,
            Err(error) => replay.after.push(ServerFrame::error(
                format!("cannot restore open tool calls: {error}"),
                Some("REPLAY_FAILED"),
            )),
        },
    }
    replay
}

/// One page of the stored events after `after` (a catch-up, or the next page of a replay).
async fn catch_up(conn: &Conn, after: u64) -> Replay {
    let access = &conn.access;
    let mut replay = Replay::default();
    match conn
        .state
        .runtime
        .events_page(&access.session_id, &access.user_id, after, REPLAY_PAGE)
        .await
    {
        Ok(page) => {
            replay.events = page.events;
            replay.next_page = page.next_after;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot replay events a WebSocket missed");
            replay.after.push(ServerFrame::error(
                format!("some events could not be delivered; reload the session: {error}"),
                Some("REPLAY_FAILED"),
            ));
        }
    }
    replay
}

/// The session's open tool calls as frames: each `tool_call` again (the IDE has not answered
/// it), with `approval_required` after those still waiting for a person. A plan's
/// `create_plan` call is no tool for the IDE: a plan waiting for approval comes back as its
/// `plan_approval_required` instead.
async fn open_calls(conn: &Conn) -> Result<Vec<Frame>, RuntimeError> {
    let runtime = &conn.state.runtime;
    let access = &conn.access;
    let history = match runtime
        .session_part::<SessionHistory>(&access.session_id, &access.user_id)
        .await
    {
        Ok(history) => history,
        Err(RuntimeError::Status { status: 404, .. }) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let (plan_calls, open): (Vec<HistoryToolCall>, Vec<HistoryToolCall>) = history
        .tool_calls
        .into_iter()
        .filter(HistoryToolCall::is_open)
        .partition(|call| call.tool_name == CREATE_PLAN_TOOL);
    let mut frames = waiting_plans(conn, &plan_calls).await?;
    if open.is_empty() {
        return Ok(frames);
    }
    let mut reasons = HashMap::new();
    if open.iter().any(HistoryToolCall::is_pending_approval) {
        let pending = runtime
            .session_part::<PendingApprovals>(&access.session_id, &access.user_id)
            .await?;
        for approval in pending.pending_approvals {
            if let Some(reason) = approval.reason {
                reasons.insert(approval.call_id, reason);
            }
        }
    }
    for call in open {
        let pending = call.is_pending_approval();
        let reason = reasons.get(&call.call_id).map(String::as_str);
        frames.push(ServerFrame::tool_call(
            &call.call_id,
            &call.tool_name,
            &call.arguments,
            pending,
            reason,
        ));
        if pending {
            frames.push(ServerFrame::approval_required(
                &call.call_id,
                &call.tool_name,
                &call.arguments,
                reason.unwrap_or("this tool call needs approval"),
            ));
        }
    }
    Ok(frames)
}

/// `plan_approval_required` (protocol 2) for each plan whose open `create_plan` call is among
/// `plan_calls`.
async fn waiting_plans(
    conn: &Conn,
    plan_calls: &[HistoryToolCall],
) -> Result<Vec<Frame>, RuntimeError> {
    if plan_calls.is_empty() {
        return Ok(Vec::new());
    }
    let access = &conn.access;
    let plans = conn
        .state
        .runtime
        .session_part::<SessionPlans>(&access.session_id, &access.user_id)
        .await?;
    let frames = plans
        .plans
        .into_iter()
        .filter(|plan| plan.status == PlanStatus::AwaitingApproval)
        .filter(|plan| {
            plan_calls
                .iter()
                .any(|call| call.call_id == plan.approval_request_id)
        })
        .filter_map(|plan| {
            let event = RuntimeEvent::PlanApprovalRequired {
                plan_id: plan.id.clone(),
                approval_request_id: plan.approval_request_id.clone(),
                plan_summary: plan.summary_view(),
                plan: Box::new(plan),
            };
            render(Profile::V2, &SequencedEvent { seq: 0, event })
        })
        .collect();
    Ok(frames)
}

/// A token bucket: `rate` messages per second with a burst of the same size (`0`: no limit).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token at `now`; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "tests own their clock, ids and tasks"
    )]
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5, start);
        assert!((0..5).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(200)));
        assert!(!bucket.take(start + Duration::from_millis(210)));
        // A long pause refills to the burst size, not beyond.
        let later = start + Duration::from_secs(60);
        assert!((0..5).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn only_frames_the_runtime_takes_twice_are_sent_again() {
        let frames = [
            (
                r#"{"type":"tool_result","call_id":"c","result":"ok"}"#,
                true,
            ),
            (
                r#"{"type":"hitl_decision","call_id":"c","decision":"approve"}"#,
                true,
            ),
            (r#"{"type":"cancel_turn"}"#, true),
            (r#"{"type":"user_message","content":"hi"}"#, false),
            (r#"{"type":"switch_agent","agent_type":"coder"}"#, false),
            (
                r#"{"type":"plan_decision","plan_id":"p","decision":"modify"}"#,
                false,
            ),
        ];
        for (text, expected) in frames {
            let frame: ClientFrame = serde_json::from_str(text).expect(text);
            assert_eq!(repeatable(&frame), expected, "{text}");
        }
    }

    #[tokio::test]
    async fn the_mailbox_keeps_order_wakes_its_consumer_and_drops_after_close() {
        let mailbox = Arc::new(Mailbox::new());
        let consumer = {
            let mailbox = Arc::clone(&mailbox);
            tokio::spawn(async move { (mailbox.pop().await, mailbox.pop().await) })
        };
        tokio::task::yield_now().await;
        mailbox.push(1);
        mailbox.push(2);
        assert_eq!(consumer.await.unwrap(), (1, 2));
        mailbox.push(3);
        mailbox.close();
        mailbox.push(4);
        assert!(mailbox.lock().items.is_empty());
    }

    #[test]
    fn the_mailbox_refuses_past_its_limits_but_always_takes_control_items() {
        let mailbox = Mailbox::new();
        let limits = QueueLimits {
            events: 3,
            bytes: 100,
        };
        // One item alone fits whatever its size.
        assert!(mailbox.push_bounded(1, 500, limits));
        assert!(!mailbox.push_bounded(2, 1, limits), "over the byte limit");
        mailbox.close();
        let mailbox = Mailbox::new();
        assert!((0..3).all(|i| mailbox.push_bounded(i, 10, limits)));
        assert!(!mailbox.push_bounded(3, 10, limits), "over the frame limit");
        mailbox.push(99);
        assert_eq!(mailbox.lock().items.len(), 4);
        assert_eq!(mailbox.lock().bytes, 30);
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size2<A, B, F: Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size8<A, B, C, D, E, G, H, I, F: Future>(
        _: impl Fn(A, B, C, D, E, G, H, I) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle socket's tasks hold: a gateway keeps 100,000 of them within 400 MiB
    /// (docs/gateway.md#benchmark). Before the work of a wake-up was boxed the writer's
    /// future alone took 3.2 KiB.
    #[test]
    fn an_idle_sockets_futures_stay_small() {
        let reader = future_size8(read);
        let writer = future_size2(Writer::run);
        eprintln!("an idle socket's futures: reader {reader} bytes, writer {writer}");
        assert!(reader <= 1024, "the reader's future takes {reader} bytes");
        assert!(writer <= 1024, "the writer's future takes {writer} bytes");
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, start);
        assert!((0..10_000).all(|_| bucket.take(start)));
    }
}
