//! The binary as a user runs it from a terminal: `codelab <args>` with a clean environment,
//! its output read line by line, `codelab up` started and its summary read, and the waits and
//! logins the tests around those processes repeat. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::processes::{BIN, SCRUBBED, exit_within};

/// `codelab <args>` with the environment scrubbed (no profile, port, config file, server,
/// credentials, editor, provider, auth or runtime setting inherited), then `env` set.
pub fn codelab_with(args: &[&str], env: &[(&str, &str)]) -> Command {
    codelab_behind_with(&[], args, env)
}

/// [`codelab_with`] run behind `prefix` (for example `["ip", "netns", "exec", "<namespace>"]`,
/// which execs the binary with the environment it was given).
pub fn codelab_behind_with(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = match prefix.split_first() {
        Some((program, prefix_args)) => {
            let mut command = Command::new(program);
            command.args(prefix_args).arg(BIN);
            command
        }
        None => Command::new(BIN),
    };
    command.args(args);
    for name in SCRUBBED {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("AUTH_SERVICE__") || name.starts_with("AGENT_RUNTIME__") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// `codelab serve auth` on a free loopback port with its SQLite database in `dir`: the command
/// and the service's URL (also its public URL).
pub fn serve_auth(dir: &Path) -> (Command, String) {
    let port = super::processes::free_port().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let db = format!("sqlite:///{}", dir.join("auth.db").display());
    let command = codelab_with(
        &["serve", "auth", "--port", &port, "--host", "127.0.0.1"],
        &[
            ("AUTH_SERVICE__DB_URL", &db),
            ("AUTH_SERVICE__PUBLIC_URL", &base),
        ],
    );
    (command, base)
}

/// `codelab <args>` run to its end with stdin closed.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    codelab_with(args, env)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `codelab up` on `data` with `extra` flags in production, run to its end (it refuses).
pub fn up_in_production(data: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args, &[("ENVIRONMENT", "production")])
}

/// Runs `command` to its end with `stdin` piped in (closed at once when `None`).
pub fn run_with_stdin(mut command: Command, stdin: Option<&str>) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    write_stdin(&mut child, stdin.unwrap_or_default());
    child.wait_with_output().unwrap()
}

/// Writes `input` to the child's piped stdin and closes it.
pub fn write_stdin(child: &mut Child, input: &str) {
    let mut pipe = child.stdin.take().unwrap();
    // A run that fails early (refused arguments, unreachable server) may exit before reading
    // stdin: a closed pipe is not the test's failure.
    if let Err(error) = pipe.write_all(input.as_bytes()) {
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
    }
}

/// A child process, killed and reaped when dropped (the test ended early or failed).
pub struct Running(pub Child);

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        Running(command.spawn().unwrap())
    }

    /// SIGTERM, then waits (15 s at most) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        exit_within(&mut self.0, Duration::from_secs(15))
            .expect("the process did not stop after SIGTERM")
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL and reap: a crash, no drain.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// A value in kB of /proc/<pid>/status (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self, field: &str) -> u64 {
        codelab_testkit::bench::status_kib(self.0.id(), &format!("{field}:"))
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
            * 1024
    }

    /// Fails the test when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().unwrap() {
            panic!("the process exited with {status}");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines `output` (a child's stdout or stderr) prints, as they come.
pub fn lines_of(output: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Starts `command` with its stdout read line by line (stderr dropped).
pub fn spawn_with_lines(mut command: Command) -> (Running, Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (Running(child), lines_of(stdout))
}

/// Lines printed until one containing `last` (included); each may take a minute at most.
pub fn lines_until(rx: &Receiver<String>, last: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line containing {last:?}; got {lines:?}"));
        let done = line.contains(last);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// A running `codelab up` and what it printed.
pub struct Up {
    pub process: Running,
    /// The public listener, `http://host:port`.
    pub url: String,
    /// The lines up to the summary's last ("Press Ctrl-C to stop.").
    pub summary: Vec<String>,
    /// What it prints after the summary.
    pub lines: Receiver<String>,
}

impl Up {
    /// `codelab up --listen <listen> --data-dir <data> --ephemeral-ports <extra>` with `env`;
    /// returns once the summary is printed (serving starts before it).
    pub fn start(data: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Up {
        let mut args = vec![
            "up",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--ephemeral-ports",
        ];
        args.extend_from_slice(extra);
        let (process, lines) = spawn_with_lines(codelab_with(&args, env));
        let summary = lines_until(&lines, "Press Ctrl-C");
        let url = summary
            .iter()
            .find_map(|line| {
                let start = line
                    .find("http://")
                    .filter(|_| line.contains("public address"))?;
                line[start..].split_whitespace().next().map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("`codelab up` printed no public address: {summary:?}"));
        Up {
            process,
            url,
            summary,
            lines,
        }
    }

    /// On an ephemeral public port with `--admin-password <password>`.
    pub fn with_admin(data: &Path, password: &str, extra: &[&str]) -> Up {
        let mut args = vec!["--admin-password", password];
        args.extend_from_slice(extra);
        Up::start(data, "127.0.0.1:0", &args, &[])
    }
}

/// GETs `url` until it answers 2xx (20 s at most).
pub async fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became healthy");
}

/// A password grant for `username` at `base/oauth/token` as the Flutter IDE sends it (both
/// URL-safe as given).
pub async fn password_grant(base: &str, username: &str, password: &str) -> reqwest::Response {
    let form = format!(
        "grant_type=password&client_id=codelab-flutter-app&username={username}&password={password}"
    );
    reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
}

/// The admin's password grant at `base/oauth/token`.
pub async fn admin_login(base: &str, password: &str) -> reqwest::Response {
    password_grant(base, "admin", password).await
}

/// The response's JSON body.
pub async fn json_of(response: reqwest::Response) -> serde_json::Value {
    response.json().await.unwrap()
}

/// Sends `request`; fails the test when there is no answer.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.unwrap()
}

/// Sends `request` and returns the JSON body of its answer.
pub async fn fetch_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    json_of(request.send().await.unwrap()).await
}

/// GETs `url` with `headers`: the status and body.
pub async fn get_text(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// GETs `url` and returns its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    json_of(reqwest::get(url).await.unwrap()).await
}
