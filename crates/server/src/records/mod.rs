//! The records service: FHIR resources in, sealed versions out. Validates, authorizes (Cedar,
//! through [`Authz`]), assigns ids and versions, stamps `meta`, seals under the compartment's
//! data key, and appends with optimistic concurrency, the audit event committing with the data.
//! Knows nothing of HTTP.

mod access;
mod chain;
mod compartments;
mod conditional;
mod deid;
mod read;
mod sealing;
mod search;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use carevault_fhir::{ResourceId, ResourceType, Validator};
use carevault_store::{BreakGlassRow, Store, WriteOp};

use crate::audit::AuditScope;
use crate::authz::Authz;
use crate::clock::SharedClock;
use crate::compartment::Compartment;
use crate::config::SearchLimits;
use crate::identity::Principal;
use crate::keyring::{Keyring, NewDataKeys};
use crate::names::OrganizationId;
use crate::search::SearchIndex;

pub use chain::MAX_CHAIN_MATCHES;
pub use compartments::{EverythingPage, EverythingQuery};
pub use conditional::Selected;
pub(crate) use deid::mark_deidentified_as;
pub use search::{BulkRead, SearchPage};

/// Who asks, the audit event of their request, and (inside a transaction Bundle) the
/// transaction that collects the writes instead of committing each one.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    pub audit: &'a AuditScope,
    pub tx: Option<&'a Tx>,
    /// Organizations of compartments read in bulk for this request (a search's candidates).
    pub organizations: Option<&'a HashMap<Compartment, Option<OrganizationId>>>,
    /// The principal's break-glass grants, read once for a search's candidates.
    pub break_glass_grants: Option<&'a [BreakGlassRow]>,
}

impl<'a> Caller<'a> {
    pub fn new(principal: &'a Principal, audit: &'a AuditScope) -> Self {
        Self {
            principal,
            audit,
            tx: None,
            organizations: None,
            break_glass_grants: None,
        }
    }
}

/// The writes of a transaction Bundle, committed together (all or nothing) by
/// [`Records::commit_tx`], each entry's audit event with them.
#[derive(Default)]
pub struct Tx {
    ops: std::sync::Mutex<Vec<WriteOp>>,
    scopes: std::sync::Mutex<Vec<AuditScope>>,
    /// Patients created in this transaction: their organizations, for authorizing the
    /// entries that refer to them before anything is committed.
    organizations: std::sync::Mutex<HashMap<Compartment, Option<OrganizationId>>>,
    /// Data keys of compartments that get their first data in this transaction: committed
    /// with it, shared by its entries.
    keys: NewDataKeys,
}

impl Tx {
    fn push(&self, ops: Vec<WriteOp>, audit: &AuditScope, status: u16) {
        let mut all = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(ops);
        all.push(audit.op(status));
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(audit.clone());
    }
}

/// How [`Records::commit_tx`] ended when nothing failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxCommit {
    Committed,
    /// Nothing was written: an entry was sealed under a data key that `key rotate-data` retired
    /// meanwhile. Preparing the transaction again seals it under the live keys.
    DataKeyRotated,
}

/// One resource version as the API serves it: plaintext JSON, or a deletion marker.
#[derive(Clone, Debug)]
pub struct Version {
    pub rtype: ResourceType,
    pub id: ResourceId,
    pub version: u32,
    pub last_updated_us: i64,
    pub deleted: bool,
    /// The resource's JSON (empty for a deletion).
    pub json: Vec<u8>,
    /// The compartment whose key sealed it (see [`crate::compartment`]): its patients, its
    /// organization, or the environment's.
    pub compartment: Compartment,
}

impl Version {
    /// The `Patient/<id>` compartments this version belongs to.
    fn patients(&self) -> impl Iterator<Item = Compartment> + '_ {
        self.compartment.patient_compartments()
    }
}

/// An entry of a history listing, with its paging cursor.
#[derive(Clone, Debug)]
pub struct HistoryItem {
    pub seq: i64,
    pub version: Version,
}

/// The outcome of a read: present, or deleted at some version.
pub enum Current {
    Present(Version),
    Deleted { version: u32, last_updated_us: i64 },
}

pub struct Records {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    validator: Arc<Validator>,
    authz: Arc<Authz>,
    index: Arc<SearchIndex>,
    clock: SharedClock,
    search_limits: SearchLimits,
    /// The environment's de-identification secret (keyring secret `deidentify`): keys the
    /// pseudonyms of what developers read. Without it, their reads fail closed.
    deid_secret: Option<zeroize::Zeroizing<[u8; 32]>>,
}

impl Records {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        validator: Arc<Validator>,
        authz: Arc<Authz>,
        index: Arc<SearchIndex>,
        clock: SharedClock,
        search_limits: SearchLimits,
    ) -> Self {
        Self {
            store,
            keyring,
            validator,
            authz,
            index,
            clock,
            search_limits,
            deid_secret: None,
        }
    }

    /// The secret that keys developers' de-identified view (see `records::deid`).
    #[must_use]
    pub fn with_deidentification_secret(mut self, secret: zeroize::Zeroizing<[u8; 32]>) -> Self {
        self.deid_secret = Some(secret);
        self
    }
}
