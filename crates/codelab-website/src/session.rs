//! Console logins: an in-memory store of sessions keyed by a random id, carried in a cookie
//! signed with HMAC-SHA256 (`WEBSITE__SESSION_KEY`) so it cannot be forged or guessed, and
//! the pending logins of the authorization-code flow (state and PKCE verifier).
//!
//! The user's tokens stay here, on the server: a page never contains one. Each session has a
//! CSRF token that every form carries and every state-changing request must present.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use codelab_core::clock::SharedClock;
use codelab_core::config::Secret;
use codelab_core::http::cookie_value;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The session cookie.
pub const SESSION_COOKIE: &str = "codelab_console";
/// The cookie binding a login in progress to the browser that started it.
pub const LOGIN_COOKIE: &str = "codelab_login";
/// How long a started login may take (the auth service's form lives 10 minutes too).
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Most logins in progress kept at once; the oldest are dropped beyond it (anyone can start
/// one, so the map must not grow without bound).
const MAX_PENDING_LOGINS: usize = 10_000;

type HmacSha256 = Hmac<Sha256>;

/// Who is signed in, as the auth service said at login.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// Something worked.
    Notice(String),
    /// Something was refused; the text says why.
    Error(String),
}

/// One signed-in browser.
#[derive(Debug)]
pub struct ConsoleSession {
    /// The random id in the cookie.
    pub id: String,
    /// The CSRF token its forms carry.
    pub csrf: String,
    /// Who is signed in.
    pub user: UserInfo,
    /// The tokens, behind an async lock so one refresh runs at a time (the auth service
    /// rotates refresh tokens and revokes the whole login when one is used twice).
    pub tokens: tokio::sync::Mutex<Tokens>,
    created_at: SystemTime,
    last_seen: Mutex<SystemTime>,
    flash: Mutex<Option<Flash>>,
}

impl ConsoleSession {
    /// Leaves `flash` for the next page.
    pub fn set_flash(&self, flash: Flash) {
        *self.flash.lock().unwrap_or_else(PoisonError::into_inner) = Some(flash);
    }

    /// The message left for this page, once.
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
}

/// A login in progress.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// The PKCE verifier (RFC 7636).
    pub verifier: String,
    /// Where to go after signing in (a path on this site).
    pub return_to: String,
    started_at: SystemTime,
}

/// Sessions and logins in progress.
pub struct SessionStore {
    key: Secret,
    clock: SharedClock,
    idle_timeout: Duration,
    max_age: Duration,
    secure: bool,
    sessions: Mutex<HashMap<String, Arc<ConsoleSession>>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_age", &self.max_age)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
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

impl SessionStore {
    /// A store signing cookies with `key`; `secure` marks cookies `Secure` (TLS sites).
    pub fn new(
        key: Secret,
        clock: SharedClock,
        idle_timeout: Duration,
        max_age: Duration,
        secure: bool,
    ) -> Self {
        Self {
            key,
            clock,
            idle_timeout,
            max_age,
            secure,
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, purpose: &str, value: &str) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(self.key.expose().as_bytes()).ok()?;
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

    /// Starts a login: returns the OAuth `state`, the PKCE verifier's challenge and the
    /// `Set-Cookie` value binding the login to this browser.
    pub fn start_login(&self, return_to: &str) -> (String, String, HeaderValue) {
        let state = random_token(24);
        let verifier = random_token(48);
        let challenge = pkce_challenge(&verifier);
        let now = self.clock.now();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.retain(|_, login| !expired(now, login.started_at, LOGIN_TTL));
            if pending.len() >= MAX_PENDING_LOGINS {
                let oldest = pending
                    .iter()
                    .min_by_key(|(_, login)| login.started_at)
                    .map(|(state, _)| state.clone());
                if let Some(oldest) = oldest {
                    pending.remove(&oldest);
                }
            }
            pending.insert(
                state.clone(),
                PendingLogin {
                    verifier,
                    return_to: return_to.to_owned(),
                    started_at: now,
                },
            );
        }
        let cookie = self.cookie(
            LOGIN_COOKIE,
            &self.sign("login", &state),
            "/console",
            Some(LOGIN_TTL),
        );
        let cookie =
            HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""));
        (state, challenge, cookie)
    }

    /// Ends the login `state` came back with, if this browser started it (its login cookie
    /// names the same state) and it has not expired; a login is used once.
    pub fn finish_login(&self, headers: &HeaderMap, state: &str) -> Option<PendingLogin> {
        let cookie = cookie_value(headers, LOGIN_COOKIE)?;
        let bound = self.verify("login", cookie)?;
        let same = bound.len() == state.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                bound.as_bytes(),
                state.as_bytes(),
            ));
        if !same {
            return None;
        }
        let login = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(state)?;
        (!expired(self.clock.now(), login.started_at, LOGIN_TTL)).then_some(login)
    }

    /// Creates a session; returns it and its `Set-Cookie` value.
    pub fn create(&self, user: UserInfo, tokens: Tokens) -> (Arc<ConsoleSession>, HeaderValue) {
        let now = self.clock.now();
        let session = Arc::new(ConsoleSession {
            id: random_token(32),
            csrf: random_token(32),
            user,
            tokens: tokio::sync::Mutex::new(tokens),
            created_at: now,
            last_seen: Mutex::new(now),
            flash: Mutex::new(None),
        });
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            sessions.retain(|_, s| !self.is_expired(s, now));
            sessions.insert(session.id.clone(), Arc::clone(&session));
        }
        let cookie = self.cookie(
            SESSION_COOKIE,
            &self.sign("session", &session.id),
            "/",
            Some(self.max_age),
        );
        let cookie =
            HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""));
        (session, cookie)
    }

    fn is_expired(&self, session: &ConsoleSession, now: SystemTime) -> bool {
        let last_seen = *session
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        expired(now, session.created_at, self.max_age) || expired(now, last_seen, self.idle_timeout)
    }

    /// The session of the request's cookie, if it is signed by us and still alive.
    pub fn lookup(&self, headers: &HeaderMap) -> Option<Arc<ConsoleSession>> {
        let cookie = cookie_value(headers, SESSION_COOKIE)?;
        let id = self.verify("session", cookie)?;
        let now = self.clock.now();
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let session = sessions.get(id).cloned()?;
        if self.is_expired(&session, now) {
            sessions.remove(id);
            return None;
        }
        *session
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
        Some(session)
    }

    /// Forgets a session (logout, or its refresh token was refused).
    pub fn remove(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// How many sessions are signed in (for tests and the status page).
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nobody is signed in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expired(now: SystemTime, since: SystemTime, ttl: Duration) -> bool {
    now.duration_since(since).is_ok_and(|age| age > ttl)
}

#[cfg(test)]
mod tests {
    use axum::http::header;
    use codelab_core::clock::ManualClock;

    use super::*;

    const KEY: &str = "a-test-key-of-enough-length";

    /// A store signing with `key`: a minute's idle timeout, ten minutes' maximum age, TLS.
    fn store(clock: &ManualClock, key: &str) -> SessionStore {
        SessionStore::new(
            Secret::new(key),
            Arc::new(clock.clone()),
            Duration::from_secs(60),
            Duration::from_secs(600),
            true,
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
            access: Secret::new("a"),
            refresh: None,
            access_expires_at: SystemTime::now(),
        }
    }

    #[test]
    fn session_cookies_are_signed_httponly_lax_and_secure_on_tls() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (session, cookie) = store.create(user(), tokens());
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Lax"));
        assert!(text.contains("Secure") && text.contains("Path=/"));
        assert_eq!(store.lookup(&headers_with(&cookie)).unwrap().id, session.id);

        // The bare id, a forged signature, another key: no session.
        let forged = HeaderValue::from_str(&format!("{SESSION_COOKIE}={}.AAAA", session.id));
        assert!(store.lookup(&headers_with(&forged.unwrap())).is_none());
        let other = self::store(&clock, "another-key-of-enough-length");
        assert!(other.lookup(&headers_with(&cookie)).is_none());
        assert!(!user().is_admin());
    }

    #[test]
    fn sessions_end_when_idle_or_too_old() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (_, cookie) = store.create(user(), tokens());
        let headers = headers_with(&cookie);
        for _ in 0..12 {
            clock.advance(Duration::from_secs(50));
            assert!(store.lookup(&headers).is_some());
        }
        clock.advance(Duration::from_secs(50));
        assert!(store.lookup(&headers).is_none(), "older than the max age");
        let (_, cookie) = store.create(user(), tokens());
        clock.advance(Duration::from_secs(61));
        assert!(store.lookup(&headers_with(&cookie)).is_none(), "idle");
    }

    #[test]
    fn a_login_finishes_once_and_only_in_the_browser_that_started_it() {
        let clock = ManualClock::starting_now();
        let store = store(&clock, KEY);
        let (state, challenge, cookie) = store.start_login("/console/sessions");
        let headers = headers_with(&cookie);
        assert!(store.finish_login(&HeaderMap::new(), &state).is_none());
        assert!(store.finish_login(&headers, "another-state").is_none());
        let login = store.finish_login(&headers, &state).unwrap();
        assert_eq!(pkce_challenge(&login.verifier), challenge);
        assert_eq!(login.return_to, "/console/sessions");
        assert!(store.finish_login(&headers, &state).is_none(), "used once");

        let (state, _, cookie) = store.start_login("/");
        clock.advance(LOGIN_TTL + Duration::from_secs(1));
        assert!(store.finish_login(&headers_with(&cookie), &state).is_none());
    }
}
