//! `POST /fhir` with a Bundle: `transaction` (all entries or none, `urn:uuid:` references
//! resolved, conditional create/update/delete) and `batch` (entries independent). Every entry is
//! authorized and audited on its own; a transaction's entries and their audit events commit in
//! one store transaction.

use std::collections::HashMap;

use carevault_fhir::{ResourceId, ResourceType};
use serde_json::Value;

use crate::audit::{AuditAction, AuditScope};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::records::{Caller, Current, Records, Selected, Tx, TxCommit, Version};

/// What one entry asks for.
#[derive(Clone, Debug)]
enum Request {
    Create {
        rtype: ResourceType,
        if_none_exist: Option<String>,
    },
    Update {
        rtype: ResourceType,
        id: ResourceId,
        if_match: Option<u32>,
    },
    ConditionalUpdate {
        rtype: ResourceType,
        query: String,
    },
    Delete {
        rtype: ResourceType,
        id: ResourceId,
    },
    ConditionalDelete {
        rtype: ResourceType,
        query: String,
    },
    Read {
        rtype: ResourceType,
        id: ResourceId,
    },
}

impl Request {
    fn method(&self) -> &'static str {
        match self {
            Request::Create { .. } => "POST",
            Request::Update { .. } | Request::ConditionalUpdate { .. } => "PUT",
            Request::Delete { .. } | Request::ConditionalDelete { .. } => "DELETE",
            Request::Read { .. } => "GET",
        }
    }

    /// FHIR's processing order within a transaction: DELETE, POST, PUT, GET.
    fn order(&self) -> u8 {
        match self.method() {
            "DELETE" => 0,
            "POST" => 1,
            "PUT" => 2,
            _ => 3,
        }
    }

    fn action(&self) -> AuditAction {
        match self {
            Request::Create { .. } => AuditAction::Create,
            Request::Update { .. } | Request::ConditionalUpdate { .. } => AuditAction::Update,
            Request::Delete { .. } | Request::ConditionalDelete { .. } => AuditAction::Delete,
            Request::Read { .. } => AuditAction::Read,
        }
    }
}

/// The outcome of one entry that succeeded.
pub struct Outcome {
    pub status: u16,
    /// The version written or read, if any (a conditional create that matched has none).
    pub version: Option<Version>,
    pub location: Option<String>,
}

/// One entry's response: done, or the error it met (batch entries fail one by one).
pub enum EntryResponse {
    Done(Outcome),
    Failed(Error),
}

/// What a processed Bundle answers: `transaction-response` or `batch-response`, with one response
/// per entry in the entries' order. `carevault-http` writes it as a Bundle, telling failed
/// entries with the one error map ([`Error::describe`]).
pub struct BundleResponse {
    pub kind: &'static str,
    pub entries: Vec<EntryResponse>,
}

/// A failed entry: its index and why.
pub struct EntryError {
    pub index: usize,
    pub error: Error,
}

/// Process a Bundle; returns its response (a failed transaction is an [`EntryError`]).
pub async fn process(
    records: &Records,
    principal: &Principal,
    audit: &AuditScope,
    bundle: Value,
    max_entries: usize,
) -> std::result::Result<BundleResponse, EntryError> {
    let whole = |error: Error| EntryError {
        index: usize::MAX,
        error,
    };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(whole(Error::BadRequest(
            "POST /fhir takes a Bundle of type transaction or batch".into(),
        )));
    }
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "transaction" && kind != "batch" {
        return Err(whole(Error::BadRequest(
            "the Bundle type must be transaction or batch".into(),
        )));
    }
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.len() > max_entries {
        return Err(whole(Error::TooLarge(format!(
            "a Bundle may hold at most {max_entries} entries"
        ))));
    }
    audit.set_action(if kind == "batch" {
        AuditAction::Batch
    } else {
        AuditAction::Transaction
    });
    audit.add_detail("bundle_entries", entries.len().to_string());
    if kind == "batch" {
        return Ok(batch(records, principal, audit, entries).await);
    }
    // Nothing of an attempt is written unless it commits, so a transaction whose data key was
    // rotated between sealing and committing is simply prepared again under the live keys.
    for _ in 0..TRANSACTION_ATTEMPTS {
        if let Some(response) = transaction(records, principal, audit, &entries).await? {
            return Ok(response);
        }
    }
    Err(whole(Error::Unavailable(
        "data keys kept rotating during the transaction; nothing was written".into(),
    )))
}

/// Attempts of a transaction Bundle that meets a data key rotation (one rotation needs one more).
const TRANSACTION_ATTEMPTS: usize = 4;

fn parse_entry(entry: &Value) -> Result<(Request, Option<Value>, Option<String>)> {
    let request = entry
        .get("request")
        .ok_or_else(|| Error::BadRequest("the entry has no request".into()))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadRequest("the entry's request has no url".into()))?;
    let url = url.trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url, None),
    };
    let mut parts = path.split('/');
    let rtype = ResourceType::parse(parts.next().unwrap_or(""))
        .map_err(|_| Error::BadRequest("the entry's url names no known resource type".into()))?;
    let id = match parts.next() {
        Some(id) => Some(
            ResourceId::parse(id)
                .map_err(|_| Error::BadRequest("the entry's url holds an invalid id".into()))?,
        ),
        None => None,
    };
    if parts.next().is_some() {
        return Err(Error::BadRequest(
            "the entry's url must be Type, Type/id or Type?query".into(),
        ));
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(etag) => Some(
            etag.trim_start_matches("W/")
                .trim_matches('"')
                .parse::<u32>()
                .map_err(|_| {
                    Error::BadRequest("ifMatch must be a version ETag such as W/\"1\"".into())
                })?,
        ),
        None => None,
    };
    let parsed = match (method, id, query) {
        ("POST", None, None) => Request::Create {
            rtype,
            if_none_exist: request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        ("PUT", Some(id), None) => Request::Update {
            rtype,
            id,
            if_match,
        },
        ("PUT", None, Some(query)) => Request::ConditionalUpdate { rtype, query },
        ("DELETE", Some(id), None) => Request::Delete { rtype, id },
        ("DELETE", None, Some(query)) => Request::ConditionalDelete { rtype, query },
        ("GET", Some(id), None) => Request::Read { rtype, id },
        _ => {
            return Err(Error::BadRequest(
                "supported entries: POST Type, PUT Type/id, PUT Type?query, DELETE Type/id, DELETE Type?query, GET Type/id".into(),
            ));
        }
    };
    let resource = entry.get("resource").cloned();
    if matches!(
        parsed,
        Request::Create { .. } | Request::Update { .. } | Request::ConditionalUpdate { .. }
    ) {
        match &resource {
            Some(r) if r.get("resourceType").and_then(Value::as_str) == Some(rtype.as_str()) => {}
            Some(_) => {
                return Err(Error::BadRequest(
                    "the entry's resource does not match its url".into(),
                ));
            }
            None => return Err(Error::BadRequest("the entry has no resource".into())),
        }
    }
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((parsed, resource, full_url))
}

/// A conditional entry's query string (`ifNoneExist`, or the part of `request.url` after `?`)
/// as search parameters.
fn criteria(query: &str) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query)
        .map_err(|_| Error::BadRequest("the conditional query is not a valid query string".into()))
}

/// One attempt at a transaction Bundle: its response, or None when it must be prepared again
/// (a data key was rotated before the commit; nothing was written).
async fn transaction(
    records: &Records,
    principal: &Principal,
    audit: &AuditScope,
    entries: &[Value],
) -> std::result::Result<Option<BundleResponse>, EntryError> {
    let fail = |index: usize| move |error: Error| EntryError { index, error };
    let mut parsed = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        parsed.push(parse_entry(entry).map_err(fail(i))?);
    }
    let creates = CreateIds::resolve(records, principal, audit, &parsed).await?;
    let tx = Tx::default();
    let mut order: Vec<usize> = (0..parsed.len()).collect();
    order.sort_by_key(|&i| parsed[i].0.order());
    let mut outcomes: Vec<Option<Outcome>> = (0..parsed.len()).map(|_| None).collect();
    let mut scopes = Vec::new();
    for &i in &order {
        let (request, resource, _) = &parsed[i];
        if matches!(request, Request::Read { .. }) {
            continue;
        }
        let scope = audit.child(request.action(), request.method(), i);
        let caller = Caller {
            principal,
            audit: &scope,
            tx: Some(&tx),
            organizations: None,
            break_glass_grants: None,
        };
        let body = resource.clone().map_or(Value::Null, |mut r| {
            resolve_references(&mut r, &creates.ids);
            r
        });
        let outcome = transaction_write(records, caller, request, body, creates.of(i))
            .await
            .map_err(fail(i))?;
        outcomes[i] = Some(outcome);
        scopes.push(scope);
    }
    let committed = records.commit_tx(tx).await.map_err(|error| EntryError {
        index: usize::MAX,
        error,
    })?;
    if committed == TxCommit::DataKeyRotated {
        return Ok(None);
    }
    // Reads come last, after the writes they may observe.
    for &i in &order {
        if let Request::Read { rtype, id } = &parsed[i].0 {
            let scope = audit.child(AuditAction::Read, "GET", i);
            let outcome = read(records, Caller::new(principal, &scope), *rtype, id).await;
            let status = match &outcome {
                Ok(o) => o.status,
                Err(e) => e.status(),
            };
            let _ = scope.finish(status).await;
            outcomes[i] = Some(outcome.map_err(fail(i))?);
        }
    }
    let entries = outcomes
        .into_iter()
        .map(|o| match o {
            Some(o) => EntryResponse::Done(o),
            None => EntryResponse::Failed(Error::Internal("an entry was not processed".into())),
        })
        .collect();
    Ok(Some(BundleResponse {
        kind: "transaction-response",
        entries,
    }))
}

/// The ids of a transaction's creates, decided before any write so that entries can refer to
/// each other by their `urn:uuid:` full URLs: a conditional create that matches reuses the
/// existing id; any other create gets a new id now.
struct CreateIds {
    /// `urn:uuid:...` full URL -> `Type/id`.
    ids: HashMap<String, String>,
    /// Per entry: what its create does (None for entries that are not creates).
    decided: Vec<Option<CreateAs>>,
}

/// What a transaction's create entry does, once its id is decided.
enum CreateAs {
    /// Create the resource with this new id.
    New(ResourceId),
    /// `ifNoneExist` matched this resource: nothing is written.
    Existing(ResourceId),
}

impl CreateIds {
    async fn resolve(
        records: &Records,
        principal: &Principal,
        audit: &AuditScope,
        parsed: &[(Request, Option<Value>, Option<String>)],
    ) -> std::result::Result<Self, EntryError> {
        let fail = |index: usize| move |error: Error| EntryError { index, error };
        let mut creates = CreateIds {
            ids: HashMap::new(),
            decided: (0..parsed.len()).map(|_| None).collect(),
        };
        for (i, (request, _, full_url)) in parsed.iter().enumerate() {
            let Request::Create {
                rtype,
                if_none_exist,
            } = request
            else {
                continue;
            };
            let scope = audit.child(AuditAction::SearchType, "GET", i);
            let caller = Caller::new(principal, &scope);
            let selected = match if_none_exist {
                Some(q) => {
                    let criteria = criteria(q).map_err(fail(i))?;
                    records
                        .select(caller, *rtype, &criteria)
                        .await
                        .map_err(fail(i))?
                }
                None => Selected::None,
            };
            let decided = match selected {
                Selected::None => CreateAs::New(new_id().map_err(fail(i))?),
                Selected::One(existing) => CreateAs::Existing(existing.id),
                Selected::Several => {
                    return Err(fail(i)(Error::PreconditionFailed(
                        "ifNoneExist matches more than one resource".into(),
                    )));
                }
            };
            if let Some(url) = full_url {
                let (CreateAs::New(id) | CreateAs::Existing(id)) = &decided;
                creates.ids.insert(url.clone(), format!("{rtype}/{id}"));
            }
            creates.decided[i] = Some(decided);
        }
        Ok(creates)
    }

    fn of(&self, i: usize) -> Option<&CreateAs> {
        self.decided[i].as_ref()
    }
}

fn new_id() -> Result<ResourceId> {
    ResourceId::parse(&uuid::Uuid::new_v4().to_string())
        .map_err(|_| Error::Internal("generated id is invalid".into()))
}

/// One write of a transaction (its reads run after the commit).
async fn transaction_write(
    records: &Records,
    caller: Caller<'_>,
    request: &Request,
    body: Value,
    create: Option<&CreateAs>,
) -> Result<Outcome> {
    Ok(match request {
        Request::Create { rtype, .. } => match create {
            Some(CreateAs::New(id)) => {
                created(records.create_with_id(caller, *rtype, id, body).await?, 201)
            }
            Some(CreateAs::Existing(id)) => Outcome {
                status: 200,
                version: None,
                location: Some(format!("{rtype}/{id}")),
            },
            None => return Err(Error::Internal("create without an id".into())),
        },
        Request::Update {
            rtype,
            id,
            if_match,
        } => {
            let (v, made) = records.update(caller, *rtype, id, body, *if_match).await?;
            created(v, if made { 201 } else { 200 })
        }
        Request::ConditionalUpdate { rtype, query } => {
            conditional_update(records, caller, *rtype, query, body).await?
        }
        Request::Delete { rtype, id } => {
            records.delete(caller, *rtype, id).await?;
            deleted()
        }
        Request::ConditionalDelete { rtype, query } => {
            conditional_delete(records, caller, *rtype, query).await?
        }
        Request::Read { .. } => return Err(Error::Internal("a read among the writes".into())),
    })
}

/// A conditional update: the one resource the query selects, or a new one.
async fn conditional_update(
    records: &Records,
    caller: Caller<'_>,
    rtype: ResourceType,
    query: &str,
    body: Value,
) -> Result<Outcome> {
    let (v, made) = records
        .update_selected(caller, rtype, &criteria(query)?, body, None)
        .await?;
    Ok(created(v, if made { 201 } else { 200 }))
}

/// A conditional delete: nothing selected is a success too.
async fn conditional_delete(
    records: &Records,
    caller: Caller<'_>,
    rtype: ResourceType,
    query: &str,
) -> Result<Outcome> {
    records
        .delete_selected(caller, rtype, &criteria(query)?)
        .await?;
    Ok(deleted())
}

async fn batch(
    records: &Records,
    principal: &Principal,
    audit: &AuditScope,
    entries: Vec<Value>,
) -> BundleResponse {
    // Batch entries are independent (FHIR R4 3.1.0.11.1: no interdependencies), so they run
    // concurrently: their writes meet in the store's group commit instead of paying one
    // durable commit each, one after another. The response keeps the entries' order.
    let out =
        futures_util::future::join_all(entries.iter().enumerate().map(|(i, entry)| async move {
            let result = async {
                let (request, resource, _) = parse_entry(entry)?;
                let scope = audit.child(request.action(), request.method(), i);
                let caller = Caller::new(principal, &scope);
                let outcome = batch_entry(records, caller, request, resource).await;
                let status = match &outcome {
                    Ok(o) => o.status,
                    Err(e) => e.status(),
                };
                // Writes carried their event; anything else (reads, failures) records it here.
                scope.finish(status).await?;
                outcome
            }
            .await;
            match result {
                Ok(o) => EntryResponse::Done(o),
                Err(e) => EntryResponse::Failed(e),
            }
        }))
        .await;
    BundleResponse {
        kind: "batch-response",
        entries: out,
    }
}

async fn batch_entry(
    records: &Records,
    caller: Caller<'_>,
    request: Request,
    resource: Option<Value>,
) -> Result<Outcome> {
    let body = resource.unwrap_or(Value::Null);
    Ok(match request {
        Request::Create {
            rtype,
            if_none_exist,
        } => {
            let criteria = if_none_exist.as_deref().map(criteria).transpose()?;
            match criteria {
                None => created(records.create(caller, rtype, body).await?, 201),
                Some(criteria) => {
                    match records
                        .create_unless_exists(caller, rtype, &criteria, body)
                        .await?
                    {
                        (v, true) => created(v, 201),
                        (v, false) => Outcome {
                            status: 200,
                            version: None,
                            location: Some(format!("{rtype}/{}", v.id)),
                        },
                    }
                }
            }
        }
        Request::Update {
            rtype,
            id,
            if_match,
        } => {
            let (v, made) = records.update(caller, rtype, &id, body, if_match).await?;
            created(v, if made { 201 } else { 200 })
        }
        Request::ConditionalUpdate { rtype, query } => {
            conditional_update(records, caller, rtype, &query, body).await?
        }
        Request::Delete { rtype, id } => {
            records.delete(caller, rtype, &id).await?;
            deleted()
        }
        Request::ConditionalDelete { rtype, query } => {
            conditional_delete(records, caller, rtype, &query).await?
        }
        Request::Read { rtype, id } => read(records, caller, rtype, &id).await?,
    })
}

async fn read(
    records: &Records,
    caller: Caller<'_>,
    rtype: ResourceType,
    id: &ResourceId,
) -> Result<Outcome> {
    match records.read(caller, rtype, id).await? {
        Current::Present(v) => Ok(Outcome {
            status: 200,
            location: None,
            version: Some(v),
        }),
        Current::Deleted { .. } => Err(Error::Gone),
    }
}

fn created(v: Version, status: u16) -> Outcome {
    Outcome {
        status,
        location: Some(format!("{}/{}/_history/{}", v.rtype, v.id, v.version)),
        version: Some(v),
    }
}

fn deleted() -> Outcome {
    Outcome {
        status: 204,
        version: None,
        location: None,
    }
}

/// Replace references to `urn:uuid:` full URLs with the ids they were given.
fn resolve_references(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference"
                    && let Value::String(s) = v
                    && let Some(target) = ids.get(s.as_str())
                {
                    *s = target.clone();
                } else {
                    resolve_references(v, ids);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve_references(v, ids)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_to_urn_uuids_are_resolved() {
        let ids = HashMap::from([("urn:uuid:a".to_owned(), "Patient/123".to_owned())]);
        let mut obs = json!({"resourceType": "Observation", "subject": {"reference": "urn:uuid:a"},
                             "performer": [{"reference": "urn:uuid:unknown"}], "note": [{"text": "urn:uuid:a"}]});
        resolve_references(&mut obs, &ids);
        assert_eq!(obs["subject"]["reference"], "Patient/123");
        assert_eq!(obs["performer"][0]["reference"], "urn:uuid:unknown");
        assert_eq!(
            obs["note"][0]["text"], "urn:uuid:a",
            "only references are rewritten"
        );
    }

    #[test]
    fn entries_parse_or_say_why_not() {
        let ok = json!({"request": {"method": "PUT", "url": "Patient/1", "ifMatch": "W/\"3\""}, "resource": {"resourceType": "Patient", "id": "1"}});
        assert!(matches!(
            parse_entry(&ok).unwrap().0,
            Request::Update {
                if_match: Some(3),
                ..
            }
        ));
        let cond = json!({"request": {"method": "DELETE", "url": "Patient?identifier=x"}});
        assert!(matches!(
            parse_entry(&cond).unwrap().0,
            Request::ConditionalDelete { .. }
        ));
        for bad in [
            json!({"resource": {}}),
            json!({"request": {"method": "PATCH", "url": "Patient/1"}}),
            json!({"request": {"method": "POST", "url": "Spaceship"}, "resource": {"resourceType": "Spaceship"}}),
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Observation"}}),
            json!({"request": {"method": "POST", "url": "Patient"}}),
            json!({"request": {"method": "PUT", "url": "Patient/a/b"}, "resource": {"resourceType": "Patient"}}),
        ] {
            assert!(parse_entry(&bad).is_err(), "{bad}");
        }
    }
}
