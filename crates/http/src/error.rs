//! The one place where failures become HTTP statuses and FHIR OperationOutcomes.
//!
//! The client sees a generic message; the detail of internal failures travels in the response's
//! extensions to the request-logging middleware, which logs it with the request id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carevault_fhir::outcome::{self, Severity};

use carevault_server::Error;
pub use carevault_server::ErrorDetail;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug)]
pub enum ApiError {
    Core(Error),
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    /// A PATCH whose media type is neither JSON Patch nor FHIR JSON (FHIRPath Patch).
    NotPatch,
    PayloadTooLarge,
    /// The request body arrived too slowly (`http.body_timeout_secs`).
    RequestTimeout,
    /// A route or resource type that does not exist.
    NoSuchEndpoint,
    /// The request names a host this server does not answer for (`public_base_url`).
    MisdirectedRequest,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Core(e)
    }
}

impl From<carevault_fhir::bundle::BundleError> for ApiError {
    fn from(e: carevault_fhir::bundle::BundleError) -> Self {
        ApiError::Core(Error::Internal(e.to_string()))
    }
}

impl From<carevault_store::StoreError> for ApiError {
    fn from(e: carevault_store::StoreError) -> Self {
        ApiError::Core(e.into())
    }
}

pub fn outcome_response(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    let body = outcome::single(Severity::Error, code, diagnostics);
    fhir_json(status, body.to_string().into_bytes())
}

pub fn fhir_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

/// The response for a failed Bundle entry: the entry's error, naming the entry.
pub fn entry_error_response(index: usize, e: Error) -> Response {
    let mut body = e.outcome();
    if let Some(issues) = body.get_mut("issue").and_then(|i| i.as_array_mut()) {
        for issue in issues {
            let said = issue["diagnostics"].as_str().unwrap_or("").to_owned();
            issue["diagnostics"] =
                serde_json::Value::String(format!("Bundle.entry[{index}]: {said}"));
            let mut expression = vec![serde_json::Value::String(format!("Bundle.entry[{index}]"))];
            if let Some(existing) = issue.get("expression").and_then(|x| x.as_array()) {
                expression.extend(existing.iter().cloned());
            }
            issue["expression"] = serde_json::Value::Array(expression);
        }
    }
    let d = e.describe();
    let mut resp = fhir_json(status_code(d.status), body.to_string().into_bytes());
    if let Some(detail) = d.detail {
        resp.extensions_mut().insert(detail);
    }
    resp
}

/// A core status as an HTTP status (every status `Error::describe` gives is a valid one).
pub fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "this interaction is not supported on this URL",
            ),
            ApiError::NotAcceptable => (
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                "only application/fhir+json and application/json responses are available",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "the request body must be application/fhir+json or application/json (UTF-8)",
            ),
            ApiError::NotPatch => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json) or a FHIRPath Patch Parameters resource (Content-Type: application/fhir+json)",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                "the request body exceeds the size limit",
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body arrived too slowly",
            ),
            ApiError::NoSuchEndpoint => (
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint or resource type",
            ),
            ApiError::MisdirectedRequest => (
                StatusCode::MISDIRECTED_REQUEST,
                "not-supported",
                "this server does not answer for the host name in the request; use the address \
                 it is configured with (public_base_url)",
            ),
            ApiError::Core(e) => return core_response(e),
        };
        outcome_response(status, code, message)
    }
}

fn core_response(e: Error) -> Response {
    let d = e.describe();
    let mut resp = fhir_json(status_code(d.status), e.outcome().to_string().into_bytes());
    match e {
        Error::Unauthorized | Error::CodeAlreadyUsed => {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"CareVault\""),
            );
        }
        Error::TooManyRequests { retry_after_secs } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        _ => {}
    }
    if let Some(detail) = d.detail {
        resp.extensions_mut().insert(detail);
    }
    resp
}
