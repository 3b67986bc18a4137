//! `backup create`: an online snapshot of the database (a server may be serving), the key
//! material as stored, the keyring state and a manifest, encrypted into one file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use carevault_server::audit::Audit;
use carevault_server::config::{Config, Database, KeyProviderConfig};
use carevault_server::environment::EnvironmentFile;
use carevault_server::keyring::{Keyring, KeyringFile};
use carevault_server::{SharedClock, clock};
use carevault_store::{PostgresStore, SnapshotFacts, SqliteStore, Store};

use crate::archive::{Encryption, hash_file, write};
use crate::manifest::{DATABASE_PG, DATABASE_SQLITE, ENVIRONMENT, FORMAT, KEYRING, Manifest, Part};
use crate::{BackupError, Result, io};

pub struct CreateReport {
    pub path: PathBuf,
    pub size: u64,
    /// The finished file's SHA-256 (hex).
    pub sha256: String,
    pub manifest: Manifest,
}

/// Back up the environment `config` describes into the new file `out`.
pub async fn create(
    config: &Config,
    out: &Path,
    enc: &Encryption,
    clock: SharedClock,
) -> Result<CreateReport> {
    let env_file = config.data_dir.join(ENVIRONMENT);
    let env_json = fs::read(&env_file).map_err(|_| {
        BackupError::Usage(format!(
            "{} holds no CareVault environment (no {ENVIRONMENT}); point --data-dir or --config at the environment to back up",
            config.data_dir.display()
        ))
    })?;
    let environment_id = serde_json::from_slice::<EnvironmentFile>(&env_json)
        .map_err(|_| BackupError::Usage(format!("{ENVIRONMENT} is damaged")))?
        .environment_id;
    // Staged beside the database, under the data directory's protection (0700).
    let staging = crate::staging_dir(".backup-", Some(&config.data_dir))?;
    let stage = staging.path();
    let created_at = clock::fhir_instant(clock.now_us());
    // KEK files read before and after the snapshot: a version created during it (a rotation)
    // or destroyed during it is still in the backup.
    let mut keks = kek_files(&config.keys_dir())?;
    let (backend, facts) = snapshot(config, stage).await?;
    for (name, bytes) in kek_files(&config.keys_dir())? {
        keks.entry(name).or_insert(bytes);
    }
    if facts.environment_id != environment_id {
        return Err(BackupError::Usage(
            "the database belongs to another environment than the data directory".into(),
        ));
    }
    // The keyring state after the snapshot: every shred whose deletion the snapshot holds is
    // in its list (a shred records itself before it deletes).
    let keyring_json = fs::read(config.keys_dir().join("keyring.json"))
        .map_err(io("cannot read keys/keyring.json"))?;
    let keyring: KeyringFile = serde_json::from_slice(&keyring_json)
        .map_err(|_| BackupError::Usage("keys/keyring.json is damaged".into()))?;
    let kek_versions = kek_versions(&keyring);
    fs::write(stage.join(ENVIRONMENT), &env_json).map_err(io("cannot stage environment.json"))?;
    fs::create_dir(stage.join("keys")).map_err(io("cannot stage the keys"))?;
    carevault_crypto::write_private_new(&stage.join(KEYRING), &keyring_json)
        .map_err(io("cannot stage the keyring"))?;
    let mut names = vec![
        if backend == "postgres" {
            DATABASE_PG
        } else {
            DATABASE_SQLITE
        }
        .to_owned(),
        ENVIRONMENT.to_owned(),
        KEYRING.to_owned(),
    ];
    for (name, bytes) in &keks {
        let part = format!("keys/{name}");
        carevault_crypto::write_private_new(&stage.join(&part), bytes)
            .map_err(io("cannot stage a key file"))?;
        names.push(part);
    }
    let mut parts = Vec::new();
    for name in names {
        let (size, sha256) = hash_file(&stage.join(&name))?;
        parts.push(Part { name, size, sha256 });
    }
    let hsm = config.key_provider != KeyProviderConfig::File;
    let manifest = Manifest {
        format: FORMAT,
        environment_id,
        backend: backend.to_owned(),
        node: config.node_id.to_string(),
        created_at,
        carevault_version: env!("CARGO_PKG_VERSION").to_owned(),
        key_provider: if hsm { "pkcs11" } else { "file" }.to_owned(),
        hsm_kek_versions: if hsm {
            kek_versions.clone()
        } else {
            Vec::new()
        },
        kek_versions,
        audit_public_key: audit_public_key(config, stage, backend, &facts, clock).await?,
        database: facts,
        parts,
    };
    let out_enc = out.to_path_buf();
    let (size, sha256) = write(&out_enc, &manifest, stage, enc)?;
    Ok(CreateReport {
        path: out_enc,
        size,
        sha256,
        manifest,
    })
}

/// Snapshot the database into `stage`: SQLite by `VACUUM INTO`, PostgreSQL by `pg_dump` on one
/// exported `REPEATABLE READ` snapshot.
async fn snapshot(config: &Config, stage: &Path) -> Result<(&'static str, SnapshotFacts)> {
    match &config.database {
        Database::Postgres(pg) => {
            let options = pg.options();
            let store = PostgresStore::connect_existing(&options).await?;
            let out = stage.join(DATABASE_PG);
            let opts = &options;
            let (facts, dumped) = store
                .snapshot(move |id| {
                    crate::restore::pg_tool("pg_dump", opts, move |cmd| {
                        cmd.args(["--format=custom", "--no-owner", "--no-privileges"])
                            .arg(format!("--snapshot={id}"))
                            .arg("--file")
                            .arg(out);
                    })
                })
                .await?;
            dumped?;
            Ok(("postgres", facts))
        }
        _ => {
            let (live, out) = (config.db_path(), stage.join(DATABASE_SQLITE));
            let facts =
                tokio::task::spawn_blocking(move || carevault_store::sqlite_snapshot(&live, &out))
                    .await
                    .map_err(|_| BackupError::Usage("the snapshot task failed".into()))??;
            Ok(("sqlite", facts))
        }
    }
}

/// `kek-vN.key` files of the key directory (none with an HSM), by name.
fn kek_files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(io("cannot read the key directory"))?;
    for entry in entries {
        let entry = entry.map_err(io("cannot read the key directory"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("kek-v") && name.ends_with(".key") {
            match fs::read(entry.path()) {
                Ok(bytes) => {
                    out.insert(name, bytes);
                }
                // Destroyed between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot read a key file")(e)),
            }
        }
    }
    Ok(out)
}

/// The KEK versions the keyring state names (not destroyed, at or above the minimum).
fn kek_versions(keyring: &KeyringFile) -> Vec<u32> {
    keyring
        .versions
        .iter()
        .filter(|m| m.destroyed_at_us.is_none())
        .map(|m| m.version)
        .filter(|n| *n >= keyring.min_decrypt_version.max(1))
        .collect()
}

/// The key that verifies the snapshot's checkpoints, from its own audit signing key (opened
/// with the environment's KEKs, read-only).
async fn audit_public_key(
    config: &Config,
    stage: &Path,
    backend: &str,
    facts: &SnapshotFacts,
    clock: SharedClock,
) -> Result<String> {
    let store: std::sync::Arc<dyn Store> = if backend == "sqlite" {
        std::sync::Arc::new(SqliteStore::open_read_only(&stage.join(DATABASE_SQLITE))?)
    } else {
        let Database::Postgres(pg) = &config.database else {
            return Err(BackupError::Usage(
                "no PostgreSQL database configured".into(),
            ));
        };
        std::sync::Arc::new(PostgresStore::connect_existing(&pg.options()).await?)
    };
    let provider = config
        .key_provider(false)
        .map_err(|e| BackupError::Server(e.into()))?;
    let keyring = Keyring::new(
        facts.environment_id.clone(),
        provider,
        store.clone(),
        clock.clone(),
    );
    let audit = Audit::open(store, &keyring, &config.node_id, clock).await?;
    Ok(audit.public_key())
}
