//! The repairs of `carevault doctor --fix`: only what is safe. A mode is only ever tightened
//! (bits removed, never added), nothing is deleted, and every repair is an audit event
//! (`admin.posture.repair`, or `admin.user.disable` for an account).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use carevault_store::{Store, WriteOp};

use crate::audit::{AuditAction, AuditScope};
use crate::config::Config;
use crate::error::{Error, Result};

/// One repair done (or refused), for the operator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Repair {
    /// The check it answers.
    pub check: &'static str,
    pub what: String,
    pub done: bool,
}

/// The paths whose modes `--fix` tightens, with the bits each must not have.
fn private_paths(config: &Config, config_file: Option<&Path>) -> Vec<(PathBuf, u32, &'static str)> {
    let mut paths = vec![(config.data_dir.clone(), 0o077, super::FILES_DATA_DIR.id)];
    let keys = config.keys_dir();
    paths.push((keys.clone(), 0o077, super::FILES_KEYS.id));
    if let Ok(entries) = fs::read_dir(&keys) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        paths.extend(files.into_iter().map(|p| (p, 0o077, super::FILES_KEYS.id)));
    }
    if !config.plain_http {
        paths.push((config.tls_key.clone(), 0o077, super::FILES_TLS_KEY.id));
    }
    if let Some(file) = config_file {
        paths.push((file.to_path_buf(), 0o022, super::FILES_CONFIG.id));
    }
    paths
}

/// Remove the forbidden bits from every private path that has them (before the environment
/// opens: it refuses a data directory others can reach). [`record`] audits them afterwards.
pub fn tighten_modes(config: &Config, config_file: Option<&Path>) -> Vec<Repair> {
    let mut repairs = Vec::new();
    for (path, forbidden, check) in private_paths(config, config_file) {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & forbidden == 0 {
            continue;
        }
        // Tightening only: bits are removed, never added.
        let tightened = mode & !forbidden;
        let what = format!("{}: mode {mode:o} -> {tightened:o}", path.display());
        repairs.push(
            match fs::set_permissions(&path, fs::Permissions::from_mode(tightened)) {
                Ok(()) => Repair {
                    check,
                    what,
                    done: true,
                },
                Err(e) => Repair {
                    check,
                    what: format!("{what} failed: {}", e.kind()),
                    done: false,
                },
            },
        );
    }
    repairs
}

/// One audit event per repair done outside the database (`admin.posture.repair`).
pub async fn record(audit: &AuditScopeFactory<'_>, repairs: &[Repair]) -> Result<()> {
    for repair in repairs {
        let scope = audit.scope(AuditAction::PostureRepair);
        scope.add_detail("check", repair.check.to_owned());
        scope.add_detail("repair", repair.what.clone());
        scope.finish(if repair.done { 200 } else { 500 }).await?;
    }
    Ok(())
}

/// Disable the accounts unused past the inactivity limit (their sessions end too). The caller
/// has asked for confirmation.
pub async fn disable_inactive(
    config: &Config,
    store: &dyn Store,
    audit: &AuditScopeFactory<'_>,
    now_us: i64,
) -> Result<Vec<Repair>> {
    let now = now_us.div_euclid(1_000_000);
    let inactive = super::data::inactive_accounts(config, store, now)
        .await
        .map_err(Error::from)?;
    let mut repairs = Vec::new();
    for (principal, days) in inactive {
        let scope = audit.scope(AuditAction::UserDisable);
        scope.set_resource("Principal", Some(&principal.id), None);
        scope.add_detail("reason", format!("posture: no login for {days} days"));
        scope
            .commit_with(
                store,
                vec![
                    WriteOp::UpdatePrincipal {
                        principal_id: principal.id.clone(),
                        disabled: Some(true),
                        locked: None,
                        failed_logins: None,
                    },
                    WriteOp::RevokeSessions {
                        principal_id: principal.id.clone(),
                    },
                ],
                204,
            )
            .await
            .map_err(Error::from)?;
        repairs.push(Repair {
            check: super::ACCOUNTS_INACTIVE.id,
            what: format!("disabled {} (no login for {days} days)", principal.username),
            done: true,
        });
    }
    Ok(repairs)
}

/// Renew the generated certificate when it is close to expiry or valid for longer than 397 days
/// (keeping its key, so clients that trust the old file still verify it; a running server
/// serves the new one within 30 s). None when nothing was due or the certificate is the
/// operator's own, which is never replaced.
pub fn renew_certificate(config: &Config, now_secs: i64) -> Option<Repair> {
    let check = super::TLS_CERTIFICATE.id;
    match crate::certificate::renew_if_due(config, now_secs) {
        Ok(None) => None,
        Ok(Some(fingerprint)) => Some(Repair {
            check,
            what: format!(
                "renewed the generated certificate {} for {} days with its key; SHA-256 \
                 fingerprint {fingerprint}",
                config.tls_cert.display(),
                crate::certificate::VALIDITY_DAYS
            ),
            done: true,
        }),
        Err(e) => Some(Repair {
            check,
            what: format!(
                "the certificate {} was not renewed: {e}",
                config.tls_cert.display()
            ),
            done: false,
        }),
    }
}

/// Makes the audit scopes of local repairs (principal `local`, as other local commands).
pub struct AuditScopeFactory<'a> {
    pub audit: &'a std::sync::Arc<crate::audit::Audit>,
}

impl AuditScopeFactory<'_> {
    pub fn scope(&self, action: AuditAction) -> AuditScope {
        AuditScope::local(self.audit.clone(), action)
    }
}
