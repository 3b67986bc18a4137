//! CareVault's backups: one age-encrypted file holds everything a restore needs except the
//! secret that opens it (an age identity or passphrase) and, when the keys are sealed or held
//! in an HSM, the KEK passphrase or the HSM itself.
//!
//! Inside the age stream (`archive`): a magic line, the manifest (environment, schema, node,
//! time, counts, audit heads, the SHA-256 and size of every part), then the parts: the database
//! snapshot (`database.sqlite`, or `database.pgdump` from `pg_dump --snapshot`),
//! `environment.json`, the KEK files as stored (`keys/kek-vN.key`, sealed under the KEK
//! passphrase when one is configured; none for an HSM, whose versions the manifest lists) and
//! the keyring state (`keys/keyring.json`: versions, minimum version, shred list).
//!
//! `create` writes to a temporary file beside the target and renames it only when complete.
//! `verify` and `restore` unpack into a staging directory, check every hash and the manifest
//! before anything reaches the target, then open every resource version with the restored
//! keys and verify the audit trail.
#![forbid(unsafe_code)]

mod archive;
mod create;
mod manifest;
pub mod offsite;
mod restore;
pub mod schedule;

pub use archive::{Decryption, Encryption};
pub use create::{CreateReport, create};
pub use manifest::{Manifest, Part};
pub use restore::{RestoreOptions, VerifyReport, restore, verify};

/// Why a backup could not be made, read, verified or restored. Messages name the problem and
/// what to do; they never carry key material or record content.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "cannot decrypt the backup: the age identity or passphrase given does not open it (wrong identity or passphrase?)"
    )]
    WrongKey,
    #[error("the backup file is damaged or incomplete: {0}")]
    Damaged(String),
    #[error(
        "the backup belongs to environment {backup}, but {target} belongs to environment {live}; use the backup of that environment"
    )]
    OtherEnvironment {
        backup: String,
        live: String,
        target: String,
    },
    #[error(
        "the backup was made by a newer CareVault (schema {found}; this binary knows up to {supported}); restore it with that version or newer"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("{0}")]
    Target(String),
    #[error("{0}")]
    Usage(String),
    #[error("verification failed: {0}")]
    Check(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] carevault_server::Error),
    #[error(transparent)]
    Store(#[from] carevault_store::StoreError),
}

pub type Result<T> = std::result::Result<T, BackupError>;

/// A new staging directory under `parent` (the system's temporary directory when None), mode
/// 0700 whatever the umask: it holds the database and key files.
pub(crate) fn staging_dir(
    prefix: &str,
    parent: Option<&std::path::Path>,
) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700));
    let dir = match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .map_err(io("cannot create a staging directory"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot restrict the staging directory"))?;
    Ok(dir)
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}
