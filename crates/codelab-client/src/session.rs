//! The chat session driver, usable without a terminal: one session's socket, the turn loop
//! (stream text, run tool calls, have approvals and plans decided, answer with `tool_result` /
//! `hitl_decision` / `plan_decision`), reconnection with backoff and resumption by `seq`. Who
//! decides an approval or a plan is the caller's [`Approver`]; the interactive shell is in
//! [`crate::chat`].

use codelab_protocol::plans::CREATE_PLAN_TOOL;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use codelab_protocol::ide::{ClientFrame, Decision};
use codelab_protocol::plans::{PlanDecision, PlanStatus, PlanView, SubtaskStatus};
use futures_util::FutureExt;
use serde_json::{Map, Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::{ApiError, GatewayApi};
use crate::auth::AuthError;
use crate::render::Output;
use crate::sanitize::{Shape, for_terminal};
use crate::tools::{ToolExecutor, ToolOutcome};
use crate::ws::{GatewaySocket, SocketError};

/// How approvals are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalMode {
    /// Ask the [`Approver`] (the shell asks on the terminal or reads the answers from stdin
    /// lines).
    Ask,
    /// Approve everything (`--yes`).
    Approve,
    /// Reject everything, with this feedback (`--reject`).
    Reject(Option<String>),
}

/// How lost connections are retried.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// The first pause.
    pub first_delay: Duration,
    /// The longest pause (the pause doubles up to it).
    pub max_delay: Duration,
    /// Give up after trying this long.
    pub give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// Options of a chat.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The agent the first message goes to (`agent_type`); the orchestrator routes otherwise.
    pub agent: Option<String>,
    /// How approvals are decided.
    pub approval: ApprovalMode,
    /// Reconnection.
    pub reconnect: ReconnectPolicy,
}

/// Which session to chat in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChoice {
    /// A new session.
    New,
    /// An existing session (its history is shown, its pending approvals re-offered).
    Resume(String),
}

/// How a turn ended, as far as this client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    /// `turn_finished{completed}`.
    Completed,
    /// `turn_finished{cancelled}` (after Ctrl-C or another client's cancel).
    Cancelled,
    /// `turn_finished{step_limit}`.
    StepLimit,
    /// `turn_finished{failed}`, or the gateway refused the frame.
    Failed,
    /// The turn waits for approvals the user put off (`later`).
    AwaitingApprovals,
    /// A second Ctrl-C: stop waiting.
    Interrupted,
}

impl TurnEnd {
    /// The process exit code of `codelab chat -m`: 0 completed, 130 interrupted or cancelled,
    /// 1 otherwise.
    pub fn exit_code(self) -> u8 {
        match self {
            TurnEnd::Completed => 0,
            TurnEnd::Cancelled | TurnEnd::Interrupted => 130,
            TurnEnd::StepLimit | TurnEnd::Failed | TurnEnd::AwaitingApprovals => 1,
        }
    }
}

/// Why the chat failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A REST call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The login could not be renewed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Reconnecting failed for too long.
    #[error("lost the connection and could not reconnect within {seconds} s: {last}")]
    GaveUp {
        /// How long it tried.
        seconds: u64,
        /// The last error.
        last: String,
    },
    /// The session does not exist (or is someone else's).
    #[error("session {0} not found (it does not exist or belongs to another user)")]
    NoSuchSession(String),
}

impl ChatError {
    /// Whether this is a login failure (exit code 2).
    pub fn is_login_failure(&self) -> bool {
        match self {
            ChatError::Auth(e) => e.is_login_failure(),
            ChatError::Api(ApiError::Auth(e)) => e.is_login_failure(),
            _ => false,
        }
    }
}

/// A tool call waiting for a person.
#[derive(Debug, Clone)]
pub struct Approval {
    /// The call's id.
    pub call_id: String,
    /// The tool it calls.
    pub tool_name: String,
    /// Its arguments.
    pub arguments: Value,
    /// Why it needs approval.
    pub reason: String,
}

/// What the person decided about an [`Approval`].
#[derive(Debug, Clone)]
pub enum Choice {
    /// Run the call as it is.
    Approve,
    /// Run it with these arguments.
    Edit(Map<String, Value>),
    /// Do not run it; the feedback goes to the agent.
    Reject(Option<String>),
    /// Decide later (`/approvals` offers it again).
    Later,
}

/// What the person decided about a plan that waits for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanChoice {
    /// Run it.
    Approve,
    /// Do not run it (the feedback is kept with the plan).
    Reject(Option<String>),
    /// Have the architect write it again, changed as the feedback says.
    Modify(String),
    /// Decide later (`/approvals`, or resuming the session, offers it again).
    Later,
}

/// What the person decided about a plan stopped at a failed subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryChoice {
    /// Run the failed subtask again.
    Retry,
    /// Skip it and run the rest.
    Skip,
    /// End the plan.
    Cancel,
    /// Decide nothing: the plan stays failed (the turn ends failed).
    Leave,
}

/// Decides the approvals and plans of [`ApprovalMode::Ask`]. It may use the session
/// meanwhile: its output, its executor's previews, and [`Session::listen_while`] to keep the
/// socket read while a person thinks.
pub trait Approver {
    /// Decides one approval.
    fn decide(
        &mut self,
        session: &mut Session,
        approval: &Approval,
    ) -> impl Future<Output = Choice>;

    /// Decides a plan that waits for approval (already drawn by the session's output).
    fn decide_plan(
        &mut self,
        session: &mut Session,
        plan: &PlanView,
    ) -> impl Future<Output = PlanChoice>;

    /// Decides what happens to a plan stopped at a failed subtask (`summary` says which).
    fn recover_plan(
        &mut self,
        session: &mut Session,
        plan_id: &str,
        summary: &str,
    ) -> impl Future<Output = RecoveryChoice>;
}

/// Error codes with which the runtime refuses a plan decision (nothing follows them).
const PLAN_REFUSAL_CODES: [&str; 3] = ["conflict", "unknown_plan", "invalid_request"];

/// Error codes of frames the gateway refused (no turn follows them).
const REFUSAL_CODES: [&str; 7] = [
    "AGENT_ERROR",
    "INVALID_FORMAT",
    "INVALID_TYPE",
    "MISSING_FIELD",
    "RATE_LIMITED",
    "STREAMING_ERROR",
    "REPLAY_FAILED",
];

/// How long a cancelled turn may take to say so.
const CANCEL_WAIT: Duration = Duration::from_secs(12);
/// How long a resumed session's running turn is waited for.
const RUNNING_TURN_WAIT: Duration = Duration::from_secs(300);
/// Silence after a reconnect after which the stored events are fetched again (a turn the
/// runtime resumed on its own is not relayed live).
const RESYNC_AFTER: Duration = Duration::from_secs(8);

enum Event {
    Frame(Result<Value, SocketError>),
    ToolDone(String, String, ToolOutcome),
    Interrupt,
    Idle,
    CancelTimeout,
}

/// One chat session's protocol driver.
pub struct Session {
    api: GatewayApi,
    executor: ToolExecutor,
    out: Output,
    options: ChatOptions,
    session_id: String,
    socket: Option<GatewaySocket>,
    /// Frames read while the user was answering a prompt.
    inbox: VecDeque<Value>,
    last_seq: u64,
    agent: Option<String>,
    first_message_sent: bool,
    interrupt: Option<Signal>,
    /// The last frame sent per call, resent after a reconnect when the call is still open.
    answers: HashMap<String, ClientFrame>,
    approvals: HashMap<String, Approval>,
    decided: HashSet<String>,
    deferred: Vec<String>,
    last_edit: Option<String>,
    running: JoinSet<(String, String, ToolOutcome)>,
    running_ids: HashSet<String>,
    /// The session's plans seen so far, by id, kept up to date by the plan frames.
    plans: HashMap<String, PlanView>,
    /// A plan stopped at a failed subtask in this turn: its id and summary, to ask about once
    /// the turn has ended (`turn_finished{failed}` follows `execution_completed{failed}`).
    failed_plan: Option<(String, String)>,
    /// A plan decision was sent and nothing has answered it yet: a refusal ends the wait.
    plan_decision_open: bool,
    /// A plan decision was sent in this turn (its run may be quiet for a while).
    plan_decision_sent: bool,
    /// `cancel` was sent for this failed plan: its `execution_completed{cancelled}` ends the
    /// turn (no turn runs it, so no `turn_finished` comes).
    cancelling_plan: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

fn seq_of(frame: &Value) -> Option<u64> {
    frame
        .pointer("/metadata/seq")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
}

pub(crate) fn str_of<'a>(frame: &'a Value, key: &str) -> &'a str {
    frame.get(key).and_then(Value::as_str).unwrap_or("")
}

async fn next_from(socket: &mut Option<GatewaySocket>) -> Result<Value, SocketError> {
    match socket {
        Some(socket) => socket.next().await,
        None => Err(SocketError::Closed {
            code: None,
            reason: String::new(),
        }),
    }
}

async fn interrupted(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn frame_json(frame: &ClientFrame) -> Value {
    serde_json::to_value(frame).unwrap_or(Value::Null)
}

/// The id and current agent of the chosen session, created when new.
async fn find_or_create(
    api: &GatewayApi,
    choice: SessionChoice,
) -> Result<(String, Option<String>), ChatError> {
    match choice {
        SessionChoice::New => {
            let created = api.create_session().await?;
            Ok((created.id, created.current_agent))
        }
        SessionChoice::Resume(id) => match api.session(&id).await {
            Ok(found) => Ok((found.id, found.current_agent)),
            Err(e) if e.status() == Some(404) => Err(ChatError::NoSuchSession(id)),
            Err(e) => Err(e.into()),
        },
    }
}

impl Session {
    /// Opens (or creates) the session and its socket.
    pub async fn open(
        api: GatewayApi,
        executor: ToolExecutor,
        out: Output,
        options: ChatOptions,
        session: SessionChoice,
    ) -> Result<Session, ChatError> {
        let (session_id, agent) = find_or_create(&api, session).await?;
        let mut chat = Session {
            api,
            executor,
            out,
            options,
            session_id,
            socket: None,
            inbox: VecDeque::new(),
            last_seq: 0,
            agent,
            first_message_sent: false,
            // Without a handler Ctrl-C kills the process: still a way out.
            interrupt: signal(SignalKind::interrupt()).ok(),
            answers: HashMap::new(),
            approvals: HashMap::new(),
            decided: HashSet::new(),
            deferred: Vec::new(),
            last_edit: None,
            running: JoinSet::new(),
            running_ids: HashSet::new(),
            plans: HashMap::new(),
            failed_plan: None,
            plan_decision_open: false,
            plan_decision_sent: false,
            cancelling_plan: None,
        };
        chat.connect(None).await?;
        Ok(chat)
    }

    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The output.
    pub fn output(&mut self) -> &mut Output {
        &mut self.out
    }

    /// The gateway's REST API, as this session's user.
    pub fn api(&self) -> &GatewayApi {
        &self.api
    }

    /// The tools, run in the workspace.
    pub fn executor(&self) -> &ToolExecutor {
        &self.executor
    }

    /// The session's current agent, as far as this client knows.
    pub fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    /// Runs `work` while still reading the socket (so the gateway's heartbeat is answered);
    /// frames that arrive meanwhile wait in the inbox for the turn loop.
    pub async fn listen_while<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                frame = next_from(&mut self.socket), if self.socket.is_some() => match frame {
                    Ok(frame) => self.inbox.push_back(frame),
                    // Reconnected when the turn loop next needs the socket.
                    Err(_) => self.socket = None,
                },
            }
        }
    }

    /// Between turns: shows what other clients do on this session (not acted on) until
    /// Ctrl-C, which ends it.
    pub async fn watch_until_interrupt(&mut self) {
        loop {
            tokio::select! {
                _ = interrupted(&mut self.interrupt) => return,
                frame = next_from(&mut self.socket), if self.socket.is_some() => match frame {
                    Ok(frame) => {
                        if let Some(seq) = seq_of(&frame) {
                            self.last_seq = self.last_seq.max(seq);
                        }
                        // The end of a turn already reported (a cancel answers twice).
                        if !matches!(str_of(&frame, "type"), "session_info" | "turn_finished") {
                            self.out.frame_in(&frame);
                        }
                    }
                    Err(_) => self.socket = None,
                },
            }
        }
    }

    /// Forgets the Ctrl-C presses so far (one typed in an editor reached this process too:
    /// not a cancel).
    pub fn forget_interrupts(&mut self) {
        if let Some(signal) = self.interrupt.as_mut() {
            while signal.recv().now_or_never().is_some() {}
        }
    }

    /// Opens the socket (resuming after `last_seq`), refreshing the token once if the gateway
    /// refuses it.
    async fn connect(&mut self, last_seq: Option<u64>) -> Result<(), ChatError> {
        let tokens = self.api.tokens().clone();
        let token = tokens.access_token().await?;
        let server = tokens.server().to_owned();
        let socket = match GatewaySocket::connect(&server, &self.session_id, &token, last_seq).await
        {
            Err(e) if e.is_auth_refusal() => {
                let token = tokens.refresh_after_rejection(&token).await?;
                GatewaySocket::connect(&server, &self.session_id, &token, last_seq).await
            }
            Err(SocketError::Refused { status: 403, .. }) => {
                return Err(ChatError::NoSuchSession(self.session_id.clone()));
            }
            other => other,
        }?;
        self.socket = Some(socket);
        Ok(())
    }

    /// Reconnects with backoff and resumes after the last event seen; then resends the
    /// answers of calls that are still open (their first sending may have been lost).
    async fn reconnect(&mut self) -> Result<(), ChatError> {
        if let Some(socket) = self.socket.take() {
            socket.close().await;
        }
        let policy = self.options.reconnect.clone();
        let started = Instant::now();
        let mut delay = policy.first_delay;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let resume = (self.last_seq > 0).then_some(self.last_seq);
            match self.connect(resume).await {
                Ok(()) => break,
                Err(ChatError::Socket(e)) if e.is_retryable() => {
                    if started.elapsed() >= policy.give_up_after {
                        return Err(ChatError::GaveUp {
                            seconds: policy.give_up_after.as_secs(),
                            last: e.to_string(),
                        });
                    }
                    self.out.notice(&format!(
                        "connection lost; reconnecting in {:.1} s (attempt {attempt})",
                        delay.as_secs_f64()
                    ));
                }
                Err(ChatError::Auth(AuthError::Unreachable { reason, .. }))
                | Err(ChatError::Api(ApiError::Unreachable { reason, .. })) => {
                    if started.elapsed() >= policy.give_up_after {
                        return Err(ChatError::GaveUp {
                            seconds: policy.give_up_after.as_secs(),
                            last: reason,
                        });
                    }
                    self.out.notice(&format!(
                        "server unreachable; reconnecting in {:.1} s (attempt {attempt})",
                        delay.as_secs_f64()
                    ));
                }
                Err(other) => return Err(other),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(policy.max_delay);
        }
        self.out.notice(&format!(
            "reconnected to session {} (resuming after event {})",
            self.session_id, self.last_seq
        ));
        self.resend_open_answers().await;
        Ok(())
    }

    async fn resend_open_answers(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        let Ok(history) = self.api.history(&self.session_id).await else {
            return;
        };
        let open: Vec<String> = history
            .pointer("/active_turn/open_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| c.get("call_id").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        for call_id in open {
            if let Some(frame) = self.answers.get(&call_id).cloned()
                && let Some(socket) = self.socket.as_mut()
            {
                let _ = socket.send(&frame).await;
            }
        }
    }

    /// Sends a frame, reconnecting first when the socket is gone.
    async fn send(&mut self, frame: &ClientFrame) -> Result<(), ChatError> {
        if self.socket.is_none() {
            self.reconnect().await?;
        }
        let sent = match self.socket.as_mut() {
            Some(socket) => socket.send(frame).await,
            None => Err(SocketError::Closed {
                code: None,
                reason: String::new(),
            }),
        };
        if sent.is_err() {
            self.reconnect().await?;
            if let Some(socket) = self.socket.as_mut() {
                socket.send(frame).await?;
            }
        }
        Ok(())
    }

    fn reset_turn(&mut self) {
        self.answers.clear();
        self.approvals.clear();
        self.decided.clear();
        self.deferred.clear();
        self.last_edit = None;
        self.failed_plan = None;
        self.plan_decision_open = false;
        self.plan_decision_sent = false;
        self.cancelling_plan = None;
    }

    /// Sends `text` as a user message and follows the turn to its end.
    pub async fn run_turn(
        &mut self,
        text: &str,
        approver: &mut impl Approver,
    ) -> Result<TurnEnd, ChatError> {
        self.reset_turn();
        let agent_type = if self.first_message_sent {
            None
        } else {
            self.options.agent.clone()
        };
        self.first_message_sent = true;
        let frame = ClientFrame::UserMessage {
            content: text.to_owned(),
            role: Some("user".to_owned()),
            agent_type,
        };
        self.send(&frame).await?;
        self.drive(approver, false).await
    }

    /// Switches the session's agent.
    pub async fn switch_agent(
        &mut self,
        agent: &str,
        approver: &mut impl Approver,
    ) -> Result<TurnEnd, ChatError> {
        self.reset_turn();
        let frame = ClientFrame::SwitchAgent {
            agent_type: agent.to_owned(),
            content: None,
            reason: Some("requested in codelab chat".to_owned()),
        };
        self.send(&frame).await?;
        self.drive(approver, false).await
    }

    /// Handles what the session waits for after a resume: re-sent tool calls and approvals.
    pub async fn finish_open_work(
        &mut self,
        approver: &mut impl Approver,
    ) -> Result<Option<TurnEnd>, ChatError> {
        let mut history = self.api.history(&self.session_id).await?;
        let polling_since = Instant::now();
        let mut told = false;
        // A turn still running on the server (another client's, or one the runtime resumed
        // by itself) is not relayed to this socket: wait until it finishes or needs the IDE.
        while history
            .pointer("/active_turn/status")
            .and_then(Value::as_str)
            == Some("running")
            && polling_since.elapsed() < RUNNING_TURN_WAIT
        {
            if !told {
                self.out
                    .notice("the session's turn is still running on the server; waiting for it");
                told = true;
            }
            tokio::select! {
                _ = interrupted(&mut self.interrupt) => return Ok(Some(TurnEnd::Interrupted)),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            history = self.api.history(&self.session_id).await?;
        }
        let Some(turn) = history.get("active_turn").filter(|t| !t.is_null()) else {
            if told {
                self.out.notice("the turn finished; /history shows it");
            }
            return Ok(None);
        };
        self.reset_turn();
        let status = str_of(turn, "status").to_owned();
        if status != "awaiting_tools" {
            self.out.notice(&format!(
                "the session's turn is {status}; send a message to go on"
            ));
            return Ok(None);
        }
        self.out
            .notice("the session waits for tool results or approvals; continuing its turn");
        if told {
            // The calls were re-sent when this socket connected, before the turn paused:
            // connecting again has the gateway offer them now.
            if let Some(socket) = self.socket.take() {
                socket.close().await;
            }
            self.connect(None).await?;
        }
        Ok(Some(self.drive(approver, true).await?))
    }

    /// Offers the session's pending approvals again (`/approvals`).
    pub async fn offer_pending_approvals(
        &mut self,
        approver: &mut impl Approver,
    ) -> Result<Option<TurnEnd>, ChatError> {
        let pending = self.api.pending_approvals(&self.session_id).await?;
        if pending.is_empty() {
            self.out.info("no approvals are pending");
            return Ok(None);
        }
        self.reset_turn();
        // A plan's approval is its `create_plan` call's: offered as the plan it proposes.
        let (plans, tools): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|approval| approval.tool_name == CREATE_PLAN_TOOL);
        if !plans.is_empty() {
            for plan in self.api.session_plans(&self.session_id).await? {
                if plan.status == PlanStatus::AwaitingApproval
                    && plans.iter().any(|p| p.call_id == plan.approval_request_id)
                {
                    self.inbox.push_back(json!({
                        "type": "plan_approval_required",
                        "plan_id": plan.id,
                        "approval_request_id": plan.approval_request_id,
                        "plan_summary": plan.summary_view(),
                        "plan": plan,
                    }));
                }
            }
        }
        for approval in tools {
            self.inbox.push_back(json!({
                "type": "approval_required",
                "call_id": approval.call_id,
                "tool_name": approval.tool_name,
                "arguments": approval.arguments,
                "reason": approval.reason.unwrap_or_default(),
            }));
        }
        Ok(Some(self.drive(approver, true).await?))
    }

    /// Follows the session until the turn ends. `resumed`: the work was re-offered after a
    /// (re)connect, so no `turn_finished{awaiting_tools}` will come to say it is waiting.
    async fn drive(
        &mut self,
        approver: &mut impl Approver,
        resumed: bool,
    ) -> Result<TurnEnd, ChatError> {
        let mut cancel_deadline: Option<Instant> = None;
        let mut reconnected = false;
        let mut last_activity = Instant::now();
        let mut answered_in_drive = false;
        self.out.start_spinner();
        loop {
            let idle_check = reconnected || resumed;
            let idle_at = last_activity
                + if resumed && !reconnected {
                    Duration::from_secs(3)
                } else {
                    RESYNC_AFTER
                };
            let event = if let Some(frame) = self.inbox.pop_front() {
                Event::Frame(Ok(frame))
            } else {
                tokio::select! {
                    biased;
                    _ = interrupted(&mut self.interrupt) => Event::Interrupt,
                    Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                        match joined {
                            Ok((call_id, tool, outcome)) => Event::ToolDone(call_id, tool, outcome),
                            // Aborted by a cancel: nothing to send.
                            Err(_) => continue,
                        }
                    }
                    frame = next_from(&mut self.socket) => Event::Frame(frame),
                    _ = tokio::time::sleep_until(cancel_deadline.unwrap_or(last_activity)),
                        if cancel_deadline.is_some() => Event::CancelTimeout,
                    _ = tokio::time::sleep_until(idle_at), if idle_check => Event::Idle,
                }
            };
            match event {
                Event::Frame(Ok(frame)) => {
                    last_activity = Instant::now();
                    if let Some(end) = self.handle_frame(frame, approver).await? {
                        self.out.stop_spinner();
                        return Ok(end);
                    }
                    if resumed && self.waiting_only_for_deferred() {
                        self.out.stop_spinner();
                        return Ok(TurnEnd::AwaitingApprovals);
                    }
                }
                Event::Frame(Err(error)) => {
                    self.socket = None;
                    if cancel_deadline.is_some() {
                        self.out.stop_spinner();
                        return Ok(TurnEnd::Cancelled);
                    }
                    self.out.notice(&error.to_string());
                    self.reconnect().await?;
                    reconnected = true;
                    last_activity = Instant::now();
                }
                Event::ToolDone(call_id, tool_name, outcome) => {
                    last_activity = Instant::now();
                    self.running_ids.remove(&call_id);
                    let frame = match &outcome {
                        ToolOutcome::Result(result) => ClientFrame::ToolResult {
                            call_id: call_id.clone(),
                            tool_name: Some(tool_name.clone()),
                            result: Some(result.clone()),
                            error: None,
                        },
                        ToolOutcome::Error(error) => ClientFrame::ToolResult {
                            call_id: call_id.clone(),
                            tool_name: Some(tool_name.clone()),
                            result: None,
                            error: Some(error.clone()),
                        },
                    };
                    self.out
                        .tool_result_out(&frame_json(&frame), &tool_name, &outcome);
                    self.answers.insert(call_id, frame.clone());
                    answered_in_drive = true;
                    self.send(&frame).await?;
                    self.out.start_spinner();
                }
                Event::Interrupt => {
                    if cancel_deadline.is_some() {
                        self.out.stop_spinner();
                        return Ok(TurnEnd::Interrupted);
                    }
                    self.out
                        .notice("cancelling the turn (press Ctrl-C again to stop waiting)");
                    // Dropping the calls kills their processes.
                    self.running.abort_all();
                    self.running_ids.clear();
                    cancel_deadline = Some(Instant::now() + CANCEL_WAIT);
                    self.send(&ClientFrame::CancelTurn {
                        reason: Some("cancelled in codelab chat".to_owned()),
                    })
                    .await?;
                }
                Event::CancelTimeout => {
                    self.out.stop_spinner();
                    return Ok(TurnEnd::Cancelled);
                }
                Event::Idle => {
                    if resumed && !reconnected && self.running.is_empty() {
                        // Nothing was re-offered and nothing runs: nothing to wait for.
                        if !answered_in_drive && !self.plan_decision_sent {
                            self.out.stop_spinner();
                            return Ok(if self.deferred.is_empty() {
                                TurnEnd::Completed
                            } else {
                                TurnEnd::AwaitingApprovals
                            });
                        }
                        last_activity = Instant::now();
                        continue;
                    }
                    // Fetch what was stored meanwhile.
                    self.socket = None;
                    self.reconnect().await?;
                    last_activity = Instant::now();
                }
            }
        }
    }

    /// Nothing runs, every approval seen was decided or put off, and some were put off.
    fn waiting_only_for_deferred(&self) -> bool {
        !self.deferred.is_empty()
            && self.running.is_empty()
            && self
                .approvals
                .keys()
                .all(|id| self.decided.contains(id) || self.deferred.contains(id))
    }

    async fn handle_frame(
        &mut self,
        frame: Value,
        approver: &mut impl Approver,
    ) -> Result<Option<TurnEnd>, ChatError> {
        if let Some(seq) = seq_of(&frame) {
            // Already seen (a replay overlapping what arrived live). Calls re-offered on
            // connect keep their old numbers and are guarded by their call id instead.
            let reoffer = matches!(
                str_of(&frame, "type"),
                "tool_call" | "approval_required" | "plan_approval_required"
            );
            if seq <= self.last_seq && !reoffer {
                return Ok(None);
            }
            self.last_seq = self.last_seq.max(seq);
        }
        self.out.frame_in(&frame);
        match str_of(&frame, "type") {
            "session_info" => {
                if let Some(agent) = frame.get("agent_type").and_then(Value::as_str) {
                    self.agent = Some(agent.to_owned());
                }
            }
            "agent_switched" => {
                if let Some(agent) = frame
                    .get("to_agent")
                    .or_else(|| frame.pointer("/metadata/to_agent"))
                    .and_then(Value::as_str)
                {
                    self.agent = Some(agent.to_owned());
                }
            }
            "tool_call" => {
                let call_id = str_of(&frame, "call_id").to_owned();
                let tool_name = str_of(&frame, "tool_name").to_owned();
                let arguments = frame.get("arguments").cloned().unwrap_or(json!({}));
                let requires_approval = frame
                    .get("requires_approval")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let already = self.running_ids.contains(&call_id)
                    || matches!(
                        self.answers.get(&call_id),
                        Some(ClientFrame::ToolResult { .. })
                    );
                if !requires_approval && !already && !call_id.is_empty() {
                    self.running_ids.insert(call_id.clone());
                    let executor = self.executor.clone();
                    self.running.spawn(async move {
                        let outcome = executor.execute(&tool_name, &arguments).await;
                        (call_id, tool_name, outcome)
                    });
                }
            }
            "approval_required" => {
                let approval = Approval {
                    call_id: str_of(&frame, "call_id").to_owned(),
                    tool_name: str_of(&frame, "tool_name").to_owned(),
                    arguments: frame.get("arguments").cloned().unwrap_or(json!({})),
                    reason: str_of(&frame, "reason").to_owned(),
                };
                if !self.decided.contains(&approval.call_id)
                    && !self.deferred.contains(&approval.call_id)
                {
                    self.approvals
                        .insert(approval.call_id.clone(), approval.clone());
                    self.decide_and_send(&approval, approver).await?;
                }
            }
            "plan_approval_required" => return self.plan_approval_required(&frame, approver).await,
            "plan_update" => {
                self.plan_decision_open = false;
                if let Some(plan) = frame
                    .get("plan")
                    .and_then(|p| serde_json::from_value::<PlanView>(p.clone()).ok())
                {
                    let previous = self.plans.get(&plan.id).map(|p| p.status);
                    self.out.plan_changed(&plan, previous);
                    self.plans.insert(plan.id.clone(), plan);
                }
            }
            "plan_progress" => {
                self.plan_decision_open = false;
                let plan_id = str_of(&frame, "plan_id");
                let status = SubtaskStatus::parse(str_of(&frame, "status"));
                let subtask_id = frame
                    .get("subtask_id")
                    .and_then(Value::as_u64)
                    .and_then(|id| u32::try_from(id).ok());
                if let (Some(plan), Some(status), Some(subtask_id)) =
                    (self.plans.get_mut(plan_id), status, subtask_id)
                {
                    if let Some(subtask) = plan.subtasks.iter_mut().find(|s| s.id == subtask_id) {
                        subtask.status = status;
                        if let Some(result) = frame.get("result").and_then(Value::as_str) {
                            subtask.result = Some(result.to_owned());
                        }
                    }
                    if status == SubtaskStatus::InProgress {
                        plan.status = PlanStatus::InProgress;
                    }
                    let plan = plan.clone();
                    self.out.plan_progress(&plan, subtask_id);
                }
            }
            "execution_completed" => {
                self.plan_decision_open = false;
                let plan_id = str_of(&frame, "plan_id").to_owned();
                let status = str_of(&frame, "status").to_owned();
                let summary = str_of(&frame, "summary").to_owned();
                self.out.execution_completed(&status, &summary);
                if let Some(plan) = self.plans.get_mut(&plan_id)
                    && let Some(parsed) = PlanStatus::parse(&status)
                {
                    plan.status = parsed;
                }
                if status == "failed" {
                    self.failed_plan = Some((plan_id, summary));
                } else if status == "cancelled"
                    && self.cancelling_plan.as_deref() == Some(plan_id.as_str())
                {
                    self.cancelling_plan = None;
                    return Ok(Some(TurnEnd::Failed));
                }
            }
            "turn_finished" => {
                if str_of(&frame, "content") == "failed"
                    && let Some((plan_id, summary)) = self.failed_plan.take()
                    && self
                        .recover_failed_plan(&plan_id, &summary, approver)
                        .await?
                {
                    // The decision's own turn follows (or, for cancel, the plan's end).
                    return Ok(None);
                }
                return Ok(match str_of(&frame, "content") {
                    "completed" => Some(TurnEnd::Completed),
                    "cancelled" => Some(TurnEnd::Cancelled),
                    "step_limit" => Some(TurnEnd::StepLimit),
                    "failed" => Some(TurnEnd::Failed),
                    _ if self.waiting_only_for_deferred() => Some(TurnEnd::AwaitingApprovals),
                    _ => None,
                });
            }
            "error" => {
                let code = str_of(&frame, "error_code");
                if code == "invalid_arguments"
                    && let Some(call_id) = self.last_edit.take()
                {
                    // The edit was refused and the call still waits: ask again.
                    self.decided.remove(&call_id);
                    if let Some(approval) = self.approvals.get(&call_id).cloned() {
                        self.decide_and_send(&approval, approver).await?;
                    }
                } else if REFUSAL_CODES.contains(&code) && self.running.is_empty() {
                    return Ok(Some(TurnEnd::Failed));
                } else if self.plan_decision_open && PLAN_REFUSAL_CODES.contains(&code) {
                    // The plan decision was refused: nothing more comes for it.
                    self.plan_decision_open = false;
                    self.cancelling_plan = None;
                    return Ok(Some(TurnEnd::Failed));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    async fn decide_and_send(
        &mut self,
        approval: &Approval,
        approver: &mut impl Approver,
    ) -> Result<(), ChatError> {
        let choice = match self.options.approval.clone() {
            ApprovalMode::Approve => Choice::Approve,
            ApprovalMode::Reject(feedback) => Choice::Reject(feedback),
            ApprovalMode::Ask => approver.decide(self, approval).await,
        };
        let (decision, modified_arguments, feedback) = match choice {
            Choice::Later => {
                self.deferred.push(approval.call_id.clone());
                self.out.notice(&format!(
                    "{} put off; /approvals offers it again",
                    for_terminal(&approval.tool_name, Shape::Line)
                ));
                return Ok(());
            }
            Choice::Approve => (Decision::Approve, None, None),
            Choice::Edit(arguments) => {
                self.last_edit = Some(approval.call_id.clone());
                (Decision::Edit, Some(arguments), None)
            }
            Choice::Reject(feedback) => (Decision::Reject, None, feedback),
        };
        let frame = ClientFrame::HitlDecision {
            call_id: approval.call_id.clone(),
            decision,
            modified_arguments,
            feedback,
        };
        self.decided.insert(approval.call_id.clone());
        self.out.decision_out(&frame_json(&frame));
        self.answers.insert(approval.call_id.clone(), frame.clone());
        self.send(&frame).await
    }

    /// A plan waits for approval: drawn, decided (by the mode or the [`Approver`]), answered
    /// with `plan_decision`. A plan re-offered after a reconnect is decided once.
    async fn plan_approval_required(
        &mut self,
        frame: &Value,
        approver: &mut impl Approver,
    ) -> Result<Option<TurnEnd>, ChatError> {
        let plan = match frame
            .get("plan")
            .map(|p| serde_json::from_value::<PlanView>(p.clone()))
        {
            Some(Ok(plan)) => plan,
            Some(Err(e)) => {
                self.out.error(&format!(
                    "the plan could not be read, so it was not decided: {e}"
                ));
                return Ok(Some(TurnEnd::Failed));
            }
            None => {
                self.out
                    .error("a plan waits for approval but the frame carries no plan");
                return Ok(Some(TurnEnd::Failed));
            }
        };
        let request_id = match str_of(frame, "approval_request_id") {
            "" => plan.approval_request_id.clone(),
            id => id.to_owned(),
        };
        self.plans.insert(plan.id.clone(), plan.clone());
        if self.decided.contains(&request_id) {
            return Ok(None);
        }
        self.out.plan_checklist(&plan);
        let choice = match self.options.approval.clone() {
            ApprovalMode::Approve => PlanChoice::Approve,
            ApprovalMode::Reject(feedback) => PlanChoice::Reject(feedback),
            ApprovalMode::Ask => approver.decide_plan(self, &plan).await,
        };
        let (decision, feedback) = match choice {
            PlanChoice::Later => {
                self.deferred.push(request_id);
                self.out
                    .notice("the plan was put off; /approvals offers it again");
                return Ok(None);
            }
            PlanChoice::Approve => (PlanDecision::Approve, None),
            PlanChoice::Reject(feedback) => (PlanDecision::Reject, feedback),
            PlanChoice::Modify(feedback) => (PlanDecision::Modify, Some(feedback)),
        };
        self.decided.insert(request_id.clone());
        let frame = ClientFrame::PlanDecision {
            plan_id: Some(plan.id.clone()),
            approval_request_id: None,
            decision,
            feedback,
        };
        // Kept with the `create_plan` call's id: resent after a reconnect while it is open.
        self.answers.insert(request_id, frame.clone());
        self.send_plan_decision(&frame).await?;
        Ok(None)
    }

    /// After a plan's run stopped at a failed subtask: asks retry / skip / cancel and sends
    /// it; whether a decision was sent (then its turn, or the plan's end, follows).
    async fn recover_failed_plan(
        &mut self,
        plan_id: &str,
        summary: &str,
        approver: &mut impl Approver,
    ) -> Result<bool, ChatError> {
        let choice = match self.options.approval {
            // Nobody to ask, and retrying unasked could repeat the failure forever.
            ApprovalMode::Approve | ApprovalMode::Reject(_) => RecoveryChoice::Leave,
            ApprovalMode::Ask => approver.recover_plan(self, plan_id, summary).await,
        };
        let decision = match choice {
            RecoveryChoice::Retry => PlanDecision::Retry,
            RecoveryChoice::Skip => PlanDecision::Skip,
            RecoveryChoice::Cancel => PlanDecision::Cancel,
            RecoveryChoice::Leave => {
                self.out.notice(&format!(
                    "the plan stays stopped at its failed subtask; decide it with POST \
                     /api/v1/plans/{plan_id}/decision (retry, skip or cancel)"
                ));
                return Ok(false);
            }
        };
        if decision == PlanDecision::Cancel {
            self.cancelling_plan = Some(plan_id.to_owned());
        }
        let frame = ClientFrame::PlanDecision {
            plan_id: Some(plan_id.to_owned()),
            approval_request_id: None,
            decision,
            feedback: None,
        };
        self.send_plan_decision(&frame).await?;
        Ok(true)
    }

    async fn send_plan_decision(&mut self, frame: &ClientFrame) -> Result<(), ChatError> {
        self.out.plan_decision_out(&frame_json(frame));
        self.plan_decision_open = true;
        self.plan_decision_sent = true;
        self.send(frame).await?;
        self.out.start_spinner();
        Ok(())
    }

    /// The session's plans seen so far (their latest state).
    pub fn plans(&self) -> impl Iterator<Item = &PlanView> {
        self.plans.values()
    }

    /// Switches to another session (`/resume`, `/new`): closes the socket, opens the other.
    pub async fn switch_session(&mut self, choice: SessionChoice) -> Result<(), ChatError> {
        let (id, agent) = find_or_create(&self.api, choice).await?;
        self.close_socket().await;
        self.session_id = id;
        self.agent = agent;
        self.last_seq = 0;
        self.inbox.clear();
        self.first_message_sent = false;
        self.plans.clear();
        self.reset_turn();
        self.connect(None).await
    }

    /// Stops the running tools and closes the socket.
    pub async fn close(mut self) {
        self.running.abort_all();
        self.close_socket().await;
    }

    /// Closes the socket (a later turn opens it again).
    pub async fn close_socket(&mut self) {
        if let Some(socket) = self.socket.take() {
            socket.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_outcome() {
        assert_eq!(TurnEnd::Completed.exit_code(), 0);
        assert_eq!(TurnEnd::Failed.exit_code(), 1);
        assert_eq!(TurnEnd::Cancelled.exit_code(), 130);
    }

    #[test]
    fn seq_is_read_from_metadata() {
        assert_eq!(seq_of(&json!({"metadata": {"seq": 4}})), Some(4));
        assert_eq!(seq_of(&json!({"metadata": {"seq": 0}})), None);
        assert_eq!(seq_of(&json!({"type": "assistant_message"})), None);
    }
}
