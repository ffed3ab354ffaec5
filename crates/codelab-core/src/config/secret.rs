//! A string secret that never prints itself.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// What `Debug` and `Serialize` print instead of a secret's value.
pub const REDACTED: &str = "[redacted]";

/// Placeholder values from the original deployments that must never guard production.
const KNOWN_DEFAULTS: &[&str] = &[
    "change-me-internal-key",
    "change-me-in-production",
    "my-super-secret-key",
    "dev-master-key",
];

/// Shortest secret we accept in production (the docs ask for 32 hex chars; 16 is the floor).
const MIN_STRONG_LEN: usize = 16;

/// A string secret (API key, password): redacted in `Debug` and `Serialize`, zeroed on drop.
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// A fresh random secret: 32 random bytes, hex-encoded (64 characters).
    pub fn generate() -> Self {
        Self::new(crate::ids::random_hex(32))
    }

    /// The secret's value; call only where it is really used (a header, a hash).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// Constant-time comparison with a presented value; an empty secret matches nothing.
    ///
    /// The running time depends only on `candidate.len()` (which the caller already knows),
    /// never on the secret's length or on where the first difference is.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.expose().as_bytes();
        if secret.is_empty() {
            // An unset key must never open the door, even to an empty header.
            return false;
        }
        let mut diff = 0u8;
        for (i, byte) in candidate.iter().enumerate() {
            // Cycling over the secret keeps the loop length tied to the candidate only.
            diff |= byte ^ secret[i % secret.len()];
        }
        let same_len = (candidate.len() as u64).ct_eq(&(secret.len() as u64));
        let same_bytes = diff.ct_eq(&0);
        bool::from(same_len & same_bytes)
    }

    /// Whether the secret is unfit for production: empty, shorter than 16 characters,
    /// or one of the original deployments' published placeholders.
    pub fn is_weak(&self) -> bool {
        let value = self.expose();
        value.chars().count() < MIN_STRONG_LEN || KNOWN_DEFAULTS.contains(&value)
    }
}

impl Default for Secret {
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Self::new(self.expose().to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_never_show_the_value() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), r#""[redacted]""#);
        #[derive(Serialize, Debug)]
        struct Config {
            key: Secret,
        }
        let config = Config { key: secret };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"key":"[redacted]"}"#
        );
    }

    #[test]
    fn deserializes_from_a_string() {
        let secret: Secret = serde_json::from_str(r#""abc""#).unwrap();
        assert_eq!(secret.expose(), "abc");
        assert!(serde_json::from_str::<Secret>("12").is_err());
        assert!(Secret::default().is_empty());
    }

    #[test]
    fn matches_only_the_exact_value() {
        let secret = Secret::new("correct-horse-battery");
        assert!(secret.matches(b"correct-horse-battery"));
        assert!(!secret.matches(b"correct-horse-batter"));
        assert!(!secret.matches(b"correct-horse-battery!"));
        assert!(!secret.matches(b"correct-horse-batterx"));
        assert!(!secret.matches(b""));
        // A candidate that repeats the secret must not match thanks to the length check.
        assert!(!secret.matches(b"correct-horse-batterycorrect-horse-battery"));
    }

    #[test]
    fn empty_secret_matches_nothing() {
        let secret = Secret::default();
        assert!(!secret.matches(b""));
        assert!(!secret.matches(b"anything"));
    }

    #[test]
    fn weak_secrets_are_recognised() {
        assert!(Secret::default().is_weak());
        assert!(Secret::new("short").is_weak());
        assert!(Secret::new("change-me-internal-key").is_weak());
        assert!(Secret::new("change-me-in-production").is_weak());
        assert!(Secret::new("my-super-secret-key").is_weak());
        assert!(Secret::new("dev-master-key").is_weak());
        assert!(!Secret::new("0123456789abcdef").is_weak());
        let generated = Secret::generate();
        assert_eq!(generated.expose().len(), 64);
        assert!(!generated.is_weak());
        assert_ne!(generated.expose(), Secret::generate().expose());
        assert_eq!(generated.clone().expose(), generated.expose());
    }
}
