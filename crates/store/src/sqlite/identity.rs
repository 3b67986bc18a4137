//! Principals, credentials, enrollments, sessions and API keys.

use rusqlite::{Connection, OptionalExtension};

use super::{SqliteStore, exec, map_err};
use crate::rows::{self, API_KEY_COLUMNS, PRINCIPAL_COLUMNS, split_list};
use crate::{
    ApiKeyRow, CredentialRow, EnrollmentRow, PrincipalRow, SessionRow, StoreError, WriteOp,
};

/// The identity operations of [`super::write::apply`] that are not one shared statement.
pub(super) fn apply_identity_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::ConsumeRecoveryCode {
            principal_id,
            code_hash,
        } => {
            let codes: Option<String> = conn
                .prepare_cached("SELECT recovery_codes FROM credential WHERE principal_id = ?1")
                .and_then(|mut s| s.query_row([principal_id], |r| r.get(0)).optional())
                .map_err(map_err)?;
            let codes = codes.ok_or(StoreError::Conflict)?;
            let mut list: Vec<&str> = split_list(&codes);
            let before = list.len();
            list.retain(|c| *c != code_hash.as_str());
            if list.len() == before {
                return Err(StoreError::Conflict);
            }
            exec(
                conn,
                "UPDATE credential SET recovery_codes = ?2 WHERE principal_id = ?1",
                &[principal_id, &list.join(",")],
            )?;
        }
        WriteOp::TouchSession {
            token_hash,
            last_seen,
        } => {
            exec(
                conn,
                "UPDATE session SET last_seen = MAX(last_seen, ?2) WHERE token_hash = ?1",
                &[token_hash, last_seen],
            )?;
        }
        other => return Err(crate::dispatch::misrouted(other)),
    }
    Ok(())
}

pub(super) fn session_row(
    c: &Connection,
    token_hash: &str,
) -> rusqlite::Result<Option<SessionRow>> {
    c.prepare_cached(
        "SELECT token_hash, principal_id, created_at, last_seen, revoked FROM session WHERE token_hash = ?1",
    )?
    .query_row([token_hash], |r| {
        Ok(SessionRow {
            token_hash: r.get(0)?,
            principal_id: r.get(1)?,
            created_at: r.get(2)?,
            last_seen: r.get(3)?,
            revoked: r.get(4)?,
        })
    })
    .optional()
}

impl SqliteStore {
    pub(super) async fn principal_by_username(
        &self,
        username: &str,
    ) -> Result<Option<PrincipalRow>, StoreError> {
        let username = username.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE username = ?1"
            ))?
            .query_row([username], |r| rows::principal_row(r))
            .optional()
        })
        .await
    }

    pub(super) async fn principal_by_id(
        &self,
        id: &str,
    ) -> Result<Option<PrincipalRow>, StoreError> {
        let id = id.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE id = ?1"
            ))?
            .query_row([id], |r| rows::principal_row(r))
            .optional()
        })
        .await
    }

    pub(super) async fn principals(&self) -> Result<Vec<PrincipalRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLUMNS} FROM principal ORDER BY username"
            ))?;
            let rows = stmt.query_map([], |r| rows::principal_row(r))?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn identity_counts(
        &self,
        created_after: i64,
        seen_after: i64,
    ) -> Result<crate::stats::IdentityCounts, StoreError> {
        self.read(move |c| {
            let (locked, active): (i64, i64) = c.query_row(
                "SELECT (SELECT count(*) FROM principal WHERE locked),
                        (SELECT count(*) FROM session
                          WHERE NOT revoked AND created_at > ?1 AND last_seen > ?2)",
                [created_after, seen_after],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(crate::stats::IdentityCounts {
                locked_accounts: u64::try_from(locked).unwrap_or(0),
                active_sessions: u64::try_from(active).unwrap_or(0),
            })
        })
        .await
    }

    pub(super) async fn credential(
        &self,
        principal_id: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let principal_id = principal_id.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT principal_id, password_hash, totp_secret, totp_last_step, recovery_codes
                 FROM credential WHERE principal_id = ?1",
            )?
            .query_row([principal_id], |r| {
                let codes: String = r.get(4)?;
                Ok(CredentialRow {
                    principal_id: r.get(0)?,
                    password_hash: r.get(1)?,
                    totp_secret_sealed: r.get(2)?,
                    totp_last_step: r.get(3)?,
                    recovery_code_hashes: split_list(&codes)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .optional()
        })
        .await
    }

    pub(super) async fn enrollment(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentRow>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| {
            c.prepare_cached(
                "SELECT token_hash, principal_id, expires_at, pending_totp FROM enrollment WHERE token_hash = ?1",
            )?
            .query_row([token_hash], |r| {
                Ok(EnrollmentRow {
                    token_hash: r.get(0)?,
                    principal_id: r.get(1)?,
                    expires_at: r.get(2)?,
                    pending_totp_sealed: r.get(3)?,
                })
            })
            .optional()
        })
        .await
    }

    pub(super) async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| session_row(c, &token_hash)).await
    }

    pub(super) async fn session_principal(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRow, Option<PrincipalRow>)>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.point(move |c| {
            let Some(session) = session_row(c, &token_hash)? else {
                return Ok(None);
            };
            let principal = c
                .prepare_cached(&format!(
                    "SELECT {PRINCIPAL_COLUMNS} FROM principal WHERE id = ?1"
                ))?
                .query_row([&session.principal_id], |r| rows::principal_row(r))
                .optional()?;
            Ok(Some((session, principal)))
        })
        .await
    }

    pub(super) async fn api_key_by_hash(
        &self,
        key_hash: &str,
    ) -> Result<Option<ApiKeyRow>, StoreError> {
        let key_hash = key_hash.to_owned();
        self.point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_key WHERE key_hash = ?1"
            ))?
            .query_row([key_hash], |r| rows::api_key_row(r))
            .optional()
        })
        .await
    }

    pub(super) async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_key ORDER BY name"
            ))?;
            let rows = stmt.query_map([], |r| rows::api_key_row(r))?;
            rows.collect()
        })
        .await
    }
}
