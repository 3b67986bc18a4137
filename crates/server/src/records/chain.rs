//! Chaining and `_has` (see `carevault_fhir::search::chain`): each is resolved by an inner
//! search of its target (or source) type run as the caller, through the same checks and
//! authorization as any search, and replaced with an ordinary clause over what it found: a
//! reference clause for a chain, an `_id` clause for `_has`. The inner search only ever sees
//! what the caller may read, so a chain cannot tell whether a resource the caller may not read
//! matches. It is part of the request: its matches are recorded in the request's one audit
//! event, and it is resolved again for every page (the `next` link carries the chain).

use std::borrow::Cow;
use std::collections::BTreeSet;

use carevault_fhir::search::{self, Clause, Query};
use carevault_fhir::{ResourceId, ResourceType};
use serde_json::Value;

use super::{Caller, Records, Version};
use crate::error::{Error, Result};

/// Most resources one chain's or `_has`'s inner search may match; more answers 400.
pub const MAX_CHAIN_MATCHES: usize = 1000;

impl Records {
    /// `query` with its chains and `_has` parameters replaced by ordinary clauses, or `None`
    /// when one of them matched nothing (so the search matches nothing).
    pub(super) async fn resolve_chains<'q>(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        query: &'q Query,
    ) -> Result<Option<Cow<'q, Query>>> {
        if query.chains.is_empty() && query.has.is_empty() {
            return Ok(Some(Cow::Borrowed(query)));
        }
        let mut resolved = query.clone();
        resolved.chains.clear();
        resolved.has.clear();
        for chain in &query.chains {
            let found = self
                .chain_matches(caller, chain.target, &chain.inner, chain.param.name)
                .await?;
            if found.is_empty() {
                return Ok(None);
            }
            resolved.clauses.push(Clause::references(
                chain.param,
                chain.target,
                found.into_iter().map(|v| v.id),
            ));
        }
        for has in &query.has {
            let found = self
                .chain_matches(caller, has.source, &has.inner, "_has")
                .await?;
            let mut ids: BTreeSet<String> = BTreeSet::new();
            for v in &found {
                let json: Value = serde_json::from_slice(&v.json)
                    .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
                for reference in search::references(has.source, &json, has.param) {
                    if let Some((t, id)) = reference.split_once('/')
                        && t == rtype.as_str()
                    {
                        ids.insert(id.to_owned());
                    }
                }
            }
            let ids: Vec<ResourceId> = ids
                .iter()
                .filter_map(|id| ResourceId::parse(id).ok())
                .collect();
            if ids.is_empty() {
                return Ok(None);
            }
            let clause = Clause::ids(rtype, ids)
                .ok_or_else(|| Error::Internal("a resource type without _id".into()))?;
            resolved.clauses.push(clause);
        }
        Ok(Some(Cow::Owned(resolved)))
    }

    /// The resources of `rtype` matching `inner` that the caller may read (at most
    /// [`MAX_CHAIN_MATCHES`]; more is a 400 naming `name`, the chained parameter or `_has`).
    async fn chain_matches(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        inner: &Clause,
        name: &'static str,
    ) -> Result<Vec<Version>> {
        let mut query = Query::with_clauses(vec![inner.clone()]);
        // One more than allowed, to tell "too many" from "exactly the limit".
        query.count = u32::try_from(MAX_CHAIN_MATCHES + 1).unwrap_or(u32::MAX);
        self.check_search(caller, rtype, &query)?;
        let found = self.search_open(caller, rtype, &query, None).await?;
        if found.matches.len() > MAX_CHAIN_MATCHES {
            return Err(Error::BadRequest(format!(
                "the chained search of parameter {name} matches more than {MAX_CHAIN_MATCHES} \
                 resources; narrow it"
            )));
        }
        for v in &found.matches {
            caller.audit.add_patient(&v.compartment);
        }
        Ok(found.matches)
    }
}
