//! Token clock skew: an access token minted by a clock that is off (auth's key, the claims of
//! a real login, `iat`/`nbf`/`exp` moved) is accepted through nginx by the gateway and by
//! auth's userinfo while the skew is within their leeway (`GATEWAY__JWT_LEEWAY`,
//! `AUTH_SERVICE__TOKEN_LEEWAY`, 30 s by default) and refused with 401 beyond it.

use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::common::private_postgres::PrivatePostgres;
use crate::common::processes::free_port;
use crate::stack::{Settings, Stack, admin_token};

/// The services' default leeway, seconds.
const LEEWAY: i64 = 30;

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Status of GET `url` with `token`.
async fn status_with(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_clock_skew_within_the_leeway_is_accepted_and_beyond_it_refused() {
    let postgres = PrivatePostgres::start("127.0.0.1", free_port()).await;
    let stack = Stack::start(postgres, Settings::default()).await;
    let base = stack.url();
    let token = admin_token(&base).await;
    let parts: Vec<&str> = token.split('.').collect();
    let (header, claims) = (decode_part(parts[0]), decode_part(parts[1]));
    let kid = header["kid"].as_str().unwrap();
    assert_eq!(header["alg"], "RS256");
    // auth's signing key, as stored (in plain PEM without a key-encryption key, as here).
    let pem = stack.postgres.psql(
        "faults_auth",
        &format!("SELECT private_key_pem FROM signing_keys WHERE kid = '{kid}'"),
    );
    assert!(pem.starts_with("-----BEGIN"), "the stored key is not PEM");
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let key = KeyPair::from_pkcs8(&der).unwrap();
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    let now = chrono::Utc::now().timestamp();

    // `issued_at` is the minting clock's "now"; the token lives `lifetime` from there.
    let mint = |issued_at: i64| {
        let mut claims = claims.clone();
        claims["iat"] = issued_at.into();
        claims["nbf"] = issued_at.into();
        claims["exp"] = (issued_at + lifetime).into();
        let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; key.public_modulus_len()];
        let random = aws_lc_rs::rand::SystemRandom::new();
        key.sign(&RSA_PKCS1_SHA256, &random, input.as_bytes(), &mut signature)
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    let gateway = format!("{base}/api/v1/sessions");
    let userinfo = format!("{base}/oauth/userinfo");
    assert_eq!(status_with(&gateway, &mint(now)).await, 200);
    assert_eq!(status_with(&userinfo, &mint(now)).await, 200);

    // (what the token's clock says relative to ours, expected status)
    let ahead = |seconds: i64| now + seconds;
    let cases = [
        ("issued 20 s in the future", ahead(LEEWAY - 10), 200),
        ("issued 90 s in the future", ahead(LEEWAY + 60), 401),
        ("expired 20 s ago", ahead(-lifetime - (LEEWAY - 10)), 200),
        ("expired 90 s ago", ahead(-lifetime - (LEEWAY + 60)), 401),
    ];
    for (what, issued_at, expected) in cases {
        let skewed = mint(issued_at);
        let through_gateway = status_with(&gateway, &skewed).await;
        let through_auth = status_with(&userinfo, &skewed).await;
        eprintln!("faults: token {what}: gateway {through_gateway}, auth userinfo {through_auth}");
        assert_eq!(through_gateway, expected, "gateway, token {what}");
        assert_eq!(through_auth, expected, "auth userinfo, token {what}");
    }
}
