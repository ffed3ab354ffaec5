//! A runtime replica killed with SIGKILL in the middle of a turn while the other replica
//! serves the same PostgreSQL database: the survivor's recovery sweep (settings
//! `AGENT_RUNTIME__RECOVERY_INTERVAL`) finds the turn whose runner died and finishes it, once.

use std::time::{Duration, Instant};

use codelab_testkit::ide_clients::Protocol2Client;
use codelab_testkit::metrics::{metric_sum, scrape};
use codelab_testkit::runtime_history::messages;
use serde_json::Value;

use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::free_port;
use crate::stack::{Settings, Stack, WAIT, admin_token, p2_options, with_token};

/// Words of the reply, one every [`WORD_MS`]: the turn streams for about three seconds.
const WORDS: usize = 20;
const WORD_MS: u32 = 150;

/// GET `path` on a runtime with its internal key, as `user` (the session's owner).
async fn runtime_get(base: &str, key: &str, user: Option<&str>, path: &str) -> Value {
    let mut request = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("X-Internal-Auth", key);
    if let Some(user) = user {
        request = request.header(codelab_protocol::internal::USER_HEADER, user);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_killed_mid_turn_leaves_the_turn_to_the_survivor() {
    let postgres = PrivatePostgres::start("127.0.0.1", free_port()).await;
    let settings = Settings {
        // Sweep every second (60 by default) so the test need not wait a minute.
        runtime: vec![("AGENT_RUNTIME__RECOVERY_INTERVAL", "1".into())],
        ..Settings::default()
    };
    let mut stack = Stack::start(postgres, settings).await;
    let base = stack.url();
    let token = admin_token(&base).await;
    let session = with_token(&base, &token).create_session().await.unwrap().id;
    let reply: Vec<String> = (0..WORDS).map(|i| format!("w{i}")).collect();
    let reply = reply.join(" ");
    let user = format!("::slow {WORD_MS}\n::reply {reply}");

    let mut socket = Protocol2Client::connect(&base, &session, p2_options(&token))
        .await
        .unwrap();
    socket.wait_for_type("session_info").await.unwrap();
    socket.send_user_message(&user).await.unwrap();
    socket
        .wait_for("a delta", |frame| frame.is_delta())
        .await
        .unwrap();

    // The replica running the turn is the one with an active turn.
    let http = reqwest::Client::new();
    let mut owner = None;
    for (i, runtime) in stack.runtimes.iter().enumerate() {
        let active = metric_sum(
            &scrape(&http, &runtime.url).await,
            "codelab_agent_runtime_active_turns",
        );
        if active >= 1.0 {
            owner = Some(i);
        }
    }
    let owner = owner.expect("one runtime runs the turn");
    let survivor = 1 - owner;
    // SIGKILL: no shutdown, no unlock; the kernel closes its connections.
    let killed = Instant::now();
    stack.runtimes[owner].process.kill();

    // The survivor finishes the turn by itself, from the stored state.
    let (url, key) = (
        stack.runtimes[survivor].url.clone(),
        stack.runtime_keys[survivor].clone(),
    );
    let owner_of = format!("/internal/sessions/{session}/owner");
    let owner_id = runtime_get(&url, &key, None, &owner_of).await["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + WAIT;
    let history = loop {
        let history = runtime_get(
            &url,
            &key,
            Some(&owner_id),
            &format!("/sessions/{session}/history"),
        )
        .await;
        if history["active_turn"].is_null() && messages(&history).len() >= 2 {
            break history;
        }
        assert!(Instant::now() < deadline, "never finished: {history}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let finished_after = killed.elapsed();
    assert_eq!(
        messages(&history),
        [
            ("user".to_owned(), user.clone()),
            ("assistant".to_owned(), reply.clone())
        ],
        "the reply is stored exactly once"
    );
    // The client on the dead replica's gateway is told (it does not hang).
    let mut told = Vec::new();
    loop {
        match socket.next_frame().await {
            Ok(frame) => {
                let kind = frame.kind().to_owned();
                if kind == "error" {
                    // The end of the turn, if it comes, follows shortly.
                    socket.set_timeout(Duration::from_secs(1));
                    told.push(format!(
                        "error {}: {}",
                        frame.str("error_code").unwrap_or("?"),
                        frame.content().unwrap_or_default()
                    ));
                }
                if kind == "turn_finished" {
                    told.push(format!("turn_finished {}", frame.outcome().unwrap_or("?")));
                    break;
                }
            }
            Err(error) => {
                told.push(format!("socket: {error}"));
                break;
            }
        }
    }
    eprintln!("faults: the client of the killed replica saw {told:?}");

    let recovered = metric_sum(
        &scrape(&http, &url).await,
        "codelab_agent_runtime_turns_recovered_total",
    );
    assert_eq!(recovered, 1.0, "the survivor resumed the turn");

    // The event log: whole, one final answer, one end (the step ran once to its end).
    let events = runtime_get(
        &url,
        &key,
        Some(&owner_id),
        &format!("/sessions/{session}/events?after=0&limit=1000"),
    )
    .await;
    let events = events["events"].as_array().unwrap().clone();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let of = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(of("turn_finished"), 1, "{events:?}");
    assert_eq!(of("assistant_message"), 1, "{events:?}");
    let outcome = events.iter().rev().find(|e| e["type"] == "turn_finished");
    assert_eq!(outcome.unwrap()["outcome"], "completed");

    // Through nginx: the client resumes after the last event it saw. On the survivor's gateway
    // (the other one is pinned to the dead runtime in this stack and cannot replay) the replay
    // shows the turn the survivor finished, and the session goes on.
    let last_seq = socket.last_seq();
    drop(socket);
    let mut options = p2_options(&token);
    options.last_seq = Some(last_seq);
    let deadline = Instant::now() + WAIT;
    let mut attempts = 0;
    let (replayed_text, next) = loop {
        attempts += 1;
        let attempt = async {
            let mut socket = Protocol2Client::connect(&base, &session, options.clone())
                .await
                .map_err(|e| e.to_string())?;
            let end = socket
                .wait_for("the replayed end", |f| {
                    f.kind() == "turn_finished" || f.kind() == "error"
                })
                .await
                .map_err(|e| e.to_string())?;
            if end.kind() == "error" || end.outcome() != Some("completed") {
                return Err(format!("replay: {:?}", end.0));
            }
            let text = socket
                .frames()
                .iter()
                .rev()
                .find(|f| f.is_final_text())
                .and_then(|f| f.content().map(str::to_owned));
            socket
                .send_user_message("::reply after the crash")
                .await
                .map_err(|e| e.to_string())?;
            let end = socket
                .wait_for_type("turn_finished")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((text, end.outcome().map(str::to_owned)))
        }
        .await;
        match attempt {
            Ok((text, Some(outcome))) if outcome == "completed" => break (text, outcome),
            other => {
                assert!(Instant::now() < deadline, "never usable again: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eprintln!("faults: resumed through nginx after {attempts} connection(s)");
    assert_eq!(replayed_text.as_deref(), Some(reply.as_str()));
    assert_eq!(next, "completed");
    let history = runtime_get(
        &url,
        &key,
        Some(&owner_id),
        &format!("/sessions/{session}/history"),
    )
    .await;
    assert_eq!(
        messages(&history)[1..],
        [
            ("assistant".to_owned(), reply),
            ("user".to_owned(), "::reply after the crash".to_owned()),
            ("assistant".to_owned(), "after the crash".to_owned()),
        ]
    );
    eprintln!(
        "faults: runtime killed mid-turn (step streaming); the survivor finished it {finished_after:?} after the kill"
    );
}
