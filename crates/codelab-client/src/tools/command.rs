//! `execute_command`: a program run in the workspace with a timeout and capped output.
//!
//! Without `shell: true` the command line is split into words (POSIX quoting, no expansion)
//! and run directly, so `;`, `|` or `$(...)` in it are plain arguments. The child gets its own
//! process group, which is killed whole on timeout or when the call is abandoned, so
//! grandchildren (`sh -c 'sleep 100 &'`) do not outlive it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::Limits;
use super::args::Args;
use super::files::fs_error;
use super::workspace::{Workspace, display};

/// Seconds a command may run when the call does not say.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// The longest timeout a call may ask for.
pub const MAX_TIMEOUT_SECS: u64 = 300;

/// A command line that cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A `'` or `"` without its closing quote.
    #[error("unterminated {0} quote")]
    Unterminated(&'static str),
    /// A `\` at the very end.
    #[error("a trailing backslash escapes nothing")]
    TrailingBackslash,
}

/// Splits a command line into words the way a POSIX shell does, without any expansion:
/// whitespace separates words; `'...'` is literal; in `"..."` a backslash escapes only
/// `$ ` \ "` and newline; outside quotes a backslash escapes any character.
pub fn split_words(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('$' | '`' | '\\' | '"')) => word.push(c),
                            // A backslash-newline is a line continuation.
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::Unterminated("double")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(SplitError::TrailingBackslash),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Kills a process group when dropped (timeout, or the call abandoned by a cancelled turn).
struct GroupGuard(Option<rustix::process::Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // The group may be gone already: nothing to report then.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end, keeping at most `cap` bytes (the rest is counted and dropped,
/// so the child never blocks on a full pipe).
async fn read_capped(mut stream: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                let take = n.min(room);
                kept.extend_from_slice(&buf[..take]);
                dropped += (n - take) as u64;
            }
        }
    }
    (kept, dropped)
}

/// The captured text with a marker saying how much was cut.
pub fn capped_text(bytes: &[u8], dropped: u64) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if dropped > 0 {
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("[... {dropped} more bytes truncated]"));
    }
    text
}

/// The timeout a call gets: its own (at least 1 s, at most [`MAX_TIMEOUT_SECS`]) or the
/// default.
pub fn effective_timeout(requested: Option<u64>) -> Duration {
    Duration::from_secs(
        requested
            .unwrap_or(DEFAULT_TIMEOUT_SECS)
            .clamp(1, MAX_TIMEOUT_SECS),
    )
}

/// `execute_command {command, cwd?, timeout?, shell?}` → `{success, exit_code, stdout,
/// stderr, timed_out}`; `exit_code` is `null` when the process was killed.
pub async fn execute_command(
    ws: &Workspace,
    args: Args<'_>,
    limits: &Limits,
) -> Result<Value, String> {
    let line = args.string("command")?;
    let shell = args.flag("shell", false)?;
    let timeout = effective_timeout(args.opt_u64("timeout")?);
    let requested_cwd = args.opt_string("cwd")?.unwrap_or(".");
    let rel = ws.resolve(requested_cwd).map_err(|e| e.to_string())?;
    // Checked through the workspace handle; the child can only be given a path.
    let cwd = ws.command_dir(&rel).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => {
            format!("cannot run in {:?}: not a directory", display(&rel))
        }
        _ => fs_error("cannot run in", requested_cwd, &e),
    })?;
    let mut command = if shell {
        let mut c = Command::new("sh");
        c.arg("-c").arg(line);
        c
    } else {
        let words = split_words(line).map_err(|e| format!("cannot parse the command: {e}"))?;
        let Some((program, rest)) = words.split_first() else {
            return Err("the command is empty".to_owned());
        };
        let mut c = Command::new(program);
        c.args(rest);
        c
    };
    run(&mut command, &cwd, timeout, limits.max_output_bytes)
        .await
        .map_err(|e| format!("cannot run {line:?}: {e}"))
}

async fn run(
    command: &mut Command,
    cwd: &Path,
    timeout: Duration,
    cap: usize,
) -> std::io::Result<Value> {
    command
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let mut guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw),
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = crate::spawn(async move {
        match stdout {
            Some(s) => read_capped(s, cap).await,
            None => (Vec::new(), 0),
        }
    });
    let err = crate::spawn(async move {
        match stderr {
            Some(s) => read_capped(s, cap).await,
            None => (Vec::new(), 0),
        }
    });
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (Some(status?), false),
        Err(_) => {
            guard.kill();
            let _ = child.wait().await;
            (None, true)
        }
    };
    // Background processes that kept the pipes open are killed with the group, so the
    // readers end; the bound is for a grandchild that escaped it (setsid).
    guard.kill();
    let grace = Duration::from_secs(2);
    let (out, out_dropped) = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (err, err_dropped) = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let exit_code = status.and_then(|s| s.code());
    let mut stderr_text = capped_text(&err, err_dropped);
    if timed_out {
        if !stderr_text.is_empty() && !stderr_text.ends_with('\n') {
            stderr_text.push('\n');
        }
        stderr_text.push_str(&format!(
            "[killed after the {} s timeout]",
            timeout.as_secs()
        ));
    }
    Ok(json!({
        "success": !timed_out && exit_code == Some(0),
        "exit_code": exit_code,
        "stdout": capped_text(&out, out_dropped),
        "stderr": stderr_text,
        "timed_out": timed_out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::workspace::tests::workspace as ws;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words("ls -la  src").unwrap(), ["ls", "-la", "src"]);
        assert_eq!(
            split_words(r#"echo 'a b' "c d" e\ f"#).unwrap(),
            ["echo", "a b", "c d", "e f"]
        );
        assert_eq!(
            split_words(r#"printf "x\"y\$z\n""#).unwrap(),
            ["printf", r#"x"y$z\n"#]
        );
        assert_eq!(split_words("a ''").unwrap(), ["a", ""]);
        assert_eq!(
            split_words("grep -e 'a|b' x; rm").unwrap(),
            ["grep", "-e", "a|b", "x;", "rm"]
        );
        assert_eq!(split_words("   ").unwrap(), Vec::<String>::new());
        assert_eq!(
            split_words("echo 'oops"),
            Err(SplitError::Unterminated("single"))
        );
        assert_eq!(
            split_words("echo \"oops"),
            Err(SplitError::Unterminated("double"))
        );
        assert_eq!(split_words("echo \\"), Err(SplitError::TrailingBackslash));
    }

    #[test]
    fn timeouts_are_clamped() {
        assert_eq!(effective_timeout(None), Duration::from_secs(60));
        assert_eq!(effective_timeout(Some(0)), Duration::from_secs(1));
        assert_eq!(effective_timeout(Some(9999)), Duration::from_secs(300));
    }

    #[test]
    fn capped_output_says_how_much_was_cut() {
        assert_eq!(capped_text(b"abc", 0), "abc");
        assert_eq!(
            capped_text(b"abc", 10),
            "abc\n[... 10 more bytes truncated]"
        );
    }

    async fn exec(ws: &Workspace, value: Value, limits: &Limits) -> Result<Value, String> {
        let empty = serde_json::Map::new();
        execute_command(ws, Args::new(&value, &empty).unwrap(), limits).await
    }

    #[tokio::test]
    async fn commands_run_in_the_workspace_with_their_exit_code() {
        let (_d, ws) = ws();
        let limits = Limits::default();
        let run = |value| exec(&ws, value, &limits);
        std::fs::create_dir(ws.root().join("sub")).unwrap();
        let ok = run(json!({"command": "pwd"})).await.unwrap();
        assert_eq!(ok["success"], true);
        assert_eq!(ok["exit_code"], 0);
        assert_eq!(ok["timed_out"], false);
        assert_eq!(
            ok["stdout"].as_str().unwrap().trim(),
            ws.root().to_str().unwrap()
        );
        let sub = run(json!({"command": "pwd", "cwd": "sub"})).await.unwrap();
        assert!(sub["stdout"].as_str().unwrap().trim().ends_with("/sub"));
        let failed = run(json!({"command": "echo out; echo err >&2; exit 3", "shell": true}))
            .await
            .unwrap();
        assert_eq!(failed["success"], false);
        assert_eq!(failed["exit_code"], 3);
        assert_eq!(failed["stdout"], "out\n");
        assert_eq!(failed["stderr"], "err\n");
        // Without the shell, `;` is an argument.
        let literal = run(json!({"command": "echo a; echo b"})).await.unwrap();
        assert_eq!(literal["stdout"], "a; echo b\n");
        let err = run(json!({"command": "pwd", "cwd": "../"}))
            .await
            .unwrap_err();
        assert!(err.contains("leaves the workspace"), "{err}");
        let err = run(json!({"command": "no-such-program-xyz"}))
            .await
            .unwrap_err();
        assert!(err.contains("cannot run"), "{err}");
    }

    #[tokio::test]
    async fn output_is_capped() {
        let (_d, ws) = ws();
        let limits = Limits {
            max_output_bytes: 10,
            ..Limits::default()
        };
        let big = exec(
            &ws,
            json!({"command": "head -c 5000 /dev/zero | tr '\\0' x", "shell": true}),
            &limits,
        )
        .await
        .unwrap();
        assert_eq!(big["stdout"], "xxxxxxxxxx\n[... 4990 more bytes truncated]");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let (_d, ws) = ws();
        let limits = Limits::default();
        let started = std::time::Instant::now();
        let result = exec(
            &ws,
            json!({"command": "sleep 30 & sleep 30; echo never", "shell": true, "timeout": 1}),
            &limits,
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(result["timed_out"], true);
        assert_eq!(result["success"], false);
        assert_eq!(result["exit_code"], Value::Null);
        assert!(result["stderr"].as_str().unwrap().contains("timeout"));
    }
}
