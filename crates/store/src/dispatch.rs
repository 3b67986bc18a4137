//! Which domain of a backend applies each [`WriteOp`]: one classification for both backends,
//! whose `write.rs` dispatchers then only name their domain functions.

use crate::WriteOp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Domain {
    /// One statement, the same on both backends (`statements.rs`): meta values, principals and
    /// credentials, enrollments, sessions (but touching one), API keys, compartment
    /// organizations, break-glass grants.
    Shared,
    /// Resource versions (`resources.rs`).
    Resources,
    /// The blind search index (`index.rs`).
    Index,
    /// Data keys: insertion, re-wrapping, rotation, re-sealing (`keys.rs`).
    Keys,
    /// Crypto-shredding and its approvals (`keys.rs`).
    Shred,
    /// Consuming a recovery code and touching a session (`identity.rs`): each reads or
    /// compares in a way of its backend's own.
    Identity,
    /// Audit events and checkpoints (`audit.rs`).
    Audit,
    /// Custom policies and their history (`policy.rs`).
    Policy,
    /// Bulk export jobs (`export.rs`).
    Export,
}

impl WriteOp {
    pub(crate) fn domain(&self) -> Domain {
        match self {
            WriteOp::SetMeta { .. }
            | WriteOp::InsertPrincipal(_)
            | WriteOp::UpdatePrincipal { .. }
            | WriteOp::RecordLoginFailure { .. }
            | WriteOp::SetCredential(_)
            | WriteOp::DeleteCredential { .. }
            | WriteOp::AdvanceTotpStep { .. }
            | WriteOp::InsertEnrollment(_)
            | WriteOp::SetEnrollmentPendingTotp { .. }
            | WriteOp::DeleteEnrollments { .. }
            | WriteOp::InsertSession(_)
            | WriteOp::RevokeSession { .. }
            | WriteOp::RevokeSessions { .. }
            | WriteOp::InsertApiKey(_)
            | WriteOp::RevokeApiKey { .. }
            | WriteOp::SetCompartmentOrganization { .. }
            | WriteOp::InsertBreakGlass(_) => Domain::Shared,
            WriteOp::PutResource(_) => Domain::Resources,
            WriteOp::ReplaceSearchIndex { .. } => Domain::Index,
            WriteOp::InsertDataKeyIfAbsent { .. }
            | WriteOp::InsertDataKey { .. }
            | WriteOp::MarkDataKeysForRotation { .. }
            | WriteOp::RotateDataKey { .. }
            | WriteOp::ResealResourceVersion { .. }
            | WriteOp::DropRetiredDataKey { .. }
            | WriteOp::RewrapDataKey { .. } => Domain::Keys,
            WriteOp::ShredCompartment { .. }
            | WriteOp::InsertShredApproval(_)
            | WriteOp::ConsumeShredApproval { .. } => Domain::Shred,
            WriteOp::ConsumeRecoveryCode { .. } | WriteOp::TouchSession { .. } => Domain::Identity,
            WriteOp::AppendAudit(_) | WriteOp::InsertCheckpoint(_) => Domain::Audit,
            WriteOp::PutPolicy { .. } | WriteOp::DeletePolicy { .. } => Domain::Policy,
            WriteOp::PutExportJob(_) | WriteOp::DeleteExportJob { .. } => Domain::Export,
        }
    }
}

/// A compartment's live data key to insert: [`WriteOp::InsertDataKeyIfAbsent`] (no id: the
/// database picks one, and a key already there is kept silently) or [`WriteOp::InsertDataKey`]
/// (a reserved id: a key already there makes the write stale).
pub(crate) struct LiveKeyInsert<'a> {
    pub(crate) id: Option<u64>,
    pub(crate) compartment: &'a String,
    pub(crate) wrapped: &'a Vec<u8>,
    pub(crate) kek_version: u32,
    pub(crate) created_at: i64,
}

impl WriteOp {
    pub(crate) fn live_key_insert(&self) -> Option<LiveKeyInsert<'_>> {
        let (id, compartment, wrapped, kek_version, created_at) = match self {
            WriteOp::InsertDataKeyIfAbsent {
                compartment,
                wrapped,
                kek_version,
                created_at,
            } => (None, compartment, wrapped, kek_version, created_at),
            WriteOp::InsertDataKey {
                id,
                compartment,
                wrapped,
                kek_version,
                created_at,
            } => (Some(*id), compartment, wrapped, kek_version, created_at),
            _ => return None,
        };
        Some(LiveKeyInsert {
            id,
            compartment,
            wrapped,
            kek_version: *kek_version,
            created_at: *created_at,
        })
    }
}

/// [`WriteOp::ReplaceSearchIndex`]'s fields, as both backends' `index.rs` read them.
pub(crate) struct IndexReplacement<'a> {
    pub(crate) rtype: &'a str,
    pub(crate) id: &'a str,
    pub(crate) tokens: &'a [(String, Vec<u8>)],
    /// Replace only while this version is current (an index rebuild's condition).
    pub(crate) only_if_current: Option<u32>,
}

/// [`WriteOp::RotateDataKey`]'s fields, as both backends' `keys.rs` read them.
pub(crate) struct KeyRotation<'a> {
    pub(crate) old_id: u64,
    pub(crate) compartment: &'a str,
    pub(crate) wrapped: &'a [u8],
    pub(crate) kek_version: u32,
    pub(crate) created_at: i64,
}

impl WriteOp {
    /// The fields of an index replacement; a misrouted error for any other operation.
    pub(crate) fn index_replacement(&self) -> Result<IndexReplacement<'_>, crate::StoreError> {
        match self {
            WriteOp::ReplaceSearchIndex {
                rtype,
                id,
                tokens,
                only_if_current,
            } => Ok(IndexReplacement {
                rtype,
                id,
                tokens,
                only_if_current: *only_if_current,
            }),
            other => Err(misrouted(other)),
        }
    }

    /// The fields of a data-key rotation; `None` for any other operation.
    pub(crate) fn key_rotation(&self) -> Option<KeyRotation<'_>> {
        match self {
            WriteOp::RotateDataKey {
                old_id,
                compartment,
                wrapped,
                kek_version,
                created_at,
            } => Some(KeyRotation {
                old_id: *old_id,
                compartment,
                wrapped,
                kek_version: *kek_version,
                created_at: *created_at,
            }),
            _ => None,
        }
    }
}

/// A write operation handed to a domain that does not apply it: a bug in a backend's dispatch.
/// Names the operation by its variant's position only (its fields may hold sealed data).
pub(crate) fn misrouted(op: &WriteOp) -> crate::StoreError {
    crate::StoreError::Backend(format!(
        "write operation {:?} routed to the wrong domain",
        std::mem::discriminant(op)
    ))
}
