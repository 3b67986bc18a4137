//! The records service: FHIR resources in, sealed versions out. Validates, authorizes (Cedar,
//! through [`Authz`]), assigns ids and versions, stamps `meta`, seals under the compartment's
//! data key, and appends with optimistic concurrency, the audit event committing with the data.
//! Knows nothing of HTTP.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use carevault_fhir::search::{self, Query, SortKey, Total};
use carevault_fhir::{ResourceId, ResourceType, Validator};
use carevault_store::{
    BreakGlassRow, HistoryQuery, NewResourceVersion, ResourceRow, Store, StoreError, WriteOp,
};
use serde_json::Value;

use crate::audit::AuditScope;
use crate::authz::{Authz, FhirAction, ResourceAttrs};
use crate::clock::{SharedClock, fhir_instant};
use crate::compartment;
use crate::error::{Error, Result};
use crate::identity::{Principal, PrincipalKind, Role};
use crate::keyring::Keyring;
use crate::search::SearchIndex;

mod compartments;
pub use compartments::{EverythingPage, EverythingQuery};

/// How often an update without `If-Match` retries after losing a race.
const UPDATE_RETRIES: usize = 8;

/// Who asks, the audit event of their request, and (inside a transaction Bundle) the
/// transaction that collects the writes instead of committing each one.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    pub audit: &'a AuditScope,
    pub tx: Option<&'a Tx>,
    /// Organizations of compartments read in bulk for this request (a search's candidates).
    pub organizations: Option<&'a HashMap<String, Option<String>>>,
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
    organizations: std::sync::Mutex<HashMap<String, Option<String>>>,
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
    pub compartment: Arc<str>,
}

impl Version {
    /// The `Patient/<id>` compartments this version belongs to.
    fn patients(&self) -> impl Iterator<Item = String> + '_ {
        compartment::patients(&self.compartment).map(str::to_owned)
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
}

/// One page of search results.
pub struct SearchPage {
    pub matches: Vec<Version>,
    /// `_include`d and `_revinclude`d resources.
    pub included: Vec<Version>,
    /// How many resources match in all (only those the caller may read).
    pub total: usize,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// What one search reads once and uses for every window of candidates it opens.
struct SearchKnows {
    /// The caller's active break-glass grants.
    grants: Vec<BreakGlassRow>,
    /// The organizations of the candidates' compartments read so far (shared database only:
    /// see [`Records::bulk_organizations`]).
    organizations: HashMap<String, Option<String>>,
}

impl Records {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        validator: Arc<Validator>,
        authz: Arc<Authz>,
        index: Arc<SearchIndex>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            keyring,
            validator,
            authz,
            index,
            clock,
        }
    }

    /// Create with an id the server chose beforehand (a transaction assigns ids first so that
    /// entries can refer to each other).
    pub async fn create_with_id(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        body: Value,
    ) -> Result<Version> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        let body = self.prepare(rtype, body, Some(id))?;
        let compartment = self
            .authorize_write(caller, FhirAction::Create, rtype, id, &body)
            .await?;
        self.append(caller, rtype, id, body, compartment, None, 1)
            .await
    }

    /// Create with a server-assigned id (any id in the body is replaced, as FHIR says).
    pub async fn create(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        body: Value,
    ) -> Result<Version> {
        let id = ResourceId::parse(&uuid::Uuid::new_v4().to_string())
            .map_err(|_| Error::Internal("generated id is not a valid FHIR id".into()))?;
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        let body = self.prepare(rtype, body, Some(&id))?;
        let compartment = self
            .authorize_write(caller, FhirAction::Create, rtype, &id, &body)
            .await?;
        self.append(caller, rtype, &id, body, compartment, None, 1)
            .await
    }

    /// Update (or create with a client-assigned id). `if_match` is the version the client
    /// last saw; without it the update applies to whatever version is current.
    /// Returns the new version and whether it created the resource.
    pub async fn update(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        body: Value,
        if_match: Option<u32>,
    ) -> Result<(Version, bool)> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        match body.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id.as_str() => {}
            Some(_) => {
                return Err(Error::BadRequest(
                    "the id in the body does not match the id in the URL".into(),
                ));
            }
            None => {
                return Err(Error::BadRequest(
                    "the resource must carry the id given in the URL".into(),
                ));
            }
        }
        let body = self.prepare(rtype, body, None)?;
        for _ in 0..UPDATE_RETRIES {
            let current = self
                .store
                .resource_current(rtype.as_str(), id.as_str())
                .await?;
            let current_version = match current {
                Some(row) => {
                    // May the caller change what is there now? (Otherwise it is not theirs to see.)
                    let existing = self.open_row(rtype, id, row).await?;
                    self.authorize_existing(caller, FhirAction::Update, &existing)
                        .await?;
                    Some(existing.version)
                }
                None => None,
            };
            let action = if current_version.is_some() {
                FhirAction::Update
            } else {
                FhirAction::Create
            };
            let compartment = self
                .authorize_write(caller, action, rtype, id, &body)
                .await?;
            if let Some(expected) = if_match
                && current_version != Some(expected)
            {
                return Err(Error::PreconditionFailed(
                    "the resource has changed since the version given in If-Match".into(),
                ));
            }
            let next = current_version.map_or(1, |v| v + 1);
            match self
                .append(
                    caller,
                    rtype,
                    id,
                    body.clone(),
                    compartment,
                    current_version,
                    next,
                )
                .await
            {
                Ok(v) => return Ok((v, current_version.is_none())),
                Err(Error::Conflict(_)) if if_match.is_none() => continue,
                Err(Error::Conflict(_)) => {
                    return Err(Error::PreconditionFailed(
                        "the resource has changed since the version given in If-Match".into(),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(
            "the resource is being updated concurrently; try again".into(),
        ))
    }

    /// Delete: appends a deletion marker. Returns the deleted version, or None if the resource
    /// was already deleted.
    pub async fn delete(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<u32>> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        for _ in 0..UPDATE_RETRIES {
            let row = self
                .store
                .resource_current(rtype.as_str(), id.as_str())
                .await?
                .ok_or(Error::NotFound)?;
            let current = self.open_row(rtype, id, row).await?;
            self.authorize_existing(caller, FhirAction::Delete, &current)
                .await?;
            if current.deleted {
                return Ok(None);
            }
            let next = current.version + 1;
            let now = self.clock.now_us();
            // The marker is sealed too (empty plaintext), under the same compartment's key as
            // the version it ends, so it is bound to its row and attributed to its patient.
            let (dek_id, sealed) = self
                .keyring
                .seal(&current.compartment, &self.aad(rtype, id, next), b"")
                .await?;
            caller
                .audit
                .set_resource(rtype.as_str(), Some(id.as_str()), Some(next));
            caller.audit.add_patient(&current.compartment);
            let op = WriteOp::PutResource(NewResourceVersion {
                row: ResourceRow {
                    rtype: rtype.as_str().to_owned(),
                    id: id.as_str().to_owned(),
                    version: next,
                    last_updated_us: now,
                    deleted: true,
                    dek_id,
                    body: sealed,
                },
                expected_current: Some(current.version),
            });
            let unindex = WriteOp::ReplaceSearchIndex {
                rtype: rtype.as_str().to_owned(),
                id: id.as_str().to_owned(),
                tokens: Vec::new(),
            };
            match self.commit(caller, vec![op, unindex], 204).await {
                Ok(()) => return Ok(Some(next)),
                Err(StoreError::Conflict) => continue,
                // Its compartment's data key was rotated after we sealed: seal again.
                Err(StoreError::StaleKey) => {
                    self.keyring.forget_compartment(&current.compartment);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(
            "the resource is being updated concurrently; try again".into(),
        ))
    }

    pub async fn read(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Current> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        let row = self
            .store
            .resource_current(rtype.as_str(), id.as_str())
            .await?
            .ok_or(Error::NotFound)?;
        let v = self.open_row(rtype, id, row).await?;
        self.authorize_existing(caller, FhirAction::Read, &v)
            .await?;
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(v.version));
        caller.audit.add_patient(&v.compartment);
        if v.deleted {
            return Ok(Current::Deleted {
                version: v.version,
                last_updated_us: v.last_updated_us,
            });
        }
        Ok(Current::Present(v))
    }

    pub async fn vread(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        version: u32,
    ) -> Result<Version> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        let row = self
            .store
            .resource_version(rtype.as_str(), id.as_str(), version)
            .await?
            .ok_or(Error::NotFound)?;
        let v = self.open_row(rtype, id, row).await?;
        self.authorize_existing(caller, FhirAction::Vread, &v)
            .await?;
        caller.audit.add_patient(&v.compartment);
        if v.deleted {
            return Err(Error::Gone);
        }
        Ok(v)
    }

    /// Versions newest first: of one resource, or of one type. A type's history holds only
    /// what the caller may read; an instance's history is refused (404/403) if they may not.
    pub async fn history(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: Option<&ResourceId>,
        since_us: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<HistoryItem>> {
        caller
            .audit
            .set_resource(rtype.as_str(), id.map(ResourceId::as_str), None);
        if !self
            .authz
            .fhir_type(caller.principal, FhirAction::History, rtype)
        {
            return Err(Error::Forbidden);
        }
        let mut out = Vec::new();
        let mut cursor = before_seq;
        // Filtering can drop rows: keep reading until the page is full or the history ends.
        loop {
            let entries = self
                .store
                .history(HistoryQuery {
                    rtype: Some(rtype.as_str().to_owned()),
                    id: id.map(|i| i.as_str().to_owned()),
                    since_us,
                    before_seq: cursor,
                    limit,
                })
                .await?;
            let exhausted = entries.len() < limit as usize;
            for entry in entries {
                cursor = Some(entry.seq);
                let id = ResourceId::parse(&entry.row.id)
                    .map_err(|_| Error::Integrity("stored id is invalid".into()))?;
                let version = self.open_row(rtype, &id, entry.row).await?;
                // Rows the caller may not read are left out, not an error.
                match self
                    .authorize_existing(caller, FhirAction::History, &version)
                    .await
                {
                    Ok(()) => {}
                    Err(Error::NotFound | Error::Forbidden) => continue,
                    Err(e) => return Err(e),
                }
                caller.audit.add_patient(&version.compartment);
                out.push(HistoryItem {
                    seq: entry.seq,
                    version,
                });
                if out.len() == limit as usize {
                    return Ok(out);
                }
            }
            if exhausted {
                return Ok(out);
            }
        }
    }

    /// FHIR search: blind-index lookup, then decrypt, check exactly, authorize, sort, page.
    /// Only resources the caller may read are returned or counted.
    pub async fn search(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
    ) -> Result<SearchPage> {
        self.search_within(caller, rtype, query, None).await
    }

    async fn search_within(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
        within: Option<Vec<String>>,
    ) -> Result<SearchPage> {
        caller.audit.set_resource(rtype.as_str(), None, None);
        if !self
            .authz
            .fhir_type(caller.principal, FhirAction::Search, rtype)
        {
            return Err(Error::Forbidden);
        }
        let lookups: Vec<_> = query
            .clauses
            .iter()
            .filter_map(|c| self.index.lookup(rtype, c))
            .collect();
        // `_id` is not in the blind index: its values are the candidates (those that do not
        // exist are not found when the candidates are read).
        let by_id = query
            .clauses
            .iter()
            .filter_map(search::id_candidates)
            .reduce(|mut all, next| {
                let next: HashSet<String> = next.into_iter().collect();
                all.retain(|id| next.contains(id));
                all
            })
            .map(|mut ids| {
                ids.sort_unstable();
                ids.dedup();
                ids
            });
        let mut ids = match (by_id, within) {
            (None, Some(within)) if lookups.is_empty() => within,
            (by_id, Some(within)) => {
                let within: HashSet<String> = within.into_iter().collect();
                let mut ids = match by_id {
                    Some(ids) => ids,
                    None => self.store.search_index(rtype.as_str(), lookups).await?,
                };
                ids.retain(|id| within.contains(id));
                ids
            }
            (Some(mut ids), None) if !lookups.is_empty() => {
                let indexed: HashSet<String> = self
                    .store
                    .search_index(rtype.as_str(), lookups)
                    .await?
                    .into_iter()
                    .collect();
                ids.retain(|id| indexed.contains(id));
                ids
            }
            (Some(ids), None) => ids,
            (None, None) if lookups.is_empty() => self.store.resource_ids(rtype.as_str()).await?,
            (None, None) => self.store.search_index(rtype.as_str(), lookups).await?,
        };
        let after = query.page.as_deref().map(decode_cursor).transpose()?;
        // In the default order (by id) and without a total, candidates are opened in id order
        // and only until the page is full: a broad search (a common name prefix, a type with no
        // filter) costs a page's worth of decryption and authorization, not the whole bucket's.
        let page_only =
            query.sort.is_empty() && matches!(query.total, Total::None) && !query.summary_count;
        let chunk = if page_only {
            ids.sort_unstable();
            ids.dedup();
            if let Some((_, after_id)) = &after {
                ids.retain(|id| id.as_str() > after_id.as_str());
            }
            (query.count as usize + 1).max(32)
        } else {
            ids.len().max(1)
        };
        // Only the members the clauses and sort keys read are built: a candidate's other
        // members (text, components, extensions) are skipped, not allocated.
        let read = search::elements_read(rtype, &query.clauses, &query.sort);
        let mut known = SearchKnows {
            // The caller's active break-glass grants, read once per search, not per chunk.
            grants: if may_break_glass(caller.principal) {
                self.store
                    .break_glass_grants(&caller.principal.id, self.clock.now_secs())
                    .await?
            } else {
                Vec::new()
            },
            organizations: HashMap::new(),
        };
        // A Patient's compartment is its own id, so when no policy reads labels the policies can
        // decide a candidate before its row is fetched and opened: three in four candidates of a
        // name search at a multi-organization site are other organizations' patients.
        let decide_by_id = rtype == ResourceType::PATIENT && self.authz.decides_without_labels();
        let mut found: Vec<(Vec<Option<String>>, Version)> = Vec::new();
        let mut rest = ids.as_slice();
        while !rest.is_empty() {
            let mut batch = Vec::with_capacity(chunk.min(rest.len()));
            while batch.len() < chunk && !rest.is_empty() {
                let (window, tail) = rest.split_at((chunk - batch.len()).min(rest.len()));
                rest = tail;
                if decide_by_id {
                    batch.extend(self.patients_not_denied(caller, &mut known, window).await?);
                } else {
                    batch.extend_from_slice(window);
                }
            }
            found.extend(
                self.matching(caller, rtype, query, &read, &mut known, batch)
                    .await?,
            );
            if page_only && found.len() > query.count as usize {
                break;
            }
        }
        found.sort_by(|(a, va), (b, vb)| {
            compare_keys(a, b, &query.sort).then_with(|| va.id.cmp(&vb.id))
        });
        // Without a total asked for, `found` may stop after the page (see `page_only`).
        let total = found.len();
        let start = match &after {
            Some((keys, id)) => found
                .iter()
                .position(|(k, v)| {
                    compare_keys(k, keys, &query.sort).then_with(|| v.id.as_str().cmp(id.as_str()))
                        == std::cmp::Ordering::Greater
                })
                .unwrap_or(found.len()),
            None => 0,
        };
        let page: Vec<(Vec<Option<String>>, Version)> = found
            .into_iter()
            .skip(start)
            .take(query.count as usize + 1)
            .collect();
        let next = (page.len() > query.count as usize)
            .then(|| {
                (query.count as usize)
                    .checked_sub(1)
                    .and_then(|last| page.get(last))
                    .map(|(k, v)| encode_cursor(k, v.id.as_str()))
            })
            .flatten();
        let matches: Vec<Version> = page
            .into_iter()
            .take(query.count as usize)
            .map(|(_, v)| v)
            .collect();
        for v in &matches {
            caller.audit.add_patient(&v.compartment);
        }
        let included = self.includes(caller, rtype, query, &matches).await?;
        for v in &included {
            caller.audit.add_patient(&v.compartment);
        }
        Ok(SearchPage {
            matches,
            included,
            total,
            next,
        })
    }

    /// `_include` targets of a page and `_revinclude` sources pointing at it, readable ones only.
    async fn includes(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
        page: &[Version],
    ) -> Result<Vec<Version>> {
        let mut seen: HashSet<(ResourceType, String)> = page
            .iter()
            .map(|v| (v.rtype, v.id.as_str().to_owned()))
            .collect();
        let mut out = Vec::new();
        if query.include.is_empty() && query.revinclude.is_empty() {
            return Ok(out);
        }
        let parsed: Vec<(Version, Value)> = page
            .iter()
            .filter_map(|v| serde_json::from_slice(&v.json).ok().map(|j| (v.clone(), j)))
            .collect();
        for inc in query.include.iter().filter(|i| i.source == rtype) {
            for (_, json) in &parsed {
                for reference in search::references(rtype, json, inc.param) {
                    let Some((t, id)) = reference.split_once('/') else {
                        continue;
                    };
                    let (Ok(t), Ok(id)) = (ResourceType::parse(t), ResourceId::parse(id)) else {
                        continue;
                    };
                    if inc.target.is_some_and(|target| target != t)
                        || !seen.insert((t, id.as_str().to_owned()))
                    {
                        continue;
                    }
                    if let Some(v) = self.readable_current(caller, t, &id).await? {
                        out.push(v);
                    }
                }
            }
        }
        for inc in &query.revinclude {
            for (v, _) in &parsed {
                let reference = format!("{}/{}", v.rtype, v.id);
                // The index key of a reference (see carevault_fhir::search's key scheme).
                let token = self
                    .index
                    .token(inc.source, inc.param.name, &format!("r:{reference}"));
                let ids = self
                    .store
                    .search_index(
                        inc.source.as_str(),
                        vec![carevault_store::IndexClause {
                            param: inc.param.name.to_owned(),
                            tokens: vec![token],
                        }],
                    )
                    .await?;
                for id in ids {
                    let Ok(id) = ResourceId::parse(&id) else {
                        continue;
                    };
                    if !seen.insert((inc.source, id.as_str().to_owned())) {
                        continue;
                    }
                    if let Some(found) = self.readable_current(caller, inc.source, &id).await? {
                        let refs = serde_json::from_slice::<Value>(&found.json)
                            .map(|j| search::references(inc.source, &j, inc.param))
                            .unwrap_or_default();
                        if refs.contains(&reference) {
                            out.push(found);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn readable_current(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<Version>> {
        let Some(row) = self
            .store
            .resource_current(rtype.as_str(), id.as_str())
            .await?
        else {
            return Ok(None);
        };
        if row.deleted {
            return Ok(None);
        }
        let v = self.open_row(rtype, id, row).await?;
        Ok(self
            .may_read(caller, FhirAction::Read, &v)
            .await?
            .then_some(v))
    }

    /// The candidates among `ids` that match every clause and that the caller may read, with
    /// their sort keys.
    async fn matching(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
        read: &BTreeSet<&'static str>,
        known: &mut SearchKnows,
        ids: Vec<String>,
    ) -> Result<Vec<(Vec<Option<String>>, Version)>> {
        let mut opened: Vec<Version> = Vec::new();
        for row in self.store.resources_current(rtype.as_str(), ids).await? {
            if row.deleted {
                continue;
            }
            let Ok(id) = ResourceId::parse(&row.id) else {
                continue;
            };
            opened.push(self.open_row(rtype, &id, row).await?);
        }
        self.bulk_organizations(
            &mut known.organizations,
            opened.iter().flat_map(Version::patients),
        )
        .await?;
        let (grants, organizations) = (known.grants.as_slice(), &known.organizations);
        let caller = Caller {
            organizations: Some(organizations),
            break_glass_grants: Some(grants),
            ..caller
        };
        let mut found = Vec::with_capacity(opened.len());
        'candidates: for v in opened {
            let attrs = self.existing_attrs(caller, &v).await?;
            // Left out before its JSON is parsed: most candidates of a broad search (a name
            // prefix) belong to other organizations.
            let mut decisions = Vec::with_capacity(attrs.len());
            for attrs in &attrs {
                match self.search_decision(caller, attrs, grants) {
                    Some(decision) => decisions.push(decision),
                    None => continue 'candidates,
                }
            }
            let json = search::parse_members(&v.json, read)
                .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
            if !query
                .clauses
                .iter()
                .all(|c| search::matches(rtype, &json, c))
            {
                continue;
            }
            for (attrs, decision) in attrs.iter().zip(decisions) {
                match self
                    .authorize_decided(caller, FhirAction::Search, attrs, true, decision)
                    .await
                {
                    Ok(()) => {}
                    Err(Error::NotFound | Error::Forbidden) => continue 'candidates,
                    Err(e) => return Err(e),
                }
            }
            let keys = query
                .sort
                .iter()
                .map(|k| search::sort_value(rtype, &json, k))
                .collect();
            found.push((keys, v));
        }
        Ok(found)
    }

    /// With a shared database the organizations are not cached across requests (another node
    /// may change them): a search reads those of its candidates' compartments not yet in `known`
    /// in one query, instead of one each, and keeps them in `known` for the rest of the request.
    /// On a single node the cache answers and `known` stays empty.
    async fn bulk_organizations(
        &self,
        known: &mut HashMap<String, Option<String>>,
        compartments: impl Iterator<Item = String>,
    ) -> Result<()> {
        if !self.authz.shared_database() {
            return Ok(());
        }
        let missing: BTreeSet<String> = compartments.filter(|c| !known.contains_key(c)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let found = self
            .store
            .compartment_organizations(missing.iter().cloned().collect())
            .await?;
        // A compartment without a row has no organization, as `compartment_organization` says.
        known.extend(missing.into_iter().map(|c| (c, None)));
        known.extend(found);
        Ok(())
    }

    /// The Patient ids among `ids` that [`Self::matching`] would not leave out as denied by
    /// default, decided from the id alone (a Patient's compartment is itself). Only sound while
    /// the policies do not read labels ([`Authz::decides_without_labels`]): the decision made
    /// here without them is then the one `matching` would make with them.
    async fn patients_not_denied(
        &self,
        caller: Caller<'_>,
        known: &mut SearchKnows,
        ids: &[String],
    ) -> Result<Vec<String>> {
        self.bulk_organizations(
            &mut known.organizations,
            ids.iter().map(|id| format!("Patient/{id}")),
        )
        .await?;
        let (grants, organizations) = (known.grants.as_slice(), &known.organizations);
        let caller = Caller {
            organizations: Some(organizations),
            ..caller
        };
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            let compartment = format!("Patient/{id}");
            let attrs = ResourceAttrs {
                rtype: ResourceType::PATIENT,
                id: id.clone(),
                organization: self.organization_of(caller, Some(&compartment)).await?,
                compartment: Some(compartment),
                security: Vec::new(),
            };
            if self.search_decision(caller, &attrs, grants).is_some() {
                kept.push(id.clone());
            }
        }
        Ok(kept)
    }

    /// The policies' decision on a search candidate, or None when the candidate is left out
    /// unopened: denied by default (no policy to record in the audit event) and covered by none
    /// of the caller's break-glass grants.
    fn search_decision(
        &self,
        caller: Caller<'_>,
        attrs: &ResourceAttrs,
        grants: &[BreakGlassRow],
    ) -> Option<crate::authz::Decision> {
        let decision = self
            .authz
            .fhir(caller.principal, FhirAction::Search, attrs, false);
        let left_out = !decision.allowed
            && decision.policies.is_empty()
            && grant_covering(grants, attrs.compartment.as_deref()).is_none();
        (!left_out).then_some(decision)
    }

    /// Whether the caller may read `v` (a denial is not an error here: the row is left out).
    async fn may_read(&self, caller: Caller<'_>, action: FhirAction, v: &Version) -> Result<bool> {
        match self.authorize_existing(caller, action, v).await {
            Ok(()) => Ok(true),
            Err(Error::NotFound | Error::Forbidden) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The organization managing a patient compartment (a patient created earlier in the same
    /// transaction counts).
    async fn organization_of(
        &self,
        caller: Caller<'_>,
        compartment: Option<&str>,
    ) -> Result<Option<String>> {
        let Some(c) = compartment else {
            return Ok(None);
        };
        if let Some(tx) = caller.tx
            && let Some(org) = tx
                .organizations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(c)
        {
            return Ok(org.clone());
        }
        if let Some(org) = caller.organizations.and_then(|m| m.get(c)) {
            return Ok(org.clone());
        }
        self.authz.compartment_organization(c).await
    }

    /// Commit a write with its audit event now, or hand both to the caller's transaction.
    async fn commit(
        &self,
        caller: Caller<'_>,
        ops: Vec<WriteOp>,
        status: u16,
    ) -> std::result::Result<(), StoreError> {
        match caller.tx {
            Some(tx) => {
                tx.push(ops, caller.audit, status);
                Ok(())
            }
            None => caller.audit.commit_with(&*self.store, ops, status).await,
        }
    }

    /// Commit everything a transaction collected, atomically; then its entries' events are
    /// written and its new patients' organizations known.
    pub async fn commit_tx(&self, tx: Tx) -> Result<TxCommit> {
        let ops = std::mem::take(&mut *tx.ops.lock().unwrap_or_else(|p| p.into_inner()));
        let sealed_under: Vec<u64> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::PutResource(v) => Some(v.row.dek_id),
                _ => None,
            })
            .collect();
        match self.store.write(ops).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(Error::Conflict(
                    "a resource in the transaction changed concurrently; nothing was written"
                        .into(),
                ));
            }
            // A data key was rotated (`key rotate-data`) between sealing and committing.
            Err(StoreError::StaleKey) => {
                self.keyring.forget_data_keys(&sealed_under);
                return Ok(TxCommit::DataKeyRotated);
            }
            Err(other) => return Err(other.into()),
        }
        for scope in tx.scopes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            scope.mark_written();
        }
        for (c, org) in tx
            .organizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            self.authz.remember_organization(&c, org);
        }
        Ok(TxCommit::Committed)
    }

    /// Authorize `action` on a stored version. A denial of something the caller could do in
    /// their own organization answers 404, so foreign patients' records cannot be probed.
    async fn authorize_existing(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        v: &Version,
    ) -> Result<()> {
        let attrs = self.existing_attrs(caller, v).await?;
        self.authorize(caller, action, &attrs, true).await
    }

    /// What the policies see of a stored version.
    async fn existing_attrs(&self, caller: Caller<'_>, v: &Version) -> Result<Vec<ResourceAttrs>> {
        self.compartment_attrs(
            caller,
            v.rtype,
            &v.id,
            &v.compartment,
            security_labels(&v.json),
            None,
        )
        .await
    }

    /// Authorize writing `body` (its compartment and labels as they will be); returns the
    /// compartment it is to be sealed under.
    async fn authorize_write(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        rtype: ResourceType,
        id: &ResourceId,
        body: &Value,
    ) -> Result<String> {
        let compartment = self.compartment_of_new(caller, rtype, id, body).await?;
        let security: Vec<String> = body
            .pointer("/meta/security")
            .and_then(Value::as_array)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|l| l["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // A Patient's organization is the one it will have (its own managingOrganization).
        let patient_organization =
            (rtype == ResourceType::PATIENT).then(|| managing_organization(body));
        let attrs = self
            .compartment_attrs(
                caller,
                rtype,
                id,
                &compartment,
                security,
                patient_organization,
            )
            .await?;
        self.authorize(caller, action, &attrs, false).await?;
        Ok(compartment)
    }

    /// Authorize `action` on a resource with these attributes: one set per compartment member,
    /// and every one must be allowed.
    async fn authorize(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        attrs: &[ResourceAttrs],
        existing: bool,
    ) -> Result<()> {
        for attrs in attrs {
            let decision = self.authz.fhir(caller.principal, action, attrs, false);
            self.authorize_decided(caller, action, attrs, existing, decision)
                .await?;
        }
        Ok(())
    }

    /// [`Self::authorize`] with the policies' first decision (without break-glass) already made.
    async fn authorize_decided(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        attrs: &ResourceAttrs,
        existing: bool,
        decision: crate::authz::Decision,
    ) -> Result<()> {
        caller.audit.set_policies(&decision.policies);
        if decision.allowed {
            return Ok(());
        }
        // Break-glass: a clinician's active grant opens reads beyond their organizations.
        if action.is_read()
            && let Some(compartment) = &attrs.compartment
            && may_break_glass(caller.principal)
            && let Some(reason) = self.break_glass_covering(caller, compartment).await?
        {
            let decision = self.authz.fhir(caller.principal, action, attrs, true);
            caller.audit.set_policies(&decision.policies);
            if decision.allowed {
                caller.audit.set_break_glass(&reason);
                tracing::warn!(
                    event = "security_alert",
                    kind = "break_glass_access",
                    principal = %caller.principal.id,
                    request_id = %caller.audit.request_id(),
                    "break-glass access used"
                );
                return Ok(());
            }
        }
        if existing && self.authz.fhir_type(caller.principal, action, attrs.rtype) {
            Err(Error::NotFound)
        } else {
            Err(Error::Forbidden)
        }
    }

    async fn break_glass_covering(
        &self,
        caller: Caller<'_>,
        compartment: &str,
    ) -> Result<Option<String>> {
        if let Some(grants) = caller.break_glass_grants {
            return Ok(grant_covering(grants, Some(compartment)).map(|g| g.reason.clone()));
        }
        let grants = self
            .store
            .break_glass_grants(&caller.principal.id, self.clock.now_secs())
            .await?;
        Ok(grant_covering(&grants, Some(compartment)).map(|g| g.reason.clone()))
    }

    /// Validate a client's resource and stamp what the server owns (id on create, `meta`
    /// version and time are set in `append`).
    fn prepare(
        &self,
        rtype: ResourceType,
        mut body: Value,
        assign_id: Option<&ResourceId>,
    ) -> Result<Value> {
        let Some(obj) = body.as_object_mut() else {
            return Err(Error::BadRequest(
                "the body must be a JSON object (a FHIR resource)".into(),
            ));
        };
        match obj.get("resourceType") {
            Some(Value::String(t)) if t == rtype.as_str() => {}
            Some(_) => {
                return Err(Error::BadRequest(
                    "resourceType in the body does not match the resource type in the URL".into(),
                ));
            }
            None => return Err(Error::BadRequest("the resource has no resourceType".into())),
        }
        if let Some(id) = assign_id {
            obj.insert("id".into(), Value::String(id.as_str().to_owned()));
        }
        // Placeholders so the schema sees the final shape; `append` sets the real values.
        stamp_meta(&mut body, 1, 0);
        self.validator
            .validate(rtype, &body)
            .map_err(Error::Unprocessable)?;
        Ok(body)
    }

    /// Append a version, sealed under `compartment` (what [`Self::authorize_write`] decided).
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        mut body: Value,
        compartment: String,
        expected_current: Option<u32>,
        version: u32,
    ) -> Result<Version> {
        let now = self.clock.now_us();
        stamp_meta(&mut body, version, now);
        let json =
            serde_json::to_vec(&body).map_err(|e| Error::Internal(format!("serialize: {e}")))?;
        let compartment: Arc<str> = Arc::from(compartment);
        // A Patient's managing organization decides who may see its compartment.
        let (patient, organization) = if rtype == ResourceType::PATIENT {
            (
                Some(compartment.to_string()),
                Some(managing_organization(&body)),
            )
        } else {
            (None, None)
        };
        let tokens = self.index.entries(rtype, &body);
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        caller.audit.add_patient(&compartment);
        let status = if expected_current.is_none() { 201 } else { 200 };
        let mut attempt = 0;
        loop {
            let (dek_id, sealed) = self
                .keyring
                .seal(&compartment, &self.aad(rtype, id, version), &json)
                .await?;
            let mut ops = vec![WriteOp::PutResource(NewResourceVersion {
                row: ResourceRow {
                    rtype: rtype.as_str().to_owned(),
                    id: id.as_str().to_owned(),
                    version,
                    last_updated_us: now,
                    deleted: false,
                    dek_id,
                    body: sealed,
                },
                expected_current,
            })];
            ops.push(WriteOp::ReplaceSearchIndex {
                rtype: rtype.as_str().to_owned(),
                id: id.as_str().to_owned(),
                tokens: tokens.clone(),
            });
            if let (Some(org), Some(c)) = (&organization, &patient) {
                ops.push(WriteOp::SetCompartmentOrganization {
                    compartment: c.clone(),
                    organization: org.clone(),
                });
            }
            match self.commit(caller, ops, status).await {
                Ok(()) => break,
                // The compartment's data key was rotated after we sealed: seal again under
                // the live key.
                Err(StoreError::StaleKey) if attempt < 3 => {
                    attempt += 1;
                    self.keyring.forget_compartment(&compartment);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let (Some(org), Some(c)) = (organization, &patient) {
            match caller.tx {
                Some(tx) => {
                    tx.organizations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(c.clone(), org);
                }
                None => self.authz.remember_organization(c, org),
            }
        }
        Ok(Version {
            rtype,
            id: id.clone(),
            version,
            last_updated_us: now,
            deleted: false,
            json,
            compartment,
        })
    }

    async fn open_row(
        &self,
        rtype: ResourceType,
        id: &ResourceId,
        row: ResourceRow,
    ) -> Result<Version> {
        let aad = self.aad(rtype, id, row.version);
        let (json, compartment) = match self.keyring.open_with_compartment(&aad, &row.body).await {
            Ok(opened) => opened,
            // `key rotate-data` may have re-sealed this version and dropped the key it named
            // between our fetch and now (from another node, which keeps no grace copy of the
            // dropped key): the stored row then holds another ciphertext, which opens. A row
            // that is unchanged fails as before (tampering or corruption).
            Err(Error::Integrity(e)) => {
                let fresh = self
                    .store
                    .resource_version(rtype.as_str(), id.as_str(), row.version)
                    .await?;
                match fresh {
                    Some(fresh) if fresh.body != row.body => {
                        self.keyring
                            .open_with_compartment(&aad, &fresh.body)
                            .await?
                    }
                    _ => return Err(Error::Integrity(e)),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Version {
            rtype,
            id: id.clone(),
            version: row.version,
            last_updated_us: row.last_updated_us,
            deleted: row.deleted,
            json: if row.deleted { Vec::new() } else { json },
            compartment,
        })
    }

    /// Associated data binding a version to its environment, type, id and version number.
    fn aad(&self, rtype: ResourceType, id: &ResourceId, version: u32) -> Vec<u8> {
        self.keyring
            .resource_aad(rtype.as_str(), id.as_str(), version)
    }
}

/// Compare sort values; a missing value sorts last either way.
fn compare_keys(
    a: &[Option<String>],
    b: &[Option<String>],
    sort: &[SortKey],
) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for ((x, y), key) in a.iter().zip(b).zip(sort) {
        let ord = match (x, y) {
            (Some(x), Some(y)) if key.descending => y.cmp(x),
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// The paging cursor: the last row's sort values and id, opaque to clients (base64url JSON).
/// Paging continues after that position in the current order, so it stays correct while
/// data changes (nothing is skipped or repeated for rows whose sort values do not change).
fn encode_cursor(keys: &[Option<String>], id: &str) -> String {
    let json = serde_json::json!({"k": keys, "i": id}).to_string();
    data_encoding::BASE64URL_NOPAD.encode(json.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<(Vec<Option<String>>, String)> {
    let bad = || Error::BadRequest("the paging cursor is not valid".into());
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(cursor.as_bytes())
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let keys = value["k"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|k| k.as_str().map(str::to_owned))
        .collect();
    let id = value["i"].as_str().ok_or_else(bad)?.to_owned();
    Ok((keys, id))
}

/// `Organization/<id>` from a Patient's `managingOrganization`, as the bare id.
fn managing_organization(patient: &Value) -> Option<String> {
    let reference = patient
        .pointer("/managingOrganization/reference")?
        .as_str()?;
    let id = reference.rsplit_once("Organization/").map(|(_, id)| id)?;
    ResourceId::parse(id).ok().map(|id| id.as_str().to_owned())
}

/// Break-glass opens reads to clinicians signed in as themselves (not to API keys).
fn may_break_glass(principal: &Principal) -> bool {
    matches!(principal.kind, PrincipalKind::User) && principal.has_role(Role::Clinician)
}

/// The first grant covering a patient compartment (a grant without a patient covers all).
fn grant_covering<'g>(
    grants: &'g [BreakGlassRow],
    compartment: Option<&str>,
) -> Option<&'g BreakGlassRow> {
    let compartment = compartment?;
    grants
        .iter()
        .find(|g| g.patient.as_deref().is_none_or(|p| p == compartment))
}

/// The `meta.security` codes of a stored resource (only `meta` is decoded).
fn security_labels(json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Coding {
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        security: Vec<Coding>,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        meta: Option<Meta>,
    }
    if json.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice::<Head>(json)
        .ok()
        .and_then(|h| h.meta)
        .map(|m| m.security.into_iter().filter_map(|c| c.code).collect())
        .unwrap_or_default()
}

fn stamp_meta(body: &mut Value, version: u32, now_us: i64) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !meta.is_object() {
        // Leave a wrong-typed meta for the validator to refuse.
        return;
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(fhir_instant(now_us)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managing_organization_and_labels() {
        let p = serde_json::json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/org-a"}});
        assert_eq!(managing_organization(&p).as_deref(), Some("org-a"));
        let abs = serde_json::json!({"managingOrganization": {"reference": "https://x.example/fhir/Organization/org-b"}});
        assert_eq!(managing_organization(&abs).as_deref(), Some("org-b"));
        assert_eq!(managing_organization(&serde_json::json!({})), None);
        let json = br#"{"resourceType":"Patient","meta":{"security":[{"system":"s","code":"R"},{"code":"HTEST"}]},"name":[]}"#;
        assert_eq!(security_labels(json), ["R", "HTEST"]);
        assert!(security_labels(b"").is_empty());
    }
}
