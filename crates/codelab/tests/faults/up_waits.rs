//! `codelab up --postgres-url` with PostgreSQL down at start: it waits, answers 503 on its
//! public listener, and starts everything once the server appears (docs/reliability.md,
//! "PostgreSQL unavailable at start"); Ctrl-C ends the wait; a server that refuses is not
//! waited for.

use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use codelab_testkit::ide_clients::FlutterReplicaClient;

use crate::common::cli::{codelab_with, lines_of, lines_until, spawn_with_lines};
use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::{exit_within, free_port};

const ADMIN_PASSWORD: &str = "waited-for-postgres";
/// In the URL only: the private cluster trusts every local connection, so it is never
/// checked, and it must never be printed.
const URL_PASSWORD: &str = "never-printed-8d1c";

/// `codelab up` on an ephemeral public port and internal ports, its data in `data`, on the
/// PostgreSQL server `server`.
fn up(data: &std::path::Path, server: &str) -> Command {
    codelab_with(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--ephemeral-ports",
            "--postgres-url",
            server,
            "--admin-password",
            ADMIN_PASSWORD,
        ],
        &[],
    )
}

/// Reads the waiting notice up to its public address line; returns that address and the lines.
fn waiting_notice(lines: &Receiver<String>) -> (String, Vec<String>) {
    let notice = lines_until(lines, "public address");
    let url = notice
        .last()
        .and_then(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with("http://"))
        })
        .unwrap_or_else(|| panic!("no public address in {notice:?}"))
        .to_owned();
    (url, notice)
}

async fn status_and_text(request: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
    let response = request.send().await.expect("the public listener answers");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        response.status().as_u16(),
        retry_after,
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_waits_for_postgres_and_serves_a_turn_once_it_appears() {
    let port = free_port();
    let mut postgres = PrivatePostgres::initdb("127.0.0.1", port);
    let data = tempfile::tempdir().unwrap();
    let server = format!("postgres://postgres:{URL_PASSWORD}@127.0.0.1:{port}/postgres");
    let (mut process, lines) = spawn_with_lines(up(data.path(), &server));

    // Waiting: it says so, the URL's password hidden, and stays up.
    let (base, notice) = waiting_notice(&lines);
    let text = notice.join("\n");
    assert!(
        text.contains(&format!(
            "Waiting for PostgreSQL at postgres://postgres:***@127.0.0.1:{port}/postgres"
        )),
        "{text}"
    );
    assert!(!text.contains(URL_PASSWORD), "{text}");
    let client = reqwest::Client::new();
    // Not ready on the health route the summary names, and clear 503s in each service's
    // shape elsewhere, twice: a retry in between changes nothing.
    for _ in 0..2 {
        let (status, _, body) = status_and_text(client.get(format!("{base}/nginx-health"))).await;
        assert_eq!(status, 503, "{body}");
        let (status, retry_after, body) =
            status_and_text(client.get(format!("{base}/api/v1/sessions"))).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"));
        let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            detail["detail"]
                .as_str()
                .is_some_and(|d| d.contains("database does not answer")),
            "{body}"
        );
        let login = client
            .post(format!("{base}/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=password&client_id=codelab-flutter-app&username=admin&password=x");
        let (status, _, body) = status_and_text(login).await;
        assert_eq!(status, 503, "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"], "temporarily_unavailable", "{body}");
        // Still not exposed, as nginx does not expose it.
        let (status, _, _) = status_and_text(client.get(format!("{base}/ready"))).await;
        assert_eq!(status, 404);
        process.assert_running();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // PostgreSQL appears: the databases are created and migrated, the summary is printed.
    postgres.start_again().await;
    let appeared = std::time::Instant::now();
    let summary = lines_until(&lines, "Press Ctrl-C").join("\n");
    eprintln!(
        "faults: up printed its summary {:?} after PostgreSQL accepted connections",
        appeared.elapsed()
    );
    assert!(summary.contains("CodeLab is up."), "{summary}");
    assert!(
        summary.contains(&format!("http://{}", base.trim_start_matches("http://"))),
        "the same public address: {summary}"
    );
    assert!(!summary.contains(URL_PASSWORD), "{summary}");
    assert_eq!(
        postgres.psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
             WHERE datname LIKE 'codelab_%'"
        ),
        "codelab_agent_runtime,codelab_auth"
    );
    let (status, _, body) = status_and_text(client.get(format!("{base}/nginx-health"))).await;
    assert_eq!((status, body.as_str()), (200, "healthy\n"));

    // A user logs in and sends a turn, as the Flutter IDE does.
    let mut ide = FlutterReplicaClient::new(&base).with_timeout(Duration::from_secs(30));
    ide.login(&base, "admin", ADMIN_PASSWORD).await.unwrap();
    let session = ide.create_session().await.unwrap().id;
    let mut socket = ide.connect(&session).await.unwrap();
    let turn = socket
        .run_turn("::reply answered after the wait", |call| panic!("{call:?}"))
        .await
        .unwrap();
    assert_eq!(turn.assistant_texts(), vec!["answered after the wait"]);
    socket.close().await;
    let status = process.terminate();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn ctrl_c_ends_the_wait_for_postgres_cleanly() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let server = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let (mut process, lines) = spawn_with_lines(up(data.path(), &server));
    let (base, _) = waiting_notice(&lines);
    let (status, _, _) =
        status_and_text(reqwest::Client::new().get(format!("{base}/nginx-health"))).await;
    assert_eq!(status, 503);
    process.signal("INT");
    let status = exit_within(&mut process.0, Duration::from_secs(15))
        .expect("`codelab up` stops on Ctrl-C while it waits");
    assert!(status.success(), "{status}");
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("CodeLab stopped.")
    );
}

#[tokio::test]
async fn a_server_that_refuses_the_login_stops_up_at_once() {
    let port = free_port();
    let postgres = PrivatePostgres::start("127.0.0.1", port).await;
    let data = tempfile::tempdir().unwrap();
    // The server answers, and refuses a role it does not know: retrying cannot fix that.
    let server = format!("postgres://nobody@127.0.0.1:{port}/postgres");
    let mut child = up(data.path(), &server)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let status = exit_within(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("`codelab up` kept waiting for a server that refuses"));
    assert!(!status.success());
    // The reader ends with the process's stderr.
    let errors: Vec<String> = stderr.iter().collect();
    assert!(
        errors
            .iter()
            .any(|line| line.contains("role \"nobody\" does not exist")),
        "{errors:?}\n{}",
        postgres.log()
    );
}
