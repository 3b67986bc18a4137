//! `GET /audit/events` (auditor only): the trail as a FHIR Bundle of R4 `AuditEvent`s,
//! following the Basic Audit Log Patterns where they fit. Reading the trail is itself audited.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use carevault_audit::{EventRecord, StoredEvent};
use carevault_fhir::bundle::{BundleHead, BundleWriter};
use carevault_store::AuditQuery;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, fhir_json};
use carevault_server::Error;
use carevault_server::clock::{fhir_instant, parse_instant};

const DEFAULT_COUNT: u32 = 50;
const MAX_COUNT: u32 = 1000;

pub async fn events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut q = AuditQuery {
        limit: DEFAULT_COUNT,
        ..AuditQuery::default()
    };
    for (key, value) in &params {
        match key.as_str() {
            "principal" => q.principal = Some(value.clone()),
            "patient" => {
                q.patient = Some(carevault_server::compartment::of_patient(
                    carevault_server::compartment::patient_id(value),
                ));
            }
            "action" => q.action = Some(value.clone()),
            "outcome" => q.outcome = Some(value.clone()),
            "since" => q.since_us = Some(instant(value, "since")?),
            "until" => q.until_us = Some(instant(value, "until")?),
            "_count" => {
                q.limit = value
                    .parse::<u32>()
                    .map_err(|_| Error::BadRequest("_count must be a whole number".into()))?
                    .clamp(1, MAX_COUNT);
            }
            "_cursor" => q.before = Some(carevault_server::paging::decode(value)?),
            _ => {
                return Err(Error::BadRequest(
                    "unknown parameter; supported: principal, patient, action, outcome, since, until, _count".into(),
                )
                .into());
            }
        }
    }
    let limit = q.limit;
    q.limit += 1;
    let mut found = state.inner.audit_store().audit_search(q).await?;
    let has_more = found.len() > limit as usize;
    found.truncate(limit as usize);

    let next = if has_more && let Some(last) = found.last() {
        Some(carevault_server::paging::encode(&(
            last.time_us,
            &last.node,
            last.seq,
        )))
    } else {
        None
    };
    let this = params.get("_cursor").cloned();
    let mut own: Vec<(String, String)> = params.into_iter().collect();
    own.sort();
    let links = crate::paging::page_links(
        &format!("{}/audit/events", crate::paging::origin(&state)),
        &own,
        "_cursor",
        (this.as_deref(), next.as_deref()),
    );
    let mut entries = BundleWriter::default();
    for event in found.iter().filter_map(to_audit_event) {
        entries.push(&json!({"resource": event}), None)?;
    }
    let head = BundleHead::new("searchset", uuid::Uuid::new_v4().to_string())
        .last_updated(fhir_instant(state.inner.clock.now_us()))
        .links(links);
    Ok(fhir_json(StatusCode::OK, entries.finish(&head)?))
}

fn instant(value: &str, name: &str) -> Result<i64, ApiError> {
    parse_instant(value)
        .ok_or_else(|| Error::BadRequest(format!("{name} must be a FHIR instant")).into())
}

/// An R4 AuditEvent for one stored event.
fn to_audit_event(e: &StoredEvent) -> Option<Value> {
    let r: EventRecord = serde_json::from_slice(&e.body).ok()?;
    let (type_code, type_display) = if r.route.starts_with("/fhir") {
        ("rest", "RESTful Operation")
    } else {
        ("110114", "User Authentication")
    };
    let type_system = if type_code == "rest" {
        "http://terminology.hl7.org/CodeSystem/audit-event-type"
    } else {
        "http://dicom.nema.org/resources/ontology/DCM"
    };
    let crud = match r.action.as_str() {
        "create" => "C",
        "read" | "vread" | "history-instance" | "history-type" | "history-system"
        | "audit.read" | "auth.whoami" => "R",
        "update" | "update-conditional" | "patch" => "U",
        "delete" | "delete-conditional" => "D",
        _ => "E",
    };
    let outcome = match r.status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut entities: Vec<Value> = r
        .patients
        .iter()
        .map(|p| json!({"what": {"reference": p}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}))
        .collect();
    if let (Some(t), Some(id)) = (&r.resource_type, &r.resource_id) {
        let reference = match r.resource_version {
            Some(v) => format!("{t}/{id}/_history/{v}"),
            None => format!("{t}/{id}"),
        };
        entities.push(json!({"what": {"reference": reference}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}}));
    }
    let mut detail: Vec<Value> = vec![
        json!({"type": "request_id", "valueString": r.request_id}),
        json!({"type": "http_status", "valueString": r.status.to_string()}),
        json!({"type": "chain", "valueString": format!("{}:{}", e.node, e.seq)}),
    ];
    detail.extend(
        r.query
            .iter()
            .map(|(k, v)| json!({"type": format!("query_digest:{k}"), "valueString": v})),
    );
    detail.extend(
        r.detail
            .iter()
            .map(|(k, v)| json!({"type": k, "valueString": v})),
    );
    if !entities.is_empty() || !detail.is_empty() {
        entities.push(json!({"what": {"display": "request"}, "detail": detail}));
    }
    let purpose: Vec<Value> = r
        .break_glass_reason
        .iter()
        .map(|reason| json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass"}], "text": reason}))
        .collect();
    Some(json!({
        "resourceType": "AuditEvent",
        "purposeOfEvent": purpose,
        "id": format!("{}-{}", e.node, e.seq),
        "type": {"system": type_system, "code": type_code, "display": type_display},
        "subtype": [{"system": "urn:carevault:action", "code": r.action}],
        "action": crud,
        "recorded": fhir_instant(e.time_us),
        "outcome": outcome,
        "outcomeDesc": r.outcome,
        "agent": [{
            "who": {"identifier": {"system": "urn:carevault:principal", "value": r.principal}},
            "altId": r.auth_method,
            "role": r.roles.iter().map(|role| json!({"text": role})).collect::<Vec<_>>(),
            "requestor": true,
            "network": {"address": r.client_ip, "type": "2"},
            "policy": r.policy_ids,
        }],
        "source": {"observer": {"display": e.node}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        "entity": entities,
    }))
}
