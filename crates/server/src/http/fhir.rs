//! FHIR R4 REST handlers at `/fhir`: metadata, create, read, vread, update, delete, history.

use std::collections::HashMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carevault_fhir::outcome::{self, Severity};
use carevault_fhir::{ResourceId, ResourceType};
use serde_json::Value;
use serde_json::value::RawValue;

use super::auth::Authenticated;
use super::error::{ApiError, fhir_json};
use super::{AppState, parse_json, read_body, require_json_body};
use crate::audit::AuditScope;
use crate::clock::{fhir_instant, http_date, parse_instant};
use crate::error::Error;
use crate::records::{Caller, Current, Version};

const DEFAULT_HISTORY_COUNT: u32 = 50;
const MAX_HISTORY_COUNT: u32 = 1000;

type Params = Query<HashMap<String, String>>;

fn resource_type(s: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(s).map_err(|_| ApiError::NoSuchEndpoint)
}

fn resource_id(s: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(s)
        .map_err(|_| Error::BadRequest("the id is not a valid FHIR id".into()).into())
}

/// 406 unless the client accepts FHIR JSON (by `_format` or `Accept`).
fn negotiate(headers: &HeaderMap, params: &HashMap<String, String>) -> Result<(), ApiError> {
    if let Some(format) = params.get("_format") {
        return match format.as_str() {
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => {
                Ok(())
            }
            _ => Err(ApiError::NotAcceptable),
        };
    }
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().map_err(|_| ApiError::NotAcceptable)?;
    let ok = accept.split(',').any(|range| {
        let media = range
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*"
                | "application/*"
                | "application/json"
                | "application/fhir+json"
                | "application/json+fhir"
        )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable)
    }
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
fn parse_etag(v: &HeaderValue) -> Result<u32, ApiError> {
    let s = v.to_str().unwrap_or("").trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"').parse::<u32>().map_err(|_| {
        Error::BadRequest("If-Match must be a version ETag such as W/\"1\"".into()).into()
    })
}

fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let scheme = if state.inner.config.plain_http {
        "http"
    } else {
        "https"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map_or_else(|| state.inner.config.listen.to_string(), str::to_owned);
    format!("{scheme}://{host}/fhir")
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

async fn resource_body(
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

/// Search is not offered yet (the CapabilityStatement says so).
pub async fn search_type(
    Authenticated(_): Authenticated,
    Path(rtype): Path<String>,
) -> Result<Response, ApiError> {
    resource_type(&rtype)?;
    Err(ApiError::MethodNotAllowed)
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
    let resource = resource_body(&state, &headers, body).await?;
    let v = state
        .inner
        .records
        .create(
            Caller {
                principal: &p,
                audit: &audit,
            },
            rtype,
            resource,
        )
        .await?;
    Ok(write_response(
        StatusCode::CREATED,
        &v,
        &base_url(&state, &headers),
        prefer(&headers),
    ))
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
        .update(
            Caller {
                principal: &p,
                audit: &audit,
            },
            rtype,
            &id,
            resource,
            if_match,
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(write_response(
        status,
        &v,
        &base_url(&state, &headers),
        prefer(&headers),
    ))
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
    match state
        .inner
        .records
        .read(
            Caller {
                principal: &p,
                audit: &audit,
            },
            rtype,
            &id,
        )
        .await?
    {
        Current::Present(v) => {
            let mut resp = fhir_json(StatusCode::OK, v.json.clone());
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
    let v = state
        .inner
        .records
        .vread(
            Caller {
                principal: &p,
                audit: &audit,
            },
            rtype,
            &id,
            version,
        )
        .await?;
    let mut resp = fhir_json(StatusCode::OK, v.json.clone());
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
        .delete(
            Caller {
                principal: &p,
                audit: &audit,
            },
            rtype,
            &id,
        )
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(version) = deleted
        && let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version}\""))
    {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    Ok(resp)
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
        Caller {
            principal: &p,
            audit: &audit,
        },
        &headers,
        &params,
        rtype,
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
        Caller {
            principal: &p,
            audit: &audit,
        },
        &headers,
        &params,
        rtype,
        Some(id),
    )
    .await
}

async fn history(
    state: &AppState,
    caller: Caller<'_>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    rtype: ResourceType,
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
    let cursor = match params.get("_cursor") {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| Error::BadRequest("_cursor is not a valid paging cursor".into()))?,
        ),
        None => None,
    };
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

    let base = base_url(state, headers);
    let self_path = match &id {
        Some(id) => format!("{base}/{rtype}/{id}/_history"),
        None => format!("{base}/{rtype}/_history"),
    };
    let mut query = format!("_count={count}");
    if let Some(s) = params.get("_since") {
        // Re-encode only what parse_instant accepted: digits, letters, ':', '.', '-', '+'.
        let safe: String = s
            .chars()
            .map(|c| {
                if c == '+' {
                    "%2B".to_owned()
                } else {
                    c.to_string()
                }
            })
            .collect();
        query.push_str(&format!("&_since={safe}"));
    }
    let mut links =
        vec![serde_json::json!({"relation": "self", "url": format!("{self_path}?{query}")})];
    if has_more && let Some(last) = items.last() {
        links.push(serde_json::json!({
            "relation": "next",
            "url": format!("{self_path}?{query}&_cursor={}", last.seq),
        }));
    }

    let mut entries = Vec::with_capacity(items.len());
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
            rtype.to_string()
        } else {
            format!("{rtype}/{}", v.id)
        };
        let status = if v.deleted {
            "204 No Content"
        } else if v.version == 1 {
            "201 Created"
        } else {
            "200 OK"
        };
        let resource = if v.deleted {
            None
        } else {
            let text = std::str::from_utf8(&v.json)
                .map_err(|_| Error::Integrity("stored JSON is not UTF-8".into()))?;
            Some(
                RawValue::from_string(text.to_owned())
                    .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?,
            )
        };
        entries.push(HistoryEntry {
            full_url: format!("{base}/{rtype}/{}", v.id),
            resource,
            request: EntryRequest { method, url },
            response: EntryResponse {
                status,
                etag: format!("W/\"{}\"", v.version),
                last_modified: fhir_instant(v.last_updated_us),
            },
        });
    }
    let bundle = HistoryBundle {
        resource_type: "Bundle",
        id: uuid::Uuid::new_v4().to_string(),
        meta: BundleMeta {
            last_updated: fhir_instant(state.inner.clock.now_us()),
        },
        bundle_type: "history",
        link: links,
        entry: entries,
    };
    let body =
        serde_json::to_vec(&bundle).map_err(|e| Error::Internal(format!("serialize: {e}")))?;
    Ok(fhir_json(StatusCode::OK, body))
}

#[derive(serde::Serialize)]
struct HistoryBundle {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: String,
    meta: BundleMeta,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    link: Vec<Value>,
    entry: Vec<HistoryEntry>,
}

#[derive(serde::Serialize)]
struct BundleMeta {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
}

#[derive(serde::Serialize)]
struct HistoryEntry {
    #[serde(rename = "fullUrl")]
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Box<RawValue>>,
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

/// The CapabilityStatement: exactly the interactions implemented here, for every R4 type.
pub fn capability_statement(now_us: i64) -> Vec<u8> {
    let interactions = [
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "history-type",
        "create",
    ];
    let resources: Vec<Value> = ResourceType::all()
        .map(|t| {
            serde_json::json!({
                "type": t.as_str(),
                "interaction": interactions.iter().map(|i| serde_json::json!({"code": i})).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
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
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "description": "Bearer session tokens from POST /auth/login (password and TOTP, both required)."
            },
            "resource": resources,
        }],
    });
    serde_json::to_vec(&cs).unwrap_or_default()
}
