//! Real processes for the end-to-end tests: the `codelab` binary (`serve <service>`, `up`,
//! `chat`) and a private `redis-server`, each with its output in a log file, killed when its
//! guard drops. Waits poll an HTTP endpoint or a TCP port at short intervals within a bound;
//! a process that exits while waited for fails the test with the end of its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_codelab");

/// Environment that would change what a child does: another profile, port, config file or
/// server, credentials, real LLM providers, an editor for approvals.
pub const SCRUBBED: &[&str] = &[
    "PORT",
    "ENVIRONMENT",
    "CODELAB_CONFIG",
    "CODELAB_SERVER",
    "CODELAB_USERNAME",
    "CODELAB_PASSWORD",
    "RUST_LOG",
    "OPENAI_API_KEY",
    "OPENAI_API_BASE",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    "OLLAMA_API_BASE",
    "OLLAMA_BASE_URL",
    "EDITOR",
    "VISUAL",
];

/// A port nobody listens on right now (the usual small race: the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `codelab <args>` with the environment scrubbed (see [`super::cli::codelab_with`]) and
/// `ENVIRONMENT=development`.
pub fn codelab(args: &[&str]) -> Command {
    codelab_behind(&[], args)
}

/// [`codelab`] run behind `prefix` (see [`super::cli::codelab_behind_with`]).
pub fn codelab_behind(prefix: &[&str], args: &[&str]) -> Command {
    super::cli::codelab_behind_with(prefix, args, &[("ENVIRONMENT", "development")])
}

/// Waits (polling every 10 ms) for `child` to exit within `within`; kills and reaps it and
/// returns `None` when it does not.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process with its output in `log`; killed (SIGKILL) and reaped when dropped.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Process {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its output, for failure messages.
    pub fn tail(&self) -> String {
        let output = self.output();
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Fails the test (with the log's end) when the process has exited.
    pub fn assert_running(&mut self) {
        let exited = self.child.as_mut().map(|c| c.try_wait().unwrap());
        match exited {
            Some(None) => {}
            Some(Some(status)) => panic!(
                "{} exited with {status}; its log ends with:\n{}",
                self.name,
                self.tail()
            ),
            None => panic!("{} was stopped", self.name),
        }
    }

    /// Waits (bounded by `within`) until `codelab up` printed its summary ("Press Ctrl-C"),
    /// which it does once everything serves.
    pub async fn wait_for_summary(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains("Press Ctrl-C") {
            self.assert_running();
            assert!(Instant::now() < deadline, "no summary:\n{}", self.tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, `QUIT`, `STOP`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.id() {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal} {}", self.name);
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; returns its status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("the process was already stopped");
        exit_within(&mut child, within).unwrap_or_else(|| {
            panic!(
                "{} did not stop within {within:?} of SIGTERM; its log ends with:\n{}",
                self.name,
                self.tail()
            )
        })
    }

    /// Waits (bounded) for the process to exit by itself and reaps it; fails the test with
    /// the end of its log when it is still running after `within` (it is killed then).
    pub fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the process was already stopped");
        exit_within(&mut child, within).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {within:?}; its log ends with:\n{}",
                self.name,
                self.tail()
            )
        })
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GETs `url` every 20 ms until it answers `status`, within `within`; fails with the log of
/// `process` when it exits first or the time is up. Returns the last body.
pub async fn wait_for_status(
    url: &str,
    status: u16,
    process: &mut Process,
    within: Duration,
) -> String {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        let last = match http.get(url).send().await {
            Ok(response) if response.status().as_u16() == status => {
                return response.text().await.unwrap_or_default();
            }
            Ok(response) => format!(
                "HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(error) => error.to_string(),
        };
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {within:?} (last: {last}); the log of {} ends \
             with:\n{}",
            process.name(),
            process.tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `redis-server` the tests start themselves (`CODELAB_TEST_REDIS_SERVER`, else the one
/// on the PATH; scripts/test installs it from Debian packages).
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CODELAB_TEST_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found: install it (Debian: apt-get install -y redis-server; \
             scripts/test does when run as root) or set CODELAB_TEST_REDIS_SERVER"
        )
    })
}

/// A private Redis on a fixed loopback port, without persistence, that a test can stop and
/// start again on the same port (its dependency going down and coming back).
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
    starts: u32,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let mut redis = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            process: None,
            starts: 0,
        };
        redis.resume().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it (as a crash would): clients see their connections drop.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again on the same port and waits until it answers PING.
    pub async fn resume(&mut self) {
        assert!(self.process.is_none(), "redis is already running");
        self.starts += 1;
        let mut command = Command::new(redis_server_binary());
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path());
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let mut process = Process::spawn("redis-server", command, &log);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping().await {
            process.assert_running();
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.process = Some(process);
    }

    /// Whether it answers `PING` with `+PONG`.
    pub async fn answers_ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.address()).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut reply)).await;
        matches!(read, Ok(Ok(n)) if reply[..n].starts_with(b"+PONG"))
    }
}
