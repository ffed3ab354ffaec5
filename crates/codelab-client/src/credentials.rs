//! The token store: `$XDG_CONFIG_HOME/codelab/credentials.json` (or
//! `~/.config/codelab/credentials.json`), keyed by server URL. The folder is created with mode
//! 0700 and the file written with mode 0600 through a temporary file and a rename, so a token
//! is never readable by other users, not even for a moment.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file name inside the config folder.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// Why the token store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("cannot find the config folder: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// Reading or writing the file failed.
    #[error("cannot use the token store {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not what this client writes.
    #[error("the token store {path} is not valid JSON ({message}); delete it and log in again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// The tokens of one login on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    /// Who logged in.
    pub username: String,
    /// The current access token (a JWT).
    pub access_token: String,
    /// The refresh token (rotated on every use).
    pub refresh_token: String,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// Its lifetime when issued, in seconds (decides how early to refresh).
    pub expires_in: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    #[serde(default)]
    servers: BTreeMap<String, StoredTokens>,
}

/// The token store file.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

/// The key of a server: its URL without a trailing slash.
pub fn server_key(server: &str) -> String {
    server.trim().trim_end_matches('/').to_owned()
}

impl TokenStore {
    /// The store at its usual place (`$XDG_CONFIG_HOME/codelab/credentials.json`, else
    /// `$HOME/.config/codelab/credentials.json`).
    pub fn default_location() -> Result<TokenStore, CredentialsError> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".config"))
            })
            .ok_or(CredentialsError::NoConfigDir)?;
        Ok(TokenStore::at(
            config.join("codelab").join(CREDENTIALS_FILE),
        ))
    }

    /// A store at an explicit path.
    pub fn at(path: PathBuf) -> TokenStore {
        TokenStore { path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> CredentialsError {
        CredentialsError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read(&self) -> Result<StoreFile, CredentialsError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CredentialsError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(StoreFile::default()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn write(&self, file: &StoreFile) -> Result<(), CredentialsError> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| self.io(io::Error::other("the store has no folder")))?;
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| self.io(e))?;
        }
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| self.io(io::Error::other(e)))?;
        let temp = dir.join(format!(".{CREDENTIALS_FILE}.{}.tmp", std::process::id()));
        let written = (|| {
            let _ = fs::remove_file(&temp);
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            // The mode of `open` is masked by the umask; set it outright.
            fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))?;
            fs::rename(&temp, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map_err(|e| self.io(e))
    }

    /// The tokens stored for `server`, if any.
    pub fn load(&self, server: &str) -> Result<Option<StoredTokens>, CredentialsError> {
        Ok(self.read()?.servers.remove(&server_key(server)))
    }

    /// Stores (or replaces) the tokens for `server`.
    pub fn save(&self, server: &str, tokens: &StoredTokens) -> Result<(), CredentialsError> {
        let mut file = self.read()?;
        file.servers.insert(server_key(server), tokens.clone());
        self.write(&file)
    }

    /// Removes the tokens for `server`; returns what was stored. The file is deleted when it
    /// holds no server any more.
    pub fn remove(&self, server: &str) -> Result<Option<StoredTokens>, CredentialsError> {
        let mut file = self.read()?;
        let removed = file.servers.remove(&server_key(server));
        if file.servers.is_empty() {
            match fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(e)),
            }
        } else if removed.is_some() {
            self.write(&file)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(access: &str) -> StoredTokens {
        StoredTokens {
            username: "admin".into(),
            access_token: access.into(),
            refresh_token: "r".into(),
            expires_at: crate::now(),
            expires_in: 900,
        }
    }

    #[test]
    fn tokens_are_kept_per_server_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::at(dir.path().join("codelab/credentials.json"));
        assert_eq!(store.load("http://a").unwrap(), None);
        store.save("http://a/", &tokens("one")).unwrap();
        store.save("http://b", &tokens("two")).unwrap();
        assert_eq!(store.load("http://a").unwrap().unwrap().access_token, "one");
        assert_eq!(
            store.load("http://b/").unwrap().unwrap().access_token,
            "two"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&dir.path().join("codelab")), 0o700);
        assert!(store.remove("http://a").unwrap().is_some());
        assert_eq!(store.load("http://a").unwrap(), None);
        assert!(store.path().exists());
        store.remove("http://b").unwrap();
        assert!(!store.path().exists());
    }

    #[test]
    fn a_corrupt_store_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::at(dir.path().join("credentials.json"));
        fs::write(store.path(), "{nope").unwrap();
        let err = store.load("http://a").unwrap_err().to_string();
        assert!(err.contains("delete it and log in again"), "{err}");
    }
}
