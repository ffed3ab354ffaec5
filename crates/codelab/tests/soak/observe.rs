//! What the soak watches on the processes it started: resident memory, open file
//! descriptors, and the PostgreSQL connections of each of its databases. The processes are
//! found as this test's children in /proc (nextest runs each test in its own process, so they
//! are exactly the topology's), named `<service>:<port>` or by their program (nginx,
//! redis-server).

use std::collections::BTreeMap;
use std::path::Path;

/// One process of the topology.
#[derive(Debug, Clone)]
pub struct Watched {
    pub pid: u32,
    pub name: String,
}

/// The children of this process that still run, sorted by name.
pub fn children() -> Vec<Watched> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after its `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me)
            || stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        if let Some(name) = name_of(&entry.path()) {
            found.push(Watched { pid, name });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// `<service>:<port>` for `codelab serve <service>` (the port from its `<PREFIX>__PORT`),
/// else the program's file name.
fn name_of(proc_dir: &Path) -> Option<String> {
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = args.first()?;
    let program = program.rsplit('/').next().unwrap_or(program).to_owned();
    if args.get(1).map(String::as_str) != Some("serve") {
        return Some(program);
    }
    let service = args.get(2)?.clone();
    let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
    let port = environ
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .find_map(|v| {
            let (name, value) = v.split_once('=')?;
            name.ends_with("__PORT").then(|| value.to_owned())
        })
        .unwrap_or_default();
    Some(format!("{service}:{port}"))
}

/// Resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    codelab_testkit::bench::status_kib(pid, "VmRSS:")
}

/// Open file descriptors.
pub fn fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// name -> value for every watched process.
pub fn sample(watched: &[Watched], read: impl Fn(u32) -> Option<u64>) -> BTreeMap<String, u64> {
    watched
        .iter()
        .filter_map(|w| read(w.pid).map(|v| (w.name.clone(), v)))
        .collect()
}

/// Connections per database (`pg_stat_activity`) for `databases`, 0 for one without any.
pub async fn pg_connections(databases: &[&str]) -> BTreeMap<String, u64> {
    use sqlx::Connection;
    let server = codelab_testkit::databases::postgres_server_url();
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("the test PostgreSQL answers");
    let names: Vec<String> = databases.iter().map(|d| (*d).to_owned()).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT datname::text, count(*) FROM pg_stat_activity WHERE datname = ANY($1) \
         GROUP BY datname",
    )
    .bind(&names)
    .fetch_all(&mut conn)
    .await
    .expect("pg_stat_activity is readable");
    let _ = conn.close().await;
    let mut counts: BTreeMap<String, u64> = names.into_iter().map(|n| (n, 0)).collect();
    for (name, count) in rows {
        counts.insert(name, u64::try_from(count).unwrap_or_default());
    }
    counts
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
