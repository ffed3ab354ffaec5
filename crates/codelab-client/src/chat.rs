//! The interactive shell of `codelab chat`: the prompt loop with its slash commands, the
//! approval questions on the terminal, the banner and the history. The protocol (socket, turn
//! loop, reconnection) is the [`Session`] driver's.

use serde_json::Value;

use crate::api::GatewayApi;
use codelab_protocol::plans::PlanView;
use codelab_protocol::usage::UsageTotals;

use crate::input::{LineReader, edit_json, edit_text};
use crate::render::{Output, OutputMode, approval_prompt, summarize_args};
use crate::sanitize::{Shape, for_terminal};
use crate::session::{
    Approval, Approver, ChatError, ChatOptions, Choice, PlanChoice, RecoveryChoice, Session,
    SessionChoice, TurnEnd, str_of,
};
use crate::tools::ToolExecutor;

/// Asks a person: on the terminal, or one stdin line per answer. Without lines every call and
/// plan is rejected (after showing what it was), and a failed plan is left as it is.
struct Terminal<'a> {
    lines: Option<&'a mut LineReader>,
}

impl Approver for Terminal<'_> {
    async fn decide(&mut self, session: &mut Session, approval: &Approval) -> Choice {
        // A write shows what it changes; anything else (or a write whose path is refused)
        // shows its arguments.
        let diff = if approval.tool_name == "write_file" {
            session.executor().write_preview(&approval.arguments)
        } else {
            None
        };
        let text = approval_prompt(
            &approval.tool_name,
            &approval.arguments,
            &approval.reason,
            diff.as_deref(),
        );
        session.output().approval_text(&text);
        let Some(lines) = self.lines.as_deref_mut() else {
            return Choice::Reject(Some("no one could be asked".to_owned()));
        };
        loop {
            session
                .output()
                .prompt("[a]pprove, [e]dit arguments, [r]eject, [l]ater? ");
            let Some(answer) = session.listen_while(lines.read_line()).await else {
                return Choice::Reject(Some("no answer: the input ended".to_owned()));
            };
            match answer.trim().to_ascii_lowercase().as_str() {
                "a" | "approve" | "y" | "yes" => return Choice::Approve,
                "r" | "reject" | "n" | "no" => {
                    session
                        .output()
                        .prompt("feedback for the agent (optional): ");
                    let feedback = session
                        .listen_while(lines.read_line())
                        .await
                        .unwrap_or_default();
                    let feedback = feedback.trim();
                    return Choice::Reject((!feedback.is_empty()).then(|| feedback.to_owned()));
                }
                "l" | "later" => return Choice::Later,
                "e" | "edit" => {
                    let edited = edit_json(&approval.arguments).await;
                    session.forget_interrupts();
                    match edited {
                        Ok(Value::Object(arguments)) => {
                            if approval.tool_name == "write_file" {
                                let value = Value::Object(arguments.clone());
                                if let Some(diff) = session.executor().write_preview(&value) {
                                    session.output().approval_text(&diff);
                                }
                            }
                            return Choice::Edit(arguments);
                        }
                        Ok(_) => session
                            .output()
                            .error("the arguments must be a JSON object"),
                        Err(e) => session.output().error(&e.to_string()),
                    }
                }
                _ => session.output().notice("answer a, e, r or l"),
            }
        }
    }

    async fn decide_plan(&mut self, session: &mut Session, plan: &PlanView) -> PlanChoice {
        session.output().plan_for_decision(plan);
        let Some(lines) = self.lines.as_deref_mut() else {
            return PlanChoice::Reject(Some("no one could be asked".to_owned()));
        };
        loop {
            session
                .output()
                .prompt("[a]pprove, [r]eject, [m]odify the plan, or [l]ater? ");
            let Some(answer) = session.listen_while(lines.read_line()).await else {
                return PlanChoice::Reject(Some("no answer: the input ended".to_owned()));
            };
            match answer.trim().to_ascii_lowercase().as_str() {
                "a" | "approve" | "y" | "yes" => return PlanChoice::Approve,
                "r" | "reject" | "n" | "no" => {
                    session
                        .output()
                        .prompt("feedback for the architect (optional): ");
                    let feedback = session
                        .listen_while(lines.read_line())
                        .await
                        .unwrap_or_default();
                    let feedback = feedback.trim();
                    return PlanChoice::Reject((!feedback.is_empty()).then(|| feedback.to_owned()));
                }
                "m" | "modify" => {
                    session.output().prompt(
                        "what should change? (one line; an empty line opens $VISUAL / $EDITOR): ",
                    );
                    let Some(line) = session.listen_while(lines.read_line()).await else {
                        return PlanChoice::Reject(Some("no answer: the input ended".to_owned()));
                    };
                    let feedback = if line.trim().is_empty() {
                        let edited = edit_text(&feedback_template(plan)).await;
                        session.forget_interrupts();
                        match edited {
                            Ok(text) => text,
                            Err(e) => {
                                session.output().error(&e.to_string());
                                continue;
                            }
                        }
                    } else {
                        line.trim().to_owned()
                    };
                    if feedback.is_empty() {
                        session
                            .output()
                            .notice("modify needs feedback: say what should change");
                        continue;
                    }
                    return PlanChoice::Modify(feedback);
                }
                "l" | "later" => return PlanChoice::Later,
                _ => session.output().notice("answer a, r, m or l"),
            }
        }
    }

    async fn recover_plan(
        &mut self,
        session: &mut Session,
        _plan_id: &str,
        _summary: &str,
    ) -> RecoveryChoice {
        // The summary was shown with `execution_completed`.
        let Some(lines) = self.lines.as_deref_mut() else {
            return RecoveryChoice::Leave;
        };
        loop {
            session
                .output()
                .prompt("the plan stopped at a failed subtask: [r]etry, [s]kip, [c]ancel? ");
            let Some(answer) = session.listen_while(lines.read_line()).await else {
                return RecoveryChoice::Leave;
            };
            match answer.trim().to_ascii_lowercase().as_str() {
                "r" | "retry" => return RecoveryChoice::Retry,
                "s" | "skip" => return RecoveryChoice::Skip,
                "c" | "cancel" => return RecoveryChoice::Cancel,
                _ => session.output().notice("answer r, s or c"),
            }
        }
    }
}

/// What the editor opens with when a plan's feedback is written there: the plan, commented.
fn feedback_template(plan: &PlanView) -> String {
    let mut text = String::from(
        "\n# Say what should change in this plan; lines starting with # are ignored.\n",
    );
    for line in crate::render::plan_checklist(plan).lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text
}

/// One chat on the terminal: a [`Session`] and the person in front of it.
#[derive(Debug)]
pub struct Chat {
    session: Session,
}

impl Chat {
    /// Opens (or creates) the session and its socket.
    pub async fn open(
        api: GatewayApi,
        executor: ToolExecutor,
        out: Output,
        options: ChatOptions,
        session: SessionChoice,
    ) -> Result<Chat, ChatError> {
        let session = Session::open(api, executor, out, options, session).await?;
        Ok(Chat { session })
    }

    /// The protocol driver.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Sends `text` as a user message and follows the turn to its end, asking on `lines`.
    pub async fn run_turn(
        &mut self,
        text: &str,
        lines: Option<&mut LineReader>,
    ) -> Result<TurnEnd, ChatError> {
        self.session.run_turn(text, &mut Terminal { lines }).await
    }

    /// Handles what the session waits for after a resume: re-sent tool calls and approvals.
    pub async fn finish_open_work(
        &mut self,
        lines: Option<&mut LineReader>,
    ) -> Result<Option<TurnEnd>, ChatError> {
        self.session.finish_open_work(&mut Terminal { lines }).await
    }

    /// Prints the session's history compactly.
    pub async fn show_history(&mut self) -> Result<(), ChatError> {
        if self.session.output().mode() == OutputMode::Json {
            return Ok(());
        }
        let history = self
            .session
            .api()
            .history(self.session.session_id())
            .await?;
        let out = self.session.output();
        let messages = history
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if messages.is_empty() {
            out.info("(no messages yet)");
        }
        for message in &messages {
            let content = str_of(message, "content");
            match str_of(message, "role") {
                "user" => out.info(&format!("you> {content}")),
                "assistant" => {
                    if !content.is_empty() {
                        let name = for_terminal(str_of(message, "name"), Shape::Line);
                        out.info(&format!("{name}> {content}"));
                    }
                    for call in message
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let name = call.pointer("/function/name").and_then(Value::as_str);
                        let raw = call
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}");
                        let args: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
                        let name = name.unwrap_or("?");
                        out.info(&format!(
                            "⚙ {} {}",
                            for_terminal(name, Shape::Line),
                            summarize_args(name, &args)
                        ));
                    }
                }
                "tool" => {
                    let short: String = content.chars().take(120).collect();
                    out.info(&format!("  ↳ {}", short.replace('\n', " ")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn banner(&mut self, username: &str) {
        let agent = self.session.agent().unwrap_or("orchestrator").to_owned();
        let text = format!(
            "codelab chat — {} as {username}\n  session   {} (agent {agent})\n  workspace {}\n  /help lists the commands; Ctrl-C cancels a turn",
            self.session.api().tokens().server(),
            self.session.session_id(),
            self.session.executor().workspace().root().display(),
        );
        self.session.output().info(&text);
    }

    /// The interactive loop: lines are messages, `/...` lines are commands.
    pub async fn interactive(
        &mut self,
        lines: &mut LineReader,
        resumed: bool,
    ) -> Result<(), ChatError> {
        let username = self.session.api().tokens().username().await;
        self.banner(&username);
        if resumed {
            self.show_history().await?;
            let end = self.finish_open_work(Some(lines)).await?;
            self.report(end);
        }
        loop {
            let agent = self.session.agent().unwrap_or("orchestrator").to_owned();
            self.session.output().prompt(&format!("{agent}> "));
            let line = tokio::select! {
                line = lines.read_line() => line,
                () = self.session.watch_until_interrupt() => None,
            };
            let Some(line) = line else {
                self.session.output().info("");
                break;
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (command, rest) = match line.split_once(char::is_whitespace) {
                Some((c, r)) => (c, r.trim()),
                None => (line, ""),
            };
            let result: Result<(), ChatError> = match command {
                "/quit" | "/exit" => break,
                "/help" => {
                    self.session.output().info(HELP);
                    Ok(())
                }
                "/agents" => self.list_agents().await,
                "/agent" if rest.is_empty() => {
                    self.session
                        .output()
                        .error("usage: /agent NAME (see /agents)");
                    Ok(())
                }
                "/agent" => {
                    let end = self
                        .session
                        .switch_agent(rest, &mut Terminal { lines: Some(lines) })
                        .await;
                    end.map(|end| self.report(Some(end)))
                }
                "/sessions" => self.list_sessions().await,
                "/resume" if rest.is_empty() => {
                    self.session
                        .output()
                        .error("usage: /resume ID (see /sessions)");
                    Ok(())
                }
                "/resume" => match self
                    .session
                    .switch_session(SessionChoice::Resume(rest.to_owned()))
                    .await
                {
                    Ok(()) => {
                        self.banner(&username);
                        self.show_history().await?;
                        let end = self.finish_open_work(Some(lines)).await?;
                        self.report(end);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                "/new" => match self.session.switch_session(SessionChoice::New).await {
                    Ok(()) => {
                        self.banner(&username);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                "/history" => self.show_history().await,
                "/usage" => self.show_usage().await,
                "/approvals" => {
                    let end = self
                        .session
                        .offer_pending_approvals(&mut Terminal { lines: Some(lines) })
                        .await;
                    end.map(|end| self.report(end))
                }
                c if c.starts_with('/') => {
                    self.session
                        .output()
                        .error(&format!("unknown command {c}; /help lists the commands"));
                    Ok(())
                }
                _ => {
                    let end = self.run_turn(line, Some(lines)).await;
                    if let Ok(end) = &end {
                        self.show_turn_usage(*end).await;
                    }
                    end.map(|end| self.report(Some(end)))
                }
            };
            match result {
                Ok(()) => {}
                // Fatal: the login is gone or the server stayed away.
                Err(e @ (ChatError::Auth(_) | ChatError::GaveUp { .. })) => return Err(e),
                Err(e) if e.is_login_failure() => return Err(e),
                Err(e) => self.session.output().error(&e.to_string()),
            }
        }
        self.session.close_socket().await;
        Ok(())
    }

    /// After a turn that ended: its tokens and cost, and the session's so far (docs/usage.md).
    /// Nothing when the usage cannot be read: the turn is no worse for it.
    pub async fn show_turn_usage(&mut self, end: TurnEnd) {
        if matches!(end, TurnEnd::AwaitingApprovals | TurnEnd::Interrupted) {
            return;
        }
        let id = self.session.session_id().to_owned();
        let Ok(usage) = self.session.api().session_usage(&id).await else {
            return;
        };
        if let Some(turn) = usage.turns.last() {
            let text = format!(
                "{} · session: {}",
                usage_line(&turn.totals),
                usage_line(&usage.totals)
            );
            self.session.output().notice(&text);
        }
    }

    /// `/usage`: the session's tokens and cost, then each turn's.
    async fn show_usage(&mut self) -> Result<(), ChatError> {
        let id = self.session.session_id().to_owned();
        let usage = self.session.api().session_usage(&id).await?;
        let out = self.session.output();
        if usage.turns.is_empty() {
            out.info("(no LLM calls yet)");
            return Ok(());
        }
        out.info(&format!("session: {}", usage_line(&usage.totals)));
        for (number, turn) in usage.turns.iter().enumerate() {
            out.info(&format!(
                "  turn {}: {}",
                number + 1,
                usage_line(&turn.totals)
            ));
        }
        Ok(())
    }

    fn report(&mut self, end: Option<TurnEnd>) {
        match end {
            Some(TurnEnd::AwaitingApprovals) => self
                .session
                .output()
                .notice("the turn waits for approvals you put off: /approvals"),
            Some(TurnEnd::Interrupted) => self
                .session
                .output()
                .notice("stopped waiting; the turn may still finish (/history)"),
            _ => {}
        }
    }

    async fn list_agents(&mut self) -> Result<(), ChatError> {
        let agents = self.session.api().agents().await?;
        let current = self.session.agent().unwrap_or_default().to_owned();
        for agent in agents {
            let mark = if agent.kind == current { "*" } else { " " };
            self.session.output().info(&format!(
                "{mark} {:<13} {}",
                agent.kind,
                agent.description.lines().next().unwrap_or("")
            ));
        }
        Ok(())
    }

    async fn list_sessions(&mut self) -> Result<(), ChatError> {
        let sessions = self.session.api().sessions(20).await?;
        if sessions.is_empty() {
            self.session.output().info("(no sessions)");
        }
        for session in sessions {
            let mark = if session.id == self.session.session_id() {
                "*"
            } else {
                " "
            };
            self.session.output().info(&format!(
                "{mark} {}  {:>3} messages  {:<12} {}  {}",
                session.id,
                session.message_count,
                session.current_agent.unwrap_or_default(),
                session.last_activity.unwrap_or_default(),
                session.title.unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Stops the running tools and closes the socket.
    pub async fn close(self) {
        self.session.close().await;
    }
}

const HELP: &str = "Commands:
  /agent NAME     switch the session to an agent
  /agents         list the agents
  /sessions       list your sessions
  /resume ID      continue another session (shows its history, re-offers approvals)
  /new            start a new session
  /history        show this session's history
  /approvals      decide the approvals (and plans) that are pending
  /usage          tokens and cost of this session, per turn
  /quit           leave (also Ctrl-D)
Anything else is sent to the agent. Ctrl-C cancels a running turn.";

/// `1,310 tokens in (1,024 cached), 60 out, $0.000231 (2 calls)`; `no price` when no call had
/// one, and how many had none when some did.
pub fn usage_line(totals: &UsageTotals) -> String {
    let cached = if totals.cached_tokens > 0 {
        format!(" ({} cached)", thousands(totals.cached_tokens))
    } else {
        String::new()
    };
    let cost = match (totals.cost, totals.unpriced_requests) {
        (None, _) => "no price".to_owned(),
        (Some(cost), 0) => format!("${cost:.6}"),
        (Some(cost), unpriced) => format!("${cost:.6} + {unpriced} calls without a price"),
    };
    let calls = if totals.requests == 1 {
        "call"
    } else {
        "calls"
    };
    format!(
        "{} tokens in{cached}, {} out, {cost} ({} {calls})",
        thousands(totals.prompt_tokens),
        thousands(totals.completion_tokens),
        totals.requests
    )
}

/// `1234567` as `1,234,567`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn usage_lines_say_tokens_cached_cost_and_unpriced_calls() {
        let mut totals = UsageTotals {
            requests: 1,
            prompt_tokens: 1_234_567,
            completion_tokens: 56,
            total_tokens: 1_234_623,
            cached_tokens: 1_000,
            cost: None,
            unpriced_requests: 1,
        };
        assert_eq!(
            usage_line(&totals),
            "1,234,567 tokens in (1,000 cached), 56 out, no price (1 call)"
        );
        totals.requests = 3;
        totals.cached_tokens = 0;
        totals.cost = Some(0.001_25);
        assert_eq!(
            usage_line(&totals),
            "1,234,567 tokens in, 56 out, $0.001250 + 1 calls without a price (3 calls)"
        );
        totals.unpriced_requests = 0;
        assert!(usage_line(&totals).ends_with(", $0.001250 (3 calls)"));
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
