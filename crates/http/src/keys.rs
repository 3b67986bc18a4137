//! The keyring's administration (admin, `manage-keys`): KEK status, rotation, minimum
//! decryption version, destruction; crypto-shredding a patient with a second admin's approval.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Authenticated;
use super::error::ApiError;
use super::{AppState, json_body, json_response};
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::identity::PrincipalKind;

/// `v3` or `3`.
fn parse_version(text: &str) -> Result<u32, Error> {
    text.strip_prefix('v')
        .unwrap_or(text)
        .parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::BadRequest("a key version is written v1, v2, ...".into()))
}

pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.inner.keyring.status().await?;
    Ok(json_response(StatusCode::OK, &status))
}

pub async fn rotate(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
) -> Result<Response, ApiError> {
    let version = state.inner.keyring.rotate().await?;
    audit.add_detail("kek_version", version.to_string());
    let status = state.inner.keyring.status().await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"active_version": version, "rewrap_remaining": status.rewrap_remaining}),
    ))
}

/// `key rotate-data`: give every patient compartment a new data key and re-seal its resource
/// versions under it, in the background.
pub async fn rotate_data(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
) -> Result<Response, ApiError> {
    let marked = state.inner.keyring.rotate_data().await?;
    audit.add_detail("data_keys", marked.to_string());
    let status = state.inner.keyring.status().await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"data_keys_to_rotate": marked, "data_rotation": status.data_rotation}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinVersionRequest {
    version: serde_json::Value,
}

pub async fn min_version(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: MinVersionRequest = json_body(&state, &headers, body).await?;
    let version = match &req.version {
        serde_json::Value::String(s) => parse_version(s)?,
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Error::BadRequest("a key version is written v1, v2, ...".into()))?,
        _ => return Err(Error::BadRequest("a key version is written v1, v2, ...".into()).into()),
    };
    audit.add_detail("kek_version", version.to_string());
    state.inner.keyring.set_min_decrypt_version(version).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"min_decrypt_version": version}),
    ))
}

pub async fn destroy(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Path(version): Path<String>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    audit.add_detail("kek_version", version.to_string());
    state.inner.keyring.destroy(version).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Only a user (a person) approves or performs a shred, never an API key (the route table
/// already required `ManageKeys`).
fn require_user(p: &carevault_server::identity::Principal) -> Result<(), ApiError> {
    if matches!(p.kind, PrincipalKind::User) {
        Ok(())
    } else {
        Err(Error::Forbidden.into())
    }
}

pub async fn approve_shred(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_user(&p)?;
    let compartment = carevault_server::shred::patient_compartment(&id)?;
    let approval = carevault_server::shred::approve(
        carevault_server::shred::Services {
            store: &*state.inner.store,
            keyring: &state.inner.keyring,
            clock: &state.inner.clock,
        },
        &audit,
        &p,
        &compartment,
    )
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "patient": compartment,
            "approval_token": approval.token,
            "expires_at": carevault_server::clock::fhir_instant(approval.expires_at * 1_000_000),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShredRequest {
    reason: String,
    approval: String,
}

pub async fn shred(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_user(&p)?;
    let compartment = carevault_server::shred::patient_compartment(&id)?;
    let req: ShredRequest = json_body(&state, &headers, body).await?;
    carevault_server::shred::shred(
        carevault_server::shred::Services {
            store: &*state.inner.store,
            keyring: &state.inner.keyring,
            clock: &state.inner.clock,
        },
        &audit,
        &p,
        &compartment,
        &req.reason,
        &req.approval,
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"patient": compartment, "shredded": true}),
    ))
}
