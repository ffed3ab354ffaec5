use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::clock::ManualClock;

/// Redis used by the tests; the CI script starts it.
fn redis_url() -> String {
    std::env::var("CODELAB_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

async fn redis_cache(prefix: &str) -> Cache {
    let url = redis_url();
    connect_cache(Some(&url), prefix)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "Redis is required for this test but {url} is unreachable ({err}); \
             start redis-server or set CODELAB_TEST_REDIS_URL"
            )
        })
}

/// Deletes every key under `prefix` (SCAN + DEL), so tests leave Redis as they found it.
async fn delete_prefix(cache: &Cache, prefix: &str) {
    let Cache::Redis(r) = cache else { return };
    let mut conn = r.conn.clone();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(100)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// The behaviour both backends share.
async fn exercise_common_behaviour(cache: &Cache) {
    let ttl = Duration::from_secs(60);
    assert_eq!(cache.get("missing").await.unwrap(), None);
    assert_eq!(cache.ttl("missing").await.unwrap(), None);

    cache.set_ex("k", "v1", ttl).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("v1"));
    let left = cache.ttl("k").await.unwrap().unwrap();
    assert!(left <= ttl && left > Duration::from_secs(50), "{left:?}");
    cache.set_ex("k", "v2", ttl).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("v2"));

    assert!(cache.set_nx_ex("once", "first", ttl).await.unwrap());
    assert!(!cache.set_nx_ex("once", "second", ttl).await.unwrap());
    assert_eq!(cache.get("once").await.unwrap().as_deref(), Some("first"));

    assert_eq!(
        cache
            .incr_ex("count", Duration::from_secs(100))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cache
            .incr_ex("count", Duration::from_secs(5))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        cache
            .incr_ex("count", Duration::from_secs(5))
            .await
            .unwrap(),
        3
    );
    let left = cache.ttl("count").await.unwrap().unwrap();
    assert!(
        left > Duration::from_secs(90),
        "the TTL is set on creation only: {left:?}"
    );
    assert_eq!(cache.get("count").await.unwrap().as_deref(), Some("3"));

    cache.set_ex("text", "abc", ttl).await.unwrap();
    assert!(cache.incr_ex("text", ttl).await.is_err());

    cache.del("k").await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), None);
    cache.del("never-existed").await.unwrap();
    cache.ping().await.unwrap();
}

#[tokio::test]
async fn memory_cache_behaves_like_redis() {
    let cache = Cache::memory();
    assert!(!cache.is_redis());
    exercise_common_behaviour(&cache).await;
    assert!(matches!(
        cache.incr_ex("text", Duration::from_secs(1)).await,
        Err(CacheError::NotAnInteger(_))
    ));
}

#[tokio::test]
async fn memory_entries_expire_by_the_clock() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let cache = Cache::memory_with_clock(Arc::new(clock.clone()));
    cache
        .set_ex("k", "v", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        cache.incr_ex("n", Duration::from_secs(10)).await.unwrap(),
        1
    );
    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("v"));
    assert_eq!(cache.ttl("k").await.unwrap(), Some(Duration::from_secs(1)));
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.get("k").await.unwrap(), None);
    assert_eq!(cache.ttl("k").await.unwrap(), None);
    assert!(
        cache
            .set_nx_ex("k", "again", Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert_eq!(
        cache.incr_ex("n", Duration::from_secs(10)).await.unwrap(),
        1,
        "expired counters restart"
    );
}

#[tokio::test]
async fn memory_purges_expired_entries_so_it_cannot_grow_forever() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let cache = Cache::memory_with_clock(Arc::new(clock.clone()));
    for i in 0..500 {
        cache
            .set_ex(&format!("old-{i}"), "x", Duration::from_secs(1))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    for i in 0..(PURGE_EVERY as usize) {
        cache.get(&format!("probe-{i}")).await.unwrap();
    }
    let Cache::Memory(memory) = &cache else {
        unreachable!()
    };
    assert_eq!(memory.len(), 0);
}

#[tokio::test]
async fn memory_is_chosen_without_a_redis_url() {
    assert!(!connect_cache(None, "p:").await.unwrap().is_redis());
    assert!(!connect_cache(Some(""), "p:").await.unwrap().is_redis());
    assert!(matches!(
        connect_cache(Some("not a url"), "p:").await,
        Err(CacheError::InvalidUrl(_))
    ));
}

#[tokio::test]
async fn redis_cache_behaves_and_prefixes_keys() {
    let prefix = format!("codelab-core-test:{}:", crate::ids::random_hex(6));
    let cache = redis_cache(&prefix).await;
    assert!(cache.is_redis());
    exercise_common_behaviour(&cache).await;

    // Keys really live under the prefix.
    let Cache::Redis(r) = &cache else {
        unreachable!()
    };
    let mut conn = r.conn.clone();
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}once"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw.as_deref(), Some("first"));

    // Sub-millisecond TTLs are rounded up rather than rejected by Redis.
    cache
        .set_ex("tiny", "v", Duration::from_micros(10))
        .await
        .unwrap();

    delete_prefix(&cache, &prefix).await;
    assert_eq!(cache.get("once").await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_redis_increments_are_atomic() {
    let prefix = format!("codelab-core-test:{}:", crate::ids::random_hex(6));
    let cache = redis_cache(&prefix).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            crate::tasks::spawn("cache-test-client", async move {
                cache
                    .incr_ex("hits", Duration::from_secs(30))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=20).collect::<Vec<i64>>());
    assert!(cache.ttl("hits").await.unwrap().is_some());
    delete_prefix(&cache, &prefix).await;
}

/// A TCP relay to the test Redis that can be switched off: while down it closes every open
/// connection and every new one at once, as a Redis that went away would.
struct SwitchableRelay {
    address: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl SwitchableRelay {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        crate::tasks::spawn("test-proxy-accept", async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue; // dropped: closed at once
                }
                let mut down = watch.subscribe();
                let upstream = upstream.clone();
                crate::tasks::spawn("test-proxy-pipe", async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { address, up }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// host:port of the test Redis, from its URL.
fn redis_host_port() -> String {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    host_port.split('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn redis_outage_is_served_from_memory_and_ends_when_redis_returns() {
    let relay = SwitchableRelay::start(redis_host_port()).await;
    let prefix = format!("codelab-core-test:{}:", crate::ids::random_hex(6));
    let fallbacks = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let seen = Arc::clone(&fallbacks);
    let cache = connect_cache(Some(&relay.url()), &prefix)
        .await
        .unwrap()
        .with_fallback_observer(Arc::new(move |operation| {
            seen.lock().unwrap().push(operation);
        }));
    let ttl = Duration::from_secs(60);
    cache.set_ex("shared", "in redis", ttl).await.unwrap();
    assert!(!cache.is_degraded());

    relay.set_up(false);
    // Every command still answers, from memory, with the usual semantics.
    assert_eq!(cache.incr_ex("hits", ttl).await.unwrap(), 1);
    assert!(cache.is_degraded());
    assert_eq!(cache.incr_ex("hits", ttl).await.unwrap(), 2);
    assert!(cache.ttl("hits").await.unwrap().unwrap() > Duration::from_secs(50));
    assert!(cache.set_nx_ex("once", "a", ttl).await.unwrap());
    assert!(!cache.set_nx_ex("once", "b", ttl).await.unwrap());
    assert_eq!(cache.get("once").await.unwrap().as_deref(), Some("a"));
    cache.del("once").await.unwrap();
    assert_eq!(cache.get("once").await.unwrap(), None);
    assert_eq!(
        cache.get("shared").await.unwrap(),
        None,
        "Redis' data is not reachable"
    );
    // Readiness still sees the outage.
    assert!(cache.ping().await.is_err());
    assert!(cache.is_degraded());
    {
        let operations = fallbacks.lock().unwrap();
        assert!(operations.starts_with(&["incr_ex", "incr_ex", "ttl", "set_nx_ex"]));
        assert!(operations.contains(&"del") && operations.contains(&"get"));
    }

    // Redis returns: the next ping ends the outage, and commands reach Redis again.
    relay.set_up(true);
    cache.ping().await.unwrap();
    assert!(!cache.is_degraded());
    assert_eq!(
        cache.get("shared").await.unwrap().as_deref(),
        Some("in redis")
    );
    assert_eq!(
        cache.incr_ex("hits", ttl).await.unwrap(),
        1,
        "Redis never saw the counts made in memory"
    );
    delete_prefix(&cache, &prefix).await;
}

#[tokio::test]
async fn redis_errors_that_are_not_an_outage_are_returned() {
    let prefix = format!("codelab-core-test:{}:", crate::ids::random_hex(6));
    let cache = redis_cache(&prefix).await;
    let ttl = Duration::from_secs(60);
    cache.set_ex("text", "abc", ttl).await.unwrap();
    assert!(matches!(
        cache.incr_ex("text", ttl).await,
        Err(CacheError::Redis(_))
    ));
    assert!(!cache.is_degraded());
    delete_prefix(&cache, &prefix).await;
}

#[tokio::test]
async fn a_full_memory_cache_drops_expired_entries_then_those_expiring_soonest() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let memory = MemoryCache::with_capacity(Arc::new(clock.clone()), 20);
    let cache = Cache::Memory(memory.clone());
    // Twenty keys, key-i living i+1 seconds.
    for i in 0..20u64 {
        cache
            .set_ex(&format!("key-{i}"), "v", Duration::from_secs(i + 1))
            .await
            .unwrap();
    }
    assert_eq!(memory.len(), 20);
    // Rewriting a key that exists never evicts.
    cache
        .set_ex("key-0", "again", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(memory.len(), 20);

    // A new key when full: nothing has expired, so the two expiring soonest (a tenth) go.
    assert_eq!(
        cache
            .incr_ex("new-1", Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(memory.len(), 19);
    for gone in ["key-0", "key-1"] {
        assert_eq!(cache.get(gone).await.unwrap(), None, "{gone}");
    }
    for kept in ["key-2", "key-19", "new-1"] {
        assert!(cache.get(kept).await.unwrap().is_some(), "{kept}");
    }

    // Later, expired entries make the room first: after 10 s key-2..key-9 have expired. new-2
    // fills the last place; new-3 finds the cache full, and only the 8 expired entries go.
    clock.advance(Duration::from_secs(10));
    cache
        .set_ex("new-2", "v", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        cache
            .set_nx_ex("new-3", "v", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(memory.len(), 20 - 8 + 1);
    for kept in ["key-10", "key-19", "new-1", "new-2", "new-3"] {
        assert!(cache.get(kept).await.unwrap().is_some(), "{kept}");
    }
}

#[test]
fn the_memory_capacity_bounds_a_flood_of_distinct_keys() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let memory = MemoryCache::with_capacity(Arc::new(clock), 1000);
    for i in 0..50_000 {
        memory.set_ex(&format!("flood-{i}"), "1", Duration::from_secs(900));
    }
    assert!(memory.len() <= 1000, "{}", memory.len());
    assert_eq!(
        memory.get("flood-49999").as_deref(),
        Some("1"),
        "the newest stays"
    );
}

#[tokio::test]
async fn a_flood_of_single_use_entries_never_evicts_the_limit_counters() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let memory = MemoryCache::with_capacity(Arc::new(clock), 100);
    let cache = Cache::Memory(memory.clone());
    // Counters with the least time left: before the fix, exactly what eviction dropped first.
    for i in 0..10 {
        for _ in 0..3 {
            cache
                .incr_ex(
                    &format!("rate_limit:ip:10.0.0.{i}"),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
    }
    // A flood of distinct single-use entries, each living longer than the counters.
    for i in 0..5_000 {
        assert!(
            cache
                .set_nx_ex(&format!("csrf_used:{i}"), "1", Duration::from_secs(600))
                .await
                .unwrap()
        );
    }
    assert!(memory.len() <= 100, "{}", memory.len());
    for i in 0..10 {
        assert_eq!(
            cache
                .get(&format!("rate_limit:ip:10.0.0.{i}"))
                .await
                .unwrap()
                .as_deref(),
            Some("3"),
            "counter {i} survived the flood"
        );
    }
    assert!(
        cache.get("csrf_used:4999").await.unwrap().is_some(),
        "the newest entry stays"
    );
}

#[test]
fn counters_are_evicted_soonest_first_once_nothing_else_is_left() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let memory = MemoryCache::with_capacity(Arc::new(clock), 10);
    for i in 0..10u64 {
        memory
            .incr_ex(&format!("count-{i}"), Duration::from_secs(100 + i))
            .unwrap();
    }
    memory.set_ex("plain", "v", Duration::from_secs(1_000));
    assert_eq!(memory.len(), 10);
    assert_eq!(
        memory.get("count-0"),
        None,
        "the soonest-expiring counter went"
    );
    assert_eq!(memory.get("count-1").as_deref(), Some("1"));
    assert_eq!(memory.get("plain").as_deref(), Some("v"));
}

/// A private `redis-server` (never the shared one: the test changes its `maxmemory`) on a
/// Unix socket in a temporary directory, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts one and returns once it logs that it accepts connections.
    fn start() -> Self {
        use std::io::BufRead;
        let binary =
            std::env::var_os("CODELAB_TEST_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let mut child = std::process::Command::new(&binary)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {binary:?} ({error}): install redis-server or set \
                     CODELAB_TEST_REDIS_SERVER"
                )
            });
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            // "Ready to accept connections" (TCP) or "... now ready to accept connections at
            // <socket>" (a Unix socket only).
            .any(|line| {
                line.contains("ready to accept connections")
                    || line.contains("Ready to accept connections")
            });
        assert!(ready, "redis-server exited before it was ready");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_full_redis_serves_writes_from_memory_so_limits_keep_counting() {
    let redis = PrivateRedis::start();
    let fallbacks = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let seen = Arc::clone(&fallbacks);
    let cache = connect_cache(Some(&redis.url()), "oom-test:")
        .await
        .unwrap()
        .with_fallback_observer(Arc::new(move |operation| {
            seen.lock().unwrap().push(operation);
        }));
    let ttl = Duration::from_secs(60);
    assert_eq!(cache.incr_ex("rate_limit:ip:1", ttl).await.unwrap(), 1);

    // As deployed (docs/operations.md): noeviction, and now full.
    let Cache::Redis(r) = &cache else {
        unreachable!("a Redis URL gives the Redis variant")
    };
    let mut conn = r.conn.clone();
    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let refused = redis::cmd("SET")
        .arg("oom-test:probe")
        .arg("x")
        .query_async::<()>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("OOM"), "{refused}");

    // Every write still answers, from memory, with its usual meaning: a limit never skips.
    for expected in 1..=5 {
        assert_eq!(
            cache.incr_ex("failed_attempts:user:x", ttl).await.unwrap(),
            expected
        );
    }
    assert!(cache.set_nx_ex("csrf_used:a", "1", ttl).await.unwrap());
    assert!(!cache.set_nx_ex("csrf_used:a", "1", ttl).await.unwrap());
    cache.set_ex("flag", "on", ttl).await.unwrap();
    assert!(cache.is_degraded());

    // Once the retry interval has passed, reads reach Redis again (they are allowed when full)
    // and still see the counts kept in memory.
    r.outage().last_failure = Some(Instant::now() - REDIS_RETRY_INTERVAL);
    assert_eq!(
        cache
            .get("failed_attempts:user:x")
            .await
            .unwrap()
            .as_deref(),
        Some("5")
    );
    assert!(cache.ttl("failed_attempts:user:x").await.unwrap().is_some());
    assert_eq!(
        cache.get("rate_limit:ip:1").await.unwrap().as_deref(),
        Some("1"),
        "what Redis holds is still read from Redis"
    );
    {
        let operations = fallbacks.lock().unwrap();
        assert!(operations.contains(&"incr_ex"), "{operations:?}");
        assert!(operations.contains(&"set_nx_ex"), "{operations:?}");
    }

    // Room again: writes go back to Redis.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    r.outage().last_failure = Some(Instant::now() - REDIS_RETRY_INTERVAL);
    assert_eq!(cache.incr_ex("rate_limit:ip:1", ttl).await.unwrap(), 2);
    assert!(!cache.is_degraded());
}
