//! `codelab login`, `codelab chat` and `codelab logout` end to end: the real binary against
//! `codelab up` (auth, gateway, runtime and the mock model) started as a child process, in
//! temporary workspaces and config folders. The mock's `::tool NAME JSON` directives make the
//! agent call the IDE tools; `::slow` keeps a turn running while the server is restarted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::cli::{Up, codelab_with, lines_of, write_stdin};
use crate::common::processes::exit_within;
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "chat-cli-admin-pw";
/// Bound of every wait for a child process.
const WAIT: Duration = Duration::from_secs(90);

/// `codelab up` on a fresh data dir inside `dir` with an ephemeral public port.
fn start_up(dir: &Path, env: &[(&str, &str)]) -> Up {
    start_up_on(&dir.join("data"), "127.0.0.1:0", env)
}

/// `codelab up` on a fresh data dir inside `dir`, and a user logged in as the admin.
fn logged_in_user(dir: &Path, env: &[(&str, &str)]) -> (Up, User) {
    let up = start_up(dir, env);
    let user = User::new(&up.url);
    assert_eq!(user.login(ADMIN_PASSWORD).code(), 0);
    (up, user)
}

fn start_up_on(data: &Path, listen: &str, env: &[(&str, &str)]) -> Up {
    Up::start(data, listen, &["--admin-password", ADMIN_PASSWORD], env)
}

/// A user of `codelab chat`: a config folder (the token store) and a workspace.
struct User {
    _dir: tempfile::TempDir,
    config: PathBuf,
    workspace: PathBuf,
    server: String,
}

/// What one `codelab` run printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON lines of `--json` output.
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    #[track_caller]
    fn stdout_has(&self, text: &str) {
        assert!(self.stdout.contains(text), "{}", self.stdout);
    }

    #[track_caller]
    fn stderr_has(&self, text: &str) {
        assert!(self.stderr.contains(text), "{}", self.stderr);
    }
}

fn frames_in(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["direction"] == "in")
        .map(|l| &l["frame"])
        .collect()
}

fn results_out(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["direction"] == "out" && l.get("tool_result").is_some())
        .map(|l| &l["tool_result"])
        .collect()
}

/// The final assistant text of a turn.
fn final_text(lines: &[Value]) -> String {
    frames_in(lines)
        .into_iter()
        .filter(|f| f["type"] == "assistant_message" && f["is_final"] == true)
        .map(|f| f["content"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_with_output(mut child: Child) -> Run {
    // Either stream may have been taken by the caller already.
    fn read_all(stream: Option<impl std::io::Read + Send + 'static>) -> JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                stream.read_to_string(&mut text).unwrap();
            }
            text
        })
    }
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let status = exit_within(&mut child, WAIT)
        .unwrap_or_else(|| panic!("codelab did not finish within {WAIT:?}"));
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

impl User {
    fn new(server: &str) -> User {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&workspace).unwrap();
        User {
            config,
            workspace,
            server: server.to_owned(),
            _dir: dir,
        }
    }

    /// The folder around the workspace (outside it).
    fn outside(&self) -> PathBuf {
        self.workspace.parent().unwrap().to_path_buf()
    }

    fn credentials(&self) -> PathBuf {
        self.config.join("codelab/credentials.json")
    }

    fn stored(&self) -> Value {
        let file: Value =
            serde_json::from_slice(&std::fs::read(self.credentials()).unwrap()).unwrap();
        file["servers"][&self.server].clone()
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = codelab_with(args, env);
        command.env("XDG_CONFIG_HOME", &self.config);
        command
    }

    fn run(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut child = self
            .command(args, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        write_stdin(&mut child, stdin);
        wait_with_output(child)
    }

    fn login(&self, password: &str) -> Run {
        self.run(
            &[
                "login",
                "--server",
                &self.server,
                "--username",
                "admin",
                "--password-stdin",
            ],
            &format!("{password}\n"),
            &[],
        )
    }

    /// `codelab chat -m MESSAGE --json --agent coder --workspace W` plus `extra`.
    fn chat(&self, message: &str, extra: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut args = vec!["--agent", "coder", "-m", message];
        args.extend_from_slice(extra);
        self.run(&self.chat_args(&args), stdin, env)
    }

    /// `chat` with `--yes --json`, which must exit 0: its JSON lines.
    fn chat_approving(&self, message: &str) -> Vec<Value> {
        let run = self.chat(message, &["--yes", "--json"], "", &[]);
        assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
        run.lines()
    }

    /// `chat --server S --workspace W` plus `extra`.
    fn chat_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "chat",
            "--server",
            &self.server,
            "--workspace",
            self.workspace.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    }
}

/// The session the frames of a `--json` run belong to.
fn session_of(lines: &[Value]) -> String {
    frames_in(lines)
        .into_iter()
        .find_map(|f| f["session_id"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn a_turn_runs_the_workspace_tools_and_refuses_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &[]);
    let user = User::new(&up.url);

    let login = user.login(ADMIN_PASSWORD);
    assert_eq!(login.code(), 0, "{}", login.stderr);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&user.credentials()), 0o600);
    assert_eq!(mode(user.credentials().parent().unwrap()), 0o700);
    assert_eq!(user.stored()["username"], "admin");

    // List and read: the calls arrive as frames, the results go out in the Flutter shapes,
    // and the mock summarises what it got.
    std::fs::write(user.workspace.join("a.txt"), "alpha\nbeta\n").unwrap();
    let lines = user.chat_approving(
        "::tool list_files {\"path\":\".\"}\n::tool read_file {\"path\":\"a.txt\"}",
    );
    let calls: Vec<&str> = frames_in(&lines)
        .into_iter()
        .filter(|f| f["type"] == "tool_call")
        .map(|f| f["tool_name"].as_str().unwrap())
        .collect();
    assert_eq!(calls, ["list_files", "read_file"], "{lines:#?}");
    // After the turn: its tokens and cost, then the session's (docs/usage.md).
    let usage = lines
        .iter()
        .find_map(|l| l["notice"].as_str().filter(|n| n.contains("tokens in")))
        .unwrap_or_else(|| panic!("no usage line: {lines:#?}"));
    assert!(
        usage.contains("no price (2 calls) · session:"),
        "the mock has no price; the turn made two calls: {usage}"
    );
    let results = results_out(&lines);
    let list = results
        .iter()
        .find(|r| r["tool_name"] == "list_files")
        .unwrap();
    assert_eq!(list["type"], "tool_result");
    assert_eq!(
        list["result"],
        json!({"success": true, "path": ".", "total_count": 1,
               "items": [{"name": "a.txt", "path": "a.txt", "type": "file", "size": 11}]})
    );
    let read = results
        .iter()
        .find(|r| r["tool_name"] == "read_file")
        .unwrap();
    assert_eq!(
        read["result"],
        json!({"success": true, "content": "alpha\nbeta\n", "lines_read": 2})
    );
    let text = final_text(&lines);
    assert!(text.contains("Tool list_files returned: "), "{text}");
    assert!(text.contains("Tool read_file returned: "), "{text}");
    assert!(text.contains("alpha"), "{text}");
    assert_eq!(
        frames_in(&lines).last().unwrap()["type"],
        "turn_finished",
        "{lines:?}"
    );

    // A write needs approval: `--yes` approves it with `hitl_decision`, the runtime sends the
    // call again and the file is written; the second write backs up the first content.
    for (content, backup_expected) in [("hi", false), ("hello", true)] {
        let lines = user.chat_approving(&format!(
            "::tool write_file {{\"path\":\"b.txt\",\"content\":\"{content}\"}}"
        ));
        assert!(
            frames_in(&lines)
                .iter()
                .any(|f| f["type"] == "approval_required" && f["tool_name"] == "write_file"),
            "{lines:?}"
        );
        let decision = lines.iter().find_map(|l| l.get("hitl_decision")).unwrap();
        assert_eq!(decision["decision"], "approve");
        let result = &results_out(&lines)[0]["result"];
        assert_eq!(result["success"], true);
        assert_eq!(result["bytes_written"], content.len());
        assert_eq!(
            std::fs::read_to_string(user.workspace.join("b.txt")).unwrap(),
            content
        );
        if backup_expected {
            let backup = result["backup_path"].as_str().unwrap();
            assert_eq!(
                std::fs::read_to_string(user.workspace.join(backup)).unwrap(),
                "hi"
            );
        } else {
            assert_eq!(result["backup_path"], Value::Null);
        }
    }

    // Escapes: `..`, an absolute path, a symlink pointing out; reads and writes are refused
    // with an error result and nothing outside is read or touched.
    let outside = user.outside().join("secret.txt");
    std::fs::write(&outside, "top secret").unwrap();
    std::os::unix::fs::symlink(&outside, user.workspace.join("link.txt")).unwrap();
    let lines = user.chat_approving(
        "::tool read_file {\"path\":\"../secret.txt\"}\n\
         ::tool read_file {\"path\":\"/etc/passwd\"}\n\
         ::tool read_file {\"path\":\"link.txt\"}\n\
         ::tool write_file {\"path\":\"link.txt\",\"content\":\"pwned\"}\n\
         ::tool write_file {\"path\":\"../new.txt\",\"content\":\"pwned\"}\n\
         ::tool create_directory {\"path\":\"../newdir\"}",
    );
    let results = results_out(&lines);
    assert_eq!(results.len(), 6, "{lines:?}");
    for result in &results {
        let error = result["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{result}"));
        assert!(error.contains("leaves the workspace"), "{error}");
        assert!(result.get("result").is_none(), "{result}");
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "top secret");
    assert!(!user.outside().join("new.txt").exists());
    assert!(!user.outside().join("newdir").exists());
    assert!(!final_text(&lines).contains("top secret"));
    assert!(!final_text(&lines).contains("root:"));

    // The other tools, end to end.
    let lines = user.chat_approving(
        "::tool create_directory {\"path\":\"src/deep\"}\n\
         ::tool search_in_code {\"query\":\"BETA\",\"file_pattern\":\"*.txt\"}\n\
         ::tool execute_command {\"command\":\"echo 'from the command'\"}",
    );
    let by_tool = |name: &str| {
        results_out(&lines)
            .into_iter()
            .find(|r| r["tool_name"] == name)
            .unwrap_or_else(|| panic!("no {name} result: {lines:?}"))["result"]
            .clone()
    };
    assert_eq!(
        by_tool("create_directory"),
        json!({"success": true, "path": "src/deep", "created": true, "already_exists": false})
    );
    let search = by_tool("search_in_code");
    assert_eq!(search["query"], "BETA");
    assert_eq!(search["total_matches"], 1);
    assert_eq!(search["truncated"], false);
    assert_eq!(search["matches"][0]["file"], "a.txt");
    assert_eq!(search["matches"][0]["line"], 2);
    assert_eq!(
        by_tool("execute_command"),
        json!({"success": true, "exit_code": 0, "stdout": "from the command\n", "stderr": "",
               "timed_out": false})
    );

    // Logout revokes the login on the server: the saved refresh token no longer works.
    let saved = std::fs::read(user.credentials()).unwrap();
    let logout = user.run(&["logout", "--server", &up.url], "", &[]);
    assert_eq!(logout.code(), 0, "{}", logout.stderr);
    assert!(!user.credentials().exists());
    std::fs::create_dir_all(user.credentials().parent().unwrap()).unwrap();
    std::fs::write(user.credentials(), &saved).unwrap();
    // Make the access token look expired so the client must use the refresh token.
    let mut file: Value = serde_json::from_slice(&saved).unwrap();
    file["servers"][&up.url]["expires_at"] = json!("2000-01-01T00:00:00Z");
    std::fs::write(user.credentials(), file.to_string()).unwrap();
    let run = user.chat("::reply hi", &["--json"], "", &[]);
    assert_eq!(run.code(), 2, "{}\n{}", run.stdout, run.stderr);
    run.stderr_has("log in again");
}

#[test]
fn approvals_can_be_rejected_edited_put_off_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);
    let write = "::tool write_file {\"path\":\"c.txt\",\"content\":\"draft\"}";

    // `--reject` with feedback.
    let run = user.chat(
        write,
        &["--json", "--reject", "--feedback", "not now"],
        "",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decision = lines.iter().find_map(|l| l.get("hitl_decision")).unwrap();
    assert_eq!(decision["decision"], "reject");
    assert_eq!(decision["feedback"], "not now");
    assert!(results_out(&lines).is_empty());
    assert!(final_text(&lines).contains("not now"), "{lines:?}");
    assert!(!user.workspace.join("c.txt").exists());

    // Answers on stdin: `r` and a feedback line. The prompt shows the diff first.
    let run = user.chat(write, &["--json"], "r\nwrong file\n", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decision = lines.iter().find_map(|l| l.get("hitl_decision")).unwrap();
    assert_eq!(decision["decision"], "reject");
    assert_eq!(decision["feedback"], "wrong file");
    run.stderr_has("+++ b/c.txt");
    run.stderr_has("+draft");
    assert!(!user.workspace.join("c.txt").exists());

    // `e` opens $EDITOR on the arguments; the edited call is what runs.
    let editor = user.outside().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/c.txt/edited.txt/; s/draft/final/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = user.chat(
        write,
        &["--json"],
        "e\n",
        &[("EDITOR", editor.to_str().unwrap())],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decision = lines.iter().find_map(|l| l.get("hitl_decision")).unwrap();
    assert_eq!(decision["decision"], "edit");
    assert_eq!(
        decision["modified_arguments"],
        json!({"path": "edited.txt", "content": "final"})
    );
    assert_eq!(
        std::fs::read_to_string(user.workspace.join("edited.txt")).unwrap(),
        "final"
    );
    assert!(!user.workspace.join("c.txt").exists());

    // `l` puts the approval off: the turn waits (exit 1); resuming the session shows its
    // history and offers the approval again, and approving it runs the call.
    let run = user.chat(write, &["--json"], "l\n", &[]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let session = session_of(&lines);
    assert!(!user.workspace.join("c.txt").exists());
    let run = user.run(
        &user.chat_args(&["--session", &session]),
        "a\n/history\n/quit\n",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    run.stdout_has(&session);
    run.stdout_has("you> ::tool write_file");
    run.stderr_has("Approval needed: write_file");
    assert_eq!(
        std::fs::read_to_string(user.workspace.join("c.txt")).unwrap(),
        "draft"
    );
    run.stdout_has("Tool write_file returned");

    // With `-m`, a resumed session's pending work is finished first (here by `--yes`), then
    // the message is sent.
    let later = "::tool write_file {\"path\":\"later.txt\",\"content\":\"late\"}";
    let run = user.chat(later, &["--json"], "l\n", &[]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout, run.stderr);
    let session = session_of(&run.lines());
    let run = user.run(
        &user.chat_args(&[
            "--session",
            &session,
            "--yes",
            "--json",
            "-m",
            "::reply and now the message",
        ]),
        "",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    assert_eq!(
        lines.iter().find_map(|l| l.get("hitl_decision")).unwrap()["decision"],
        "approve"
    );
    assert_eq!(
        std::fs::read_to_string(user.workspace.join("later.txt")).unwrap(),
        "late"
    );
    assert!(
        final_text(&lines).ends_with("and now the message"),
        "{lines:?}"
    );

    // The interactive slash commands.
    let run = user.run(
        &user.chat_args(&[]),
        "/agents\n/agent debug\n/sessions\n::reply streamed answer\n/nope\n/quit\n",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    for expected in ["coder", "→ debug agent", &session, "streamed answer"] {
        assert!(run.stdout.contains(expected), "{expected}: {}", run.stdout);
    }
    run.stderr_has("unknown command /nope");
}

#[test]
fn terminal_escapes_from_the_model_are_shown_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);
    let live = |text: &str| text.contains(['\x1b', '\x07', '\r', '\u{202e}', '\u{9b}']);

    // A command hidden behind an erase-line sequence and a carriage return: on a terminal the
    // prompt would read `ls -la`. It is shown in full, escaped, with a warning; rejected, it
    // never runs.
    let marker = user.workspace.join("ran");
    let command = format!("touch {} \\u001b[2K\\rls -la", marker.display());
    let run = user.chat(
        &format!("::tool execute_command {{\"command\":\"{command}\"}}"),
        &["--json"],
        "r\n\n",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    run.stderr_has(&format!(
        "Approval needed: execute_command $ touch {} \\x1b[2K\\rls -la",
        marker.display()
    ));
    run.stderr_has("warning: the arguments contain control");
    assert!(!live(&run.stderr), "{:?}", run.stderr);
    assert!(!live(&run.stdout), "{:?}", run.stdout);
    let lines = run.lines();
    assert_eq!(
        lines.iter().find_map(|l| l.get("hitl_decision")).unwrap()["decision"],
        "reject"
    );
    assert!(!marker.exists());

    // A bidi override in a path (`invoice<RLO>txt.exe` reads as `invoiceexe.txt`).
    let run = user.chat(
        "::tool write_file {\"path\":\"invoice\\u202etxt.exe\",\"content\":\"x\"}",
        &["--json"],
        "r\n\n",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    run.stderr_has("Approval needed: write_file invoice\\u{202e}txt.exe (1 bytes)");
    run.stderr_has("+++ b/invoice\\u{202e}txt.exe");
    assert!(!live(&run.stderr), "{:?}", run.stderr);
    assert!(!live(&run.stdout), "{:?}", run.stdout);

    // Streamed text with OSC 52 (set the clipboard) and OSC 8 (a disguised link), for people.
    let run = user.chat(
        "::reply copy \x1b]52;c;cm0gLXJmIH4=\x07 and \x1b]8;;https://evil.example\x1b\\docs\x1b]8;;\x1b\\ done",
        &[],
        "",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(r"copy \x1b]52;c;cm0gLXJmIH4=\x07 and \x1b]8;;https://evil.example"),
        "{}",
        run.stdout
    );
    assert!(!live(&run.stdout), "{:?}", run.stdout);
    assert!(!live(&run.stderr), "{:?}", run.stderr);
}

#[test]
fn login_failures_exit_two_and_explain_lockouts() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_up(dir.path(), &[]);
    let user = User::new(&up.url);

    let wrong = user.login("not the password");
    assert_eq!(wrong.code(), 2);
    assert!(
        wrong.stderr.contains("Invalid username or password"),
        "{}",
        wrong.stderr
    );
    assert!(!user.credentials().exists());

    // Without a login, a tty or credentials in the environment, chat cannot log in.
    let run = user.chat("::reply hi", &["--json"], "", &[]);
    assert_eq!(run.code(), 2, "{}", run.stderr);
    run.stderr_has("codelab login");
    // Wrong credentials from the environment.
    let run = user.chat(
        "::reply hi",
        &["--json"],
        "",
        &[
            ("CODELAB_USERNAME", "admin"),
            ("CODELAB_PASSWORD", "nope-nope"),
        ],
    );
    assert_eq!(run.code(), 2, "{}", run.stderr);

    // The fifth failure locks the account: even the right password is refused, and the
    // message says for how long.
    for _ in 0..4 {
        user.login("still not it");
    }
    let locked = user.login(ADMIN_PASSWORD);
    assert_eq!(locked.code(), 2);
    assert!(
        locked
            .stderr
            .contains("Too many failed attempts. Try again in"),
        "{}",
        locked.stderr
    );
}

#[test]
fn an_unreachable_server_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let user = User::new(&url);
    let run = user.chat(
        "::reply hi",
        &["--json"],
        "",
        &[
            ("CODELAB_USERNAME", "admin"),
            ("CODELAB_PASSWORD", "whatever1"),
        ],
    );
    assert_eq!(run.code(), 1, "{}", run.stderr);
    run.stderr_has("cannot reach the server");
    run.stderr_has("codelab up");
}

#[test]
fn tokens_are_refreshed_before_expiry_and_after_a_rejection() {
    let dir = tempfile::tempdir().unwrap();
    // Two-second access tokens for the seeded clients (read at the first start).
    let (up, user) = logged_in_user(dir.path(), &[("AUTH_SERVICE__ACCESS_TOKEN_LIFETIME", "2")]);
    let first = user.stored();
    assert_eq!(first["expires_in"], 2);

    // Expired: the client refreshes before using it, and stores the rotated tokens.
    std::thread::sleep(Duration::from_millis(2500));
    let run = user.chat("::reply after expiry", &["--json"], "", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(final_text(&run.lines()), "after expiry");
    let second = user.stored();
    assert_ne!(second["access_token"], first["access_token"]);
    assert_ne!(second["refresh_token"], first["refresh_token"]);

    // A token the gateway refuses (here: garbage that looks fresh) is refreshed after the 401.
    let mut file: Value =
        serde_json::from_slice(&std::fs::read(user.credentials()).unwrap()).unwrap();
    file["servers"][&up.url]["access_token"] = json!("not-a-jwt");
    file["servers"][&up.url]["expires_at"] = json!("2999-01-01T00:00:00Z");
    std::fs::write(user.credentials(), file.to_string()).unwrap();
    let run = user.chat("::reply after a 401", &["--json"], "", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(final_text(&run.lines()), "after a 401");
    let third = user.stored();
    assert_ne!(third["access_token"], "not-a-jwt");
    assert_ne!(third["refresh_token"], second["refresh_token"]);
}

#[test]
fn chat_reconnects_and_resumes_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, user) = logged_in_user(dir.path(), &[]);
    let mut child = user
        .command(
            &user.chat_args(&[
                "--agent",
                "coder",
                "--json",
                "-m",
                "::slow 250\n::reply one two three four five six seven eight nine ten",
            ]),
            &[],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the turn is under way, then crash the server mid-turn.
    let rx = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the turn did not start: {seen:?}"));
        let started = line.contains("agent_switched");
        seen.push(line);
        if started {
            break;
        }
    }
    let listen = up.url.trim_start_matches("http://").to_owned();
    up.process.kill();
    // The same data dir and public address: the runtime resumes the interrupted turn.
    let _restarted = start_up_on(&dir.path().join("data"), &listen, &[]);
    let rest = wait_with_output(child);
    seen.extend(rx.iter());
    let stdout = seen.join("\n");
    assert_eq!(rest.code(), 0, "{stdout}\n{}", rest.stderr);
    let lines: Vec<Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["direction"] == "local"
            && l["notice"]
                .as_str()
                .unwrap_or("")
                .starts_with("reconnected")),
        "{lines:?}"
    );
    assert_eq!(
        final_text(&lines),
        "one two three four five six seven eight nine ten"
    );
    let last = (*frames_in(&lines).last().unwrap()).clone();
    assert_eq!(last["type"], "turn_finished");
    assert_eq!(last["content"], "completed");
}

/// `create_plan` arguments for the mock: `subtasks` as (title, description, minutes,
/// dependencies), every subtask for the coder.
fn create_plan(title: &str, subtasks: &[(&str, &str, u32, &[u32])]) -> String {
    let subtasks: Vec<Value> = subtasks
        .iter()
        .map(|(title, description, minutes, dependencies)| {
            json!({"title": title, "description": description, "agent": "coder",
                   "estimated_time_minutes": minutes, "dependencies": dependencies})
        })
        .collect();
    let arguments = json!({"title": title, "description": "D", "subtasks": subtasks});
    format!("::tool create_plan {arguments}")
}

/// The plan of issue 18's example: `a`, then `b` after it.
fn two_step_plan() -> String {
    create_plan(
        "T",
        &[
            ("a", "::reply did a", 1, &[]),
            ("b", "::reply did b", 2, &[0]),
        ],
    )
}

impl User {
    /// `codelab chat --agent architect -m MESSAGE` plus `extra`, answering with `stdin`.
    fn plan_chat(&self, message: &str, extra: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut args = vec!["--agent", "architect", "-m", message];
        args.extend_from_slice(extra);
        self.run(&self.chat_args(&args), stdin, env)
    }
}

/// The `plan_decision` frames a `--json` run sent.
fn plan_decisions(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["direction"] == "out")
        .filter_map(|l| l.get("plan_decision"))
        .collect()
}

fn frames_of<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames_in(lines)
        .into_iter()
        .filter(|f| f["type"] == kind)
        .collect()
}

#[test]
fn a_plan_is_shown_as_a_checklist_approved_and_followed_to_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);

    let run = user.plan_chat(&two_step_plan(), &[], "a\n", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    // The checklist, the question, then each subtask's progress and the summary.
    run.stdout_has(
        "Plan: T (version 1, awaiting_approval; 2 subtasks, ~3 min)\n  D\n\
         \x20 [ ] 1. a (coder, ~1 min)\n  [ ] 2. b (coder, ~2 min, after 1)\n",
    );
    run.stderr_has("[a]pprove, [r]eject, [m]odify the plan, or [l]ater? ");
    run.stdout_has("Plan \"T\" (version 1): approved");
    for line in [
        "[>] 1. a (coder, ~1 min)",
        "[x] 1. a (coder, ~1 min)",
        "[>] 2. b (coder, ~2 min, after 1)",
        "[x] 2. b (coder, ~2 min, after 1)",
        "✓ plan completed",
        "Plan \"T\" completed.",
    ] {
        run.stdout_has(line);
    }
    let done = run.stdout.find("[x] 2. b").unwrap();
    let summary = run.stdout.find("Plan \"T\" completed.").unwrap();
    assert!(done < summary, "{}", run.stdout);
    run.stdout_has("did a");
    run.stdout_has("did b");

    // `--yes` approves plans too, and the JSON lines show the decision sent.
    let run = user.plan_chat(&two_step_plan(), &["--yes", "--json"], "", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let required = frames_of(&lines, "plan_approval_required");
    assert_eq!(required.len(), 1, "{lines:?}");
    let decisions = plan_decisions(&lines);
    assert_eq!(decisions.len(), 1, "{lines:?}");
    assert_eq!(decisions[0]["decision"], "approve");
    assert_eq!(decisions[0]["plan_id"], required[0]["plan_id"]);
    let progress: Vec<(u64, &str)> = frames_of(&lines, "plan_progress")
        .into_iter()
        .map(|f| {
            (
                f["subtask_id"].as_u64().unwrap(),
                f["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [
            (0, "in_progress"),
            (0, "completed"),
            (1, "in_progress"),
            (1, "completed")
        ]
    );
    assert_eq!(
        frames_of(&lines, "execution_completed")[0]["status"],
        "completed"
    );
}

#[test]
fn modify_sends_the_feedback_and_the_revised_plan_is_asked_about_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);
    let revised = create_plan("T2", &[("only", "::reply did it all", 3, &[])]);
    let script = format!("{}\n::step 2 {revised}", two_step_plan());

    // Feedback on the line after `m`; version 2 is shown and approved.
    let run = user.plan_chat(&script, &["--json"], "m\none step is enough\na\n", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let required = frames_of(&lines, "plan_approval_required");
    assert_eq!(required.len(), 2, "{lines:?}");
    assert_eq!(required[0]["plan"]["version"], 1);
    assert_eq!(required[1]["plan"]["version"], 2);
    assert_eq!(required[1]["plan"]["title"], "T2");
    assert_eq!(required[1]["plan_id"], required[0]["plan_id"]);
    let decisions = plan_decisions(&lines);
    let decided: Vec<(&str, Option<&str>)> = decisions
        .iter()
        .map(|d| (d["decision"].as_str().unwrap(), d["feedback"].as_str()))
        .collect();
    assert_eq!(
        decided,
        [("modify", Some("one step is enough")), ("approve", None)]
    );
    // In JSON mode the checklists go to stderr, for the person answering.
    run.stderr_has("Plan: T (version 1, awaiting_approval; 2 subtasks, ~3 min)");
    run.stderr_has("Plan: T2 (version 2, awaiting_approval; 1 subtask, ~3 min)");
    let completed = frames_of(&lines, "execution_completed");
    assert_eq!(completed[0]["status"], "completed");
    assert!(
        completed[0]["summary"]
            .as_str()
            .unwrap()
            .contains("did it all"),
        "{completed:?}"
    );

    // An empty feedback line opens $EDITOR on the plan; its text (without the `#` lines)
    // is the feedback.
    let editor = user.outside().join("feedback.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\ngrep -q '^# .*2. b (coder' \"$1\" || exit 3\n\
         printf 'merge a and b\\n# not sent\\n' > \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = user.plan_chat(
        &script,
        &["--json"],
        "m\n\nr\n\n",
        &[("EDITOR", editor.to_str().unwrap())],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decisions = plan_decisions(&lines);
    assert_eq!(decisions[0]["decision"], "modify");
    assert_eq!(decisions[0]["feedback"], "merge a and b");
    assert_eq!(decisions[1]["decision"], "reject");
    assert!(frames_of(&lines, "plan_progress").is_empty(), "{lines:?}");
}

#[test]
fn a_rejected_plan_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);
    let plan = create_plan(
        "Touchy",
        &[(
            "write",
            "::tool write_file {\"path\":\"never.txt\",\"content\":\"x\"}",
            1,
            &[],
        )],
    );
    let run = user.plan_chat(&plan, &["--json"], "r\nnot this way\n", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decisions = plan_decisions(&lines);
    assert_eq!(decisions.len(), 1, "{lines:?}");
    assert_eq!(decisions[0]["decision"], "reject");
    assert_eq!(decisions[0]["feedback"], "not this way");
    assert!(frames_of(&lines, "plan_progress").is_empty(), "{lines:?}");
    assert!(frames_of(&lines, "tool_call").is_empty(), "{lines:?}");
    assert_eq!(frames_in(&lines).last().unwrap()["content"], "completed");
    assert!(!user.workspace.join("never.txt").exists());

    // `--reject` rejects plans too; stdin ending before an answer rejects as well.
    for (flags, stdin, feedback) in [
        (
            &["--json", "--reject", "--feedback", "no plans"][..],
            "",
            "no plans",
        ),
        (&["--json"][..], "", "no answer: the input ended"),
    ] {
        let run = user.plan_chat(&plan, flags, stdin, &[]);
        assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
        let lines = run.lines();
        let decisions = plan_decisions(&lines);
        assert_eq!(decisions[0]["decision"], "reject", "{flags:?}");
        assert_eq!(decisions[0]["feedback"], feedback, "{flags:?}");
        assert!(frames_of(&lines, "plan_progress").is_empty(), "{lines:?}");
    }
    assert!(!user.workspace.join("never.txt").exists());

    // A title that would erase its line and draw a "done" subtask under it is shown escaped,
    // on the checklist's first line.
    let sneaky = create_plan(
        "Fine\u{1b}[2K\r\n  [x] 2. deploy",
        &[("ok\u{202e}txt", "::reply x", 1, &[])],
    );
    let run = user.plan_chat(&sneaky, &[], "r\n\n", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    run.stdout_has(r"Plan: Fine\x1b[2K\r\n  [x] 2. deploy (version 1");
    run.stdout_has(r"[ ] 1. ok\u{202e}txt (coder");
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(['\x1b', '\r', '\u{202e}']), "{text:?}");
    }
}

#[test]
fn a_failed_subtask_is_skipped_cancelled_or_left_as_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);
    let plan = create_plan(
        "Fragile",
        &[
            ("breaks", "::error 500", 1, &[]),
            ("after", "::reply after ran", 1, &[0]),
        ],
    );

    // Skip: the dependent subtask runs and the plan completes.
    let run = user.plan_chat(&plan, &[], "a\ns\n", &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    run.stdout_has("[!] 1. breaks (coder, ~1 min");
    run.stdout_has("✗ plan failed");
    run.stderr_has("[r]etry, [s]kip, [c]ancel? ");
    run.stdout_has("[-] 1. breaks");
    run.stdout_has("[x] 2. after (coder, ~1 min, after 1)");
    run.stdout_has("✓ plan completed");

    // Retry (it fails again), then cancel: the plan ends, the chat exits 1.
    let run = user.plan_chat(&plan, &["--json"], "a\nr\nc\n", &[]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decided: Vec<&str> = plan_decisions(&lines)
        .iter()
        .map(|d| d["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decided, ["approve", "retry", "cancel"]);
    let ends: Vec<&str> = frames_of(&lines, "execution_completed")
        .iter()
        .map(|f| f["status"].as_str().unwrap())
        .collect();
    assert_eq!(ends, ["failed", "failed", "cancelled"]);

    // `--yes` approves but does not decide a failure: the plan is left stopped, exit 1.
    let run = user.plan_chat(&plan, &["--yes", "--json"], "", &[]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    let decided: Vec<&str> = plan_decisions(&lines)
        .iter()
        .map(|d| d["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decided, ["approve"]);
    assert!(
        lines.iter().any(|l| l["notice"]
            .as_str()
            .is_some_and(|n| n.contains("stays stopped at its failed subtask"))),
        "{lines:?}"
    );
}

#[test]
fn a_plan_put_off_is_offered_again_on_resume_and_by_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, user) = logged_in_user(dir.path(), &[]);

    // `l`: the turn waits for the plan (exit 1), nothing runs.
    let run = user.plan_chat(&two_step_plan(), &["--json"], "l\n", &[]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout, run.stderr);
    let lines = run.lines();
    assert!(plan_decisions(&lines).is_empty(), "{lines:?}");
    assert!(frames_of(&lines, "plan_progress").is_empty(), "{lines:?}");
    let session = session_of(&lines);

    // Resuming offers it again; put off once more, `/approvals` offers it from the REST
    // list, and approving it runs it.
    let run = user.run(
        &user.chat_args(&["--session", &session]),
        "l\n/approvals\na\n/quit\n",
        &[],
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout
            .matches("Plan: T (version 1, awaiting_approval")
            .count(),
        2,
        "{}",
        run.stdout
    );
    run.stderr_has("the turn waits for approvals you put off: /approvals");
    run.stdout_has("[x] 2. b (coder, ~2 min, after 1)");
    run.stdout_has("✓ plan completed");
}
