//! Password and client-secret hashing: argon2id for new hashes, bcrypt verification for the
//! hashes imported from the original database, and the NIST SP 800-63B password policy.
//!
//! Hashing and verification are CPU-heavy (tens of milliseconds) and run on the blocking pool,
//! never on the async runtime. Neither passwords nor hashes are ever logged.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

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
