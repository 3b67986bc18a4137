//! Row mappers shared by the backends: the columns each query selects, and how a result row
//! becomes a store type. A backend reads a column through [`Columns`], whose few methods are the
//! only dialect-specific part (SQLite's and PostgreSQL's integer types and error handling).

use carevault_audit::{Checkpoint, StoredEvent};

use crate::{ApiKeyRow, DataKeyRow, HistoryEntry, PrincipalRow, ResourceRow};

/// One result row, column by column (0-based), as the backend's driver reads it.
pub(crate) trait Columns {
    type Error;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn flag(&self, i: usize) -> Result<bool, Self::Error>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, Self::Error>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, Self::Error>;
    /// A version number or count (the backends bound its range each in their own way).
    fn small(&self, i: usize) -> Result<u32, Self::Error>;
    /// An id or sequence number stored as a signed integer.
    fn id(&self, i: usize) -> Result<u64, Self::Error>;
    /// An audit column read as bytes even if it was damaged (stored as another type), so that
    /// the verifier reports the event instead of the read failing.
    fn audit_bytes(&self, i: usize) -> Result<Vec<u8>, Self::Error>;
}

/// The comma-separated lists stored in one column (roles, recovery-code hashes).
pub(crate) fn split_list(s: &str) -> Vec<&str> {
    s.split(',').filter(|x| !x.is_empty()).collect()
}

/// A 32-byte hash column; a damaged one still reaches the verifier, which then reports it.
pub(crate) fn hash32(bytes: &[u8]) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes).unwrap_or([0u8; 32])
}

pub(crate) const RESOURCE_COLUMNS: &str =
    "v.rtype, v.id, v.version, v.last_updated_us, v.deleted, v.dek_id, v.body";

/// [`RESOURCE_COLUMNS`] from column `at` on.
pub(crate) fn resource_row<R: Columns>(r: &R, at: usize) -> Result<ResourceRow, R::Error> {
    Ok(ResourceRow {
        rtype: r.text(at)?,
        id: r.text(at + 1)?,
        version: r.small(at + 2)?,
        last_updated_us: r.int(at + 3)?,
        deleted: r.flag(at + 4)?,
        dek_id: r.id(at + 5)?,
        body: r.bytes(at + 6)?,
    })
}

/// `seq` then [`RESOURCE_COLUMNS`].
pub(crate) fn history_entry<R: Columns>(r: &R) -> Result<HistoryEntry, R::Error> {
    Ok(HistoryEntry {
        seq: r.int(0)?,
        row: resource_row(r, 1)?,
    })
}

pub(crate) const PRINCIPAL_COLUMNS: &str =
    "id, username, roles, organization, disabled, locked, failed_logins, created_at";

pub(crate) fn principal_row<R: Columns>(r: &R) -> Result<PrincipalRow, R::Error> {
    let roles = r.text(2)?;
    Ok(PrincipalRow {
        id: r.text(0)?,
        username: r.text(1)?,
        roles: split_list(&roles).into_iter().map(str::to_owned).collect(),
        organization: r.opt_text(3)?,
        disabled: r.flag(4)?,
        locked: r.flag(5)?,
        failed_logins: r.small(6)?,
        created_at: r.int(7)?,
    })
}

pub(crate) const API_KEY_COLUMNS: &str = "name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked, created_at, \
     client_cert_sha256";

pub(crate) fn api_key_row<R: Columns>(r: &R) -> Result<ApiKeyRow, R::Error> {
    let scopes = r.text(3)?;
    let cidrs = r.text(4)?;
    Ok(ApiKeyRow {
        name: r.text(0)?,
        key_hash: r.text(1)?,
        owner_id: r.opt_text(2)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        allowed_cidrs: cidrs.split_whitespace().map(str::to_owned).collect(),
        expires_at: r.int(5)?,
        revoked: r.flag(6)?,
        created_at: r.int(7)?,
        client_cert_sha256: r.opt_text(8)?,
    })
}

pub(crate) fn data_key_row<R: Columns>(r: &R) -> Result<DataKeyRow, R::Error> {
    Ok(DataKeyRow {
        id: r.id(0)?,
        compartment: r.text(1)?,
        wrapped: r.bytes(2)?,
        kek_version: r.small(3)?,
    })
}

/// `node, seq, time_us, body, hash` of an audit event.
pub(crate) fn stored_event<R: Columns>(r: &R) -> Result<StoredEvent, R::Error> {
    let hash = r.audit_bytes(4)?;
    Ok(StoredEvent {
        node: r.text(0)?,
        seq: r.id(1)?,
        time_us: r.int(2)?,
        body: r.audit_bytes(3)?,
        hash: hash32(&hash),
    })
}

pub(crate) const CHECKPOINT_COLUMNS: &str =
    "node, first_seq, last_seq, head_hash, time_us, prev_signature, signature";

pub(crate) fn checkpoint_row<R: Columns>(r: &R) -> Result<Checkpoint, R::Error> {
    let head = r.bytes(3)?;
    Ok(Checkpoint {
        node: r.text(0)?,
        first_seq: r.id(1)?,
        last_seq: r.id(2)?,
        head_hash: hash32(&head),
        time_us: r.int(4)?,
        prev_signature: r.opt_bytes(5)?,
        signature: r.bytes(6)?,
    })
}

pub(crate) const EXPORT_JOB_COLUMNS: &str = "id, principal_id, created_us, body";

pub(crate) fn export_job_row<R: Columns>(r: &R) -> Result<crate::ExportJobRow, R::Error> {
    Ok(crate::ExportJobRow {
        id: r.text(0)?,
        principal_id: r.text(1)?,
        created_us: r.int(2)?,
        body: r.text(3)?,
    })
}
