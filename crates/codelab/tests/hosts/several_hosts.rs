//! The services on nine hosts behind nginx, two links cut and healed under users' sessions.
//!
//! 1. Every service on its own host; a Flutter IDE logs in through nginx and runs a turn with
//!    a tool call; nginx's log shows it reached the gateways at their hosts' addresses.
//! 2. Gateway 1 cut from Redis. Its `/ready` turns 503 (`redis` timed out) while gateway 2
//!    stays ready; an IDE on gateway 1 keeps chatting (events are delivered locally) and a
//!    new session opens there; a protocol-2 client watching the same session from gateway 2
//!    misses those events live. Healed: gateway 1 is ready again and the watcher, at the next
//!    event, has every event of the cut too.
//! 3. Runtime 1 cut from PostgreSQL. Its `/ready` turns 503 (`database`); a user whose
//!    gateway uses runtime 1 gets a clear error (503, the database is unavailable) for the
//!    message sent during the cut, and so does an IDE whose tool result for a call asked before
//!    the cut arrives during it; users on runtime 2 are not affected. Healed: runtime 1 is
//!    ready again, the same socket's next message is answered, and the tool result sent again
//!    settles its call once and ends that turn.
//! 4. Every session's stored history equals what its clients saw acknowledged, in order and
//!    without duplicates (a message refused during a cut may be absent, never twice).
//!
//! The durations (from a cut to `/ready` saying so, of a turn during a cut, from healing to
//! ready) are printed as `several hosts:` lines for docs/reliability.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::nginx::{Prefix, upstreams_conf};
use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::{Process, redis_server_binary, wait_for_status};
use crate::common::services::{self, Kind, Service, Wiring};
use crate::network::{Host, Network, Unsupported};
use codelab_testkit::ide_clients::steps::{
    assert_the_ide_understood_everything, is_tool_call, object, ran, report_ran, tool_call_of,
};
use codelab_testkit::ide_clients::{
    Bubble, FlutterReplicaClient, FlutterSocket, P2Frame, Protocol2Client, Protocol2Options,
    TokenPlacement, ToolDecision,
};
use serde_json::json;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "several-hosts-admin-password";
/// Bound of every wait of a client (two cores are shared with other builds).
const WAIT: Duration = Duration::from_secs(30);
/// Bound of a process's start (migrations on a cold database included).
const START: Duration = Duration::from_secs(60);
/// Every service listens on this port of its own host, as in a deployment.
const SERVICE_PORT: u16 = 8080;
const POSTGRES_PORT: u16 = 5432;
const REDIS_PORT: u16 = 6379;

const HOSTS: [&str; 9] = [
    "nginx", "auth", "gateway1", "gateway2", "runtime1", "runtime2", "proxy", "postgres", "redis",
];

fn on(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::from((host.address, port))
}

/// An nginx from deploy/nginx/nginx.conf listening on the nginx host's address; prints its log
/// when it drops during a panic.
struct Front {
    _process: Process,
    prefix: Prefix,
    url: String,
}

impl Front {
    async fn start(host: &Host, upstreams: &str) -> Front {
        let prefix = Prefix::new(upstreams, false);
        let conf_path = prefix.path().join("nginx.conf");
        let conf = std::fs::read_to_string(&conf_path).unwrap();
        let loopback = format!("listen 127.0.0.1:{} default_server;", prefix.port);
        assert_eq!(conf.matches(&loopback).count(), 1, "{conf}");
        let address = on(host, prefix.port);
        let conf = conf.replace(&loopback, &format!("listen {address} default_server;"));
        std::fs::write(&conf_path, conf).unwrap();
        // `nginx -t` binds its listeners, so it runs on the host too.
        let mut check = prefix.command();
        check.arg("-t");
        let checked = host.command(&check).output().unwrap();
        assert!(
            checked.status.success(),
            "nginx -t failed:\n{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let log = prefix.path().join("nginx.log");
        let mut process = Process::spawn("nginx", host.command(&prefix.command()), &log);
        let url = format!("http://{address}");
        wait_for_status(&format!("{url}/nginx-health"), 200, &mut process, START).await;
        Front {
            _process: process,
            prefix,
            url,
        }
    }

    /// Access and error lines (nginx.conf logs both to the process's output).
    fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("nginx.log")).unwrap_or_default()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nginx {} ---\n{}", self.url, self.log());
        }
    }
}

/// `redis-server` on its host, without persistence, behind a password: reached from other
/// hosts, Redis refuses clients without one (protected mode), as it should.
struct Redis {
    _process: Process,
    url: String,
    password: String,
}

impl Redis {
    async fn start(host: &Host, dir: &Path) -> Redis {
        let address = on(host, REDIS_PORT);
        let password = codelab_core::random_hex(16);
        let mut command = Command::new(redis_server_binary());
        command
            .args(["--bind", &address.ip().to_string()])
            .args(["--port", &REDIS_PORT.to_string()])
            .args(["--requirepass", &password])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir);
        let mut process = Process::spawn("redis", host.command(&command), &dir.join("redis.log"));
        let deadline = Instant::now() + START;
        while !answers_ping(address, &password).await {
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "redis did not come up:\n{}",
                process.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis {
            _process: process,
            url: format!("redis://:{password}@{address}"),
            password,
        }
    }
}

/// A private PostgreSQL cluster on its host. Other hosts sign in with a password
/// (scram-sha-256), as in a deployment; only the host itself (the test's psql runs there) is
/// trusted. Returns the server and the password.
async fn start_postgres(host: &Host) -> (PrivatePostgres, String) {
    let address = host.address.to_string();
    let mut postgres = PrivatePostgres::initdb_in(&host.prefix(), &address, POSTGRES_PORT);
    let hba = postgres.path().join("data/pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba).unwrap();
    let octets = host.address.octets();
    rules.push_str(&format!(
        "host all postgres {address}/32 trust\n\
         host all all {}.{}.{}.0/24 scram-sha-256\n",
        octets[0], octets[1], octets[2]
    ));
    std::fs::write(&hba, rules).unwrap();
    postgres.start_again().await;
    let password = codelab_core::random_hex(16);
    postgres.psql(
        "postgres",
        &format!("ALTER ROLE postgres PASSWORD '{password}'"),
    );
    (postgres, password)
}

/// Whether Redis at `address` accepts `password` and answers `PING`.
async fn answers_ping(address: SocketAddr, password: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect(address);
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
        return false;
    };
    let request = format!("AUTH {password}\r\nPING\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buffer = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(2);
    while !reply.ends_with(b"+PONG\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => reply.extend_from_slice(&buffer[..n]),
            _ => return false,
        }
    }
    reply.starts_with(b"+OK\r\n")
}

/// Everything on its hosts. Fields drop in order: nginx and the services are killed before
/// PostgreSQL and Redis, all of them before the caller's [`Network`] is removed.
struct Stack {
    front: Front,
    /// `pinned[i]` reaches gateway `i + 1` only (the same nginx.conf, another upstreams.conf).
    pinned: [Front; 2],
    gateways: [Service; 2],
    runtimes: [Service; 2],
    auth: Service,
    proxy: Service,
    redis: Redis,
    postgres: PrivatePostgres,
    postgres_password: String,
    _logs: tempfile::TempDir,
}

impl Stack {
    async fn start(network: &Network) -> Stack {
        let logs = tempfile::tempdir().unwrap();
        let host = |name| network.host(name);
        let (postgres, redis) = tokio::join!(
            start_postgres(host("postgres")),
            Redis::start(host("redis"), logs.path())
        );
        let (postgres, postgres_password) = postgres;
        let with_password =
            |url: String| url.replacen("postgres@", &format!("postgres:{postgres_password}@"), 1);
        let auth_db = with_password(postgres.create_database("auth"));
        let runtime_db = with_password(postgres.create_database("agent_runtime"));

        let auth_address = on(host("auth"), SERVICE_PORT);
        let gateway_addresses = [
            on(host("gateway1"), SERVICE_PORT),
            on(host("gateway2"), SERVICE_PORT),
        ];
        // No website here: its upstream names an address nothing listens on.
        let website = [SocketAddr::from((network.client_address, 9))];
        let upstreams =
            |gateways: &[SocketAddr]| upstreams_conf(&[auth_address], gateways, &website);
        let (all, only1, only2) = (
            upstreams(&gateway_addresses),
            upstreams(&gateway_addresses[..1]),
            upstreams(&gateway_addresses[1..]),
        );
        let (front, pinned1, pinned2) = tokio::join!(
            Front::start(host("nginx"), &all),
            Front::start(host("nginx"), &only1),
            Front::start(host("nginx"), &only2),
        );
        let wiring = Wiring {
            public_url: front.url.clone(),
            auth_url: format!("http://{auth_address}"),
            proxy_url: format!("http://{}", on(host("proxy"), SERVICE_PORT)),
            // One strong key per link, as a deployment has.
            proxy_key: codelab_core::random_hex(32),
            redis_url: redis.url.clone(),
            auth_db,
            runtime_db,
            admin_password: ADMIN_PASSWORD.to_owned(),
            // Client addresses are taken from nginx's X-Forwarded-For, and only nginx's.
            trusted_proxies: format!("{}/32", host("nginx").address),
        };
        let runtime_keys = [codelab_core::random_hex(32), codelab_core::random_hex(32)];
        let spawn = |name: &'static str, kind, env| {
            let on_host = host(name);
            let address = on(on_host, SERVICE_PORT);
            Service::behind(&on_host.prefix(), name, kind, address, env, logs.path())
        };
        let proxy = spawn("proxy", Kind::LlmProxy, wiring.proxy());
        let auth = spawn("auth", Kind::Auth, wiring.auth());
        let runtimes = [0, 1].map(|i| {
            let env = wiring.runtime(&runtime_keys[i]);
            spawn(["runtime1", "runtime2"][i], Kind::AgentRuntime, env)
        });
        // Gateway i talks to runtime i; both runtimes share the database.
        let gateways = [0, 1].map(|i| {
            let env = wiring.gateway(&runtimes[i].url, &runtime_keys[i]);
            spawn(["gateway1", "gateway2"][i], Kind::Gateway, env)
        });
        let mut stack = Stack {
            front,
            pinned: [pinned1, pinned2],
            gateways,
            runtimes,
            auth,
            proxy,
            redis,
            postgres,
            postgres_password,
            _logs: logs,
        };
        services::all_ready(stack.services()).await;
        stack
    }

    fn services(&mut self) -> Vec<&mut Service> {
        let mut all: Vec<&mut Service> = vec![&mut self.proxy, &mut self.auth];
        all.extend(self.runtimes.iter_mut());
        all.extend(self.gateways.iter_mut());
        all
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Each nginx prints its own log when it drops, after this.
        if std::thread::panicking() {
            services::print_log_ends(self.services());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the clients saw, against what was stored
// ---------------------------------------------------------------------------------------------

/// One session as its IDE saw it: the messages acknowledged (a user message whose turn was
/// answered, and the answer), and the user messages refused during a cut.
struct Conversation {
    client: FlutterReplicaClient,
    session: String,
    acknowledged: Vec<(String, String)>,
    refused: Vec<String>,
}

impl Conversation {
    /// The admin logged in through `base` with a new session.
    async fn open(base: &str) -> Conversation {
        let mut client = FlutterReplicaClient::new(base).with_timeout(WAIT);
        client.login(base, ADMIN, ADMIN_PASSWORD).await.unwrap();
        let session = client.create_session().await.unwrap().id;
        Conversation {
            client,
            session,
            acknowledged: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn token(&self) -> &str {
        self.client.access_token().unwrap()
    }

    async fn connect(&self) -> FlutterSocket {
        self.client.connect(&self.session).await.unwrap()
    }

    /// Sends `::reply <text>` and expects `<text>` back; returns how long the turn took.
    async fn reply(&mut self, socket: &mut FlutterSocket, text: &str) -> Duration {
        let started = Instant::now();
        let message = format!("::reply {text}");
        let turn = socket
            .run_turn(&message, |c| panic!("no tool expected: {c:?}"))
            .await
            .unwrap_or_else(|e| panic!("{message:?}: {e}"));
        assert_eq!(turn.assistant_texts(), vec![text], "{turn:?}");
        self.acknowledged.push(("user".into(), message));
        self.acknowledged.push(("assistant".into(), text.into()));
        started.elapsed()
    }

    /// A turn that lists files (a tool the IDE runs).
    async fn list_files(&mut self, socket: &mut FlutterSocket) {
        let message = r#"::tool list_files {"path":"."}"#;
        let turn = socket
            .run_turn(message, |call| {
                assert_eq!(call.tool_name, "list_files");
                ToolDecision::Result(object(json!({"success": true, "items": []})))
            })
            .await
            .unwrap();
        let [text] = turn.assistant_texts()[..] else {
            panic!("{turn:?}")
        };
        assert!(text.contains("list_files"), "{turn:?}");
        self.acknowledged.push(("user".into(), message.into()));
        self.acknowledged.push(("assistant".into(), text.into()));
    }

    /// The stored history (read back through nginx) holds exactly what was acknowledged, in
    /// order, and a refused message at most once.
    async fn assert_stored(&self) {
        let history = self.client.history(&self.session).await.unwrap();
        let stored: Vec<(String, String)> = history
            .messages
            .iter()
            .filter(|m| m.role == "user" || m.role == "assistant")
            .filter_map(|m| Some((m.role.clone(), m.content.clone()?)))
            .filter(|(_, content)| !content.is_empty())
            .collect();
        for refused in &self.refused {
            let copies = stored.iter().filter(|(_, c)| c == refused).count();
            assert!(copies <= 1, "{refused:?} stored {copies} times: {stored:?}");
        }
        let kept: Vec<(String, String)> = stored
            .iter()
            .filter(|(_, c)| !self.refused.contains(c))
            .cloned()
            .collect();
        assert_eq!(
            kept, self.acknowledged,
            "session {}: stored history differs from what the IDE saw",
            self.session
        );
    }
}

fn p2_options(token: &str) -> Protocol2Options {
    Protocol2Options {
        timeout: WAIT,
        ..Protocol2Options::default()
    }
    .with_token(token, TokenPlacement::Query)
}

/// The final assistant texts a protocol-2 client received, in order.
fn final_texts(client: &Protocol2Client) -> Vec<String> {
    client
        .frames()
        .iter()
        .filter(|f| f.is_final_text())
        .filter_map(|f| f.content().map(str::to_owned))
        .collect()
}

/// The figures printed at the end (docs/reliability.md quotes them).
#[derive(Default)]
struct Figures(Vec<(String, Duration)>);

impl Figures {
    fn note(&mut self, what: &str, took: Duration) {
        eprintln!("several hosts: {what}: {took:.1?}");
        self.0.push((what.to_owned(), took));
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_on_separate_hosts_survive_cut_links() {
    let started = Instant::now();
    let network = match Network::create(&HOSTS) {
        Ok(network) => network,
        Err(Unsupported(why)) => {
            eprintln!("SKIPPED several hosts: network namespaces cannot be created here: {why}");
            return;
        }
    };
    eprintln!("hosts: {}", network.describe());
    let mut stack = Stack::start(&network).await;
    let mut figures = Figures::default();
    figures.note("every service ready on its host", started.elapsed());
    let [pinned1, pinned2] = [stack.pinned[0].url.clone(), stack.pinned[1].url.clone()];

    // 1. Through nginx, across hosts.
    let mut first = Conversation::open(&stack.front.url).await;
    let mut socket = first.connect().await;
    first.reply(&mut socket, "hello across hosts").await;
    first.list_files(&mut socket).await;
    assert_the_ide_understood_everything(&socket);
    socket.close().await;
    let log = stack.front.log();
    let gateway_hosts: Vec<Ipv4Addr> = ["gateway1", "gateway2"]
        .map(|g| network.host(g).address)
        .to_vec();
    assert!(
        gateway_hosts
            .iter()
            .any(|a| log.contains(&format!("upstream={a}:{SERVICE_PORT}"))),
        "nginx reached no gateway host:\n{log}"
    );

    // 2. Gateway 1 cut from Redis.
    let mut watched = Conversation::open(&pinned1).await;
    let mut ide = watched.connect().await;
    let mut watcher = codelab_testkit::ide_clients::steps::p2_ready(
        &pinned2,
        &watched.session,
        p2_options(watched.token()),
    )
    .await;
    watched.reply(&mut ide, "before the redis cut").await;
    watcher
        .wait_for("the answer through Redis", P2Frame::is_final_text)
        .await
        .unwrap();

    network.cut("gateway1", "redis");
    let cut = Instant::now();
    let checks = stack.gateways[0].ready_is(503).await;
    figures.note("gateway 1 cut from Redis: /ready 503 after", cut.elapsed());
    assert!(
        checks["redis"].as_str().unwrap().contains("timed out"),
        "{checks:?}"
    );
    assert_eq!(checks["agent_runtime"], "ok", "{checks:?}");
    stack.gateways[1].ready_is(200).await;
    let took = watched.reply(&mut ide, "during the redis cut").await;
    figures.note("gateway 1 cut from Redis: a turn on gateway 1", took);
    let opened = Instant::now();
    let mut fresh = Conversation::open(&pinned1).await;
    let mut fresh_socket = fresh.connect().await;
    fresh
        .reply(&mut fresh_socket, "a new session during the cut")
        .await;
    figures.note(
        "gateway 1 cut from Redis: login, new session and first turn on gateway 1",
        opened.elapsed(),
    );
    fresh_socket.close().await;

    network.heal("gateway1");
    let healed = Instant::now();
    stack.gateways[0].ready_is(200).await;
    figures.note("gateway 1 healed: /ready 200 after", healed.elapsed());
    // Without another event: gateway 1 tells the other replicas what they missed.
    watcher
        .wait_for("the answer given during the cut", |f| {
            f.content() == Some("during the redis cut") && f.is_final_text()
        })
        .await
        .unwrap();
    figures.note(
        "gateway 1 healed: the watcher on gateway 2 has the missed answer after",
        healed.elapsed(),
    );
    watched.reply(&mut ide, "after the redis cut").await;
    watcher
        .wait_for("the answer after healing", |f| {
            f.content() == Some("after the redis cut") && f.is_final_text()
        })
        .await
        .unwrap();
    assert_eq!(
        final_texts(&watcher),
        [
            "before the redis cut",
            "during the redis cut",
            "after the redis cut"
        ],
        "the watcher on gateway 2 has every answer once, in order, after healing"
    );
    ide.close().await;

    // 3. Runtime 1 cut from PostgreSQL.
    let mut on_runtime1 = Conversation::open(&pinned1).await;
    let mut socket1 = on_runtime1.connect().await;
    on_runtime1
        .reply(&mut socket1, "before the database cut")
        .await;
    let mut on_runtime2 = Conversation::open(&pinned2).await;
    let mut socket2 = on_runtime2.connect().await;
    // A turn waiting for the IDE's tool result when the link goes.
    let mut mid_turn = Conversation::open(&pinned1).await;
    let mut held = mid_turn.connect().await;
    let asked = r#"::tool list_files {"path":"src"}"#;
    held.send_user_message(asked).await.unwrap();
    let call = tool_call_of(&held.wait_for("the tool call", is_tool_call).await.unwrap());

    network.cut("runtime1", "postgres");
    let cut = Instant::now();
    let checks = stack.runtimes[0].ready_is(503).await;
    figures.note(
        "runtime 1 cut from PostgreSQL: /ready 503 after",
        cut.elapsed(),
    );
    assert_ne!(checks["database"], "ok", "{checks:?}");
    stack.runtimes[1].ready_is(200).await;
    // Gateway 1 checks that runtime 1 is alive (its `/health`), not its database.
    let gateway1 = stack.gateways[0].ready_is(200).await;
    assert_eq!(gateway1["agent_runtime"], "ok", "{gateway1:?}");
    let took = on_runtime2
        .reply(&mut socket2, "on the other runtime")
        .await;
    figures.note("runtime 1 cut from PostgreSQL: a turn on runtime 2", took);

    let refused = "::reply during the database cut";
    let sent = Instant::now();
    let turn = socket1
        .run_turn(refused, |c| panic!("no tool expected: {c:?}"))
        .await
        .unwrap();
    figures.note(
        "runtime 1 cut from PostgreSQL: the user's error after",
        sent.elapsed(),
    );
    assert!(
        matches!(&turn.last, Bubble::Error { message }
            if message.contains("503") && message.contains("the database is unavailable")),
        "a clear error during the cut: {turn:?}"
    );
    eprintln!("several hosts: the error the user saw: {:?}", turn.last);
    on_runtime1.refused.push(refused.into());
    // The IDE's result for the call asked before the cut: refused the same way.
    held.send_tool_result(&call.call_id, &call.tool_name, ran("src/"))
        .await
        .unwrap();
    let refusal = held
        .wait_for("the error", |f| {
            matches!(f.bubble, Some(Bubble::Error { .. }))
        })
        .await
        .unwrap();
    assert!(
        matches!(&refusal.bubble, Some(Bubble::Error { message })
            if message.contains("the database is unavailable")),
        "{refusal:?}"
    );

    network.heal("runtime1");
    let healed = Instant::now();
    stack.runtimes[0].ready_is(200).await;
    figures.note("runtime 1 healed: /ready 200 after", healed.elapsed());
    stack.gateways[0].ready_is(200).await;
    let took = on_runtime1
        .reply(&mut socket1, "after the database cut")
        .await;
    figures.note("runtime 1 healed: the next turn", took);
    // The IDE sends the refused tool result again: it settles the call (once) and ends the
    // turn.
    let resent = Instant::now();
    let turn = report_ran(&mut held, &call.call_id, &call.tool_name, "src/").await;
    let [answer] = turn.assistant_texts()[..] else {
        panic!("{turn:?}")
    };
    figures.note(
        "runtime 1 healed: the tool result sent again ends the turn cut mid-way",
        resent.elapsed(),
    );
    mid_turn.acknowledged.push(("user".into(), asked.into()));
    mid_turn
        .acknowledged
        .push(("assistant".into(), answer.into()));
    assert_the_ide_understood_everything(&held);
    held.close().await;
    let history = mid_turn.client.history(&mid_turn.session).await.unwrap();
    let results = history
        .messages
        .iter()
        .filter(|m| m.role == "tool" && m.tool_call_id.as_deref() == Some(&call.call_id))
        .count();
    assert_eq!(results, 1, "the call is settled once: {history:?}");
    assert_the_ide_understood_everything(&socket1);
    socket1.close().await;
    socket2.close().await;

    // 4. Nothing lost, duplicated or reordered.
    for conversation in [
        &first,
        &watched,
        &fresh,
        &on_runtime1,
        &on_runtime2,
        &mid_turn,
    ] {
        conversation.assert_stored().await;
    }
    assert!(stack.postgres.is_running());
    // The Redis password is in every URL given to auth and the gateways, never in their logs.
    let secrets = [
        stack.redis.password.clone(),
        stack.postgres_password.clone(),
    ];
    for service in stack.services() {
        let output = service.process.output();
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{} logged a password",
                service.process.name()
            );
        }
    }
    figures.note("whole test", started.elapsed());
}
