//! Tracing setup and the Prometheus recorder shared by every service in the process.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::Environment;
use crate::http::ServiceInfo;

/// Histogram buckets (seconds) from 1 ms to 60 s, so p50/p95/p99 are computable in PromQL
/// for everything from a cache hit to a long LLM stream.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for histograms whose name ends in `_tokens` (LLM token counts).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0, 100000.0,
];

/// Buckets for histograms whose name ends in `_bytes` (payload sizes).
pub const SIZE_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Installs the global tracing subscriber: JSON lines in staging/production, human-readable
/// lines in development. `RUST_LOG` overrides `level`; later calls do nothing.
pub fn init_tracing(environment: Environment, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level_directive(level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what commands print for people and scripts
    // (`codelab up`'s summary, `config show`, `chat --json`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Already initialised (several services in one process, or tests): keep the first one.
    let _ = match environment {
        // Colours only on a terminal: a file or a log collector would get raw escape codes.
        Environment::Development => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        Environment::Staging | Environment::Production => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Maps the original's Python level names (`WARNING`, `CRITICAL`) to tracing's.
fn level_directive(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "" => "info".to_owned(),
        "warning" => "warn".to_owned(),
        "critical" | "fatal" => "error".to_owned(),
        other => other.to_owned(),
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the global recorder on first use.
///
/// Call it (or `common_routes` / `with_standard_layers`) before recording metrics: values
/// recorded before the recorder exists are dropped.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE.get_or_init(install_recorder).clone()
}

fn install_recorder() -> PrometheusHandle {
    let configured = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_tokens".into()), TOKEN_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), SIZE_BUCKETS));
    let builder = match configured {
        Ok(builder) => builder,
        Err(err) => {
            tracing::warn!(%err, "invalid histogram buckets; histograms render as summaries");
            PrometheusBuilder::new()
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(err) = metrics::set_global_recorder(recorder) {
        // Someone else installed a recorder first: /metrics stays valid but shows nothing.
        tracing::warn!(%err, "a global metrics recorder was already installed");
    }
    describe_process_metrics();
    spawn_upkeep(handle.clone());
    handle
}

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until it is folded into the buckets, which only a
/// render or an upkeep does: without a Prometheus scraping `/metrics` (`codelab up`, a
/// deployment without monitoring) memory would grow with every request. A thread of its own,
/// so it runs whatever async runtime the process has, or none. It also hands the memory the
/// process freed back to the system ([`crate::memory`]), so RSS comes back after a load.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
                crate::memory::release_free_memory();
            }
        });
    if let Err(error) = started {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms are folded only when /metrics is read");
    }
}

static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

fn process_collector() -> &'static metrics_process::Collector {
    PROCESS.get_or_init(metrics_process::Collector::default)
}

fn describe_process_metrics() {
    process_collector().describe();
}

type Hook = Arc<dyn Fn() + Send + Sync>;

/// Scrape hooks by (service name, hook name).
static HOOKS: Mutex<Vec<(&'static str, String, Hook)>> = Mutex::new(Vec::new());

/// Registers `hook` to run before each render of `service`'s metrics (gauges computed on
/// demand, such as pool sizes). A hook with the same `name` for the same service replaces
/// the previous one, so restarting a service in one process does not pile hooks up.
pub fn register_scrape_hook(
    service: &ServiceInfo,
    name: &str,
    hook: impl Fn() + Send + Sync + 'static,
) {
    let mut hooks = HOOKS.lock().unwrap_or_else(PoisonError::into_inner);
    hooks.retain(|(svc, n, _)| !(*svc == service.name && n == name));
    hooks.push((service.name, name.to_owned(), Arc::new(hook)));
}

fn run_scrape_hooks(service: &ServiceInfo) {
    let hooks: Vec<Hook> = HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(svc, _, _)| *svc == service.name)
        .map(|(_, _, hook)| Arc::clone(hook))
        .collect();
    // Run outside the lock so a hook may register another.
    for hook in hooks {
        hook();
    }
}

/// The Prometheus text for `service`: its own `codelab_<service>_*` series, its
/// `codelab_build_info` line and the `process_*` series, after refreshing process metrics,
/// uptime, build info and the service's scrape hooks.
pub fn render_metrics(service: &ServiceInfo) -> String {
    let handle = metrics_handle();
    process_collector().collect();

    let uptime = service.metric_name("uptime_seconds");
    metrics::describe_gauge!(
        uptime.clone(),
        metrics::Unit::Seconds,
        "Seconds since the service started"
    );
    metrics::gauge!(uptime).set(service.started_at.elapsed().as_secs_f64());
    metrics::describe_gauge!(
        "codelab_build_info",
        "Always 1; labels carry the service and version"
    );
    metrics::gauge!(
        "codelab_build_info",
        "service" => service.name,
        "version" => service.version.clone()
    )
    .set(1.0);
    run_scrape_hooks(service);

    handle.run_upkeep();
    filter_for_service(&handle.render(), service)
}

/// Keeps only the lines of families that belong to `service` (several services may share
/// one process and one recorder under `codelab up`).
fn filter_for_service(text: &str, service: &ServiceInfo) -> String {
    let own = format!("{}_", service.metric_prefix());
    let build_label = format!("service=\"{}\"", service.name);
    let keep_family = |name: &str| {
        name.starts_with(&own) || name == "codelab_build_info" || name.starts_with("process_")
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim().is_empty() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            continue;
        }
        let keep = match line.strip_prefix('#') {
            // `# HELP name text` / `# TYPE name kind`
            Some(comment) => comment.split_whitespace().nth(1).is_some_and(keep_family),
            None => {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                keep_family(name) && (name != "codelab_build_info" || line.contains(&build_label))
            }
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_level_names_are_understood() {
        assert_eq!(level_directive("DEBUG"), "debug");
        assert_eq!(level_directive("WARNING"), "warn");
        assert_eq!(level_directive("CRITICAL"), "error");
        assert_eq!(level_directive(""), "info");
        assert!(EnvFilter::try_new(level_directive("INFO")).is_ok());
    }

    #[test]
    fn init_tracing_twice_does_not_panic() {
        init_tracing(Environment::Production, "info");
        init_tracing(Environment::Development, "DEBUG");
    }

    #[test]
    fn filter_keeps_only_the_services_series() {
        let auth = ServiceInfo::new("auth", "1.0.0");
        let text = "\
# TYPE codelab_auth_logins_total counter
codelab_auth_logins_total{result=\"ok\"} 3

# TYPE codelab_gateway_frames_total counter
codelab_gateway_frames_total 9

# TYPE codelab_build_info gauge
codelab_build_info{service=\"auth\",version=\"1.0.0\"} 1
codelab_build_info{service=\"gateway\",version=\"1.0.0\"} 1

# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 12
";
        let out = filter_for_service(text, &auth);
        assert!(out.contains("codelab_auth_logins_total{result=\"ok\"} 3"));
        assert!(!out.contains("gateway_frames"));
        assert!(out.contains("codelab_build_info{service=\"auth\""));
        assert!(!out.contains("service=\"gateway\""));
        assert!(out.contains("# HELP process_open_fds"));
        assert!(out.contains("process_open_fds 12"));
        assert!(!out.contains("\n\n\n"));
    }

    #[test]
    fn render_includes_uptime_build_info_process_metrics_and_hooks() {
        let info = ServiceInfo::new("telemetry-test", "9.9.9");
        let hook_gauge = info.metric_name("hook_value");
        let name = hook_gauge.clone();
        register_scrape_hook(&info, "test", move || {
            metrics::gauge!(name.clone()).set(42.0)
        });
        let other = ServiceInfo::new("telemetry-other", "1.0.0");
        metrics::counter!(other.metric_name("things_total")).increment(1);

        let text = render_metrics(&info);
        assert!(
            text.contains("codelab_telemetry_test_uptime_seconds "),
            "{text}"
        );
        assert!(
            text.contains("codelab_build_info{service=\"telemetry-test\",version=\"9.9.9\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("codelab_telemetry_test_hook_value 42"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        assert!(!text.contains("codelab_telemetry_other_"), "{text}");
    }

    #[test]
    fn histograms_render_as_buckets() {
        let info = ServiceInfo::new("telemetry-hist", "1");
        let _ = metrics_handle();
        metrics::histogram!(info.metric_name("op_duration_seconds")).record(0.003);
        let text = render_metrics(&info);
        assert!(
            text.contains("codelab_telemetry_hist_op_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("codelab_telemetry_hist_op_duration_seconds_count 1"),
            "{text}"
        );
    }
}
