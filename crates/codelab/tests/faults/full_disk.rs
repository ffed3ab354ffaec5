//! SQLite on a full disk: `codelab serve agent-runtime` keeps its database on a small tmpfs
//! the test mounts; the test fills the disk and drives a turn (a clear error, the database
//! intact), then frees the space and the same process serves a new turn.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::processes::{Process, codelab, free_port, wait_for_status};
use crate::stack::START;

const PROXY_KEY: &str = "full-disk-proxy-key-0123456789abcdef";
const RUNTIME_KEY: &str = "full-disk-runtime-key-0123456789abcdef";
/// Size of the tmpfs: room for the database and its WAL, small enough to fill in a moment.
const DISK: &str = "4m";

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// The reason as the error where mounting is not permitted (not root, a container
    /// without CAP_SYS_ADMIN).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            path,
            _parent: parent,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file must not make the unmount fail.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the disk is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 16 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // What is left in the page cache must be refused too.
    let _ = file.sync_all();
    written
}

fn spawn(service: &str, env: &[(&str, String)], logs: &Path) -> (Process, String) {
    let port = free_port();
    let mut command = codelab(&["serve", service]);
    command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
    let prefix = if service == "llm-proxy" {
        "LLM_PROXY"
    } else {
        "AGENT_RUNTIME"
    };
    command.env(format!("{prefix}__PORT"), port.to_string());
    command.env(format!("{prefix}__HOST"), "127.0.0.1");
    let log = logs.join(format!("{service}.log"));
    let process = Process::spawn(&format!("{service}:{port}"), command, &log);
    (process, format!("http://127.0.0.1:{port}"))
}

/// The runtime's API with its key.
struct Runtime {
    base: String,
    http: reqwest::Client,
}

impl Runtime {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-Internal-Auth", RUNTIME_KEY)
            .timeout(Duration::from_secs(60))
    }

    /// A turn: the status and the events of the whole stream (or the error body).
    async fn say(&self, session: &str, text: &str) -> (u16, Vec<Value>, String) {
        let message = json!({"type": "user_message", "agent_type": "coder", "content": text});
        let response = self
            .request(reqwest::Method::POST, "/agent/message/stream")
            .json(&json!({"session_id": session, "message": message}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let events = body
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str(data).ok())
            .collect();
        (status, events, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn outcome(events: &[Value]) -> Option<&str> {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "turn_finished")
        .and_then(|e| e["outcome"].as_str())
}

fn errors(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "error")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `PRAGMA integrity_check` through a separate read-only connection.
async fn integrity(database: &Path) -> String {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(database)
        .read_only(true);
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_fails_clearly_and_recovers_when_space_returns() {
    let disk = match Tmpfs::mount(DISK) {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED: a tmpfs cannot be mounted here ({reason}); CI runs as root");
            return;
        }
    };
    let logs = tempfile::tempdir().unwrap();
    let database = disk.path.join("agent_runtime.db");
    let (mut proxy, proxy_url) = spawn(
        "llm-proxy",
        &[("LLM_PROXY__INTERNAL_API_KEY", PROXY_KEY.into())],
        logs.path(),
    );
    wait_for_status(&format!("{proxy_url}/ready"), 200, &mut proxy, START).await;
    let (mut process, base) = spawn(
        "agent-runtime",
        &[
            (
                "AGENT_RUNTIME__DB_URL",
                format!("sqlite:///{}", database.display()),
            ),
            ("AGENT_RUNTIME__LLM_PROXY_URL", proxy_url),
            ("AGENT_RUNTIME__LLM_PROXY_API_KEY", PROXY_KEY.into()),
            ("AGENT_RUNTIME__INTERNAL_API_KEY", RUNTIME_KEY.into()),
        ],
        logs.path(),
    );
    wait_for_status(&format!("{base}/ready"), 200, &mut process, START).await;
    let runtime = Runtime {
        base,
        http: reqwest::Client::new(),
    };
    let session = {
        let response = runtime
            .request(reqwest::Method::POST, "/sessions")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (status, before, _) = runtime.say(&session, "::reply before the fill").await;
    assert_eq!((status, outcome(&before)), (200, Some("completed")));

    // The disk fills up; a turn with a large message needs new pages.
    let filler = disk.path.join("filler");
    let filled = fill(&filler);
    let large = format!("::reply too late\n{}", "padding ".repeat(64 * 1024));
    let (status, events, body) = runtime.say(&session, &large).await;
    eprintln!(
        "faults: full disk ({filled} bytes of filler): {status} {:?} outcome {:?}",
        errors(&events),
        outcome(&events)
    );
    if status == 200 {
        assert_eq!(outcome(&events), Some("failed"), "{body}");
        let told = errors(&events).join(" ");
        assert!(told.contains("disk is full"), "not a clear error: {told}");
    } else {
        assert!(
            body.contains("disk is full"),
            "not a clear error: {status} {body}"
        );
    }
    process.assert_running();
    let (status, _) = runtime.get("/ready").await;
    eprintln!("faults: /ready while the disk is full: {status}");

    // Nothing is corrupt; the history before the fill is whole.
    assert_eq!(integrity(&database).await, "ok");
    let (status, history) = runtime.get(&format!("/sessions/{session}/history")).await;
    assert_eq!(status, 200, "{history}");
    let messages = codelab_testkit::runtime_history::messages(&history);
    assert_eq!(
        messages[..2],
        [
            ("user".to_owned(), "::reply before the fill".to_owned()),
            ("assistant".to_owned(), "before the fill".to_owned()),
        ]
    );

    // Space returns: the same process serves a new turn.
    std::fs::remove_file(&filler).unwrap();
    let (status, after, body) = runtime.say(&session, "::reply after the fill").await;
    if outcome(&after) != Some("completed") {
        // The cause is in the runtime's log only.
        eprintln!("--- runtime log ---\n{}", process.tail());
    }
    assert_eq!(
        (status, outcome(&after)),
        (200, Some("completed")),
        "{body}"
    );
    let (_, history) = runtime.get(&format!("/sessions/{session}/history")).await;
    let messages = codelab_testkit::runtime_history::messages(&history);
    assert_eq!(
        messages[messages.len() - 2..],
        [
            ("user".to_owned(), "::reply after the fill".to_owned()),
            ("assistant".to_owned(), "after the fill".to_owned()),
        ]
    );
    assert!(history["active_turn"].is_null(), "{history}");
    assert_eq!(integrity(&database).await, "ok");
    process.assert_running();
}
