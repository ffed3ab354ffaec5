//! A small key-value cache: Redis when configured (shared by replicas), else in process.
//!
//! When Redis stops answering, the Redis variant serves every command from its own in-process
//! map instead of failing, so what depends on the cache (auth's rate limits and lockouts, its
//! login forms) goes on per replica. It tries Redis again at most once per
//! [`REDIS_RETRY_INTERVAL`] and returns to it as soon as it answers; what was written in memory
//! meanwhile stays there and expires (reads that find nothing in Redis look there too). A
//! Redis that is full (`OOM` under `maxmemory-policy noeviction`) is treated the same way, so a
//! flood that fills it cannot switch the limits off. Only [`Cache::ping`] reports an outage
//! (for `/ready`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::clock::{Clock, SharedClock, SystemClock};

/// Timeout for connecting to Redis and for each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// While Redis is down, commands skip it and use memory; one is let through to Redis this
/// often to see whether it is back (a partitioned Redis would otherwise cost each command the
/// full [`REDIS_TIMEOUT`]).
pub const REDIS_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The in-memory cache drops expired entries once every this many operations.
const PURGE_EVERY: u64 = 1024;

/// Most entries the in-memory cache holds. Keys come from outside (usernames, addresses), so
/// without a bound a flood of distinct ones would grow it until they expire. About 100 bytes
/// an entry: a few tens of MiB at most.
pub const MEMORY_CAPACITY: usize = 100_000;

/// INCR that sets the TTL when the key is new (or has none), atomically.
const INCR_EX_SCRIPT: &str = r"
local value = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return value
";

/// A cache failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// Redis could not be reached at startup.
    #[error("cannot connect to Redis: {0}")]
    Connect(redis::RedisError),
    /// A Redis command failed.
    #[error("redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// `incr_ex` on a key holding something other than an integer.
    #[error("value at key {0:?} is not an integer")]
    NotAnInteger(String),
}

/// A cache shared by all clones: Redis with a key prefix, or an in-process map.
#[derive(Clone, Debug)]
pub enum Cache {
    /// Redis (several replicas share counters and flags).
    Redis(RedisCache),
    /// In-process (single process: `codelab up`, tests).
    Memory(MemoryCache),
}

/// Called with the operation's name each time a command is served from memory because Redis
/// is unavailable (services count it in their metrics).
pub type FallbackObserver = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The Redis side of [`Cache`], with the in-process map it falls back to.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    fallback: MemoryCache,
    outage: Arc<Mutex<Outage>>,
    observer: Option<FallbackObserver>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Whether Redis is currently considered down, and when it was last tried.
#[derive(Debug, Default)]
struct Outage {
    last_failure: Option<Instant>,
}

/// The in-process side of [`Cache`]; entries expire lazily by the injected clock. When full
/// ([`MEMORY_CAPACITY`]) it drops the expired entries, then the tenth that expires soonest among
/// the plain entries ([`Cache::set_ex`], [`Cache::set_nx_ex`]); counters ([`Cache::incr_ex`]:
/// rate limits, lockouts) go only when nothing else is left, so a flood of single-use entries
/// cannot evict the limiter's own counts.
#[derive(Clone)]
pub struct MemoryCache {
    state: Arc<Mutex<MemoryState>>,
    clock: SharedClock,
    capacity: usize,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct MemoryState {
    entries: HashMap<String, Entry>,
    operations: u64,
}

impl MemoryState {
    /// Inserts `entry`, first making room when a new key would exceed `capacity`.
    fn insert(&mut self, key: &str, entry: Entry, capacity: usize, now: SystemTime) {
        if self.entries.len() >= capacity && !self.entries.contains_key(key) {
            self.entries.retain(|_, e| e.expires_at > now);
            if self.entries.len() >= capacity {
                // A tenth at a time, so a flood costs one scan per many inserts.
                let evict = (capacity / 10).max(1);
                let left = self.evict_soonest(evict, Retention::Plain);
                if left > 0 {
                    self.evict_soonest(left, Retention::Counter);
                }
            }
        }
        self.entries.insert(key.to_owned(), entry);
    }

    /// Drops up to `count` entries of class `retention`, those expiring soonest; returns how
    /// many more were wanted than that class held.
    fn evict_soonest(&mut self, count: usize, retention: Retention) -> usize {
        let mut expiries: Vec<SystemTime> = self
            .entries
            .values()
            .filter(|e| e.retention == retention)
            .map(|e| e.expires_at)
            .collect();
        if expiries.is_empty() {
            return count;
        }
        let evict = count.min(expiries.len());
        let (_, cutoff, _) = expiries.select_nth_unstable(evict - 1);
        let cutoff = *cutoff;
        let mut left = evict;
        self.entries.retain(|_, e| {
            let drop = left > 0 && e.retention == retention && e.expires_at <= cutoff;
            left -= usize::from(drop);
            !drop
        });
        count - evict
    }
}

/// Which entries a full in-memory cache drops first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retention {
    /// Values and flags (`set_ex`, `set_nx_ex`): dropped first.
    Plain,
    /// Counters (`incr_ex`: rate limits, lockouts): dropped only when nothing else is left,
    /// since losing one resets a limit an attacker is pushing against.
    Counter,
}

struct Entry {
    value: String,
    expires_at: SystemTime,
    retention: Retention,
}

/// Connects to Redis at `redis_url` (keys prefixed with `key_prefix`, as given), or returns an
/// in-memory cache when the URL is absent or empty.
pub async fn connect_cache(redis_url: Option<&str>, key_prefix: &str) -> Result<Cache, CacheError> {
    let Some(url) = redis_url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(Cache::memory());
    };
    let client = redis::Client::open(url).map_err(|e| CacheError::InvalidUrl(e.to_string()))?;
    // No reconnection retries: a command sent while Redis is away waits for one reconnect
    // attempt and then falls back to memory. With retries, redis-rs waits 1 s, then `factor`
    // (100) times longer capped at 60 s, plus jitter, between attempts: minutes per command.
    // Redis must answer when the service starts, so a wrong URL is found at once.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(REDIS_TIMEOUT)
        .set_number_of_retries(0);
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(CacheError::Connect)?;
    let cache = Cache::Redis(RedisCache {
        conn,
        prefix: key_prefix.to_owned(),
        fallback: MemoryCache::new(Arc::new(SystemClock)),
        outage: Arc::default(),
        observer: None,
    });
    cache.ping().await?;
    Ok(cache)
}

/// Milliseconds for PX/PEXPIRE; Redis rejects 0, so anything shorter becomes 1 ms.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Whether `error` means Redis cannot serve the command (as opposed to Redis refusing it as
/// wrong): it cannot be reached, or it is full. Our deployments run Redis with
/// `maxmemory-policy noeviction` (docs/operations.md), so a full Redis answers writes with
/// `OOM`; serving them from memory keeps the limits counting instead of skipping them.
fn is_unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
        || is_out_of_memory(error)
}

/// Whether Redis refused a write because it reached `maxmemory` (`-OOM ...`, also when the
/// write was inside a script).
fn is_out_of_memory(error: &redis::RedisError) -> bool {
    error.code() == Some("OOM")
        || error
            .detail()
            .is_some_and(|detail| detail.contains("OOM command not allowed"))
}

impl Cache {
    /// An empty in-memory cache on the system clock.
    pub fn memory() -> Self {
        Self::memory_with_clock(Arc::new(SystemClock))
    }

    /// An empty in-memory cache whose expiry follows `clock` (tests use a `ManualClock`).
    pub fn memory_with_clock(clock: SharedClock) -> Self {
        Self::Memory(MemoryCache::new(clock))
    }

    /// Whether this is the Redis variant.
    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// Calls `observer` with the operation's name whenever the Redis variant serves a command
    /// from memory because Redis is unavailable (no effect in memory).
    #[must_use]
    pub fn with_fallback_observer(mut self, observer: FallbackObserver) -> Self {
        if let Self::Redis(r) = &mut self {
            r.observer = Some(observer);
        }
        self
    }

    /// Entries held in this process's memory, expired ones included until purged: the whole
    /// in-memory cache, or the Redis variant's fallback map.
    pub fn memory_entries(&self) -> usize {
        match self {
            Self::Redis(r) => r.fallback.len(),
            Self::Memory(m) => m.len(),
        }
    }

    /// Whether commands are being served from memory because Redis is unavailable.
    pub fn is_degraded(&self) -> bool {
        match self {
            Self::Redis(r) => r.outage().last_failure.is_some(),
            Self::Memory(_) => false,
        }
    }

    /// The value at `key`, if present and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        match self {
            Self::Redis(r) => {
                let command = async { r.query(redis::cmd("GET").arg(r.key(key))).await };
                let value = r.or_memory("get", command, |m| Ok(m.get(key))).await?;
                // A count written to memory while Redis refused writes (full or away) still
                // counts once Redis answers reads again.
                Ok(value.or_else(|| r.fallback.get(key)))
            }
            Self::Memory(m) => Ok(m.get(key)),
        }
    }

    /// Sets `key` to `value` for `ttl`.
    pub async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        match self {
            Self::Redis(r) => {
                let command = async {
                    r.query::<()>(
                        redis::cmd("SET")
                            .arg(r.key(key))
                            .arg(value)
                            .arg("PX")
                            .arg(ttl_millis(ttl)),
                    )
                    .await
                };
                r.or_memory("set_ex", command, |m| {
                    m.set_ex(key, value, ttl);
                    Ok(())
                })
                .await
            }
            Self::Memory(m) => {
                m.set_ex(key, value, ttl);
                Ok(())
            }
        }
    }

    /// Sets `key` to `value` for `ttl` only if it is absent; `true` when this call set it.
    pub async fn set_nx_ex(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        match self {
            Self::Redis(r) => {
                let command = async {
                    let reply: Option<String> = r
                        .query(
                            redis::cmd("SET")
                                .arg(r.key(key))
                                .arg(value)
                                .arg("NX")
                                .arg("PX")
                                .arg(ttl_millis(ttl)),
                        )
                        .await?;
                    Ok(reply.is_some())
                };
                r.or_memory("set_nx_ex", command, |m| Ok(m.set_nx_ex(key, value, ttl)))
                    .await
            }
            Self::Memory(m) => Ok(m.set_nx_ex(key, value, ttl)),
        }
    }

    /// Atomically increments the integer at `key` (absent counts as 0) and returns the new
    /// value; `ttl` is set when the key is created, and later increments keep the expiry.
    pub async fn incr_ex(&self, key: &str, ttl: Duration) -> Result<i64, CacheError> {
        match self {
            Self::Redis(r) => {
                let command = async {
                    r.query(
                        redis::cmd("EVAL")
                            .arg(INCR_EX_SCRIPT)
                            .arg(1)
                            .arg(r.key(key))
                            .arg(ttl_millis(ttl)),
                    )
                    .await
                };
                r.or_memory("incr_ex", command, |m| m.incr_ex(key, ttl))
                    .await
            }
            Self::Memory(m) => m.incr_ex(key, ttl),
        }
    }

    /// Time left before `key` expires; `None` when it is absent (or, in Redis, has no expiry).
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, CacheError> {
        match self {
            Self::Redis(r) => {
                let command = async {
                    let millis: i64 = r.query(redis::cmd("PTTL").arg(r.key(key))).await?;
                    // -2: no such key, -1: no expiry.
                    Ok(u64::try_from(millis).ok().map(Duration::from_millis))
                };
                let left = r.or_memory("ttl", command, |m| Ok(m.ttl(key))).await?;
                Ok(left.or_else(|| r.fallback.ttl(key)))
            }
            Self::Memory(m) => Ok(m.ttl(key)),
        }
    }

    /// Removes `key`.
    pub async fn del(&self, key: &str) -> Result<(), CacheError> {
        match self {
            Self::Redis(r) => {
                let command = async { r.query::<()>(redis::cmd("DEL").arg(r.key(key))).await };
                // Removed from both: a key written during an outage must not outlive its del.
                r.fallback.del(key);
                r.or_memory("del", command, |_| Ok(())).await
            }
            Self::Memory(m) => {
                m.del(key);
                Ok(())
            }
        }
    }

    /// Checks the connection (for `/ready`): fails while Redis is down, even though the
    /// other commands go on in memory; always succeeds in memory.
    pub async fn ping(&self) -> Result<(), CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                let answer = redis::cmd("PING").query_async::<()>(&mut conn).await;
                match &answer {
                    Ok(()) => r.recovered(),
                    Err(error) if is_unavailable(error) => r.failed("ping", error),
                    Err(_) => {}
                }
                Ok(answer?)
            }
            Self::Memory(_) => Ok(()),
        }
    }
}

impl RedisCache {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `command` on a clone of the (multiplexed) connection.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        command.query_async(&mut conn).await
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `command` on Redis unless Redis failed less than [`REDIS_RETRY_INTERVAL`] ago; when
    /// Redis is unavailable, answers from memory with `local` instead. Errors Redis itself
    /// returns (a wrong type, a script error) are passed on.
    async fn or_memory<T>(
        &self,
        operation: &'static str,
        command: impl Future<Output = redis::RedisResult<T>>,
        local: impl FnOnce(&MemoryCache) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        let skip_redis = self
            .outage()
            .last_failure
            .is_some_and(|at| at.elapsed() < REDIS_RETRY_INTERVAL);
        if !skip_redis {
            match command.await {
                Ok(value) => {
                    self.recovered();
                    return Ok(value);
                }
                Err(error) if is_unavailable(&error) => self.failed(operation, &error),
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(observer) = &self.observer {
            observer(operation);
        }
        local(&self.fallback)
    }

    /// Records a failed attempt; the first one of an outage is logged.
    fn failed(&self, operation: &'static str, error: &redis::RedisError) {
        let was_down = self.outage().last_failure.replace(Instant::now()).is_some();
        if !was_down {
            tracing::warn!(
                operation,
                %error,
                "Redis unavailable: the cache is served from process memory until it returns"
            );
        }
    }

    /// Records a successful command; the first one after an outage is logged.
    fn recovered(&self) {
        if self.outage().last_failure.take().is_some() {
            tracing::info!("Redis is back: the cache is shared again");
        }
    }
}

impl MemoryCache {
    fn new(clock: SharedClock) -> Self {
        Self {
            state: Arc::default(),
            clock,
            capacity: MEMORY_CAPACITY,
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        self.with_state(|state, now| {
            state
                .entries
                .get(key)
                .filter(|e| e.expires_at > now)
                .map(|e| e.value.clone())
        })
    }

    fn set_ex(&self, key: &str, value: &str, ttl: Duration) {
        self.with_state(|state, now| {
            let entry = Entry {
                value: value.to_owned(),
                expires_at: now + ttl,
                retention: Retention::Plain,
            };
            state.insert(key, entry, self.capacity, now);
        });
    }

    fn set_nx_ex(&self, key: &str, value: &str, ttl: Duration) -> bool {
        self.with_state(|state, now| {
            if state.entries.get(key).is_some_and(|e| e.expires_at > now) {
                return false;
            }
            let entry = Entry {
                value: value.to_owned(),
                expires_at: now + ttl,
                retention: Retention::Plain,
            };
            state.insert(key, entry, self.capacity, now);
            true
        })
    }

    fn incr_ex(&self, key: &str, ttl: Duration) -> Result<i64, CacheError> {
        self.with_state(|state, now| {
            match state.entries.get_mut(key).filter(|e| e.expires_at > now) {
                Some(entry) => {
                    let next = entry
                        .value
                        .parse::<i64>()
                        .ok()
                        .and_then(|v| v.checked_add(1))
                        .ok_or_else(|| CacheError::NotAnInteger(key.to_owned()))?;
                    entry.value = next.to_string();
                    Ok(next)
                }
                None => {
                    let entry = Entry {
                        value: "1".to_owned(),
                        expires_at: now + ttl,
                        retention: Retention::Counter,
                    };
                    state.insert(key, entry, self.capacity, now);
                    Ok(1)
                }
            }
        })
    }

    fn ttl(&self, key: &str) -> Option<Duration> {
        self.with_state(|state, now| {
            state
                .entries
                .get(key)
                .and_then(|e| e.expires_at.duration_since(now).ok())
                .filter(|left| !left.is_zero())
        })
    }

    fn del(&self, key: &str) {
        self.with_state(|state, _| state.entries.remove(key));
    }

    /// Runs `f` under the lock (never held across an await), purging expired entries now
    /// and then so the map cannot grow without bound.
    fn with_state<T>(&self, f: impl FnOnce(&mut MemoryState, SystemTime) -> T) -> T {
        let now = self.clock.now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.operations = state.operations.wrapping_add(1);
        if state.operations.is_multiple_of(PURGE_EVERY) {
            state.entries.retain(|_, e| e.expires_at > now);
        }
        f(&mut state, now)
    }

    /// An empty cache holding at most `capacity` entries (tests of the bound).
    #[cfg(test)]
    fn with_capacity(clock: SharedClock, capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::new(clock)
        }
    }

    /// Number of entries held, expired or not.
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests;
