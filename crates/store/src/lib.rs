//! CareVault's storage: the [`Store`] trait and its backends, SQLite (embedded, the default)
//! and PostgreSQL (several nodes over one database).
//!
//! The store has no rules about content: it keeps sealed resource versions as opaque bytes,
//! identity rows and wrapped keys, and guarantees atomicity and optimistic concurrency.
//! Rules (who may do what, what a valid resource is) live above it.
//!
//! Every write goes through [`Store::write`] as a list of [`WriteOp`]s applied atomically. The
//! SQLite backend funnels all writes through one writer thread that commits many requests'
//! operations in one transaction (group commit), so durability costs one fsync per batch.
//!
//! ```no_run
//! # async fn demo() -> Result<(), carevault_store::StoreError> {
//! use carevault_store::{SqliteStore, Store, WriteOp};
//! let store = SqliteStore::open(std::path::Path::new("/tmp/demo.db"))?;
//! store.write(vec![WriteOp::SetMeta { key: "environment_id".into(), value: "env-1".into() }]).await?;
//! assert_eq!(store.meta("environment_id").await?.as_deref(), Some("env-1"));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

/// `migration!("sqlite/0001_initial.sql")`: a migration file's text, embedded in the binary.
macro_rules! migration {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $path))
    };
}

#[cfg(test)]
mod contract_tests;
mod dispatch;
mod forward;
mod ids;
mod migrate;
mod postgres;
mod rows;
mod snapshot;
mod sqlite;
mod statements;
pub mod stats;
mod trail;

pub use migrate::{CopyProgress, TableCount, copy_sqlite_to_postgres};
pub use postgres::{
    POSTGRES_SCHEMA_VERSION, PostgresOptions, PostgresStore, SslMode, redact_url, url_has_password,
};
pub use snapshot::{AuditHead, CheckpointHead, SnapshotFacts};
pub use sqlite::{SQLITE_SCHEMA_VERSION, SqliteStore, sqlite_facts, sqlite_snapshot};
pub use trail::{TrailScope, verify_audit_trail};

/// Why a store operation failed. Messages never contain row contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An optimistic-concurrency check failed: the row changed since it was read, or a
    /// one-time value (TOTP step, recovery code) was already used.
    #[error("conflict: the record changed concurrently")]
    Conflict,
    /// A unique key (username, resource id on create) is already taken.
    #[error("already exists")]
    AlreadyExists,
    /// The database cannot be reached or written right now (disk full, locked, I/O error).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database file was written by a newer CareVault.
    #[error("database schema version {found} is newer than this binary supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    /// A write referred to a data key that may no longer be used for new data: it was
    /// rotated (a newer generation of the compartment's key exists) or destroyed, or the key
    /// was wrapped under a key-encryption key version that no longer wraps. Seal again with
    /// the compartment's current key and retry.
    #[error("the data key is no longer current")]
    StaleKey,
    /// Anything else the backend reported.
    #[error("database error: {0}")]
    Backend(String),
}

/// Whatever stopped an audit write, the request must fail closed as unavailable.
pub(crate) fn audit_unavailable(e: StoreError) -> StoreError {
    let detail = match e {
        StoreError::Unavailable(d) | StoreError::Backend(d) => d,
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("audit trail not writable: {detail}"))
}

/// One stored version of a resource. `body` is sealed; the store never looks inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRow {
    pub rtype: String,
    pub id: String,
    pub version: u32,
    /// Microseconds since the Unix epoch.
    pub last_updated_us: i64,
    pub deleted: bool,
    pub dek_id: u64,
    pub body: Vec<u8>,
}

/// A resource version to append. `expected_current` is the optimistic-concurrency check:
/// `None` means the resource must not exist yet; `Some(n)` means its current version must be `n`.
#[derive(Clone, Debug)]
pub struct NewResourceVersion {
    pub row: ResourceRow,
    pub expected_current: Option<u32>,
}

/// A history listing entry: the global append sequence number (for paging) and the row.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub seq: i64,
    pub row: ResourceRow,
}

/// What a history query asks for, newest first.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub rtype: Option<String>,
    pub id: Option<String>,
    /// Only versions with `last_updated_us >= since_us`.
    pub since_us: Option<i64>,
    /// Only entries with `seq < before_seq` (the paging cursor).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// A data key's lifecycle (`data_key.state`). A compartment has one live key (`Active` or
/// `Rotate`) used for new data, and during a data-key rotation one `Retiring` key that only
/// opens the versions not yet re-sealed; no new version may reference a `Retiring` key.
pub const DATA_KEY_ACTIVE: &str = "active";
/// Marked by `key rotate-data`: still live; the rotation job gives the compartment a new key.
pub const DATA_KEY_ROTATE: &str = "rotate";
/// Replaced by a newer key of the same compartment; dropped once no version references it.
pub const DATA_KEY_RETIRING: &str = "retiring";
/// The `meta` key holding the oldest KEK version new wraps may use (raised before a KEK
/// version is destroyed, so that a data key wrapped under it cannot be inserted afterwards).
pub const META_KEK_WRAP_FLOOR: &str = "kek_wrap_floor";

/// How far a data-key rotation has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataRotationProgress {
    /// Live keys marked for rotation that have no new generation yet.
    pub keys_to_rotate: u64,
    /// Old generations still present (they still open some versions, or are about to go).
    pub keys_retiring: u64,
    /// Resource versions sealed under a key marked for rotation or retiring.
    pub versions_remaining: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeyRow {
    pub id: u64,
    pub compartment: String,
    pub wrapped: Vec<u8>,
    pub kek_version: u32,
}

/// A second admin's approval of one crypto-shred: stored by the hash of the one-time token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredApprovalRow {
    /// SHA-256 hex of the approval token; the token itself is never stored.
    pub token_hash: String,
    pub compartment: String,
    /// The admin who approved (who may not also be the one who shreds).
    pub approver_id: String,
    pub expires_at: i64,
    pub used: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRow {
    pub id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub organization: Option<String>,
    pub disabled: bool,
    pub locked: bool,
    pub failed_logins: u32,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRow {
    pub principal_id: String,
    /// PHC string (Argon2id).
    pub password_hash: String,
    /// The TOTP secret, sealed by the keyring.
    pub totp_secret_sealed: Vec<u8>,
    /// The last TOTP time step accepted (replay protection).
    pub totp_last_step: i64,
    /// SHA-256 hex digests of the unused recovery codes.
    pub recovery_code_hashes: Vec<String>,
}

impl std::fmt::Debug for CredentialRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRow")
            .field("principal_id", &self.principal_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentRow {
    /// SHA-256 hex of the enrollment token; the token itself is never stored.
    pub token_hash: String,
    pub principal_id: String,
    pub expires_at: i64,
    /// The TOTP secret offered by `enroll/start`, sealed, until `enroll/finish` proves it.
    pub pending_totp_sealed: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// SHA-256 hex of the bearer token.
    pub token_hash: String,
    pub principal_id: String,
    pub created_at: i64,
    pub last_seen: i64,
    pub revoked: bool,
}

/// One atomic change. A list of them passed to [`Store::write`] commits all or nothing.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WriteOp {
    SetMeta {
        key: String,
        value: String,
    },
    /// Append a resource version. [`StoreError::StaleKey`] if its data key is gone or retiring.
    PutResource(NewResourceVersion),
    /// Insert unless the compartment already has a live key (a concurrent request won the
    /// race). [`StoreError::StaleKey`] if `kek_version` is below the KEK wrap floor.
    InsertDataKeyIfAbsent {
        compartment: String,
        wrapped: Vec<u8>,
        kek_version: u32,
        created_at: i64,
    },
    /// Insert the first data key of a compartment under `id`, an id from
    /// [`Store::reserve_data_key_id`], in the same transaction as the data sealed under it (so a
    /// write that fails leaves no key behind). [`StoreError::StaleKey`] if the compartment has a
    /// live key already (a concurrent write created it: seal again under that key) or if
    /// `kek_version` is below the KEK wrap floor.
    InsertDataKey {
        id: u64,
        compartment: String,
        wrapped: Vec<u8>,
        kek_version: u32,
        created_at: i64,
    },
    /// Replace a data key's wrapping (same key, new KEK version), unless the row changed
    /// meanwhile (re-wrapped or shredded): then nothing happens.
    /// [`StoreError::StaleKey`] if `kek_version` is below the KEK wrap floor.
    RewrapDataKey {
        id: u64,
        from_kek_version: u32,
        wrapped: Vec<u8>,
        kek_version: u32,
    },
    /// Mark the live data keys of every compartment starting with `compartment_prefix` (a
    /// literal prefix) for rotation (`key rotate-data`).
    MarkDataKeysForRotation {
        compartment_prefix: String,
    },
    /// Give a compartment a new data key: the marked key `old_id` becomes retiring and the new
    /// one live. Nothing happens if `old_id` is no longer marked (rotated already, or shredded).
    /// [`StoreError::StaleKey`] if `kek_version` is below the KEK wrap floor.
    RotateDataKey {
        old_id: u64,
        compartment: String,
        wrapped: Vec<u8>,
        kek_version: u32,
        created_at: i64,
    },
    /// Replace a resource version's ciphertext with one sealed under `dek_id`, unless the
    /// version is no longer sealed under `from_dek_id` (re-sealed or shredded meanwhile).
    ResealResourceVersion {
        rtype: String,
        id: String,
        version: u32,
        from_dek_id: u64,
        dek_id: u64,
        body: Vec<u8>,
    },
    /// Delete a retiring data key, unless some resource version still references it.
    DropRetiredDataKey {
        id: u64,
    },
    /// Crypto-shred a patient compartment: delete its data keys (every generation), those of
    /// every compartment naming it among several patients, and every resource version sealed
    /// under them, with the resources' current pointers and search-index rows. Idempotent.
    ShredCompartment {
        compartment: String,
        /// The shredded key's id: versions sealed under it are deleted even if its row is gone.
        data_key_id: u64,
    },
    InsertShredApproval(ShredApprovalRow),
    /// Mark an approval used; [`StoreError::Conflict`] if it is absent or already used.
    ConsumeShredApproval {
        token_hash: String,
    },
    InsertPrincipal(PrincipalRow),
    UpdatePrincipal {
        principal_id: String,
        disabled: Option<bool>,
        locked: Option<bool>,
        failed_logins: Option<u32>,
    },
    /// Count one failed login; lock the account once `lock_after` consecutive failures are reached.
    RecordLoginFailure {
        principal_id: String,
        lock_after: u32,
    },
    SetCredential(CredentialRow),
    DeleteCredential {
        principal_id: String,
    },
    /// Record a TOTP step as used; [`StoreError::Conflict`] unless it is later than the last one.
    AdvanceTotpStep {
        principal_id: String,
        step: i64,
    },
    /// Remove one recovery code; [`StoreError::Conflict`] if it is not (or no longer) there.
    ConsumeRecoveryCode {
        principal_id: String,
        code_hash: String,
    },
    InsertEnrollment(EnrollmentRow),
    SetEnrollmentPendingTotp {
        token_hash: String,
        sealed: Vec<u8>,
    },
    DeleteEnrollments {
        principal_id: String,
    },
    InsertSession(SessionRow),
    TouchSession {
        token_hash: String,
        last_seen: i64,
    },
    RevokeSession {
        token_hash: String,
    },
    RevokeSessions {
        principal_id: String,
    },
    /// Append an audit event to its node's hash chain: the store assigns the next sequence
    /// number and links the hash, inside the same transaction as the other operations, so a
    /// data change and its audit event commit together. Any failure of this operation is
    /// reported as [`StoreError::Unavailable`] (the request must then fail with no effect).
    AppendAudit(NewAuditEvent),
    /// Record a signed checkpoint; [`StoreError::Conflict`] unless it starts right after the
    /// node's previous checkpoint.
    InsertCheckpoint(carevault_audit::Checkpoint),
    /// Record (or change) the organization that manages a patient compartment.
    SetCompartmentOrganization {
        compartment: String,
        organization: Option<String>,
    },
    InsertApiKey(ApiKeyRow),
    RevokeApiKey {
        name: String,
    },
    /// Store a custom policy (replacing one of the same name) and bump the policy-set version.
    PutPolicy {
        name: String,
        text: String,
        at: i64,
    },
    /// Remove a custom policy and bump the policy-set version; [`StoreError::Conflict`] if absent.
    DeletePolicy {
        name: String,
        at: i64,
    },
    InsertBreakGlass(BreakGlassRow),
    /// Insert or replace a bulk export job (`$export`): its state survives a restart.
    PutExportJob(ExportJobRow),
    /// Forget a bulk export job (cancelled or expired); absent is not an error.
    DeleteExportJob {
        id: String,
    },
    /// Replace a resource's blind-index entries (none for a deleted resource).
    ReplaceSearchIndex {
        rtype: String,
        id: String,
        /// (parameter, truncated keyed HMAC of an index key)
        tokens: Vec<(String, Vec<u8>)>,
        /// Only while this is still the resource's current (not deleted) version; otherwise the
        /// op changes nothing. The index rebuild's guard: another node may write a newer version
        /// (and its entries) between the rebuild's read and its write.
        only_if_current: Option<u32>,
    },
}

/// One AND-ed condition of an index lookup: the resource must have, for `param`, at least one
/// of `tokens`.
#[derive(Clone, Debug)]
pub struct IndexClause {
    pub param: String,
    pub tokens: Vec<Vec<u8>>,
}

/// An API key (a sub-account): stored by the hash of the key, never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub name: String,
    pub key_hash: String,
    /// The user who minted it for themselves; None for a service key made by an admin.
    pub owner_id: Option<String>,
    /// Normalized scopes (`Observation.r`, `*.s`, ...).
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub expires_at: i64,
    pub revoked: bool,
    pub created_at: i64,
    /// The SHA-256 fingerprint (`AB:CD:...`) of the client certificate the key must arrive
    /// with; None: any connection (or none) will do.
    pub client_cert_sha256: Option<String>,
}

/// A break-glass grant: emergency read access beyond the principal's organizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlassRow {
    pub principal_id: String,
    pub until: i64,
    /// Limited to one patient compartment, or any when None.
    pub patient: Option<String>,
    pub reason: String,
    pub created_at: i64,
}

/// A bulk export job (`$export`). The store keeps its state as an opaque JSON `body` (the
/// server's own record of request, progress and output files) beside the columns it is found
/// by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportJobRow {
    pub id: String,
    /// Who started it: the only principal its status and files are served to.
    pub principal_id: String,
    pub created_us: i64,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRow {
    pub name: String,
    pub text: String,
    pub updated_at: i64,
}

/// An audit event before it has a place in the chain. `body` is the canonical record; the
/// other fields are copies kept in columns for searching.
#[derive(Clone, Debug)]
pub struct NewAuditEvent {
    pub node: String,
    pub time_us: i64,
    pub principal: String,
    pub action: String,
    pub outcome: String,
    pub patients: Vec<String>,
    pub body: Vec<u8>,
}

/// Filters for searching the audit trail; results newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub principal: Option<String>,
    pub patient: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Paging cursor: only events strictly older than this (time_us, node, seq).
    pub before: Option<(i64, String, u64)>,
    pub limit: u32,
}

/// The storage interface every backend implements.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Apply `ops` atomically (all or nothing) and durably.
    async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// The current version of a resource (possibly a deletion marker).
    async fn resource_current(
        &self,
        rtype: &str,
        id: &str,
    ) -> Result<Option<ResourceRow>, StoreError>;
    async fn resource_version(
        &self,
        rtype: &str,
        id: &str,
        version: u32,
    ) -> Result<Option<ResourceRow>, StoreError>;
    async fn history(&self, query: HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Up to `limit` stored versions of any resource with `seq > after_seq`, oldest first (a
    /// walk over every version, for upgrades).
    async fn versions_after(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError>;

    async fn data_key_by_compartment(
        &self,
        compartment: &str,
    ) -> Result<Option<DataKeyRow>, StoreError>;
    async fn data_key_by_id(&self, id: u64) -> Result<Option<DataKeyRow>, StoreError>;
    /// An id for a new data key ([`WriteOp::InsertDataKey`]) that no data key ever had and no
    /// other caller (on any node) gets: known before the key is written, so data can be sealed
    /// under it and committed with it. Backends hand ids out of blocks reserved from the
    /// database's key sequence, so most calls do no I/O; ids of keys never written are skipped.
    async fn reserve_data_key_id(&self) -> Result<u64, StoreError>;
    /// The ids of every data key (all generations) whose compartment names the patient
    /// compartment `patient` (`Patient/<id>`): its own, and those of resources naming several
    /// patients (`Patient/a Patient/b`), which a shred of any of them deletes.
    async fn data_keys_naming(&self, patient: &str) -> Result<Vec<u64>, StoreError>;
    /// How many data keys each KEK version wraps, by version.
    async fn data_key_counts(&self) -> Result<Vec<(u32, u64)>, StoreError>;
    /// Up to `limit` data keys wrapped under a KEK version other than `kek_version`, by id.
    async fn data_keys_not_under(
        &self,
        kek_version: u32,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError>;
    async fn shred_approval(
        &self,
        token_hash: &str,
    ) -> Result<Option<ShredApprovalRow>, StoreError>;
    /// Up to `limit` live data keys marked for rotation, by id.
    async fn data_keys_to_rotate(&self, limit: u32) -> Result<Vec<DataKeyRow>, StoreError>;
    /// Up to `limit` resource versions sealed under a retiring data key, oldest first.
    async fn versions_under_retiring_keys(
        &self,
        limit: u32,
    ) -> Result<Vec<ResourceRow>, StoreError>;
    /// Up to `limit` retiring data keys no resource version references any more.
    async fn unused_retiring_keys(&self, limit: u32) -> Result<Vec<u64>, StoreError>;
    async fn data_rotation_progress(&self) -> Result<DataRotationProgress, StoreError>;

    async fn principal_by_username(
        &self,
        username: &str,
    ) -> Result<Option<PrincipalRow>, StoreError>;
    async fn principal_by_id(&self, id: &str) -> Result<Option<PrincipalRow>, StoreError>;
    async fn principals(&self) -> Result<Vec<PrincipalRow>, StoreError>;
    async fn credential(&self, principal_id: &str) -> Result<Option<CredentialRow>, StoreError>;
    async fn enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRow>, StoreError>;
    async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError>;
    /// A session and its principal: the lookup behind every authenticated request, which a
    /// backend can answer in one round trip.
    async fn session_principal(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRow, Option<PrincipalRow>)>, StoreError> {
        let Some(session) = self.session(token_hash).await? else {
            return Ok(None);
        };
        let principal = self.principal_by_id(&session.principal_id).await?;
        Ok(Some((session, principal)))
    }

    /// Events in chain order (node, then sequence), after `after` (node, seq), at most `limit`.
    async fn audit_events(
        &self,
        after: Option<(String, u64)>,
        limit: u32,
    ) -> Result<Vec<carevault_audit::StoredEvent>, StoreError>;
    async fn audit_checkpoints(&self) -> Result<Vec<carevault_audit::Checkpoint>, StoreError>;
    /// The last event's (sequence, hash) and the last checkpoint of a node.
    async fn audit_head(
        &self,
        node: &str,
    ) -> Result<(Option<(u64, [u8; 32])>, Option<carevault_audit::Checkpoint>), StoreError>;
    async fn compartment_organization(
        &self,
        compartment: &str,
    ) -> Result<Option<Option<String>>, StoreError>;
    /// The organizations of many compartments in one read (unknown ones are left out).
    async fn compartment_organizations(
        &self,
        compartments: Vec<String>,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut out = Vec::with_capacity(compartments.len());
        for c in compartments {
            if let Some(org) = self.compartment_organization(&c).await? {
                out.push((c, org));
            }
        }
        Ok(out)
    }
    /// Accounts locked after failed logins, and sessions not revoked, created after
    /// `created_after` and last seen after `seen_after` (unix seconds).
    async fn identity_counts(
        &self,
        created_after: i64,
        seen_after: i64,
    ) -> Result<stats::IdentityCounts, StoreError>;
    /// Sizes, pool use and commit figures, for the metrics. Never fails: what cannot be read
    /// is left out.
    async fn stats(&self) -> stats::StoreStats;
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StoreError>;
    async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// The custom policies and the policy-set version they make.
    async fn policies(&self) -> Result<(i64, Vec<PolicyRow>), StoreError>;
    /// The policy-set version alone (a cheap check whether another node changed policies).
    async fn policy_version(&self) -> Result<i64, StoreError> {
        Ok(self.policies().await?.0)
    }
    /// Grants of `principal_id` still valid at `now`.
    async fn break_glass_grants(
        &self,
        principal_id: &str,
        now: i64,
    ) -> Result<Vec<BreakGlassRow>, StoreError>;

    /// Ids of current resources of `rtype` whose index satisfies every clause.
    async fn search_index(
        &self,
        rtype: &str,
        clauses: Vec<IndexClause>,
    ) -> Result<Vec<String>, StoreError>;
    /// The current versions of many resources of one type, in one read (absent ids are skipped).
    async fn resources_current(
        &self,
        rtype: &str,
        ids: Vec<String>,
    ) -> Result<Vec<ResourceRow>, StoreError>;
    /// The (type, id) of every current, not deleted resource whose current version is sealed
    /// under one of `dek_ids` (a compartment's keys), sorted.
    async fn current_under_keys(
        &self,
        dek_ids: Vec<u64>,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Ids of every current, not deleted resource of `rtype` (when no index lookup applies).
    async fn resource_ids(&self, rtype: &str) -> Result<Vec<String>, StoreError>;

    async fn audit_search(
        &self,
        query: AuditQuery,
    ) -> Result<Vec<carevault_audit::StoredEvent>, StoreError>;

    /// One bulk export job.
    async fn export_job(&self, id: &str) -> Result<Option<ExportJobRow>, StoreError>;
    /// Every bulk export job, oldest first (resumed at start, swept when expired).
    async fn export_jobs(&self) -> Result<Vec<ExportJobRow>, StoreError>;
}

#[cfg(test)]
mod tests {
    /// FNV-1a over the migrations joined by NUL bytes.
    fn fingerprint(migrations: &[&str]) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for (i, sql) in migrations.iter().enumerate() {
            let sep: &[u8] = if i == 0 { b"" } else { b"\0" };
            for byte in sep.iter().chain(sql.as_bytes()) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// Existing databases upgrade by version number: a migration that has shipped is never
    /// edited, renumbered or dropped (a new one is appended).
    #[test]
    fn shipped_migrations_are_unchanged() {
        assert_eq!(crate::sqlite::MIGRATIONS.len(), 12);
        assert_eq!(
            fingerprint(crate::sqlite::MIGRATIONS),
            0xd6dc_d653_0f61_d45d
        );
        assert_eq!(crate::postgres::MIGRATIONS.len(), 7);
        assert_eq!(
            fingerprint(crate::postgres::MIGRATIONS),
            0x1fda_5753_77ca_8cc6
        );
    }
}
