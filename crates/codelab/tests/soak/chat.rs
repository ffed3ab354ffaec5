//! One soak session: an IDE (the Flutter replica or a protocol-2 client) that chats until the
//! load ends, with the mock model's directives choosing each turn (a plain reply, a tool the
//! IDE runs at once, a `write_file` that needs approval, approved on the socket, over REST or
//! in the IDE, or refused), and that drops its socket at random (a seeded RNG) at the points
//! where each client resumes: the protocol-2 client in the middle of a streamed reply or of an
//! approval (resumed by `last_seq`), the Flutter IDE while an approval waits (restored over
//! REST) or between turns. It records what it saw, in order, for the comparison with the
//! stored history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use codelab_testkit::ide_clients::steps::ran;
use codelab_testkit::ide_clients::{
    Bubble, FlutterReplicaClient, FlutterSocket, Protocol2Client, Protocol2Options, Role,
    TokenPlacement,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

/// What a client saw of a session, one entry per stored message it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    User(String),
    /// A tool call (id, tool).
    Call(String, String),
    /// The result (or refusal) of a call, by id.
    Result(String),
    Assistant(String),
}

/// A session's record at the end of the load.
#[derive(Debug, Default)]
pub struct Record {
    pub session: String,
    pub profile: &'static str,
    pub seen: Vec<Seen>,
    /// Each call's expected final status (`succeeded`, `rejected`).
    pub settled: BTreeMap<String, &'static str>,
    /// Per completed turn, send to end.
    pub turn_times: Vec<Duration>,
    pub reconnects: u32,
    /// Calls a resumed protocol-2 socket was sent again after the client had answered them.
    pub resent_calls: u32,
    /// Error frames, failed requests, duplicated events: anything that must not happen.
    pub failures: Vec<String>,
}

/// What the soak does with sessions.
#[derive(Debug, Clone)]
pub struct Plan {
    /// For REST approvals: one client, its connections kept alive, as an IDE's.
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub until: Instant,
    /// Mean pause between turns.
    pub think: Duration,
    /// Chance that a turn drops its socket at a resumable point.
    pub drop_chance: f64,
    pub timeout: Duration,
}

/// The kind of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Reply,
    /// `read_file`: no approval.
    Read,
    /// `write_file` approved: in the IDE / on the socket (Flutter sends the result, protocol 2
    /// a `hitl_decision`), or over REST.
    WriteApproved {
        over_rest: bool,
    },
    /// `write_file` refused (Flutter) or rejected (protocol 2).
    WriteRefused,
}

fn pick_turn(rng: &mut StdRng) -> Turn {
    match rng.random_range(0..100) {
        0..30 => Turn::Reply,
        30..55 => Turn::Read,
        55..70 => Turn::WriteApproved { over_rest: false },
        70..85 => Turn::WriteApproved { over_rest: true },
        _ => Turn::WriteRefused,
    }
}

/// The user message of turn `n` of session `tag`.
fn message(turn: Turn, tag: &str, n: u32, slow: bool) -> String {
    let slow = if slow { "::slow 3\n" } else { "" };
    match turn {
        Turn::Reply => format!("{slow}::reply soak {tag} turn {n} alpha beta gamma delta epsilon"),
        Turn::Read => format!(r#"::tool read_file {{"path":"{tag}-{n}.py"}}"#),
        Turn::WriteApproved { .. } | Turn::WriteRefused => {
            format!(r#"::tool write_file {{"path":"{tag}-{n}.md","content":"turn {n}"}}"#)
        }
    }
}

/// The user approves `call_id` over REST (`POST /api/v1/sessions/{id}/approvals/{call_id}`),
/// as an IDE on another gateway would.
async fn approve_over_rest(plan: &Plan, session: &str, call_id: &str) -> Result<(), String> {
    let response = plan
        .http
        .post(format!(
            "{}/api/v1/sessions/{session}/approvals/{call_id}",
            plan.base
        ))
        .bearer_auth(&plan.token)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .map_err(|e| format!("approval over REST: {e}"))?;
    if response.status() == 200 {
        Ok(())
    } else {
        Err(format!(
            "approval over REST: {} {:?}",
            response.status(),
            response.text().await
        ))
    }
}

async fn think(rng: &mut StdRng, plan: &Plan) {
    let mean = plan.think.as_millis() as u64;
    if mean > 0 {
        let pause = rng.random_range(0..=2 * mean);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Flutter
// ---------------------------------------------------------------------------------------------

/// A Flutter IDE on a new session, chatting until `plan.until`.
pub async fn flutter_session(index: usize, seed: u64, plan: Plan) -> Record {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = FlutterReplicaClient::new(&plan.base).with_timeout(plan.timeout);
    client.set_access_token(&plan.token);
    let mut record = Record {
        profile: "flutter",
        ..Record::default()
    };
    let session = match client.create_session().await {
        Ok(session) => session.id,
        Err(e) => {
            record.failures.push(format!("create session: {e}"));
            return record;
        }
    };
    record.session = session.clone();
    let tag = format!("f{index}");
    let mut socket = match client.connect(&session).await {
        Ok(socket) => socket,
        Err(e) => {
            record.failures.push(format!("connect: {e}"));
            return record;
        }
    };
    let mut n = 0;
    while Instant::now() < plan.until {
        n += 1;
        let turn = pick_turn(&mut rng);
        let drop = rng.random_bool(plan.drop_chance);
        let started = Instant::now();
        let text = message(turn, &tag, n, false);
        let outcome = flutter_turn(
            &client,
            &mut socket,
            &session,
            &text,
            turn,
            drop,
            &plan,
            &mut record,
        )
        .await;
        match outcome {
            Ok(()) => record.turn_times.push(started.elapsed()),
            Err(e) => {
                record.failures.push(format!("turn {n} ({turn:?}): {e}"));
                return record;
            }
        }
        if rng.random_bool(plan.drop_chance) {
            // Between turns: the IDE lost its network and comes back.
            socket = match reconnect_flutter(&client, socket, &session, &mut record).await {
                Ok(socket) => socket,
                Err(e) => {
                    record.failures.push(e);
                    return record;
                }
            };
        }
        think(&mut rng, &plan).await;
    }
    flutter_check_frames(&socket, &mut record);
    socket.close().await;
    record
}

async fn reconnect_flutter(
    client: &FlutterReplicaClient,
    socket: FlutterSocket,
    session: &str,
    record: &mut Record,
) -> Result<FlutterSocket, String> {
    flutter_check_frames(&socket, record);
    socket.abort();
    record.reconnects += 1;
    client
        .connect(session)
        .await
        .map_err(|e| format!("reconnect: {e}"))
}

/// Every frame parsed and was understood; none was an error.
fn flutter_check_frames(socket: &FlutterSocket, record: &mut Record) {
    for (raw, error) in socket.parse_errors() {
        record
            .failures
            .push(format!("unparsable frame {raw}: {error}"));
    }
    for kind in socket.unknown_types() {
        record.failures.push(format!("unknown frame type {kind}"));
    }
}

#[expect(clippy::too_many_arguments, reason = "one turn's whole context")]
async fn flutter_turn(
    client: &FlutterReplicaClient,
    socket: &mut FlutterSocket,
    session: &str,
    text: &str,
    turn: Turn,
    drop: bool,
    plan: &Plan,
    record: &mut Record,
) -> Result<(), String> {
    socket
        .send_user_message(text)
        .await
        .map_err(|e| format!("send: {e}"))?;
    record.seen.push(Seen::User(text.to_owned()));
    let mut calls: BTreeSet<String> = BTreeSet::new();
    let mut dropped = false;
    loop {
        let frame = socket.next_frame().await.map_err(|e| format!("{e}"))?;
        match &frame.bubble {
            Some(Bubble::ToolCall(call)) => {
                if calls.insert(call.call_id.clone()) {
                    record
                        .seen
                        .push(Seen::Call(call.call_id.clone(), call.tool_name.clone()));
                }
                if !call.requires_approval {
                    run_in_ide(socket, &call.call_id, &call.tool_name, record).await?;
                    continue;
                }
                if drop && !dropped {
                    // The IDE dies with the approval dialog open and comes back: the pending
                    // approval is restored over REST.
                    dropped = true;
                    let old = std::mem::replace(
                        socket,
                        client
                            .connect(session)
                            .await
                            .map_err(|e| format!("reconnect: {e}"))?,
                    );
                    flutter_check_frames(&old, record);
                    old.abort();
                    record.reconnects += 1;
                    let pending = client
                        .pending_approvals(session)
                        .await
                        .map_err(|e| format!("pending approvals: {e}"))?;
                    if !pending
                        .pending_approvals
                        .iter()
                        .any(|p| p.call_id == call.call_id)
                    {
                        return Err(format!(
                            "{} not pending after reconnect: {pending:?}",
                            call.call_id
                        ));
                    }
                }
                match turn {
                    Turn::WriteRefused => {
                        socket
                            .send_refusal(&call.call_id, &call.tool_name)
                            .await
                            .map_err(|e| format!("refuse: {e}"))?;
                        record.seen.push(Seen::Result(call.call_id.clone()));
                        record.settled.insert(call.call_id.clone(), "rejected");
                    }
                    Turn::WriteApproved { over_rest: true } => {
                        approve_over_rest(plan, session, &call.call_id).await?;
                        // The call comes again without `requires_approval`: run it then.
                    }
                    _ => run_in_ide(socket, &call.call_id, &call.tool_name, record).await?,
                }
            }
            Some(Bubble::Error { message }) => return Err(format!("error frame: {message}")),
            Some(Bubble::Text {
                role: Role::Assistant,
                text,
                is_final: true,
            }) if frame.kind() == Some("assistant_message") => {
                record.seen.push(Seen::Assistant(text.clone()));
                return Ok(());
            }
            _ => {}
        }
    }
}

async fn run_in_ide(
    socket: &mut FlutterSocket,
    call_id: &str,
    tool: &str,
    record: &mut Record,
) -> Result<(), String> {
    socket
        .send_tool_result(call_id, tool, ran(&format!("ran {call_id}")))
        .await
        .map_err(|e| format!("tool result: {e}"))?;
    record.seen.push(Seen::Result(call_id.to_owned()));
    record.settled.insert(call_id.to_owned(), "succeeded");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Protocol 2
// ---------------------------------------------------------------------------------------------

/// A protocol-2 socket and how many of its frames were checked already.
struct P2 {
    client: Protocol2Client,
    checked: usize,
}

impl P2 {
    /// Error frames and events delivered twice (by `seq`, across connections) among the
    /// frames not checked yet.
    fn check(&mut self, seqs: &mut BTreeSet<u64>, record: &mut Record) {
        for frame in &self.client.frames()[self.checked..] {
            if frame.kind() == "error" {
                record.failures.push(format!("error frame: {:?}", frame.0));
            }
            if let Some(seq) = frame.seq()
                && !seqs.insert(seq)
            {
                record
                    .failures
                    .push(format!("seq {seq} delivered twice: {:?}", frame.0));
            }
        }
        self.checked = self.client.frames().len();
    }

    /// Drops the connection without a close and resumes after the last `seq` seen.
    async fn resume(self, seqs: &mut BTreeSet<u64>, record: &mut Record) -> Result<P2, String> {
        let mut this = self;
        this.check(seqs, record);
        let point = this.client.abort();
        record.reconnects += 1;
        let client = point.resume().await.map_err(|e| format!("resume: {e}"))?;
        Ok(P2 { client, checked: 0 })
    }
}

/// A protocol-2 client on a new session, chatting until `plan.until`.
pub async fn protocol2_session(index: usize, seed: u64, plan: Plan) -> Record {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rest = FlutterReplicaClient::new(&plan.base).with_timeout(plan.timeout);
    rest.set_access_token(&plan.token);
    let mut record = Record {
        profile: "protocol2",
        ..Record::default()
    };
    let session = match rest.create_session().await {
        Ok(session) => session.id,
        Err(e) => {
            record.failures.push(format!("create session: {e}"));
            return record;
        }
    };
    record.session = session.clone();
    let placement = if index.is_multiple_of(2) {
        TokenPlacement::Query
    } else {
        TokenPlacement::Header
    };
    let options = Protocol2Options {
        timeout: plan.timeout,
        ..Protocol2Options::default()
    }
    .with_token(&plan.token, placement);
    let client = match Protocol2Client::connect(&plan.base, &session, options).await {
        Ok(client) => client,
        Err(e) => {
            record.failures.push(format!("connect: {e}"));
            return record;
        }
    };
    let mut socket = P2 { client, checked: 0 };
    let tag = format!("p{index}");
    let mut seqs = BTreeSet::new();
    let mut n = 0;
    while Instant::now() < plan.until {
        n += 1;
        let turn = pick_turn(&mut rng);
        let drop = rng.random_bool(plan.drop_chance);
        let text = message(turn, &tag, n, drop && turn == Turn::Reply);
        let started = Instant::now();
        let outcome = p2_turn(
            socket,
            &session,
            &text,
            turn,
            drop,
            &plan,
            &mut seqs,
            &mut record,
        )
        .await;
        match outcome {
            Ok(next) => {
                socket = next;
                record.turn_times.push(started.elapsed());
            }
            Err(e) => {
                record.failures.push(format!("turn {n} ({turn:?}): {e}"));
                return record;
            }
        }
        think(&mut rng, &plan).await;
    }
    socket.check(&mut seqs, &mut record);
    socket.client.close().await;
    record
}

#[expect(clippy::too_many_arguments, reason = "one turn's whole context")]
async fn p2_turn(
    mut socket: P2,
    session: &str,
    text: &str,
    turn: Turn,
    drop: bool,
    plan: &Plan,
    seqs: &mut BTreeSet<u64>,
    record: &mut Record,
) -> Result<P2, String> {
    socket
        .client
        .send_json(&json!({"type": "user_message", "content": text, "role": "user"}))
        .await
        .map_err(|e| format!("send: {e}"))?;
    record.seen.push(Seen::User(text.to_owned()));
    let mut calls: BTreeSet<String> = BTreeSet::new();
    let mut awaiting_decision: Option<String> = None;
    let mut answered = false;
    let mut dropped = false;
    loop {
        let frame = socket
            .client
            .next_frame()
            .await
            .map_err(|e| format!("{e}"))?;
        match frame.kind() {
            "error" => return Err(format!("error frame: {:?}", frame.0)),
            "tool_call" => {
                let call_id = frame.call_id().unwrap_or_default().to_owned();
                let tool = frame.str("tool_name").unwrap_or_default().to_owned();
                if calls.insert(call_id.clone()) {
                    record.seen.push(Seen::Call(call_id.clone(), tool.clone()));
                }
                if frame.requires_approval() {
                    awaiting_decision = Some(call_id);
                } else if record.settled.contains_key(&call_id) {
                    // Sent again to a resumed socket before the runtime had taken the result
                    // in: answered already, so not again (the stored history shows one result).
                    record.resent_calls += 1;
                } else {
                    let result = json!({"success": true, "content": format!("ran {call_id}")});
                    socket
                        .client
                        .send_tool_result(&call_id, &tool, result)
                        .await
                        .map_err(|e| format!("tool result: {e}"))?;
                    record.seen.push(Seen::Result(call_id.clone()));
                    record.settled.insert(call_id, "succeeded");
                }
            }
            "assistant_message" if frame.is_final_text() => {
                let text = frame.content().unwrap_or_default().to_owned();
                record.seen.push(Seen::Assistant(text));
                answered = true;
            }
            "assistant_message" if frame.is_delta() && drop && !dropped => {
                // Off the network in the middle of the reply; back by `last_seq`.
                dropped = true;
                socket = socket.resume(seqs, record).await?;
            }
            "turn_finished" => match frame.outcome() {
                Some("completed") if answered => {
                    socket.check(seqs, record);
                    return Ok(socket);
                }
                Some("awaiting_tools") => {
                    let Some(call_id) = awaiting_decision.take() else {
                        continue;
                    };
                    if drop && !dropped {
                        dropped = true;
                        socket = socket.resume(seqs, record).await?;
                    }
                    decide(&mut socket.client, session, &call_id, turn, plan, record).await?;
                }
                other => return Err(format!("turn finished {other:?}: {:?}", frame.0)),
            },
            _ => {}
        }
    }
}

/// The user's decision on a call that needs approval: rejected on the socket, approved over
/// REST, or approved on the socket.
async fn decide(
    client: &mut Protocol2Client,
    session: &str,
    call_id: &str,
    turn: Turn,
    plan: &Plan,
    record: &mut Record,
) -> Result<(), String> {
    match turn {
        Turn::WriteRefused => {
            client
                .send_hitl_decision(call_id, "reject", None, Some("not now"))
                .await
                .map_err(|e| format!("reject: {e}"))?;
            record.seen.push(Seen::Result(call_id.to_owned()));
            record.settled.insert(call_id.to_owned(), "rejected");
        }
        Turn::WriteApproved { over_rest: true } => {
            approve_over_rest(plan, session, call_id).await?;
        }
        _ => client
            .send_hitl_decision(call_id, "approve", None, None)
            .await
            .map_err(|e| format!("approve: {e}"))?,
    }
    Ok(())
}
