//! Console logins: sessions, kept in codelab-core's cache (Redis shared by the replicas when
//! configured, else this process's memory) so that a restart or another replica finds them,
//! and the logins in progress of the authorization-code flow (state, PKCE verifier, return
//! path), which the browser carries sealed in its login cookie so that they cost the server
//! nothing (docs/website.md, "Sessions").
//!
//! The browser holds a random id in a cookie signed with HMAC-SHA256 (`WEBSITE__SESSION_KEY`),
//! so it cannot be forged or guessed. The records hold the user's access and refresh tokens,
//! so whoever can read the cache must learn nothing from them: each record is sealed with
//! AES-256-GCM under a key derived from the session key (the record's name is the associated
//! data, so a record moved under another name does not open), and is named by an HMAC of the
//! id, never the id itself. A record that does not open is no session.
//!
//! The tokens stay here, on the server: a page never contains one. Each session has a CSRF
//! token that every form carries and every state-changing request must present.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{hkdf, hmac as lc_hmac};
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use codelab_core::cache::{Cache, CacheError};
use codelab_core::clock::SharedClock;
use codelab_core::config::Secret;
use codelab_core::http::cookie_value;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The session cookie.
pub const SESSION_COOKIE: &str = "codelab_console";
/// The cookie carrying a login in progress, sealed, in the browser that started it.
pub const LOGIN_COOKIE: &str = "codelab_login";
/// How long a started login may take (the auth service's form lives 10 minutes too).
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Longest path a login comes back to: with it, a sealed login cookie stays under
/// [`MAX_LOGIN_COOKIE_CHARS`] (browsers keep cookies up to 4096 bytes).
pub const MAX_RETURN_TO_CHARS: usize = 1024;
/// Longest login cookie written or opened (a login returning to a path of
/// [`MAX_RETURN_TO_CHARS`] seals to about 1,650).
pub const MAX_LOGIN_COOKIE_CHARS: usize = 2048;
/// The associated data a login cookie is sealed under: no cache record is named so, so a
/// record does not open as a login cookie, nor a login cookie as a record.
const LOGIN_SEAL_NAME: &str = "cookie:codelab_login";
/// Largest sealed record read or written (characters of its stored form). A session's record
/// is well under 4 KiB (two tokens, a name and a scope); anything bigger is refused.
pub const MAX_RECORD_CHARS: usize = 16 * 1024;
/// Longest session or login cookie looked at (an id and its signature are under 100).
const MAX_COOKIE_CHARS: usize = 256;
/// How often a request waiting for another one's token refresh looks again.
const REFRESH_LOCK_POLL: Duration = Duration::from_millis(25);
/// How much longer than its lifetime a record stays in the cache (see `SessionStore::write`).
const RECORD_TTL_SLACK: Duration = Duration::from_secs(1);
/// How long a flash message waits for the page that shows it.
const FLASH_TTL: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// Why a session could not be stored or its tokens not be locked.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The cache refused the command (Redis answered an error; an unreachable Redis is not
    /// an error: the cache goes on in memory).
    #[error("the session cache failed: {0}")]
    Cache(#[from] CacheError),
    /// A record would exceed [`MAX_RECORD_CHARS`] (the auth service's answer is too big), or
    /// a login cookie [`MAX_LOGIN_COOKIE_CHARS`].
    #[error("a sealed session value would be {0} characters, more than allowed")]
    TooLarge(usize),
    /// A record could not be sealed or the keys derived (aws-lc refused).
    #[error("cannot seal a session record: {0}")]
    Crypto(&'static str),
    /// Another request kept the session's refresh lock longer than the wait allows.
    #[error("another request is refreshing this login's tokens; try again")]
    RefreshBusy,
    /// The session ended (signed out elsewhere, expired) while this request used it.
    #[error("the session has ended")]
    Ended,
    /// A login's return path is longer than [`MAX_RETURN_TO_CHARS`].
    #[error("a sign-in's return path has {0} characters, more than {MAX_RETURN_TO_CHARS}")]
    ReturnPathTooLong(usize),
}

/// Who is signed in, as the auth service said at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The token's `sub`.
    pub user_id: String,
    /// The username.
    pub username: String,
    /// The granted scope (space-separated).
    pub scope: String,
}

impl UserInfo {
    /// Whether the token carries `api:admin` (granted only to users created with `--admin`).
    pub fn is_admin(&self) -> bool {
        self.scope.split_whitespace().any(|s| s == "api:admin")
    }
}

/// The user's tokens; replaced on every refresh.
#[derive(Clone)]
pub struct Tokens {
    /// The access token (sent to the gateway and the auth service, never to a page).
    pub access: Secret,
    /// The refresh token, if the auth service issued one.
    pub refresh: Option<Secret>,
    /// When the access token expires.
    pub access_expires_at: SystemTime,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_expires_at", &self.access_expires_at)
            .finish_non_exhaustive()
    }
}

/// A message for the next page a session sees (after a form's redirect): kept on the server,
/// so no address can make a page show a text of someone else's choosing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flash {
    /// Something worked.
    Notice(String),
    /// Something was refused; the text says why.
    Error(String),
}

/// One signed-in browser, as this request found it.
#[derive(Debug)]
pub struct ConsoleSession {
    /// The HMAC of the id that names the session's records (never the id: it is the cookie).
    handle: String,
    /// The CSRF token its forms carry.
    pub csrf: String,
    /// Who is signed in.
    pub user: UserInfo,
    tokens: Mutex<Tokens>,
    created_at: SystemTime,
    flash: Mutex<Option<Flash>>,
}

impl ConsoleSession {
    /// The tokens as last read or refreshed by this request.
    pub fn tokens(&self) -> Tokens {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The message left for this page, once (it was taken from the cache when the session was
    /// looked up).
    pub fn take_flash(&self) -> Option<Flash> {
        self.flash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        let expected = self.csrf.as_bytes();
        presented.len() == expected.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                presented.as_bytes(),
                expected,
            ))
    }

    fn record(&self, tokens: &Tokens) -> SessionRecord {
        SessionRecord {
            csrf: self.csrf.clone(),
            user: self.user.clone(),
            access: tokens.access.expose().to_owned(),
            refresh: tokens.refresh.as_ref().map(|r| r.expose().to_owned()),
            access_expires_at: millis(tokens.access_expires_at),
            created_at: millis(self.created_at),
        }
    }
}

/// A login in progress, as sealed in its cookie.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The OAuth `state` its callback must come back with.
    state: String,
    /// The PKCE verifier (RFC 7636).
    pub verifier: String,
    /// Where to go after signing in (a path on this site).
    pub return_to: String,
    /// When it started (milliseconds since the epoch, by the website's clock).
    started_at: u64,
}

/// Shows neither the `state` nor the verifier: with the code they redeem the login.
impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("return_to", &self.return_to)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

/// A session as stored (sealed) in the cache.
#[derive(Serialize, Deserialize)]
struct SessionRecord {
    csrf: String,
    user: UserInfo,
    access: String,
    refresh: Option<String>,
    /// Milliseconds since the epoch.
    access_expires_at: u64,
    /// Milliseconds since the epoch.
    created_at: u64,
}

impl SessionRecord {
    fn tokens(&self) -> Tokens {
        Tokens {
            access: Secret::new(self.access.clone()),
            refresh: self.refresh.clone().map(Secret::new),
            access_expires_at: from_millis(self.access_expires_at),
        }
    }
}

/// The session's refresh lock, held by this request until [`SessionStore::unlock`] (or until
/// it expires, should the request die holding it).
#[derive(Debug)]
pub struct TokenLock {
    name: String,
    owner: String,
    /// The session's tokens as stored when the lock was taken: another replica's refresh
    /// that finished meanwhile is in them.
    pub latest: Tokens,
}

/// The keys derived from `WEBSITE__SESSION_KEY` for the records (HKDF-SHA256, one per use).
struct RecordKeys {
    sealing: RandomizedNonceKey,
    naming: lc_hmac::Key,
}

impl RecordKeys {
    fn derive(secret: &Secret) -> Result<Self, SessionError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"codelab-website session records v1")
            .extract(secret.expose().as_bytes());
        let mut sealing = [0u8; 32];
        prk.expand(&[b"sealing"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut sealing))
            .map_err(|_| SessionError::Crypto("cannot derive the sealing key"))?;
        let naming = prk
            .expand(&[b"naming"], lc_hmac::HMAC_SHA256)
            .map(lc_hmac::Key::from)
            .map_err(|_| SessionError::Crypto("cannot derive the naming key"))?;
        let sealing = RandomizedNonceKey::new(&AES_256_GCM, &sealing)
            .map_err(|_| SessionError::Crypto("the AES-256-GCM key was refused"))?;
        Ok(Self { sealing, naming })
    }

    /// The hex HMAC of `value` for `purpose`: the name part of its records.
    fn handle(&self, purpose: &str, value: &str) -> String {
        let mut context = lc_hmac::Context::with_key(&self.naming);
        context.update(purpose.as_bytes());
        context.update(b"\0");
        context.update(value.as_bytes());
        hex(context.sign().as_ref())
    }

    /// `value` as JSON, sealed under `name`: base64url of nonce, ciphertext and tag.
    fn seal(&self, name: &str, value: &impl Serialize) -> Result<String, SessionError> {
        let mut buffer =
            serde_json::to_vec(value).map_err(|_| SessionError::Crypto("unserializable"))?;
        let nonce = self
            .sealing
            .seal_in_place_append_tag(Aad::from(name.as_bytes()), &mut buffer)
            .map_err(|_| SessionError::Crypto("AES-256-GCM encryption failed"))?;
        let mut sealed = nonce.as_ref().to_vec();
        sealed.extend_from_slice(&buffer);
        let text = URL_SAFE_NO_PAD.encode(sealed);
        if text.len() > MAX_RECORD_CHARS {
            return Err(SessionError::TooLarge(text.len()));
        }
        Ok(text)
    }

    /// The value sealed under `name`, if `text` opens (right key, right name, untouched) and
    /// parses.
    fn open<T: DeserializeOwned>(&self, name: &str, text: &str) -> Option<T> {
        if text.len() > MAX_RECORD_CHARS {
            return None;
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
        let plaintext = self
            .sealing
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut ciphertext)
            .ok()?;
        serde_json::from_slice(plaintext).ok()
    }
}

/// Sessions and logins in progress.
pub struct SessionStore {
    cookie_key: Secret,
    keys: RecordKeys,
    cache: Cache,
    clock: SharedClock,
    idle_timeout: Duration,
    max_age: Duration,
    secure: bool,
    refresh_lock_ttl: Duration,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_age", &self.max_age)
            .field("secure", &self.secure)
            .field("shared", &self.cache.is_redis())
            .finish_non_exhaustive()
    }
}

/// How long sessions live and how refreshes wait for each other.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after its login, used or not.
    pub max_age: Duration,
    /// How long one request may hold a session's refresh lock (longer than a call to the auth
    /// service may take, so a live holder never loses it); a request waits for it at most this
    /// long plus a second.
    pub refresh_lock_ttl: Duration,
    /// Whether cookies are `Secure` (a TLS site).
    pub secure: bool,
}

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time from `since` to `now` in whole milliseconds, as the records store times.
fn elapsed_millis(since: SystemTime, now: SystemTime) -> Duration {
    Duration::from_millis(millis(now).saturating_sub(millis(since)))
}

fn from_millis(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

/// Cache key names (the cache adds its own prefix).
fn session_name(handle: &str) -> String {
    format!("session:{handle}")
}
fn seen_name(handle: &str) -> String {
    format!("seen:{handle}")
}
fn flash_name(handle: &str) -> String {
    format!("flash:{handle}")
}
fn lock_name(handle: &str) -> String {
    format!("refresh-lock:{handle}")
}

impl SessionStore {
    /// A store keeping records in `cache`, signing cookies and sealing records with keys from
    /// `key`.
    pub fn new(
        key: Secret,
        cache: Cache,
        clock: SharedClock,
        limits: SessionLimits,
    ) -> Result<Self, SessionError> {
        Ok(Self {
            keys: RecordKeys::derive(&key)?,
            cookie_key: key,
            cache,
            clock,
            idle_timeout: limits.idle_timeout,
            max_age: limits.max_age,
            secure: limits.secure,
            refresh_lock_ttl: limits.refresh_lock_ttl,
        })
    }

    /// The cache the records live in (for `/ready` and the tests).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn mac(&self, purpose: &str, value: &str) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(self.cookie_key.expose().as_bytes()).ok()?;
        mac.update(purpose.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        Some(mac)
    }

    /// `value.signature` for a cookie.
    fn sign(&self, purpose: &str, value: &str) -> String {
        let signature = self
            .mac(purpose, value)
            .map(|mac| URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
            .unwrap_or_default();
        format!("{value}.{signature}")
    }

    /// The value of a signed cookie when its signature is right (constant-time check).
    fn verify<'a>(&self, purpose: &str, cookie: &'a str) -> Option<&'a str> {
        if cookie.len() > MAX_COOKIE_CHARS {
            return None;
        }
        let (value, signature) = cookie.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        self.mac(purpose, value)?.verify_slice(&signature).ok()?;
        Some(value)
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: Option<Duration>) -> String {
        let max_age = max_age.map_or_else(String::new, |d| format!("; Max-Age={}", d.as_secs()));
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path={path}{max_age}; HttpOnly; SameSite=Lax{secure}")
    }

    /// A `Set-Cookie` that removes cookie `name`.
    pub fn clear_cookie(&self, name: &str, path: &str) -> HeaderValue {
        let value = self.cookie(name, "", path, Some(Duration::ZERO));
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Reads and opens the record `name`; a missing, oversized, tampered or foreign one is
    /// `None`, and so is a cache error (logged): the user signs in again.
    async fn read<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let text = match self.cache.get(name).await {
            Ok(text) => text?,
            Err(error) => {
                tracing::warn!(%error, "cannot read a console session record");
                return None;
            }
        };
        let value = self.keys.open(name, &text);
        if value.is_none() {
            // The name is an HMAC, but it still identifies a login across log lines: not logged.
            tracing::warn!(
                "a console session record does not open (altered, or sealed under another \
                 WEBSITE__SESSION_KEY): treated as signed out"
            );
        }
        value
    }

    /// Seals `value` into the record `name`, kept `ttl` and a second: the timestamps inside
    /// decide when a session ends (by the website's clock); the cache's expiry only clears
    /// what nobody will read again, so it must not fire at the very moment they still allow.
    async fn write(
        &self,
        name: &str,
        value: &impl Serialize,
        ttl: Duration,
    ) -> Result<(), SessionError> {
        let sealed = self.keys.seal(name, value)?;
        self.cache
            .set_ex(name, &sealed, ttl + RECORD_TTL_SLACK)
            .await?;
        Ok(())
    }

    /// Starts a login: returns the OAuth `state`, the PKCE verifier's challenge and the
    /// `Set-Cookie` value carrying the login, sealed, to this browser. Nothing is stored: a
    /// flood of started logins costs only the computation.
    pub fn start_login(
        &self,
        return_to: &str,
    ) -> Result<(String, String, HeaderValue), SessionError> {
        if return_to.len() > MAX_RETURN_TO_CHARS {
            return Err(SessionError::ReturnPathTooLong(return_to.len()));
        }
        let state = random_token(24);
        let verifier = random_token(48);
        let challenge = pkce_challenge(&verifier);
        let login = PendingLogin {
            state: state.clone(),
            verifier,
            return_to: return_to.to_owned(),
            started_at: millis(self.clock.now()),
        };
        let sealed = self.keys.seal(LOGIN_SEAL_NAME, &login)?;
        if sealed.len() > MAX_LOGIN_COOKIE_CHARS {
            return Err(SessionError::TooLarge(sealed.len()));
        }
        let cookie = self.cookie(LOGIN_COOKIE, &sealed, "/console", Some(LOGIN_TTL));
        let cookie =
            HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""));
        Ok((state, challenge, cookie))
    }

    /// The login `state` came back with, if this browser's login cookie opens (sealed by us,
    /// as a login cookie, untouched), names the same state (constant-time) and is not older
    /// than [`LOGIN_TTL`] by the website's clock. The callback clears the cookie; a replayed
    /// callback still opens it, but its authorization code is single-use at the auth service.
    pub fn finish_login(&self, headers: &HeaderMap, state: &str) -> Option<PendingLogin> {
        let cookie = cookie_value(headers, LOGIN_COOKIE)?;
        if cookie.len() > MAX_LOGIN_COOKIE_CHARS {
            return None;
        }
        let login: PendingLogin = self.keys.open(LOGIN_SEAL_NAME, cookie)?;
        let same = login.state.len() == state.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                login.state.as_bytes(),
                state.as_bytes(),
            ));
        let age = elapsed_millis(from_millis(login.started_at), self.clock.now());
        (same && age <= LOGIN_TTL).then_some(login)
    }

    /// Creates a session; returns it and its `Set-Cookie` value.
    pub async fn create(
        &self,
        user: UserInfo,
        tokens: Tokens,
    ) -> Result<(Arc<ConsoleSession>, HeaderValue), SessionError> {
        let id = random_token(32);
        let now = self.clock.now();
        let session = Arc::new(ConsoleSession {
            handle: self.keys.handle("session", &id),
            csrf: random_token(32),
            user,
            tokens: Mutex::new(tokens.clone()),
            created_at: now,
            flash: Mutex::new(None),
        });
        self.write(
            &session_name(&session.handle),
            &session.record(&tokens),
            self.max_age,
        )
        .await?;
        self.write(&seen_name(&session.handle), &millis(now), self.idle_timeout)
            .await?;
        let cookie = self.cookie(
            SESSION_COOKIE,
            &self.sign("session", &id),
            "/",
            Some(self.max_age),
        );
        let cookie =
            HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""));
        Ok((session, cookie))
    }

    /// The time left before the session's maximum age, if any.
    fn life_left(&self, created_at: SystemTime, now: SystemTime) -> Option<Duration> {
        self.max_age.checked_sub(elapsed_millis(created_at, now))
    }

    /// The session of the request's cookie, if it is signed by us, its records open and it
    /// is neither idle nor too old. Marks it used, and takes the flash message left for it.
    pub async fn lookup(&self, headers: &HeaderMap) -> Option<Arc<ConsoleSession>> {
        let cookie = cookie_value(headers, SESSION_COOKIE)?;
        let id = self.verify("session", cookie)?;
        let handle = self.keys.handle("session", id);
        let record: SessionRecord = self.read(&session_name(&handle)).await?;
        let now = self.clock.now();
        let created_at = from_millis(record.created_at);
        let last_seen = self.read::<u64>(&seen_name(&handle)).await.map(from_millis);
        let idle = last_seen.is_none_or(|seen| elapsed_millis(seen, now) > self.idle_timeout);
        if idle || self.life_left(created_at, now).is_none() {
            self.forget(&handle).await;
            return None;
        }
        if let Err(error) = self
            .write(&seen_name(&handle), &millis(now), self.idle_timeout)
            .await
        {
            tracing::warn!(%error, "cannot mark a console session used");
        }
        let flash = self.take_stored_flash(&handle).await;
        Some(Arc::new(ConsoleSession {
            tokens: Mutex::new(record.tokens()),
            handle,
            csrf: record.csrf,
            user: record.user,
            created_at,
            flash: Mutex::new(flash),
        }))
    }

    async fn take_stored_flash(&self, handle: &str) -> Option<Flash> {
        let name = flash_name(handle);
        let flash = self.read(&name).await?;
        if let Err(error) = self.cache.del(&name).await {
            tracing::warn!(%error, "cannot delete a shown flash message");
        }
        Some(flash)
    }

    /// Leaves `flash` for the next page the session sees (on whichever replica).
    pub async fn set_flash(&self, session: &ConsoleSession, flash: &Flash) {
        if let Err(error) = self
            .write(&flash_name(&session.handle), flash, FLASH_TTL)
            .await
        {
            tracing::warn!(%error, "cannot keep a flash message");
        }
    }

    /// Forgets a session (logout, or its refresh token was refused).
    pub async fn remove(&self, session: &ConsoleSession) {
        self.forget(&session.handle).await;
    }

    async fn forget(&self, handle: &str) {
        for name in [session_name(handle), seen_name(handle), flash_name(handle)] {
            if let Err(error) = self.cache.del(&name).await {
                tracing::warn!(%error, "cannot delete a console session record");
            }
        }
    }

    /// Takes the session's refresh lock, shared by every replica: the auth service revokes
    /// a whole login when one of its rotated refresh tokens is used twice, so only one
    /// request at a time may spend the refresh token. Waits (bounded) while another holds it;
    /// the answer carries the tokens as stored once the lock is ours, which include the
    /// refresh another request just made.
    pub async fn lock_tokens(&self, session: &ConsoleSession) -> Result<TokenLock, SessionError> {
        let name = lock_name(&session.handle);
        let owner = random_token(16);
        let deadline = tokio::time::Instant::now() + self.refresh_lock_ttl + Duration::from_secs(1);
        loop {
            if self
                .cache
                .set_nx_ex(&name, &owner, self.refresh_lock_ttl)
                .await?
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SessionError::RefreshBusy);
            }
            tokio::time::sleep(REFRESH_LOCK_POLL).await;
        }
        let lock = TokenLock {
            name,
            owner,
            latest: Tokens {
                access: Secret::default(),
                refresh: None,
                access_expires_at: SystemTime::UNIX_EPOCH,
            },
        };
        let Some(record) = self
            .read::<SessionRecord>(&session_name(&session.handle))
            .await
        else {
            self.unlock(lock).await;
            return Err(SessionError::Ended);
        };
        let latest = record.tokens();
        *session
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = latest.clone();
        Ok(TokenLock { latest, ..lock })
    }

    /// Stores the session's new `tokens` (under its lock).
    pub async fn save_tokens(
        &self,
        _lock: &TokenLock,
        session: &ConsoleSession,
        tokens: Tokens,
    ) -> Result<(), SessionError> {
        let life_left = self
            .life_left(session.created_at, self.clock.now())
            .ok_or(SessionError::Ended)?;
        self.write(
            &session_name(&session.handle),
            &session.record(&tokens),
            life_left,
        )
        .await?;
        *session
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tokens;
        Ok(())
    }

    /// Releases the refresh lock. The lock is deleted only while it still names this request:
    /// it cannot have expired under a live holder (its TTL exceeds a call to the auth service),
    /// so the read-then-delete race only matters for a holder that outlived its TTL.
    pub async fn unlock(&self, lock: TokenLock) {
        match self.cache.get(&lock.name).await {
            Ok(Some(owner)) if owner == lock.owner => {
                if let Err(error) = self.cache.del(&lock.name).await {
                    tracing::warn!(%error, "cannot release a console session's refresh lock");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot release a console session's refresh lock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header;
    use codelab_core::clock::ManualClock;

    use super::*;

    const KEY: &str = "a-test-key-of-enough-length";

    /// A store sealing with `key` in `cache`: a minute's idle timeout, ten minutes' maximum
    /// age, TLS.
    fn store_in(cache: &Cache, clock: &ManualClock, key: &str) -> SessionStore {
        SessionStore::new(
            Secret::new(key),
            cache.clone(),
            Arc::new(clock.clone()),
            SessionLimits {
                idle_timeout: Duration::from_secs(60),
                max_age: Duration::from_secs(600),
                refresh_lock_ttl: Duration::from_millis(200),
                secure: true,
            },
        )
        .unwrap()
    }

    fn store(clock: &ManualClock, key: &str) -> SessionStore {
        store_in(
            &Cache::memory_with_clock(Arc::new(clock.clone())),
            clock,
            key,
        )
    }

    fn headers_with(cookie: &HeaderValue) -> HeaderMap {
        let pair = cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        headers
    }

    fn user() -> UserInfo {
        UserInfo {
            user_id: "u1".into(),
            username: "alice".into(),
            scope: "api:read api:write".into(),
        }
    }

    fn tokens() -> Tokens {
        Tokens {
            access: Secret::new("the-access-token"),
            refresh: Some(Secret::new("the-refresh-token")),
            access_expires_at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn session_cookies_are_signed_httponly_lax_and_secure_on_tls() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (session, cookie) = store.create(user(), tokens()).await.unwrap();
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Lax"));
        assert!(text.contains("Secure") && text.contains("Path=/"));
        let found = store.lookup(&headers_with(&cookie)).await.unwrap();
        assert_eq!(found.csrf, session.csrf);
        assert_eq!(found.tokens().access.expose(), "the-access-token");

        // The bare id, a forged signature: no session.
        let id = text
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .rsplit_once('.')
            .unwrap()
            .0;
        let forged = HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}.AAAA")).unwrap();
        assert!(store.lookup(&headers_with(&forged)).await.is_none());
        let bare = HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}")).unwrap();
        assert!(store.lookup(&headers_with(&bare)).await.is_none());
        assert!(!user().is_admin());
    }

    #[tokio::test]
    async fn records_are_sealed_named_by_hmac_and_open_only_under_their_key_and_name() {
        let clock = ManualClock::starting_now();
        let cache = Cache::memory_with_clock(Arc::new(clock.clone()));
        let store = store_in(&cache, &clock, KEY);
        let (session, cookie) = store.create(user(), tokens()).await.unwrap();
        let name = session_name(&session.handle);
        let sealed = cache.get(&name).await.unwrap().unwrap();
        for secret in [
            "the-access-token",
            "the-refresh-token",
            "alice",
            &session.csrf,
        ] {
            assert!(!sealed.contains(secret), "{secret} readable in the record");
        }
        let id = cookie.to_str().unwrap().split(['=', '.']).nth(1).unwrap();
        assert!(!name.contains(id), "the record is named by the id");

        // Another key (a replica configured differently): the record does not open.
        let other = store_in(&cache, &clock, "another-key-of-enough-length");
        assert!(other.lookup(&headers_with(&cookie)).await.is_none());

        // One flipped character: signed out.
        let mut bytes = sealed.clone().into_bytes();
        let at = bytes.len() / 2;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        cache
            .set_ex(&name, &altered, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.lookup(&headers_with(&cookie)).await.is_none());

        // Another session's genuine record moved under this name: does not open here.
        let (second, _) = store.create(user(), tokens()).await.unwrap();
        let (third, third_cookie) = store.create(user(), tokens()).await.unwrap();
        let moved = cache
            .get(&session_name(&second.handle))
            .await
            .unwrap()
            .unwrap();
        cache
            .set_ex(
                &session_name(&third.handle),
                &moved,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(store.lookup(&headers_with(&third_cookie)).await.is_none());

        // Oversized values are neither read nor written.
        let huge = "A".repeat(MAX_RECORD_CHARS + 1);
        assert!(store.keys.open::<u64>(&name, &huge).is_none());
        let big_user = UserInfo {
            username: "x".repeat(MAX_RECORD_CHARS),
            ..user()
        };
        assert!(matches!(
            store.create(big_user, tokens()).await,
            Err(SessionError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn sessions_end_when_idle_or_too_old() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (_, cookie) = store.create(user(), tokens()).await.unwrap();
        let headers = headers_with(&cookie);
        for round in 0..12 {
            clock.advance(Duration::from_secs(50));
            assert!(store.lookup(&headers).await.is_some(), "round {round}");
        }
        clock.advance(Duration::from_secs(50));
        assert!(
            store.lookup(&headers).await.is_none(),
            "older than the max age"
        );
        let (_, cookie) = store.create(user(), tokens()).await.unwrap();
        clock.advance(Duration::from_secs(61));
        assert!(store.lookup(&headers_with(&cookie)).await.is_none(), "idle");
    }

    #[tokio::test]
    async fn a_flash_is_shown_once() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (session, cookie) = store.create(user(), tokens()).await.unwrap();
        store
            .set_flash(&session, &Flash::Notice("done".into()))
            .await;
        let headers = headers_with(&cookie);
        let seen = store.lookup(&headers).await.unwrap();
        assert_eq!(seen.take_flash(), Some(Flash::Notice("done".into())));
        assert!(store.lookup(&headers).await.unwrap().take_flash().is_none());
    }

    fn login_headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let cookie = format!("{LOGIN_COOKIE}={value}");
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        headers
    }

    fn cookie_pair_value(cookie: &HeaderValue) -> String {
        let pair = cookie.to_str().unwrap().split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_owned()
    }

    #[tokio::test]
    async fn a_login_cookie_is_sealed_and_finishes_only_its_own_login_in_time() {
        let clock = ManualClock::starting_now();
        let cache = Cache::memory_with_clock(Arc::new(clock.clone()));
        let store = store_in(&cache, &clock, KEY);
        let (state, challenge, cookie) = store.start_login("/console/sessions").unwrap();
        let text = cookie.to_str().unwrap();
        assert!(text.starts_with(&format!("{LOGIN_COOKIE}=")));
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Lax"));
        assert!(text.contains("Secure") && text.contains("Path=/console;"));
        assert!(text.contains(&format!("Max-Age={}", LOGIN_TTL.as_secs())));
        let value = cookie_pair_value(&cookie);
        assert!(value.len() <= MAX_LOGIN_COOKIE_CHARS);
        for secret in [state.as_str(), "/console/sessions"] {
            assert!(!value.contains(secret), "{secret} readable in the cookie");
        }
        assert_eq!(cache.memory_entries(), 0, "a started login stores nothing");

        let headers = headers_with(&cookie);
        assert!(store.finish_login(&HeaderMap::new(), &state).is_none());
        assert!(store.finish_login(&headers, "another-state").is_none());
        assert!(store.finish_login(&headers, &state[1..]).is_none());
        let login = store.finish_login(&headers, &state).unwrap();
        assert_eq!(pkce_challenge(&login.verifier), challenge);
        assert_eq!(login.return_to, "/console/sessions");

        // Another login's state: refused (the cookie belongs to the login it was made for).
        let (other_state, _, _) = store.start_login("/").unwrap();
        assert!(store.finish_login(&headers, &other_state).is_none());

        // One altered character, anywhere: refused.
        for at in [0, value.len() / 2, value.len() - 1] {
            let mut bytes = value.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            assert!(
                store
                    .finish_login(&login_headers(&altered), &state)
                    .is_none()
            );
        }
        // Sealed under another key (another deployment): refused.
        let other = store_in(&cache, &clock, "another-key-of-enough-length");
        assert!(other.finish_login(&headers, &state).is_none());
        // Oversized: not opened.
        let huge = "A".repeat(MAX_LOGIN_COOKIE_CHARS + 1);
        assert!(store.finish_login(&login_headers(&huge), &state).is_none());

        // Other purposes: a session cookie, or a sealed session record, in the login cookie
        // does not open; nor does the login cookie as a session record.
        let (session, session_cookie) = store.create(user(), tokens()).await.unwrap();
        let record_name = session_name(&session.handle);
        let record = cache.get(&record_name).await.unwrap().unwrap();
        for foreign in [cookie_pair_value(&session_cookie), record] {
            assert!(
                store
                    .finish_login(&login_headers(&foreign), &state)
                    .is_none()
            );
        }
        assert!(
            store
                .keys
                .open::<SessionRecord>(&record_name, &value)
                .is_none()
        );
        assert!(
            store
                .keys
                .open::<PendingLogin>(&record_name, &value)
                .is_none()
        );

        // The age is checked on the website's clock: at LOGIN_TTL it works, a second later not.
        let (state, _, cookie) = store.start_login("/").unwrap();
        clock.advance(LOGIN_TTL);
        assert!(store.finish_login(&headers_with(&cookie), &state).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(store.finish_login(&headers_with(&cookie), &state).is_none());

        // A return path too long for a cookie is refused (the handler never passes one).
        let long = format!("/{}", "a".repeat(MAX_RETURN_TO_CHARS));
        assert!(matches!(
            store.start_login(&long),
            Err(SessionError::ReturnPathTooLong(_))
        ));
        let longest = format!("/{}", "a".repeat(MAX_RETURN_TO_CHARS - 1));
        let (_, _, cookie) = store.start_login(&longest).unwrap();
        assert!(cookie_pair_value(&cookie).len() <= MAX_LOGIN_COOKIE_CHARS);
    }

    /// Starting logins is pure computation: a flood stores nothing, so it cannot crowd out a
    /// real user's login (it used to fill a global cap and lock everyone out).
    #[tokio::test]
    async fn a_flood_of_started_logins_stores_nothing_and_a_real_login_still_finishes() {
        let clock = ManualClock::starting_now();
        let cache = Cache::memory_with_clock(Arc::new(clock.clone()));
        let store = store_in(&cache, &clock, KEY);
        for _ in 0..20_000 {
            store.start_login("/").unwrap();
        }
        assert_eq!(cache.memory_entries(), 0);
        let (state, _, cookie) = store.start_login("/console/status").unwrap();
        let login = store.finish_login(&headers_with(&cookie), &state).unwrap();
        assert_eq!(login.return_to, "/console/status");
    }

    #[tokio::test]
    async fn the_refresh_lock_is_held_by_one_request_at_a_time() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (session, cookie) = store.create(user(), tokens()).await.unwrap();
        let first = store.lock_tokens(&session).await.unwrap();
        let other = store.lookup(&headers_with(&cookie)).await.unwrap();
        // The second waits (bounded) and then gives up while the first holds it.
        let started = std::time::Instant::now();
        assert!(matches!(
            store.lock_tokens(&other).await,
            Err(SessionError::RefreshBusy)
        ));
        assert!(started.elapsed() >= Duration::from_secs(1));
        let rotated = Tokens {
            access: Secret::new("new-access"),
            refresh: Some(Secret::new("new-refresh")),
            access_expires_at: SystemTime::now() + Duration::from_secs(300),
        };
        store.save_tokens(&first, &session, rotated).await.unwrap();
        store.unlock(first).await;
        let second = store.lock_tokens(&other).await.unwrap();
        assert_eq!(second.latest.access.expose(), "new-access");
        assert_eq!(other.tokens().refresh.unwrap().expose(), "new-refresh");
        store.unlock(second).await;
    }
}
