//! The IDE tools the agent runtime sends as `tool_call` frames, run inside one workspace
//! folder, with the result shapes the Flutter IDE returns.

mod args;
pub mod command;
pub mod files;
pub mod search;
pub mod workspace;

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use args::Args;
pub use workspace::{PathError, Workspace};

/// Directories a recursive listing or a search never descends into (build output and
/// dependencies: large, generated, and never what the model is looking for).
pub const SKIPPED_DIRS: [&str; 3] = [".git", "target", "node_modules"];

/// The tools this IDE executes.
pub use codelab_protocol::ide::IDE_TOOLS;

/// Size limits of the tools.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest file `read_file` opens.
    pub max_read_file_bytes: u64,
    /// Largest content `read_file` returns (larger selections must use a line range).
    pub max_read_content_bytes: usize,
    /// Most entries `list_files` returns.
    pub max_list_items: usize,
    /// Bytes of stdout and of stderr `execute_command` keeps, each.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_read_file_bytes: 10 * 1024 * 1024,
            max_read_content_bytes: 1024 * 1024,
            max_list_items: 1000,
            max_output_bytes: 64 * 1024,
        }
    }
}

/// What a tool call produced: a result object, or an error text (sent as `tool_result`'s
/// `error`).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutcome {
    /// The tool ran; its result object.
    Result(Value),
    /// The tool could not run or refused (a path outside the workspace, a missing file).
    Error(String),
}

impl ToolOutcome {
    fn from(result: Result<Value, String>) -> ToolOutcome {
        match result {
            Ok(value) => ToolOutcome::Result(value),
            Err(error) => ToolOutcome::Error(error),
        }
    }
}

/// Runs tool calls in a workspace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ToolExecutor {
    workspace: Arc<Workspace>,
    limits: Arc<Limits>,
}

impl ToolExecutor {
    /// An executor for the workspace at `dir` (which must exist).
    pub fn new(dir: &Path, limits: Limits) -> std::io::Result<ToolExecutor> {
        Ok(ToolExecutor {
            workspace: Arc::new(Workspace::open(dir)?),
            limits: Arc::new(limits),
        })
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// Runs one call. File tools run on the blocking pool; commands run asynchronously (and
    /// their process group is killed if this future is dropped).
    pub async fn execute(&self, tool_name: &str, arguments: &Value) -> ToolOutcome {
        if !IDE_TOOLS.contains(&tool_name) {
            return ToolOutcome::Error(format!(
                "unknown tool {tool_name:?}: this IDE runs {}",
                IDE_TOOLS.join(", ")
            ));
        }
        if tool_name == "execute_command" {
            let empty = Map::new();
            let result = match Args::new(arguments, &empty) {
                Ok(args) => command::execute_command(&self.workspace, args, &self.limits).await,
                Err(e) => Err(e),
            };
            return ToolOutcome::from(result);
        }
        let workspace = Arc::clone(&self.workspace);
        let limits = Arc::clone(&self.limits);
        let name = tool_name.to_owned();
        let arguments = arguments.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let empty = Map::new();
            let args = Args::new(&arguments, &empty)?;
            match name.as_str() {
                "read_file" => files::read_file(&workspace, args, &limits),
                "write_file" => files::write_file(&workspace, args),
                "list_files" => files::list_files(&workspace, args, &limits),
                "create_directory" => files::create_directory(&workspace, args),
                "search_in_code" => search::search_in_code(&workspace, args, &limits),
                other => Err(format!("unknown tool {other:?}")),
            }
        })
        .await;
        match joined {
            Ok(result) => ToolOutcome::from(result),
            Err(error) => ToolOutcome::Error(format!("the tool failed: {error}")),
        }
    }

    /// What a `write_file` call would change, as a unified diff against the current file
    /// (`None` when the arguments are not a confined write).
    pub fn write_preview(&self, arguments: &Value) -> Option<String> {
        let path = arguments.get("path")?.as_str()?;
        let content = arguments.get("content")?.as_str()?;
        let rel = self.workspace.resolve(path).ok()?;
        let old = match self.workspace.dir().open(workspace::at(&rel)) {
            Ok(mut file) => match files::read_capped(&mut file, self.limits.max_read_file_bytes) {
                Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                Ok(None) => {
                    return Some(format!(
                        "({} is larger than {} bytes: no diff)\n",
                        crate::sanitize::for_terminal(path, crate::sanitize::Shape::Line),
                        self.limits.max_read_file_bytes
                    ));
                }
                Err(_) => String::new(),
            },
            Err(_) => String::new(),
        };
        Some(crate::diff::unified(&old, content, path))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn the_executor_dispatches_and_reports_errors_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let executor = ToolExecutor::new(dir.path(), Limits::default()).unwrap();
        let written = executor
            .execute("write_file", &json!({"path": "a.txt", "content": "hi\n"}))
            .await;
        assert_eq!(
            written,
            ToolOutcome::Result(json!({"success": true, "bytes_written": 3, "backup_path": null}))
        );
        let read = executor
            .execute("read_file", &json!({"path": "a.txt"}))
            .await;
        assert_eq!(
            read,
            ToolOutcome::Result(json!({"success": true, "content": "hi\n", "lines_read": 1}))
        );
        assert!(matches!(
            executor.execute("rm_rf", &json!({})).await,
            ToolOutcome::Error(e) if e.starts_with("unknown tool")
        ));
        assert!(matches!(
            executor.execute("read_file", &json!("a.txt")).await,
            ToolOutcome::Error(e) if e.contains("JSON object")
        ));
        let preview = executor
            .write_preview(&json!({"path": "a.txt", "content": "hello\n"}))
            .unwrap();
        assert!(
            preview.contains("-hi\n") && preview.contains("+hello\n"),
            "{preview}"
        );
    }
}
