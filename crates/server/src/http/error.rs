//! The one place where failures become HTTP statuses and FHIR OperationOutcomes.
//!
//! The client sees a generic message; the detail of internal failures travels in the response's
//! extensions to the request-logging middleware, which logs it with the request id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carevault_fhir::outcome::{self, Severity};

use crate::error::Error;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Detail for the log, attached to an error response. Never sent to the client.
#[derive(Clone, Debug)]
pub struct ErrorDetail {
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug)]
pub enum ApiError {
    Core(Error),
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// A route or resource type that does not exist.
    NoSuchEndpoint,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Core(e)
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

/// How a core error is told to a client: status, OperationOutcome issue code, a message that
/// never echoes input, and (for internal failures) the detail for the log.
struct Described {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: Option<ErrorDetail>,
}

fn describe(e: &Error) -> Described {
    let plain = |status, code, message: &str| Described {
        status,
        code,
        message: message.to_owned(),
        detail: None,
    };
    match e {
        Error::BadRequest(msg) => plain(StatusCode::BAD_REQUEST, "invalid", msg),
        Error::Unprocessable(_) => plain(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the resource failed validation",
        ),
        Error::Unauthorized => plain(
            StatusCode::UNAUTHORIZED,
            "login",
            "authentication failed or required",
        ),
        Error::Forbidden => plain(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you are not allowed to do this",
        ),
        Error::NotFound => plain(StatusCode::NOT_FOUND, "not-found", "not found"),
        Error::Gone => plain(StatusCode::GONE, "deleted", "the resource has been deleted"),
        Error::Conflict(msg) => plain(StatusCode::CONFLICT, "conflict", msg),
        Error::PreconditionFailed(msg) => plain(StatusCode::PRECONDITION_FAILED, "conflict", msg),
        Error::TooLarge(msg) => plain(StatusCode::PAYLOAD_TOO_LARGE, "too-long", msg),
        Error::TooManyRequests { .. } => plain(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "too many requests; retry later",
        ),
        Error::Unavailable(detail) => Described {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "transient",
            message: "the service is temporarily unavailable; nothing was changed".into(),
            detail: Some(ErrorDetail {
                kind: "unavailable",
                detail: detail.clone(),
            }),
        },
        Error::Integrity(detail) => Described {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "exception",
            message: "stored data failed an integrity check".into(),
            detail: Some(ErrorDetail {
                kind: "integrity_failure",
                detail: detail.clone(),
            }),
        },
        Error::Internal(detail) => Described {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "exception",
            message: "internal error".into(),
            detail: Some(ErrorDetail {
                kind: "internal_error",
                detail: detail.clone(),
            }),
        },
    }
}

/// The OperationOutcome for a core error (as a Bundle entry's `response.outcome`).
pub fn outcome_for(e: &Error) -> serde_json::Value {
    match e {
        Error::Unprocessable(issues) => outcome::from_issues(issues),
        other => {
            let d = describe(other);
            outcome::single(Severity::Error, d.code, &d.message)
        }
    }
}

/// The response for a failed Bundle entry: the entry's error, naming the entry.
pub fn entry_error_response(index: usize, e: Error) -> Response {
    let mut body = outcome_for(&e);
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
    let d = describe(&e);
    let mut resp = fhir_json(d.status, body.to_string().into_bytes());
    if let Some(detail) = d.detail {
        resp.extensions_mut().insert(detail);
    }
    resp
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
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                "the request body exceeds the size limit",
            ),
            ApiError::NoSuchEndpoint => (
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint or resource type",
            ),
            ApiError::Core(e) => return core_response(e),
        };
        outcome_response(status, code, message)
    }
}

fn core_response(e: Error) -> Response {
    let d = describe(&e);
    let mut resp = fhir_json(d.status, outcome_for(&e).to_string().into_bytes());
    match e {
        Error::Unauthorized => {
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
