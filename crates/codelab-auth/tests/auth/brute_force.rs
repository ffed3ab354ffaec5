//! Brute-force lockout and the per-IP rate limit over real HTTP, with the counters in Redis
//! (`CODELAB_TEST_REDIS_URL`, a unique key prefix, cleaned up): the client IP comes from
//! proxy headers only when the peer is a trusted proxy.

use crate::support::{ADMIN_PASSWORD, Auth, Backend, Options};
use codelab_core::cache::{Cache, connect_cache};
use reqwest::StatusCode;
use serde_json::Value;

/// A Redis cache under a fresh prefix, and the keys to delete afterwards.
struct RedisKeys {
    cache: Cache,
    keys: Vec<String>,
}

impl RedisKeys {
    async fn connect() -> Self {
        let url = codelab_testkit::databases::redis_url();
        let prefix = format!("codelab:test:auth:{}:", codelab_core::random_hex(6));
        let cache = connect_cache(Some(&url), &prefix).await.unwrap_or_else(|error| {
            panic!("this test needs Redis at {url} ({error}); start redis-server or set CODELAB_TEST_REDIS_URL")
        });
        Self {
            cache,
            keys: Vec::new(),
        }
    }

    async fn get(&self, key: &str) -> Option<String> {
        self.cache.get(key).await.unwrap()
    }

    async fn cleanup(&self) {
        for key in &self.keys {
            self.cache.del(key).await.unwrap();
        }
    }
}

async fn attempt(
    auth: &Auth,
    username: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, body) = auth.password_grant(username, password, forwarded_for).await;
    (status, body)
}

#[tokio::test]
async fn lockout_behind_a_trusted_proxy_counts_the_forwarded_client() {
    let mut redis = RedisKeys::connect().await;
    let options = Options::new(Backend::Sqlite)
        .cache(redis.cache.clone())
        .tweak(|config| config.trusted_proxies = vec!["127.0.0.1/32".into()]);
    let auth = Auth::start_with(options).await;
    let alice = auth.add_user("alice", "alice-password-1").await;
    let admin = auth.user("admin").await;
    // Counters are keyed by the resolved account (issue 14, finding 4), not the typed name.
    let alice_key = format!("failed_attempts:account:{}", alice.id);
    redis.keys = vec![
        alice_key.clone(),
        format!("failed_attempts:account:{}", admin.id),
        format!("known_address:{}:203.0.113.6", admin.id),
        "failed_attempts:ip:203.0.113.5".into(),
        "failed_attempts:ip:203.0.113.6".into(),
    ];
    redis.keys.extend((0..5).map(|i| {
        format!(
            "failed_attempts:account:{}",
            codelab_auth::limits::account_id_for(None, &format!("mallory{i}"))
        )
    }));

    // The client wrote a fake first hop; the proxy appended the real one.
    let client = Some("6.6.6.6, 203.0.113.5");
    for _ in 0..5 {
        let (status, body) = attempt(&auth, "alice", "wrong-password", client).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // Locked: even the right password is refused, with the original's message.
    let (status, body) = attempt(&auth, "Alice", "alice-password-1", client).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with("Too many failed attempts. Try again in "),
        "{description}"
    );
    // From another client IP the username is still locked.
    let (status, _) = attempt(&auth, "alice", "alice-password-1", Some("203.0.113.6")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The counters live in Redis, keyed by the account; the attempt is reserved before the
    // password check, so the two refused attempts above were counted too.
    assert_eq!(redis.get(&alice_key).await.as_deref(), Some("7"));
    assert_eq!(
        redis.get("failed_attempts:ip:203.0.113.5").await.as_deref(),
        Some("5")
    );
    assert!(
        redis.get("failed_attempts:ip:6.6.6.6").await.is_none(),
        "spoofed hop ignored"
    );

    // Five more failures from .5 on other usernames lock the IP (threshold × 2).
    for i in 0..5 {
        let (status, _) = attempt(&auth, &format!("mallory{i}"), "wrong-password", client).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = attempt(&auth, "admin", ADMIN_PASSWORD, client).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("Too many failed attempts from this IP.")
    );
    // Another client behind the same proxy is not affected.
    let (status, body) = attempt(&auth, "admin", ADMIN_PASSWORD, Some("203.0.113.6")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    redis.cleanup().await;
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let mut redis = RedisKeys::connect().await;
    // No trusted proxies: the test client (127.0.0.1) talks to us directly.
    let options = Options::new(Backend::Sqlite).cache(redis.cache.clone());
    let auth = Auth::start_with(options).await;
    redis.keys = (0..10)
        .map(|i| {
            format!(
                "failed_attempts:account:{}",
                codelab_auth::limits::account_id_for(None, &format!("user{i}"))
            )
        })
        .chain(["failed_attempts:ip:127.0.0.1".to_owned()])
        .collect();
    // Ten failures on ten usernames, each claiming another IP: all count against the peer.
    for i in 0..10 {
        let spoofed = format!("198.51.100.{i}");
        let (status, _) =
            attempt(&auth, &format!("user{i}"), "wrong-password", Some(&spoofed)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = attempt(&auth, "admin", ADMIN_PASSWORD, Some("192.0.2.77")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("from this IP")
    );
    assert_eq!(
        redis.get("failed_attempts:ip:127.0.0.1").await.as_deref(),
        Some("10")
    );
    redis.cleanup().await;
}

#[tokio::test]
async fn successful_login_clears_the_counters_and_refresh_never_counts() {
    let auth = Auth::start(Backend::Sqlite).await;
    for _ in 0..4 {
        attempt(&auth, "admin", "wrong-password", None).await;
    }
    let tokens = auth.login("admin", ADMIN_PASSWORD).await;
    for _ in 0..4 {
        attempt(&auth, "admin", "wrong-password", None).await;
    }
    // Four after the reset: still under the threshold of five.
    auth.login("admin", ADMIN_PASSWORD).await;
    for _ in 0..20 {
        let (status, _) = auth.refresh("garbage").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = auth.refresh(tokens.refresh.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // The lockout ends when the counter expires (manual clock, in-memory cache).
    for _ in 0..5 {
        attempt(&auth, "admin", "wrong-password", None).await;
    }
    let (status, _) = attempt(&auth, "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    auth.clock.advance(std::time::Duration::from_secs(901));
    auth.login("admin", ADMIN_PASSWORD).await;
}

#[tokio::test]
async fn the_token_endpoint_rate_limit_reports_the_real_limit() {
    let mut redis = RedisKeys::connect().await;
    let options = Options::new(Backend::Sqlite)
        .cache(redis.cache.clone())
        .tweak(|config| {
            config.enable_rate_limiting = Some(true);
            config.rate_limit_per_ip = 3;
        });
    let auth = Auth::start_with(options).await;
    redis.keys = vec!["rate_limit:ip:127.0.0.1".into()];
    for remaining in [2, 1, 0] {
        let (status, headers, _) = auth.token(&[("grant_type", "client_credentials")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(
            headers["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let (status, headers, body) = auth.token(&[("grant_type", "client_credentials")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        serde_json::json!({"error": "rate_limit_exceeded", "error_description": "Too many requests. Please try again later."})
    );
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Health and keys are never limited.
    let (status, _, _) = auth.get_text("/health").await;
    assert_eq!(status, StatusCode::OK);
    redis.cleanup().await;
}
