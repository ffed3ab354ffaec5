//! PostgreSQL and Redis failing under load, and PostgreSQL missing when the services start.
//! Figures are printed as `faults:` lines (docs/reliability.md, "Faults", quotes them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::free_port;
use crate::load::{Chatter, Outcome, count_between, failure_reasons};
use crate::stack::{Settings, Stack, admin_token};

/// Concurrent clients of the load.
const CLIENTS: usize = 6;
/// Pause of the mock model before each streamed word: a turn streams for about half a second.
const TOKEN_MS: u32 = 60;

/// How long PostgreSQL stays down: longer than a pool waits for a connection (5 s), so the
/// turns in flight cannot just wait it out.
const POSTGRES_OUTAGE: Duration = Duration::from_secs(6);

/// Starts the chatters on the runtime; returns a handle to stop and collect them.
fn run_load(chatters: Vec<Chatter>) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Chatter>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = chatters
        .into_iter()
        .map(|c| tokio::spawn(c.chat_until(Arc::clone(&stop), TOKEN_MS)))
        .collect();
    (stop, handles)
}

async fn stop_load(
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<Chatter>>,
) -> Vec<Chatter> {
    stop.store(true, Ordering::SeqCst);
    let mut chatters = Vec::new();
    for handle in handles {
        chatters.push(
            tokio::time::timeout(Duration::from_secs(120), handle)
                .await
                .expect("a client did not finish its turn")
                .unwrap(),
        );
    }
    chatters
}

/// Every turn that started after `since` completed: the sessions are usable again.
fn assert_usable_since(chatters: &[Chatter], since: Instant) {
    for chatter in chatters {
        let after: Vec<_> = chatter.turns.iter().filter(|t| t.started > since).collect();
        assert!(
            !after.is_empty(),
            "{}: no turn after recovery",
            chatter.session
        );
        for turn in after {
            assert_eq!(
                turn.outcome,
                Outcome::Completed,
                "{}: a turn after recovery failed: {turn:?}",
                chatter.session
            );
        }
    }
}

/// Lets the load run for `time` (it is the load's duration, not a wait for a condition).
async fn load_for(time: Duration) {
    tokio::time::sleep(time).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_and_redis_restart_under_load() {
    let started = Instant::now();
    let postgres = PrivatePostgres::start("127.0.0.1", free_port()).await;
    let mut stack = Stack::start(postgres, Settings::default()).await;
    eprintln!("faults: stack ready in {:?}", started.elapsed());
    let base = stack.url();
    let token = admin_token(&base).await;
    let chatters =
        join_all((0..CLIENTS).map(|i| Chatter::new(&base, &token, format!("c{i}")))).await;

    // 1. PostgreSQL crashes (immediate shutdown) and comes back on the same port.
    let (stop, handles) = run_load(chatters);
    load_for(Duration::from_secs(3)).await;
    let down = Instant::now();
    stack.postgres.stop();
    let services = stack.runtimes.iter_mut().chain([&mut stack.auth]);
    for checks in join_all(services.map(|service| async move { service.ready_is(503).await })).await
    {
        assert_ne!(checks["database"], "ok", "{checks:?}");
    }
    let noticed = down.elapsed();
    // Longer than the pools' 5 s wait for a connection: turns in flight fail, clearly.
    load_for(POSTGRES_OUTAGE.saturating_sub(down.elapsed())).await;
    stack.postgres.start_again().await;
    let up = Instant::now();
    let recovery = stack.all_ready().await;
    let recovered = Instant::now();
    load_for(Duration::from_secs(3)).await;
    let chatters = stop_load(stop, handles).await;
    stack.assert_all_running();
    let (before_ok, before_failed) = count_between(&chatters, started, down);
    let (outage_ok, outage_failed) = count_between(&chatters, down, recovered);
    let (after_ok, after_failed) = count_between(&chatters, recovered, Instant::now());
    eprintln!(
        "faults: postgres restart: readiness said 503 within {noticed:?}; down {:?}; every \
         /ready 200 {recovery:?} after it was back; turns completed/failed before {before_ok}/\
         {before_failed}, from the crash to recovery {outage_ok}/{outage_failed}, after \
         {after_ok}/{after_failed}; reasons {:?}",
        up - down,
        failure_reasons(&chatters)
    );
    for (reason, _) in failure_reasons(&chatters) {
        assert!(
            reason.starts_with("turn_finished failed") || reason.starts_with("error "),
            "not a clear error: {reason}"
        );
    }
    assert_usable_since(&chatters, recovered);
    for chatter in &chatters {
        chatter.assert_history_matches().await;
    }

    // 2. Redis crashes under load and comes back on the same port.
    let (stop, handles) = run_load(chatters);
    load_for(Duration::from_secs(2)).await;
    let down = Instant::now();
    stack.redis.stop();
    for gateway in &mut stack.gateways {
        let checks = gateway.ready_is(503).await;
        assert_ne!(checks["redis"], "ok", "{checks:?}");
    }
    load_for(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    stack.redis.resume().await;
    for service in stack.gateways.iter_mut().chain([&mut stack.auth]) {
        service.ready_is(200).await;
    }
    let recovered = Instant::now();
    load_for(Duration::from_secs(2)).await;
    let chatters = stop_load(stop, handles).await;
    stack.assert_all_running();
    let (outage_ok, outage_failed) = count_between(&chatters, down, recovered);
    let (after_ok, after_failed) = count_between(&chatters, recovered, Instant::now());
    eprintln!(
        "faults: redis restart: down {:?}; turns completed/failed while down {outage_ok}/\
         {outage_failed}, after {after_ok}/{after_failed}",
        recovered - down
    );
    // The documented degradation: each gateway relays its own sockets' events without Redis.
    assert_eq!(outage_failed, 0, "{:?}", failure_reasons(&chatters));
    assert_usable_since(&chatters, recovered);
    for chatter in &chatters {
        chatter.assert_history_matches().await;
    }
    eprintln!("faults: whole test in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_before_postgres_and_become_ready_when_it_appears() {
    let postgres = PrivatePostgres::initdb("127.0.0.1", free_port());
    let mut stack = Stack::spawn(postgres, Settings::default()).await;
    // Up and alive, not ready, naming the database.
    for service in stack.runtimes.iter_mut().chain([&mut stack.auth]) {
        let checks = service.ready_is(503).await;
        let database = checks["database"].as_str().unwrap_or_default().to_owned();
        assert!(database.starts_with("unreachable"), "{checks:?}");
        assert!(!database.contains("password"), "{database}");
        let (status, body) = service.get("/health").await;
        assert_eq!(status, 200, "{body}");
        // Any other route: 503 with Retry-After, not a refused connection.
        let (status, body) = service.get("/sessions").await;
        assert_eq!(status, 503, "{body}");
    }
    stack.postgres.start_again().await;
    let ready_in = stack.all_ready().await;
    eprintln!("faults: postgres appeared; every /ready 200 after {ready_in:?}");
    stack.assert_all_running();
    let base = stack.url();
    let mut chatter = Chatter::new(&base, &admin_token(&base).await, "late".into()).await;
    let turn = chatter.turn(0).await;
    assert_eq!(turn.outcome, Outcome::Completed, "{turn:?}");
    chatter.assert_history_matches().await;
}
