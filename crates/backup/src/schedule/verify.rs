//! Scheduled verification of the newest local backup (`backup.verify_schedule`), as far as the
//! server can go without a secret it must not hold:
//!
//! - `full`: backups under `backup.passphrase_file` on SQLite: exactly `carevault backup
//!   verify` (decrypt, every hash, restore into a scratch directory, open every resource version
//!   with the restored keys, verify the audit trail, compare the counts).
//! - `archive`: passphrase backups on PostgreSQL: decrypt and check the manifest and every
//!   part's hash (a restore would need a scratch database, which the server does not have).
//! - `integrity`: backups to age recipients: the recipients' private keys are never on the
//!   server (that is their point), so it checks what it can without them: the age header is
//!   readable and for recipients, and the whole file's SHA-256 is the one recorded when it was
//!   written (a flipped bit on disk, a truncated copy, a replaced file). A full verification of
//!   such backups runs elsewhere: `carevault backup verify` on a verification host that holds
//!   the identity (docs/backups.md).
//!
//! The passphrase and recipient cases are the configuration's, not a choice made here.

use std::io::BufReader;
use std::path::Path;

use carevault_server::SharedClock;
use carevault_server::config::{Config, Database};

use crate::archive::{Decryption, Encryption, hash_file};
use crate::{BackupError, Result};

/// How far a scheduled verification went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Full,
    Archive,
    Integrity,
}

impl Level {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Archive => "archive",
            Self::Integrity => "integrity",
        }
    }
}

/// The level this configuration allows.
pub fn level(config: &Config, enc: &Encryption) -> Level {
    match (enc, &config.database) {
        (Encryption::Recipients(_), _) => Level::Integrity,
        (Encryption::Passphrase(_), Database::Postgres(_)) => Level::Archive,
        (Encryption::Passphrase(_), _) => Level::Full,
    }
}

/// Verify `file` at `level`; `sha256` is the file's hash recorded when it was written (None
/// when the status file does not know this file).
pub async fn verify_file(
    config: &Config,
    enc: &Encryption,
    file: &Path,
    sha256: Option<&str>,
    clock: SharedClock,
) -> Result<Level> {
    let level = level(config, enc);
    if let Some(want) = sha256 {
        let path = file.to_path_buf();
        let (_, have) = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|_| BackupError::Check("the hashing task failed".into()))??;
        if have != want {
            return Err(BackupError::Check(
                "the file's SHA-256 is not the one recorded when it was written (altered or damaged on disk)".into(),
            ));
        }
    } else if level == Level::Integrity {
        return Err(BackupError::Check(
            "no SHA-256 was recorded for this backup (the status file was lost?); run `carevault backup verify` with the identity".into(),
        ));
    }
    match enc {
        Encryption::Recipients(_) => {
            let path = file.to_path_buf();
            tokio::task::spawn_blocking(move || age_header(&path))
                .await
                .map_err(|_| BackupError::Check("the header check failed".into()))??;
        }
        Encryption::Passphrase(p) => {
            let dec = Decryption::Passphrase(p.clone());
            if level == Level::Full {
                crate::verify(config, file, &dec, None, clock).await?;
            } else {
                let path = file.to_path_buf();
                tokio::task::spawn_blocking(move || crate::restore::check_archive(&path, &dec))
                    .await
                    .map_err(|_| BackupError::Check("the archive check failed".into()))??;
            }
        }
    }
    Ok(level)
}

/// The file starts with a readable age header for X25519 recipients.
fn age_header(file: &Path) -> Result<()> {
    let f =
        std::fs::File::open(file).map_err(crate::io(format!("cannot read {}", file.display())))?;
    let d = age::Decryptor::new_buffered(BufReader::new(f))
        .map_err(|_| BackupError::Damaged("no valid age header".into()))?;
    if d.is_scrypt() {
        return Err(BackupError::Check(
            "the backup is passphrase-encrypted, but backup.recipients is set".into(),
        ));
    }
    Ok(())
}
