//! The keyring's own state file, `keys/keyring.json` (mode 0600, beside the KEKs): KEK versions,
//! the minimum decryption version and the crypto-shred list.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Keyring, ShredRecord};
use crate::error::{Error, Result};

const STATE_FILE: &str = "keyring.json";

/// `keys/keyring.json`. Public so that the backups read and merge it through this one type
/// (a change of the file is a change of this struct, which they see at compile time).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringFile {
    pub versions: Vec<KekVersionMeta>,
    /// Unwrapping under an older KEK version is refused.
    pub min_decrypt_version: u32,
    pub shredded: Vec<ShredRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekVersionMeta {
    pub version: u32,
    pub created_at_us: i64,
    pub destroyed_at_us: Option<i64>,
}

impl Keyring {
    /// Keep the keyring's state in `dir/keyring.json` (created on first use). Versions the
    /// provider holds but the file does not know are recorded as created now.
    pub fn with_state_dir(mut self, dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let file: KeyringFile = serde_json::from_slice(&bytes).map_err(|_| {
                    Error::Unavailable(format!("key store: {STATE_FILE} is damaged"))
                })?;
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = file;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "key store: cannot read {STATE_FILE}: {}",
                    e.kind()
                )));
            }
        }
        self.state_path = Some(path);
        self = self.with_provider_versions();
        self.save_state()?;
        Ok(self)
    }

    pub(super) fn with_provider_versions(self) -> Self {
        {
            let now = self.clock.now_us();
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for v in self.provider.versions() {
                if !state.versions.iter().any(|m| m.version == v) {
                    state.versions.push(KekVersionMeta {
                        version: v,
                        created_at_us: now,
                        destroyed_at_us: None,
                    });
                }
            }
            state.versions.sort_by_key(|m| m.version);
            state.min_decrypt_version = state.min_decrypt_version.max(1);
        }
        self
    }

    pub(super) fn save_state(&self) -> Result<()> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let bytes = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec_pretty(&*state).map_err(|e| Error::Internal(e.to_string()))?
        };
        carevault_crypto::write_private_atomic(path, &bytes).map_err(|e| {
            Error::Unavailable(format!(
                "key store: cannot write {STATE_FILE}: {}",
                e.kind()
            ))
        })
    }
}
