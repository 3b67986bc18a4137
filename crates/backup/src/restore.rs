//! `backup verify` and `backup restore`: unpack into a staging directory (every hash and the
//! manifest checked before anything reaches the target), compare the database with the
//! manifest, open the environment with the restored keys, open every resource version and
//! verify the audit trail. A restore then moves the staged environment into place.

use std::fs;
use std::path::{Path, PathBuf};

use carevault_server::SharedClock;
use carevault_server::audit::Audit;
use carevault_server::config::{Config, Database, PostgresConfig};
use carevault_server::environment::{self, EnvironmentFile};
use carevault_server::keyring::{KeyringFile, ShredRecord};
use carevault_store::{
    POSTGRES_SCHEMA_VERSION, PostgresOptions, PostgresStore, SQLITE_SCHEMA_VERSION, SnapshotFacts,
    redact_url,
};

use crate::archive::{Decryption, read};
use crate::manifest::{DATABASE_PG, DATABASE_SQLITE, ENVIRONMENT, KEYRING, Manifest};
use crate::{BackupError, Result, io};

/// What a verification (or the check after a restore) found.
pub struct VerifyReport {
    pub manifest: Manifest,
    pub versions_opened: u64,
    /// Per node: events, checkpoints, signed up to.
    pub audit: Vec<carevault_audit::NodeReport>,
}

#[derive(Default)]
pub struct RestoreOptions {
    /// The live environment's data directory: its shred list is applied to the restore, so
    /// shreds recorded after the backup are not undone (and it must be the same environment).
    pub live_data_dir: Option<PathBuf>,
}

/// `url` without its password, and the password (percent-decoded). A URL that does not parse
/// is returned as it is (the tool then says what is wrong with it).
fn without_password(url: &str) -> (String, Option<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_owned(), None);
    };
    let Some(password) = parsed.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    }) else {
        return (url.to_owned(), None);
    };
    if parsed.set_password(None).is_err() {
        return (url.to_owned(), None);
    }
    (parsed.to_string(), Some(password))
}

/// Run `pg_dump`/`pg_restore` on the database of `options` (password through `PGPASSWORD`).
pub(crate) async fn pg_tool(
    program: &str,
    options: &PostgresOptions,
    args: impl FnOnce(&mut tokio::process::Command),
) -> Result<()> {
    let mut cmd = tokio::process::Command::new(program);
    args(&mut cmd);
    // A password never goes on a command line (any local user can read it in /proc): it is
    // taken out of the URL and given through the environment.
    let (url, url_password) = without_password(&options.url);
    cmd.arg("--dbname").arg(url);
    if let Some(pw) = options.password.clone().or(url_password) {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().await.map_err(|e| {
        BackupError::Usage(format!(
            "cannot run {program} ({}); install the PostgreSQL client tools of the server's version",
            e.kind()
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(BackupError::Target(format!(
        "{program} failed on {}: {}",
        redact_url(&options.url),
        last.chars().take(300).collect::<String>()
    )))
}

/// The PostgreSQL database a configuration names (None: SQLite in the data directory).
pub(crate) fn postgres(config: &Config) -> Option<PostgresOptions> {
    match &config.database {
        Database::Postgres(pg) => Some(pg.options()),
        _ => None,
    }
}

fn supported_schema(m: &Manifest) -> i64 {
    if m.backend == "postgres" {
        POSTGRES_SCHEMA_VERSION
    } else {
        SQLITE_SCHEMA_VERSION
    }
}

/// Compare a restored database with what the manifest says the snapshot held.
fn compare(restored: &SnapshotFacts, manifest: &Manifest) -> Result<()> {
    let m = &manifest.database;
    let mut differ = Vec::new();
    if restored.environment_id != m.environment_id {
        differ.push("environment id".to_owned());
    }
    if restored.schema_version != m.schema_version {
        differ.push("schema version".to_owned());
    }
    if restored.resources != m.resources {
        differ.push("resources per type".to_owned());
    }
    for (what, a, b) in [
        ("resource versions", restored.versions, m.versions),
        ("data keys", restored.data_keys, m.data_keys),
        ("audit events", restored.audit_events, m.audit_events),
    ] {
        if a != b {
            differ.push(format!("{what} ({a}, manifest {b})"));
        }
    }
    if restored.audit_heads != m.audit_heads || restored.checkpoints != m.checkpoints {
        differ.push("audit heads or checkpoints".to_owned());
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(BackupError::Check(format!(
            "the restored database differs from the manifest: {}",
            differ.join(", ")
        )))
    }
}

/// Unpack `file` into `stage`, refusing it (before any part is written) when `check` does.
fn unpack(
    file: &Path,
    dec: &Decryption,
    stage: &Path,
    check: impl FnOnce(&Manifest) -> Result<()>,
) -> Result<Manifest> {
    read(file, dec, stage, |m| {
        m.check_readable(supported_schema(m))?;
        check(m)
    })
}

/// Decrypt `file` and check its manifest and every part against its hash, without restoring
/// it (the staging copy is discarded).
pub(crate) fn check_archive(file: &Path, dec: &Decryption) -> Result<Manifest> {
    let staging = crate::staging_dir("carevault-verify-", None)?;
    unpack(file, dec, staging.path(), |_| Ok(()))
}

/// Put the database part in place: SQLite becomes `carevault.db` (facts compared); PostgreSQL
/// is loaded into `target` (an empty database) with `pg_restore`, then compared.
async fn load_database(
    stage: &Path,
    manifest: &Manifest,
    target: Option<&PostgresOptions>,
) -> Result<()> {
    match target {
        None => {
            let db = stage.join("carevault.db");
            fs::rename(stage.join(DATABASE_SQLITE), &db)
                .map_err(io("cannot stage the database"))?;
            let facts = tokio::task::spawn_blocking(move || carevault_store::sqlite_facts(&db))
                .await
                .map_err(|_| BackupError::Check("the database check failed".into()))??;
            compare(&facts, manifest)
        }
        Some(options) => {
            let dump = stage.join(DATABASE_PG);
            pg_tool("pg_restore", options, |cmd| {
                cmd.args([
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "--single-transaction",
                ])
                .arg(&dump);
            })
            .await?;
            let _ = fs::remove_file(&dump);
            let store = PostgresStore::connect_existing(options).await?;
            compare(&store.facts().await?, manifest)
        }
    }
}

/// An empty PostgreSQL database (no table, view or sequence in any schema), or a clear
/// refusal naming what it holds.
async fn empty_database(options: &PostgresOptions) -> Result<()> {
    let store = PostgresStore::connect_unmigrated(options)?;
    let relations = store.relation_count().await?;
    if relations > 0 {
        return Err(BackupError::Target(format!(
            "the database {} is not empty ({relations} tables, views or sequences); restore onto a new, empty database",
            redact_url(&options.url)
        )));
    }
    Ok(())
}

/// Load the database into `target` and check the whole environment; on PostgreSQL, a failure
/// after `pg_restore` committed drops what it created (the database was empty before), so a
/// failed restore or verification leaves the database as empty as it found it.
async fn load_and_check(
    config: &Config,
    stage: &Path,
    manifest: Manifest,
    target: Option<&PostgresOptions>,
    clock: SharedClock,
) -> Result<VerifyReport> {
    let result = async {
        load_database(stage, &manifest, target).await?;
        let mut staged = config.clone();
        staged.data_dir = stage.to_path_buf();
        open_and_check(&staged, manifest, clock).await
    }
    .await;
    let Some(options) = target else {
        return result;
    };
    match result {
        Ok(report) => Ok(report),
        Err(e) => {
            let undone = match PostgresStore::connect_unmigrated(options) {
                Ok(store) => store.drop_restored_relations().await,
                Err(err) => Err(err),
            };
            match undone {
                Ok(()) => Err(e),
                Err(_) => Err(BackupError::Target(format!(
                    "{e}; and what the restore wrote to {} could not be dropped: drop and create that database before trying again",
                    redact_url(&options.url)
                ))),
            }
        }
    }
}

/// Open the staged environment with its restored keys and check it whole.
async fn open_and_check(
    config: &Config,
    manifest: Manifest,
    clock: SharedClock,
) -> Result<VerifyReport> {
    let env = environment::open(config, clock.clone()).await?;
    let audit = Audit::open(env.store.clone(), &env.keyring, &config.node_id, clock).await?;
    if audit.public_key() != manifest.audit_public_key {
        return Err(BackupError::Check(
            "the restored keys do not hold the audit signing key the manifest names".into(),
        ));
    }
    let (mut after, mut opened, mut failed) = (0i64, 0u64, 0u64);
    loop {
        let page = env.store.versions_after(after, 1000).await?;
        for e in &page {
            after = e.seq;
            if e.row.deleted {
                continue;
            }
            let aad = env
                .keyring
                .resource_aad(&e.row.rtype, &e.row.id, e.row.version);
            match env.keyring.open(&aad, &e.row.body).await {
                Ok(_) => opened += 1,
                Err(_) => failed += 1,
            }
        }
        if page.len() < 1000 {
            break;
        }
    }
    if failed > 0 {
        return Err(BackupError::Check(format!(
            "{failed} resource versions do not open with the restored keys"
        )));
    }
    let key = carevault_audit::parse_public_key(&manifest.audit_public_key)
        .map_err(|_| BackupError::Damaged("the manifest's audit public key is invalid".into()))?;
    let report =
        carevault_store::verify_audit_trail(&*env.store, key, carevault_store::TrailScope::Whole)
            .await?
            .map_err(|b| BackupError::Check(format!("the audit trail is broken: {b}")))?;
    Ok(VerifyReport {
        manifest,
        versions_opened: opened,
        audit: report.nodes,
    })
}

/// Decrypt, check and restore `file` into a scratch environment (a temporary directory, and
/// for a PostgreSQL backup the empty database `scratch_database`), then discard it.
pub async fn verify(
    config: &Config,
    file: &Path,
    dec: &Decryption,
    scratch_database: Option<PostgresConfig>,
    clock: SharedClock,
) -> Result<VerifyReport> {
    if let Some(pg) = &scratch_database {
        empty_database(&pg.options()).await?;
    }
    let staging = crate::staging_dir("carevault-verify-", None)?;
    let stage = staging.path();
    let manifest = unpack(file, dec, stage, |m| {
        if m.backend == "postgres" && scratch_database.is_none() {
            return Err(BackupError::Usage(
                "this backup holds a PostgreSQL database: give --scratch-database URL (an empty database) to restore it into".into(),
            ));
        }
        Ok(())
    })?;
    let mut scratch = config.clone();
    scratch.data_dir = stage.to_path_buf();
    scratch.database = match scratch_database {
        Some(pg) if manifest.backend == "postgres" => Database::Postgres(pg),
        _ => Database::Sqlite,
    };
    let target = postgres(&scratch);
    let report = load_and_check(&scratch, stage, manifest, target.as_ref(), clock).await?;
    // The scratch database is scratch: emptied again, ready for the next verification.
    if let Some(options) = &target {
        PostgresStore::connect_unmigrated(options)?
            .drop_restored_relations()
            .await?;
    }
    Ok(report)
}

/// Restore `file` as a new node: into `config.data_dir` (which must be empty or absent) and,
/// on PostgreSQL, into the configured database (which must be empty). Nothing reaches the
/// target before the file has decrypted and every part matched its hash.
pub async fn restore(
    config: &Config,
    file: &Path,
    dec: &Decryption,
    options: &RestoreOptions,
    clock: SharedClock,
) -> Result<VerifyReport> {
    let dir = &config.data_dir;
    if dir.exists()
        && fs::read_dir(dir)
            .map_err(io(format!("cannot read {}", dir.display())))?
            .next()
            .is_some()
    {
        return Err(BackupError::Target(format!(
            "{} is not empty; restore into a new, empty directory",
            dir.display()
        )));
    }
    let target = postgres(config);
    if let Some(t) = &target {
        empty_database(t).await?;
    }
    let live = options
        .live_data_dir
        .as_deref()
        .map(live_state)
        .transpose()?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(format!("cannot create {}", parent.display())))?;
    let staging = crate::staging_dir(".carevault-restore-", Some(&parent))?;
    let stage = staging.path();
    let manifest = unpack(file, dec, stage, |m| {
        match (m.backend.as_str(), target.is_some()) {
            ("postgres", false) => {
                return Err(BackupError::Usage(
                    "this backup holds a PostgreSQL database; configure database.url (an empty database) to restore it".into(),
                ));
            }
            ("sqlite", true) => {
                return Err(BackupError::Usage(
                    "this backup holds a SQLite database; restore it without database.url, then `carevault migrate sqlite-to-postgres`".into(),
                ));
            }
            _ => {}
        }
        if let Some((live_dir, live_id, _)) = &live
            && *live_id != m.environment_id
        {
            return Err(BackupError::OtherEnvironment {
                backup: m.environment_id.clone(),
                live: live_id.clone(),
                target: live_dir.display().to_string(),
            });
        }
        Ok(())
    })?;
    if let Some((_, _, shreds)) = &live {
        merge_shreds(&stage.join(KEYRING), shreds)?;
    }
    let now_secs = clock.now_secs();
    let report = load_and_check(config, stage, manifest, target.as_ref(), clock).await?;
    let stage = staging.keep();
    if dir.exists() {
        fs::remove_dir(dir).map_err(io(format!("cannot replace {}", dir.display())))?;
    }
    fs::rename(&stage, dir).map_err(io(format!(
        "cannot move the restore into {}",
        dir.display()
    )))?;
    if !config.plain_http && !config.tls_cert.exists() {
        carevault_server::certificate::generate_self_signed(config, now_secs)?;
    }
    Ok(report)
}

/// The live environment's data directory: its id and shred list.
fn live_state(dir: &Path) -> Result<(PathBuf, String, Vec<ShredRecord>)> {
    fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| BackupError::Usage(format!("{} is damaged", path.display())))
    }
    let env: EnvironmentFile = read(dir, ENVIRONMENT)?;
    let keyring: KeyringFile = read(dir, KEYRING)?;
    Ok((dir.to_path_buf(), env.environment_id, keyring.shredded))
}

/// Add the live environment's shreds to the restored keyring state (each compartment once);
/// the first open applies them before anything can read the data.
fn merge_shreds(keyring: &Path, live: &[ShredRecord]) -> Result<()> {
    let bytes = fs::read(keyring).map_err(io("cannot read the restored keyring"))?;
    let mut state: KeyringFile = serde_json::from_slice(&bytes)
        .map_err(|_| BackupError::Damaged("keys/keyring.json is not readable".into()))?;
    for s in live {
        if !state
            .shredded
            .iter()
            .any(|have| have.compartment == s.compartment)
        {
            state.shredded.push(s.clone());
        }
    }
    let bytes = serde_json::to_vec_pretty(&state)
        .map_err(|_| BackupError::Damaged("keys/keyring.json is not readable".into()))?;
    carevault_crypto::write_private_atomic(keyring, &bytes)
        .map_err(io("cannot write the restored keyring"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_password_is_taken_out_of_the_url_for_the_command_line() {
        // Built at run time: a literal URL with a password is what the secrets check refuses.
        let with_password = format!(
            "postgres://carevault:{}@db.example:5432/cv?sslmode=verify-full",
            "s%40cret-CANARY"
        );
        let (url, pw) = super::without_password(&with_password);
        assert_eq!(
            url,
            "postgres://carevault@db.example:5432/cv?sslmode=verify-full"
        );
        assert_eq!(pw.as_deref(), Some("s@cret-CANARY"));
        let (url, pw) = super::without_password("postgres://carevault@db.example/cv");
        assert_eq!(url, "postgres://carevault@db.example/cv");
        assert_eq!(pw, None);
    }
    use super::*;

    #[test]
    fn live_shreds_are_added_once_and_the_rest_of_the_state_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let shred = |c: &str, id: u64| {
            serde_json::json!({"compartment": c, "data_key_id": id, "at_us": 5,
                "requested_by": "admin", "approved_by": "admin2"})
        };
        let restored = serde_json::json!({
            "versions": [{"version": 1, "created_at_us": 1, "destroyed_at_us": null}],
            "min_decrypt_version": 1,
            "shredded": [shred("Patient/a", 3)]
        });
        std::fs::write(&path, serde_json::to_vec(&restored).unwrap()).unwrap();
        let live: Vec<ShredRecord> = serde_json::from_value(serde_json::json!([
            shred("Patient/a", 3),
            shred("Patient/b", 9)
        ]))
        .unwrap();
        merge_shreds(&path, &live).unwrap();
        let merged: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let list = merged["shredded"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1]["compartment"], "Patient/b");
        assert_eq!(merged["versions"], restored["versions"]);
    }
}
