//! Shared pieces of the `cargo bench` targets (docs/benchmarks.md): latency percentiles, the
//! CPU a process or thread has used (`/proc/<pid>/stat`), its memory (`/proc/<pid>/status`),
//! settings from the environment, and side-by-side tables.
//!
//! CPU per unit of work (a process's user + system time over a run divided by the requests,
//! turns or frames it served) is printed next to every latency figure: it stays comparable
//! across machines and under load, where wall-clock latency does not.

use std::fmt::Write as _;
use std::time::Duration;

/// Clock ticks per second of the `/proc` time fields: `USER_HZ`, 100 on every Linux
/// architecture (the kernel's ABI, independent of the scheduler's `HZ`).
const TICKS_PER_SECOND: u64 = 100;

/// The `p`-th percentile (0–100, nearest rank) of `values`, sorting them; zero when empty.
pub fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let last = values.len() - 1;
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * last as f64).round() as usize;
    values[rank.min(last)]
}

/// Latency samples of one run: p50/p99 on demand.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// Records one sample.
    pub fn push(&mut self, sample: Duration) {
        self.samples.push(sample);
    }

    /// Adds another run's samples.
    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// How many samples there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `p`-th percentile (see [`percentile`]).
    pub fn percentile(&mut self, p: f64) -> Duration {
        percentile(&mut self.samples, p)
    }
}

/// User + system CPU time from the text of a `/proc/<pid>/stat` (or `…/task/<tid>/stat`)
/// file; `None` when the text is not one.
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name is parenthesised and may contain spaces or ')': fields are counted
    // after its last ')'. utime and stime are fields 14 and 15 of proc(5), so 12 and 13 here.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(
        ticks.checked_mul(1000)? / TICKS_PER_SECOND,
    ))
}

/// The user + system CPU time process `pid` has used so far, its exited threads included;
/// `None` when it cannot be read (the process is gone, or this is not Linux).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The user + system CPU time of this process.
pub fn own_process_cpu() -> Option<Duration> {
    process_cpu(std::process::id())
}

/// The user + system CPU time of the calling thread: a load generator on a current-thread
/// runtime reads its own share this way, to subtract it from the process's.
pub fn own_thread_cpu() -> Option<Duration> {
    parse_stat_cpu(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

/// The user + system CPU time of every live process whose command name is `name` (e.g. the
/// `postgres` server and its per-connection backends), summed; processes that exited are not
/// counted, so measure over a run whose connections stay open.
#[must_use]
pub fn processes_cpu_named(name: &str) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .is_some_and(|(comm, _)| comm == name)
        })
        .filter_map(|stat| parse_stat_cpu(&stat))
        .sum()
}

/// Measures the CPU a process uses between [`CpuMeter::start`] and [`CpuMeter::stop`].
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    start: Option<Duration>,
}

impl CpuMeter {
    /// Starts measuring process `pid`.
    #[must_use]
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            start: process_cpu(pid),
        }
    }

    /// The CPU used since the start; `None` when either reading failed.
    #[must_use]
    pub fn stop(&self) -> Option<Duration> {
        Some(process_cpu(self.pid)?.saturating_sub(self.start?))
    }
}

/// The runtimes of a benchmark that serves and loads in one process: the services on a
/// multi-thread runtime of their own, the load generator on a current-thread runtime that runs
/// on the thread calling `block_on`, so [`SplitCpu`] can tell their CPU apart.
pub fn server_and_client_runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .expect("a multi-thread runtime builds");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    (server, client)
}

/// Where the CPU of a run went, from [`SplitCpu`].
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuShares {
    /// This process's CPU minus the load generator's: the services'.
    pub server: Option<Duration>,
    /// The load generator's (the thread that started and stopped the meter).
    pub client: Option<Duration>,
    /// Every `postgres` process's (see [`processes_cpu_named`]).
    pub database: Duration,
}

/// Measures a run of services and a load generator sharing this process: call
/// [`SplitCpu::start`] and [`SplitCpu::stop`] on the load generator's thread (a current-thread
/// runtime's, see [`server_and_client_runtimes`]).
#[derive(Debug, Clone, Copy)]
pub struct SplitCpu {
    process: Option<Duration>,
    thread: Option<Duration>,
    database: Duration,
}

impl SplitCpu {
    /// Starts measuring.
    #[must_use]
    pub fn start() -> Self {
        Self {
            process: own_process_cpu(),
            thread: own_thread_cpu(),
            database: processes_cpu_named("postgres"),
        }
    }

    /// The CPU used since the start, split.
    #[must_use]
    pub fn stop(&self) -> CpuShares {
        let since = |now: Option<Duration>, then: Option<Duration>| {
            now.zip(then).map(|(now, then)| now.saturating_sub(then))
        };
        let client = since(own_thread_cpu(), self.thread);
        CpuShares {
            server: since(own_process_cpu(), self.process)
                .zip(client)
                .map(|(process, client)| process.saturating_sub(client)),
            client,
            database: processes_cpu_named("postgres").saturating_sub(self.database),
        }
    }
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) from the text of a `/proc/<pid>/status` file, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// Resets process `pid`'s peak RSS (`VmHWM`) to its current RSS (Linux ≥ 4.0), so the next
/// reading is the peak of what follows; `false` when the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A number from the environment variable `name`; `default` when unset or not a number.
pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(default)
}

/// A whole number from the environment variable `name`; `default` when unset or not one.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `0.123 ms`.
#[must_use]
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// `+0.123 ms` / `-0.010 ms`: the difference `after − before`.
#[must_use]
pub fn added_ms(after: Duration, before: Duration) -> String {
    format!(
        "{:+.3} ms",
        (after.as_secs_f64() - before.as_secs_f64()) * 1000.0
    )
}

/// `42 µs`: CPU time per unit of work, `n/a` when there was no work or no reading.
#[must_use]
pub fn cpu_per_unit(cpu: Option<Duration>, units: usize) -> String {
    match cpu {
        Some(cpu) if units > 0 => {
            format!("{:.0} µs", cpu.as_secs_f64() * 1e6 / units as f64)
        }
        _ => "n/a".to_owned(),
    }
}

/// `12.3 MiB` from KiB, `n/a` without a reading.
#[must_use]
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// A rate (`1234`) of `count` over `elapsed`.
#[must_use]
pub fn per_second(count: usize, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return "n/a".to_owned();
    }
    format!("{:.0}", count as f64 / seconds)
}

/// The machine the figures come from: cores, CPU model and memory (from `/proc`), printed at
/// the top of every benchmark so a table never travels without it.
#[must_use]
pub fn machine_summary() -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| parse_status_kib(&info, "MemTotal:"))
        .map_or_else(
            || "unknown memory".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        );
    format!("{cores} cores ({model}), {memory} RAM")
}

/// A table printed with aligned columns: the first column (labels) left-aligned, the others
/// (one per side compared) right-aligned.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    /// Appends a row: a label and one cell per column.
    pub fn row<S: Into<String>>(&mut self, label: &str, cells: impl IntoIterator<Item = S>) {
        let mut row = vec![label.to_owned()];
        row.extend(cells.into_iter().map(Into::into));
        self.rows.push(row);
    }

    /// The table as text, one line per row, each line ending in `\n`.
    #[must_use]
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                let pad = width - cell.chars().count();
                if c == 0 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str("   ");
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            let _ = writeln!(out, "  {}", line.trim_end());
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Table, parse_stat_cpu, parse_status_kib, percentile};

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut values: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut values, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&mut values, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut values, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut values, 250.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn cpu_is_read_after_the_command_name() {
        // A command name with spaces and a ')' must not shift the fields.
        let stat = "4242 (tokio (w) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("no parenthesis at all"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
        assert_eq!(
            parse_stat_cpu("1 (x) S 1 2 3 4 5 6 7 8 9 10 a b"),
            None,
            "fields that are not numbers"
        );
    }

    #[test]
    fn this_thread_and_process_have_used_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(());
        }
        let thread = super::own_thread_cpu().expect("/proc/thread-self/stat");
        let process = super::own_process_cpu().expect("/proc/<pid>/stat");
        assert!(process >= thread, "{process:?} < {thread:?}");
        assert!(super::status_kib(std::process::id(), "VmRSS:").is_some_and(|k| k > 0));
    }

    #[test]
    fn a_load_generator_thread_is_told_apart_from_the_process() {
        let meter = super::SplitCpu::start();
        let start = super::own_thread_cpu().expect("/proc/thread-self/stat");
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while super::own_thread_cpu().is_some_and(|now| now < start + Duration::from_millis(30))
            && std::time::Instant::now() < give_up
        {
            std::hint::black_box(());
        }
        let shares = meter.stop();
        assert!(
            shares
                .client
                .is_some_and(|c| c >= Duration::from_millis(30)),
            "{shares:?}"
        );
        assert!(shares.server.is_some(), "{shares:?}");
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        assert_eq!(parse_status_kib("VmRSS:\tlots kB", "VmRSS:"), None);
    }

    #[test]
    fn tables_align_their_columns() {
        let mut table = Table::new(["", "direct", "codelab"]);
        table.row("p50", ["0.1 ms", "0.25 ms"]);
        table.row("CPU per request", ["n/a", "40 µs"]);
        let expected = [
            format!("  {}direct   codelab", " ".repeat(18)),
            format!("  p50{}0.1 ms   0.25 ms", " ".repeat(15)),
            "  CPU per request      n/a     40 µs".to_owned(),
        ];
        assert_eq!(table.render(), format!("{}\n", expected.join("\n")));
    }
}
