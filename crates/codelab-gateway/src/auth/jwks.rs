//! The auth service's public signing keys (RFC 7517 JWK Set), fetched from
//! `{auth_service_url}/.well-known/jwks.json` and cached.
//!
//! The cache lives `jwks_cache_ttl` seconds (by the injected clock). A token naming a `kid`
//! that is not in the cache forces one refetch, at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`]
//! (a rotation by the auth service is seen at once, yet garbage `kid`s cannot make us hammer
//! it). When a refresh fails the stale set stays in use (logged), retried after
//! [`FAILURE_BACKOFF`]; only with no set at all do verifications fail (`jwks_unavailable`), and
//! then the next attempt comes after 1 s, doubling up to [`FAILURE_BACKOFF`], so a gateway that
//! started before the auth service is ready within a second or two of it.
//! Fetches are single-flight: concurrent requests wait for one fetch rather than each running one.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use codelab_core::clock::SharedClock;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use super::AuthError;

/// The JWKS path on the auth service.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// How long one JWKS fetch may take (the original's constant).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// An unknown `kid` refetches the JWKS at most this often.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed refresh, how long the stale set (or the failure, with no set) is kept before
/// the next attempt, so a down auth service does not make every request wait for a timeout.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// With no set at all, the first retry comes this soon (then twice as late each time, up to
/// [`FAILURE_BACKOFF`]): the usual cause is a gateway that started before the auth service.
pub const FIRST_RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted (a few keys are a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One verification key.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    decoding: DecodingKey,
}

/// A fetched key set and when it must be refreshed.
struct KeySet {
    keys: Arc<Vec<Key>>,
    fetched_at: SystemTime,
    refresh_after: SystemTime,
}

/// What the fetch lock protects: the bookkeeping of forced and failed fetches.
#[derive(Default)]
struct FetchState {
    /// When an unknown `kid` last forced a refetch.
    last_forced: Option<SystemTime>,
    /// When a fetch last failed while no set was cached, and the wait before the next attempt
    /// (fail fast until it ends).
    failed_without_set: Option<(SystemTime, Duration)>,
}

impl FetchState {
    /// Records a failed fetch with no set cached: the wait doubles from
    /// [`FIRST_RETRY_WITHOUT_KEYS`] up to [`FAILURE_BACKOFF`].
    fn failed_without_set(&mut self, now: SystemTime) {
        let wait = self
            .failed_without_set
            .map_or(FIRST_RETRY_WITHOUT_KEYS, |(_, wait)| wait.saturating_mul(2))
            .min(FAILURE_BACKOFF);
        self.failed_without_set = Some((now, wait));
    }
}

/// The cached JWKS of the auth service.
pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    ttl: Duration,
    clock: SharedClock,
    current: RwLock<Option<Arc<KeySet>>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.url)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The JWK members we read; anything else is ignored (RFC 7517 §4).
#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: Option<String>,
    #[serde(default, rename = "use")]
    key_use: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

impl JwksCache {
    /// A cache of the JWKS at `{auth_service_url}/.well-known/jwks.json`, kept `ttl`.
    pub fn new(
        auth_service_url: &str,
        ttl: Duration,
        clock: SharedClock,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("codelab-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            url: format!("{}{JWKS_PATH}", auth_service_url.trim_end_matches('/')),
            http,
            ttl,
            clock,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        })
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The keys a token with header `kid` may be verified with: the key with that `kid`, or
    /// every key for a token without one (the original tried them all). An unknown `kid`
    /// refetches the set once (rate-limited) before failing with `unknown_key`.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<DecodingKey>, AuthError> {
        let set = self.usable_set().await?;
        if let Some(found) = select(&set.keys, kid) {
            return Ok(found);
        }
        if let Some(set) = self.refetch_for_unknown_kid().await
            && let Some(found) = select(&set.keys, kid)
        {
            return Ok(found);
        }
        Err(AuthError::UnknownKey)
    }

    /// Readiness: usable keys are at hand (fresh, fetched now, or stale while the auth
    /// service is down, since tokens can still be verified with them).
    pub async fn check(&self) -> Result<(), String> {
        match self.usable_set().await {
            Ok(set) if set.keys.is_empty() => Err(format!("no RS256 keys in {}", self.url)),
            Ok(_) => Ok(()),
            Err(_) => Err(format!("cannot fetch the JWKS from {}", self.url)),
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, set: Arc<KeySet>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(set);
    }

    fn is_fresh(&self, set: &KeySet) -> bool {
        self.clock.now() < set.refresh_after
    }

    /// The cached set when fresh; otherwise a refreshed one, or the stale one when the
    /// refresh fails.
    async fn usable_set(&self) -> Result<Arc<KeySet>, AuthError> {
        if let Some(set) = self.snapshot().filter(|s| self.is_fresh(s)) {
            return Ok(set);
        }
        let mut state = self.fetch.lock().await;
        // Another request may have refreshed while this one waited for the lock.
        let stale = self.snapshot();
        if let Some(set) = stale.as_ref().filter(|s| self.is_fresh(s)) {
            return Ok(Arc::clone(set));
        }
        let now = self.clock.now();
        if stale.is_none()
            && let Some((at, wait)) = state.failed_without_set
            && now.duration_since(at).unwrap_or(Duration::ZERO) < wait
        {
            return Err(AuthError::JwksUnavailable);
        }
        match self.fetch_now().await {
            Ok(set) => {
                state.failed_without_set = None;
                Ok(set)
            }
            Err(error) => match stale {
                Some(stale) => {
                    let age = now
                        .duration_since(stale.fetched_at)
                        .unwrap_or(Duration::ZERO);
                    tracing::warn!(
                        url = %self.url,
                        %error,
                        age_secs = age.as_secs(),
                        "cannot refresh the JWKS; still verifying with the cached keys"
                    );
                    // Keep the stale keys and retry after the backoff.
                    let kept = Arc::new(KeySet {
                        keys: Arc::clone(&stale.keys),
                        fetched_at: stale.fetched_at,
                        refresh_after: now + FAILURE_BACKOFF,
                    });
                    self.store(Arc::clone(&kept));
                    Ok(kept)
                }
                None => {
                    tracing::error!(url = %self.url, %error, "cannot fetch the JWKS; tokens cannot be verified");
                    state.failed_without_set(now);
                    Err(AuthError::JwksUnavailable)
                }
            },
        }
    }

    /// Refetches because a token named an unknown `kid`, at most once per
    /// [`UNKNOWN_KID_REFETCH_INTERVAL`]. Returns the new set, or the set another caller
    /// fetched while this one waited; `None` when rate-limited or the fetch failed.
    async fn refetch_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        let entered = self.clock.now();
        let mut state = self.fetch.lock().await;
        if let Some(at) = state.last_forced {
            if at >= entered {
                // Someone refetched while this caller waited: that result is fresh.
                return self.snapshot();
            }
            // A clock that went backwards counts as due.
            let since = entered.duration_since(at).unwrap_or(Duration::MAX);
            if since < UNKNOWN_KID_REFETCH_INTERVAL {
                return None;
            }
        }
        state.last_forced = Some(entered);
        match self.fetch_now().await {
            Ok(set) => Some(set),
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "refetching the JWKS for an unknown kid failed");
                None
            }
        }
    }

    /// Fetches, parses and stores the set; the caller holds the fetch lock.
    async fn fetch_now(&self) -> Result<Arc<KeySet>, String> {
        let response = self
            .http
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the auth service answered {}", status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err("the JWKS document is too large".to_owned());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("cannot read the JWKS: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("the JWKS document is too large".to_owned());
        }
        let keys = parse_jwks(&body)?;
        if keys.is_empty() {
            return Err("the JWKS has no RS256 signing key".to_owned());
        }
        let now = self.clock.now();
        tracing::debug!(url = %self.url, keys = keys.len(), "fetched the JWKS");
        let set = Arc::new(KeySet {
            keys: Arc::new(keys),
            fetched_at: now,
            refresh_after: now + self.ttl,
        });
        self.store(Arc::clone(&set));
        Ok(set)
    }
}

/// The keys matching `kid` (every key when the token names none); `None` when nothing matches.
fn select(keys: &[Key], kid: Option<&str>) -> Option<Vec<DecodingKey>> {
    let found: Vec<DecodingKey> = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .map(|k| k.decoding.clone())
            .collect(),
        None => keys.iter().map(|k| k.decoding.clone()).collect(),
    };
    (!found.is_empty()).then_some(found)
}

/// The RS256 signing keys of a JWK Set; other keys (EC, encryption keys, other algorithms,
/// unparsable entries) are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not a JWK Set: {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let usable = jwk.kty.as_deref() == Some("RSA")
            && jwk.key_use.as_deref().is_none_or(|u| u == "sig")
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256");
        let (Some(n), Some(e)) = (jwk.n.as_deref(), jwk.e.as_deref()) else {
            continue;
        };
        if !usable {
            continue;
        }
        match DecodingKey::from_rsa_components(n, e) {
            Ok(decoding) => keys.push(Key {
                kid: jwk.kid,
                decoding,
            }),
            Err(error) => tracing::warn!(kid = ?jwk.kid, %error, "skipping an unusable JWK"),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "tests own their clock, ids and tasks"
    )]
    use super::*;

    #[test]
    fn only_rs256_signing_keys_are_kept() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "a", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "use": "enc", "kid": "b", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "alg": "RS512", "kid": "c", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "d", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "e"},
            "not an object",
            {"kty": "RSA", "kid": "f", "n": "sXch", "e": "AQAB"}
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap_or_default();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
        assert_eq!(kids, [Some("a".to_owned()), Some("f".to_owned())]);
        assert!(select(&keys, Some("f")).is_some());
        assert!(select(&keys, Some("zz")).is_none());
        assert_eq!(select(&keys, None).map(|k| k.len()), Some(2));
    }

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use codelab_core::clock::ManualClock;

    /// A JWKS endpoint on 127.0.0.1 counting its hits, with the kids in `kids`, that answers
    /// 503 while `up` is false; the server stops when the returned handle is aborted.
    async fn jwks_server(
        kids: &[&str],
        up: Arc<AtomicBool>,
    ) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let keys: Vec<serde_json::Value> = kids
            .iter()
            .map(|kid| serde_json::json!({"kty": "RSA", "kid": kid, "n": "sXch", "e": "AQAB"}))
            .collect();
        let body = serde_json::json!({ "keys": keys });
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = axum::Router::new().route(
            JWKS_PATH,
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = up
                    .load(Ordering::SeqCst)
                    .then(|| axum::Json(body.clone()))
                    .ok_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                async move { answer }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, hits, handle)
    }

    #[tokio::test]
    async fn the_cache_refetches_for_unknown_kids_rate_limited_and_outlives_the_auth_service() {
        let (url, hits, server) = jwks_server(&["a"], Arc::new(AtomicBool::new(true))).await;
        let clock = ManualClock::starting_now();
        let cache =
            JwksCache::new(&url, Duration::from_secs(3600), Arc::new(clock.clone())).unwrap();

        assert!(cache.keys_for(Some("a")).await.is_ok());
        assert!(cache.keys_for(Some("a")).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1, "served from the cache");

        // An unknown kid refetches once; again within 10 s it does not.
        assert_eq!(
            cache.keys_for(Some("b")).await.err(),
            Some(AuthError::UnknownKey)
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            cache.keys_for(Some("b")).await.err(),
            Some(AuthError::UnknownKey)
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2, "rate-limited");
        clock.advance(Duration::from_secs(6));
        assert_eq!(
            cache.keys_for(Some("b")).await.err(),
            Some(AuthError::UnknownKey)
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        // The auth service goes away and the cache expires: the stale keys still verify.
        server.abort();
        let _ = server.await;
        clock.advance(Duration::from_secs(3601));
        assert!(cache.keys_for(Some("a")).await.is_ok());
        assert!(cache.check().await.is_ok());
    }

    #[tokio::test]
    async fn without_any_keys_verification_is_unavailable() {
        let (url, _, server) = jwks_server(&["a"], Arc::new(AtomicBool::new(true))).await;
        server.abort();
        let _ = server.await;
        let cache = JwksCache::new(
            &url,
            Duration::from_secs(3600),
            Arc::new(ManualClock::starting_now()),
        )
        .unwrap();
        assert_eq!(
            cache.keys_for(Some("a")).await.err(),
            Some(AuthError::JwksUnavailable)
        );
        assert!(cache.check().await.is_err());
    }

    #[tokio::test]
    async fn without_keys_the_retries_start_after_a_second_and_double_up_to_the_backoff() {
        let up = Arc::new(AtomicBool::new(false));
        let (url, hits, server) = jwks_server(&["a"], Arc::clone(&up)).await;
        let clock = ManualClock::starting_now();
        let cache =
            JwksCache::new(&url, Duration::from_secs(3600), Arc::new(clock.clone())).unwrap();
        let attempts = || hits.load(Ordering::SeqCst);

        // Waits of 1, 2, 4, ... s between attempts, never longer than FAILURE_BACKOFF.
        let mut wait = FIRST_RETRY_WITHOUT_KEYS;
        for attempt in 1..=8 {
            assert!(cache.check().await.is_err());
            assert_eq!(attempts(), attempt, "attempt {attempt} reached the server");
            clock.advance(wait - Duration::from_millis(1));
            assert!(cache.check().await.is_err());
            assert_eq!(attempts(), attempt, "no attempt before {wait:?}");
            clock.advance(Duration::from_millis(1));
            wait = (wait * 2).min(FAILURE_BACKOFF);
        }
        assert_eq!(wait, FAILURE_BACKOFF);

        // The auth service answers: the next attempt succeeds and the keys are cached.
        up.store(true, Ordering::SeqCst);
        assert!(cache.check().await.is_ok());
        assert!(cache.keys_for(Some("a")).await.is_ok());
        assert_eq!(attempts(), 9);
        server.abort();
    }

    #[test]
    fn a_document_that_is_not_a_jwk_set_is_an_error() {
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{\"keys\": 1}").is_err());
    }
}
