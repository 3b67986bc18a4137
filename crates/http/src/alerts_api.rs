//! `GET /alerts`, `GET /alerts/{id}` and `POST /alerts/{id}/ack` (the `audit-read` permission:
//! the auditor role): security alerts as a Bundle of R4 `DetectedIssue`s. Alerts live in the
//! audit trail (`carevault_server::detection`); an acknowledgement is the audited request itself.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use carevault_fhir::bundle::{BundleHead, BundleWriter};
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::clock::fhir_instant;
use carevault_server::detection::Alert;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, fhir_json};

const DEFAULT_COUNT: u32 = 100;
const MAX_COUNT: u32 = 1000;

pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut limit = DEFAULT_COUNT;
    for (key, value) in &params {
        match key.as_str() {
            "_count" => {
                limit = value
                    .parse::<u32>()
                    .map_err(|_| Error::BadRequest("_count must be a whole number".into()))?
                    .clamp(1, MAX_COUNT);
            }
            _ => {
                return Err(
                    Error::BadRequest("unknown parameter; supported: _count".into()).into(),
                );
            }
        }
    }
    let alerts = state
        .inner
        .detection
        .alerts
        .list(state.inner.audit_store(), limit)
        .await?;
    let mut entries = BundleWriter::default();
    for alert in &alerts {
        entries.push(&json!({"resource": detected_issue(alert)}), None)?;
    }
    let head = BundleHead::new("searchset", uuid::Uuid::new_v4().to_string())
        .last_updated(fhir_instant(state.inner.clock.now_us()));
    Ok(fhir_json(StatusCode::OK, entries.finish(&head)?))
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let alert = find(&state, &id).await?;
    let body = serde_json::to_vec(&detected_issue(&alert))
        .map_err(|e| Error::Internal(format!("serialize: {e}")))?;
    Ok(fhir_json(StatusCode::OK, body))
}

/// Acknowledge an alert: this request's audit event (action `alerts.ack`, detail `alert_id`)
/// is the acknowledgement.
pub async fn ack(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut alert = find(&state, &id).await?;
    audit.add_detail("alert_id", alert.id.clone());
    if alert.acknowledged_by.is_none() {
        alert.acknowledged_by = Some(audit.read(|r| r.principal.clone()));
    }
    let body = serde_json::to_vec(&detected_issue(&alert))
        .map_err(|e| Error::Internal(format!("serialize: {e}")))?;
    Ok(fhir_json(StatusCode::OK, body))
}

async fn find(state: &AppState, id: &str) -> Result<Alert, ApiError> {
    state
        .inner
        .detection
        .alerts
        .find(state.inner.audit_store(), id)
        .await?
        .ok_or_else(|| Error::NotFound.into())
}

/// An R4 DetectedIssue for one alert: `status` is `preliminary` until acknowledged, then
/// `final`; the rule is the `code`; principal, address, counts and the digest are extensions.
fn detected_issue(a: &Alert) -> Value {
    let severity = match a.severity.as_str() {
        "critical" | "high" => "high",
        "medium" => "moderate",
        _ => "low",
    };
    let ext = |name: &str, value: Value| json!({"url": format!("urn:carevault:alert:{name}"), "valueString": value});
    let mut extension = vec![
        ext("severity", json!(a.severity)),
        ext("principal", json!(a.principal)),
        ext("source-ip", json!(a.source_ip)),
        json!({"url": "urn:carevault:alert:count", "valueUnsignedInt": a.count}),
        ext("chain", json!(format!("{}:{}", a.node, a.seq))),
    ];
    if let Some(d) = &a.digest {
        extension.push(ext("digest", json!(d)));
    }
    if let Some(who) = &a.acknowledged_by {
        extension.push(ext("acknowledged-by", json!(who)));
    }
    json!({
        "resourceType": "DetectedIssue",
        "id": a.id,
        "extension": extension,
        "status": if a.acknowledged_by.is_some() { "final" } else { "preliminary" },
        "code": {"coding": [{"system": "urn:carevault:alert-rule", "code": a.rule}]},
        "severity": severity,
        "identifiedDateTime": fhir_instant(a.time_us),
        "author": {"display": format!("carevault {}", a.node)},
        "detail": format!("{}: {} event(s) from {}", a.rule, a.count, a.source_ip),
    })
}
