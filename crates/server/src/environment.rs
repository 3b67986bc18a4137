//! An environment on disk: its id, database, keyring and TLS certificate, all under one data
//! directory (mode 0700):
//!
//! ```text
//! carevault-data/
//!   environment.json   environment id and creation time
//!   carevault.db       SQLite (WAL): sealed resources, identity, wrapped data keys
//!                      (absent when `database.url` names PostgreSQL: nodes sharing one
//!                      database each have a copy of the rest of this directory)
//!   keys/kek-v1.key    key-encryption key versions (file provider; 0600, directory 0700)
//!   keys/keyring.json  KEK version states, minimum decryption version, crypto-shred list
//!   tls/cert.pem       self-signed certificate (unless configured otherwise)
//!   tls/key.pem        its private key (0600)
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use carevault_store::{PostgresStore, SqliteStore, Store, WriteOp};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, AuditAction, AuditScope};
use crate::clock::SharedClock;
use crate::config::{Config, Database, KeyProviderConfig, Tier};
use crate::error::{Error, Result};
use crate::identity::{Identity, NewUser};
use crate::keyring::Keyring;

const ENVIRONMENT_FILE: &str = "environment.json";
/// The database's record of the environment's tier (absent: made before tiers, development).
const TIER_META: &str = "environment_tier";
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// `environment.json`. Public so that the backups read it through this one type.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvironmentFile {
    pub environment_id: String,
    pub created_at: String,
    /// For the operator's eye: the database's record is the one that counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// An opened environment: what every service of the server shares.
pub struct Environment {
    pub id: String,
    /// Fixed at init.
    pub tier: Tier,
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
}

/// What `init` did, for the operator's terminal (never the log).
pub struct InitReport {
    pub environment_id: String,
    pub tier: Tier,
    pub tls_fingerprint: Option<String>,
    pub admin: NewUser,
    /// Verifies the audit trail's checkpoints (`carevault audit verify --public-key`).
    pub audit_public_key: String,
}

/// True when `config.data_dir` holds an environment.
pub fn is_initialized(config: &Config) -> bool {
    config.data_dir.join(ENVIRONMENT_FILE).exists()
}

/// Initialize a new environment in an empty (or missing) data directory.
pub async fn init(config: &Config, clock: SharedClock) -> Result<InitReport> {
    let dir = &config.data_dir;
    if is_initialized(config) {
        return Err(Error::Conflict(format!(
            "{} already holds a CareVault environment",
            dir.display()
        )));
    }
    if dir.exists()
        && fs::read_dir(dir)
            .map_err(|e| io("cannot read the data directory", &e))?
            .next()
            .is_some()
    {
        return Err(Error::Conflict(format!(
            "{} is not empty and holds no CareVault environment; choose an empty directory",
            dir.display()
        )));
    }
    let tier = config.environment_tier.unwrap_or_default();
    check_tier(config, tier)?;
    fs::create_dir_all(dir).map_err(|e| io("cannot create the data directory", &e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| io("cannot restrict the data directory", &e))?;

    let environment_id = format!("env-{}", uuid::Uuid::new_v4());
    let store = open_store(config).await?;
    if store.meta("environment_id").await?.is_some() {
        return Err(Error::Conflict(
            "the database already holds a CareVault environment; to add a node, copy that \
             environment's data directory (environment.json, keys/, tls/) instead of running init"
                .into(),
        ));
    }
    if config.key_provider != crate::config::KeyProviderConfig::File {
        // The keyring's state file and shred list live here whatever the provider.
        fs::create_dir_all(config.keys_dir())
            .map_err(|e| io("cannot create the key directory", &e))?;
        fs::set_permissions(config.keys_dir(), fs::Permissions::from_mode(0o700))
            .map_err(|e| io("cannot restrict the key directory", &e))?;
    }
    let provider = config.key_provider(true)?;
    store
        .write(vec![
            WriteOp::SetMeta {
                key: "environment_id".into(),
                value: environment_id.clone(),
            },
            WriteOp::SetMeta {
                key: TIER_META.into(),
                value: tier.as_str().into(),
            },
        ])
        .await?;

    let tls_fingerprint = if config.plain_http || config.tls_cert.exists() {
        None
    } else {
        Some(crate::certificate::generate_self_signed(
            config,
            clock.now_secs(),
        )?)
    };

    let keyring = Arc::new(
        Keyring::new(
            environment_id.clone(),
            provider,
            store.clone(),
            clock.clone(),
        )
        .with_state_dir(&config.keys_dir())?,
    );
    let audit =
        Arc::new(Audit::open(store.clone(), &keyring, &config.node_id, clock.clone()).await?);
    AuditScope::local(audit.clone(), AuditAction::EnvironmentInit)
        .finish(200)
        .await?;
    let identity = Identity::new(config, store, keyring, clock.clone())?;
    let admin = identity
        .create_user(
            &AuditScope::local(audit.clone(), AuditAction::UserCreate),
            BOOTSTRAP_ADMIN,
            &["admin".to_owned()],
            None,
        )
        .await?;
    audit.checkpoint(true, None).await?;

    // Written last: a crash before this point leaves a directory `init` can be rerun on after
    // emptying it, never a half-made environment that `serve` would open.
    let file = EnvironmentFile {
        environment_id: environment_id.clone(),
        created_at: crate::clock::fhir_instant(clock.now_us()),
        tier: Some(tier.as_str().to_owned()),
    };
    write_private(
        &dir.join(ENVIRONMENT_FILE),
        &serde_json::to_vec_pretty(&file).map_err(|e| Error::Internal(e.to_string()))?,
    )?;
    Ok(InitReport {
        environment_id,
        tier,
        tls_fingerprint,
        admin,
        audit_public_key: audit.public_key(),
    })
}

/// Open an initialized environment.
pub async fn open(config: &Config, clock: SharedClock) -> Result<Environment> {
    let dir = &config.data_dir;
    let text = fs::read(dir.join(ENVIRONMENT_FILE)).map_err(|_| {
        Error::Unavailable(format!(
            "{} holds no CareVault environment; run `carevault init` or `carevault serve` on an empty directory",
            dir.display()
        ))
    })?;
    let file: EnvironmentFile = serde_json::from_slice(&text)
        .map_err(|_| Error::Unavailable(format!("{ENVIRONMENT_FILE} is damaged")))?;
    let meta = fs::metadata(dir).map_err(|e| io("cannot read the data directory", &e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Unavailable(format!(
            "{} is accessible to other users; it must be mode 0700",
            dir.display()
        )));
    }
    let provider = config.key_provider(false)?;
    let store = open_store(config).await?;
    match store.meta("environment_id").await? {
        Some(id) if id == file.environment_id => {}
        _ => {
            return Err(Error::Unavailable(
                "the database belongs to another environment than this data directory".into(),
            ));
        }
    }
    let tier = stored_tier(&*store).await?;
    if let Some(asked) = config.environment_tier
        && asked != tier
    {
        return Err(Error::Conflict(format!(
            "environment.tier is fixed when an environment is made: this one is {}, not {}; \
             remove the setting or set it to {}",
            tier.as_str(),
            asked.as_str(),
            tier.as_str()
        )));
    }
    check_tier(config, tier)?;
    let keyring = Arc::new(
        Keyring::new(file.environment_id.clone(), provider, store.clone(), clock)
            .with_state_dir(&config.keys_dir())?,
    );
    // The shred list lives in the keyring: a database restored from before a shred loses the
    // shredded compartments again before anything can read them.
    let reapplied = keyring.reapply_shreds().await?;
    if reapplied > 0 {
        tracing::warn!(
            event = "shreds_reapplied",
            compartments = reapplied,
            "the database held data of shredded patients (restored from an earlier copy?); shredded again"
        );
    }
    // Data written before compartments came from the CompartmentDefinition is filed by it
    // before anything can read it.
    crate::compartment_upgrade::run(&*store, &keyring).await?;
    // Data indexed with other search parameter definitions is indexed again before a search can
    // miss it.
    crate::index_upgrade::run(&*store, &keyring).await?;
    Ok(Environment {
        id: file.environment_id,
        tier,
        store,
        keyring,
    })
}

/// The tier the environment was made with (development for one made before tiers existed).
pub async fn stored_tier(store: &dyn Store) -> Result<Tier> {
    match store.meta(TIER_META).await? {
        None => Ok(Tier::Development),
        Some(t) => Tier::parse(&t)
            .ok_or_else(|| Error::Integrity("the stored environment tier is unknown".into())),
    }
}

/// What a production environment refuses: plain HTTP, and KEK files not sealed under a
/// passphrase.
pub fn check_tier(config: &Config, tier: Tier) -> Result<()> {
    if tier != Tier::Production {
        return Ok(());
    }
    if config.plain_http {
        return Err(Error::Conflict(
            "a production environment refuses allow_plain_http: serve TLS".into(),
        ));
    }
    if config.key_provider == KeyProviderConfig::File && config.key_passphrase_file.is_none() {
        return Err(Error::Conflict(
            "a production environment refuses the file key provider without a passphrase: set \
             key.passphrase_file, or use key.provider = \"pkcs11\""
                .into(),
        ));
    }
    Ok(())
}

/// The exclusive lock a server holds on its data directory while it runs, so that a second
/// server on the same directory (two writers of one audit chain) refuses to start. An advisory
/// `flock` on the directory itself: no file to leave behind, and the kernel releases it when
/// the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _dir: fs::File,
}

impl DataDirLock {
    /// Take the lock on `dir` (which must exist), or say which directory is in use.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let handle = fs::File::open(dir).map_err(|e| io("cannot open the data directory", &e))?;
        match handle.try_lock() {
            Ok(()) => Ok(Self { _dir: handle }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Conflict(format!(
                "another CareVault server is already running on the data directory {}; stop it \
                 first, or give this one its own --data-dir",
                dir.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(io("cannot lock the data directory", &e)),
        }
    }
}

/// Open (and migrate) the configured database: SQLite in the data directory, or PostgreSQL.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(match &config.database {
        Database::Sqlite => Arc::new(SqliteStore::open(&config.db_path())?),
        Database::Postgres(pg) => {
            let store = PostgresStore::connect(&pg.options()).await?;
            tracing::info!(
                event = "database_opened",
                backend = "postgres",
                target = store.target()
            );
            Arc::new(store)
        }
    })
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    carevault_crypto::write_private_new(path, bytes)
        .map_err(|e| io("cannot write a file in the data directory", &e))
}

fn io(what: &str, e: &std::io::Error) -> Error {
    Error::Unavailable(format!("{what}: {}", e.kind()))
}
