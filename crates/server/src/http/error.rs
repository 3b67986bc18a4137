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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, detail): (StatusCode, &str, String, Option<ErrorDetail>) =
            match self {
                ApiError::MethodNotAllowed => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not-supported",
                    "this interaction is not supported on this URL".into(),
                    None,
                ),
                ApiError::NotAcceptable => (
                    StatusCode::NOT_ACCEPTABLE,
                    "not-supported",
                    "only application/fhir+json and application/json responses are available"
                        .into(),
                    None,
                ),
                ApiError::UnsupportedMediaType => (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    "the request body must be application/fhir+json or application/json (UTF-8)"
                        .into(),
                    None,
                ),
                ApiError::PayloadTooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-long",
                    "the request body exceeds the size limit".into(),
                    None,
                ),
                ApiError::NoSuchEndpoint => (
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "no such endpoint or resource type".into(),
                    None,
                ),
                ApiError::Core(e) => match e {
                    Error::BadRequest(msg) => (StatusCode::BAD_REQUEST, "invalid", msg, None),
                    Error::Unprocessable(issues) => {
                        let body = outcome::from_issues(&issues);
                        return fhir_json(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            body.to_string().into_bytes(),
                        );
                    }
                    Error::Unauthorized => {
                        let mut resp = outcome_response(
                            StatusCode::UNAUTHORIZED,
                            "login",
                            "authentication failed or required",
                        );
                        resp.headers_mut().insert(
                            header::WWW_AUTHENTICATE,
                            HeaderValue::from_static("Bearer realm=\"CareVault\""),
                        );
                        return resp;
                    }
                    Error::Forbidden => (
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "you are not allowed to do this".into(),
                        None,
                    ),
                    Error::NotFound => {
                        (StatusCode::NOT_FOUND, "not-found", "not found".into(), None)
                    }
                    Error::Gone => (
                        StatusCode::GONE,
                        "deleted",
                        "the resource has been deleted".into(),
                        None,
                    ),
                    Error::Conflict(msg) => (StatusCode::CONFLICT, "conflict", msg, None),
                    Error::PreconditionFailed(msg) => {
                        (StatusCode::PRECONDITION_FAILED, "conflict", msg, None)
                    }
                    Error::TooManyRequests { retry_after_secs } => {
                        let mut resp = outcome_response(
                            StatusCode::TOO_MANY_REQUESTS,
                            "throttled",
                            "too many requests; retry later",
                        );
                        if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                            resp.headers_mut().insert(header::RETRY_AFTER, v);
                        }
                        return resp;
                    }
                    Error::Unavailable(detail) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the service is temporarily unavailable; nothing was changed".into(),
                        Some(ErrorDetail {
                            kind: "unavailable",
                            detail,
                        }),
                    ),
                    Error::Integrity(detail) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "exception",
                        "stored data failed an integrity check".into(),
                        Some(ErrorDetail {
                            kind: "integrity_failure",
                            detail,
                        }),
                    ),
                    Error::Internal(detail) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "exception",
                        "internal error".into(),
                        Some(ErrorDetail {
                            kind: "internal_error",
                            detail,
                        }),
                    ),
                },
            };
        let mut resp = outcome_response(status, code, &message);
        if let Some(detail) = detail {
            resp.extensions_mut().insert(detail);
        }
        resp
    }
}
