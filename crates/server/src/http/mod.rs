//! The HTTPS API: the only module that knows HTTP. Handlers extract, call the core, and map the
//! result; rules live in `identity` and `records`.

mod auth;
pub mod error;
mod fhir;
pub use fhir::capability_statement;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::identity::Identity;
use crate::records::Records;
use error::{ApiError, ErrorDetail};

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Services>,
}

pub struct Services {
    pub config: Config,
    pub identity: Identity,
    pub records: Records,
    pub clock: SharedClock,
    /// The CapabilityStatement, rendered once.
    pub capability: Vec<u8>,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self {
            inner: Arc::new(services),
        }
    }
}

/// Every route of the API. Tests walk this table.
pub const ROUTES: &[(&str, &[Method])] = &[
    ("/auth/enroll/start", &[Method::POST]),
    ("/auth/enroll/finish", &[Method::POST]),
    ("/auth/login", &[Method::POST]),
    ("/auth/logout", &[Method::POST]),
    ("/auth/whoami", &[Method::GET]),
    ("/admin/users", &[Method::GET, Method::POST]),
    ("/admin/users/{name}/disable", &[Method::POST]),
    ("/admin/users/{name}/enable", &[Method::POST]),
    ("/admin/users/{name}/unlock", &[Method::POST]),
    ("/admin/users/{name}/reset", &[Method::POST]),
    ("/fhir/metadata", &[Method::GET]),
    ("/fhir/{rtype}", &[Method::GET, Method::POST]),
    ("/fhir/{rtype}/_history", &[Method::GET]),
    (
        "/fhir/{rtype}/{id}",
        &[Method::GET, Method::PUT, Method::DELETE],
    ),
    ("/fhir/{rtype}/{id}/_history", &[Method::GET]),
    ("/fhir/{rtype}/{id}/_history/{vid}", &[Method::GET]),
];

pub fn router(state: AppState) -> Router {
    let auth_routes = Router::new()
        .route("/auth/enroll/start", post(auth::enroll_start))
        .route("/auth/enroll/finish", post(auth::enroll_finish))
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/whoami", get(auth::whoami))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::ip_rate_limit,
        ));
    Router::new()
        .merge(auth_routes)
        .route(
            "/admin/users",
            get(auth::list_users).post(auth::create_user),
        )
        .route("/admin/users/{name}/disable", post(auth::disable_user))
        .route("/admin/users/{name}/enable", post(auth::enable_user))
        .route("/admin/users/{name}/unlock", post(auth::unlock_user))
        .route("/admin/users/{name}/reset", post(auth::reset_user))
        .route("/fhir/metadata", get(fhir::metadata))
        .route("/fhir/{rtype}", get(fhir::search_type).post(fhir::create))
        .route("/fhir/{rtype}/_history", get(fhir::history_type))
        .route(
            "/fhir/{rtype}/{id}",
            get(fhir::read).put(fhir::update).delete(fhir::delete),
        )
        .route("/fhir/{rtype}/{id}/_history", get(fhir::history_instance))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(fhir::vread))
        .fallback(|| async { ApiError::NoSuchEndpoint })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request id, security headers, OperationOutcome for every error, one PHI-free log line.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    // The route template (`/fhir/{rtype}/{id}`), never the raw path or query: those may carry
    // identifiers and search values.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let mut resp = next.run(req).await;

    let status = resp.status();
    let is_error = status.is_client_error() || status.is_server_error();
    let is_fhir_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+json"));
    if is_error && !is_fhir_json {
        // An extractor's own rejection (bad path encoding, bad query): replace its plain-text
        // body, which may echo input, with an OperationOutcome.
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too-long"
        } else {
            "invalid"
        };
        let detail = resp.extensions().get::<ErrorDetail>().cloned();
        resp = error::outcome_response(status, code, "the request is malformed");
        if let Some(d) = detail {
            resp.extensions_mut().insert(d);
        }
    }
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !state.inner.config.plain_http {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }

    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Some(d) = resp.extensions().get::<ErrorDetail>() {
        tracing::error!(
            event = d.kind,
            request_id = %request_id,
            method = %method,
            route = %route,
            status = status.as_u16(),
            detail = %d.detail,
            "request failed"
        );
    }
    tracing::info!(
        event = "request",
        request_id = %request_id,
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_us,
    );
    resp
}

/// Read a request body up to the configured limit: 413 beyond it.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, ApiError> {
    let limit = state.inner.config.body_limit_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::PayloadTooLarge);
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::PayloadTooLarge
        } else {
            ApiError::Core(crate::error::Error::BadRequest(
                "the request body could not be read".into(),
            ))
        }
    })
}

/// The request's media type is JSON (`application/json` or `application/fhir+json`), UTF-8.
pub(crate) fn require_json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::UnsupportedMediaType);
    };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    if !matches!(
        media.as_str(),
        "application/json" | "application/fhir+json" | "application/json+fhir"
    ) {
        return Err(ApiError::UnsupportedMediaType);
    }
    for param in parts {
        if let Some((k, v)) = param.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
            && !v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    Ok(())
}

/// Parse a JSON body into `T` after the size, depth and media-type checks.
pub(crate) async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    require_json_body(headers)?;
    let bytes = read_body(state, headers, body).await?;
    parse_json(state, &bytes)
}

pub(crate) fn parse_json<T: DeserializeOwned>(
    state: &AppState,
    bytes: &[u8],
) -> Result<T, ApiError> {
    use crate::error::Error;
    carevault_fhir::check_depth(bytes, state.inner.config.max_json_depth)
        .map_err(|_| Error::BadRequest("the JSON is nested too deeply".into()))?;
    if std::str::from_utf8(bytes).is_err() {
        return Err(Error::BadRequest("the request body is not valid UTF-8".into()).into());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // serde's message may quote input; keep only the category and position.
        let what = match e.classify() {
            serde_json::error::Category::Data => "the JSON does not have the expected shape",
            _ => "the request body is not valid JSON",
        };
        Error::BadRequest(format!("{what} (line {}, column {})", e.line(), e.column())).into()
    })
}

/// A JSON response with a status (for the non-FHIR endpoints: `/auth`, `/admin`).
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            ApiError::Core(crate::error::Error::Internal(format!("serialize: {e}"))).into_response()
        }
    }
}
