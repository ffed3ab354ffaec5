//! The status page's data: each configured service's `/health`, `/ready` and `/metrics`,
//! and the key figures computed from the metrics (active sockets, turns and tokens per
//! minute, error rate, p95 time to first token).
//!
//! Counters only make rates when compared over time, so every fetch keeps a sample; rates
//! come from the oldest sample of the last [`WINDOW`] and the newest. Fetches are cached for
//! [`CACHE_FOR`] so many open tabs cost the services one scrape.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codelab_core::clock::SharedClock;
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::Value;

use crate::upstream::Upstream;

/// How far back rates look.
pub const WINDOW: Duration = Duration::from_secs(300);
/// How long one fetch of every service is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(2);
/// Shortest span over which a rate is computed.
const MIN_SPAN: Duration = Duration::from_secs(2);

/// One service the status page watches.
#[derive(Debug, Clone)]
pub struct Target {
    /// `auth`, `gateway`, `agent-runtime`, `llm-proxy`.
    pub name: &'static str,
    /// How to reach it.
    pub upstream: Upstream,
}

/// One service's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    /// The service name.
    pub name: String,
    /// `/health` answered 200.
    pub healthy: bool,
    /// `/ready` answered 200.
    pub ready: bool,
    /// `/ready`'s failing checks (`name: error`), or why it could not be asked.
    pub problems: Vec<String>,
    /// The version from `/health`.
    pub version: Option<String>,
    /// Seconds since the service started (its `codelab_<service>_uptime_seconds`).
    pub uptime_seconds: Option<f64>,
}

/// The key figures; `None` when the data is not there (a service not configured, or no
/// second sample yet for a rate).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    /// Open IDE WebSockets on the gateway.
    pub active_sockets: Option<f64>,
    /// Turns ended or paused per minute (runtime).
    pub turns_per_minute: Option<f64>,
    /// LLM tokens (in and out) per minute (proxy; else runtime).
    pub tokens_per_minute: Option<f64>,
    /// Share of HTTP answers that were 5xx, over every watched service.
    pub error_rate: Option<f64>,
    /// 95th percentile of the gateway's time to first token, in seconds.
    pub p95_ttft_seconds: Option<f64>,
    /// Seconds the rates cover (0 until a second sample exists).
    pub window_seconds: f64,
}

/// Everything the status page shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// Each configured service, in a fixed order.
    pub services: Vec<ServiceStatus>,
    /// The key figures.
    pub figures: Figures,
    /// RFC 3339-ish UTC time of the fetch (seconds since the epoch, for the page to show).
    pub fetched_at: u64,
}

/// Counter totals of one fetch.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Option<SystemTime>,
    turns: Option<f64>,
    tokens: Option<f64>,
    requests: f64,
    errors: f64,
    /// `le` bound → cumulative count of `codelab_gateway_ttft_seconds`.
    ttft_buckets: BTreeMap<OrderedBound, f64>,
}

/// A histogram bound that sorts (`+Inf` last).
#[derive(Debug, Clone, Copy)]
struct OrderedBound(f64);

impl PartialEq for OrderedBound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricLine {
    /// The metric name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl MetricLine {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format (comments and malformed lines skipped).
pub fn parse_metrics(text: &str) -> Vec<MetricLine> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<MetricLine> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(MetricLine {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut end = body.len();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key, value));
        rest = &body[end.min(body.len())..];
    }
    labels
}

fn sum(lines: &[MetricLine], name: &str) -> Option<f64> {
    let mut found = false;
    let total = lines
        .iter()
        .filter(|l| l.name == name)
        .inspect(|_| found = true)
        .map(|l| l.value)
        .sum();
    found.then_some(total)
}

/// The quantile `q` of a cumulative histogram (Prometheus' `histogram_quantile`: linear
/// interpolation inside the bucket).
fn quantile(buckets: &BTreeMap<OrderedBound, f64>, q: f64) -> Option<f64> {
    let total = buckets.iter().next_back().map(|(_, count)| *count)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous_bound = 0.0;
    let mut previous_count = 0.0;
    for (bound, count) in buckets {
        if *count >= rank {
            if bound.0.is_infinite() {
                return Some(previous_bound);
            }
            let in_bucket = count - previous_count;
            if in_bucket <= 0.0 {
                return Some(bound.0);
            }
            return Some(
                previous_bound + (bound.0 - previous_bound) * (rank - previous_count) / in_bucket,
            );
        }
        previous_bound = bound.0;
        previous_count = *count;
    }
    Some(previous_bound)
}

/// The per-minute rate of a counter between two samples (a reset counts from zero).
fn per_minute(old: Option<f64>, new: Option<f64>, seconds: f64) -> Option<f64> {
    let new = new?;
    let old = old.unwrap_or(0.0);
    let delta = if new >= old { new - old } else { new };
    Some(delta / seconds * 60.0)
}

/// Fetches and remembers the services' state.
pub struct StatusBoard {
    targets: Vec<Target>,
    clock: SharedClock,
    samples: std::sync::Mutex<VecDeque<Sample>>,
    cache: tokio::sync::Mutex<Option<(SystemTime, Arc<Snapshot>)>>,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

/// What one service's endpoints said.
struct Probe {
    status: ServiceStatus,
    metrics: Vec<MetricLine>,
}

async fn probe(target: &Target) -> Probe {
    let upstream = &target.upstream;
    let (health, ready, metrics) = tokio::join!(
        upstream.probe("/health"),
        upstream.probe("/ready"),
        upstream.probe("/metrics"),
    );
    let mut problems = Vec::new();
    let (healthy, version) = match health {
        Ok((200, body)) => {
            let version = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned));
            (true, version)
        }
        Ok((status, _)) => {
            problems.push(format!("/health answered {status}"));
            (false, None)
        }
        Err(error) => {
            problems.push(error.to_string());
            (false, None)
        }
    };
    let ready = match ready {
        Ok((status, body)) => {
            if let Ok(Value::Object(report)) = serde_json::from_str::<Value>(&body)
                && let Some(Value::Object(checks)) = report.get("checks")
            {
                for (name, outcome) in checks {
                    match outcome.as_str() {
                        Some("ok") => {}
                        Some(text) => problems.push(format!("{name}: {text}")),
                        None => problems.push(format!("{name}: {outcome}")),
                    }
                }
            }
            if status != 200 && problems.is_empty() {
                problems.push(format!("/ready answered {status}"));
            }
            status == 200
        }
        Err(_) => false,
    };
    let metrics = match metrics {
        Ok((200, text)) => parse_metrics(&text),
        _ => Vec::new(),
    };
    let uptime = format!("codelab_{}_uptime_seconds", target.name.replace('-', "_"));
    let uptime_seconds = sum(&metrics, &uptime);
    Probe {
        status: ServiceStatus {
            name: target.name.to_owned(),
            healthy,
            ready,
            problems,
            version,
            uptime_seconds,
        },
        metrics,
    }
}

impl StatusBoard {
    /// A board watching `targets`.
    pub fn new(targets: Vec<Target>, clock: SharedClock) -> Self {
        Self {
            targets,
            clock,
            samples: std::sync::Mutex::new(VecDeque::new()),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The services watched.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The current state (fetched at most every [`CACHE_FOR`]).
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some((at, snapshot)) = cache.as_ref()
            && now.duration_since(*at).is_ok_and(|age| age < CACHE_FOR)
        {
            return Arc::clone(snapshot);
        }
        let snapshot = Arc::new(self.fetch(now).await);
        *cache = Some((now, Arc::clone(&snapshot)));
        snapshot
    }

    async fn fetch(&self, now: SystemTime) -> Snapshot {
        let probes = join_all(self.targets.iter().map(probe)).await;
        let by_service = |name: &str| {
            probes
                .iter()
                .find(|p| p.status.name == name)
                .map(|p| p.metrics.as_slice())
                .unwrap_or_default()
        };
        // A series appears with its first event: a service that answered `/metrics` without
        // it has seen none yet (zero), one that did not answer is unknown.
        let counted = |service: &str, metric: &str| {
            let lines = by_service(service);
            sum(lines, metric).or_else(|| (!lines.is_empty()).then_some(0.0))
        };
        let mut sample = Sample {
            at: Some(now),
            turns: counted("agent-runtime", "codelab_agent_runtime_turns_total"),
            tokens: sum(by_service("llm-proxy"), "codelab_llm_proxy_tokens_total")
                .or_else(|| {
                    sum(
                        by_service("agent-runtime"),
                        "codelab_agent_runtime_llm_tokens_total",
                    )
                })
                .or_else(|| counted("llm-proxy", "codelab_llm_proxy_tokens_total")),
            ..Sample::default()
        };
        for line in probes.iter().flat_map(|p| &p.metrics) {
            if line.name.ends_with("_http_requests_total") {
                sample.requests += line.value;
                if line.label("status").is_some_and(|s| s.starts_with('5')) {
                    sample.errors += line.value;
                }
            }
            if line.name == "codelab_gateway_ttft_seconds_bucket"
                && let Some(le) = line.label("le")
            {
                // `+Inf` parses as infinity too (`f64::from_str` reads any case of `inf`).
                let bound = le.parse().unwrap_or(f64::INFINITY);
                *sample.ttft_buckets.entry(OrderedBound(bound)).or_default() += line.value;
            }
        }
        let active_sockets = counted("gateway", "codelab_gateway_ws_active_sockets");
        let figures = self.figures(sample, active_sockets);
        Snapshot {
            services: probes.into_iter().map(|p| p.status).collect(),
            figures,
            fetched_at: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Stores `sample` and computes the figures against the oldest one in the window.
    fn figures(&self, sample: Sample, active_sockets: Option<f64>) -> Figures {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = sample.at.unwrap_or(SystemTime::UNIX_EPOCH);
        samples.retain(|s| {
            s.at.and_then(|at| now.duration_since(at).ok())
                .is_some_and(|age| age <= WINDOW)
        });
        let baseline = samples.front().cloned();
        samples.push_back(sample.clone());
        let span = baseline
            .as_ref()
            .and_then(|b| b.at)
            .and_then(|at| now.duration_since(at).ok())
            .filter(|span| *span >= MIN_SPAN);
        let mut figures = Figures {
            active_sockets,
            ..Figures::default()
        };
        let cumulative_p95 = quantile(&sample.ttft_buckets, 0.95);
        let (Some(base), Some(span)) = (baseline, span) else {
            // One sample: no rate yet, but the percentile since start is known.
            figures.p95_ttft_seconds = cumulative_p95;
            let total = sample.requests;
            figures.error_rate = (total > 0.0).then(|| sample.errors / total);
            return figures;
        };
        let seconds = span.as_secs_f64();
        figures.window_seconds = seconds;
        figures.turns_per_minute = per_minute(base.turns, sample.turns, seconds);
        figures.tokens_per_minute = per_minute(base.tokens, sample.tokens, seconds);
        let requests = sample.requests - base.requests;
        let errors = sample.errors - base.errors;
        figures.error_rate = if requests > 0.0 && errors >= 0.0 {
            Some(errors / requests)
        } else if requests == 0.0 {
            Some(0.0)
        } else {
            None
        };
        let window_buckets: BTreeMap<OrderedBound, f64> = sample
            .ttft_buckets
            .iter()
            .map(|(bound, count)| {
                let old = base.ttft_buckets.get(bound).copied().unwrap_or(0.0);
                (*bound, (count - old).max(0.0))
            })
            .collect();
        figures.p95_ttft_seconds = quantile(&window_buckets, 0.95).or(cumulative_p95);
        figures
    }
}

#[cfg(test)]
mod tests {
    use codelab_core::clock::{Clock, ManualClock};

    use super::*;

    const TEXT: &str = r#"# HELP codelab_gateway_ws_active_sockets Open sockets
# TYPE codelab_gateway_ws_active_sockets gauge
codelab_gateway_ws_active_sockets{profile="flutter"} 2
codelab_gateway_ws_active_sockets{profile="protocol2"} 1
codelab_gateway_http_requests_total{method="GET",route="/api/v1/sessions",status="200"} 9
codelab_gateway_http_requests_total{method="GET",route="/x",status="502"} 1
codelab_gateway_ttft_seconds_bucket{le="0.1"} 50
codelab_gateway_ttft_seconds_bucket{le="1"} 90
codelab_gateway_ttft_seconds_bucket{le="+Inf"} 100
codelab_gateway_uptime_seconds 12.5
weird{a="q\"uote,d",b="x"} 3
"#;

    #[test]
    fn the_text_format_is_parsed_with_labels_and_escapes() {
        let lines = parse_metrics(TEXT);
        assert_eq!(sum(&lines, "codelab_gateway_ws_active_sockets"), Some(3.0));
        assert_eq!(sum(&lines, "codelab_gateway_uptime_seconds"), Some(12.5));
        let weird = lines.iter().find(|l| l.name == "weird").unwrap();
        assert_eq!(weird.label("a"), Some("q\"uote,d"));
        assert_eq!(weird.label("b"), Some("x"));
        assert_eq!(sum(&lines, "missing"), None);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let buckets: BTreeMap<OrderedBound, f64> = [
            (OrderedBound(0.1), 50.0),
            (OrderedBound(1.0), 90.0),
            (OrderedBound(f64::INFINITY), 100.0),
        ]
        .into_iter()
        .collect();
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = quantile(&buckets, 0.75).unwrap();
        assert!((p75 - (0.1 + 0.9 * 25.0 / 40.0)).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&buckets, 0.95), Some(1.0));
        assert_eq!(quantile(&BTreeMap::new(), 0.95), None);
    }

    #[test]
    fn rates_need_two_samples_and_survive_counter_resets() {
        let clock = ManualClock::starting_now();
        let board = StatusBoard::new(Vec::new(), Arc::new(clock.clone()));
        // A sample taken now with these turn, request and error counters.
        let sample = |clock: &ManualClock, turns: f64, requests: f64, errors: f64| Sample {
            at: Some(clock.now()),
            turns: Some(turns),
            requests,
            errors,
            ..Sample::default()
        };
        let first = board.figures(sample(&clock, 10.0, 10.0, 1.0), Some(3.0));
        assert_eq!(first.turns_per_minute, None);
        assert_eq!(first.error_rate, Some(0.1));
        assert_eq!(first.active_sockets, Some(3.0));
        clock.advance(Duration::from_secs(30));
        let second = board.figures(sample(&clock, 25.0, 30.0, 3.0), None);
        assert_eq!(second.turns_per_minute, Some(30.0));
        assert_eq!(second.error_rate, Some(0.1));
        assert_eq!(second.window_seconds, 30.0);
        assert_eq!(per_minute(Some(100.0), Some(6.0), 60.0), Some(6.0));
    }
}
