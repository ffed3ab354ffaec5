//! Who the client is (its IP, believed from proxy headers only when the peer is a trusted
//! proxy), the per-IP token-endpoint rate limit, and brute-force lockouts by username and IP.
//!
//! The counters live in [`Cache`]: Redis when configured so replicas share them, in memory for
//! `codelab up`. Key names are the original's (`failed_attempts:username:{u}`,
//! `failed_attempts:ip:{ip}`, `rate_limit:ip:{ip}`) under the cache's key prefix. While Redis
//! is unavailable the cache counts in this process's memory (each replica on its own), so the
//! limits keep working; an error Redis itself returns never locks anyone out: that limit is
//! skipped for the request, with a warning and a metric.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use codelab_core::cache::{Cache, CacheError};
use ipnet::IpNet;

use crate::metrics;

/// A trusted-proxy entry that is neither an IP nor a CIDR.
#[derive(Debug, thiserror::Error)]
#[error("invalid trusted proxy {entry:?}: expected an IP address or a CIDR such as 10.0.0.0/8")]
pub struct InvalidProxy {
    /// The entry as configured.
    pub entry: String,
}

/// The peers whose `X-Forwarded-For` / `X-Real-IP` headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses IPs (`10.0.0.1`, `::1`) and CIDRs (`10.0.0.0/8`); empty entries are skipped.
    pub fn parse(entries: &[String]) -> Result<Self, InvalidProxy> {
        let mut nets = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| InvalidProxy {
                    entry: entry.to_owned(),
                })?;
            nets.push(net);
        }
        Ok(Self { nets })
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, seen on dual-stack sockets) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One hop of `X-Forwarded-For` / `X-Real-IP`: an IP, optionally with a port or brackets.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            raw.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
        .map(canonical)
}

/// The client's IP. Proxy headers are believed only when the socket peer is a trusted proxy:
/// then the right-most `X-Forwarded-For` hop that is not itself a trusted proxy (hops to its
/// left can be written by the client), else `X-Real-IP`, else the peer. Anything else is the
/// socket peer: a client talking to us directly cannot choose its IP by sending headers.
/// `None` when the server was started without connection info.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    if !forwarded.is_empty() {
        let mut client = peer;
        for hop in forwarded.iter().rev() {
            // An unreadable hop ends the walk: what lies left of it cannot be trusted.
            let Some(ip) = parse_hop(hop) else {
                return Some(client);
            };
            client = ip;
            if !trusted.contains(ip) {
                return Some(ip);
            }
        }
        // Every hop was a trusted proxy: the left-most one is the best we know.
        return Some(client);
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_hop)
        .or(Some(peer))
}

/// The bucket an IP is counted in: the address itself for IPv4, its /64 for IPv6 (one
/// subscriber usually holds a whole /64, so counting single addresses would be no limit).
pub fn ip_key(ip: Option<IpAddr>) -> String {
    match ip {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            let prefix = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
    }
}

/// A refused login: the message to show and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The original's text ("Too many failed attempts. Try again in N seconds.").
    pub message: String,
    /// Seconds until the counter expires.
    pub retry_after: u64,
}

/// The per-IP limiter's verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// The limiter is off (or the cache returned an error: skipped).
    Off,
    /// Allowed; `remaining` requests are left in the window.
    Allowed {
        /// The configured limit.
        limit: u32,
        /// Requests left in this window.
        remaining: u32,
    },
    /// Over the limit until the window ends.
    Limited {
        /// The configured limit.
        limit: u32,
        /// Seconds until the window ends.
        retry_after: u64,
    },
}

/// Settings of [`Limits`].
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Failed logins per username before lockout; per IP the threshold is twice this.
    pub brute_force_threshold: u32,
    /// How long the failure counters live (the lockout's length).
    pub lockout: Duration,
    /// Per-IP token requests per window; `None` when the limiter is off.
    pub rate_limit: Option<(u32, Duration)>,
}

/// Brute-force counters and the per-IP limiter on a shared cache.
#[derive(Debug, Clone)]
pub struct Limits {
    cache: Cache,
    trusted: TrustedProxies,
    settings: LimitSettings,
}

fn username_key(username: &str) -> String {
    // Logins are case-insensitive, so the counter is too: "Admin" and "admin" are one target.
    format!(
        "failed_attempts:username:{}",
        username.trim().to_lowercase()
    )
}

fn ip_failures_key(ip: &str) -> String {
    format!("failed_attempts:ip:{ip}")
}

fn rate_key(ip: &str) -> String {
    format!("rate_limit:ip:{ip}")
}

/// Whole seconds left, rounded up so "Try again in 0 seconds" never shows while locked.
fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

fn cache_failed(operation: &'static str, error: &CacheError) {
    metrics::counter_cache_error(operation);
    tracing::warn!(operation, %error, "cache error; this auth limit is skipped for the request");
}

impl Limits {
    /// Limits on `cache`, believing proxy headers from `trusted` peers only.
    pub fn new(cache: Cache, trusted: TrustedProxies, settings: LimitSettings) -> Self {
        Self {
            cache,
            trusted,
            settings,
        }
    }

    /// The cache the counters live in.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The trusted proxies.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// The client's IP bucket for a request (see [`client_ip`] and [`ip_key`]).
    pub fn client_key(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> String {
        ip_key(client_ip(peer, headers, &self.trusted))
    }

    /// Counts one token request from `ip` (a fixed window, INCR and EXPIRE in one step).
    pub async fn check_rate(&self, ip: &str) -> RateDecision {
        let Some((limit, window)) = self.settings.rate_limit else {
            return RateDecision::Off;
        };
        let key = rate_key(ip);
        let count = match self.cache.incr_ex(&key, window).await {
            Ok(count) => count,
            Err(error) => {
                cache_failed("rate_limit", &error);
                return RateDecision::Off;
            }
        };
        if count > i64::from(limit) {
            let retry_after = match self.cache.ttl(&key).await {
                Ok(Some(left)) => ceil_secs(left).max(1),
                _ => window.as_secs().max(1),
            };
            metrics::counter_rate_limited();
            RateDecision::Limited { limit, retry_after }
        } else {
            let used = u32::try_from(count).unwrap_or(limit);
            RateDecision::Allowed {
                limit,
                remaining: limit.saturating_sub(used),
            }
        }
    }

    /// Whether logins for `username` or from `ip` are locked (username at the threshold, IP at
    /// twice it). Locked attempts are refused even with the right password and not counted.
    pub async fn check_lockout(&self, username: &str, ip: &str) -> Option<Lockout> {
        let threshold = i64::from(self.settings.brute_force_threshold);
        let checks = [
            (
                username_key(username),
                threshold,
                "Too many failed attempts.",
            ),
            (
                ip_failures_key(ip),
                threshold.saturating_mul(2),
                "Too many failed attempts from this IP.",
            ),
        ];
        for (key, limit, text) in checks {
            let count = match self.cache.get(&key).await {
                Ok(value) => value.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
                Err(error) => {
                    cache_failed("lockout_check", &error);
                    return None;
                }
            };
            if count >= limit {
                let retry_after = match self.cache.ttl(&key).await {
                    Ok(Some(left)) => ceil_secs(left).max(1),
                    _ => self.settings.lockout.as_secs(),
                };
                return Some(Lockout {
                    message: format!("{text} Try again in {retry_after} seconds."),
                    retry_after,
                });
            }
        }
        None
    }

    /// Counts a failed login against both `username` and `ip`; the counters expire
    /// `lockout` after the first failure.
    pub async fn record_failure(&self, username: &str, ip: &str) {
        metrics::counter_failed_login();
        let threshold = i64::from(self.settings.brute_force_threshold);
        let counters = [
            (username_key(username), threshold, "username"),
            (ip_failures_key(ip), threshold.saturating_mul(2), "ip"),
        ];
        for (key, limit, kind) in counters {
            match self.cache.incr_ex(&key, self.settings.lockout).await {
                Ok(count) if count == limit => metrics::counter_lockout(kind),
                Ok(_) => {}
                Err(error) => cache_failed("record_failure", &error),
            }
        }
    }

    /// Forgets the failures of `username` and `ip` after a successful login.
    pub async fn clear(&self, username: &str, ip: &str) {
        for key in [username_key(username), ip_failures_key(ip)] {
            if let Err(error) = self.cache.del(&key).await {
                cache_failed("clear_failures", &error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("test header"));
        }
        map
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        TrustedProxies::parse(&entries).expect("valid test proxies")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), &h, &proxies),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn right_most_untrusted_hop_wins_behind_a_trusted_proxy() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.1"]);
        // The client wrote "6.6.6.6" itself; nginx appended the real peer 198.51.100.7.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 192.168.1.1")]);
        assert_eq!(
            client_ip(Some(ip("10.1.2.3")), &h, &proxies),
            Some(ip("198.51.100.7"))
        );
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.8:5555"),
        ]);
        assert_eq!(
            client_ip(Some(ip("10.1.2.3")), &h, &proxies),
            Some(ip("198.51.100.8"))
        );
    }

    #[test]
    fn real_ip_is_used_without_forwarded_for_and_garbage_falls_back() {
        let proxies = trusted(&["127.0.0.1"]);
        let h = headers(&[("x-real-ip", "198.51.100.20")]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &h, &proxies),
            Some(ip("198.51.100.20"))
        );
        let h = headers(&[("x-real-ip", "not-an-ip")]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &h, &proxies),
            Some(ip("127.0.0.1"))
        );
        let h = headers(&[("x-forwarded-for", "garbage, 198.51.100.1")]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &h, &proxies),
            Some(ip("198.51.100.1"))
        );
        let h = headers(&[("x-forwarded-for", "198.51.100.1, garbage")]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &h, &proxies),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(client_ip(None, &h, &proxies), None);
    }

    #[test]
    fn mapped_ipv6_peers_match_ipv4_proxies_and_ipv6_is_bucketed_by_64() {
        let proxies = trusted(&["127.0.0.1/32"]);
        assert!(proxies.contains(ip("::ffff:127.0.0.1")));
        assert_eq!(
            ip_key(Some(ip("2001:db8:1:2:3:4:5:6"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(ip_key(Some(ip("192.0.2.1"))), "192.0.2.1");
        assert_eq!(ip_key(None), "unknown");
        assert!(TrustedProxies::parse(&["nope".to_owned()]).is_err());
    }

    #[tokio::test]
    async fn lockout_after_threshold_and_clear() {
        let limits = Limits::new(
            Cache::memory(),
            TrustedProxies::default(),
            LimitSettings {
                brute_force_threshold: 3,
                lockout: Duration::from_secs(900),
                rate_limit: Some((2, Duration::from_secs(60))),
            },
        );
        for _ in 0..3 {
            assert_eq!(limits.check_lockout("Alice", "192.0.2.1").await, None);
            limits.record_failure("alice", "192.0.2.1").await;
        }
        let lockout = limits
            .check_lockout("ALICE", "192.0.2.2")
            .await
            .expect("locked");
        assert!(
            lockout
                .message
                .starts_with("Too many failed attempts. Try again in ")
        );
        assert!(lockout.retry_after > 890 && lockout.retry_after <= 900);
        limits.clear("alice", "192.0.2.1").await;
        assert_eq!(limits.check_lockout("alice", "192.0.2.1").await, None);

        assert!(matches!(
            limits.check_rate("x").await,
            RateDecision::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            limits.check_rate("x").await,
            RateDecision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(
            limits.check_rate("x").await,
            RateDecision::Limited { limit: 2, .. }
        ));
    }
}
