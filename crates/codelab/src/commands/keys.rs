//! `codelab keys ...`: RSA signing keys of the auth service. `generate` writes a key pair
//! offline (to import with `AUTH_SERVICE__PRIVATE_KEY_PATH`); `rotate` replaces the signing key
//! in the auth database, keeping the old one published until every token it signed expired,
//! and stores it encrypted like the service does (docs/operations.md, "Signing keys").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use codelab_auth::AuthService;
use codelab_auth::keys::{
    DATA_DIR_KEY_ENCRYPTION_FILE, KeyEncryption, KeyManager, RELOAD_INTERVAL,
    thumbprint_of_private_pem,
};
use codelab_core::clock::{Clock, SystemClock};
use codelab_core::db::{DbOptions, connect_database, redact_database_url};

use super::services::load_section;

/// File name of the private key (the original's `private_key.pem`).
const PRIVATE_KEY_FILE: &str = "private_key.pem";
/// File name of the public key (the original's `public_key.pem`).
const PUBLIC_KEY_FILE: &str = "public_key.pem";
/// File name of the auth database inside a data directory (as `codelab up` lays it out).
const AUTH_DB_FILE: &str = "auth.db";

/// `codelab keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new RSA-2048 key pair: private_key.pem (PKCS#8, mode 0600) and public_key.pem
    /// (SPKI, mode 0644).
    Generate(GenerateArgs),
    /// Make a new signing key active in the auth database; the old one stays in the JWKS until
    /// every token it signed has expired. Running replicas switch within a minute. The new
    /// key is stored encrypted under AUTH_SERVICE__KEY_ENCRYPTION_KEY (with --data-dir and no
    /// such setting, the key `codelab up` keeps in that directory).
    Rotate(RotateArgs),
}

/// Arguments of `codelab keys generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write the two files into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

/// Arguments of `codelab keys rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Data directory holding auth.db (as given to `codelab up --data-dir`); without it, the
    /// configured AUTH_SERVICE__DB_URL (SQLite or PostgreSQL).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Runs a `codelab keys` subcommand.
pub async fn run(config: Option<PathBuf>, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate(args) => generate(&args),
        KeysCommand::Rotate(args) => rotate(config, args).await,
    }
}

fn generate(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let private_path = args.out.join(PRIVATE_KEY_FILE);
    let public_path = args.out.join(PUBLIC_KEY_FILE);
    // Check both before writing either, so a refusal leaves no half-written pair.
    if !args.force {
        for path in [&private_path, &public_path] {
            if path.exists() {
                bail!(
                    "{} already exists; pass --force to overwrite it",
                    path.display()
                );
            }
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the directory {}", args.out.display()))?;
    let (private_pem, public_pem) =
        KeyManager::generate_pem().context("cannot generate an RSA key")?;
    let kid = thumbprint_of_private_pem(&private_pem).context("cannot fingerprint the key")?;
    write_key_file(&private_path, &private_pem, 0o600, args.force)?;
    write_key_file(&public_path, &public_pem, 0o644, args.force)?;
    println!("wrote {} (mode 0600)", private_path.display());
    println!("wrote {} (mode 0644)", public_path.display());
    println!("RFC 7638 thumbprint: {kid}");
    println!(
        "import it with AUTH_SERVICE__PRIVATE_KEY_PATH={} (used only while the key set is empty; \
         its kid is AUTH_SERVICE__KEY_ID)",
        private_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `contents` to `path` with `mode`, created with that mode so the private key is never
/// readable by others, even briefly.
fn write_key_file(path: &Path, contents: &str, mode: u32, overwrite: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An overwritten file keeps its old mode: set it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn rotate(config: Option<PathBuf>, args: RotateArgs) -> anyhow::Result<ExitCode> {
    let config = load_section::<AuthService>(config, &())?;
    let db_url = match &args.data_dir {
        Some(dir) => {
            let path = std::path::absolute(dir.join(AUTH_DB_FILE))
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            if !path.is_file() {
                bail!("no auth database at {}", path.display());
            }
            let path = path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
            // `sqlite:///` + an absolute path is SQLAlchemy's absolute form (`sqlite:////abs`).
            format!("sqlite:///{path}")
        }
        None => config.db_url.clone(),
    };
    let options = DbOptions {
        max_connections: 2,
        // Rotating a database that does not exist yet is a mistake (a wrong path or URL).
        create_if_missing: false,
        ..DbOptions::default()
    };
    let pool = connect_database(&db_url, &options).await.with_context(|| {
        format!(
            "cannot open the auth database {} (pass --data-dir DIR with the directory holding \
             auth.db, or set AUTH_SERVICE__DB_URL)",
            redact_database_url(&db_url)
        )
    })?;
    let encryption = key_encryption(&config, args.data_dir.as_deref())?;
    let result = rotate_in(pool.clone(), &config, &encryption).await;
    pool.close().await;
    let Rotated {
        kid,
        publish_for,
        retired,
    } = result?;
    let until = chrono::DateTime::<chrono::Utc>::from(SystemClock.now() + publish_for);
    println!("new signing key: {kid}");
    match encryption.fingerprint() {
        Some(fingerprint) => {
            println!("stored encrypted under the key-encryption key with fingerprint {fingerprint}")
        }
        None => println!(
            "stored unencrypted: no AUTH_SERVICE__KEY_ENCRYPTION_KEY (only acceptable in \
             development)"
        ),
    }
    if retired.is_empty() {
        println!("there was no active key to retire");
    } else {
        println!(
            "retired {} until {} ({} s: the longest token lifetime, plus leeway and the \
             replicas' reload interval); it stays in the JWKS until then",
            retired.join(", "),
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            publish_for.as_secs()
        );
    }
    println!(
        "running auth replicas switch to the new key within {} s",
        RELOAD_INTERVAL.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

/// The outcome of a rotation.
struct Rotated {
    kid: String,
    publish_for: Duration,
    /// The keys that were active before (normally one).
    retired: Vec<String>,
}

/// The key-encryption key: the configured one, else (with `--data-dir`) the one `codelab up`
/// generated into that directory, else none.
fn key_encryption(
    config: &codelab_auth::Config,
    data_dir: Option<&Path>,
) -> anyhow::Result<KeyEncryption> {
    if !config.key_encryption_key.is_empty() {
        return KeyEncryption::new(
            config.key_encryption_key.expose(),
            Some(config.key_encryption_key_previous.expose()),
        )
        .context("invalid key-encryption key");
    }
    let Some(path) = data_dir.map(|dir| dir.join(DATA_DIR_KEY_ENCRYPTION_FILE)) else {
        return Ok(KeyEncryption::none());
    };
    match std::fs::read_to_string(&path) {
        Ok(key) => KeyEncryption::new(&key, None)
            .with_context(|| format!("invalid key-encryption key in {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(KeyEncryption::none()),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

async fn rotate_in(
    pool: codelab_core::db::DbPool,
    config: &codelab_auth::Config,
    encryption: &KeyEncryption,
) -> anyhow::Result<Rotated> {
    let store = codelab_auth::store::open_store(pool, std::sync::Arc::new(SystemClock))
        .await
        .context("cannot open the auth store")?;
    let retired: Vec<String> = store
        .list_signing_keys()
        .await
        .context("cannot list the signing keys")?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.kid)
        .collect();
    let clients = store
        .list_clients()
        .await
        .context("cannot list the OAuth clients")?;
    let publish_for = publication_period(
        clients
            .iter()
            .flat_map(|c| [c.refresh_token_lifetime, c.access_token_lifetime]),
        config,
    );
    let kid = KeyManager::rotate_with(&*store, &SystemClock, publish_for, encryption)
        .await
        .context("cannot rotate the signing key")?;
    Ok(Rotated {
        kid,
        publish_for,
        retired,
    })
}

/// How long a retired key must stay published: every token it signed (refresh tokens are JWTs
/// too, up to the longest client lifetime) must verify until it expires, plus the accepted
/// clock skew and the time replicas may keep signing with it before they reload.
fn publication_period(
    client_lifetimes: impl Iterator<Item = i64>,
    config: &codelab_auth::Config,
) -> Duration {
    let longest = client_lifetimes
        .chain([config.refresh_token_lifetime, config.access_token_lifetime])
        .max()
        .unwrap_or(0)
        .max(0)
        .unsigned_abs();
    Duration::from_secs(longest.saturating_add(config.token_leeway)) + RELOAD_INTERVAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_covers_the_longest_lifetime_leeway_and_reload() {
        let config = codelab_auth::Config {
            refresh_token_lifetime: 2_592_000,
            access_token_lifetime: 900,
            token_leeway: 30,
            ..codelab_auth::Config::default()
        };
        // The internal client's 90-day refresh tokens win over the default.
        assert_eq!(
            publication_period([900, 7_776_000].into_iter(), &config),
            Duration::from_secs(7_776_000 + 30 + 60)
        );
        assert_eq!(
            publication_period(std::iter::empty(), &config),
            Duration::from_secs(2_592_000 + 30 + 60)
        );
    }

    #[test]
    fn rotate_encrypts_with_the_setting_else_the_data_dir_key() {
        let dir = tempfile::tempdir().unwrap();
        let plain = codelab_auth::Config::default();
        assert!(
            !key_encryption(&plain, Some(dir.path()))
                .unwrap()
                .is_enabled()
        );
        let in_dir = codelab_auth::keys::generate_key_encryption_key().unwrap();
        std::fs::write(dir.path().join(DATA_DIR_KEY_ENCRYPTION_FILE), &in_dir).unwrap();
        let from_dir = key_encryption(&plain, Some(dir.path())).unwrap();
        assert_eq!(
            from_dir.fingerprint(),
            KeyEncryption::new(&in_dir, None).unwrap().fingerprint()
        );
        assert!(!key_encryption(&plain, None).unwrap().is_enabled());
        let configured = codelab_auth::Config {
            key_encryption_key: codelab_auth::keys::generate_key_encryption_key()
                .unwrap()
                .into(),
            ..codelab_auth::Config::default()
        };
        assert_ne!(
            key_encryption(&configured, Some(dir.path()))
                .unwrap()
                .fingerprint(),
            from_dir.fingerprint(),
            "the setting wins over the data dir's file"
        );
    }

    #[test]
    fn generate_writes_both_files_with_modes_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let args = GenerateArgs {
            out: out.clone(),
            force: false,
        };
        generate(&args).unwrap();
        let private = std::fs::read_to_string(out.join(PRIVATE_KEY_FILE)).unwrap();
        let public = std::fs::read_to_string(out.join(PUBLIC_KEY_FILE)).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(
            codelab_auth::keys::public_pem_of_private_pem(&private).unwrap(),
            public
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(PRIVATE_KEY_FILE), 0o600);
            assert_eq!(mode(PUBLIC_KEY_FILE), 0o644);
        }

        let error = generate(&args).unwrap_err().to_string();
        assert!(error.contains("already exists; pass --force"), "{error}");
        assert_eq!(
            std::fs::read_to_string(out.join(PRIVATE_KEY_FILE)).unwrap(),
            private
        );

        generate(&GenerateArgs {
            out: out.clone(),
            force: true,
        })
        .unwrap();
        assert_ne!(
            std::fs::read_to_string(out.join(PRIVATE_KEY_FILE)).unwrap(),
            private
        );
    }
}
