//! RSA signing keys: generation, import, the in-memory key set and the JWKS (RFC 7517).
//!
//! The key set lives in the database, shared by every replica: one active signing key (the
//! newest unretired one) plus retired verify-only keys kept published until every token they
//! signed has expired. The public key is always derived from the private key (the original
//! read it from a second file, so a mismatched pair went unnoticed). Key material is never
//! logged; only `kid`s are.
//!
//! Private keys are stored encrypted (AES-256-GCM, [`KeyEncryption`]) under the
//! key-encryption key `AUTH_SERVICE__KEY_ENCRYPTION_KEY`, so a copy of the database or a
//! backup does not hold a usable signing key (docs/auth.md, "Signing keys"). Plaintext keys
//! from before are encrypted at start; keys under `AUTH_SERVICE__KEY_ENCRYPTION_KEY_PREVIOUS`
//! are re-encrypted under the current key. The same secret also yields the service's HMAC
//! keys ([`KeyManager::derived_key`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use aws_lc_rs::{hkdf, hmac};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use codelab_core::clock::{Clock, SharedClock};
use codelab_core::config::{Environment, Secret};
use jsonwebtoken::DecodingKey;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::model::SigningKeyRecord;
use crate::store::{AuthStore, StoreError};

/// How often [`KeyManager::spawn_reloader`] re-reads the key set, picking up rotations done by
/// the CLI or another replica. A rotation must keep the old key published this much longer,
/// since replicas may sign with it until they reload.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest time between two reloads forced by tokens with an unknown `kid`, so forged
/// `kid`s cannot hammer the database.
pub const UNKNOWN_KID_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Size of generated keys (the original's default; RFC 7518 §3.3 asks for at least 2048).
const KEY_BITS: usize = 2048;
const PRIVATE_KEY_TAG: &str = "PRIVATE KEY";
const PKCS1_PRIVATE_KEY_TAG: &str = "RSA PRIVATE KEY";
const PUBLIC_KEY_TAG: &str = "PUBLIC KEY";
/// How an encrypted private key starts in `signing_keys.private_key_pem`; then the
/// fingerprint of the key-encryption key, `:`, and base64url(nonce ‖ ciphertext ‖ tag).
const SEALED_PREFIX: &str = "codelab-sealed:v1:";
/// Length of a key-encryption key (AES-256).
const KEY_ENCRYPTION_KEY_BYTES: usize = 32;
/// Name of the setting holding the key-encryption key, for error messages.
const KEY_ENCRYPTION_SETTING: &str = "AUTH_SERVICE__KEY_ENCRYPTION_KEY";
/// Name of the setting holding the previous key-encryption key.
const PREVIOUS_KEY_ENCRYPTION_SETTING: &str = "AUTH_SERVICE__KEY_ENCRYPTION_KEY_PREVIOUS";
/// File in `codelab up`'s data directory holding a generated key-encryption key (read by
/// `codelab keys rotate --data-dir`).
pub const DATA_DIR_KEY_ENCRYPTION_FILE: &str = "auth-key-encryption.key";

/// A signing-key problem.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key set failed.
    #[error("signing key storage failed: {0}")]
    Store(#[from] StoreError),
    /// The PEM file to import could not be read.
    #[error("cannot read the private key file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A private key (from a file or the database) is not a usable RSA key.
    #[error("invalid RSA private key {origin}: {reason}")]
    InvalidKey {
        /// `in file <path>` or `with kid <kid>`.
        origin: String,
        /// What was expected and what came.
        reason: String,
    },
    /// The key set is empty and neither an import nor generation is possible.
    #[error(
        "the signing key set is empty and generating a key is not allowed here: \
         set AUTH_SERVICE__PRIVATE_KEY_PATH to a PKCS#8 PEM key or run `codelab keys rotate`"
    )]
    NoKey,
    /// Every stored key is retired, so none may sign.
    #[error("the signing key set has no active key: run `codelab keys rotate`")]
    NoActiveKey,
    /// The crypto library failed to generate or encode a key.
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    /// The blocking task generating a key panicked or was cancelled.
    #[error("key generation task failed: {0}")]
    Task(String),
    /// Outside development the private keys must be stored encrypted.
    #[error(
        "{KEY_ENCRYPTION_SETTING} is required outside development: it encrypts the private \
         signing keys in the database (generate one with `openssl rand -base64 32`)"
    )]
    EncryptionKeyRequired,
    /// A key-encryption key setting is not 32 bytes in base64 or hex.
    #[error(
        "{setting} must be {KEY_ENCRYPTION_KEY_BYTES} random bytes as base64 or 64 hex \
         characters (`openssl rand -base64 32`): {reason}"
    )]
    InvalidEncryptionKey {
        /// The setting's name.
        setting: &'static str,
        /// What was wrong (never the value).
        reason: String,
    },
    /// A stored key is encrypted but no key-encryption key is configured.
    #[error(
        "the signing key {kid} is stored encrypted, but {KEY_ENCRYPTION_SETTING} is not set: \
         set the key it was encrypted with"
    )]
    EncryptionKeyMissing {
        /// The stored key.
        kid: String,
    },
    /// A stored key was encrypted under a key-encryption key that is not configured.
    #[error(
        "the signing key {kid} was encrypted with a key-encryption key (fingerprint \
         {fingerprint}) that is neither {KEY_ENCRYPTION_SETTING} nor \
         {PREVIOUS_KEY_ENCRYPTION_SETTING}: set the key it was encrypted with (after a \
         rotation, the old one as {PREVIOUS_KEY_ENCRYPTION_SETTING})"
    )]
    WrongEncryptionKey {
        /// The stored key.
        kid: String,
        /// Fingerprint of the key-encryption key it was stored under.
        fingerprint: String,
    },
    /// The stored ciphertext does not open with the key named by its fingerprint.
    #[error(
        "cannot decrypt the signing key {kid}: the stored value is damaged or belongs to \
         another key"
    )]
    Decrypt {
        /// The stored key.
        kid: String,
    },
}

/// One key-encryption key: AES-256-GCM with random nonces, its fingerprint (stored with each
/// encrypted key so a wrong key is named, not guessed), and the HKDF key derived from it.
struct SealingKey {
    aead: RandomizedNonceKey,
    fingerprint: String,
    derivation: hkdf::Prk,
}

impl SealingKey {
    fn parse(setting: &'static str, text: &str) -> Result<Self, KeyError> {
        let bytes = decode_key_encryption_key(text.trim())
            .map_err(|reason| KeyError::InvalidEncryptionKey { setting, reason })?;
        Self::from_bytes(&bytes)
            .map_err(|reason| KeyError::InvalidEncryptionKey { setting, reason })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let aead = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "the AES-256-GCM key was refused".to_owned())?;
        // A fingerprint must not help guess the key: a domain-separated hash, shortened.
        let mut hasher = Sha256::new();
        hasher.update(b"codelab key-encryption-key fingerprint v1\0");
        hasher.update(bytes);
        let fingerprint = hex_prefix(&hasher.finalize(), 8);
        let derivation =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"codelab-auth derived keys v1").extract(bytes);
        Ok(Self {
            aead,
            fingerprint,
            derivation,
        })
    }

    fn seal(&self, kid: &str, plaintext: &str) -> Result<String, KeyError> {
        let mut buffer = plaintext.as_bytes().to_vec();
        let nonce = self
            .aead
            .seal_in_place_append_tag(Aad::from(kid.as_bytes()), &mut buffer)
            .map_err(|_| KeyError::Generate("AES-256-GCM encryption failed".to_owned()))?;
        let mut sealed = nonce.as_ref().to_vec();
        sealed.extend_from_slice(&buffer);
        Ok(format!(
            "{SEALED_PREFIX}{}:{}",
            self.fingerprint,
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    fn open(&self, kid: &str, sealed: &str) -> Result<String, KeyError> {
        let damaged = || KeyError::Decrypt {
            kid: kid.to_owned(),
        };
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| damaged())?;
        if bytes.len() < NONCE_LEN {
            return Err(damaged());
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| damaged())?;
        let plaintext = self
            .aead
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut ciphertext)
            .map_err(|_| damaged())?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| damaged())
    }
}

/// Lower-case hex of the first `bytes` bytes of `digest`.
fn hex_prefix(digest: &[u8], bytes: usize) -> String {
    digest
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 32 bytes from 64 hex characters or base64 (standard or URL-safe, padded or not).
fn decode_key_encryption_key(text: &str) -> Result<Vec<u8>, String> {
    if text.len() == 2 * KEY_ENCRYPTION_KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect();
    }
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| {
            format!(
                "got {} characters that are neither hex nor base64",
                text.len()
            )
        })?;
    if decoded.len() != KEY_ENCRYPTION_KEY_BYTES {
        return Err(format!(
            "it decodes to {} bytes, expected {KEY_ENCRYPTION_KEY_BYTES}",
            decoded.len()
        ));
    }
    Ok(decoded)
}

/// A new random key-encryption key, base64 (what `codelab up` writes into its data dir).
pub fn generate_key_encryption_key() -> Result<String, KeyError> {
    let mut bytes = [0u8; KEY_ENCRYPTION_KEY_BYTES];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| KeyError::Generate("no randomness for a key-encryption key".to_owned()))?;
    Ok(STANDARD.encode(bytes))
}

/// How private signing keys are stored: encrypted under the configured key-encryption key
/// (and readable under the previous one during a rotation), or, in development without one,
/// as PEM.
#[derive(Clone, Default)]
pub struct KeyEncryption {
    current: Option<Arc<SealingKey>>,
    previous: Option<Arc<SealingKey>>,
}

impl std::fmt::Debug for KeyEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryption")
            .field("current", &self.current.as_ref().map(|k| &k.fingerprint))
            .field("previous", &self.previous.as_ref().map(|k| &k.fingerprint))
            .finish()
    }
}

impl KeyEncryption {
    /// Keys stored as PEM (development without a key-encryption key).
    pub fn none() -> Self {
        Self::default()
    }

    /// Encryption under `current` (base64 or hex of 32 bytes), also reading keys encrypted
    /// under `previous`.
    pub fn new(current: &str, previous: Option<&str>) -> Result<Self, KeyError> {
        let current = SealingKey::parse(KEY_ENCRYPTION_SETTING, current)?;
        let previous = previous
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| SealingKey::parse(PREVIOUS_KEY_ENCRYPTION_SETTING, p))
            .transpose()?;
        Ok(Self {
            current: Some(Arc::new(current)),
            previous: previous.map(Arc::new),
        })
    }

    /// From the two settings: the current key is required outside development.
    pub fn from_settings(
        current: &Secret,
        previous: &Secret,
        environment: Environment,
    ) -> Result<Self, KeyError> {
        if current.is_empty() {
            if environment.is_hardened() {
                return Err(KeyError::EncryptionKeyRequired);
            }
            if !previous.is_empty() {
                return Err(KeyError::InvalidEncryptionKey {
                    setting: PREVIOUS_KEY_ENCRYPTION_SETTING,
                    reason: format!("it is only used together with {KEY_ENCRYPTION_SETTING}"),
                });
            }
            return Ok(Self::none());
        }
        Self::new(current.expose(), Some(previous.expose()))
    }

    /// Whether private keys are stored encrypted.
    pub fn is_enabled(&self) -> bool {
        self.current.is_some()
    }

    /// Fingerprint of the current key-encryption key (shown by the CLI, never the key).
    pub fn fingerprint(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.fingerprint.as_str())
    }

    /// What to store for `kid`'s private key `pem`.
    fn seal(&self, kid: &str, pem: &str) -> Result<String, KeyError> {
        match &self.current {
            Some(key) => key.seal(kid, pem),
            None => Ok(pem.to_owned()),
        }
    }

    /// The PEM of a stored private key (encrypted or, from before encryption, plain).
    fn open(&self, kid: &str, stored: &str) -> Result<String, KeyError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (fingerprint, sealed) = rest.split_once(':').ok_or_else(|| KeyError::Decrypt {
            kid: kid.to_owned(),
        })?;
        let key = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|k| k.fingerprint == fingerprint);
        match key {
            Some(key) => key.open(kid, sealed),
            None if self.current.is_none() => Err(KeyError::EncryptionKeyMissing {
                kid: kid.to_owned(),
            }),
            None => Err(KeyError::WrongEncryptionKey {
                kid: kid.to_owned(),
                fingerprint: fingerprint.to_owned(),
            }),
        }
    }

    /// Whether a stored value should be rewritten: plain PEM while a key is configured, or
    /// encrypted under another key than the current one.
    fn needs_resealing(&self, stored: &str) -> bool {
        let Some(current) = &self.current else {
            return false;
        };
        match stored.strip_prefix(SEALED_PREFIX) {
            None => true,
            Some(rest) => !rest.starts_with(&format!("{}:", current.fingerprint)),
        }
    }
}

/// HMAC-SHA-256 keys derived from the key-encryption key (HKDF, RFC 5869), one per purpose;
/// random for this process when there is none (development).
struct Derivation {
    prk: hkdf::Prk,
}

impl Derivation {
    fn new(encryption: &KeyEncryption) -> Result<Self, KeyError> {
        if let Some(key) = &encryption.current {
            return Ok(Self {
                prk: key.derivation.clone(),
            });
        }
        let mut random = [0u8; KEY_ENCRYPTION_KEY_BYTES];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| KeyError::Generate("no randomness for a derived key".to_owned()))?;
        Ok(Self {
            prk: hkdf::Salt::new(hkdf::HKDF_SHA256, b"codelab-auth derived keys v1")
                .extract(&random),
        })
    }

    fn key(&self, purpose: &str) -> Result<hmac::Key, KeyError> {
        let info = [purpose.as_bytes()];
        self.prk
            .expand(&info, hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .map_err(|_| KeyError::Generate(format!("cannot derive the {purpose} key")))
    }
}

/// The key that signs new tokens.
pub(crate) struct ActiveKey {
    pub(crate) kid: String,
    pub(crate) key_pair: KeyPair,
}

/// The public half of a key that verifies tokens and appears in the JWKS.
struct PublishedKey {
    kid: String,
    /// Minimal big-endian modulus.
    n: Vec<u8>,
    /// Minimal big-endian exponent.
    e: Vec<u8>,
    decoding: DecodingKey,
    /// `None` while the key is unretired; else the end of its publication.
    publish_until: Option<DateTime<Utc>>,
}

/// An immutable snapshot of the key set; replaced whole on reload.
pub(crate) struct KeySet {
    active: Arc<ActiveKey>,
    /// Active key first, then the other published keys, newest first.
    public: Vec<Arc<PublishedKey>>,
}

impl KeySet {
    /// The key that signs new tokens.
    pub(crate) fn active(&self) -> &ActiveKey {
        &self.active
    }

    /// The verification key for `kid`, if it is in the set.
    pub(crate) fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.public
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| &k.decoding)
    }

    /// The active key's verification key.
    pub(crate) fn active_decoding_key(&self) -> Option<&DecodingKey> {
        self.decoding_key(&self.active.kid)
    }
}

/// The current key set of this replica, reloaded from the store when keys rotate.
pub struct KeyManager {
    store: Arc<dyn AuthStore>,
    clock: SharedClock,
    current: RwLock<Arc<KeySet>>,
    /// When the last reload forced by an unknown `kid` ran; the async mutex also makes
    /// concurrent unknown-`kid` verifications wait for one reload instead of each running one.
    last_forced_reload: tokio::sync::Mutex<Option<SystemTime>>,
    /// Opens the stored private keys.
    encryption: KeyEncryption,
    /// The service's HMAC keys.
    derivation: Derivation,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("active_kid", &self.active_kid())
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// Loads the key set from the store; when it has no active key, imports the PKCS#8 PEM at
    /// `import_pem_path` (if given and present) under `import_kid`, or else generates a key
    /// when `allow_generate`, stores it and loads again.
    ///
    /// Replicas starting together may race: a `Conflict` on insert means another one stored
    /// its key first, and everyone converges on the newest unretired key after the reload.
    ///
    /// Private keys are stored under `encryption` ([`KeyEncryption::none`]: as PEM, development
    /// only). Stored keys are first brought under its current key (plain PEM from before
    /// encryption, or keys under the previous key-encryption key); a published key that cannot
    /// be opened stops the start with an error naming the setting to fix.
    pub async fn load_or_init_with(
        store: Arc<dyn AuthStore>,
        import_pem_path: Option<&Path>,
        import_kid: &str,
        clock: SharedClock,
        allow_generate: bool,
        encryption: KeyEncryption,
    ) -> Result<KeyManager, KeyError> {
        let records = store.list_signing_keys().await?;
        reseal_stored_keys(&*store, &records, &encryption, now_utc(&*clock)).await?;
        let records = store.list_signing_keys().await?;
        if active_record(&records).is_some() {
            let set = build_key_set(&records, now_utc(&*clock), None, &encryption)?;
            return Self::with_set(store, clock, set, encryption);
        }

        let record = match import_pem_path {
            Some(path) if tokio::fs::try_exists(path).await.unwrap_or(false) => {
                let pem =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|source| KeyError::ReadFile {
                            path: path.to_owned(),
                            source,
                        })?;
                let origin = format!("in file {}", path.display());
                let key_pair = parse_private_pem(&pem, &origin)?;
                tracing::info!(
                    kid = import_kid,
                    path = %path.display(),
                    encrypted = encryption.is_enabled(),
                    "importing the signing key into the database; the file is no longer read \
                     once the key set holds a key"
                );
                record_for(
                    import_kid.to_owned(),
                    &key_pair,
                    now_utc(&*clock),
                    &encryption,
                )?
            }
            missing => {
                if !allow_generate {
                    return Err(match missing {
                        // Name the configured file rather than ask for the setting.
                        Some(path) => KeyError::ReadFile {
                            path: path.to_owned(),
                            source: std::io::ErrorKind::NotFound.into(),
                        },
                        None => KeyError::NoKey,
                    });
                }
                if let Some(path) = missing {
                    tracing::warn!(path = %path.display(), "private key file not found; generating a new signing key instead");
                }
                let record = generate_record(now_utc(&*clock), &encryption).await?;
                tracing::warn!(kid = %record.kid, "generated a new RSA-2048 signing key (the key set was empty)");
                record
            }
        };

        match store.insert_signing_key(record).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                tracing::info!("another replica stored a signing key first; using the stored set");
            }
            Err(error) => return Err(error.into()),
        }
        let records = store.list_signing_keys().await?;
        let set = build_key_set(&records, now_utc(&*clock), None, &encryption)?;
        Self::with_set(store, clock, set, encryption)
    }

    fn with_set(
        store: Arc<dyn AuthStore>,
        clock: SharedClock,
        set: KeySet,
        encryption: KeyEncryption,
    ) -> Result<Self, KeyError> {
        tracing::info!(
            kid = %set.active.kid,
            published = set.public.len(),
            encrypted = encryption.is_enabled(),
            "signing keys loaded"
        );
        Ok(Self {
            store,
            clock,
            current: RwLock::new(Arc::new(set)),
            last_forced_reload: tokio::sync::Mutex::new(None),
            derivation: Derivation::new(&encryption)?,
            encryption,
        })
    }

    /// An HMAC-SHA-256 key for `purpose` (e.g. `"login-form"`), derived from the
    /// key-encryption key: the same on every replica and across restarts. Without a
    /// key-encryption key (development only) it is random for this process.
    pub fn derived_key(&self, purpose: &str) -> Result<hmac::Key, KeyError> {
        self.derivation.key(purpose)
    }

    /// Re-reads the key set from the store (keys rotated by the CLI or another replica, and
    /// retired keys whose publication ended). On failure the current set stays in use.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let records = self.store.list_signing_keys().await?;
        let previous = self.current();
        let set = build_key_set(
            &records,
            now_utc(&*self.clock),
            Some(&previous),
            &self.encryption,
        )?;
        if set.active.kid != previous.active.kid {
            tracing::info!(old = %previous.active.kid, new = %set.active.kid, "signing key changed");
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        Ok(())
    }

    /// Reloads because a token named a `kid` we do not know, at most once per
    /// [`UNKNOWN_KID_RELOAD_INTERVAL`]; returns whether a reload ran (or finished while this
    /// call waited for another one).
    pub(crate) async fn reload_for_unknown_kid(&self) -> bool {
        let entered_at = self.clock.now();
        let mut last = self.last_forced_reload.lock().await;
        if let Some(at) = *last {
            if at >= entered_at {
                // Another caller reloaded while this one waited: its result is fresh.
                return true;
            }
            // A clock that went backwards counts as due.
            let since = entered_at.duration_since(at).unwrap_or(Duration::MAX);
            if since < UNKNOWN_KID_RELOAD_INTERVAL {
                return false;
            }
        }
        *last = Some(entered_at);
        match self.reload().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "reloading signing keys for an unknown kid failed");
                false
            }
        }
    }

    /// Reloads every [`RELOAD_INTERVAL`] until `shutdown` is cancelled; failures are logged
    /// and the current set stays in use.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let manager = Arc::clone(self);
        codelab_core::tasks::spawn("signing-key-reloader", async move {
            let mut interval = tokio::time::interval(RELOAD_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick fires at once; the set was just loaded.
            interval.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = interval.tick() => {
                        if let Err(error) = manager.reload().await {
                            tracing::warn!(%error, "periodic signing key reload failed");
                        }
                    }
                }
            }
        })
    }

    /// The current snapshot.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// `kid` of the key that signs new tokens.
    pub fn active_kid(&self) -> String {
        self.current().active.kid.clone()
    }

    /// The JWKS document (RFC 7517 §5): the active key and every retired key still within
    /// its publication window.
    pub fn jwks(&self) -> serde_json::Value {
        let set = self.current();
        let now = now_utc(&*self.clock);
        let keys: Vec<serde_json::Value> = set
            .public
            .iter()
            .filter(|k| k.publish_until.is_none_or(|until| until > now))
            .map(|k| jwk(&k.kid, &k.n, &k.e))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Generates a new key, stores it as the active one and retires every other unretired
    /// key, keeping it published for `publish_for` (the longest token lifetime plus leeway
    /// plus [`RELOAD_INTERVAL`]). Returns the new `kid`. Running replicas pick it up on their
    /// next reload.
    ///
    /// The new key is stored as PEM (development without a key-encryption key); see
    /// [`Self::rotate_with`].
    pub async fn rotate(
        store: &dyn AuthStore,
        clock: &dyn Clock,
        publish_for: Duration,
    ) -> Result<String, KeyError> {
        Self::rotate_with(store, clock, publish_for, &KeyEncryption::none()).await
    }

    /// [`Self::rotate`] storing the new key encrypted under `encryption`; without a
    /// key-encryption key this refuses when the stored keys are encrypted (it would add a
    /// plaintext key beside them).
    pub async fn rotate_with(
        store: &dyn AuthStore,
        clock: &dyn Clock,
        publish_for: Duration,
        encryption: &KeyEncryption,
    ) -> Result<String, KeyError> {
        if !encryption.is_enabled()
            && let Some(sealed) = store
                .list_signing_keys()
                .await?
                .into_iter()
                .find(|r| r.private_key_pem.starts_with(SEALED_PREFIX))
        {
            return Err(KeyError::EncryptionKeyMissing { kid: sealed.kid });
        }
        let now = now_utc(clock);
        let record = generate_record(now, encryption).await?;
        let kid = record.kid.clone();
        store.insert_signing_key(record).await?;
        let publish_for = chrono::Duration::from_std(publish_for)
            .map_err(|e| KeyError::Generate(format!("publication period out of range: {e}")))?;
        store
            .retire_signing_keys_except(&kid, now, now + publish_for)
            .await?;
        tracing::info!(%kid, "rotated the signing key");
        Ok(kid)
    }

    /// Generates an RSA-2048 key pair as (PKCS#8 PEM private key, SPKI PEM public key).
    pub fn generate_pem() -> Result<(String, String), KeyError> {
        let key_pair = generate_key_pair()?;
        Ok((private_pem(&key_pair)?, public_pem(&key_pair)?))
    }
}

/// The RFC 7638 thumbprint of a private key's public half: the `kid` of generated keys.
pub fn thumbprint_of_private_pem(private_key_pem: &str) -> Result<String, KeyError> {
    let key_pair = parse_private_pem(private_key_pem, "given")?;
    let (n, e) = components(&key_pair);
    Ok(jwk_thumbprint(&n, &e))
}

/// Derives the SPKI PEM public key of a PKCS#8 (or PKCS#1) PEM private key.
pub fn public_pem_of_private_pem(private_key_pem: &str) -> Result<String, KeyError> {
    let key_pair = parse_private_pem(private_key_pem, "given")?;
    public_pem(&key_pair)
}

fn now_utc(clock: &dyn Clock) -> DateTime<Utc> {
    DateTime::<Utc>::from(clock.now())
}

/// Brings every stored key under the current key-encryption key. Keys that are still
/// published must open (a wrong or missing key-encryption key is an error); unpublished
/// leftovers that do not are left alone. Replicas starting together may race: the replace is
/// conditional, and the loser's key is already resealed by the winner.
async fn reseal_stored_keys(
    store: &dyn AuthStore,
    records: &[SigningKeyRecord],
    encryption: &KeyEncryption,
    now: DateTime<Utc>,
) -> Result<(), KeyError> {
    for record in records {
        let published = match (record.retired_at, record.publish_until) {
            (None, _) => true,
            (Some(_), until) => until.is_some_and(|until| until > now),
        };
        let stored = &record.private_key_pem;
        let opened = match encryption.open(&record.kid, stored) {
            Ok(pem) => pem,
            Err(error) if published => return Err(error),
            Err(error) => {
                tracing::warn!(kid = %record.kid, %error, "leaving an unpublished signing key as stored");
                continue;
            }
        };
        if !encryption.needs_resealing(stored) {
            continue;
        }
        let sealed = encryption.seal(&record.kid, &opened)?;
        if store
            .replace_signing_key_private(&record.kid, stored, &sealed)
            .await?
        {
            let from = if stored.starts_with(SEALED_PREFIX) {
                "the previous key-encryption key"
            } else {
                "plain PEM"
            };
            tracing::info!(kid = %record.kid, from, "encrypted the stored signing key under the current key-encryption key");
        }
    }
    Ok(())
}

/// The newest unretired record (records come oldest first).
fn active_record(records: &[SigningKeyRecord]) -> Option<&SigningKeyRecord> {
    records.iter().rev().find(|r| r.retired_at.is_none())
}

/// Builds a snapshot from the stored records, reusing the parsed keys of `previous`.
fn build_key_set(
    records: &[SigningKeyRecord],
    now: DateTime<Utc>,
    previous: Option<&KeySet>,
    encryption: &KeyEncryption,
) -> Result<KeySet, KeyError> {
    let active_record = active_record(records).ok_or(KeyError::NoActiveKey)?;
    let reusable: HashMap<&str, &Arc<PublishedKey>> = previous
        .map(|p| p.public.iter().map(|k| (k.kid.as_str(), k)).collect())
        .unwrap_or_default();

    let active = match previous {
        Some(p) if p.active.kid == active_record.kid => Arc::clone(&p.active),
        _ => Arc::new(ActiveKey {
            kid: active_record.kid.clone(),
            key_pair: parse_record(active_record, encryption)?,
        }),
    };

    let mut public = Vec::new();
    // The active key first in the JWKS, then the others newest first.
    let ordered = std::iter::once(active_record)
        .chain(records.iter().rev().filter(|r| r.kid != active_record.kid));
    for record in ordered {
        let published = match (record.retired_at, record.publish_until) {
            (None, _) => true,
            (Some(_), Some(until)) => until > now,
            (Some(_), None) => false,
        };
        if !published {
            continue;
        }
        let publish_until = record.publish_until.filter(|_| record.retired_at.is_some());
        let key = match reusable.get(record.kid.as_str()) {
            Some(&existing) if existing.publish_until == publish_until => Arc::clone(existing),
            Some(&existing) => Arc::new(PublishedKey {
                kid: existing.kid.clone(),
                n: existing.n.clone(),
                e: existing.e.clone(),
                decoding: existing.decoding.clone(),
                publish_until,
            }),
            None if record.kid == active.kid => {
                Arc::new(published_key(&record.kid, &active.key_pair, publish_until))
            }
            None => match parse_record(record, encryption) {
                Ok(key_pair) => Arc::new(published_key(&record.kid, &key_pair, publish_until)),
                Err(error) => {
                    // A broken verify-only key must not take the whole set (and signing) down.
                    tracing::error!(kid = %record.kid, %error, "skipping an unusable signing key");
                    continue;
                }
            },
        };
        public.push(key);
    }
    Ok(KeySet { active, public })
}

fn published_key(
    kid: &str,
    key_pair: &KeyPair,
    publish_until: Option<DateTime<Utc>>,
) -> PublishedKey {
    let (n, e) = components(key_pair);
    PublishedKey {
        kid: kid.to_owned(),
        decoding: DecodingKey::from_rsa_raw_components(&n, &e),
        n,
        e,
        publish_until,
    }
}

/// Parses a stored key and warns when its stored public key is not the derived one.
fn parse_record(
    record: &SigningKeyRecord,
    encryption: &KeyEncryption,
) -> Result<KeyPair, KeyError> {
    let origin = format!("with kid {}", record.kid);
    let pem = encryption.open(&record.kid, &record.private_key_pem)?;
    let key_pair = parse_private_pem(&pem, &origin)?;
    let stored_public = pem::parse(&record.public_key_pem).ok();
    let derived = key_pair
        .public_key()
        .as_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    if stored_public.as_ref().map(pem::Pem::contents) != Some(derived.as_ref()) {
        tracing::warn!(kid = %record.kid, "stored public key does not match its private key; using the one derived from the private key");
    }
    Ok(key_pair)
}

/// Parses a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM RSA private key.
fn parse_private_pem(text: &str, origin: &str) -> Result<KeyPair, KeyError> {
    let invalid = |reason: String| KeyError::InvalidKey {
        origin: origin.to_owned(),
        reason,
    };
    let parsed = pem::parse(text).map_err(|e| invalid(format!("expected PEM: {e}")))?;
    let key_pair = match parsed.tag() {
        PRIVATE_KEY_TAG => KeyPair::from_pkcs8(parsed.contents()),
        PKCS1_PRIVATE_KEY_TAG => KeyPair::from_der(parsed.contents()),
        other => {
            return Err(invalid(format!(
                "expected a \"{PRIVATE_KEY_TAG}\" PEM block, found \"{other}\""
            )));
        }
    }
    .map_err(|e| invalid(format!("not an RSA key of 2048 to 8192 bits: {e}")))?;
    let bits = key_pair.public_modulus_len() * 8;
    if bits < KEY_BITS {
        return Err(invalid(format!(
            "expected at least {KEY_BITS} bits, found {bits}"
        )));
    }
    Ok(key_pair)
}

fn generate_key_pair() -> Result<KeyPair, KeyError> {
    KeyPair::generate(KeySize::Rsa2048).map_err(|e| KeyError::Generate(e.to_string()))
}

/// Generates a key off the runtime (tens to hundreds of milliseconds) as a new record whose
/// `kid` is its RFC 7638 thumbprint.
async fn generate_record(
    now: DateTime<Utc>,
    encryption: &KeyEncryption,
) -> Result<SigningKeyRecord, KeyError> {
    let key_pair = tokio::task::spawn_blocking(generate_key_pair)
        .await
        .map_err(|e| KeyError::Task(e.to_string()))??;
    let (n, e) = components(&key_pair);
    record_for(jwk_thumbprint(&n, &e), &key_pair, now, encryption)
}

/// The row for a key: its private key encrypted under `encryption` (bound to the `kid`).
fn record_for(
    kid: String,
    key_pair: &KeyPair,
    now: DateTime<Utc>,
    encryption: &KeyEncryption,
) -> Result<SigningKeyRecord, KeyError> {
    let private_key = encryption.seal(&kid, &private_pem(key_pair)?)?;
    Ok(SigningKeyRecord {
        kid,
        private_key_pem: private_key,
        public_key_pem: public_pem(key_pair)?,
        created_at: now,
        retired_at: None,
        publish_until: None,
    })
}

fn pem_lf(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn private_pem(key_pair: &KeyPair) -> Result<String, KeyError> {
    let der: Pkcs8V1Der<'static> = key_pair
        .as_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(pem_lf(PRIVATE_KEY_TAG, der.as_ref()))
}

fn public_pem(key_pair: &KeyPair) -> Result<String, KeyError> {
    let der: PublicKeyX509Der<'static> = key_pair
        .public_key()
        .as_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(pem_lf(PUBLIC_KEY_TAG, der.as_ref()))
}

/// Minimal big-endian (n, e) of a key pair (RFC 7518 §6.3.1: no leading zero octets).
fn components(key_pair: &KeyPair) -> (Vec<u8>, Vec<u8>) {
    let PublicKeyComponents { n, e } = PublicKeyComponents::<Vec<u8>>::from(key_pair.public_key());
    (strip_leading_zeros(n), strip_leading_zeros(e))
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // Keep one byte for the value zero (never a real modulus or exponent).
    bytes.drain(..zeros.min(bytes.len().saturating_sub(1)));
    bytes
}

/// One JWK (RFC 7517 §4, RFC 7518 §6.3.1): public parameters only.
fn jwk(kid: &str, n: &[u8], e: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(n),
        "e": URL_SAFE_NO_PAD.encode(e),
    })
}

/// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace.
fn jwk_thumbprint(n: &[u8], e: &[u8]) -> String {
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(e),
        URL_SAFE_NO_PAD.encode(n)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
pub(crate) mod tests {
    use codelab_core::clock::ManualClock;
    use codelab_core::db::{DbOptions, connect_database};

    use super::*;

    /// A fresh in-memory SQLite store (one connection: each in-memory connection is its own
    /// database).
    pub(crate) async fn sqlite_store() -> Arc<dyn AuthStore> {
        let options = DbOptions {
            max_connections: 1,
            ..DbOptions::default()
        };
        let pool = connect_database("sqlite::memory:", &options).await.unwrap();
        crate::store::open_store(pool, Arc::new(codelab_core::clock::SystemClock))
            .await
            .unwrap()
    }

    pub(crate) fn start() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    pub(crate) async fn manager(store: &Arc<dyn AuthStore>, clock: &ManualClock) -> KeyManager {
        KeyManager::load_or_init_with(
            Arc::clone(store),
            None,
            "unused",
            Arc::new(clock.clone()),
            true,
            KeyEncryption::none(),
        )
        .await
        .unwrap()
    }

    /// A key manager that generated its key on a new store, at [`start`] on a manual clock.
    async fn fresh_manager() -> (Arc<dyn AuthStore>, ManualClock, KeyManager) {
        let store = sqlite_store().await;
        let clock = ManualClock::new(start());
        let keys = manager(&store, &clock).await;
        (store, clock, keys)
    }

    /// Loads the key set of `store` at [`start`], importing `file` or generating if asked.
    async fn load(
        store: &Arc<dyn AuthStore>,
        file: Option<&Path>,
        kid: &str,
        generate: bool,
    ) -> Result<KeyManager, KeyError> {
        let clock = Arc::new(ManualClock::new(start()));
        let plain = KeyEncryption::none();
        KeyManager::load_or_init_with(Arc::clone(store), file, kid, clock, generate, plain).await
    }

    /// A temporary directory holding `private_key.pem` with `contents`, and that file's path.
    fn key_file(contents: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private_key.pem");
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    async fn stored(store: &Arc<dyn AuthStore>) -> Vec<SigningKeyRecord> {
        store.list_signing_keys().await.unwrap()
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[tokio::test]
    async fn jwks_has_the_original_shape_and_minimal_unpadded_components() {
        let (store, _clock, keys) = fresh_manager().await;
        let jwks = keys.jwks();
        let list = jwks["keys"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        let key = list[0].as_object().unwrap();
        let mut names: Vec<&str> = key.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "e", "kid", "kty", "n", "use"]);
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["e"], "AQAB");
        assert_eq!(key["kid"], keys.active_kid());
        let n = key["n"].as_str().unwrap();
        assert!(!n.contains('=') && !n.contains('+') && !n.contains('/'));
        let n = decode_b64(n);
        assert_eq!(n.len(), 256, "2048-bit modulus, no leading zero octet");
        assert_ne!(n[0], 0);
        // The stored public key is the derived one.
        let record = &stored(&store).await[0];
        assert_eq!(
            public_pem_of_private_pem(&record.private_key_pem).unwrap(),
            record.public_key_pem
        );
        assert!(
            record
                .private_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(
            record
                .public_key_pem
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1's example key and thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let thumbprint = jwk_thumbprint(&decode_b64(n), &decode_b64("AQAB"));
        assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn thumbprint_kid_is_deterministic_for_a_key() {
        let (private, public) = KeyManager::generate_pem().unwrap();
        let a = thumbprint_of_private_pem(&private).unwrap();
        let b = thumbprint_of_private_pem(&private).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 43, "base64url of 32 bytes, unpadded");
        assert_eq!(public_pem_of_private_pem(&private).unwrap(), public);
        let (other, _) = KeyManager::generate_pem().unwrap();
        assert_ne!(thumbprint_of_private_pem(&other).unwrap(), a);
    }

    #[tokio::test]
    async fn generated_key_is_stored_with_its_thumbprint_as_kid_and_reused() {
        let store = sqlite_store().await;
        let clock = ManualClock::new(start());
        let first = manager(&store, &clock).await;
        let records = stored(&store).await;
        assert_eq!(records.len(), 1);
        assert_eq!(
            first.active_kid(),
            thumbprint_of_private_pem(&records[0].private_key_pem).unwrap()
        );
        // A second replica (or restart) loads the same key instead of generating one.
        let second = manager(&store, &clock).await;
        assert_eq!(second.active_kid(), first.active_kid());
        assert_eq!(stored(&store).await.len(), 1);
    }

    #[tokio::test]
    async fn imports_the_pem_file_under_the_configured_kid() {
        let (private, public) = KeyManager::generate_pem().unwrap();
        let (_dir, path) = key_file(&private);
        let store = sqlite_store().await;
        let keys = load(&store, Some(&path), "2024-01-key-1", false)
            .await
            .unwrap();
        assert_eq!(keys.active_kid(), "2024-01-key-1");
        let records = stored(&store).await;
        assert_eq!(records[0].public_key_pem, public);
        assert_eq!(keys.jwks()["keys"][0]["kid"], "2024-01-key-1");
    }

    #[tokio::test]
    async fn empty_set_without_import_or_generation_is_an_error() {
        let store = sqlite_store().await;
        let error = load(&store, None, "2024-01-key-1", false)
            .await
            .unwrap_err();
        assert!(matches!(error, KeyError::NoKey), "{error}");
        let missing = Path::new("/nonexistent/private_key.pem");
        let error = load(&store, Some(missing), "k", false).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot read the private key file {}: entity not found",
                missing.display()
            )
        );
    }

    #[tokio::test]
    async fn invalid_pem_file_is_refused_with_its_path() {
        let (_dir, path) = key_file("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        let error = load(&sqlite_store().await, Some(&path), "k", true)
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("expected a \"PRIVATE KEY\" PEM block"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn concurrent_import_conflict_reloads_the_winner() {
        let (private, _) = KeyManager::generate_pem().unwrap();
        let (_dir, path) = key_file(&private);
        let store = sqlite_store().await;
        let (a, b) = tokio::join!(
            load(&store, Some(&path), "legacy", false),
            load(&store, Some(&path), "legacy", false),
        );
        assert_eq!(a.unwrap().active_kid(), "legacy");
        assert_eq!(b.unwrap().active_kid(), "legacy");
        assert_eq!(stored(&store).await.len(), 1);
    }

    #[tokio::test]
    async fn rotation_keeps_the_old_key_published_until_publish_until() {
        let (store, clock, keys) = fresh_manager().await;
        let old = keys.active_kid();

        let new = KeyManager::rotate(store.as_ref(), &clock, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_ne!(new, old);
        // Not yet reloaded: the replica still signs with (and publishes) the old key only.
        assert_eq!(keys.active_kid(), old);
        keys.reload().await.unwrap();
        assert_eq!(keys.active_kid(), new);
        let kids: Vec<String> = keys.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [new.clone(), old.clone()], "active key first");
        let retired = stored(&store)
            .await
            .into_iter()
            .find(|r| r.kid == old)
            .unwrap();
        assert_eq!(
            retired.publish_until.unwrap(),
            DateTime::<Utc>::from(start() + Duration::from_secs(3600))
        );

        // Still published just before the end of the window, gone after it.
        clock.advance(Duration::from_secs(3599));
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
        clock.advance(Duration::from_secs(1));
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 1);
        keys.reload().await.unwrap();
        assert!(keys.current().decoding_key(&old).is_none());
        assert!(keys.current().decoding_key(&new).is_some());
    }

    #[tokio::test]
    async fn an_unusable_retired_key_is_skipped_not_fatal() {
        let store = sqlite_store().await;
        let clock = ManualClock::new(start());
        store
            .insert_signing_key(SigningKeyRecord {
                kid: "broken".into(),
                private_key_pem: "not a key".into(),
                public_key_pem: "not a key".into(),
                created_at: DateTime::<Utc>::from(start()),
                retired_at: Some(DateTime::<Utc>::from(start())),
                publish_until: Some(DateTime::<Utc>::from(start() + Duration::from_secs(60))),
            })
            .await
            .unwrap();
        let keys = manager(&store, &clock).await;
        assert_ne!(keys.active_kid(), "broken");
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn unknown_kid_reloads_are_rate_limited() {
        let (store, clock, keys) = fresh_manager().await;
        assert!(keys.reload_for_unknown_kid().await);

        // A rotation elsewhere is not seen by a forced reload within 10 s of the last one...
        let new = KeyManager::rotate(store.as_ref(), &clock, Duration::from_secs(60))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(9));
        assert!(!keys.reload_for_unknown_kid().await);
        assert_ne!(keys.active_kid(), new);
        // ...but is once 10 s have passed.
        clock.advance(Duration::from_secs(1));
        assert!(keys.reload_for_unknown_kid().await);
        assert_eq!(keys.active_kid(), new);
    }

    #[tokio::test]
    async fn reloader_stops_on_shutdown() {
        let store = sqlite_store().await;
        let keys = Arc::new(manager(&store, &ManualClock::new(start())).await);
        let shutdown = CancellationToken::new();
        let task = keys.spawn_reloader(shutdown.clone());
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn key_encryption_keys_are_32_bytes_of_base64_or_hex_and_seal_per_kid() {
        let base64 = generate_key_encryption_key().unwrap();
        let bytes = STANDARD.decode(&base64).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let from_base64 = KeyEncryption::new(&base64, None).unwrap();
        let from_hex = KeyEncryption::new(&hex, None).unwrap();
        assert_eq!(from_base64.fingerprint(), from_hex.fingerprint());
        for bad in ["", "change-me", &STANDARD.encode([7u8; 16])] {
            let error = KeyEncryption::new(bad, None).unwrap_err().to_string();
            assert!(error.contains("32 random bytes"), "{error}");
        }
        let (pem, _) = KeyManager::generate_pem().unwrap();
        let sealed = from_base64.seal("kid-1", &pem).unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("PRIVATE KEY"));
        assert_eq!(from_hex.open("kid-1", &sealed).unwrap(), pem);
        // Bound to its kid: a ciphertext moved to another row does not open.
        assert!(matches!(
            from_hex.open("kid-2", &sealed),
            Err(KeyError::Decrypt { .. })
        ));
        assert!(!from_base64.needs_resealing(&sealed));
        assert!(from_base64.needs_resealing(&pem));
        assert!(!KeyEncryption::none().needs_resealing(&pem));
    }

    #[test]
    fn strip_leading_zeros_keeps_the_value() {
        assert_eq!(strip_leading_zeros(vec![0, 0, 1, 0]), vec![1, 0]);
        assert_eq!(strip_leading_zeros(vec![1, 0, 1]), vec![1, 0, 1]);
        assert_eq!(strip_leading_zeros(vec![0]), vec![0]);
    }
}
