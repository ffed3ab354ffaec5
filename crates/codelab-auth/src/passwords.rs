//! Password and client-secret hashing: argon2id for user passwords, bcrypt verification for
//! the hashes imported from the original database, a fast SHA-256 form for client secrets,
//! the process-wide cap on concurrent password hashing, and the NIST SP 800-63B policy.
//!
//! Password hashing and verification are CPU- and memory-heavy (tens of milliseconds, 19 MiB
//! each) and run on the blocking pool, never on the async runtime, at most
//! [`password_hashing_concurrency`] at a time (see docs/auth.md, "Protection").
//! Client secrets are generated random values, so a keyed slow hash adds nothing but cost: they
//! are stored as SHA-256 and compared in constant time. Neither passwords, secrets nor hashes
//! are ever logged.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::metrics;
use crate::tokens::sha256_hex;

/// argon2id memory cost in KiB (OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;
/// Length of the argon2id output in bytes.
const ARGON2_OUTPUT_LEN: usize = 32;
/// Length of a fresh random salt in bytes (RFC 9106 §3.1 recommends 16).
const SALT_LEN: usize = 16;
/// bcrypt only reads the first 72 bytes; passlib truncated longer input silently, so the
/// original's hashes of long passwords were made from their first 72 bytes.
const BCRYPT_MAX_BYTES: usize = 72;

/// Shortest accepted password in characters (NIST SP 800-63B §5.1.1.1).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password in characters (NIST asks for at least 64; the cap bounds hashing
/// work per request).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// An argon2id hash with our parameters of a random password nobody knows: verifying against
/// it costs exactly what a real verification costs (see [`dummy_verify`]). A test checks its
/// parameters match the constants above.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ULD7jowC4CaGoABHS4+Sjg$aTk2Uvzp8af8HDBvUDeEXlUG68fLC4f7Mf3/itg2k0w";

/// A password or secret problem.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The password is shorter than [`MIN_PASSWORD_CHARS`].
    #[error("password must be at least {min} characters long, got {got}")]
    TooShort {
        /// The minimum.
        min: usize,
        /// The given length in characters.
        got: usize,
    },
    /// The password is longer than [`MAX_PASSWORD_CHARS`].
    #[error("password must be at most {max} characters long, got {got}")]
    TooLong {
        /// The maximum.
        max: usize,
        /// The given length in characters.
        got: usize,
    },
    /// The hasher failed (bad parameters; never expected with ours).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task running the hasher panicked or was cancelled.
    #[error("password hashing task failed: {0}")]
    Task(String),
    /// Every password-hashing slot and its wait queue are taken; retry after
    /// [`HASHING_RETRY_AFTER`].
    #[error("password hashing is at capacity")]
    Busy,
}

/// Outcome of [`verify_password`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password matches; when `needs_rehash`, store [`hash_password`]'s result instead
    /// (bcrypt from the original database, or argon2 weaker than ours).
    Valid {
        /// Whether the stored hash should be replaced by a fresh argon2id hash.
        needs_rehash: bool,
    },
    /// The password does not match (or the stored hash is unusable).
    Invalid,
}

impl PasswordCheck {
    /// Whether the password matched.
    pub fn is_valid(self) -> bool {
        matches!(self, Self::Valid { .. })
    }
}

/// Our argon2id hasher.
fn argon2() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(
        ARGON2_M_COST_KIB,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password (or client secret) with argon2id into a PHC string, off the runtime.
pub async fn hash_password(password: &str) -> Result<String, PasswordError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?
}

/// [`hash_password`] on the current thread (for benchmarks and blocking callers).
pub fn hash_password_blocking(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let hash = argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks a password (or client secret) against a stored hash, off the runtime.
///
/// Accepts argon2 PHC strings and the original's bcrypt hashes (`$2a$`, `$2b$`, `$2y$`); a
/// bcrypt match, or an argon2 match with weaker parameters than ours, asks for a rehash.
/// An unknown or corrupt hash never matches.
pub async fn verify_password(password: &str, hash: &str) -> Result<PasswordCheck, PasswordError> {
    let password = password.to_owned();
    let hash = hash.to_owned();
    tokio::task::spawn_blocking(move || Ok(verify_password_blocking(&password, &hash)))
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?
}

/// [`verify_password`] on the current thread (for benchmarks and blocking callers).
pub fn verify_password_blocking(password: &str, hash: &str) -> PasswordCheck {
    if hash.starts_with("$argon2") {
        verify_argon2(password, hash)
    } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        verify_bcrypt(password, hash)
    } else {
        tracing::debug!("stored password hash has an unknown format; treating it as no match");
        PasswordCheck::Invalid
    }
}

fn verify_argon2(password: &str, hash: &str) -> PasswordCheck {
    let parsed = match PasswordHash::new(hash) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(%error, "stored argon2 hash is malformed; treating it as no match");
            return PasswordCheck::Invalid;
        }
    };
    // The verifier takes algorithm, version and parameters from the hash itself; the
    // default instance only supplies the code.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => PasswordCheck::Valid {
            needs_rehash: argon2_is_weaker_than_ours(&parsed),
        },
        Err(argon2::password_hash::Error::Password) => PasswordCheck::Invalid,
        Err(error) => {
            tracing::warn!(%error, "stored argon2 hash is unusable; treating it as no match");
            PasswordCheck::Invalid
        }
    }
}

/// Whether an argon2 hash uses another variant, an older version or cheaper parameters.
fn argon2_is_weaker_than_ours(parsed: &PasswordHash<'_>) -> bool {
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return true;
    };
    let Ok(params) = Params::try_from(parsed) else {
        return true;
    };
    let output_len = parsed.hash.map_or(0, |h| h.len());
    algorithm != Algorithm::Argon2id
        || parsed.version != Some(Version::V0x13.into())
        || params.m_cost() < ARGON2_M_COST_KIB
        || params.t_cost() < ARGON2_T_COST
        || output_len < ARGON2_OUTPUT_LEN
}

fn verify_bcrypt(password: &str, hash: &str) -> PasswordCheck {
    let bytes = password.as_bytes();
    let truncated = &bytes[..bytes.len().min(BCRYPT_MAX_BYTES)];
    // The crate compares in constant time (subtle) once it has recomputed the hash.
    match bcrypt::verify(truncated, hash) {
        // Every match re-hashes to argon2id: bcrypt hashes only come from the original.
        Ok(true) => PasswordCheck::Valid { needs_rehash: true },
        Ok(false) => PasswordCheck::Invalid,
        Err(error) => {
            tracing::warn!(%error, "stored bcrypt hash is unusable; treating it as no match");
            PasswordCheck::Invalid
        }
    }
}

/// Prefix of a client secret stored in the fast form: `$sha256$` and 64 lowercase hex digits.
pub const CLIENT_SECRET_HASH_PREFIX: &str = "$sha256$";
/// Longest client secret accepted for checking; ours are 64 hex digits, and the cap bounds
/// the work a request can ask for.
pub const MAX_CLIENT_SECRET_BYTES: usize = 512;

/// Outcome of [`verify_client_secret`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSecretCheck {
    /// The secret matches; when `needs_rehash`, the stored hash is an argon2 or bcrypt one
    /// and should be replaced by [`hash_client_secret`]'s result.
    Valid {
        /// Whether the stored hash is in a slow legacy form.
        needs_rehash: bool,
    },
    /// The secret does not match (or the stored hash is unusable).
    Invalid,
}

/// The stored form of a client secret: `$sha256$<hex>`. Secrets are generated with at least
/// 256 random bits ([`codelab_core::config::Secret::generate`]), so a fast hash cannot be
/// brute-forced and costs a request almost nothing (docs/auth.md, "Protection").
pub fn hash_client_secret(secret: &str) -> String {
    format!(
        "{CLIENT_SECRET_HASH_PREFIX}{}",
        sha256_hex(secret.as_bytes())
    )
}

/// Checks a client secret against its stored hash. The fast form is compared in constant
/// time on the calling task; argon2 and bcrypt hashes written before the fast form existed
/// are verified on the blocking pool, one at a time in the whole process and never waiting
/// (a slot taken answers [`PasswordError::Busy`]), so client authentication can neither pile
/// up memory nor take the password-hashing slots logins use.
pub async fn verify_client_secret(
    secret: &str,
    hash: &str,
) -> Result<ClientSecretCheck, PasswordError> {
    if secret.len() > MAX_CLIENT_SECRET_BYTES {
        return Ok(ClientSecretCheck::Invalid);
    }
    if let Some(stored) = hash.strip_prefix(CLIENT_SECRET_HASH_PREFIX) {
        let computed = sha256_hex(secret.as_bytes());
        let matches = computed.len() == stored.len()
            && bool::from(computed.as_bytes().ct_eq(stored.as_bytes()));
        return Ok(if matches {
            ClientSecretCheck::Valid {
                needs_rehash: false,
            }
        } else {
            ClientSecretCheck::Invalid
        });
    }
    let Ok(_slot) = legacy_client_gate().try_acquire() else {
        return Err(PasswordError::Busy);
    };
    metrics::counter_password_verification("legacy_client_secret");
    Ok(match verify_password(secret, hash).await? {
        PasswordCheck::Valid { .. } => ClientSecretCheck::Valid { needs_rehash: true },
        PasswordCheck::Invalid => ClientSecretCheck::Invalid,
    })
}

/// One legacy (argon2/bcrypt) client-secret verification at a time in the process.
fn legacy_client_gate() -> &'static Semaphore {
    static GATE: OnceLock<Semaphore> = OnceLock::new();
    GATE.get_or_init(|| Semaphore::new(1))
}

/// How long a caller refused with [`PasswordError::Busy`] is told to wait (`Retry-After`).
pub const HASHING_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Requests that may wait for a password-hashing slot, per slot; beyond that they are refused
/// at once. Eight waiting per slot is well under a second of queueing with our parameters.
const HASHING_QUEUE_PER_SLOT: usize = 8;

/// The process-wide cap on concurrent password hashing: argon2id needs 19 MiB and one core
/// for tens of milliseconds, so unbounded concurrency turns a login flood into gigabytes of
/// memory. One slot per core, a bounded wait queue, and a refusal beyond it.
struct HashingGate {
    slots: Semaphore,
    slot_count: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

static HASHING_GATE: OnceLock<HashingGate> = OnceLock::new();

fn hashing_gate() -> &'static HashingGate {
    HASHING_GATE.get_or_init(|| HashingGate::new(default_hashing_concurrency()))
}

impl HashingGate {
    fn new(slot_count: usize) -> Self {
        let slot_count = slot_count.max(1);
        Self {
            slots: Semaphore::new(slot_count),
            slot_count,
            waiting: AtomicUsize::new(0),
            max_waiting: slot_count.saturating_mul(HASHING_QUEUE_PER_SLOT),
        }
    }

    fn is_saturated(&self) -> bool {
        self.slots.available_permits() == 0
            && self.waiting.load(Ordering::Acquire) >= self.max_waiting
    }

    async fn acquire(&'static self) -> Result<HashingPermit, PasswordError> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Ok(HashingPermit { _slot: slot });
        }
        // Join the queue only while it has room; the count is given back however the wait
        // ends (the request may be dropped while waiting).
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiting).then_some(n + 1)
            })
            .is_ok();
        if !joined {
            metrics::counter_hashing_refused();
            return Err(PasswordError::Busy);
        }
        let _leave = LeaveQueue(&self.waiting);
        // The semaphore is never closed; were it, refusing is the safe answer.
        match self.slots.acquire().await {
            Ok(slot) => Ok(HashingPermit { _slot: slot }),
            Err(_) => Err(PasswordError::Busy),
        }
    }
}

/// One slot per available core (one when the count is unknown).
fn default_hashing_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Sets the number of concurrent password hashings for this process (at least 1). It takes
/// effect only before the first login or password change; `false` when the cap was already
/// fixed (by an earlier call or by use).
pub fn set_password_hashing_concurrency(slots: usize) -> bool {
    HASHING_GATE.set(HashingGate::new(slots)).is_ok()
}

/// How many password hashings may run at once in this process.
pub fn password_hashing_concurrency() -> usize {
    hashing_gate().slot_count
}

/// Whether every password-hashing slot is taken and the wait queue is full, so a new
/// request would be refused; checked before a sign-in attempt is counted.
pub fn hashing_is_saturated() -> bool {
    hashing_gate().is_saturated()
}

/// A password-hashing slot; hashing done while it is held counts against the cap.
#[derive(Debug)]
pub struct HashingPermit {
    _slot: SemaphorePermit<'static>,
}

/// Waits for a password-hashing slot, or refuses with [`PasswordError::Busy`] when every slot
/// is taken and the wait queue is full.
pub async fn acquire_hashing_permit() -> Result<HashingPermit, PasswordError> {
    hashing_gate().acquire().await
}

/// Leaves the wait queue when dropped.
struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// [`verify_password`] of a user's password, counted in
/// `codelab_auth_password_verifications_total`; the caller holds a [`HashingPermit`].
pub async fn verify_user_password(
    _permit: &HashingPermit,
    password: &str,
    hash: &str,
) -> Result<PasswordCheck, PasswordError> {
    metrics::counter_password_verification("user_password");
    verify_password(password, hash).await
}

/// [`dummy_verify`] under a held [`HashingPermit`], counted like a real verification.
pub async fn dummy_verify_user(_permit: &HashingPermit, password: &str) {
    metrics::counter_password_verification("user_password");
    dummy_verify(password).await;
}

/// Spends the time of one verification without a stored hash: call it when the user (or
/// client) does not exist, so response times do not reveal which accounts exist.
pub async fn dummy_verify(password: &str) {
    // The result is meaningless by design; only the time spent matters.
    let _ = verify_password(password, DUMMY_HASH).await;
}

/// Checks a new password against NIST SP 800-63B §5.1.1.2: at least 8 and at most 1024
/// characters (Unicode scalar values, not bytes), and no composition rules.
pub fn check_password_policy(password: &str) -> Result<(), PasswordError> {
    let got = password.chars().count();
    if got < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort {
            min: MIN_PASSWORD_CHARS,
            got,
        });
    }
    if got > MAX_PASSWORD_CHARS {
        return Err(PasswordError::TooLong {
            max: MAX_PASSWORD_CHARS,
            got,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "tests own their clock, ids and tasks"
    )]
    use super::*;

    #[tokio::test]
    async fn argon2id_round_trip_with_owasp_parameters() {
        let hash = hash_password("correct horse battery staple").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "unexpected PHC prefix: {hash}"
        );
        assert_eq!(
            verify_password("correct horse battery staple", &hash)
                .await
                .unwrap(),
            PasswordCheck::Valid {
                needs_rehash: false
            }
        );
        assert_eq!(
            verify_password("correct horse battery stapl", &hash)
                .await
                .unwrap(),
            PasswordCheck::Invalid
        );
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() {
        let a = hash_password("same password").await.unwrap();
        let b = hash_password("same password").await.unwrap();
        assert_ne!(a, b, "salts must be random");
    }

    #[tokio::test]
    async fn bcrypt_hash_from_the_original_verifies_and_asks_for_rehash() {
        // The original stored passlib bcrypt (`$2b$12$...`); cost 4 keeps the test fast.
        let hash = bcrypt::hash("admin123", 4).unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert_eq!(
            verify_password("admin123", &hash).await.unwrap(),
            PasswordCheck::Valid { needs_rehash: true }
        );
        assert_eq!(
            verify_password("admin124", &hash).await.unwrap(),
            PasswordCheck::Invalid
        );
        for prefix in ["$2a$", "$2y$"] {
            let variant = format!("{prefix}{}", &hash[4..]);
            assert!(
                verify_password("admin123", &variant)
                    .await
                    .unwrap()
                    .is_valid()
            );
        }
    }

    #[tokio::test]
    async fn bcrypt_reads_only_the_first_72_bytes_as_passlib_did() {
        let long = "x".repeat(100);
        let hash = bcrypt::hash(&long[..72], 4).unwrap();
        assert!(verify_password(&long, &hash).await.unwrap().is_valid());
        let other_tail = format!("{}{}", &long[..72], "y".repeat(28));
        assert!(
            verify_password(&other_tail, &hash)
                .await
                .unwrap()
                .is_valid()
        );
        assert!(
            !verify_password(&long[..71], &hash)
                .await
                .unwrap()
                .is_valid()
        );
    }

    #[tokio::test]
    async fn weaker_argon2_parameters_ask_for_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = weak.hash_password(b"pw-12345", &salt).unwrap().to_string();
        assert_eq!(
            verify_password("pw-12345", &hash).await.unwrap(),
            PasswordCheck::Valid { needs_rehash: true }
        );

        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, 1, None).unwrap(),
        );
        let hash = argon2i
            .hash_password(b"pw-12345", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify_password("pw-12345", &hash).await.unwrap(),
            PasswordCheck::Valid { needs_rehash: true }
        );
    }

    #[tokio::test]
    async fn unknown_or_corrupt_hashes_never_match() {
        for hash in [
            "",
            "plaintext",
            "$1$abc$def",
            "pbkdf2_sha256$600000$salt$hash",
            "$argon2id$v=19$m=19456,t=2,p=1$broken",
            "$2b$12$tooshort",
        ] {
            assert_eq!(
                verify_password("whatever", hash).await.unwrap(),
                PasswordCheck::Invalid,
                "{hash:?}"
            );
        }
    }

    #[tokio::test]
    async fn client_secrets_use_the_fast_form_and_legacy_hashes_ask_for_rewrite() {
        let secret = codelab_core::config::Secret::generate();
        let fast = hash_client_secret(secret.expose());
        assert!(fast.starts_with("$sha256$") && fast.len() == "$sha256$".len() + 64);
        assert_eq!(
            verify_client_secret(secret.expose(), &fast).await.unwrap(),
            ClientSecretCheck::Valid {
                needs_rehash: false
            }
        );
        for wrong in ["", "x", &format!("{}x", secret.expose())] {
            assert_eq!(
                verify_client_secret(wrong, &fast).await.unwrap(),
                ClientSecretCheck::Invalid
            );
        }
        let too_long = "a".repeat(MAX_CLIENT_SECRET_BYTES + 1);
        let hash = hash_client_secret(&too_long);
        assert_eq!(
            verify_client_secret(&too_long, &hash).await.unwrap(),
            ClientSecretCheck::Invalid
        );
        // A client created before the fast form: argon2id and bcrypt still verify.
        let argon = hash_password("legacy-secret").await.unwrap();
        assert_eq!(
            verify_client_secret("legacy-secret", &argon).await.unwrap(),
            ClientSecretCheck::Valid { needs_rehash: true }
        );
        let bcrypt = bcrypt::hash("legacy-secret", 4).unwrap();
        assert_eq!(
            verify_client_secret("legacy-secret", &bcrypt)
                .await
                .unwrap(),
            ClientSecretCheck::Valid { needs_rehash: true }
        );
        assert_eq!(
            verify_client_secret("other", &argon).await.unwrap(),
            ClientSecretCheck::Invalid
        );
        // A password verifier never accepts the fast form.
        assert_eq!(
            verify_password(secret.expose(), &fast).await.unwrap(),
            PasswordCheck::Invalid
        );
    }

    #[tokio::test]
    async fn the_hashing_gate_queues_a_bounded_number_then_refuses() {
        let gate: &'static HashingGate = Box::leak(Box::new(HashingGate::new(1)));
        let held = gate.acquire().await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..HASHING_QUEUE_PER_SLOT {
            waiters.push(tokio::spawn(gate.acquire()));
        }
        while gate.waiting.load(Ordering::Acquire) < HASHING_QUEUE_PER_SLOT {
            tokio::task::yield_now().await;
        }
        assert!(gate.is_saturated());
        assert!(matches!(gate.acquire().await, Err(PasswordError::Busy)));
        drop(held);
        for waiter in waiters {
            drop(waiter.await.unwrap().unwrap());
        }
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
        assert!(!gate.is_saturated());
        assert!(gate.acquire().await.is_ok());
    }

    #[test]
    fn dummy_hash_uses_our_parameters() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert!(!argon2_is_weaker_than_ours(&parsed));
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(params.m_cost(), ARGON2_M_COST_KIB);
        assert_eq!(params.t_cost(), ARGON2_T_COST);
        assert_eq!(params.p_cost(), ARGON2_P_COST);
    }

    #[tokio::test]
    async fn dummy_verify_completes() {
        dummy_verify("no such user's password").await;
    }

    #[test]
    fn policy_counts_characters_not_bytes_and_has_no_class_rules() {
        assert!(
            check_password_policy("abcdefgh").is_ok(),
            "lower case only is fine"
        );
        assert!(
            check_password_policy("пароль12").is_ok(),
            "8 chars, 14 bytes"
        );
        // 7 characters but 21 bytes: too short.
        let err = check_password_policy("日本語のパスワ").unwrap_err();
        assert_eq!(
            err.to_string(),
            "password must be at least 8 characters long, got 7"
        );
        assert_eq!(
            check_password_policy("").unwrap_err().to_string(),
            "password must be at least 8 characters long, got 0"
        );
        assert!(check_password_policy(&"a".repeat(1024)).is_ok());
        assert_eq!(
            check_password_policy(&"a".repeat(1025))
                .unwrap_err()
                .to_string(),
            "password must be at most 1024 characters long, got 1025"
        );
    }
}
