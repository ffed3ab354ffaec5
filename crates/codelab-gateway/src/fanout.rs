//! Fan-out of runtime events to every socket of a session, on any replica.
//!
//! The gateway process that runs a runtime stream publishes every event it receives to the
//! session's channel; each socket renders what its subscription delivers. Without Redis the
//! channel is in process. With Redis (`GATEWAY__REDIS_URL`) events go through pub/sub: one
//! publisher connection (a connection manager) and one subscriber connection per process,
//! whose task subscribes to the channels of the sessions that have local sockets and
//! dispatches messages to them. After Redis comes back it subscribes again, and every local
//! subscriber is told it may have missed events (it then replays them from the runtime,
//! which stores every event).
//!
//! A publish that fails (Redis down, or silently unreachable: then only after the command
//! timeout) opens an outage: until a probe's `PING` answers again, publishes deliver locally
//! at once instead of each waiting for the timeout, and the sessions published meanwhile are
//! remembered. When Redis answers, a gap marker is published on each of those sessions'
//! channels, so the sockets of other replicas, which missed those events, replay them from
//! the runtime (docs/reliability.md, "Several hosts"). The publish that failed by timing out
//! may still reach Redis when the link heals; the subscriber skips it once, since this
//! replica's sockets already had it.
//!
//! Every subscriber's queue is bounded (frames and bytes): a subscriber that falls further
//! behind is told it overflowed and gets nothing more, so a client that stops reading never
//! makes this process buffer its session's stream. The fan-out also counts each user's
//! sockets on this process (the per-user cap of `GATEWAY__WS_MAX_SOCKETS_PER_USER`): the
//! subscriptions are this replica's registry of local sockets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use codelab_protocol::runtime::SequencedEvent;
use futures_util::{Stream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Timeout for connecting to Redis and for each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Events queued for one subscriber of [`Fanout::subscribe`] before it is told it overflowed.
pub const DEFAULT_QUEUED_EVENTS: usize = 1024;
/// Bytes (encoded events) queued for one subscriber of [`Fanout::subscribe`] before it is
/// told it overflowed.
pub const DEFAULT_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Waits between attempts to reconnect the subscriber connection.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Wait between probes of Redis while publishes deliver locally.
const OUTAGE_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// What is published on a session's channel after an outage: not an event (those are JSON
/// objects); every replica's sockets of the session replay what they missed.
const GAP_MARKER: &[u8] = b"gap";

/// A fan-out failure.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// Redis could not be reached.
    #[error("cannot reach Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// An event of the session.
    Event(Arc<SequencedEvent>),
    /// Events may have been missed since the last delivery (Redis was away): replay from the
    /// runtime.
    Lagged,
    /// The subscriber fell further behind than its queue allows: nothing more is delivered
    /// (a socket closes and its client resumes after the last event it saw).
    Overflowed,
}

/// How much may wait in one subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Events.
    pub events: usize,
    /// Bytes of the events, JSON-encoded. One event larger than this is still queued when
    /// nothing else waits (a tool call may carry a whole file).
    pub bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            events: DEFAULT_QUEUED_EVENTS,
            bytes: DEFAULT_QUEUED_BYTES,
        }
    }
}

/// Publishes and subscribes to the events of sessions; clones share everything.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("redis", &self.inner.redis.is_some())
            .field("prefix", &self.inner.registry.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    registry: Arc<Registry>,
    redis: Option<RedisSide>,
}

struct RedisSide {
    publisher: ConnectionManager,
    task: JoinHandle<()>,
    outage: Arc<Outage>,
}

/// Publishing while Redis does not answer: see the module's documentation.
#[derive(Default)]
struct Outage {
    /// Fast path: whether an outage is open (the state under the lock is authoritative).
    open: AtomicBool,
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    open: bool,
    /// Sessions whose events were delivered only on this replica since the outage opened.
    missed: HashSet<String>,
}

impl Outage {
    fn lock(&self) -> MutexGuard<'_, OutageState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an outage is open; if so, `session_id` is remembered as having missed events.
    fn note_if_open(&self, session_id: &str) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.lock();
        if state.open && !state.missed.contains(session_id) {
            state.missed.insert(session_id.to_owned());
        }
        state.open
    }

    /// Opens an outage that `session_id` missed; `true` when it was not open yet (the caller
    /// starts the probe).
    fn open(&self, session_id: &str) -> bool {
        let mut state = self.lock();
        state.missed.insert(session_id.to_owned());
        let opened = !state.open;
        state.open = true;
        self.open.store(true, Ordering::Release);
        opened
    }

    /// Closes the outage; returns the sessions that missed events.
    fn close(&self) -> HashSet<String> {
        let mut state = self.lock();
        state.open = false;
        self.open.store(false, Ordering::Release);
        std::mem::take(&mut state.missed)
    }
}

impl Drop for RedisSide {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local subscribers by session, shared with the Redis subscriber task.
struct Registry {
    prefix: String,
    channels: Mutex<HashMap<String, Channel>>,
    next_id: AtomicU64,
    /// `Some` with Redis: (un)subscriptions for the subscriber task, in order.
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// Open sockets by user on this process.
    sockets_by_user: Mutex<HashMap<String, usize>>,
    /// Events whose publish failed and were delivered locally instead: the publish may still
    /// reach Redis (a timed-out command stays in the socket's buffer and TCP delivers it when
    /// the link heals), and then it must not reach the local sockets a second time.
    unsure: UnsurePublishes,
}

/// The (session, seq) of the last [`UNSURE_KEPT`] events that were delivered locally after
/// their publish failed; the subscriber skips each of them once if Redis delivers it after all.
#[derive(Default)]
struct UnsurePublishes {
    /// Fast path: how many are kept (none, nearly always).
    count: AtomicU64,
    events: Mutex<VecDeque<(String, u64)>>,
}

/// At most one event per stream that was publishing when an outage began can be unsure.
const UNSURE_KEPT: usize = 64;

impl UnsurePublishes {
    fn lock(&self) -> MutexGuard<'_, VecDeque<(String, u64)>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, session_id: &str, seq: u64) {
        let mut events = self.lock();
        if events.len() == UNSURE_KEPT {
            events.pop_front();
        }
        events.push_back((session_id.to_owned(), seq));
        self.count.store(events.len() as u64, Ordering::Release);
    }

    /// Whether `seq` of `session_id` was delivered locally already (forgotten then).
    fn take(&self, session_id: &str, seq: u64) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut events = self.lock();
        let Some(index) = events
            .iter()
            .position(|(session, kept)| *kept == seq && session == session_id)
        else {
            return false;
        };
        events.remove(index);
        self.count.store(events.len() as u64, Ordering::Release);
        true
    }
}

struct Channel {
    subscribers: Vec<Subscriber>,
    /// Whether the channel's Redis subscription is confirmed; `None` in process, where a
    /// channel is always live (no allocation for the sessions of a replica without Redis).
    ready: Option<Arc<Readiness>>,
}

/// A flag with a wake-up for its waiters: a few dozen bytes per session, where a
/// `tokio::sync::watch` channel takes about 400 (docs/gateway.md#benchmark).
#[derive(Default)]
struct Readiness {
    live: AtomicBool,
    changed: Notify,
}

impl Readiness {
    fn set(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until the flag is set.
    async fn wait(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a `set` between the check and the wait wakes it.
            changed.as_mut().enable();
            if self.live.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }
}

/// A queued delivery: an event and its encoded size, or `None` for "events may have been
/// missed here".
type Queued = Option<(Arc<SequencedEvent>, usize)>;

struct Subscriber {
    id: u64,
    queue: Arc<SubscriberQueue>,
}

/// The events waiting for one subscriber. A mutex-guarded deque and a `Notify` rather than a
/// channel: an idle socket's queue is a few dozen bytes (a tokio channel preallocates a block
/// and cache-padded state, about 1 KiB, and there are 10,000 idle sockets to a replica).
struct SubscriberQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    limits: QueueLimits,
    /// Cancelled when the queue overflows, so a consumer blocked elsewhere (a socket write
    /// that does not progress) learns it at once.
    overflow: CancellationToken,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Queued>,
    /// Encoded bytes of the queued events.
    bytes: usize,
    /// The queue overflowed: nothing is queued any more.
    overflowed: bool,
}

impl SubscriberQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new(limits: QueueLimits, overflow: CancellationToken) -> Self {
        SubscriberQueue {
            state: Mutex::default(),
            notify: Notify::new(),
            limits,
            overflow,
        }
    }

    /// Queues an event of `bytes` encoded bytes; past the limits the subscriber is marked
    /// overflowed instead, and gets nothing more.
    fn push(&self, event: Arc<SequencedEvent>, bytes: usize) {
        let mut state = self.lock();
        if state.overflowed {
            return;
        }
        let too_many = state.items.len() >= self.limits.events;
        let too_large =
            !state.items.is_empty() && state.bytes.saturating_add(bytes) > self.limits.bytes;
        if too_many || too_large {
            metrics::fanout_error("overflow");
            state.overflowed = true;
            // What is queued is still delivered (then `Overflowed`); the client resumes after
            // the last event it saw, so memory is freed as soon as the consumer stops.
            drop(state);
            self.overflow.cancel();
        } else {
            state.bytes += bytes;
            state.items.push_back(Some((event, bytes)));
            drop(state);
        }
        self.notify.notify_one();
    }

    /// Reports a gap after the events queued so far.
    fn push_gap(&self) {
        let mut state = self.lock();
        if !state.overflowed {
            state.items.push_back(None);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// The next delivery without waiting.
    fn try_pop(&self) -> Option<Delivery> {
        let mut state = self.lock();
        match state.items.pop_front() {
            Some(Some((event, bytes))) => {
                state.bytes = state.bytes.saturating_sub(bytes);
                Some(Delivery::Event(event))
            }
            Some(None) => Some(Delivery::Lagged),
            // An overflow is reported after the events queued before it.
            None if state.overflowed => Some(Delivery::Overflowed),
            None => None,
        }
    }

    /// The next delivery (single consumer: a stored `Notify` permit covers a push between
    /// the check and the wait).
    async fn pop(&self) -> Delivery {
        loop {
            if let Some(delivery) = self.try_pop() {
                return delivery;
            }
            self.notify.notified().await;
        }
    }
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        // Nothing that can panic runs under the lock; recover the map regardless.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn channel_name(&self, session_id: &str) -> String {
        format!("{}events:{session_id}", self.prefix)
    }

    fn session_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix("events:"))
    }

    /// Hands `event` (`bytes` encoded) to every local subscriber of `session_id`, without
    /// waiting.
    fn dispatch(&self, session_id: &str, event: Arc<SequencedEvent>, bytes: usize) {
        let channels = self.lock();
        let Some(channel) = channels.get(session_id) else {
            return;
        };
        for subscriber in &channel.subscribers {
            subscriber.queue.push(Arc::clone(&event), bytes);
        }
    }

    /// Tells the local subscribers of `session_id` that they may have missed events.
    fn mark_lagged(&self, session_id: &str) {
        if let Some(channel) = self.lock().get(session_id) {
            for subscriber in &channel.subscribers {
                subscriber.queue.push_gap();
            }
        }
    }

    /// Tells every local subscriber that it may have missed events.
    fn mark_all_lagged(&self) {
        for channel in self.lock().values() {
            for subscriber in &channel.subscribers {
                subscriber.queue.push_gap();
            }
        }
    }

    fn set_ready(&self, session_id: &str, ready: bool) {
        if let Some(readiness) = self.lock().get(session_id).and_then(|c| c.ready.as_ref()) {
            readiness.set(ready);
        }
    }

    fn set_all_ready(&self, ready: bool) {
        for readiness in self.lock().values().filter_map(|c| c.ready.as_ref()) {
            readiness.set(ready);
        }
    }

    fn sessions(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn remove(&self, session_id: &str, id: u64) {
        let mut channels = self.lock();
        let Some(channel) = channels.get_mut(session_id) else {
            return;
        };
        channel.subscribers.retain(|s| s.id != id);
        if channel.subscribers.is_empty() {
            channels.remove(session_id);
            if let Some(commands) = &self.commands {
                let _ = commands.send(Command::Unsubscribe(session_id.to_owned()));
            }
        }
    }
}

impl Fanout {
    /// In process when `redis_url` is `None` or empty; otherwise Redis pub/sub on channels
    /// `<key_prefix>events:<session_id>` (fails when Redis cannot be reached now).
    pub async fn connect(redis_url: Option<&str>, key_prefix: &str) -> Result<Fanout, FanoutError> {
        metrics::describe();
        let Some(url) = redis_url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Fanout {
                inner: Arc::new(Inner {
                    registry: Arc::new(Registry {
                        prefix: key_prefix.to_owned(),
                        channels: Mutex::default(),
                        next_id: AtomicU64::new(1),
                        commands: None,
                        sockets_by_user: Mutex::default(),
                        unsure: UnsurePublishes::default(),
                    }),
                    redis: None,
                }),
            });
        };
        let client =
            redis::Client::open(url).map_err(|e| FanoutError::InvalidUrl(e.to_string()))?;
        // No reconnection retries: a command sent while Redis is away waits for one reconnect
        // attempt, and the next command tries again. With retries, redis-rs waits 1 s, then
        // `factor` (100) times longer capped at 60 s, plus jitter, between attempts: minutes per
        // command, where callers must fail fast (auth counts in memory, the fan-out delivers
        // locally). Redis must therefore answer when the service starts.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(0);
        let mut publisher = ConnectionManager::new_with_config(client.clone(), config).await?;
        let _: String = redis::cmd("PING").query_async(&mut publisher).await?;
        let pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "timed out connecting the subscriber",
                ))
            })??;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let registry = Arc::new(Registry {
            prefix: key_prefix.to_owned(),
            channels: Mutex::default(),
            next_id: AtomicU64::new(1),
            commands: Some(commands),
            sockets_by_user: Mutex::default(),
            unsure: UnsurePublishes::default(),
        });
        let task = codelab_core::tasks::spawn(
            "fanout-subscriber",
            subscriber_loop(client, pubsub, Arc::clone(&registry), command_rx),
        );
        Ok(Fanout {
            inner: Arc::new(Inner {
                registry,
                redis: Some(RedisSide {
                    publisher,
                    task,
                    outage: Arc::default(),
                }),
            }),
        })
    }

    /// Whether events go through Redis.
    pub fn is_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Publishes `event` to the sockets of `session_id` on every replica. A Redis failure is
    /// logged and the event still reaches this process's sockets.
    pub async fn publish(&self, session_id: &str, event: &SequencedEvent) {
        let registry = &self.inner.registry;
        let Some(redis) = &self.inner.redis else {
            metrics::fanout_published("memory");
            registry.dispatch(session_id, Arc::new(event.clone()), encoded_len(event));
            return;
        };
        if redis.outage.note_if_open(session_id) {
            metrics::fanout_published("local");
            registry.dispatch(session_id, Arc::new(event.clone()), encoded_len(event));
            return;
        }
        let payload = match serde_json::to_string(event) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot encode an event for the fan-out");
                return;
            }
        };
        let mut conn = redis.publisher.clone();
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(registry.channel_name(session_id))
            .arg(&payload)
            .query_async(&mut conn)
            .await;
        match published {
            // Local sockets get it back through the subscriber connection, exactly once.
            Ok(_) => metrics::fanout_published("redis"),
            Err(error) => {
                metrics::fanout_error("publish");
                if redis.outage.open(session_id) {
                    tracing::warn!(
                        %error,
                        "publishing an event to Redis failed; delivering locally until Redis answers"
                    );
                    codelab_core::tasks::spawn(
                        "fanout-outage-probe",
                        probe_until_redis_answers(
                            redis.publisher.clone(),
                            Arc::clone(&redis.outage),
                            Arc::clone(registry),
                        ),
                    );
                }
                if event.seq > 0 {
                    registry.unsure.remember(session_id, event.seq);
                }
                let bytes = payload.len();
                registry.dispatch(session_id, Arc::new(event.clone()), bytes);
            }
        }
    }

    /// Subscribes to the events of `session_id` with the default queue limits; dropping the
    /// subscription unsubscribes (from Redis when it was the last local one).
    pub fn subscribe(&self, session_id: &str) -> FanoutSubscription {
        self.subscribe_with(session_id, QueueLimits::default(), CancellationToken::new())
    }

    /// Subscribes to the events of `session_id`; past `limits` the subscription delivers
    /// [`Delivery::Overflowed`] and cancels `overflow`.
    pub fn subscribe_with(
        &self,
        session_id: &str,
        limits: QueueLimits,
        overflow: CancellationToken,
    ) -> FanoutSubscription {
        let registry = Arc::clone(&self.inner.registry);
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(SubscriberQueue::new(limits, overflow));
        let ready = {
            let mut channels = registry.lock();
            let channel = channels.entry(session_id.to_owned()).or_insert_with(|| {
                let ready = registry.commands.as_ref().map(|commands| {
                    let _ = commands.send(Command::Subscribe(session_id.to_owned()));
                    Arc::new(Readiness::default())
                });
                Channel {
                    // Most sessions have one socket.
                    subscribers: Vec::with_capacity(1),
                    ready,
                }
            });
            channel.subscribers.push(Subscriber {
                id,
                queue: Arc::clone(&queue),
            });
            channel.ready.clone()
        };
        FanoutSubscription {
            registry,
            session_id: session_id.to_owned(),
            id,
            queue,
            ready,
            pending: None,
        }
    }

    /// Counts a socket of `user_id` on this process while the returned claim lives; `None`
    /// when the user already holds `max_per_user` sockets here.
    pub fn claim_socket(&self, user_id: &str, max_per_user: usize) -> Option<SocketClaim> {
        let registry = &self.inner.registry;
        let mut sockets = registry
            .sockets_by_user
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = sockets.entry(user_id.to_owned()).or_insert(0);
        if *count >= max_per_user {
            if *count == 0 {
                sockets.remove(user_id);
            }
            return None;
        }
        *count += 1;
        Some(SocketClaim {
            registry: Arc::clone(registry),
            user_id: user_id.to_owned(),
        })
    }

    /// `/ready`: Redis answers PING (always ready in process).
    pub async fn ping(&self) -> Result<(), FanoutError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(());
        };
        let mut conn = redis.publisher.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// One socket of a user counted by [`Fanout::claim_socket`]; dropping it frees the place.
pub struct SocketClaim {
    registry: Arc<Registry>,
    user_id: String,
}

impl std::fmt::Debug for SocketClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketClaim").finish_non_exhaustive()
    }
}

impl Drop for SocketClaim {
    fn drop(&mut self) {
        let mut sockets = self
            .registry
            .sockets_by_user
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = sockets.get_mut(&self.user_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                sockets.remove(&self.user_id);
            }
        }
    }
}

/// The JSON-encoded size of `value` (an event or a frame), counted without building the text:
/// what the per-socket queue limits are measured in.
pub(crate) fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Events and frames are JSON objects with string keys: encoding cannot fail (an error would
    // only leave a smaller count).
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// The events of one session for one socket. A `Stream` of events; [`FanoutSubscription::recv`]
/// also reports gaps.
pub struct FanoutSubscription {
    registry: Arc<Registry>,
    session_id: String,
    id: u64,
    queue: Arc<SubscriberQueue>,
    /// `None` in process: always live.
    ready: Option<Arc<Readiness>>,
    /// The wait of the `Stream` implementation (made only when it is used as one).
    pending: Option<Pin<Box<dyn Future<Output = Delivery> + Send>>>,
}

impl std::fmt::Debug for FanoutSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutSubscription")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl FanoutSubscription {
    /// The session subscribed to.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Waits until events published from now on are delivered (with Redis: the subscription
    /// is confirmed), at most `timeout`; `false` if it was not in time.
    pub async fn ready(&mut self, timeout: Duration) -> bool {
        match &self.ready {
            None => true,
            Some(readiness) => tokio::time::timeout(timeout, readiness.wait())
                .await
                .is_ok(),
        }
    }

    /// The next delivery. Never `None` today (the fan-out outlives its subscriptions); the
    /// `Option` leaves room for a fan-out that can end.
    pub async fn recv(&mut self) -> Option<Delivery> {
        Some(self.queue.pop().await)
    }
}

impl Stream for FanoutSubscription {
    type Item = SequencedEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let queue = Arc::clone(&self.queue);
            let pending = self
                .pending
                .get_or_insert_with(|| Box::pin(async move { queue.pop().await }));
            match pending.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(delivery) => {
                    self.pending = None;
                    match delivery {
                        Delivery::Event(event) => {
                            return Poll::Ready(Some(Arc::unwrap_or_clone(event)));
                        }
                        // A plain stream of events has no way to say "replay": skip the gap.
                        Delivery::Lagged => {}
                        // Nothing more will come.
                        Delivery::Overflowed => return Poll::Ready(None),
                    }
                }
            }
        }
    }
}

impl Drop for FanoutSubscription {
    fn drop(&mut self) {
        self.registry.remove(&self.session_id, self.id);
    }
}

/// Pings Redis until it answers, then closes the outage and publishes a gap marker on the
/// channel of every session that missed events, so other replicas' sockets replay them.
async fn probe_until_redis_answers(
    mut publisher: ConnectionManager,
    outage: Arc<Outage>,
    registry: Arc<Registry>,
) {
    loop {
        tokio::time::sleep(OUTAGE_PROBE_INTERVAL).await;
        let ping = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut publisher),
        )
        .await;
        if matches!(ping, Ok(Ok(_))) {
            break;
        }
    }
    let missed = outage.close();
    tracing::info!(
        sessions = missed.len(),
        "Redis answers again; publishing through it, other replicas replay what they missed"
    );
    for session_id in missed {
        let marked: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(registry.channel_name(&session_id))
            .arg(GAP_MARKER)
            .query_async(&mut publisher)
            .await;
        if let Err(error) = marked {
            // The next publish fails too and opens a new outage, which remembers the session
            // again only if it publishes again; this one's sockets elsewhere catch up at their
            // next resumption.
            metrics::fanout_error("publish");
            tracing::warn!(%error, "cannot publish a gap marker after a Redis outage");
        }
    }
}

/// The subscriber connection: applies (un)subscriptions in order, dispatches messages, and
/// reconnects (subscribing again to every channel with local subscribers) when Redis goes away.
async fn subscriber_loop(
    client: redis::Client,
    first: redis::aio::PubSub,
    registry: Arc<Registry>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut pubsub = Some(first);
    let mut backoff = RECONNECT_MIN;
    let mut reconnecting = false;
    loop {
        let connection = match pubsub.take() {
            Some(connection) => connection,
            None => match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot reconnect the Redis subscriber");
                    metrics::fanout_error("reconnect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
                Err(_) => {
                    metrics::fanout_error("reconnect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            },
        };
        let (mut sink, mut messages) = connection.split();
        let mut healthy = true;
        for session_id in registry.sessions() {
            if let Err(error) = sink.subscribe(registry.channel_name(&session_id)).await {
                tracing::warn!(%error, "resubscribing to Redis failed");
                healthy = false;
                break;
            }
            registry.set_ready(&session_id, true);
        }
        if healthy && reconnecting {
            tracing::info!("the Redis subscriber is back; sockets replay what they missed");
            registry.mark_all_lagged();
        }
        if healthy {
            backoff = RECONNECT_MIN;
        }
        while healthy {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        // Every `Fanout` is gone.
                        return;
                    };
                    let result = match &command {
                        Command::Subscribe(session_id) => {
                            let result = sink.subscribe(registry.channel_name(session_id)).await;
                            if result.is_ok() {
                                registry.set_ready(session_id, true);
                            }
                            result
                        }
                        Command::Unsubscribe(session_id) => {
                            sink.unsubscribe(registry.channel_name(session_id)).await
                        }
                    };
                    if let Err(error) = result {
                        tracing::warn!(%error, "a Redis (un)subscription failed; reconnecting");
                        metrics::fanout_error("subscribe");
                        healthy = false;
                    }
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        tracing::warn!("the Redis subscriber connection closed; reconnecting");
                        healthy = false;
                        continue;
                    };
                    let channel = message.get_channel_name().to_owned();
                    let Some(session_id) = registry.session_of(&channel) else {
                        continue;
                    };
                    let payload = message.get_payload_bytes();
                    if payload == GAP_MARKER {
                        registry.mark_lagged(session_id);
                        continue;
                    }
                    match serde_json::from_slice::<SequencedEvent>(payload) {
                        Ok(event) if registry.unsure.take(session_id, event.seq) => {
                            tracing::debug!("skipping an event delivered locally during an outage");
                        }
                        Ok(event) => registry.dispatch(session_id, Arc::new(event), payload.len()),
                        Err(error) => {
                            metrics::fanout_error("decode");
                            tracing::warn!(%error, "skipping a fan-out message that cannot be read");
                        }
                    }
                }
            }
        }
        // Until the new connection has subscribed, publishes are not delivered here.
        registry.set_all_ready(false);
        reconnecting = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelab_protocol::runtime::RuntimeEvent;

    fn notice(seq: u64) -> SequencedEvent {
        SequencedEvent {
            seq,
            event: RuntimeEvent::Notice {
                message: format!("n{seq}"),
            },
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_overflows_after_what_it_had_and_gets_nothing_more() {
        let fanout = Fanout::connect(None, "t:").await.unwrap();
        let overflow = CancellationToken::new();
        let limits = QueueLimits {
            events: 8,
            bytes: usize::MAX,
        };
        let mut slow = fanout.subscribe_with("s", limits, overflow.clone());
        for seq in 1..=10 {
            fanout.publish("s", &notice(seq)).await;
        }
        assert!(overflow.is_cancelled());
        for seq in 1..=8 {
            match slow.recv().await.unwrap() {
                Delivery::Event(event) => assert_eq!(event.seq, seq),
                other => panic!("expected event {seq}, got {other:?}"),
            }
        }
        assert_eq!(slow.recv().await.unwrap(), Delivery::Overflowed);
        fanout.publish("s", &notice(99)).await;
        assert_eq!(slow.recv().await.unwrap(), Delivery::Overflowed);
    }

    #[tokio::test]
    async fn the_byte_limit_bounds_a_queue_but_admits_one_large_event() {
        let fanout = Fanout::connect(None, "t:").await.unwrap();
        let overflow = CancellationToken::new();
        let one = encoded_len(&notice(1));
        let limits = QueueLimits {
            events: 1000,
            bytes: one * 3,
        };
        let mut sub = fanout.subscribe_with("s", limits, overflow.clone());
        let large = SequencedEvent {
            seq: 1,
            event: RuntimeEvent::Notice {
                message: "x".repeat(one * 10),
            },
        };
        fanout.publish("s", &large).await;
        assert!(!overflow.is_cancelled(), "one event alone is always queued");
        assert!(matches!(sub.recv().await, Some(Delivery::Event(_))));
        for seq in 2..=4 {
            fanout.publish("s", &notice(seq)).await;
        }
        assert!(!overflow.is_cancelled());
        fanout.publish("s", &notice(5)).await;
        assert!(overflow.is_cancelled());
    }

    #[tokio::test]
    async fn sockets_are_capped_per_user_and_freed_when_dropped() {
        let fanout = Fanout::connect(None, "t:").await.unwrap();
        let first = fanout.claim_socket("u", 2).unwrap();
        let _second = fanout.claim_socket("u", 2).unwrap();
        assert!(fanout.claim_socket("u", 2).is_none());
        assert!(fanout.claim_socket("other", 2).is_some());
        drop(first);
        assert!(fanout.claim_socket("u", 2).is_some());
    }

    #[tokio::test]
    async fn a_redis_outage_is_reported_as_a_gap_after_the_events_before_it() {
        let fanout = Fanout::connect(None, "t:").await.unwrap();
        let mut sub = fanout.subscribe("s");
        fanout.publish("s", &notice(1)).await;
        // What the subscriber task does once Redis is back.
        fanout.inner.registry.mark_all_lagged();
        fanout.publish("s", &notice(2)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(match sub.recv().await.unwrap() {
                Delivery::Event(event) => Some(event.seq),
                Delivery::Lagged => None,
                Delivery::Overflowed => panic!("nothing overflowed"),
            });
        }
        assert_eq!(got, vec![Some(1), None, Some(2)]);
    }

    #[tokio::test]
    async fn the_last_subscriber_leaving_removes_the_channel() {
        let fanout = Fanout::connect(None, "t:").await.unwrap();
        let a = fanout.subscribe("s");
        let b = fanout.subscribe("s");
        drop(a);
        assert_eq!(fanout.inner.registry.sessions(), vec!["s".to_owned()]);
        drop(b);
        assert!(fanout.inner.registry.sessions().is_empty());
    }
}
