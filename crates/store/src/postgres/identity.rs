//! Principals, credentials, enrollments, sessions and API keys.

use deadpool_postgres::Transaction;

use super::{PostgresStore, TxError, api_key_row, exec, principal_row};
use crate::rows::{API_KEY_COLUMNS, PRINCIPAL_COLUMNS, split_list};
use crate::{
    ApiKeyRow, CredentialRow, EnrollmentRow, PrincipalRow, SessionRow, StoreError, WriteOp,
};

/// The identity operations of [`super::write::apply`] that are not one shared statement.
pub(super) async fn apply_identity_op(tx: &Transaction<'_>, op: &WriteOp) -> Result<(), TxError> {
    match op {
        WriteOp::ConsumeRecoveryCode {
            principal_id,
            code_hash,
        } => {
            let stmt = tx
                .prepare_cached("SELECT recovery_codes FROM credential WHERE principal_id = $1")
                .await?;
            let codes: String = tx
                .query_opt(&stmt, &[principal_id])
                .await?
                .map(|r| r.get(0))
                .ok_or(StoreError::Conflict)?;
            let mut list = split_list(&codes);
            let before = list.len();
            list.retain(|c| *c != code_hash.as_str());
            if list.len() == before {
                return Err(StoreError::Conflict.into());
            }
            // Conditional on the list read: a concurrent use of the same code on another node
            // changes it first, and this one then touches no row.
            let n = exec(
                tx,
                "UPDATE credential SET recovery_codes = $2 WHERE principal_id = $1 AND recovery_codes = $3",
                &[principal_id, &list.join(","), &codes],
            )
            .await?;
            if n != 1 {
                return Err(StoreError::Conflict.into());
            }
        }
        WriteOp::TouchSession {
            token_hash,
            last_seen,
        } => {
            exec(
                tx,
                "UPDATE session SET last_seen = GREATEST(last_seen, $2) WHERE token_hash = $1",
                &[token_hash, last_seen],
            )
            .await?;
        }
        other => return Err(crate::dispatch::misrouted(other).into()),
    }
    Ok(())
}

impl PostgresStore {
    pub(super) async fn principal_by_username(
        &self,
        username: &str,
    ) -> Result<Option<PrincipalRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE username = $1"),
                &[&username],
            )
            .await?
            .map(|r| principal_row(&r)))
    }

    pub(super) async fn principal_by_id(
        &self,
        id: &str,
    ) -> Result<Option<PrincipalRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE id = $1"),
                &[&id],
            )
            .await?
            .map(|r| principal_row(&r)))
    }

    pub(super) async fn principals(&self) -> Result<Vec<PrincipalRow>, StoreError> {
        Ok(self
            .query(
                &format!("SELECT {PRINCIPAL_COLUMNS} FROM principal ORDER BY username"),
                &[],
            )
            .await?
            .iter()
            .map(principal_row)
            .collect())
    }

    pub(super) async fn identity_counts(
        &self,
        created_after: i64,
        seen_after: i64,
    ) -> Result<crate::stats::IdentityCounts, StoreError> {
        let row = self
            .query_opt(
                "SELECT (SELECT count(*) FROM principal WHERE locked),
                        (SELECT count(*) FROM session
                          WHERE NOT revoked AND created_at > $1 AND last_seen > $2)",
                &[&created_after, &seen_after],
            )
            .await?;
        let count = |i: usize| {
            row.as_ref()
                .map_or(0, |r| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0))
        };
        Ok(crate::stats::IdentityCounts {
            locked_accounts: count(0),
            active_sessions: count(1),
        })
    }

    pub(super) async fn credential(
        &self,
        principal_id: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT principal_id, password_hash, totp_secret, totp_last_step, recovery_codes
                 FROM credential WHERE principal_id = $1",
                &[&principal_id],
            )
            .await?
            .map(|r| {
                let codes: String = r.get(4);
                CredentialRow {
                    principal_id: r.get(0),
                    password_hash: r.get(1),
                    totp_secret_sealed: r.get(2),
                    totp_last_step: r.get(3),
                    recovery_code_hashes: split_list(&codes)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                }
            }))
    }

    pub(super) async fn enrollment(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT token_hash, principal_id, expires_at, pending_totp FROM enrollment WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?
            .map(|r| EnrollmentRow {
                token_hash: r.get(0),
                principal_id: r.get(1),
                expires_at: r.get(2),
                pending_totp_sealed: r.get(3),
            }))
    }

    pub(super) async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT token_hash, principal_id, created_at, last_seen, revoked FROM session WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?
            .map(|r| SessionRow {
                token_hash: r.get(0),
                principal_id: r.get(1),
                created_at: r.get(2),
                last_seen: r.get(3),
                revoked: r.get(4),
            }))
    }

    pub(super) async fn api_key_by_hash(
        &self,
        key_hash: &str,
    ) -> Result<Option<ApiKeyRow>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {API_KEY_COLUMNS} FROM api_key WHERE key_hash = $1"),
                &[&key_hash],
            )
            .await?
            .map(|r| api_key_row(&r)))
    }

    pub(super) async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(self
            .query(
                &format!("SELECT {API_KEY_COLUMNS} FROM api_key ORDER BY name"),
                &[],
            )
            .await?
            .iter()
            .map(api_key_row)
            .collect())
    }
}
