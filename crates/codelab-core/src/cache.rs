//! A small key-value cache: Redis when configured (shared by replicas), else in process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::clock::{Clock, SharedClock, SystemClock};

/// Timeout for connecting to Redis and for each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The in-memory cache drops expired entries once every this many operations.
const PURGE_EVERY: u64 = 1024;

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

/// The Redis side of [`Cache`].
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The in-process side of [`Cache`]; entries expire lazily by the injected clock.
#[derive(Clone)]
pub struct MemoryCache {
    state: Arc<Mutex<MemoryState>>,
    clock: SharedClock,
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

struct Entry {
    value: String,
    expires_at: SystemTime,
}

/// Connects to Redis at `redis_url` (keys prefixed with `key_prefix`, as given), or returns an
/// in-memory cache when the URL is absent or empty.
pub async fn connect_cache(redis_url: Option<&str>, key_prefix: &str) -> Result<Cache, CacheError> {
    let Some(url) = redis_url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(Cache::memory());
    };
    let client = redis::Client::open(url).map_err(|e| CacheError::InvalidUrl(e.to_string()))?;
    // No reconnection retries: a command sent while Redis is away waits for one reconnect
    // attempt, and the next command tries again. With retries, redis-rs waits 1 s, then
    // `factor` (100) times longer capped at 60 s, plus jitter, between attempts: minutes per
    // command, where callers must fail fast (auth's limits fail open, the fan-out delivers
    // locally). Redis must therefore answer when the service starts.
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
    });
    cache.ping().await?;
    Ok(cache)
}

/// Milliseconds for PX/PEXPIRE; Redis rejects 0, so anything shorter becomes 1 ms.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Cache {
    /// An empty in-memory cache on the system clock.
    pub fn memory() -> Self {
        Self::memory_with_clock(Arc::new(SystemClock))
    }

    /// An empty in-memory cache whose expiry follows `clock` (tests use a `ManualClock`).
    pub fn memory_with_clock(clock: SharedClock) -> Self {
        Self::Memory(MemoryCache {
            state: Arc::default(),
            clock,
        })
    }

    /// Whether this is the Redis variant.
    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// The value at `key`, if present and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                Ok(redis::cmd("GET")
                    .arg(r.key(key))
                    .query_async(&mut conn)
                    .await?)
            }
            Self::Memory(m) => Ok(m.with_state(|state, now| {
                state
                    .entries
                    .get(key)
                    .filter(|e| e.expires_at > now)
                    .map(|e| e.value.clone())
            })),
        }
    }

    /// Sets `key` to `value` for `ttl`.
    pub async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                redis::cmd("SET")
                    .arg(r.key(key))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }
            Self::Memory(m) => {
                m.with_state(|state, now| {
                    let entry = Entry {
                        value: value.to_owned(),
                        expires_at: now + ttl,
                    };
                    state.entries.insert(key.to_owned(), entry);
                });
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
                let mut conn = r.conn.clone();
                let reply: Option<String> = redis::cmd("SET")
                    .arg(r.key(key))
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async(&mut conn)
                    .await?;
                Ok(reply.is_some())
            }
            Self::Memory(m) => Ok(m.with_state(|state, now| {
                if state.entries.get(key).is_some_and(|e| e.expires_at > now) {
                    return false;
                }
                let entry = Entry {
                    value: value.to_owned(),
                    expires_at: now + ttl,
                };
                state.entries.insert(key.to_owned(), entry);
                true
            })),
        }
    }

    /// Atomically increments the integer at `key` (absent counts as 0) and returns the new
    /// value; `ttl` is set when the key is created, and later increments keep the expiry.
    pub async fn incr_ex(&self, key: &str, ttl: Duration) -> Result<i64, CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                Ok(redis::cmd("EVAL")
                    .arg(INCR_EX_SCRIPT)
                    .arg(1)
                    .arg(r.key(key))
                    .arg(ttl_millis(ttl))
                    .query_async(&mut conn)
                    .await?)
            }
            Self::Memory(m) => m.with_state(|state, now| {
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
                        };
                        state.entries.insert(key.to_owned(), entry);
                        Ok(1)
                    }
                }
            }),
        }
    }

    /// Time left before `key` expires; `None` when it is absent (or, in Redis, has no expiry).
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                let millis: i64 = redis::cmd("PTTL")
                    .arg(r.key(key))
                    .query_async(&mut conn)
                    .await?;
                // -2: no such key, -1: no expiry.
                Ok(u64::try_from(millis).ok().map(Duration::from_millis))
            }
            Self::Memory(m) => Ok(m.with_state(|state, now| {
                state
                    .entries
                    .get(key)
                    .and_then(|e| e.expires_at.duration_since(now).ok())
                    .filter(|left| !left.is_zero())
            })),
        }
    }

    /// Removes `key`.
    pub async fn del(&self, key: &str) -> Result<(), CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                redis::cmd("DEL")
                    .arg(r.key(key))
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }
            Self::Memory(m) => {
                m.with_state(|state, _| state.entries.remove(key));
                Ok(())
            }
        }
    }

    /// Checks the connection (for `/ready`); always succeeds in memory.
    pub async fn ping(&self) -> Result<(), CacheError> {
        match self {
            Self::Redis(r) => {
                let mut conn = r.conn.clone();
                redis::cmd("PING").query_async::<()>(&mut conn).await?;
                Ok(())
            }
            Self::Memory(_) => Ok(()),
        }
    }
}

impl RedisCache {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl MemoryCache {
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

    /// Number of entries held, expired or not (for tests of the purge).
    #[cfg(test)]
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
