//! FHIR R4 REST handlers at `/fhir`: metadata, create, read, vread, update, delete, history.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carevault_fhir::bundle::{BundleHead, BundleWriter};
use carevault_fhir::outcome::{self, Severity};
use carevault_fhir::summary::Narrowing;
use carevault_fhir::{ResourceId, ResourceType};
use serde_json::Value;

use super::auth::Authenticated;
use super::error::{ApiError, fhir_json};
use super::{AppState, parse_json, read_body, require_json_body};
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::clock::{fhir_instant, http_date, parse_instant};
use carevault_server::records::{Caller, Current, Version};

const DEFAULT_HISTORY_COUNT: u32 = 50;
const MAX_HISTORY_COUNT: u32 = 1000;

type Params = Query<HashMap<String, String>>;

pub(crate) fn resource_type(s: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(s).map_err(|_| ApiError::NoSuchEndpoint)
}

pub(crate) fn resource_id(s: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(s)
        .map_err(|_| Error::BadRequest("the id is not a valid FHIR id".into()).into())
}

/// 406 unless the client accepts FHIR JSON (by `_format` or `Accept`).
fn negotiate(headers: &HeaderMap, params: &HashMap<String, String>) -> Result<(), ApiError> {
    negotiate_format(headers, params.get("_format").map(String::as_str))
}

/// [`negotiate`] with the request's `_format`, when the query is read as a list of pairs.
pub(crate) fn negotiate_pairs(
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<(), ApiError> {
    let format = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.as_str());
    negotiate_format(headers, format)
}

fn negotiate_format(headers: &HeaderMap, format: Option<&str>) -> Result<(), ApiError> {
    if let Some(format) = format {
        return if answerable(format, false) {
            Ok(())
        } else {
            Err(ApiError::NotAcceptable)
        };
    }
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().map_err(|_| ApiError::NotAcceptable)?;
    if accept.split(',').any(|range| answerable(range, true)) {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable)
    }
}

/// Whether CareVault answers the media type `range` asks for (an `Accept` range, or a
/// `_format` value, which may also say `json`): JSON, of FHIR R4 when a `fhirVersion`
/// parameter names a version. Wildcards only in `Accept`.
fn answerable(range: &str, accept: bool) -> bool {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let r4 = parts.all(|param| match param.split_once('=') {
        Some((name, version)) if name.trim().eq_ignore_ascii_case("fhirVersion") => {
            let version = version.trim().trim_matches('"');
            version == "4.0" || version.starts_with("4.0.")
        }
        _ => true,
    });
    let json = matches!(
        media.as_str(),
        "application/json" | "application/fhir+json" | "application/json+fhir"
    );
    let other = if accept {
        matches!(media.as_str(), "" | "*/*" | "application/*")
    } else {
        media == "json"
    };
    r4 && (json || other)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefer {
    Minimal,
    Representation,
    OperationOutcome,
}

fn prefer(headers: &HeaderMap) -> Prefer {
    let Some(v) = headers.get("prefer").and_then(|v| v.to_str().ok()) else {
        return Prefer::Representation;
    };
    for part in v.split([',', ';']) {
        match part.trim() {
            "return=minimal" => return Prefer::Minimal,
            "return=OperationOutcome" => return Prefer::OperationOutcome,
            "return=representation" => return Prefer::Representation,
            _ => {}
        }
    }
    Prefer::Representation
}

/// `W/"3"` or `"3"` -> 3.
pub(crate) fn parse_etag(v: &HeaderValue) -> Result<u32, ApiError> {
    let s = v.to_str().unwrap_or("").trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"').parse::<u32>().map_err(|_| {
        Error::BadRequest("If-Match must be a version ETag such as W/\"1\"".into()).into()
    })
}

fn version_headers(resp: &mut Response, v: &Version) {
    let h = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", v.version)) {
        h.insert(header::ETAG, etag);
    }
    if let Ok(lm) = HeaderValue::from_str(&http_date(v.last_updated_us)) {
        h.insert(header::LAST_MODIFIED, lm);
    }
}

/// The response to a create or update, honoring `Prefer`.
fn write_response(status: StatusCode, v: &Version, base: &str, pref: Prefer) -> Response {
    let mut resp = match pref {
        Prefer::Representation => fhir_json(status, v.json.clone()),
        Prefer::Minimal => status.into_response(),
        Prefer::OperationOutcome => {
            let oo = outcome::single(
                Severity::Information,
                "informational",
                "the resource was saved",
            );
            fhir_json(status, oo.to_string().into_bytes())
        }
    };
    version_headers(&mut resp, v);
    let location = format!("{base}/{}/{}/_history/{}", v.rtype, v.id, v.version);
    if let Ok(loc) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, loc.clone());
        if status == StatusCode::CREATED {
            resp.headers_mut().insert(header::CONTENT_LOCATION, loc);
        }
    }
    resp
}

/// The response to a write that stored `v`: 201 when it created the resource, else 200.
pub(crate) fn saved_response(
    state: &AppState,
    headers: &HeaderMap,
    v: &Version,
    created: bool,
) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    write_response(status, v, crate::paging::fhir_base(state), prefer(headers))
}

/// The response to a delete: 204, with the deleted version's ETag when there was one.
pub(crate) fn deleted_response(deleted: Option<u32>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(version) = deleted
        && let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version}\""))
    {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

pub(crate) async fn resource_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    require_json_body(headers)?;
    let bytes = read_body(state, headers, body).await?;
    parse_json(state, &bytes)
}

pub async fn metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, ApiError> {
    negotiate(&headers, &params)?;
    Ok(fhir_json(StatusCode::OK, state.inner.capability.clone()))
}

/// `POST /fhir`: a transaction or batch Bundle.
pub async fn bundle(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    negotiate(&headers, &params)?;
    let value = resource_body(&state, &headers, body).await?;
    let max = state.inner.config.max_bundle_entries;
    match carevault_server::bundle::process(&state.inner.records, &p, &audit, value, max).await {
        Ok(response) => Ok(fhir_json(
            StatusCode::OK,
            crate::bundle::response_bundle(response)?,
        )),
        Err(carevault_server::bundle::EntryError {
            index: usize::MAX,
            error,
        }) => Err(error.into()),
        Err(carevault_server::bundle::EntryError { index, error }) => {
            audit.add_detail("failed_entry", index.to_string());
            Ok(super::error::entry_error_response(index, error))
        }
    }
}

/// `GET /fhir/{type}?...`: search.
pub async fn search_type(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    search(
        &state,
        Caller::new(&p, &audit),
        &headers,
        rtype,
        None,
        pairs,
    )
    .await
}

/// `GET /fhir/Patient/{id}/{type}?...`: compartment search (R4 3.1.0.2.3). Only the Patient
/// compartment is served.
pub async fn search_compartment(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((compartment, id, rtype)): Path<(String, String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if compartment != "Patient" {
        return Err(ApiError::NoSuchEndpoint);
    }
    let rtype = resource_type(&rtype)?;
    let patient = resource_id(&id)?;
    search(
        &state,
        Caller::new(&p, &audit),
        &headers,
        rtype,
        Some(&patient),
        pairs,
    )
    .await
}

/// `GET /fhir/Patient/{id}/$everything` (R4 `patient-everything`): every resource of the
/// patient's compartment the caller may read, with `_type`, `_since`, `_count` and paging.
pub async fn everything(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((compartment, id)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if compartment != "Patient" {
        return Err(ApiError::NoSuchEndpoint);
    }
    let patient = resource_id(&id)?;
    negotiate_pairs(&headers, &pairs)?;
    let mut query = carevault_server::records::EverythingQuery {
        types: None,
        since_us: None,
        count: DEFAULT_HISTORY_COUNT,
        page: None,
    };
    for (k, v) in &pairs {
        match k.as_str() {
            "_type" => {
                let types = v
                    .split(',')
                    .map(|t| ResourceType::parse(t.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        Error::BadRequest("_type names an unknown resource type".into())
                    })?;
                query.types.get_or_insert_with(Vec::new).extend(types);
            }
            "_since" => {
                query.since_us =
                    Some(parse_instant(v).ok_or_else(|| {
                        Error::BadRequest("_since must be a FHIR instant".into())
                    })?);
            }
            "_count" => {
                query.count = v
                    .parse::<u32>()
                    .map_err(|_| Error::BadRequest("_count must be a number".into()))?
                    .clamp(1, MAX_HISTORY_COUNT);
            }
            "_page" => query.page = Some(v.clone()),
            "_format" => {}
            _ => {
                return Err(Error::BadRequest(
                    "$everything takes _type, _since, _count and _page only".into(),
                )
                .into());
            }
        }
    }
    let page = state
        .inner
        .records
        .everything(Caller::new(&p, &audit), &patient, &query)
        .await?;
    let base = crate::paging::fhir_base(&state);
    let mut entries = BundleWriter::default();
    for v in &page.entries {
        entries.push(
            &SearchEntry {
                full_url: format!("{base}/{}/{}", v.rtype, v.id),
                search: SearchMode { mode: "match" },
            },
            Some(&v.json),
        )?;
    }
    searchset(
        &state,
        &format!("{base}/Patient/{patient}/$everything"),
        &pairs,
        (query.page.as_deref(), page.next.as_deref()),
        None,
        entries,
    )
}

/// `POST /fhir/{type}/_search` with a form body: the same search, values kept out of URLs.
pub async fn search_post(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(mut pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = read_body(&state, &headers, body).await?;
    crate::inspect_body(&state, &bytes);
    let body_pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).map_err(|_| {
        Error::BadRequest("the form body is not valid application/x-www-form-urlencoded".into())
    })?;
    for (k, v) in &body_pairs {
        audit.add_query(k, v);
    }
    pairs.extend(body_pairs);
    search(
        &state,
        Caller::new(&p, &audit),
        &headers,
        rtype,
        None,
        pairs,
    )
    .await
}

/// A search of one type, or of one type within a patient's compartment.
async fn search(
    state: &AppState,
    caller: Caller<'_>,
    headers: &HeaderMap,
    rtype: ResourceType,
    patient: Option<&ResourceId>,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    negotiate_pairs(headers, &pairs)?;
    let pairs: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "_format").collect();
    let query = carevault_fhir::search::parse_query(rtype, &pairs, prefers_lenient(headers))
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let records = &state.inner.records;
    let page = match patient {
        Some(patient) => {
            records
                .search_compartment(caller, patient, rtype, &query)
                .await?
        }
        None => records.search(caller, rtype, &query).await?,
    };
    let path = match patient {
        Some(patient) => format!("Patient/{patient}/{rtype}"),
        None => rtype.to_string(),
    };

    let base = crate::paging::fhir_base(state);
    let mut entries = BundleWriter::default();
    if !query.summary_count {
        push_page(&mut entries, base, &page, &query)?;
    }
    let with_total =
        query.summary_count || !matches!(query.total, carevault_fhir::search::Total::None);
    searchset(
        state,
        &format!("{base}/{path}"),
        &pairs,
        (query.page.as_deref(), page.next.as_deref()),
        with_total.then_some(page.total),
        entries,
    )
}

/// `Prefer: handling=lenient`: unknown search parameters are ignored rather than refused.
pub(crate) fn prefers_lenient(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim() == "handling=lenient"))
}

/// A search page's matches (reduced to `_elements` when asked) and included resources, as
/// searchset entries.
pub(crate) fn push_page(
    entries: &mut BundleWriter,
    base: &str,
    page: &carevault_server::records::SearchPage,
    query: &carevault_fhir::search::Query,
) -> Result<(), ApiError> {
    let narrowing = Narrowing {
        summary: query.summary,
        elements: query.elements.clone(),
    };
    for (mode, v) in page
        .matches
        .iter()
        .map(|v| ("match", v))
        .chain(page.included.iter().map(|v| ("include", v)))
    {
        let resource = if mode == "match" {
            narrowed(v, &narrowing)?
        } else {
            Cow::Borrowed(&v.json[..])
        };
        entries.push(
            &SearchEntry {
                full_url: format!("{base}/{}/{}", v.rtype, v.id),
                search: SearchMode { mode },
            },
            Some(&resource),
        )?;
    }
    Ok(())
}

/// A searchset Bundle of `entries`, with `self` and `next` links to `url` carrying the request's
/// own parameters and the page cursors (`this`, `next`).
pub(crate) fn searchset(
    state: &AppState,
    url: &str,
    pairs: &[(String, String)],
    (this, next): (Option<&str>, Option<&str>),
    total: Option<usize>,
    entries: BundleWriter,
) -> Result<Response, ApiError> {
    let links = crate::paging::page_links(url, pairs, "_page", (this, next));
    let bundle = BundleHead::new("searchset", uuid::Uuid::new_v4().to_string())
        .last_updated(fhir_instant(state.inner.clock.now_us()))
        .total(total)
        .links(links);
    Ok(fhir_json(StatusCode::OK, entries.finish(&bundle)?))
}

#[derive(serde::Serialize)]
struct SearchEntry {
    #[serde(rename = "fullUrl")]
    full_url: String,
    search: SearchMode,
}

#[derive(serde::Serialize)]
struct SearchMode {
    mode: &'static str,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    negotiate(&headers, &params)?;
    let criteria = if_none_exist(&headers, &audit)?;
    let resource = resource_body(&state, &headers, body).await?;
    let (caller, records) = (Caller::new(&p, &audit), &state.inner.records);
    let (v, created) = match criteria {
        None => (records.create(caller, rtype, resource).await?, true),
        Some(criteria) => {
            records
                .create_unless_exists(caller, rtype, &criteria, resource)
                .await?
        }
    };
    Ok(saved_response(&state, &headers, &v, created))
}

/// The search criteria of a conditional create's `If-None-Exist` (`identifier=sys|123`; a
/// leading `?` or `Type?` is accepted too), kept in the audit event as digests like any query.
fn if_none_exist(
    headers: &HeaderMap,
    audit: &AuditScope,
) -> Result<Option<Vec<(String, String)>>, ApiError> {
    let Some(value) = headers.get("if-none-exist") else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::from(Error::BadRequest(
            "If-None-Exist must be search parameters, such as identifier=system|value".into(),
        ))
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let query = value.split_once('?').map_or(value, |(_, q)| q);
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| malformed())?;
    for (k, v) in &pairs {
        audit.add_query(k, v);
    }
    Ok(Some(pairs))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let id = resource_id(&id)?;
    negotiate(&headers, &params)?;
    let if_match = headers.get(header::IF_MATCH).map(parse_etag).transpose()?;
    let resource = resource_body(&state, &headers, body).await?;
    let (v, created) = state
        .inner
        .records
        .update(Caller::new(&p, &audit), rtype, &id, resource, if_match)
        .await?;
    Ok(saved_response(&state, &headers, &v, created))
}

pub async fn read(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let id = resource_id(&id)?;
    negotiate(&headers, &params)?;
    let narrowing = read_narrowing(&params)?;
    match state
        .inner
        .records
        .read(Caller::new(&p, &audit), rtype, &id)
        .await?
    {
        Current::Present(v) => {
            let mut resp = if not_modified(&headers, &v) {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                fhir_json(StatusCode::OK, narrowed(&v, &narrowing)?.into_owned())
            };
            version_headers(&mut resp, &v);
            Ok(resp)
        }
        Current::Deleted { version, .. } => {
            let mut resp = ApiError::from(Error::Gone).into_response();
            if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
            Ok(resp)
        }
    }
}

/// A read's `_summary` and `_elements` (400 naming the parameter for a value R4 lacks).
fn read_narrowing(params: &HashMap<String, String>) -> Result<Narrowing, ApiError> {
    Narrowing::parse(
        params.get("_summary").map(String::as_str),
        params.get("_elements").map(String::as_str),
    )
    .map_err(|e| Error::BadRequest(e.to_string()).into())
}

/// A version's JSON as the client asked to see it: as stored, or parsed and narrowed.
pub(crate) fn narrowed<'a>(
    v: &'a Version,
    narrowing: &Narrowing,
) -> Result<Cow<'a, [u8]>, ApiError> {
    if narrowing.is_whole() {
        return Ok(Cow::Borrowed(&v.json[..]));
    }
    let mut json: Value = serde_json::from_slice(&v.json)
        .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
    narrowing.apply(v.rtype, &mut json);
    Ok(Cow::Owned(json.to_string().into_bytes()))
}

/// Conditional read (R4 3.1.0.2.1): `If-None-Match` naming the current version, or (without
/// it, as RFC 9110 orders them) `If-Modified-Since` no earlier than the last update.
fn not_modified(headers: &HeaderMap, v: &Version) -> bool {
    if let Some(tags) = headers.get(header::IF_NONE_MATCH) {
        let tags = tags.to_str().unwrap_or("");
        return tags.split(',').any(|tag| {
            let tag = tag.trim();
            tag == "*" || {
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                tag.trim_matches('"').parse::<u32>() == Ok(v.version)
            }
        });
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|d| d.to_str().ok())
        .and_then(carevault_server::clock::parse_http_date)
        // HTTP dates have whole seconds: a version from within the named second is not newer.
        .is_some_and(|since| v.last_updated_us.div_euclid(1_000_000) * 1_000_000 <= since)
}

pub async fn vread(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let id = resource_id(&id)?;
    let version = vid
        .parse::<u32>()
        .map_err(|_| ApiError::Core(Error::NotFound))?;
    negotiate(&headers, &params)?;
    let narrowing = read_narrowing(&params)?;
    let v = state
        .inner
        .records
        .vread(Caller::new(&p, &audit), rtype, &id, version)
        .await?;
    let mut resp = fhir_json(StatusCode::OK, narrowed(&v, &narrowing)?.into_owned());
    version_headers(&mut resp, &v);
    Ok(resp)
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let id = resource_id(&id)?;
    let deleted = state
        .inner
        .records
        .delete(Caller::new(&p, &audit), rtype, &id)
        .await?;
    Ok(deleted_response(deleted))
}

pub async fn history_type(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    history(
        &state,
        Caller::new(&p, &audit),
        &headers,
        &params,
        Some(rtype),
        None,
    )
    .await
}

/// `GET [base]/_history`: every type's history the caller may read, newest first.
pub async fn history_system(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    history(
        &state,
        Caller::new(&p, &audit),
        &headers,
        &params,
        None,
        None,
    )
    .await
}

pub async fn history_instance(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let id = resource_id(&id)?;
    history(
        &state,
        Caller::new(&p, &audit),
        &headers,
        &params,
        Some(rtype),
        Some(id),
    )
    .await
}

async fn history(
    state: &AppState,
    caller: Caller<'_>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    rtype: Option<ResourceType>,
    id: Option<ResourceId>,
) -> Result<Response, ApiError> {
    negotiate(headers, params)?;
    for key in params.keys() {
        if !matches!(key.as_str(), "_count" | "_since" | "_cursor" | "_format") {
            return Err(Error::BadRequest(
                "unsupported history parameter; supported: _count, _since".into(),
            )
            .into());
        }
    }
    let count = match params.get("_count") {
        Some(c) => c
            .parse::<u32>()
            .map_err(|_| Error::BadRequest("_count must be a whole number".into()))?
            .clamp(1, MAX_HISTORY_COUNT),
        None => DEFAULT_HISTORY_COUNT,
    };
    let since = match params.get("_since") {
        Some(s) => Some(
            parse_instant(s)
                .ok_or_else(|| Error::BadRequest("_since must be a FHIR instant".into()))?,
        ),
        None => None,
    };
    let cursor: Option<i64> = params
        .get("_cursor")
        .map(|c| carevault_server::paging::decode(c))
        .transpose()?;
    if let Some(id) = &id
        && cursor.is_none()
        && state
            .inner
            .records
            .history(caller, rtype, Some(id), None, None, 1)
            .await?
            .is_empty()
    {
        return Err(Error::NotFound.into());
    }
    // One extra row tells whether there is a next page.
    let mut items = state
        .inner
        .records
        .history(caller, rtype, id.as_ref(), since, cursor, count + 1)
        .await?;
    let has_more = items.len() > count as usize;
    items.truncate(count as usize);

    let base = crate::paging::fhir_base(state);
    let self_path = match (rtype, &id) {
        (Some(rtype), Some(id)) => format!("{base}/{rtype}/{id}/_history"),
        (Some(rtype), None) => format!("{base}/{rtype}/_history"),
        (None, _) => format!("{base}/_history"),
    };
    // The links carry the count in force and `_since`, as the client sent it.
    let mut own = vec![("_count".to_owned(), count.to_string())];
    if let Some(since) = params.get("_since") {
        own.push(("_since".to_owned(), since.clone()));
    }
    let next = if has_more && let Some(last) = items.last() {
        Some(carevault_server::paging::encode(&last.seq))
    } else {
        None
    };
    let this = params.get("_cursor").map(String::as_str);
    let links = crate::paging::page_links(&self_path, &own, "_cursor", (this, next.as_deref()));

    let mut entries = BundleWriter::default();
    for item in &items {
        let v = &item.version;
        let method = if v.deleted {
            "DELETE"
        } else if v.version == 1 {
            "POST"
        } else {
            "PUT"
        };
        let url = if method == "POST" {
            v.rtype.to_string()
        } else {
            format!("{}/{}", v.rtype, v.id)
        };
        let status = if v.deleted {
            "204 No Content"
        } else if v.version == 1 {
            "201 Created"
        } else {
            "200 OK"
        };
        entries.push(
            &HistoryEntry {
                full_url: format!("{base}/{}/{}", v.rtype, v.id),
                request: EntryRequest { method, url },
                response: EntryResponse {
                    status,
                    etag: format!("W/\"{}\"", v.version),
                    last_modified: fhir_instant(v.last_updated_us),
                },
            },
            (!v.deleted).then_some(v.json.as_slice()),
        )?;
    }
    let bundle = BundleHead::new("history", uuid::Uuid::new_v4().to_string())
        .last_updated(fhir_instant(state.inner.clock.now_us()))
        .links(links);
    Ok(fhir_json(StatusCode::OK, entries.finish(&bundle)?))
}

#[derive(serde::Serialize)]
struct HistoryEntry {
    #[serde(rename = "fullUrl")]
    full_url: String,
    request: EntryRequest,
    response: EntryResponse,
}

#[derive(serde::Serialize)]
struct EntryRequest {
    method: &'static str,
    url: String,
}

#[derive(serde::Serialize)]
struct EntryResponse {
    status: &'static str,
    etag: String,
    #[serde(rename = "lastModified")]
    last_modified: String,
}

/// How search chaining works here (R4's `searchParam` has no chain flag, so the statement says
/// it in `rest.documentation`).
fn chaining_documentation() -> String {
    format!(
        "Search supports chaining one level on reference parameters \
         (`Observation?subject:Patient.name=x`; without `:Type` the chain targets the one target \
         type that has the chained parameter, and is refused as ambiguous otherwise) and reverse \
         chaining one level with `_has` (`Patient?_has:Observation:patient:code=x`). Each \
         chain's inner search sees only what the caller may read and may match at most {} \
         resources. Chaining is not supported in `_include`, `_sort` or a bulk `_typeFilter`.",
        carevault_server::records::MAX_CHAIN_MATCHES
    )
}

/// The CapabilityStatement: exactly the interactions implemented here, for every R4 type.
pub fn capability_statement(now_us: i64) -> Vec<u8> {
    let interactions = [
        "search-type",
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
    ];
    // What `_include` and `_revinclude` follow: reference parameters holding `Type/id`
    // references (not canonical URLs), by source type and by each type they may point to.
    let followed = |t: ResourceType| {
        carevault_fhir::search::params(t)
            .into_iter()
            .filter(|p| p.ptype == carevault_fhir::search::ParamType::Reference && p.refers_by_id())
    };
    let mut rev_includes: std::collections::HashMap<ResourceType, Vec<String>> =
        std::collections::HashMap::new();
    for source in ResourceType::all() {
        for p in followed(source) {
            for target in p.targets() {
                rev_includes.entry(target).or_default().push(format!(
                    "{}:{}",
                    source.as_str(),
                    p.name
                ));
            }
        }
    }
    let resources: Vec<Value> = ResourceType::all()
        .map(|t| {
            let params = carevault_fhir::search::params(t);
            let search_params: Vec<Value> = params
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "type": p.ptype.as_str(),
                        "definition": p.url,
                    })
                })
                .collect();
            let includes: Vec<String> = followed(t)
                .map(|p| format!("{}:{}", t.as_str(), p.name))
                .collect();
            serde_json::json!({
                "type": t.as_str(),
                "searchParam": search_params,
                "searchInclude": includes,
                "searchRevInclude": rev_includes.get(&t).cloned().unwrap_or_default(),
                "interaction": interactions.iter().map(|i| serde_json::json!({"code": i})).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
            })
        })
        .collect();
    let cs = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(now_us),
        "kind": "instance",
        "software": {"name": "CareVault", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "CareVault FHIR R4 server"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": chaining_documentation(),
            "security": {
                "cors": false,
                "description": "Bearer session tokens from POST /auth/login (password and TOTP, both required)."
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                {"code": "search-system"}],
            "operation": [{
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
            }, {
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
            }],
        }],
    });
    serde_json::to_vec(&cs).unwrap_or_default()
}
