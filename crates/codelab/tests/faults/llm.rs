//! An LLM provider failing (codelab_testkit::fake_llm speaking OpenAI's wire format behind the
//! proxy's `openai/` route): it stalls, resets the connection mid-stream, answers 429 with
//! `Retry-After`, or sends a malformed event. Each time the client gets a clear error and its
//! next turn works; afterwards nothing is left open: the proxy's in-flight streams gauge is 0,
//! the fake has no stream in flight, and the open file descriptors of the proxy and the
//! runtimes are back to what they were after a first normal turn.

use std::time::{Duration, Instant};

use codelab_testkit::fake_llm::{FakeFlavor, FakeLlm, FakeReply};

use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::free_port;
use crate::load::{Chatter, Outcome, Turn};
use crate::stack::{Service, Settings, Stack, admin_token};

/// The proxy's wait for a first byte and between two pieces (`LLM_PROXY__REQUEST_TIMEOUT`).
const PROVIDER_TIMEOUT_SECS: u64 = 2;

/// Open file descriptors of a service's process.
fn open_fds(service: &Service) -> usize {
    let pid = service.process.id().expect("running");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `codelab_llm_proxy_inflight_streams` from the proxy's `/metrics`.
async fn inflight_streams(proxy: &Service) -> f64 {
    let (_, metrics) = proxy.get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("codelab_llm_proxy_inflight_streams "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A normal turn answered by the fake: it must complete.
async fn normal_turn(chatter: &mut Chatter, fake: &FakeLlm, words: &str) -> Turn {
    let pieces: Vec<&str> = words.split_inclusive(' ').collect();
    fake.push_reply(FakeReply::text(&pieces));
    let turn = chatter
        .say(format!("please say {words}"), words.to_owned())
        .await;
    assert_eq!(turn.outcome, Outcome::Completed, "{turn:?}");
    turn
}

/// A turn the fake answers with a fault: the client must see a clear error.
async fn failing_turn(chatter: &mut Chatter, fake: &FakeLlm, fault: &str) -> (String, Duration) {
    let turn = chatter
        .say(format!("fault {fault}"), "never completes".to_owned())
        .await;
    let took = turn.ended - turn.started;
    let Outcome::Failed(error) = turn.outcome else {
        panic!("{fault}: the turn completed: {turn:?}");
    };
    assert!(!error.starts_with("socket"), "{fault}: {error}");
    assert_eq!(
        fake.pending_replies(),
        0,
        "{fault}: the scripted replies were not all used"
    );
    (error, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_gives_clear_errors_and_leaks_nothing() {
    let fake = FakeLlm::start(FakeFlavor::OpenAi).await;
    let postgres = PrivatePostgres::start("127.0.0.1", free_port()).await;
    let settings = Settings {
        proxy: vec![
            ("OPENAI_API_BASE", fake.openai_base()),
            ("OPENAI_API_KEY", "sk-fake-key".to_owned()),
            (
                "LLM_PROXY__REQUEST_TIMEOUT",
                PROVIDER_TIMEOUT_SECS.to_string(),
            ),
            // One retry: a 429 is retried once after its Retry-After, then reported.
            ("LLM_PROXY__MAX_RETRIES", "1".to_owned()),
        ],
        runtime: vec![
            ("AGENT_RUNTIME__LLM_MODEL", "openai/gpt-4o-mini".to_owned()),
            // One model call per step: no routing call that would take a scripted reply.
            ("AGENT_RUNTIME__MULTI_AGENT_MODE", "false".to_owned()),
        ],
    };
    let stack = Stack::start(postgres, settings).await;
    let base = stack.url();
    let mut chatter = Chatter::new(&base, &admin_token(&base).await, "llm".into()).await;
    normal_turn(&mut chatter, &fake, "warm up").await;
    let fds_before: Vec<usize> = [&stack.proxy, &stack.runtimes[0], &stack.runtimes[1]]
        .iter()
        .map(|s| open_fds(s))
        .collect();

    let stall = FakeReply::text(&["late"]).with_first_byte_delay(Duration::from_secs(60));
    let reset = FakeReply::text(&["one ", "two ", "three ", "four"]).disconnect_after(2);
    let too_many = FakeReply::status(429).with_retry_after(1);
    let malformed = FakeReply::text(&["one ", "two"])
        .with_malformed_chunk(2, "data: {\"choices\":[{\"delta\":{\"content\":\n\n");
    // The fault answers every request of the turn (the proxy's retry, the runtime's).
    let faults = [
        ("stall", stall),
        ("reset mid-stream", reset),
        ("429 with Retry-After", too_many),
        ("malformed SSE", malformed),
    ];
    for (fault, reply) in faults {
        let requests = fake.request_count();
        fake.set_default_reply(reply);
        let (error, took) = failing_turn(&mut chatter, &fake, fault).await;
        fake.set_default_reply(FakeReply::text(&["unexpected"]));
        eprintln!(
            "faults: provider {fault}: the client saw {error:?} after {took:?} ({} upstream \
             requests)",
            fake.request_count() - requests
        );
        // The session stays usable.
        normal_turn(&mut chatter, &fake, &format!("after {fault}")).await;
    }

    // Nothing left open: the gauge, the fake's streams, the processes' descriptors.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inflight = inflight_streams(&stack.proxy).await;
        let fds_after: Vec<usize> = [&stack.proxy, &stack.runtimes[0], &stack.runtimes[1]]
            .iter()
            .map(|s| open_fds(s))
            .collect();
        // A pooled keep-alive connection more or less is not a leak.
        let settled = inflight == 0.0
            && fake.active_streams() == 0
            && fds_after.iter().zip(&fds_before).all(|(a, b)| *a <= b + 2);
        if settled {
            eprintln!(
                "faults: provider faults left nothing open: inflight streams {inflight}, fake \
                 streams active {}, fds (proxy, runtime 1, runtime 2) before {fds_before:?} \
                 after {fds_after:?}; fake streams completed/cancelled/aborted {}/{}/{}",
                fake.active_streams(),
                fake.completed_streams(),
                fake.cancelled_streams(),
                fake.aborted_streams()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still open: inflight {inflight}, fake active {}, fds {fds_before:?} -> {fds_after:?}",
            fake.active_streams()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    chatter.assert_history_matches().await;
}
