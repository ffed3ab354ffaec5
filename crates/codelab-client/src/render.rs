//! What the user sees: the conversation on stdout (assistant text streamed as it arrives,
//! agent switches, compact tool calls and results), notices and the spinner on stderr; or, in
//! JSON mode, one JSON object per line on stdout and nothing else there. Text from the model or
//! the workspace is escaped ([`crate::sanitize`]) before it is written, and before our own
//! colours are added.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use codelab_protocol::plans::{PlanStatus, PlanView, SubtaskStatus};
use serde_json::{Value, json};

use crate::sanitize::{Shape, for_terminal, has_hidden_characters, json_for_terminal};
use crate::tools::ToolOutcome;

/// How output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// For people.
    Human,
    /// One JSON object per line: `{"direction":"in","frame":...}` for each frame received,
    /// `{"direction":"out","tool_result":...}` / `{"direction":"out","hitl_decision":...}` for
    /// what this client sent about tool calls, `{"direction":"local",...}` for notices.
    Json,
}

/// The terminal (or JSON) renderer.
pub struct Output {
    mode: OutputMode,
    out: Box<dyn Write + Send>,
    err: Box<dyn Write + Send>,
    color: bool,
    /// The message whose deltas are being printed (its final frame must not repeat them).
    streaming: Option<String>,
    /// The cursor is not at the start of a line on stdout.
    mid_line: bool,
    spinner: Option<Spinner>,
    spinner_enabled: bool,
    /// stdout is a terminal: a plan checklist that is still the last thing on the screen is
    /// redrawn in place.
    redraw: bool,
    /// The checklist last drawn, when nothing was written after it: its plan and line count.
    checklist: Option<(String, usize)>,
    /// The text of the last whole assistant message (a plan's summary arrives twice: as a
    /// message and in `execution_completed`).
    last_message: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A `\r` spinner on stderr while waiting for the first token.
struct Spinner {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Output {
    /// Writes to the process's stdout and stderr; colors and the spinner only on terminals
    /// (and colors not with `NO_COLOR`).
    pub fn stdio(mode: OutputMode) -> Output {
        let color = mode == OutputMode::Human
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none();
        let spinner_enabled = mode == OutputMode::Human && std::io::stderr().is_terminal();
        let redraw = mode == OutputMode::Human && std::io::stdout().is_terminal();
        Output {
            mode,
            out: Box::new(std::io::stdout()),
            err: Box::new(std::io::stderr()),
            color,
            streaming: None,
            mid_line: false,
            spinner: None,
            spinner_enabled,
            redraw,
            checklist: None,
            last_message: String::new(),
        }
    }

    /// Writes to the given sinks, without colors or spinner (tests).
    pub fn to_writers(
        mode: OutputMode,
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
    ) -> Output {
        Output {
            mode,
            out,
            err,
            color: false,
            streaming: None,
            mid_line: false,
            spinner: None,
            spinner_enabled: false,
            redraw: false,
            checklist: None,
            last_message: String::new(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> OutputMode {
        self.mode
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn json_line(&mut self, value: Value) {
        let text = value.to_string();
        let _ = writeln!(self.out, "{}", json_for_terminal(&text));
        let _ = self.out.flush();
    }

    /// Ends a streamed line before something else is printed.
    fn break_line(&mut self) {
        if self.mid_line {
            let _ = writeln!(self.out);
            self.mid_line = false;
        }
    }

    fn line(&mut self, text: &str) {
        self.stop_spinner();
        self.break_line();
        self.checklist = None;
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    /// A notice for the user (stderr), or a `local` JSON line.
    pub fn notice(&mut self, text: &str) {
        self.local("notice", text, "2", "· ");
    }

    /// An error for the user (stderr), or a `local` JSON line.
    pub fn error(&mut self, text: &str) {
        self.local("error", text, "31", "error: ");
    }

    /// A `local` JSON line `{kind: text}`, or `text` after `label` on stderr in colour `sgr`.
    fn local(&mut self, kind: &str, text: &str, sgr: &str, label: &str) {
        self.stop_spinner();
        // stderr shares the screen with stdout: the checklist is no longer the last thing.
        self.checklist = None;
        match self.mode {
            OutputMode::Json => self.json_line(json!({"direction": "local", kind: text})),
            OutputMode::Human => {
                self.break_line();
                let _ = self.out.flush();
                let text = for_terminal(text, Shape::Prose);
                let text = self.paint(sgr, &format!("{label}{text}"));
                let _ = writeln!(self.err, "{text}");
                let _ = self.err.flush();
            }
        }
    }

    /// Plain text for people (command answers such as `/agents`); nothing in JSON mode.
    pub fn info(&mut self, text: &str) {
        if self.mode == OutputMode::Human {
            self.line(&for_terminal(text, Shape::Prose));
        }
    }

    /// A prompt on stderr (both modes: JSON mode keeps stdout machine-readable).
    pub fn prompt(&mut self, text: &str) {
        self.stop_spinner();
        self.checklist = None;
        self.break_line();
        let _ = self.out.flush();
        let _ = write!(self.err, "{}", for_terminal(text, Shape::Prose));
        let _ = self.err.flush();
    }

    /// Text shown before an approval decision (the call, its diff) on stderr.
    pub fn approval_text(&mut self, text: &str) {
        self.stop_spinner();
        self.checklist = None;
        self.break_line();
        let _ = self.out.flush();
        let text = for_terminal(text, Shape::Block);
        let _ = write!(self.err, "{text}");
        if !text.ends_with('\n') {
            let _ = writeln!(self.err);
        }
        let _ = self.err.flush();
    }

    /// Starts the spinner (a no-op unless stderr is a terminal in human mode).
    pub fn start_spinner(&mut self) {
        if !self.spinner_enabled || self.spinner.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = crate::spawn(async move {
            const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                // Clear the line first: text typed ahead would otherwise show through.
                eprint!(
                    "\r\x1b[K{} waiting for the agent…",
                    FRAMES[i % FRAMES.len()]
                );
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        self.spinner = Some(Spinner { stop, task });
    }

    /// Stops the spinner and clears its line.
    pub fn stop_spinner(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.stop.store(true, Ordering::Relaxed);
            spinner.task.abort();
            let _ = write!(self.err, "\r\x1b[K");
            let _ = self.err.flush();
        }
    }

    /// A frame received from the gateway.
    pub fn frame_in(&mut self, frame: &Value) {
        if self.mode == OutputMode::Json {
            self.json_line(json!({"direction": "in", "frame": frame}));
            return;
        }
        let kind = frame.get("type").and_then(Value::as_str).unwrap_or("");
        let text = |key: &str| frame.get(key).and_then(Value::as_str).unwrap_or("");
        match kind {
            "assistant_message" => {
                let final_ = frame
                    .get("is_final")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let message_id = frame
                    .pointer("/metadata/message_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let content = for_terminal(text("content"), Shape::Prose);
                self.stop_spinner();
                if final_ {
                    self.last_message = text("content").to_owned();
                }
                if !final_ {
                    if self.streaming.is_none() {
                        self.break_line();
                    }
                    self.streaming = message_id.or_else(|| Some(String::new()));
                    self.checklist = None;
                    let _ = write!(self.out, "{content}");
                    let _ = self.out.flush();
                    self.mid_line = !content.ends_with('\n');
                } else if self.streaming.is_some()
                    && (message_id.is_none() || self.streaming == message_id)
                {
                    // The whole text was already printed piece by piece.
                    self.streaming = None;
                    self.break_line();
                } else {
                    self.streaming = None;
                    self.line(content.trim_end_matches('\n'));
                }
            }
            "agent_switched" => {
                let to = frame
                    .get("to_agent")
                    .or_else(|| frame.pointer("/metadata/to_agent"))
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let to = for_terminal(to, Shape::Line);
                let reason = for_terminal(text("reason"), Shape::Line);
                let line = if reason.is_empty() {
                    format!("→ {to} agent")
                } else {
                    format!("→ {to} agent ({reason})")
                };
                let line = self.paint("36", &line);
                self.line(&line);
            }
            "tool_call" => {
                if frame
                    .get("requires_approval")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    // The approval prompt shows it.
                    return;
                }
                let name = text("tool_name");
                let args = frame.get("arguments").cloned().unwrap_or(Value::Null);
                let line = format!(
                    "⚙ {} {}",
                    for_terminal(name, Shape::Line),
                    summarize_args(name, &args)
                );
                let line = self.paint("33", &line);
                self.line(&line);
            }
            "error" => {
                let message = frame
                    .get("content")
                    .or_else(|| frame.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                let message = for_terminal(message, Shape::Block);
                let line = self.paint("31", &format!("✗ {message}"));
                self.line(&line);
            }
            "warning" => {
                let message = for_terminal(text("content"), Shape::Block);
                let line = self.paint("33", &format!("⚠ {message}"));
                self.line(&line);
            }
            "turn_finished" => {
                let outcome = text("content");
                self.streaming = None;
                match outcome {
                    "completed" | "awaiting_tools" => self.break_line(),
                    "cancelled" => self.notice("turn cancelled"),
                    "step_limit" => self.notice("the turn stopped at the step limit"),
                    "failed" => self.notice("the turn failed"),
                    other => {
                        let other = for_terminal(other, Shape::Line).into_owned();
                        self.notice(&format!("turn finished: {other}"));
                    }
                }
            }
            // Shown by the caller when it matters (connect, resume); approval prompts too, and
            // plans (the session keeps their state: see the `plan_*` methods).
            "session_info"
            | "approval_required"
            | "plan_approval_required"
            | "plan_update"
            | "plan_progress"
            | "execution_completed" => {}
            _ => {
                let content = for_terminal(text("content"), Shape::Prose);
                if !content.is_empty() {
                    self.line(&content);
                }
            }
        }
    }

    /// A `tool_result` this client sent.
    pub fn tool_result_out(&mut self, frame: &Value, tool_name: &str, outcome: &ToolOutcome) {
        if self.mode == OutputMode::Json {
            self.json_line(json!({"direction": "out", "tool_result": frame}));
            return;
        }
        let line = match outcome {
            ToolOutcome::Result(result) => {
                self.paint("2", &format!("  ✓ {}", summarize_result(tool_name, result)))
            }
            ToolOutcome::Error(error) => {
                let error = for_terminal(error, Shape::Block);
                self.paint("31", &format!("  ✗ {error}"))
            }
        };
        self.line(&line);
    }

    /// A `hitl_decision` this client sent.
    pub fn decision_out(&mut self, frame: &Value) {
        match self.mode {
            OutputMode::Json => self.json_line(json!({"direction": "out", "hitl_decision": frame})),
            OutputMode::Human => {
                let decision = frame.get("decision").and_then(Value::as_str).unwrap_or("");
                let decision = for_terminal(decision, Shape::Line);
                let line = self.paint("2", &format!("  decision: {decision}"));
                self.line(&line);
            }
        }
    }

    /// A `plan_decision` this client sent.
    pub fn plan_decision_out(&mut self, frame: &Value) {
        match self.mode {
            OutputMode::Json => self.json_line(json!({"direction": "out", "plan_decision": frame})),
            OutputMode::Human => {
                let decision = frame.get("decision").and_then(Value::as_str).unwrap_or("");
                let decision = for_terminal(decision, Shape::Line);
                let line = self.paint("2", &format!("  plan decision: {decision}"));
                self.line(&line);
            }
        }
    }

    /// A plan as a checklist on stdout (people only; JSON mode has the frame).
    pub fn plan_checklist(&mut self, plan: &PlanView) {
        if self.mode != OutputMode::Human {
            return;
        }
        let text = self.fit_to_width(&plan_checklist(plan));
        self.line(text.trim_end_matches('\n'));
        self.checklist = Some((plan.id.clone(), text.lines().count()));
    }

    /// The plan shown before a decision where stdout is not for people (JSON mode: on
    /// stderr, like an approval's diff); in human mode the checklist is already on stdout.
    pub fn plan_for_decision(&mut self, plan: &PlanView) {
        if self.mode == OutputMode::Json {
            self.approval_text(&plan_checklist(plan));
        }
    }

    /// A subtask of `plan` changed: the checklist redrawn in place when it is still the last
    /// thing on a terminal, else one line for the subtask.
    pub fn plan_progress(&mut self, plan: &PlanView, subtask_id: u32) {
        if self.mode != OutputMode::Human {
            return;
        }
        if self.redraw_checklist(plan) {
            return;
        }
        if let Some(subtask) = plan.subtasks.iter().find(|s| s.id == subtask_id) {
            let line = subtask_line(subtask);
            let line = match subtask.status {
                SubtaskStatus::Completed => self.paint("32", &line),
                SubtaskStatus::Failed => self.paint("31", &line),
                _ => line,
            };
            self.line(&line);
        }
    }

    /// `plan` changed as a whole (`plan_update`): redrawn in place when it can be; otherwise a
    /// line when a person's decision took effect (approved, rejected). The end of a run is
    /// told by [`Output::execution_completed`].
    pub fn plan_changed(&mut self, plan: &PlanView, previous: Option<PlanStatus>) {
        if self.mode != OutputMode::Human || previous == Some(plan.status) {
            return;
        }
        if self.redraw_checklist(plan) {
            return;
        }
        if matches!(plan.status, PlanStatus::Approved | PlanStatus::Rejected) {
            let line = format!(
                "Plan \"{}\" (version {}): {}",
                for_terminal(&plan.title, Shape::Line),
                plan.version,
                plan.status.as_str()
            );
            let line = self.paint("36", &line);
            self.line(&line);
        }
    }

    /// A plan's run ended: its status, and its summary unless the assistant message just
    /// before said the same.
    pub fn execution_completed(&mut self, status: &str, summary: &str) {
        if self.mode != OutputMode::Human {
            return;
        }
        let (mark, sgr) = match status {
            "completed" => ("✓", "32"),
            "failed" => ("✗", "31"),
            _ => ("·", "2"),
        };
        let line = format!("{mark} plan {}", for_terminal(status, Shape::Line));
        let line = self.paint(sgr, &line);
        self.line(&line);
        if summary.trim() != self.last_message.trim() && !summary.trim().is_empty() {
            let summary = for_terminal(summary.trim_end(), Shape::Prose).into_owned();
            self.line(&summary);
        }
    }

    /// Redraws the checklist of `plan` in place when it is the last thing drawn; whether it
    /// did.
    fn redraw_checklist(&mut self, plan: &PlanView) -> bool {
        let Some((id, lines)) = self.checklist.clone() else {
            return false;
        };
        if !self.redraw || id != plan.id || self.mid_line {
            return false;
        }
        self.stop_spinner();
        // Up to the checklist's first line, erase to the end of the screen, draw again.
        let _ = write!(self.out, "\x1b[{lines}A\r\x1b[J");
        self.plan_checklist(plan);
        true
    }

    /// On a terminal, each line cut to the terminal's width, so a redraw moves up exactly as
    /// many lines as were drawn.
    fn fit_to_width(&self, text: &str) -> String {
        let width = if self.redraw {
            rustix::termios::tcgetwinsize(std::io::stdout())
                .ok()
                .map(|size| usize::from(size.ws_col))
                .filter(|w| *w > 1)
        } else {
            None
        };
        let Some(width) = width else {
            return text.to_owned();
        };
        text.lines()
            .map(|line| {
                if line.chars().count() >= width {
                    format!("{}…\n", line.chars().take(width - 2).collect::<String>())
                } else {
                    format!("{line}\n")
                }
            })
            .collect()
    }
}

/// The mark of a subtask's state: `[x]` done, `[>]` running, `[!]` failed, `[-]` skipped,
/// `[ ]` pending, `[~]` cancelled.
pub fn subtask_mark(status: SubtaskStatus) -> &'static str {
    match status {
        SubtaskStatus::Completed => "[x]",
        SubtaskStatus::InProgress => "[>]",
        SubtaskStatus::Failed => "[!]",
        SubtaskStatus::Skipped => "[-]",
        SubtaskStatus::Pending => "[ ]",
        SubtaskStatus::Cancelled => "[~]",
    }
}

/// One subtask on one line: `[x] 2. title (coder, ~5 min, after 1)`, escaped for the terminal
/// (a title cannot add a line of its own).
pub fn subtask_line(subtask: &codelab_protocol::plans::SubtaskView) -> String {
    let mut line = format!(
        "  {} {}. {} ({}, ~{} min",
        subtask_mark(subtask.status),
        u64::from(subtask.id) + 1,
        for_terminal(&subtask.title, Shape::Line),
        for_terminal(&subtask.agent, Shape::Line),
        subtask.estimated_time_minutes
    );
    if !subtask.dependencies.is_empty() {
        let after: Vec<String> = subtask
            .dependencies
            .iter()
            .map(|d| (u64::from(*d) + 1).to_string())
            .collect();
        line.push_str(&format!(", after {}", after.join(", ")));
    }
    line.push(')');
    if let Some(error) = subtask.error.as_deref().filter(|e| !e.is_empty()) {
        line.push_str(&format!(
            ": {}",
            short(&for_terminal(error, Shape::Line), 120)
        ));
    }
    line
}

/// A plan as a numbered checklist: its title, version, state, size and total estimate, its
/// description, then one line per subtask ([`subtask_line`]). Everything from the model is
/// escaped.
pub fn plan_checklist(plan: &PlanView) -> String {
    let summary = plan.summary_view();
    let mut text = format!(
        "Plan: {} (version {}, {}; {} subtask{}, ~{} min)\n",
        for_terminal(&plan.title, Shape::Line),
        plan.version,
        plan.status.as_str(),
        summary.subtasks_count,
        if summary.subtasks_count == 1 { "" } else { "s" },
        summary.total_estimated_time_minutes
    );
    for line in plan.description.trim().lines() {
        text.push_str(&format!("  {}\n", for_terminal(line, Shape::Line)));
    }
    for subtask in &plan.subtasks {
        text.push_str(&subtask_line(subtask));
        text.push('\n');
    }
    text
}

fn short(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', "⏎");
    if one_line.chars().count() > max {
        format!("{}…", one_line.chars().take(max).collect::<String>())
    } else {
        one_line
    }
}

/// The arguments of a call in a few words (`src/lib.rs`, `cargo test`, `"parse" in *.rs`), on
/// one line, escaped for the terminal.
pub fn summarize_args(tool_name: &str, args: &Value) -> String {
    let summary = summary_of_args(tool_name, args);
    for_terminal(&summary, Shape::Line).into_owned()
}

fn summary_of_args(tool_name: &str, args: &Value) -> String {
    let s = |key: &str| args.get(key).and_then(Value::as_str);
    match tool_name {
        "read_file" | "list_files" | "create_directory" => s("path").unwrap_or(".").to_owned(),
        "write_file" => format!(
            "{} ({} bytes)",
            s("path").unwrap_or("?"),
            s("content").map_or(0, str::len)
        ),
        "execute_command" => format!("$ {}", short(s("command").unwrap_or(""), 100)),
        "search_in_code" => match s("file_pattern") {
            Some(glob) => format!("{:?} in {glob}", s("query").unwrap_or("")),
            None => format!("{:?}", s("query").unwrap_or("")),
        },
        _ => short(&args.to_string(), 100),
    }
}

/// A result in a few words (`3 lines`, `exit 0`, `12 matches`), escaped for the terminal (the
/// output lines of a command each on their own line).
pub fn summarize_result(tool_name: &str, result: &Value) -> String {
    if tool_name == "execute_command" {
        return summary_of_command(result);
    }
    for_terminal(&summary_of_result(tool_name, result), Shape::Line).into_owned()
}

/// The text shown before an approval decision: the call on one line, the reason, and what it
/// would change (`diff`, for `write_file`) or its arguments. Everything from the model or the
/// workspace is escaped, so a `\r` or an erase-line sequence cannot hide part of a command;
/// when the arguments hold such characters a warning says so.
pub fn approval_prompt(
    tool_name: &str,
    arguments: &Value,
    reason: &str,
    diff: Option<&str>,
) -> String {
    let mut text = format!(
        "\nApproval needed: {} {}\n",
        for_terminal(tool_name, Shape::Line),
        summarize_args(tool_name, arguments)
    );
    if !reason.is_empty() {
        text.push_str(&format!(
            "  reason: {}\n",
            for_terminal(reason, Shape::Line)
        ));
    }
    match diff {
        Some(diff) => text.push_str(&for_terminal(diff, Shape::Block)),
        None => {
            let pretty = serde_json::to_string_pretty(arguments).unwrap_or_default();
            text.push_str(&format!("  arguments: {}\n", json_for_terminal(&pretty)));
        }
    }
    if value_has_hidden_characters(arguments) {
        text.push_str(
            "  warning: the arguments contain control or invisible characters (shown escaped as \
             \\r, \\x1b, \\u{...}): check what they do before approving\n",
        );
    }
    text
}

fn value_has_hidden_characters(value: &Value) -> bool {
    match value {
        Value::String(s) => has_hidden_characters(s),
        Value::Array(items) => items.iter().any(value_has_hidden_characters),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| has_hidden_characters(k) || value_has_hidden_characters(v)),
        _ => false,
    }
}

fn summary_of_command(result: &Value) -> String {
    let code = result
        .get("exit_code")
        .and_then(Value::as_i64)
        .map_or("killed".to_owned(), |c| format!("exit {c}"));
    let stdout = result.get("stdout").and_then(Value::as_str).unwrap_or("");
    let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
    let mut text = if result.get("timed_out").and_then(Value::as_bool) == Some(true) {
        "timed out".to_owned()
    } else {
        code
    };
    for line in tail.iter().rev() {
        text.push_str(&format!(
            "\n    {}",
            for_terminal(&short(line, 160), Shape::Line)
        ));
    }
    text
}

fn summary_of_result(tool_name: &str, result: &Value) -> String {
    let n = |key: &str| result.get(key).and_then(Value::as_u64).unwrap_or(0);
    match tool_name {
        "read_file" => format!("{} lines", n("lines_read")),
        "write_file" => match result.get("backup_path").and_then(Value::as_str) {
            Some(backup) => format!("{} bytes written (backup {backup})", n("bytes_written")),
            None => format!("{} bytes written", n("bytes_written")),
        },
        "list_files" => format!("{} entries", n("total_count")),
        "create_directory" => {
            if result.get("created").and_then(Value::as_bool) == Some(true) {
                "created".to_owned()
            } else {
                "already exists".to_owned()
            }
        }
        "search_in_code" => format!("{} matches", n("total_matches")),
        _ => short(&result.to_string(), 100),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// An [`Output`] in `mode` writing to the two returned sinks (stdout, stderr).
    fn output(mode: OutputMode) -> (Output, Sink, Sink) {
        let (out, err) = (Sink::default(), Sink::default());
        let o = Output::to_writers(mode, Box::new(out.clone()), Box::new(err.clone()));
        (o, out, err)
    }

    #[test]
    fn deltas_stream_and_the_final_text_is_not_repeated() {
        let (mut o, out, _) = output(OutputMode::Human);
        let meta = json!({"message_id": "m1"});
        o.frame_in(
            &json!({"type":"assistant_message","content":"Hel","is_final":false,"metadata":meta}),
        );
        o.frame_in(
            &json!({"type":"assistant_message","content":"lo","is_final":false,"metadata":meta}),
        );
        o.frame_in(&json!({"type":"assistant_message","content":"Hello","is_final":true,"metadata":{"message_id":"m1","seq":3}}));
        o.frame_in(&json!({"type":"assistant_message","content":"Replayed","is_final":true,"metadata":{"message_id":"m2"}}));
        o.frame_in(&json!({"type":"agent_switched","to_agent":"coder","reason":"coding"}));
        o.frame_in(&json!({"type":"tool_call","tool_name":"read_file","arguments":{"path":"a.txt"},"requires_approval":false}));
        o.frame_in(&json!({"type":"warning","content":"Budget warning: 80% used","metadata":{"code":"budget_warning"}}));
        assert_eq!(
            out.text(),
            "Hello\nReplayed\n→ coder agent (coding)\n⚙ read_file a.txt\n⚠ Budget warning: 80% used\n"
        );
    }

    #[test]
    fn json_mode_writes_one_object_per_line() {
        let (mut o, out, err) = output(OutputMode::Json);
        o.frame_in(&json!({"type":"turn_finished","content":"completed"}));
        o.tool_result_out(
            &json!({"type":"tool_result","call_id":"c"}),
            "read_file",
            &ToolOutcome::Error("x".into()),
        );
        o.info("not in json");
        let lines: Vec<Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["direction"], "in");
        assert_eq!(lines[0]["frame"]["type"], "turn_finished");
        assert_eq!(lines[1]["direction"], "out");
        assert_eq!(lines[1]["tool_result"]["call_id"], "c");
        assert_eq!(lines.len(), 2);
        assert!(err.text().is_empty());
    }

    #[test]
    fn an_approval_prompt_shows_a_command_hidden_behind_cr_or_erase_line_in_full() {
        for (command, shown) in [
            ("rm -rf ~\x1b[2K\rls -la", r"$ rm -rf ~\x1b[2K\rls -la"),
            ("rm -rf ~ \r ls", r"$ rm -rf ~ \r ls"),
        ] {
            let prompt = approval_prompt(
                "execute_command",
                &json!({"command": command}),
                "commands need approval",
                None,
            );
            assert!(
                prompt.contains(&format!("Approval needed: execute_command {shown}\n")),
                "{prompt}"
            );
            assert!(
                prompt.contains("warning: the arguments contain control"),
                "{prompt}"
            );
            // What reaches the terminal has nothing left to act on.
            let (mut o, _, err) = output(OutputMode::Human);
            o.approval_text(&prompt);
            let written = err.text();
            assert!(!written.contains(['\x1b', '\r']), "{written:?}");
            assert!(written.contains(shown), "{written}");
        }
        let plain = approval_prompt("execute_command", &json!({"command": "ls -la"}), "", None);
        assert!(!plain.contains("warning"), "{plain}");
    }

    #[test]
    fn a_bidi_override_in_a_path_is_escaped_at_the_prompt() {
        let path = "invoice\u{202e}txt.exe";
        let arguments = json!({"path": path, "content": "x\n"});
        let diff = crate::diff::unified("", "x\n", path);
        let prompt = approval_prompt("write_file", &arguments, "", Some(&diff));
        assert!(
            prompt.contains(r"Approval needed: write_file invoice\u{202e}txt.exe (2 bytes)"),
            "{prompt}"
        );
        assert!(prompt.contains(r"+++ b/invoice\u{202e}txt.exe"), "{prompt}");
        assert!(!prompt.contains('\u{202e}'), "{prompt}");
        assert_eq!(
            summarize_args("read_file", &json!({"path": "a\u{2066}b\nc"})),
            r"a\u{2066}b\nc"
        );
    }

    #[test]
    fn streamed_osc_sequences_are_neutralized() {
        let (mut o, out, _) = output(OutputMode::Human);
        let meta = json!({"message_id": "m1"});
        // OSC 52 (set the clipboard) split across two pieces, then an OSC 8 hyperlink.
        for piece in [
            "copy \x1b]5",
            "2;c;cm0gLXJmIH4=\x07 then ",
            "\x1b]8;;https://evil.example\x1b\\docs\x1b]8;;\x1b\\\r\n",
        ] {
            o.frame_in(
                &json!({"type":"assistant_message","content":piece,"is_final":false,
                              "metadata":meta}),
            );
        }
        o.frame_in(&json!({"type":"error","content":"bad \x1b]0;title\x07"}));
        let text = out.text();
        assert!(!text.contains(['\x1b', '\x07', '\r']), "{text:?}");
        assert!(
            text.contains(r"copy \x1b]52;c;cm0gLXJmIH4=\x07 then "),
            "{text}"
        );
        assert!(
            text.contains(r"\x1b]8;;https://evil.example\x1b\docs"),
            "{text}"
        );
        assert!(text.contains(r"✗ bad \x1b]0;title\x07"), "{text}");
    }

    #[test]
    fn our_colours_survive_and_theirs_are_escaped() {
        let (mut o, out, _) = output(OutputMode::Human);
        o.color = true;
        o.frame_in(&json!({"type":"error","content":"\x1b[32mfake ok"}));
        assert_eq!(out.text(), "\x1b[31m✗ \\x1b[32mfake ok\x1b[0m\n");
    }

    #[test]
    fn json_lines_carry_the_same_values_without_live_controls() {
        let (mut o, out, _) = output(OutputMode::Json);
        let frame = json!({"type":"assistant_message","content":"a\u{9b}2Kb\u{202e}c\u{7f}"});
        o.frame_in(&frame);
        let text = out.text();
        assert!(!text.contains(['\u{9b}', '\u{202e}', '\u{7f}']), "{text:?}");
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["frame"], frame);
    }

    fn plan(statuses: [SubtaskStatus; 2]) -> PlanView {
        let subtask =
            |id: u32, status, dependencies: Vec<u32>| codelab_protocol::plans::SubtaskView {
                id,
                title: ["write the form", "check it"][id as usize].into(),
                description: String::new(),
                agent: ["coder", "debug"][id as usize].into(),
                estimated_time_minutes: id + 1,
                dependencies,
                status,
                result: None,
                error: None,
            };
        PlanView {
            id: "plan_1".into(),
            session_id: "s".into(),
            version: 1,
            title: "Login".into(),
            description: "Forms\nand routes".into(),
            status: PlanStatus::AwaitingApproval,
            approval_request_id: "call_1".into(),
            created_at: String::new(),
            updated_at: String::new(),
            feedback: None,
            summary: None,
            subtasks: vec![
                subtask(0, statuses[0], vec![]),
                subtask(1, statuses[1], vec![0]),
            ],
            versions: Vec::new(),
        }
    }

    #[test]
    fn a_plan_is_a_numbered_checklist_with_agents_estimates_and_dependencies() {
        let mut plan = plan([SubtaskStatus::Pending, SubtaskStatus::Pending]);
        assert_eq!(
            plan_checklist(&plan),
            "Plan: Login (version 1, awaiting_approval; 2 subtasks, ~3 min)\n  Forms\n  and routes\n\
             \x20 [ ] 1. write the form (coder, ~1 min)\n  [ ] 2. check it (debug, ~2 min, after 1)\n"
        );
        let marks: Vec<&str> = [
            SubtaskStatus::Completed,
            SubtaskStatus::InProgress,
            SubtaskStatus::Failed,
            SubtaskStatus::Skipped,
            SubtaskStatus::Cancelled,
        ]
        .into_iter()
        .map(subtask_mark)
        .collect();
        assert_eq!(marks, ["[x]", "[>]", "[!]", "[-]", "[~]"]);
        // A title cannot draw a line of its own (a fake "done" subtask) or colour anything.
        plan.subtasks[0].title = "a\n  [x] 3. fake \x1b[32mdone".into();
        let text = plan_checklist(&plan);
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains(r"a\n  [x] 3. fake \x1b[32mdone"), "{text}");
    }

    #[test]
    fn progress_is_a_line_per_change_off_a_terminal() {
        let (mut o, out, _) = output(OutputMode::Human);
        let waiting = plan([SubtaskStatus::Pending, SubtaskStatus::Pending]);
        o.plan_checklist(&waiting);
        let mut approved = waiting.clone();
        approved.status = PlanStatus::Approved;
        o.plan_changed(&approved, Some(PlanStatus::AwaitingApproval));
        // The same state again says nothing.
        o.plan_changed(&approved, Some(PlanStatus::Approved));
        o.plan_progress(
            &plan([SubtaskStatus::InProgress, SubtaskStatus::Pending]),
            0,
        );
        o.plan_progress(&plan([SubtaskStatus::Completed, SubtaskStatus::Pending]), 0);
        o.plan_progress(&plan([SubtaskStatus::Completed, SubtaskStatus::Failed]), 1);
        let text = out.text();
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(
            text.ends_with(
                "Plan \"Login\" (version 1): approved\n  [>] 1. write the form (coder, ~1 min)\n\
                 \x20 [x] 1. write the form (coder, ~1 min)\n  [!] 2. check it (debug, ~2 min, after 1)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn on_a_terminal_the_last_checklist_is_redrawn_in_place() {
        let (mut o, out, _) = output(OutputMode::Human);
        o.redraw = true;
        o.plan_checklist(&plan([SubtaskStatus::Pending, SubtaskStatus::Pending]));
        let drawn = out.text();
        o.plan_progress(
            &plan([SubtaskStatus::InProgress, SubtaskStatus::Pending]),
            0,
        );
        let text = out.text();
        let redrawn = &text[drawn.len()..];
        // Up the checklist's five lines, erase, draw the new state.
        assert!(redrawn.starts_with("\x1b[5A\r\x1b[J"), "{redrawn:?}");
        assert!(
            redrawn.contains("[>] 1. write the form") && redrawn.contains("[ ] 2. check it"),
            "{redrawn}"
        );
        // Once something else was printed, a change is a line of its own again.
        o.frame_in(&json!({"type":"assistant_message","content":"working","is_final":true}));
        let before = out.text().len();
        o.plan_progress(&plan([SubtaskStatus::Completed, SubtaskStatus::Pending]), 0);
        assert_eq!(
            &out.text()[before..],
            "  [x] 1. write the form (coder, ~1 min)\n"
        );
    }

    #[test]
    fn a_finished_run_shows_its_status_and_the_summary_once() {
        let (mut o, out, _) = output(OutputMode::Human);
        let summary = "Plan \"Login\" completed.\n1. write the form (coder) done: ok\n";
        o.frame_in(&json!({"type":"assistant_message","content":summary,"is_final":true}));
        o.execution_completed("completed", summary);
        assert_eq!(
            out.text(),
            format!("{}\n✓ plan completed\n", summary.trim_end())
        );
        let (mut o, out, _) = output(OutputMode::Human);
        o.execution_completed("failed", "Plan \"Login\" stopped: subtask 1 failed");
        assert_eq!(
            out.text(),
            "✗ plan failed\nPlan \"Login\" stopped: subtask 1 failed\n"
        );
    }

    #[test]
    fn json_mode_reports_plan_decisions_and_keeps_checklists_off_stdout() {
        let (mut o, out, err) = output(OutputMode::Json);
        let waiting = plan([SubtaskStatus::Pending, SubtaskStatus::Pending]);
        o.plan_checklist(&waiting);
        o.plan_progress(&waiting, 0);
        o.execution_completed("completed", "done");
        o.plan_for_decision(&waiting);
        o.plan_decision_out(
            &json!({"type":"plan_decision","plan_id":"plan_1","decision":"approve"}),
        );
        let lines: Vec<Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["direction"], "out");
        assert_eq!(lines[0]["plan_decision"]["decision"], "approve");
        assert!(err.text().contains("[ ] 2. check it"), "{}", err.text());
    }

    #[test]
    fn summaries_are_short() {
        assert_eq!(
            summarize_args("write_file", &json!({"path":"a","content":"xyz"})),
            "a (3 bytes)"
        );
        assert_eq!(
            summarize_result("execute_command", &json!({"exit_code":0,"stdout":"ok\n"})),
            "exit 0\n    ok"
        );
        assert_eq!(
            summarize_result("write_file", &json!({"bytes_written":2,"backup_path":null})),
            "2 bytes written"
        );
    }
}
