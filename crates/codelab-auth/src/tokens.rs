//! JWT access and refresh tokens (RFC 7519, RS256 per RFC 7518 §3.3) and the small hashing
//! and randomness helpers around them (jti hashes, PKCE, codes).
//!
//! Tokens carry the original service's claim set exactly (`iss`, `sub`, `aud`, `exp`, `iat`,
//! `nbf`, `jti`, `type`, `client_id`, `scope`) under the header
//! `{"alg":"RS256","kid":…,"typ":"JWT"}`, so existing verifiers keep working. Verification
//! pins RS256 (RFC 8725 §3.1: no `none`, no HS* key confusion) and checks times against the
//! injected clock. Tokens are never logged.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::KeyManager;

/// The only accepted `alg` (RFC 8725 §3.1: an allowlist of one).
const ALG: &str = "RS256";

/// The claims of every token, access and refresh alike (`docs/auth.md`, "Tokens and keys").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer (`AUTH_SERVICE__JWT_ISSUER`).
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The audience, a plain string (`codelab-api`).
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Not before; always equal to `iat`.
    pub nbf: i64,
    /// A UUIDv4; refresh tokens are stored by its SHA-256 ([`jti_hash`]).
    pub jti: String,
    /// `access` or `refresh`.
    #[serde(rename = "type")]
    pub token_type: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
}

/// The two kinds of token; they share `iss` and `aud`, so verifiers must check `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// A short-lived bearer token for the API.
    Access,
    /// A single-use token for the refresh grant.
    Refresh,
}

impl TokenType {
    /// The `type` claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Refresh => "refresh",
        }
    }
}

impl std::fmt::Display for TokenType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A freshly signed token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`.
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused (or could not be issued). Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS with JSON header and claims of the expected shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header's `alg` is not RS256.
    #[error("unsupported token algorithm: expected RS256, got {0}")]
    UnsupportedAlgorithm(String),
    /// The `kid` is not in the key set, even after a reload.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `type` is not the expected one.
    #[error("wrong token type: expected {expected}, got {found}")]
    WrongType {
        /// The type the caller wanted.
        expected: TokenType,
        /// The `type` claim.
        found: String,
    },
    /// `iss` is not ours.
    #[error("token issued by another issuer")]
    WrongIssuer,
    /// `aud` is not ours.
    #[error("token intended for another audience")]
    WrongAudience,
    /// Signing failed (never expected with a valid key).
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

/// Issues and verifies this service's JWTs with the current key set.
pub struct TokenService {
    keys: Arc<KeyManager>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    clock: SharedClock,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

/// The JOSE header, fields in the order PyJWT writes them (it sorts header keys).
#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// The header fields read before choosing a key; anything else is ignored.
#[derive(Deserialize)]
struct PeekHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl TokenService {
    /// A token service signing with `keys`' active key; `leeway_secs` is the clock skew
    /// accepted on `exp`, `nbf` and `iat`.
    pub fn new(
        keys: Arc<KeyManager>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        leeway_secs: u64,
        clock: SharedClock,
    ) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs,
            clock,
        }
    }

    /// The key manager (for the JWKS endpoint).
    pub fn keys(&self) -> &Arc<KeyManager> {
        &self.keys
    }

    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of issued tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    fn now_secs(&self) -> i64 {
        match self.clock.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Signs a token of `token_type` for `sub` valid for `lifetime_secs` from now, with a
    /// fresh UUIDv4 `jti` and `nbf == iat` (as the original did).
    pub fn issue(
        &self,
        token_type: TokenType,
        sub: &str,
        client_id: &str,
        scope: &str,
        lifetime_secs: i64,
    ) -> Result<IssuedToken, TokenError> {
        let now = self.now_secs();
        let exp = now.saturating_add(lifetime_secs);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.audience.clone(),
            exp,
            iat: now,
            nbf: now,
            jti: codelab_core::ids::new_random_id().to_string(),
            token_type: token_type.as_str().to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
        };
        let keys = self.keys.current();
        let active = keys.active();
        let header = Header {
            alg: ALG,
            kid: &active.kid,
            typ: "JWT",
        };
        let header = serde_json::to_vec(&header).map_err(|e| TokenError::Signing(e.to_string()))?;
        let payload =
            serde_json::to_vec(&claims).map_err(|e| TokenError::Signing(e.to_string()))?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        // RFC 7515 §5.1: the signature covers `base64url(header) . base64url(claims)`.
        // Signed with the parsed key held in memory (jsonwebtoken's aws-lc backend re-parses
        // and re-validates the DER key on every call).
        let mut signature = vec![0u8; active.key_pair.public_modulus_len()];
        active
            .key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        let expires_at = DateTime::<Utc>::from_timestamp(exp, 0)
            .ok_or_else(|| TokenError::Signing(format!("expiry {exp} is out of range")))?;
        Ok(IssuedToken {
            token,
            jti: claims.jti,
            expires_at,
        })
    }

    /// Verifies a token's signature (RS256 only, key chosen by `kid`; a token without `kid`
    /// is tried against the active key), `exp`/`nbf`/`iat` with the leeway against the
    /// injected clock, `iss`, `aud` and `type`.
    ///
    /// An unknown `kid` triggers one rate-limited reload of the key set (a rotation by the
    /// CLI or another replica), then one retry.
    pub async fn verify(&self, token: &str, expected: TokenType) -> Result<Claims, TokenError> {
        let header = peek_header(token)?;
        if header.alg != ALG {
            return Err(TokenError::UnsupportedAlgorithm(header.alg));
        }
        let keys = self.keys.current();
        let key = match header.kid.as_deref() {
            None => keys.active_decoding_key().cloned(),
            Some(kid) => match keys.decoding_key(kid) {
                Some(key) => Some(key.clone()),
                None => {
                    drop(keys);
                    if self.keys.reload_for_unknown_kid().await {
                        self.keys.current().decoding_key(kid).cloned()
                    } else {
                        None
                    }
                }
            },
        };
        let key = key.ok_or(TokenError::UnknownKey)?;
        let claims = decode_rs256(token, &key)?;
        self.check_claims(&claims, expected)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims, expected: TokenType) -> Result<(), TokenError> {
        let now = self.now_secs();
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);
        // PyJWT's comparisons, which the original used: expired when exp <= now - leeway,
        // immature when nbf (or iat) > now + leeway.
        if claims.exp <= now.saturating_sub(leeway) {
            return Err(TokenError::Expired);
        }
        let latest = now.saturating_add(leeway);
        if claims.nbf > latest || claims.iat > latest {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience);
        }
        // Refresh and access tokens share iss/aud: the type is what keeps a refresh token
        // from being used as an access token (RFC 8725 §3.11).
        if claims.token_type != expected.as_str() {
            return Err(TokenError::WrongType {
                expected,
                found: claims.token_type.clone(),
            });
        }
        Ok(())
    }
}

fn peek_header(token: &str) -> Result<PeekHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three base64url parts separated by dots".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| TokenError::Malformed(format!("header is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("header is not a JOSE header: {e}")))
}

/// Signature check with jsonwebtoken, algorithm pinned to RS256; its own time, audience and
/// required-claim checks are off because [`TokenService::check_claims`] does them against
/// the injected clock.
fn decode_rs256(token: &str, key: &DecodingKey) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_) => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenError::UnsupportedAlgorithm("not RS256".into())
            }
            _ => TokenError::Malformed(error.to_string()),
        })
}

/// Lower-case hex SHA-256 of a `jti`: how refresh tokens are stored (never the token itself).
pub fn jti_hash(jti: &str) -> String {
    sha256_hex(jti.as_bytes())
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The PKCE S256 challenge of a verifier: `BASE64URL(SHA256(ASCII(verifier)))` without
/// padding (RFC 7636 §4.2).
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `bytes` bytes from the OS-seeded CSPRNG, base64url without padding (authorization codes,
/// CSRF tokens; RFC 6749 §10.10 asks for unguessable values).
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use codelab_core::clock::ManualClock;
    use jsonwebtoken::{EncodingKey, encode};

    use super::*;
    use crate::keys::tests::{manager, sqlite_store, start};
    use crate::store::AuthStore;

    const ISS: &str = "https://auth.codelab.local";
    const AUD: &str = "codelab-api";

    struct Fixture {
        store: Arc<dyn AuthStore>,
        clock: ManualClock,
        service: TokenService,
    }

    async fn fixture_with_leeway(leeway: u64) -> Fixture {
        let store = sqlite_store().await;
        let clock = ManualClock::new(start());
        let keys = Arc::new(manager(&store, &clock).await);
        let service = TokenService::new(keys, ISS, AUD, leeway, Arc::new(clock.clone()));
        Fixture {
            store,
            clock,
            service,
        }
    }

    impl Fixture {
        /// A token of `kind` for user `u` of client `c`, valid for `seconds`.
        fn token(&self, kind: TokenType, scope: &str, seconds: i64) -> String {
            self.service
                .issue(kind, "u", "c", scope, seconds)
                .unwrap()
                .token
        }

        async fn verify_access(&self, token: &str) -> Result<Claims, TokenError> {
            self.service.verify(token, TokenType::Access).await
        }
    }

    async fn fixture() -> Fixture {
        fixture_with_leeway(0).await
    }

    fn part(token: &str, index: usize) -> serde_json::Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn b64_json(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[tokio::test]
    async fn issued_token_has_the_original_header_and_claims() {
        let f = fixture().await;
        let issued = f
            .service
            .issue(
                TokenType::Access,
                "user-1",
                "codelab-flutter-app",
                "api:read api:write",
                900,
            )
            .unwrap();
        let header_b64 = issued.token.split('.').next().unwrap();
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
        assert_eq!(
            header,
            format!(
                r#"{{"alg":"RS256","kid":"{}","typ":"JWT"}}"#,
                f.service.keys().active_kid()
            )
        );
        let claims = part(&issued.token, 1);
        let now = 1_700_000_000_i64;
        assert_eq!(claims["iss"], ISS);
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(claims["aud"], AUD);
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["nbf"], now);
        assert_eq!(claims["exp"], now + 900);
        assert_eq!(claims["type"], "access");
        assert_eq!(claims["client_id"], "codelab-flutter-app");
        assert_eq!(claims["scope"], "api:read api:write");
        assert_eq!(claims["jti"], issued.jti);
        let jti = uuid::Uuid::parse_str(&issued.jti).unwrap();
        assert_eq!(jti.get_version_num(), 4);
        assert_eq!(claims.as_object().unwrap().len(), 10);
        assert_eq!(issued.expires_at.timestamp(), now + 900);

        let verified = f.verify_access(&issued.token).await.unwrap();
        assert_eq!(verified.sub, "user-1");
        assert_eq!(verified.jti, issued.jti);
    }

    #[tokio::test]
    async fn token_verifies_with_the_published_jwk_alone() {
        // What the gateway does: verify with n/e from the JWKS, RS256 pinned.
        let f = fixture().await;
        let issued = f.token(TokenType::Access, "s", 60);
        let jwks = f.service.keys().jwks();
        let jwk = &jwks["keys"][0];
        let key = DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(decode_rs256(&issued, &key).unwrap().sub, "u");
    }

    #[tokio::test]
    async fn expiry_uses_the_injected_clock() {
        let f = fixture().await;
        let issued = f.token(TokenType::Access, "s", 900);
        f.clock.advance(Duration::from_secs(899));
        assert!(f.verify_access(&issued).await.is_ok());
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(f.verify_access(&issued).await, Err(TokenError::Expired));
    }

    #[tokio::test]
    async fn leeway_tolerates_skew_on_both_sides() {
        let f = fixture_with_leeway(30).await;
        let issued = f.token(TokenType::Access, "s", 900);
        // A verifier whose clock is 30 s behind still accepts it...
        f.clock.set(start() - Duration::from_secs(30));
        assert!(f.verify_access(&issued).await.is_ok());
        // ...but not 31 s behind.
        f.clock.set(start() - Duration::from_secs(31));
        assert_eq!(f.verify_access(&issued).await, Err(TokenError::NotYetValid));
        // Expiry gets the same 30 s.
        f.clock.set(start() + Duration::from_secs(929));
        assert!(f.verify_access(&issued).await.is_ok());
        f.clock.set(start() + Duration::from_secs(930));
        assert_eq!(f.verify_access(&issued).await, Err(TokenError::Expired));
    }

    #[tokio::test]
    async fn refresh_token_is_not_an_access_token() {
        let f = fixture().await;
        let refresh = f.token(TokenType::Refresh, "s", 60);
        assert_eq!(
            f.verify_access(&refresh).await,
            Err(TokenError::WrongType {
                expected: TokenType::Access,
                found: "refresh".into()
            })
        );
        assert!(f.service.verify(&refresh, TokenType::Refresh).await.is_ok());
    }

    #[tokio::test]
    async fn other_issuer_or_audience_is_refused() {
        let f = fixture().await;
        let keys = Arc::clone(f.service.keys());
        let clock: SharedClock = Arc::new(f.clock.clone());
        let other_iss = TokenService::new(Arc::clone(&keys), "https://evil", AUD, 0, clock.clone());
        let other_aud = TokenService::new(keys, ISS, "other-api", 0, clock);
        let token = other_iss
            .issue(TokenType::Access, "u", "c", "s", 60)
            .unwrap()
            .token;
        assert_eq!(f.verify_access(&token).await, Err(TokenError::WrongIssuer));
        let token = other_aud
            .issue(TokenType::Access, "u", "c", "s", 60)
            .unwrap()
            .token;
        assert_eq!(
            f.verify_access(&token).await,
            Err(TokenError::WrongAudience)
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let f = fixture().await;
        let issued = f.token(TokenType::Access, "s", 60);
        let claims = issued.split('.').nth(1).unwrap();
        for header in [
            serde_json::json!({"alg": "none", "typ": "JWT"}),
            serde_json::json!({"alg": "None", "kid": f.service.keys().active_kid()}),
        ] {
            let unsigned = format!("{}.{claims}.", b64_json(&header));
            assert!(matches!(
                f.verify_access(&unsigned).await,
                Err(TokenError::UnsupportedAlgorithm(_))
            ));
        }
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        // The classic key-confusion attack: HMAC keyed with the (public) RSA key PEM.
        let f = fixture().await;
        let public_pem = f.store.list_signing_keys().await.unwrap()[0]
            .public_key_pem
            .clone();
        let claims = part(&f.token(TokenType::Access, "s", 60), 1);
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(f.service.keys().active_kid());
        let forged = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            f.verify_access(&forged).await,
            Err(TokenError::UnsupportedAlgorithm("HS256".into()))
        );
    }

    #[tokio::test]
    async fn tampered_claims_fail_the_signature() {
        let f = fixture().await;
        let issued = f.token(TokenType::Access, "api:read", 60);
        let mut claims = part(&issued, 1);
        claims["scope"] = "api:admin".into();
        let mut parts: Vec<String> = issued.split('.').map(str::to_owned).collect();
        parts[1] = b64_json(&claims);
        assert_eq!(
            f.service.verify(&parts.join("."), TokenType::Access).await,
            Err(TokenError::BadSignature)
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let f = fixture().await;
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.sig"] {
            let result = f.verify_access(token).await;
            assert!(
                matches!(result, Err(TokenError::Malformed(_))),
                "{token}: {result:?}"
            );
        }
    }

    /// Signs `header.claims` with the store's newest private key, as a foreign issuer would.
    async fn sign_raw(
        store: &Arc<dyn AuthStore>,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        let records = store.list_signing_keys().await.unwrap();
        let pem = pem::parse(&records.last().unwrap().private_key_pem).unwrap();
        let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(pem.contents()).unwrap();
        let input = format!("{}.{}", b64_json(header), b64_json(claims));
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    #[tokio::test]
    async fn token_without_kid_is_checked_against_the_active_key() {
        let f = fixture().await;
        let issued = f
            .service
            .issue(TokenType::Access, "u", "c", "s", 60)
            .unwrap();
        let claims = part(&issued.token, 1);
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        let token = sign_raw(&f.store, &header, &claims).await;
        assert_eq!(f.verify_access(&token).await.unwrap().jti, issued.jti);
    }

    #[tokio::test]
    async fn unknown_kid_triggers_one_rate_limited_reload() {
        let f = fixture().await;
        // Another replica (sharing the store) rotates and signs with its new key.
        let other_keys = Arc::new(manager(&f.store, &f.clock).await);
        let other = TokenService::new(
            Arc::clone(&other_keys),
            ISS,
            AUD,
            0,
            Arc::new(f.clock.clone()),
        );
        let rotate_other = || async {
            KeyManager::rotate(f.store.as_ref(), &f.clock, Duration::from_secs(3600))
                .await
                .unwrap();
            other_keys.reload().await.unwrap();
            other
                .issue(TokenType::Access, "u", "c", "s", 600)
                .unwrap()
                .token
        };

        let token = rotate_other().await;
        assert_ne!(other_keys.active_kid(), f.service.keys().active_kid());
        assert!(f.verify_access(&token).await.is_ok());
        // The reload also switched this replica's signing key.
        assert_eq!(f.service.keys().active_kid(), other_keys.active_kid());

        // Within 10 s of that reload, another unknown kid does not reach the store again...
        let token = rotate_other().await;
        f.clock.advance(Duration::from_secs(9));
        assert_eq!(f.verify_access(&token).await, Err(TokenError::UnknownKey));
        // ...after 10 s it does.
        f.clock.advance(Duration::from_secs(1));
        assert!(f.verify_access(&token).await.is_ok());
    }

    #[tokio::test]
    async fn after_rotation_new_tokens_carry_the_new_kid_and_old_tokens_still_verify() {
        let f = fixture().await;
        let old_kid = f.service.keys().active_kid();
        let old_token = f
            .service
            .issue(TokenType::Refresh, "u", "c", "s", 7200)
            .unwrap()
            .token;

        let new_kid =
            KeyManager::rotate(f.store.as_ref(), &f.clock, Duration::from_secs(7200 + 90))
                .await
                .unwrap();
        f.service.keys().reload().await.unwrap();
        let new_token = f
            .service
            .issue(TokenType::Refresh, "u", "c", "s", 7200)
            .unwrap()
            .token;
        assert_eq!(part(&new_token, 0)["kid"], new_kid);
        assert_eq!(part(&old_token, 0)["kid"], old_kid);

        f.clock.advance(Duration::from_secs(7199));
        assert!(
            f.service
                .verify(&old_token, TokenType::Refresh)
                .await
                .is_ok()
        );
        assert!(
            f.service
                .verify(&new_token, TokenType::Refresh)
                .await
                .is_ok()
        );
        let kids: Vec<_> = f.service.keys().jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [new_kid, old_kid]);
    }

    #[test]
    fn jti_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(jti_hash("abc"), sha256_hex(b"abc"));
        assert_eq!(jti_hash("x").len(), 64);
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_tokens_are_base64url_and_distinct() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a, random_token(32));
    }
}
