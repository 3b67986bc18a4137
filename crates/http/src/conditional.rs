//! FHIR REST handlers that select or change a resource by reading first: conditional update and
//! delete (`PUT`/`DELETE [type]?criteria`), `PATCH` with JSON Patch, and `$validate`. The
//! decisions are the core's (`carevault_server::records::conditional`); these only speak HTTP.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use carevault_fhir::outcome::{self, Severity};
use carevault_fhir::patch::{Patch, PatchFormat};
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::records::Caller;

use super::auth::Authenticated;
use super::error::{ApiError, fhir_json};
use super::fhir::{
    deleted_response, negotiate_pairs, parse_etag, resource_body, resource_id, resource_type,
    saved_response,
};
use super::{AppState, parse_json, read_body};

type Pairs = Query<Vec<(String, String)>>;

/// `PUT /fhir/{type}?criteria`: update the one resource the criteria select (create when none
/// does; 412 when several do).
pub async fn update_conditional(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(criteria): Pairs,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    negotiate_pairs(&headers, &criteria)?;
    let if_match = headers.get(header::IF_MATCH).map(parse_etag).transpose()?;
    let resource = resource_body(&state, &headers, body).await?;
    let (v, created) = state
        .inner
        .records
        .update_selected(
            Caller::new(&p, &audit),
            rtype,
            &criteria,
            resource,
            if_match,
        )
        .await?;
    Ok(saved_response(&state, &headers, &v, created))
}

/// `DELETE /fhir/{type}?criteria`: delete the one resource the criteria select (204 also when
/// none does; 412 when several do).
pub async fn delete_conditional(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(criteria): Pairs,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let deleted = state
        .inner
        .records
        .delete_selected(Caller::new(&p, &audit), rtype, &criteria)
        .await?;
    Ok(deleted_response(deleted))
}

/// `PATCH /fhir/{type}/{id}` with a JSON Patch (`application/json-patch+json`) or a FHIRPath
/// Patch (a `Parameters` resource, `application/fhir+json` or `application/json`).
pub async fn patch(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
    Query(params): Pairs,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    let id = resource_id(&id)?;
    negotiate_pairs(&headers, &params)?;
    let format = patch_format(&headers).ok_or(ApiError::NotPatch)?;
    let if_match = headers.get(header::IF_MATCH).map(parse_etag).transpose()?;
    let bytes = read_body(&state, &headers, body).await?;
    let patch = Patch::parse(format, parse_json(&state, &bytes)?)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let limit = state.inner.config.body_limit_bytes;
    let v = state
        .inner
        .records
        .patch(Caller::new(&p, &audit), rtype, &id, &patch, if_match, limit)
        .await?;
    Ok(saved_response(&state, &headers, &v, false))
}

/// The patch format the `Content-Type` names, if it names one.
fn patch_format(headers: &HeaderMap) -> Option<PatchFormat> {
    let media = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim();
    if media.eq_ignore_ascii_case("application/json-patch+json") {
        Some(PatchFormat::JsonPatch)
    } else if media.eq_ignore_ascii_case("application/fhir+json")
        || media.eq_ignore_ascii_case("application/json")
    {
        Some(PatchFormat::FhirPath)
    } else {
        None
    }
}

/// `POST /fhir/{type}/$validate`: the resource (or a Parameters with a `resource` parameter) is
/// checked as a create would check it, and nothing is stored. As R4 says, the answer is 200 with
/// an OperationOutcome either way; only a request that could not be validated is an error.
pub async fn validate(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    Query(params): Pairs,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rtype = resource_type(&rtype)?;
    negotiate_pairs(&headers, &params)?;
    let mut resource = resource_body(&state, &headers, body).await?;
    if resource.get("resourceType").and_then(|t| t.as_str()) == Some("Parameters")
        && rtype.as_str() != "Parameters"
    {
        resource = parameters_resource(resource)?;
    }
    let outcome = match state
        .inner
        .records
        .validate(Caller::new(&p, &audit), rtype, resource)
    {
        Ok(()) => outcome::single(
            Severity::Information,
            "informational",
            "the resource is valid",
        ),
        Err(e @ (Error::Unprocessable(_) | Error::BadRequest(_))) => e.outcome(),
        Err(e) => return Err(e.into()),
    };
    Ok(fhir_json(StatusCode::OK, outcome.to_string().into_bytes()))
}

/// The `resource` parameter of a `$validate` Parameters body.
fn parameters_resource(parameters: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    let missing = || {
        ApiError::from(Error::BadRequest(
            "the Parameters body has no resource parameter".into(),
        ))
    };
    let serde_json::Value::Object(mut obj) = parameters else {
        return Err(missing());
    };
    let Some(serde_json::Value::Array(list)) = obj.remove("parameter") else {
        return Err(missing());
    };
    list.into_iter()
        .find_map(|mut p| {
            (p.get("name").and_then(|n| n.as_str()) == Some("resource"))
                .then(|| p.get_mut("resource").map(serde_json::Value::take))
                .flatten()
        })
        .ok_or_else(missing)
}
