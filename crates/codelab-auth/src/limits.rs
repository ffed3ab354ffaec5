//! Who the client is (its IP, believed from proxy headers only when the peer is a trusted
//! proxy), the per-IP rate limits (token endpoint; introspection and revocation in their own
//! bucket), and brute-force lockouts by account, device, known address and IP.
//!
//! Sign-in attempts follow the device-cookie pattern of docs/auth.md ("Protection"): an
//! attempt is reserved (counted) atomically *before* the password is checked, so concurrent
//! guesses cannot all pass; counters are keyed by the resolved account, so a username and its
//! email share one; a browser with a valid device cookie for the account is
//! counted per device and a password-grant client from an address that signed in to the
//! account before is counted per (account, address), so a stranger's failures, which count
//! against the account's "untrusted clients" counter, lock neither of them out.
//!
//! The counters live in [`Cache`]: Redis when configured so replicas share them, in memory for
//! `codelab up`, under the cache's key prefix (`failed_attempts:account:{id}`,
//! `failed_attempts:device:{id}`, `failed_attempts:account_ip:{id}:{ip}`,
//! `failed_attempts:ip:{ip}`, `known_address:{id}:{ip}`, `rate_limit:ip:{ip}`,
//! `rate_limit:client:ip:{ip}`). While Redis
//! is unavailable the cache counts in this process's memory (each replica on its own), so the
//! limits keep working; an error Redis itself returns never locks anyone out: that limit is
//! skipped for the request, with a warning and a metric.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use codelab_core::cache::{Cache, CacheError};
use ipnet::IpNet;

use crate::metrics;
use crate::tokens::sha256_hex;

/// How long an address that signed in to an account stays "known" for it (password grant).
pub const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

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
    /// Sign-in attempts per account (untrusted clients), device or known address before
    /// lockout; failures per IP lock untrusted clients at twice this.
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

/// The failure counter of an account's untrusted clients (no device cookie, unknown address).
fn account_key(account: &str) -> String {
    format!("failed_attempts:account:{account}")
}

fn device_key(device: &str) -> String {
    format!("failed_attempts:device:{device}")
}

fn account_address_key(account: &str, ip: &str) -> String {
    format!("failed_attempts:account_ip:{account}:{ip}")
}

fn known_address_key(account: &str, ip: &str) -> String {
    format!("known_address:{account}:{ip}")
}

fn ip_failures_key(ip: &str) -> String {
    format!("failed_attempts:ip:{ip}")
}

fn rate_key(ip: &str) -> String {
    format!("rate_limit:ip:{ip}")
}

/// Introspection and revocation count in their own bucket, so a flood of them (failed client
/// authentication included) never rate-limits the token endpoint for that address.
fn client_rate_key(ip: &str) -> String {
    format!("rate_limit:client:ip:{ip}")
}

/// The counter identity of a sign-in: the account's id, or for a login that matches no
/// account, a hash of the typed login (case-insensitive). Unknown logins thus lock exactly as
/// real accounts do (no way to tell them apart by the lockout), and the typed text, which may
/// be a mistyped password, is never a cache key.
pub fn account_id_for(user_id: Option<&str>, login: &str) -> String {
    match user_id {
        Some(id) => id.to_owned(),
        None => {
            let hash = sha256_hex(login.trim().to_lowercase().as_bytes());
            format!("unknown-{}", &hash[..32])
        }
    }
}

/// Where a sign-in attempt comes from, as far as the lockout is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginSource {
    /// A browser presenting a valid device cookie for this account (the cookie's id).
    KnownDevice(String),
    /// A password-grant client at an address that signed in to this account before.
    KnownAddress,
    /// Anything else: counted against the account's untrusted-clients counter and the IP.
    Untrusted,
}

/// A reserved sign-in attempt: the counter it was counted in and the count it got.
#[derive(Debug, Clone)]
pub struct Reservation {
    ip: String,
    source: LoginSource,
    /// The reserved counter's key; `None` when the cache failed (the limit is skipped).
    key: Option<String>,
    count: i64,
}

impl Reservation {
    /// The source the attempt was counted as.
    pub fn source(&self) -> &LoginSource {
        &self.source
    }
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
        let decision = self.count_in_window(&rate_key(ip)).await;
        if matches!(decision, RateDecision::Limited { .. }) {
            metrics::counter_rate_limited();
        }
        decision
    }

    /// Counts one introspection or revocation request from `ip`, with the token endpoint's
    /// limit and window but in a bucket of its own (see [`client_rate_key`]).
    pub async fn check_client_rate(&self, ip: &str) -> RateDecision {
        let decision = self.count_in_window(&client_rate_key(ip)).await;
        if matches!(decision, RateDecision::Limited { .. }) {
            metrics::counter_client_rate_limited();
        }
        decision
    }

    async fn count_in_window(&self, key: &str) -> RateDecision {
        let Some((limit, window)) = self.settings.rate_limit else {
            return RateDecision::Off;
        };
        let count = match self.cache.incr_ex(key, window).await {
            Ok(count) => count,
            Err(error) => {
                cache_failed("rate_limit", &error);
                return RateDecision::Off;
            }
        };
        if count > i64::from(limit) {
            let retry_after = match self.cache.ttl(key).await {
                Ok(Some(left)) => ceil_secs(left).max(1),
                _ => window.as_secs().max(1),
            };
            RateDecision::Limited { limit, retry_after }
        } else {
            let used = u32::try_from(count).unwrap_or(limit);
            RateDecision::Allowed {
                limit,
                remaining: limit.saturating_sub(used),
            }
        }
    }

    /// Whether `ip` signed in to `account` with the password grant within
    /// [`KNOWN_ADDRESS_TTL`]. A cache error answers `false` (the stricter counting).
    pub async fn is_known_address(&self, account: &str, ip: &str) -> bool {
        match self.cache.get(&known_address_key(account, ip)).await {
            Ok(value) => value.is_some(),
            Err(error) => {
                cache_failed("known_address", &error);
                false
            }
        }
    }

    /// Remembers that `ip` signed in to `account` (password grant).
    pub async fn remember_address(&self, account: &str, ip: &str) {
        if let Err(error) = self
            .cache
            .set_ex(&known_address_key(account, ip), "1", KNOWN_ADDRESS_TTL)
            .await
        {
            cache_failed("remember_address", &error);
        }
    }

    fn lockout_for(&self, text: &str, retry_after: u64) -> Lockout {
        Lockout {
            message: format!("{text} Try again in {retry_after} seconds."),
            retry_after,
        }
    }

    async fn retry_after(&self, key: &str) -> u64 {
        match self.cache.ttl(key).await {
            Ok(Some(left)) => ceil_secs(left).max(1),
            _ => self.settings.lockout.as_secs().max(1),
        }
    }

    /// Reserves one sign-in attempt for `account` from `ip` before its password is checked:
    /// the counter of `source` is incremented atomically and the attempt may go on only while
    /// the count is within the threshold, so of N concurrent guesses at most the threshold
    /// are verified. Untrusted attempts are also refused while `ip` has failed twice the
    /// threshold (any accounts). A refused attempt answers the lockout to show.
    ///
    /// The count is a reservation: [`Limits::record_success`] clears it, a failure leaves it.
    pub async fn reserve_attempt(
        &self,
        account: &str,
        ip: &str,
        source: LoginSource,
    ) -> Result<Reservation, Lockout> {
        let threshold = i64::from(self.settings.brute_force_threshold);
        if source == LoginSource::Untrusted {
            let key = ip_failures_key(ip);
            match self.cache.get(&key).await {
                Ok(value) => {
                    let count = value.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                    if count >= threshold.saturating_mul(2) {
                        let retry_after = self.retry_after(&key).await;
                        return Err(
                            self.lockout_for("Too many failed attempts from this IP.", retry_after)
                        );
                    }
                }
                Err(error) => cache_failed("lockout_check", &error),
            }
        }
        let key = match &source {
            LoginSource::KnownDevice(device) => device_key(device),
            LoginSource::KnownAddress => account_address_key(account, ip),
            LoginSource::Untrusted => account_key(account),
        };
        let mut reservation = Reservation {
            ip: ip.to_owned(),
            source,
            key: None,
            count: 0,
        };
        match self.cache.incr_ex(&key, self.settings.lockout).await {
            Ok(count) if count > threshold => {
                let retry_after = self.retry_after(&key).await;
                Err(self.lockout_for("Too many failed attempts.", retry_after))
            }
            Ok(count) => {
                reservation.key = Some(key);
                reservation.count = count;
                Ok(reservation)
            }
            Err(error) => {
                cache_failed("reserve_attempt", &error);
                Ok(reservation)
            }
        }
    }

    /// The reserved attempt failed: it stays counted, and an untrusted one also counts against
    /// the IP; the counters expire `lockout` after their first failure.
    pub async fn record_failure(&self, reservation: &Reservation) {
        metrics::counter_failed_login();
        let threshold = i64::from(self.settings.brute_force_threshold);
        if reservation.key.is_some() && reservation.count == threshold {
            metrics::counter_lockout(match reservation.source {
                LoginSource::KnownDevice(_) => "device",
                LoginSource::KnownAddress => "known_address",
                LoginSource::Untrusted => "account",
            });
        }
        if reservation.source == LoginSource::Untrusted {
            match self
                .cache
                .incr_ex(&ip_failures_key(&reservation.ip), self.settings.lockout)
                .await
            {
                Ok(count) if count == threshold.saturating_mul(2) => {
                    metrics::counter_lockout("ip");
                }
                Ok(_) => {}
                Err(error) => cache_failed("record_failure", &error),
            }
        }
    }

    /// The reserved attempt succeeded: its counter (and for an untrusted attempt the IP's)
    /// is cleared.
    pub async fn record_success(&self, reservation: &Reservation) {
        let mut keys: Vec<String> = reservation.key.iter().cloned().collect();
        if reservation.source == LoginSource::Untrusted {
            keys.push(ip_failures_key(&reservation.ip));
        }
        for key in keys {
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
        // (header, value, the client it names)
        for (name, value, client) in [
            ("x-real-ip", "198.51.100.20", "198.51.100.20"),
            ("x-real-ip", "not-an-ip", "127.0.0.1"),
            ("x-forwarded-for", "garbage, 198.51.100.1", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.1, garbage", "127.0.0.1"),
        ] {
            let h = headers(&[(name, value)]);
            assert_eq!(
                client_ip(Some(ip("127.0.0.1")), &h, &proxies),
                Some(ip(client))
            );
        }
        let h = headers(&[("x-forwarded-for", "198.51.100.1, garbage")]);
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
    async fn reservations_lock_at_the_threshold_and_success_clears() {
        let limits = Limits::new(
            Cache::memory(),
            TrustedProxies::default(),
            LimitSettings {
                brute_force_threshold: 3,
                lockout: Duration::from_secs(900),
                rate_limit: Some((2, Duration::from_secs(60))),
            },
        );
        let alice = account_id_for(Some("alice-id"), "Alice");
        for _ in 0..3 {
            let reservation = limits
                .reserve_attempt(&alice, "192.0.2.1", LoginSource::Untrusted)
                .await
                .expect("within the threshold");
            limits.record_failure(&reservation).await;
        }
        let lockout = limits
            .reserve_attempt(&alice, "192.0.2.2", LoginSource::Untrusted)
            .await
            .expect_err("locked");
        assert!(
            lockout
                .message
                .starts_with("Too many failed attempts. Try again in ")
        );
        assert!(lockout.retry_after > 890 && lockout.retry_after <= 900);
        // A known device of the account is counted on its own.
        let device = limits
            .reserve_attempt(&alice, "192.0.2.2", LoginSource::KnownDevice("d1".into()))
            .await
            .expect("known devices are not locked by untrusted failures");
        limits.record_success(&device).await;

        // Unknown logins are keyed by a hash of the typed text, case-insensitively.
        assert_eq!(
            account_id_for(None, " Nobody "),
            account_id_for(None, "nobody")
        );
        assert!(account_id_for(None, "nobody").starts_with("unknown-"));

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
        // Introspection and revocation count in their own bucket.
        assert!(matches!(
            limits.check_client_rate("x").await,
            RateDecision::Allowed { remaining: 1, .. }
        ));
    }
}
