//! The write statements whose SQL and parameters are the same on both backends, written once.
//!
//! A backend runs a [`Statement`] with its own driver (`run` in `sqlite/write.rs` and
//! `postgres/write.rs`): PostgreSQL numbers its placeholders `$1`, SQLite `?1`, and [`sql!`]
//! derives the SQLite text from the PostgreSQL one at compile time. What differs between the
//! backends (row locks, `GREATEST` against `MAX`, sequences, retries) stays in their domain files.

use crate::dispatch::KeyRotation;
use crate::{
    ApiKeyRow, BreakGlassRow, CredentialRow, EnrollmentRow, PrincipalRow, StoreError, WriteOp,
};

/// One statement's text in each backend's placeholder syntax.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sql {
    pub(crate) postgres: &'static str,
    pub(crate) sqlite: &'static str,
}

/// `sql!("... $1 ...")`: the text as PostgreSQL takes it, and with every `$n` written `?n` for
/// SQLite (the same positional meaning), built at compile time.
macro_rules! sql {
    ($text:literal) => {{
        const SQLITE_BYTES: [u8; $text.len()] = $crate::statements::sqlite_placeholders($text);
        const SQLITE: &str = match ::core::str::from_utf8(&SQLITE_BYTES) {
            Ok(text) => text,
            Err(_) => panic!("placeholder rewriting keeps UTF-8"),
        };
        $crate::statements::Sql {
            postgres: $text,
            sqlite: SQLITE,
        }
    }};
}

/// `text` with each placeholder's `$` replaced by `?`. A `$` not followed by a digit fails the
/// build: these statements hold no dollar-quoted strings.
pub(crate) const fn sqlite_placeholders<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    assert!(bytes.len() == N, "the length is the text's");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if bytes[i] == b'$' {
            assert!(
                i + 1 < N && bytes[i + 1].is_ascii_digit(),
                "a `$` that is not a placeholder"
            );
            b'?'
        } else {
            bytes[i]
        };
        i += 1;
    }
    out
}

/// A parameter's value, in the types both drivers bind.
#[derive(Debug)]
pub(crate) enum Param<'a> {
    Text(&'a str),
    OwnedText(String),
    MaybeText(Option<&'a str>),
    Int(i64),
    MaybeInt(Option<i64>),
    Flag(bool),
    MaybeFlag(Option<bool>),
    Bytes(&'a [u8]),
    MaybeBytes(Option<&'a [u8]>),
}

/// `bind!(param, &dyn Driver::ToSql)`: a [`Param`] as the reference a driver binds, written
/// once for both drivers' traits.
macro_rules! bind {
    ($param:expr, $as:ty) => {
        match $param {
            $crate::statements::Param::Text(v) => v as $as,
            $crate::statements::Param::OwnedText(v) => v as $as,
            $crate::statements::Param::MaybeText(v) => v as $as,
            $crate::statements::Param::Int(v) => v as $as,
            $crate::statements::Param::MaybeInt(v) => v as $as,
            $crate::statements::Param::Flag(v) => v as $as,
            $crate::statements::Param::MaybeFlag(v) => v as $as,
            $crate::statements::Param::Bytes(v) => v as $as,
            $crate::statements::Param::MaybeBytes(v) => v as $as,
        }
    };
}
pub(crate) use bind;

/// What a statement must change for its operation to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Any number of rows, none included.
    Any,
    /// Exactly one row; otherwise the write is stale ([`crate::StoreError::Conflict`]).
    One,
}

#[derive(Debug)]
pub(crate) struct Statement<'a> {
    pub(crate) sql: Sql,
    pub(crate) params: Vec<Param<'a>>,
    pub(crate) expect: Expect,
}

impl<'a> Statement<'a> {
    /// Whether `changed` rows fulfil the statement's operation.
    pub(crate) fn check(&self, changed: u64) -> Result<(), StoreError> {
        match self.expect {
            Expect::One if changed != 1 => Err(StoreError::Conflict),
            _ => Ok(()),
        }
    }

    fn any(sql: Sql, params: Vec<Param<'a>>) -> Self {
        Statement {
            sql,
            params,
            expect: Expect::Any,
        }
    }

    fn one(sql: Sql, params: Vec<Param<'a>>) -> Self {
        Statement {
            sql,
            params,
            expect: Expect::One,
        }
    }
}

/// An id or version the schema stores as a signed 64-bit integer.
fn int(value: u64) -> Param<'static> {
    Param::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

/// The statement that applies `op` on either backend, when it is one statement whose text is
/// the same on both; `None` for the operations each backend applies its own way.
pub(crate) fn shared(op: &WriteOp) -> Option<Statement<'_>> {
    use Param::{Flag, MaybeFlag, MaybeInt, Text};
    Some(match op {
        WriteOp::SetMeta { key, value } => Statement::any(
            sql!(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            vec![Text(key), Text(value)],
        ),
        WriteOp::InsertPrincipal(p) => insert_principal(p),
        WriteOp::UpdatePrincipal {
            principal_id,
            disabled,
            locked,
            failed_logins,
        } => Statement::any(
            sql!(
                "UPDATE principal SET disabled = COALESCE($2, disabled), locked = COALESCE($3, locked),
                 failed_logins = COALESCE($4, failed_logins) WHERE id = $1"
            ),
            vec![
                Text(principal_id),
                MaybeFlag(*disabled),
                MaybeFlag(*locked),
                MaybeInt(failed_logins.map(i64::from)),
            ],
        ),
        WriteOp::RecordLoginFailure {
            principal_id,
            lock_after,
        } => Statement::any(
            sql!(
                "UPDATE principal SET failed_logins = failed_logins + 1,
                 locked = CASE WHEN failed_logins + 1 >= $2 THEN TRUE ELSE locked END WHERE id = $1"
            ),
            vec![Text(principal_id), Param::Int(i64::from(*lock_after))],
        ),
        WriteOp::SetCredential(c) => set_credential(c),
        WriteOp::DeleteCredential { principal_id } => Statement::any(
            sql!("DELETE FROM credential WHERE principal_id = $1"),
            vec![Text(principal_id)],
        ),
        WriteOp::AdvanceTotpStep { principal_id, step } => Statement::one(
            sql!(
                "UPDATE credential SET totp_last_step = $2 WHERE principal_id = $1 AND totp_last_step < $2"
            ),
            vec![Text(principal_id), Param::Int(*step)],
        ),
        WriteOp::InsertEnrollment(e) => insert_enrollment(e),
        WriteOp::SetEnrollmentPendingTotp { token_hash, sealed } => Statement::one(
            sql!("UPDATE enrollment SET pending_totp = $2 WHERE token_hash = $1"),
            vec![Text(token_hash), Param::Bytes(sealed)],
        ),
        WriteOp::DeleteEnrollments { principal_id } => Statement::any(
            sql!("DELETE FROM enrollment WHERE principal_id = $1"),
            vec![Text(principal_id)],
        ),
        WriteOp::InsertSession(s) => Statement::any(
            sql!(
                "INSERT INTO session (token_hash, principal_id, created_at, last_seen, revoked)
                 VALUES ($1, $2, $3, $4, $5)"
            ),
            vec![
                Text(&s.token_hash),
                Text(&s.principal_id),
                Param::Int(s.created_at),
                Param::Int(s.last_seen),
                Flag(s.revoked),
            ],
        ),
        WriteOp::RevokeSession { token_hash } => Statement::any(
            sql!("UPDATE session SET revoked = TRUE WHERE token_hash = $1"),
            vec![Text(token_hash)],
        ),
        WriteOp::RevokeSessions { principal_id } => Statement::any(
            sql!("UPDATE session SET revoked = TRUE WHERE principal_id = $1"),
            vec![Text(principal_id)],
        ),
        WriteOp::InsertApiKey(k) => insert_api_key(k),
        WriteOp::RevokeApiKey { name } => Statement::one(
            sql!("UPDATE api_key SET revoked = TRUE WHERE name = $1"),
            vec![Text(name)],
        ),
        WriteOp::SetCompartmentOrganization {
            compartment,
            organization,
        } => Statement::any(
            sql!(
                "INSERT INTO compartment_org (compartment, organization) VALUES ($1, $2)
                 ON CONFLICT (compartment) DO UPDATE SET organization = excluded.organization"
            ),
            vec![Text(compartment), Param::MaybeText(organization.as_deref())],
        ),
        WriteOp::InsertBreakGlass(b) => insert_break_glass(b),
        _ => return None,
    })
}

fn insert_principal(p: &PrincipalRow) -> Statement<'_> {
    Statement::any(
        sql!(
            "INSERT INTO principal (id, username, roles, organization, disabled, locked, failed_logins, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        vec![
            Param::Text(&p.id),
            Param::Text(&p.username),
            Param::OwnedText(p.roles.join(",")),
            Param::MaybeText(p.organization.as_deref()),
            Param::Flag(p.disabled),
            Param::Flag(p.locked),
            Param::Int(i64::from(p.failed_logins)),
            Param::Int(p.created_at),
        ],
    )
}

fn set_credential(c: &CredentialRow) -> Statement<'_> {
    Statement::any(
        sql!(
            "INSERT INTO credential (principal_id, password_hash, totp_secret, totp_last_step, recovery_codes)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (principal_id) DO UPDATE SET password_hash = excluded.password_hash,
               totp_secret = excluded.totp_secret, totp_last_step = excluded.totp_last_step,
               recovery_codes = excluded.recovery_codes"
        ),
        vec![
            Param::Text(&c.principal_id),
            Param::Text(&c.password_hash),
            Param::Bytes(&c.totp_secret_sealed),
            Param::Int(c.totp_last_step),
            Param::OwnedText(c.recovery_code_hashes.join(",")),
        ],
    )
}

fn insert_enrollment(e: &EnrollmentRow) -> Statement<'_> {
    Statement::any(
        sql!(
            "INSERT INTO enrollment (token_hash, principal_id, expires_at, pending_totp)
             VALUES ($1, $2, $3, $4)"
        ),
        vec![
            Param::Text(&e.token_hash),
            Param::Text(&e.principal_id),
            Param::Int(e.expires_at),
            Param::MaybeBytes(e.pending_totp_sealed.as_deref()),
        ],
    )
}

fn insert_api_key(k: &ApiKeyRow) -> Statement<'_> {
    Statement::any(
        sql!(
            "INSERT INTO api_key (name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked,
                                  created_at, client_cert_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ),
        vec![
            Param::Text(&k.name),
            Param::Text(&k.key_hash),
            Param::MaybeText(k.owner_id.as_deref()),
            Param::OwnedText(k.scopes.join(" ")),
            Param::OwnedText(k.allowed_cidrs.join(" ")),
            Param::Int(k.expires_at),
            Param::Flag(k.revoked),
            Param::Int(k.created_at),
            Param::MaybeText(k.client_cert_sha256.as_deref()),
        ],
    )
}

fn insert_break_glass(b: &BreakGlassRow) -> Statement<'_> {
    Statement::any(
        sql!(
            "INSERT INTO break_glass (principal_id, until, patient, reason, created_at)
             VALUES ($1, $2, $3, $4, $5)"
        ),
        vec![
            Param::Text(&b.principal_id),
            Param::Int(b.until),
            Param::MaybeText(b.patient.as_deref()),
            Param::Text(&b.reason),
            Param::Int(b.created_at),
        ],
    )
}

/// A rotation's first step: the old key retires, if it is still the one marked for rotation.
pub(crate) fn retire_rotated_key<'a>(rotation: &KeyRotation<'a>) -> Statement<'a> {
    Statement::any(
        sql!(
            "UPDATE data_key SET state = 'retiring'
             WHERE id = $1 AND compartment = $2 AND state = 'rotate'"
        ),
        vec![int(rotation.old_id), Param::Text(rotation.compartment)],
    )
}

/// A rotation's new live key (the database picks its id), inserted once the old key retired.
pub(crate) fn insert_rotated_key<'a>(rotation: &KeyRotation<'a>) -> Statement<'a> {
    Statement::any(
        sql!(
            "INSERT INTO data_key (compartment, wrapped, kek_version, created_at) VALUES ($1, $2, $3, $4)"
        ),
        vec![
            Param::Text(rotation.compartment),
            Param::Bytes(rotation.wrapped),
            Param::Int(i64::from(rotation.kek_version)),
            Param::Int(rotation.created_at),
        ],
    )
}

/// [`WriteOp::ResealResourceVersion`]'s update, once the backend has checked the new key is
/// usable: conditional on the key the version was read under.
pub(crate) fn reseal_resource_version(op: &WriteOp) -> Result<Statement<'_>, StoreError> {
    let WriteOp::ResealResourceVersion {
        rtype,
        id,
        version,
        from_dek_id,
        dek_id,
        body,
    } = op
    else {
        return Err(crate::dispatch::misrouted(op));
    };
    Ok(Statement::any(
        sql!(
            "UPDATE resource_version SET dek_id = $1, body = $2
             WHERE rtype = $3 AND id = $4 AND version = $5 AND dek_id = $6"
        ),
        vec![
            int(*dek_id),
            Param::Bytes(body),
            Param::Text(rtype),
            Param::Text(id),
            Param::Int(i64::from(*version)),
            int(*from_dek_id),
        ],
    ))
}

/// [`WriteOp::RewrapDataKey`]'s update, once the backend has checked the wrap floor:
/// conditional on the KEK version read, so a key re-wrapped (or shredded) meanwhile is left
/// alone.
pub(crate) fn rewrap_data_key(op: &WriteOp) -> Result<Statement<'_>, StoreError> {
    let WriteOp::RewrapDataKey {
        id,
        from_kek_version,
        wrapped,
        kek_version,
    } = op
    else {
        return Err(crate::dispatch::misrouted(op));
    };
    Ok(Statement::any(
        sql!(
            "UPDATE data_key SET wrapped = $1, kek_version = $2 WHERE id = $3 AND kek_version = $4"
        ),
        vec![
            Param::Bytes(wrapped),
            Param::Int(i64::from(*kek_version)),
            int(*id),
            Param::Int(i64::from(*from_kek_version)),
        ],
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_text_numbers_the_same_placeholders() {
        let sql = sql!("UPDATE t SET a = $2 WHERE b = $1 AND c = $10");
        assert_eq!(sql.postgres, "UPDATE t SET a = $2 WHERE b = $1 AND c = $10");
        assert_eq!(sql.sqlite, "UPDATE t SET a = ?2 WHERE b = ?1 AND c = ?10");
    }
}
