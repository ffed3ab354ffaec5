//! Load while a dependency fails: protocol-2 clients, one session each, chatting turn after
//! turn through nginx (the mock model streams a known reply slowly, so turns are in flight when
//! the fault hits). Each turn ends completed (the whole reply seen, then
//! `turn_finished{completed}`) or failed (an `error` frame, `turn_finished{failed}`, or the
//! socket lost); a lost socket is opened again. Afterwards the stored history of every session
//! is compared with what its client saw acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use codelab_testkit::ide_clients::{P2Frame, Protocol2Client};

use crate::stack::{WAIT, p2_options, with_token};

/// How a turn ended for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The whole reply, then `turn_finished{completed}`.
    Completed,
    /// A clear error (its text), or the socket lost.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Turn {
    pub user: String,
    pub reply: String,
    pub outcome: Outcome,
    pub started: Instant,
    pub ended: Instant,
}

/// One client with its session.
pub struct Chatter {
    base: String,
    token: String,
    pub session: String,
    socket: Option<Protocol2Client>,
    pub turns: Vec<Turn>,
    pub reconnects: u32,
    name: String,
    next: u32,
}

/// Reads frames until `turn_finished`; the final text seen and how the turn ended. An `error`
/// frame ends the turn when no `turn_finished` follows it within a few seconds (an error about
/// the frame itself starts no turn).
async fn read_turn(socket: &mut Protocol2Client) -> Result<(Option<String>, Outcome), String> {
    let mut text = None;
    let mut error: Option<String> = None;
    loop {
        let frame: P2Frame = match socket.next_frame().await {
            Ok(frame) => frame,
            Err(e) => {
                socket.set_timeout(WAIT);
                return match error {
                    Some(error) => Ok((text, Outcome::Failed(error))),
                    None => Err(format!("socket: {e}")),
                };
            }
        };
        match frame.kind() {
            "assistant_message" if frame.is_final_text() => {
                text = frame.content().map(str::to_owned);
            }
            "error" => {
                error = Some(format!(
                    "error {}: {}",
                    frame.str("error_code").unwrap_or("?"),
                    frame.content().unwrap_or_default()
                ));
                // Short wait for the turn's end.
                socket.set_timeout(Duration::from_secs(3));
            }
            "turn_finished" => {
                socket.set_timeout(WAIT);
                let outcome = match frame.outcome() {
                    Some("completed") => Outcome::Completed,
                    other => Outcome::Failed(format!(
                        "turn_finished {}{}",
                        other.unwrap_or("?"),
                        error.map(|e| format!(" after {e}")).unwrap_or_default()
                    )),
                };
                return Ok((text, outcome));
            }
            _ => {}
        }
    }
}

impl Chatter {
    /// A new session through `base` for the holder of `token`, with `name` in every message.
    pub async fn new(base: &str, token: &str, name: String) -> Chatter {
        let client = with_token(base, token);
        let token = token.to_owned();
        let session = client.create_session().await.unwrap().id;
        Chatter {
            base: base.to_owned(),
            token,
            session,
            socket: None,
            turns: Vec::new(),
            reconnects: 0,
            name,
            next: 0,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let options = p2_options(&self.token);
        let mut socket = Protocol2Client::connect(&self.base, &self.session, options)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        socket
            .wait_for_type("session_info")
            .await
            .map_err(|e| format!("session_info: {e}"))?;
        self.socket = Some(socket);
        Ok(())
    }

    /// One turn: `::slow` makes the mock stream each word `token_ms` apart.
    pub async fn turn(&mut self, token_ms: u32) -> Turn {
        self.next += 1;
        let reply = format!(
            "{} turn {} alpha beta gamma delta epsilon",
            self.name, self.next
        );
        let user = format!("::slow {token_ms}\n::reply {reply}");
        self.say(user, reply).await
    }

    /// One turn sending `user`; completed only when the final text is `reply`.
    pub async fn say(&mut self, user: String, reply: String) -> Turn {
        let started = Instant::now();
        let outcome = self.run(&user, &reply).await;
        let turn = Turn {
            user,
            reply,
            outcome,
            started,
            ended: Instant::now(),
        };
        self.turns.push(turn.clone());
        turn
    }

    async fn run(&mut self, user: &str, reply: &str) -> Outcome {
        if self.socket.is_none() {
            if let Err(e) = self.connect().await {
                return Outcome::Failed(e);
            }
            self.reconnects += 1;
        }
        let socket = self.socket.as_mut().unwrap();
        if let Err(e) = socket.send_user_message(user).await {
            self.socket = None;
            return Outcome::Failed(format!("send: {e}"));
        }
        match read_turn(socket).await {
            Ok((text, Outcome::Completed)) => {
                assert_eq!(
                    text.as_deref(),
                    Some(reply),
                    "a completed turn showed another text"
                );
                Outcome::Completed
            }
            Ok((_, failed)) => failed,
            Err(e) => {
                self.socket = None;
                Outcome::Failed(e)
            }
        }
    }

    /// Turns until `stop` is set (at least one), each `token_ms` per streamed word; failed
    /// turns are retried after a short pause (as a user would).
    pub async fn chat_until(mut self, stop: Arc<AtomicBool>, token_ms: u32) -> Chatter {
        loop {
            let turn = self.turn(token_ms).await;
            if stop.load(Ordering::SeqCst) {
                return self;
            }
            if turn.outcome != Outcome::Completed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Compares the stored history with what this client saw: every completed turn's message
    /// and reply stored exactly once and in order; nothing of a failed turn stored twice.
    pub async fn assert_history_matches(&self) {
        let client = with_token(&self.base, &self.token);
        let history = client.history(&self.session).await.unwrap();
        let texts: Vec<(String, String)> = history
            .messages
            .iter()
            .filter_map(|m| Some((m.role.clone(), m.content.clone()?)))
            .collect();
        let positions = |role: &str, text: &str| -> Vec<usize> {
            texts
                .iter()
                .enumerate()
                .filter(|(_, (r, t))| r == role && t == text)
                .map(|(i, _)| i)
                .collect()
        };
        let mut last = None;
        for turn in &self.turns {
            let users = positions("user", &turn.user);
            let replies = positions("assistant", &turn.reply);
            assert!(
                users.len() <= 1 && replies.len() <= 1,
                "{}: stored twice: {turn:?}\n{texts:#?}",
                self.session
            );
            if turn.outcome == Outcome::Completed {
                assert!(
                    users.len() == 1 && replies.len() == 1 && users[0] < replies[0],
                    "{}: an acknowledged turn is not stored: {turn:?}\n{texts:#?}",
                    self.session
                );
                assert!(
                    last < Some(users[0]),
                    "{}: out of order: {turn:?}\n{texts:#?}",
                    self.session
                );
                last = Some(replies[0]);
            }
        }
    }
}

/// Turns that ended inside `[from, to]`, by outcome: (completed, failed).
pub fn count_between(chatters: &[Chatter], from: Instant, to: Instant) -> (usize, usize) {
    let turns = chatters
        .iter()
        .flat_map(|c| &c.turns)
        .filter(|t| t.ended >= from && t.ended <= to);
    let (mut completed, mut failed) = (0, 0);
    for turn in turns {
        if turn.outcome == Outcome::Completed {
            completed += 1;
        } else {
            failed += 1;
        }
    }
    (completed, failed)
}

/// The distinct reasons of failed turns, with counts.
pub fn failure_reasons(chatters: &[Chatter]) -> Vec<(String, usize)> {
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for turn in chatters.iter().flat_map(|c| &c.turns) {
        if let Outcome::Failed(why) = &turn.outcome {
            // Ids and numbers vary; the first 100 characters name the reason.
            *reasons.entry(why.chars().take(100).collect()).or_default() += 1;
        }
    }
    reasons.into_iter().collect()
}
