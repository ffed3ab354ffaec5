//! A private PostgreSQL cluster a test owns: `initdb` into a temp dir, then `postgres` in the
//! foreground as the `postgres` OS user (PostgreSQL refuses to run as root; scripts/test's
//! `run_pg` does the same), listening on one address and port, optionally inside a network
//! namespace (a command prefix such as `ip netns exec NAME`). The test can stop it as a crash
//! would (immediate shutdown: every connection drops, crash recovery at the next start) and
//! start it again on the same port with the same data.
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using part of it"
)]
//!
//! Every wait is bounded and polls the server's log, which works whether or not the test
//! process can reach the address (a namespace may not be routed to it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::processes::Process;

/// Bound of `initdb` and of each start (crash recovery included) on two busy cores.
const START: Duration = Duration::from_secs(60);

/// The directory of PostgreSQL's programs: the one of `initdb` on the PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
pub fn postgres_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("initdb"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(initdb) = on_path {
        let resolved = initdb.canonicalize().unwrap_or(initdb);
        return resolved.parent().unwrap().to_path_buf();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's programs (initdb, postgres) not found: install them (Debian: \
             apt-get install -y postgresql)"
        )
    })
}

fn running_as_root() -> bool {
    // The effective uid, from /proc (no libc call, no child process).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The uid and gid of the `postgres` OS user, created (as scripts/test does) when missing.
fn postgres_user() -> (u32, u32) {
    let lookup = || {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    let status = Command::new("useradd")
        .args(["--system", "--no-create-home", "postgres"])
        .status()
        .expect("useradd");
    assert!(status.success(), "useradd postgres failed: {status}");
    lookup().expect("the postgres user exists after useradd")
}

/// A PostgreSQL cluster of the test's own. Dropping it kills the server and removes its data.
pub struct PrivatePostgres {
    /// Run before every PostgreSQL program (e.g. `ip netns exec NAME`); empty for none.
    prefix: Vec<String>,
    host: String,
    port: u16,
    bin: PathBuf,
    /// Holds `data/` (the cluster, owned by `postgres`) and the logs; removed on drop.
    dir: tempfile::TempDir,
    server: Option<Process>,
    starts: u32,
}

impl PrivatePostgres {
    /// A new cluster listening on `listen_host:port`, started; returns once it accepts
    /// connections.
    pub async fn start(listen_host: &str, port: u16) -> PrivatePostgres {
        Self::start_in(&[], listen_host, port).await
    }

    /// Like [`Self::start`], every PostgreSQL program run behind `prefix` (for example
    /// `["ip", "netns", "exec", "host-pg"]`), so the server lives in that namespace.
    pub async fn start_in(prefix: &[&str], listen_host: &str, port: u16) -> PrivatePostgres {
        let mut postgres = Self::initdb_in(prefix, listen_host, port);
        postgres.start_again().await;
        postgres
    }

    /// A new cluster (`initdb` done) that is not running yet: a dependency that is not there
    /// when the services start. [`Self::start_again`] starts it.
    pub fn initdb(listen_host: &str, port: u16) -> PrivatePostgres {
        Self::initdb_in(&[], listen_host, port)
    }

    /// [`Self::initdb`] behind `prefix` (see [`Self::start_in`]).
    pub fn initdb_in(prefix: &[&str], listen_host: &str, port: u16) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("private-postgres-")
            .tempdir()
            .unwrap();
        let postgres = PrivatePostgres {
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            host: listen_host.to_owned(),
            port,
            bin: postgres_bin_dir(),
            dir,
            server: None,
            starts: 0,
        };
        let data = postgres.data_dir();
        std::fs::create_dir(&data).unwrap();
        if running_as_root() {
            use std::os::unix::fs::PermissionsExt;
            // The temp dir is root's 0700: let `postgres` reach its data dir inside.
            std::fs::set_permissions(postgres.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let (uid, gid) = postgres_user();
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        }
        let log = postgres.dir.path().join("initdb.log");
        let mut initdb = postgres.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
            ])
            .args(["--locale=C"]);
        let mut process = Process::spawn("initdb", initdb, &log);
        let status = process.wait_for_exit(START);
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        postgres
    }

    /// `prefix`, then (as root) `setpriv` to the `postgres` user, then `bin/<program>`.
    fn command(&self, program: &str) -> Command {
        let mut words: Vec<String> = self.prefix.clone();
        if running_as_root() {
            postgres_user();
            words.extend(
                [
                    "setpriv",
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--clear-groups",
                ]
                .map(str::to_owned),
            );
        }
        words.push(self.bin.join(program).to_string_lossy().into_owned());
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]).stdin(Stdio::null());
        // PG* variables of the caller's environment would redirect psql.
        for name in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
            command.env_remove(name);
        }
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log of its current (or last) run.
    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("postgres-{}.log", self.starts))
    }

    /// The server's log of its current (or last) run, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The address it listens on, `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `postgres://postgres@host:port/<database>` (trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}:{}/{database}", self.host, self.port)
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Starts the server (again) on the same address, port and data; returns once its log
    /// says it accepts connections (after crash recovery when it was stopped as a crash).
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "PostgreSQL is already running");
        self.starts += 1;
        let log = self.log_path();
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", &format!("listen_addresses={}", self.host)])
            // TCP only: no socket file in a shared directory.
            .args(["-c", "unix_socket_directories="])
            // Enough for every pool of a test's services.
            .args(["-c", "max_connections=300"])
            // The page cache survives a server crash; only the OS crashing would need fsync.
            // Commits stay synchronous: an immediate shutdown loses nothing acknowledged.
            .args(["-c", "fsync=off"]);
        let mut server = Process::spawn(&format!("postgres:{}", self.port), command, &log);
        let deadline = Instant::now() + START;
        loop {
            let output = server.output();
            if output.contains("database system is ready to accept connections") {
                break;
            }
            server.assert_running();
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not become ready within {START:?}:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.server = Some(server);
    }

    /// Stops the server as a crash would (immediate shutdown, SIGQUIT): every connection drops
    /// at once, nothing is checkpointed, and the next start runs crash recovery. Returns once
    /// the server and its children exited.
    pub fn stop(&mut self) {
        self.stop_with("QUIT");
    }

    /// Stops the server cleanly (fast shutdown, SIGINT): sessions are ended, open transactions
    /// roll back, a checkpoint is written.
    pub fn stop_fast(&mut self) {
        self.stop_with("INT");
    }

    fn stop_with(&mut self, signal: &str) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        server.signal(signal);
        // The postmaster exits after its children: the port and shared memory are free then.
        server.wait_for_exit(START);
    }

    /// Runs `sql` with psql (behind the prefix, so it reaches a server in a namespace) on
    /// `database`; returns its unaligned, tuples-only output. Fails the test on an error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Creates database `name` (letters, digits and `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name:?}"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Where its files are (the data dir is `data/`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- end of the log of PostgreSQL on {} ---\n{}",
                self.address(),
                self.log()
            );
        }
        // Immediate shutdown, so its children do not outlive the test either.
        if let Some(server) = self.server.as_mut() {
            server.signal("QUIT");
            let _ = server.wait_for_exit(Duration::from_secs(20));
        }
        self.server = None;
    }
}
