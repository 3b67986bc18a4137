//! Bulk `$export` (HL7 FHIR Bulk Data Access IG v2): the kick-off at the system, Patient and
//! Group levels (GET, or POST with a `Parameters` body), the status URL (poll, cancel) and the
//! output files. Handlers extract, call the core's export service (`carevault_server::export`)
//! and shape its answer.

use axum::Extension;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carevault_fhir::ResourceType;
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::clock::fhir_instant;
use carevault_server::export::{
    Completed, ExportOptions, JobStatus, Level, OutputReader, RETRY_AFTER_SECS, parameter_pairs,
};
use carevault_server::records::Caller;

use super::AppState;
use super::auth::Authenticated;
use super::error::ApiError;
use super::fhir::{negotiate_pairs, resource_id, resource_type};

type Pairs = Query<Vec<(String, String)>>;

/// `GET /fhir/$export`: every resource the caller may read.
pub async fn kick_off_system(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    OriginalUri(uri): OriginalUri,
    Query(pairs): Pairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    kick_off(
        &state,
        Caller::new(&p, &audit),
        Level::System,
        &uri,
        &pairs,
        &headers,
    )
    .await
}

/// `GET /fhir/Patient/$export`: the resources of every patient compartment the caller may read.
pub async fn kick_off_type(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    OriginalUri(uri): OriginalUri,
    Query(pairs): Pairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let level = patient_level(&rtype)?;
    let caller = Caller::new(&p, &audit);
    kick_off(&state, caller, level, &uri, &pairs, &headers).await
}

/// `GET /fhir/Group/{id}/$export`: the resources of the group's member patients.
pub async fn kick_off_group(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    Query(pairs): Pairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let level = group_level(&rtype, &id)?;
    kick_off(
        &state,
        Caller::new(&p, &audit),
        level,
        &uri,
        &pairs,
        &headers,
    )
    .await
}

/// `POST /fhir/$export`: the same kick-off, with its parameters in the query, in a
/// `Parameters` body (the IG v2 permits a POST kick-off that supplies them so), or both; a
/// parameter given in both counts as repeated.
pub async fn kick_off_system_post(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = Caller::new(&p, &audit);
    kick_off_post(&state, caller, Level::System, &uri, &headers, body).await
}

/// `POST /fhir/Patient/$export`, as [`kick_off_system_post`].
pub async fn kick_off_type_post(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(rtype): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let level = patient_level(&rtype)?;
    let caller = Caller::new(&p, &audit);
    kick_off_post(&state, caller, level, &uri, &headers, body).await
}

/// `POST /fhir/Group/{id}/$export`, as [`kick_off_system_post`].
pub async fn kick_off_group_post(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((rtype, id)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let level = group_level(&rtype, &id)?;
    let caller = Caller::new(&p, &audit);
    kick_off_post(&state, caller, level, &uri, &headers, body).await
}

/// A POST kick-off: the query's parameters, then those of the body (none, or a JSON
/// `Parameters` resource whose entries become parameters as a query's would, and are audited
/// as such).
async fn kick_off_post(
    state: &AppState,
    caller: Caller<'_>,
    level: Level,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(mut pairs): Pairs = Query::try_from_uri(uri)
        .map_err(|_| Error::BadRequest("the query string could not be read".into()))?;
    let bytes = crate::read_body(state, headers, body).await?;
    if !bytes.is_empty() {
        crate::require_json_body(headers)?;
        let parameters: serde_json::Value = crate::parse_json(state, &bytes)?;
        let from_body = parameter_pairs(&parameters)?;
        for (name, value) in &from_body {
            caller.audit.add_query(name, value);
        }
        pairs.extend(from_body);
    }
    kick_off(state, caller, level, uri, &pairs, headers).await
}

fn patient_level(rtype: &str) -> Result<Level, ApiError> {
    if resource_type(rtype)? != ResourceType::PATIENT {
        return Err(ApiError::NoSuchEndpoint);
    }
    Ok(Level::Patient)
}

fn group_level(rtype: &str, id: &str) -> Result<Level, ApiError> {
    if rtype != "Group" {
        return Err(ApiError::NoSuchEndpoint);
    }
    Ok(Level::group(&resource_id(id)?))
}

async fn kick_off(
    state: &AppState,
    caller: Caller<'_>,
    level: Level,
    uri: &axum::http::Uri,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    negotiate_pairs(headers, &[])?;
    let respond_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim() == "respond-async"));
    if !respond_async {
        return Err(
            Error::BadRequest("$export requires the header Prefer: respond-async".into()).into(),
        );
    }
    let origin = crate::paging::origin(state);
    let request = match uri.path_and_query() {
        Some(pq) => format!("{origin}{pq}"),
        None => format!("{origin}{}", uri.path()),
    };
    let options = ExportOptions::parse(level, pairs, request)?;
    let job = state.inner.exports.start(caller, options).await?;
    let mut resp = StatusCode::ACCEPTED.into_response();
    resp.headers_mut().insert(
        header::CONTENT_LOCATION,
        header_value(&format!("{origin}/export/{job}"))?,
    );
    Ok(resp)
}

fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|_| Error::Internal("header value".into()).into())
}

/// `GET /export/{job}`: 202 with `X-Progress` and `Retry-After` while it runs, 200 with the
/// completion manifest when done, the failure's OperationOutcome when it failed; 404 for
/// another principal's job.
pub async fn status(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    audit.add_detail("export_job", job.clone());
    match state.inner.exports.status(&p, &job).await? {
        JobStatus::InProgress { progress } => {
            let mut resp = StatusCode::ACCEPTED.into_response();
            let h = resp.headers_mut();
            h.insert("x-progress", header_value(&progress)?);
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            Ok(resp)
        }
        JobStatus::Complete(done) => {
            let body = manifest(crate::paging::origin(&state), &job, &done);
            let mut resp = (StatusCode::OK, body.to_string()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
    }
}

/// The completion manifest (IG v2): output files with absolute URLs, no errors (a job with an
/// error fails as a whole).
fn manifest(origin: &str, job: &str, done: &Completed) -> serde_json::Value {
    let mut manifest = serde_json::json!({
        "transactionTime": fhir_instant(done.transaction_time_us),
        "request": done.request,
        "requiresAccessToken": true,
        "output": done.outputs.iter().map(|o| serde_json::json!({
            "type": o.rtype,
            "url": format!("{origin}/export/{job}/{}", o.file),
            "count": o.count,
            "extension": {"sha256": o.sha256},
        })).collect::<Vec<_>>(),
        "error": [],
        "extension": {
            "environmentTier": done.provenance.tier,
            "deidentified": done.provenance.deidentified,
            "publicKey": done.provenance.public_key,
            "signature": done.provenance.signature,
        },
    });
    // Only when shifted, so a Safe Harbor export's manifest reads as before.
    if done.provenance.dates_shifted {
        manifest["extension"]["dates"] = "shifted".into();
    }
    manifest
}

/// `DELETE /export/{job}`: cancel a running export, or delete a finished one's files (202).
pub async fn cancel(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    audit.add_detail("export_job", job.clone());
    state.inner.exports.cancel(&p, &job).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /export/{job}/{file}`: one output file, opened frame by frame as it is sent.
pub async fn download(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path((job, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    audit.add_detail("export_job", job.clone());
    let reader = state.inner.exports.open_output(&p, &job, &file).await?;
    let mut resp = Body::from_stream(chunks(reader)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    Ok(resp)
}

/// The file's plaintext, a frame at a time; a frame that fails to open ends the body with an
/// error (the client sees a cut-off download, never unauthenticated data).
fn chunks(
    reader: OutputReader,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(bytes::Bytes::from(chunk)), Some(reader))),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(event = "export_download_failed", error = %e);
                Some((
                    Err(std::io::Error::other("export file failed to open")),
                    None,
                ))
            }
        }
    })
}
