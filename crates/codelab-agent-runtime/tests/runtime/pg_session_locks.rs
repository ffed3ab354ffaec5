//! PostgreSQL session locks beyond the conformance suite: one holder connection serves every
//! lock of a store (more sessions locked at once than its pool has connections), tasks of one
//! store exclude each other before the server does (advisory locks are re-entrant on their
//! connection), other replicas are kept out, and a lost holder connection is replaced, also
//! when the network to PostgreSQL is cut mid-statement (a blackhole relay).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codelab_agent_runtime::store::{
    RuntimeStore, SessionLock, StoreSettings, open_store, open_store_with,
};
use codelab_core::clock::SystemClock;
use codelab_core::db::{DbOptions, DbPool, connect_database};
use codelab_testkit::TempDatabase;
use futures_util::future::join_all;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// Long enough for a wrongly granted lock to show up, short enough to keep the suite quick.
const STILL_WAITING: Duration = Duration::from_millis(300);
/// A bound on anything that should happen promptly (on two busy cores).
const PROMPTLY: Duration = Duration::from_secs(10);

/// A store as one replica sees the database: a pool of `connections`.
async fn replica(url: &str, options: &DbOptions) -> Arc<dyn RuntimeStore> {
    let pool = connect_database(url, options).await.unwrap();
    assert!(matches!(pool, DbPool::Postgres(_)));
    open_store(pool, Arc::new(SystemClock)).await.unwrap()
}

fn pool_of(connections: u32) -> DbOptions {
    DbOptions {
        max_connections: connections,
        // Well below the default, so a lock waiting for a pool connection would fail here.
        acquire_timeout: Duration::from_secs(2),
        ..DbOptions::default()
    }
}

/// An observer connection on the same database, outside any store.
async fn observer(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

/// Polls `check` until it holds, up to [`PROMPTLY`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polled = timeout(PROMPTLY, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "not within {PROMPTLY:?}: {what}");
}

/// Polls `try_lock_session` until granted, up to [`PROMPTLY`] (a release is queued to the
/// holder connection, so it lands a moment after the guard is dropped).
async fn try_lock_until_granted(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
) -> Box<dyn SessionLock> {
    let polled = timeout(PROMPTLY, async {
        loop {
            if let Some(lock) = store.try_lock_session(session_id).await.unwrap() {
                return lock;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("{session_id} not granted within {PROMPTLY:?}"))
}

/// Regression (the soak, docs/reliability.md): each lock held a pool connection, so turns
/// beyond the pool's size waited its acquire timeout and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_sessions_than_pool_connections_are_locked_at_once() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &pool_of(2)).await;
    let other = replica(&database.url, &pool_of(2)).await;
    let sessions: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();

    let held = timeout(
        PROMPTLY,
        join_all(sessions.iter().map(|id| store.lock_session(id))),
    )
    .await
    .expect("50 locks are granted promptly on a pool of 2");
    let held: Vec<_> = held.into_iter().map(Result::unwrap).collect();

    // Held on the server: the other replica is kept out of every one.
    for id in &sessions {
        assert!(other.try_lock_session(id).await.unwrap().is_none(), "{id}");
    }
    // The store's own queries still get connections.
    store.ping().await.unwrap();

    drop(held);
    for id in &sessions {
        let lock = timeout(PROMPTLY, other.lock_session(id))
            .await
            .expect("released locks are granted to the other replica")
            .unwrap();
        drop(lock);
    }
}

/// Advisory locks are re-entrant on one connection: without this process's own exclusion two
/// tasks would both be granted the session, and unbalanced unlocks would leave it locked to
/// the other replicas for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_of_one_store_exclude_each_other_and_leave_the_session_free() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &DbOptions::default()).await;
    let other = replica(&database.url, &DbOptions::default()).await;

    for round in 0..10 {
        let first = store.lock_session("s1").await.unwrap();
        assert!(store.try_lock_session("s1").await.unwrap().is_none());
        let mut second = tokio::spawn({
            let store = store.clone();
            async move { store.lock_session("s1").await.unwrap() }
        });
        assert!(
            timeout(STILL_WAITING / 3, &mut second).await.is_err(),
            "round {round}: a second task of the store must wait"
        );
        drop(first);
        let second = timeout(PROMPTLY, second)
            .await
            .expect("the waiting task gets the lock once it is dropped")
            .unwrap();
        assert!(other.try_lock_session("s1").await.unwrap().is_none());
        drop(second);
    }

    // Every grant was matched by one unlock: the other replica gets the session.
    let granted = try_lock_until_granted(&other, "s1").await;
    // And keeps it from the first store.
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(granted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replica_is_refused_then_waits_and_a_cancelled_wait_leaves_nothing() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &DbOptions::default()).await;
    let other = replica(&database.url, &DbOptions::default()).await;

    let held = store.lock_session("s1").await.unwrap();
    assert!(other.try_lock_session("s1").await.unwrap().is_none());
    // A wait given up on (while retrying against the server) leaves nothing behind.
    assert!(
        timeout(STILL_WAITING, other.lock_session("s1"))
            .await
            .is_err()
    );
    let mut waiting = tokio::spawn({
        let other = other.clone();
        async move { other.lock_session("s1").await.unwrap() }
    });
    assert!(timeout(STILL_WAITING, &mut waiting).await.is_err());
    drop(held);
    let granted = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiting replica gets the lock after the release")
        .unwrap();
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(granted);
    let back = timeout(PROMPTLY, store.lock_session("s1"))
        .await
        .expect("the first replica gets it back")
        .unwrap();
    drop(back);
}

/// PostgreSQL restarted or the network cut: the holder connection's locks are gone on the
/// server (as a lock's own connection breaking released it before), and the next lock opens a
/// new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_lock_connection_releases_its_locks_and_is_replaced() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &DbOptions::default()).await;
    let other = replica(&database.url, &DbOptions::default()).await;
    let observer = observer(&database.url).await;

    let held = store.lock_session("s1").await.unwrap();
    let holders: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&observer)
    .await
    .unwrap();
    assert_eq!(holders.len(), 1, "one connection holds the store's locks");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holders[0])
        .fetch_one(&observer)
        .await
        .unwrap();
    assert!(terminated);

    // The lost connection's lock is free for another replica.
    let taken = try_lock_until_granted(&other, "s1").await;
    // The store locks again on a new connection (the broken one is found out on first use).
    let s2 = timeout(PROMPTLY, store.lock_session("s2"))
        .await
        .expect("a lock after the connection was lost")
        .unwrap();
    assert!(other.try_lock_session("s2").await.unwrap().is_none());
    // The old guard's release neither fails nor touches the new connection's locks.
    drop(held);
    drop(taken);
    assert!(other.try_lock_session("s2").await.unwrap().is_none());
    drop(s2);
}

/// Regression (the soak): the lock connection closes once no lock has been held for the
/// pool's idle timeout, like the store's own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lock_connection_closes_when_idle() {
    let database = TempDatabase::postgres("runtime_locks");
    let options = DbOptions {
        idle_timeout: Duration::from_secs(1),
        ..DbOptions::default()
    };
    let store = replica(&database.url, &options).await;
    let observer = observer(&database.url).await;
    let open_elsewhere = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&observer)
        .await
        .unwrap()
    };

    let held = store.lock_session("s1").await.unwrap();
    // Held locks keep the connection, whatever the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(open_elsewhere().await >= 1);
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(held);
    eventually("every connection of the store closes when idle", || async {
        open_elsewhere().await == 0
    })
    .await;
    // And the next lock opens it again.
    let again = timeout(PROMPTLY, store.lock_session("s1"))
        .await
        .expect("a lock after the idle close")
        .unwrap();
    drop(again);
}

// ---------------------------------------------------------------------------------------------
// The network cut mid-statement
// ---------------------------------------------------------------------------------------------

/// The bound on each holder statement of the store behind the relay (the default is 5 s).
const LOCK_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// What a lock may take at most with the network cut: the bound, or a connect's timeout (the
/// pool's acquire timeout), with a wide margin for two busy cores. The test fails here
/// instead of hanging for TCP's own timeouts.
const RETURNS_WITHIN: Duration = Duration::from_secs(30);

/// A TCP relay to the test PostgreSQL server that can stop every byte, both ways, without
/// closing a socket: a cut network as both ends see it until TCP gives up (many minutes).
/// Nothing passes during a cut, a connection's end included (codelab_testkit's relay lets
/// that through); new connections are accepted but reach the server only after the heal.
struct Blackhole {
    /// The test database's URL through the relay.
    url: String,
    link: watch::Sender<Link>,
    accepted: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Link {
    cut: bool,
    /// Connections accepted before this number stay cut for good.
    dead_before: u64,
}

impl Link {
    fn open_for(&self, connection: u64) -> bool {
        !self.cut && connection >= self.dead_before
    }
}

impl Blackhole {
    async fn start(database_url: &str) -> Blackhole {
        let mut url = reqwest::Url::parse(database_url).unwrap();
        let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        let (link, watching) = watch::channel(Link::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let accepting = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                // Dropped with this task: aborting it ends every connection.
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(relay(number, client, target.clone(), watching.clone()));
                }
            }
        });
        Blackhole {
            url: url.to_string(),
            link,
            accepted,
            accepting,
        }
    }

    fn cut(&self) {
        self.link.send_modify(|link| link.cut = true);
    }

    /// Bytes flow again on every connection, the held ones first (TCP's retransmission).
    fn heal(&self) {
        self.link.send_modify(|link| link.cut = false);
    }

    /// Bytes flow on new connections only; the old ones stay silent: a peer that gave up
    /// during the cut and whose goodbye was lost, so the server never hears of it.
    fn heal_new_connections_only(&self) {
        let accepted = self.accepted.load(Ordering::SeqCst);
        self.link.send_modify(|link| {
            link.cut = false;
            link.dead_before = accepted;
        });
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Waits until `connection` may pass bytes; `false` when the relay is gone.
async fn passable(connection: u64, link: &mut watch::Receiver<Link>) -> bool {
    link.wait_for(|link| link.open_for(connection))
        .await
        .is_ok()
}

async fn relay(
    connection: u64,
    client: TcpStream,
    target: String,
    mut link: watch::Receiver<Link>,
) {
    if !passable(connection, &mut link).await {
        return;
    }
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(connection, client_read, server_write, link.clone()),
        pump(connection, server_read, client_write, link)
    );
}

async fn pump(
    connection: u64,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !passable(connection, &mut link).await {
            return;
        }
        let read = from.read(&mut buffer).await;
        // What was read as the cut began (bytes or the end) is held until the heal.
        if !passable(connection, &mut link).await {
            return;
        }
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Locks `session_id`, asking again while the database is unavailable (a failed connect
/// fails the locks of the next second at once), up to [`PROMPTLY`].
async fn lock_once_reachable(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
) -> Box<dyn SessionLock> {
    let polled = timeout(PROMPTLY, async {
        loop {
            match store.lock_session(session_id).await {
                Ok(lock) => return lock,
                Err(error) if error.is_unavailable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("locking {session_id}: {error}"),
            }
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("{session_id} not locked within {PROMPTLY:?} of the heal"))
}

/// The network to PostgreSQL is cut while the store's holder connection holds `s1`; the
/// next lock statement gets no answer. Then the network heals, with the old connections
/// resuming or not.
async fn a_holder_connection_cut_mid_statement(old_connections_resume: bool) {
    let database = TempDatabase::postgres("runtime_locks");
    // Another replica, reaching the server directly; it also creates the database.
    let other = replica(&database.url, &DbOptions::default()).await;
    let relay = Blackhole::start(&database.url).await;
    let options = DbOptions {
        // Bounds the holder's connects.
        acquire_timeout: Duration::from_secs(3),
        ..DbOptions::default()
    };
    let pool = connect_database(&relay.url, &options).await.unwrap();
    let settings = StoreSettings {
        session_lock_statement_timeout: LOCK_STATEMENT_TIMEOUT,
    };
    let store = open_store_with(pool, Arc::new(SystemClock), settings)
        .await
        .unwrap();

    let before_cut = store.lock_session("s1").await.unwrap();
    assert!(other.try_lock_session("s1").await.unwrap().is_none());

    relay.cut();
    let cut_off = timeout(RETURNS_WITHIN, store.lock_session("s2"))
        .await
        .expect("a lock on a connection cut mid-statement returns instead of hanging");
    let error = cut_off.err().expect("a lock without an answer fails");
    assert!(error.is_unavailable(), "{error}");
    assert!(
        error
            .to_string()
            .contains("AGENT_RUNTIME__SESSION_LOCK_STATEMENT_TIMEOUT"),
        "{error}"
    );
    // The next lock does not queue behind the cut connection: it tries a new one, whose
    // connect gets no answer either.
    let next = timeout(RETURNS_WITHIN, store.try_lock_session("s3"))
        .await
        .expect("a lock during the cut returns instead of hanging");
    assert!(next.as_ref().is_err_and(|error| error.is_unavailable()));
    // The cut is real: the server has heard of nothing and still holds s1 for the store.
    assert!(other.try_lock_session("s1").await.unwrap().is_none());

    if old_connections_resume {
        relay.heal();
    } else {
        relay.heal_new_connections_only();
    }

    // Locks work again, on a new holder connection.
    let s2 = lock_once_reachable(&store, "s2").await;
    assert!(other.try_lock_session("s2").await.unwrap().is_none());
    // The session locked before the cut is free on the server: another replica gets it.
    let taken = try_lock_until_granted(&other, "s1").await;
    // The old guard still keeps the store's own tasks out, as after any lost connection.
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(taken);
    // Its release went with the lost connection: it touches nothing of the new one.
    drop(before_cut);
    assert!(other.try_lock_session("s2").await.unwrap().is_none());
    // And the store's holder locks s1 again, keeping the other replica out.
    let again = timeout(PROMPTLY, store.lock_session("s1"))
        .await
        .expect("s1 is locked again after the heal")
        .unwrap();
    assert!(other.try_lock_session("s1").await.unwrap().is_none());
    drop(again);
    drop(s2);
}

/// Without a bound, the lock statement waits for TCP's timeouts (many minutes) and every lock
/// of the runtime queues behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_cut_off_by_the_network_fails_within_the_bound_and_locks_work_after_the_heal() {
    a_holder_connection_cut_mid_statement(true).await;
}

/// The server may never hear that the holder gave up on its connection (the goodbye lost in
/// the cut): until its TCP keepalive (two hours by default) the old session would keep its
/// locks from every replica, so the new holder connection ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_of_a_cut_off_connection_are_freed_though_the_server_never_hears_of_the_cut() {
    a_holder_connection_cut_mid_statement(false).await;
}
