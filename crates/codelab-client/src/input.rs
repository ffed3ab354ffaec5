//! Reading from the user: lines on demand (a line is read from stdin only when asked for, so
//! an editor started in between gets the terminal to itself), passwords without echo, and
//! arguments edited in `$VISUAL` / `$EDITOR`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde_json::Value;
use tokio::sync::mpsc;

enum Source {
    /// A thread that reads one stdin line per request.
    Stdin(std::sync::mpsc::Sender<()>),
    /// Lines given up front (tests).
    Script,
}

/// Lines typed by the user, read on demand.
pub struct LineReader {
    source: Source,
    lines: mpsc::Receiver<Option<String>>,
    pending: bool,
    eof: bool,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("pending", &self.pending)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl LineReader {
    /// Reads stdin (on a thread of its own: stdin cannot be read asynchronously).
    pub fn stdin() -> LineReader {
        let (request_tx, request_rx) = std::sync::mpsc::channel::<()>();
        let (line_tx, line_rx) = mpsc::channel(1);
        std::thread::spawn(move || {
            let stdin = io::stdin();
            while request_rx.recv().is_ok() {
                let mut line = String::new();
                let read = match stdin.lock().read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_owned()),
                };
                let eof = read.is_none();
                if line_tx.blocking_send(read).is_err() || eof {
                    break;
                }
            }
        });
        LineReader {
            source: Source::Stdin(request_tx),
            lines: line_rx,
            pending: false,
            eof: false,
        }
    }

    /// Yields `lines`, then end of input.
    pub fn scripted(lines: &[&str]) -> LineReader {
        let (tx, rx) = mpsc::channel(lines.len() + 1);
        for line in lines {
            let _ = tx.try_send(Some((*line).to_owned()));
        }
        let _ = tx.try_send(None);
        LineReader {
            source: Source::Script,
            lines: rx,
            pending: true,
            eof: false,
        }
    }

    /// The next line without its newline; `None` at the end of input. Cancel-safe: a line
    /// asked for by a dropped call is returned by the next one.
    pub async fn read_line(&mut self) -> Option<String> {
        if self.eof {
            return None;
        }
        if !self.pending {
            if let Source::Stdin(request) = &self.source
                && request.send(()).is_err()
            {
                self.eof = true;
                return None;
            }
            self.pending = true;
        }
        let line = self.lines.recv().await.flatten();
        if matches!(self.source, Source::Stdin(_)) {
            self.pending = false;
        }
        if line.is_none() {
            self.eof = true;
        }
        line
    }
}

/// Reads a password: without echo from a terminal (prompting on stderr), else one line of
/// stdin.
pub fn read_password(prompt: &str) -> io::Result<String> {
    let stdin = io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        eprint!("{prompt}");
        let _ = io::stderr().flush();
        let before = tcgetattr(&stdin)?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
        let read = stdin.lock().read_line(&mut line);
        // Restore echo whatever happened to the read.
        tcsetattr(&stdin, OptionalActions::Now, &before)?;
        read?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Reads one line (a username) with a prompt on stderr.
pub fn read_plain(prompt: &str) -> io::Result<String> {
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Why editing arguments failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The editor could not be started or failed.
    #[error("the editor failed: {0}")]
    Editor(String),
    /// The edited text is not a JSON object.
    #[error("the edited arguments are not a JSON object: {0}")]
    NotAnObject(String),
}

/// Opens `$VISUAL`, else `$EDITOR`, else `vi`, on `arguments` as pretty JSON and returns the
/// edited object. The editor command may carry flags (`code --wait`): it runs through `sh`.
pub async fn edit_json(arguments: &Value) -> Result<Value, EditError> {
    let text =
        serde_json::to_string_pretty(arguments).map_err(|e| EditError::Editor(e.to_string()))?;
    let edited = edit_in_editor(format!("{text}\n"), "json").await?;
    match serde_json::from_str::<Value>(&edited) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(EditError::NotAnObject(format!("got {other}"))),
        Err(e) => Err(EditError::NotAnObject(e.to_string())),
    }
}

/// Opens the editor (as [`edit_json`]) on `text` and returns what was saved, without the
/// lines that start with `#` (the instructions) and trimmed (feedback on a plan).
pub async fn edit_text(text: &str) -> Result<String, EditError> {
    let edited = edit_in_editor(text.to_owned(), "txt").await?;
    let kept: Vec<&str> = edited
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    Ok(kept.join("\n").trim().to_owned())
}

/// Writes `text` to a private temporary file, runs the editor on it, returns the file's text.
async fn edit_in_editor(text: String, extension: &'static str) -> Result<String, EditError> {
    tokio::task::spawn_blocking(move || {
        let editor = std::env::var("VISUAL")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| {
                std::env::var("EDITOR")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| "vi".to_owned());
        let path = temp_path(extension);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            return Err(EditError::Editor(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("codelab-edit")
            .arg(&path)
            .status();
        let edited = std::fs::read_to_string(&path);
        let _ = std::fs::remove_file(&path);
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(EditError::Editor(format!("{editor} exited with {s}"))),
            Err(e) => return Err(EditError::Editor(format!("cannot start {editor}: {e}"))),
        }
        edited.map_err(|e| EditError::Editor(e.to_string()))
    })
    .await
    .map_err(|e| EditError::Editor(e.to_string()))?
}

fn temp_path(extension: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    std::env::temp_dir().join(format!(
        "codelab-edit-{}-{nanos}.{extension}",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scripted_lines_end_with_none() {
        let mut reader = LineReader::scripted(&["a", "b"]);
        assert_eq!(reader.read_line().await.as_deref(), Some("a"));
        assert_eq!(reader.read_line().await.as_deref(), Some("b"));
        assert_eq!(reader.read_line().await, None);
        assert_eq!(reader.read_line().await, None);
    }
}
