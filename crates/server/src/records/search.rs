//! Search: candidates from the blind index, opened and authorized a window at a time, sorted
//! and paged with an opaque cursor, with `_include` and `_revinclude`.

use std::collections::{BTreeSet, HashMap, HashSet};

use carevault_fhir::search::{self, Query, SortKey, Total};
use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::BreakGlassRow;
use serde_json::Value;

use super::access::{grant_covering, may_break_glass};
use super::{Caller, Records, Version};
use crate::authz::{FhirAction, ResourceAttrs};
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::names::OrganizationId;

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

/// A page of a search as [`Records::search_open`] finds it, its matches as stored.
pub(super) struct OpenPage {
    /// The page's matches (at most `_count`).
    pub(super) matches: Vec<Version>,
    /// See [`SearchPage::total`].
    pub(super) total: usize,
    /// The cursor of the next page, unsealed.
    pub(super) next: Option<String>,
}

/// What one search reads once and uses for every window of candidates it opens.
struct SearchKnows {
    /// The caller's active break-glass grants.
    grants: Vec<BreakGlassRow>,
    /// The organizations of the candidates' compartments read so far (shared database only:
    /// see [`Records::bulk_organizations`]).
    organizations: HashMap<Compartment, Option<OrganizationId>>,
}

/// A bulk read of one type in progress (see [`Records::bulk_read`]).
pub struct BulkRead {
    rtype: ResourceType,
    query: Query,
    /// Every candidate id, sorted; those before `next` were opened.
    ids: Vec<String>,
    next: usize,
    read: BTreeSet<&'static str>,
    known: SearchKnows,
}

impl BulkRead {
    /// How many candidates the blind index gave (an upper bound of what the read returns).
    pub fn candidates(&self) -> usize {
        self.ids.len()
    }

    /// How many candidates were opened so far.
    pub fn opened(&self) -> usize {
        self.next
    }
}

/// Most blind-index tokens one search may look up (a date range expands to one per calendar
/// bucket): well inside SQLite's 32,766 and PostgreSQL's 65,535 parameters per statement.
const MAX_LOOKUP_TOKENS: usize = 20_000;

impl Records {
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

    pub(super) async fn search_within(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
        within: Option<Vec<String>>,
    ) -> Result<SearchPage> {
        caller.audit.set_resource(rtype.as_str(), None, None);
        self.check_search(caller, rtype, query)?;
        // Chains and `_has` become ordinary clauses over what their inner searches, run as
        // the caller, found; one that found nothing leaves nothing to match.
        let Some(query) = self.resolve_chains(caller, rtype, query).await? else {
            return Ok(SearchPage {
                matches: Vec::new(),
                included: Vec::new(),
                total: 0,
                next: None,
            });
        };
        let found = self.search_open(caller, rtype, &query, within).await?;
        for v in &found.matches {
            caller.audit.add_patient(&v.compartment);
        }
        let included = self.includes(caller, rtype, &query, &found.matches).await?;
        for v in &included {
            caller.audit.add_patient(&v.compartment);
        }
        Ok(SearchPage {
            matches: self.released_all(caller, found.matches)?,
            included: self.released_all(caller, included)?,
            total: found.total,
            next: self.sealed_cursor(caller, found.next)?,
        })
    }

    /// What every search is checked for before it reads anything: the caller may search the
    /// type, a de-identified caller's search cannot single a person out, and it stays within
    /// the configured limits.
    pub(super) fn check_search(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
    ) -> Result<()> {
        if !self
            .authz
            .fhir_type(caller.principal, FhirAction::Search, rtype)
        {
            return Err(Error::Forbidden);
        }
        self.check_deidentified_search(caller, query)?;
        self.check_search_limits(query)
    }

    /// A checked search without chains (see [`Self::check_search`] and
    /// [`Self::resolve_chains`]): the page of matches the caller may read, as stored (not yet
    /// released), without includes, audited or cursor sealing.
    pub(super) async fn search_open(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &Query,
        within: Option<Vec<String>>,
    ) -> Result<OpenPage> {
        let mut ids = self.candidate_ids(rtype, query, within).await?;
        let page = self.opened_cursor(caller, query.page.as_deref())?;
        let after = page.as_deref().map(decode_cursor).transpose()?;
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
        let mut known = self.search_knows(caller).await?;
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
        Ok(OpenPage {
            matches,
            total,
            next,
        })
    }

    /// What a search reads once: the caller's active break-glass grants (once per search, not
    /// per chunk of candidates).
    async fn search_knows(&self, caller: Caller<'_>) -> Result<SearchKnows> {
        Ok(SearchKnows {
            grants: if may_break_glass(caller.principal) {
                self.store
                    .break_glass_grants(&caller.principal.id, self.clock.now_secs())
                    .await?
            } else {
                Vec::new()
            },
            organizations: HashMap::new(),
        })
    }

    /// Whether `principal` may search resources of `rtype` at all (a bulk export asks before
    /// it starts, to answer 403 instead of an empty file).
    pub fn may_search_type(
        &self,
        principal: &crate::identity::Principal,
        rtype: ResourceType,
    ) -> bool {
        self.authz.fhir_type(principal, FhirAction::Search, rtype)
    }

    /// Starts a bulk read of one type (`$export`): the search's candidates are listed once
    /// (ids only), then [`Records::bulk_next`] opens, checks and authorizes them a window at a
    /// time, exactly as a search does, so memory holds one window of resources, not the result.
    /// 403 when the caller may not search the type.
    pub async fn bulk_read(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: Query,
    ) -> Result<BulkRead> {
        if !self.may_search_type(caller.principal, rtype) {
            return Err(Error::Forbidden);
        }
        // Resolving a chain is a search of its own per window; `_typeFilter` refuses them.
        if !query.chains.is_empty() || !query.has.is_empty() {
            return Err(Error::BadRequest(
                "chained parameters and _has are not supported in a bulk read".into(),
            ));
        }
        // A developer's `_typeFilter` is a search like any other: one on identifying values
        // would make the export's counts an oracle.
        self.check_deidentified_search(caller, &query)?;
        self.check_search_limits(&query)?;
        let mut ids = self.candidate_ids(rtype, &query, None).await?;
        ids.sort_unstable();
        ids.dedup();
        Ok(BulkRead {
            rtype,
            read: search::elements_read(rtype, &query.clauses, &query.sort),
            query,
            ids,
            next: 0,
            known: self.search_knows(caller).await?,
        })
    }

    /// The next window of a bulk read: up to `window` candidates opened, and those that match
    /// every clause and the caller may read returned (in id order; possibly none). None once
    /// every candidate was opened. The caller audits the patients of what it keeps.
    pub async fn bulk_next(
        &self,
        caller: Caller<'_>,
        bulk: &mut BulkRead,
        window: usize,
    ) -> Result<Option<Vec<Version>>> {
        let Some(rest) = bulk.ids.get(bulk.next..).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        let ids: Vec<String> = rest.iter().take(window.max(1)).cloned().collect();
        bulk.next += ids.len();
        let found = self
            .matching(
                caller,
                bulk.rtype,
                &bulk.query,
                &bulk.read,
                &mut bulk.known,
                ids,
            )
            .await?;
        Ok(Some(found.into_iter().map(|(_, v)| v).collect()))
    }

    /// Refuses a search that combines more parameters or includes than configured (400, naming
    /// the limit): each clause is a compound term of one database statement.
    fn check_search_limits(&self, query: &Query) -> Result<()> {
        let limits = self.search_limits;
        if query.condition_count() > limits.max_clauses {
            return Err(Error::BadRequest(format!(
                "a search may combine at most {} parameters (search.max_clauses)",
                limits.max_clauses
            )));
        }
        if query.include.len() + query.revinclude.len() > limits.max_includes {
            return Err(Error::BadRequest(format!(
                "a search may ask for at most {} _include and _revinclude parameters \
                 (search.max_includes)",
                limits.max_includes
            )));
        }
        Ok(())
    }

    /// The ids a search opens: the blind index's matches for the clauses, narrowed to the `_id`
    /// values given and to `within` (a compartment's members) when there are any.
    async fn candidate_ids(
        &self,
        rtype: ResourceType,
        query: &Query,
        within: Option<Vec<String>>,
    ) -> Result<Vec<String>> {
        let lookups: Vec<_> = query
            .clauses
            .iter()
            .filter_map(|c| self.index.lookup(rtype, c))
            .collect();
        if lookups.iter().map(|l| l.tokens.len()).sum::<usize>() > MAX_LOOKUP_TOKENS {
            return Err(Error::BadRequest(format!(
                "this search expands to more than {MAX_LOOKUP_TOKENS} index lookups: use \
                 narrower date ranges or fewer values"
            )));
        }
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
        Ok(match (by_id, within) {
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
                let lookup = self.index.referring(inc.source, inc.param, &reference);
                let ids = self
                    .store
                    .search_index(inc.source.as_str(), vec![lookup])
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

    pub(super) async fn readable_current(
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
        known: &mut HashMap<Compartment, Option<OrganizationId>>,
        compartments: impl Iterator<Item = Compartment>,
    ) -> Result<()> {
        if !self.authz.shared_database() {
            return Ok(());
        }
        let missing: BTreeSet<Compartment> =
            compartments.filter(|c| !known.contains_key(c)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let found = self
            .store
            .compartment_organizations(missing.iter().map(ToString::to_string).collect())
            .await?;
        // A compartment without a row has no organization, as `compartment_organization` says.
        known.extend(missing.into_iter().map(|c| (c, None)));
        known.extend(found.into_iter().map(|(c, org)| {
            (
                Compartment::stored(c),
                OrganizationId::stored(org.as_deref()),
            )
        }));
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
            ids.iter()
                .filter_map(|id| ResourceId::parse(id).ok())
                .map(|id| Compartment::patient(&id)),
        )
        .await?;
        let (grants, organizations) = (known.grants.as_slice(), &known.organizations);
        let caller = Caller {
            organizations: Some(organizations),
            ..caller
        };
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            // Ids from the index, which only ever holds valid ones.
            let Ok(patient) = ResourceId::parse(id) else {
                continue;
            };
            let compartment = Compartment::patient(&patient);
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
            && grant_covering(grants, attrs.compartment.as_ref()).is_none();
        (!left_out).then_some(decision)
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

/// Where a search page ends: the last row's sort values and id. Paging continues after that
/// position in the current order, so it stays correct while data changes (nothing is skipped or
/// repeated for rows whose sort values do not change).
#[derive(serde::Serialize, serde::Deserialize)]
struct SearchPosition {
    #[serde(rename = "k")]
    keys: Vec<Option<String>>,
    #[serde(rename = "i")]
    id: String,
}

pub(super) fn encode_cursor(keys: &[Option<String>], id: &str) -> String {
    crate::paging::encode(&SearchPosition {
        keys: keys.to_vec(),
        id: id.to_owned(),
    })
}

pub(super) fn decode_cursor(cursor: &str) -> Result<(Vec<Option<String>>, String)> {
    let position: SearchPosition = crate::paging::decode(cursor)?;
    Ok((position.keys, position.id))
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    fn key(descending: bool) -> SortKey {
        SortKey {
            param: "date",
            descending,
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let keys = vec![Some("2024-01-02".to_owned()), None];
        let cursor = encode_cursor(&keys, "obs-7");
        assert_eq!(decode_cursor(&cursor).unwrap(), (keys, "obs-7".to_owned()));
        for bad in [
            "",
            "not base64!",
            &data_encoding::BASE64URL_NOPAD.encode(b"{\"k\":1}"),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(Error::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_sort_values_sort_last_either_way() {
        let a = [Some("a".to_owned())];
        let b = [Some("b".to_owned())];
        let none = [None];
        assert_eq!(compare_keys(&a, &b, &[key(false)]), Ordering::Less);
        assert_eq!(compare_keys(&a, &b, &[key(true)]), Ordering::Greater);
        for descending in [false, true] {
            assert_eq!(compare_keys(&a, &none, &[key(descending)]), Ordering::Less);
            assert_eq!(
                compare_keys(&none, &b, &[key(descending)]),
                Ordering::Greater
            );
        }
        // The first key that differs decides.
        let two = |x: &str, y: &str| [Some(x.to_owned()), Some(y.to_owned())];
        let sort = [key(false), key(true)];
        assert_eq!(
            compare_keys(&two("a", "a"), &two("a", "b"), &sort),
            Ordering::Greater
        );
        assert_eq!(
            compare_keys(&two("a", "z"), &two("b", "a"), &sort),
            Ordering::Less
        );
    }
}
