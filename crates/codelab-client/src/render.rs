//! What the user sees: the conversation on stdout (assistant text streamed as it arrives,
//! agent switches, compact tool calls and results), notices and the spinner on stderr; or, in
//! JSON mode, one JSON object per line on stdout and nothing else there. Text from the model or
//! the workspace is escaped ([`crate::sanitize`]) before it is written, and before our own
//! colours are added.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
        Output {
            mode,
            out: Box::new(std::io::stdout()),
            err: Box::new(std::io::stderr()),
            color,
            streaming: None,
            mid_line: false,
            spinner: None,
            spinner_enabled,
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
        self.break_line();
        let _ = self.out.flush();
        let _ = write!(self.err, "{}", for_terminal(text, Shape::Prose));
        let _ = self.err.flush();
    }

    /// Text shown before an approval decision (the call, its diff) on stderr.
    pub fn approval_text(&mut self, text: &str) {
        self.stop_spinner();
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
                if !final_ {
                    if self.streaming.is_none() {
                        self.break_line();
                    }
                    self.streaming = message_id.or_else(|| Some(String::new()));
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
            // Shown by the caller when it matters (connect, resume); approval prompts too.
            "session_info" | "approval_required" => {}
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
        assert_eq!(
            out.text(),
            "Hello\nReplayed\n→ coder agent (coding)\n⚙ read_file a.txt\n"
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
