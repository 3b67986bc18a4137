//! Policies, API keys, break-glass and metrics endpoints.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Authenticated;
use super::error::ApiError;
use super::{AppState, json_body, json_response};
use carevault_server::audit::AuditScope;
use carevault_server::identity::{NewApiKey, PrincipalKind};
use carevault_server::{ApiKeyName, Error, PolicyName};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    name: String,
    policy: String,
}

pub async fn put_policy(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: PolicyRequest = json_body(&state, &headers, body).await?;
    let name = PolicyName::parse(&req.name).map_err(Error::from)?;
    match state
        .inner
        .authz
        .put_policy(&audit, &name, &req.policy)
        .await?
    {
        Ok(version) => Ok(json_response(
            StatusCode::CREATED,
            &json!({"name": req.name, "policy_set_version": version}),
        )),
        Err(rejected) => {
            // Cedar's diagnostics concern the policy text the admin sent; no PHI.
            let issues: Vec<_> = rejected
                .0
                .iter()
                .map(|d| json!({"severity": "error", "code": "invalid", "diagnostics": d}))
                .collect();
            let body = json!({"resourceType": "OperationOutcome", "issue": issues});
            Ok(super::error::fhir_json(
                StatusCode::BAD_REQUEST,
                body.to_string().into_bytes(),
            ))
        }
    }
}

pub async fn list_policies(State(state): State<AppState>) -> Result<Response, ApiError> {
    let version = state.inner.authz.reload().await?;
    let policies: Vec<_> = state
        .inner
        .authz
        .custom_policies()
        .into_iter()
        .map(|r| json!({"name": r.name, "policy": r.text, "updated_at": carevault_server::clock::fhir_instant(r.updated_at * 1_000_000)}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"policy_set_version": version, "builtin": carevault_server::authz::BUILTIN_POLICIES, "policies": policies}),
    ))
}

pub async fn get_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let found = state
        .inner
        .authz
        .custom_policies()
        .into_iter()
        .find(|r| r.name == name)
        .ok_or(Error::NotFound)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": found.name, "policy": found.text}),
    ))
}

pub async fn delete_policy(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // A name no policy can have names none.
    let name = PolicyName::parse(&name).map_err(|_| Error::NotFound)?;
    state.inner.authz.delete_policy(&audit, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Service keys (admin).
pub async fn create_service_key(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: NewApiKey = json_body(&state, &headers, body).await?;
    let created = state
        .inner
        .identity
        .create_api_key(&audit, None, &req)
        .await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

pub async fn list_keys(State(state): State<AppState>) -> Result<Response, ApiError> {
    let keys = state.inner.identity.list_api_keys(None).await?;
    Ok(json_response(StatusCode::OK, &json!({"api_keys": keys})))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // A name no key can have names none.
    let name = ApiKeyName::parse(&name).map_err(|_| Error::NotFound)?;
    state
        .inner
        .identity
        .revoke_api_key(&audit, None, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A user's own keys: the grants are the intersection of the scopes and the user's rights.
pub async fn create_own_key(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !matches!(p.kind, PrincipalKind::User) {
        return Err(Error::Forbidden.into());
    }
    let req: NewApiKey = json_body(&state, &headers, body).await?;
    let created = state
        .inner
        .identity
        .create_api_key(&audit, Some(&p), &req)
        .await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

pub async fn list_own_keys(
    State(state): State<AppState>,
    Authenticated(p): Authenticated,
) -> Result<Response, ApiError> {
    let keys = state.inner.identity.list_api_keys(Some(&p.id)).await?;
    Ok(json_response(StatusCode::OK, &json!({"api_keys": keys})))
}

pub async fn revoke_own_key(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = ApiKeyName::parse(&name).map_err(|_| Error::NotFound)?;
    state
        .inner
        .identity
        .revoke_api_key(&audit, Some(&p.id), &name)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    reason: String,
    #[serde(default)]
    patient: Option<String>,
}

pub async fn break_glass(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: BreakGlassRequest = json_body(&state, &headers, body).await?;
    let minutes = state.inner.config.break_glass_minutes;
    let until = state
        .inner
        .identity
        .break_glass(&audit, &p, &req.reason, req.patient.as_deref(), minutes)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"expires_at": until, "minutes": minutes}),
    ))
}

/// Prometheus text format (docs/monitoring.md lists the families). Auditors, developers and
/// keys with the `metrics` scope.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use carevault_server::metrics;
    let services = &state.inner;
    let mut text = services.metrics.render();
    text.push_str(&metrics::process_text());
    text.push_str(&metrics::store_text(&services.store.stats().await));
    text.push_str(&services.identity.metrics_text().await);
    text.push_str(&services.keyring.metrics_text().await);
    text.push_str(&services.audit.metrics_text());
    text.push_str(&services.posture.metrics_text());
    text.push_str(&services.metrics.backup.text());
    text.push_str(&services.detection.alerts.metrics_text());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}
