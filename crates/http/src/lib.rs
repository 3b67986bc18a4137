//! CareVault's HTTPS API: the only crate that knows HTTP. It owns the TLS listener, the route
//! table, the middleware (request id, authentication, the audit scope, metrics), the handlers and
//! the one map from core errors to statuses and OperationOutcomes. Handlers extract, call the
//! core (`carevault-server`), and map the result; rules live in the core's `identity` and
//! `records`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), carevault_server::Error> {
//! use std::sync::Arc;
//! use carevault_http::Application;
//! use carevault_server::{Config, SystemClock, environment};
//!
//! let config = Config::for_data_dir(std::path::Path::new("./carevault-data"));
//! let clock = Arc::new(SystemClock);
//! if !environment::is_initialized(&config) {
//!     let report = environment::init(&config, clock.clone()).await?;
//!     println!("enrollment token for admin: {}", report.admin.enrollment_token);
//! }
//! let app = Application::build(config, clock).await?;
//! println!("listening on {}", app.url());
//! app.run_until_stopped(async { let _ = tokio::signal::ctrl_c().await; }).await.ok();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod admin;
mod alerts_api;
mod app;
mod audit_api;
mod auth;
mod body;
mod bundle;
mod conditional;
mod cors;
pub mod error;
mod export;
mod fhir;
pub mod health;
mod keys;
pub mod paging;
mod pretty;
pub mod public_base;
mod serve;
mod stapling;
mod system_search;
pub use fhir::capability_statement;
pub mod tls;

pub use app::Application;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use carevault_audit::EventRecord;
use serde::de::DeserializeOwned;

use carevault_server::audit::{Audit, AuditAction, AuditScope};
use carevault_server::authz::SystemAction;
use carevault_server::clock::SharedClock;
use carevault_server::config::Config;
use carevault_server::identity::Identity;
use carevault_server::records::Records;
use error::{ApiError, ErrorDetail};
use tls::ClientAddr;

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Services>,
}

pub struct Services {
    pub config: Config,
    /// Where clients reach this server: every absolute URL starts with it.
    pub public_base: public_base::PublicBase,
    /// `/readyz`'s own state (shutdown, probe limits).
    pub readiness: health::Readiness,
    pub identity: Identity,
    pub records: Arc<Records>,
    /// Bulk `$export` jobs.
    pub exports: Arc<carevault_server::export::Exports>,
    pub authz: Arc<carevault_server::authz::Authz>,
    pub metrics: carevault_server::metrics::Metrics,
    /// Attack detection on every request, and the alerts it raises.
    pub detection: Arc<carevault_server::detection::Detection>,
    pub audit: Arc<Audit>,
    pub store: Arc<dyn carevault_store::Store>,
    pub keyring: Arc<carevault_server::keyring::Keyring>,
    pub clock: SharedClock,
    /// The CapabilityStatement, rendered once.
    pub capability: Vec<u8>,
    /// The server's periodic posture runs (their metrics).
    pub posture: Arc<carevault_server::posture::periodic::PostureRuns>,
}

impl Services {
    pub(crate) fn audit_store(&self) -> &dyn carevault_store::Store {
        &*self.store
    }
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self {
            inner: Arc::new(services),
        }
    }
}

/// One route of the API. The router is built from [`ROUTE_TABLE`] (so it cannot drift from it),
/// and tests walk it.
pub struct Route {
    pub path: &'static str,
    pub method: Method,
    /// What the audit event of a request to this route records.
    pub action: AuditAction,
    /// The administrative permission Cedar must grant before the handler runs. `None` where
    /// there is no principal yet (enrollment, login), for a user's own session and keys, and
    /// for FHIR interactions, which the records service authorizes resource by resource.
    pub requires: Option<SystemAction>,
    handler: fn() -> MethodRouter<AppState>,
}

const fn route(
    path: &'static str,
    method: Method,
    action: AuditAction,
    requires: Option<SystemAction>,
    handler: fn() -> MethodRouter<AppState>,
) -> Route {
    Route {
        path,
        method,
        action,
        requires,
        handler,
    }
}

/// Every route of the API.
pub const ROUTE_TABLE: &[Route] = &[
    route(
        "/auth/enroll/start",
        Method::POST,
        AuditAction::EnrollStart,
        None,
        || post(auth::enroll_start),
    ),
    route(
        "/auth/enroll/finish",
        Method::POST,
        AuditAction::EnrollFinish,
        None,
        || post(auth::enroll_finish),
    ),
    route(
        "/auth/login",
        Method::POST,
        AuditAction::Login,
        None,
        || post(auth::login),
    ),
    route(
        "/auth/logout",
        Method::POST,
        AuditAction::Logout,
        None,
        || post(auth::logout),
    ),
    route(
        "/auth/whoami",
        Method::GET,
        AuditAction::Whoami,
        None,
        || get(auth::whoami),
    ),
    route(
        "/admin/users",
        Method::GET,
        AuditAction::UserList,
        Some(SystemAction::ManageUsers),
        || get(auth::list_users),
    ),
    route(
        "/admin/users",
        Method::POST,
        AuditAction::UserCreate,
        Some(SystemAction::ManageUsers),
        || post(auth::create_user),
    ),
    route(
        "/admin/users/{name}/disable",
        Method::POST,
        AuditAction::UserDisable,
        Some(SystemAction::ManageUsers),
        || post(auth::disable_user),
    ),
    route(
        "/admin/users/{name}/enable",
        Method::POST,
        AuditAction::UserEnable,
        Some(SystemAction::ManageUsers),
        || post(auth::enable_user),
    ),
    route(
        "/admin/users/{name}/unlock",
        Method::POST,
        AuditAction::UserUnlock,
        Some(SystemAction::ManageUsers),
        || post(auth::unlock_user),
    ),
    route(
        "/admin/users/{name}/reset",
        Method::POST,
        AuditAction::UserReset,
        Some(SystemAction::ManageUsers),
        || post(auth::reset_user),
    ),
    route(
        "/admin/policies",
        Method::GET,
        AuditAction::PolicyList,
        Some(SystemAction::ManagePolicies),
        || get(admin::list_policies),
    ),
    route(
        "/admin/policies",
        Method::POST,
        AuditAction::PolicyPut,
        Some(SystemAction::ManagePolicies),
        || post(admin::put_policy),
    ),
    route(
        "/admin/policies/{name}",
        Method::GET,
        AuditAction::PolicyRead,
        Some(SystemAction::ManagePolicies),
        || get(admin::get_policy),
    ),
    route(
        "/admin/policies/{name}",
        Method::DELETE,
        AuditAction::PolicyDelete,
        Some(SystemAction::ManagePolicies),
        || delete(admin::delete_policy),
    ),
    route(
        "/admin/api-keys",
        Method::GET,
        AuditAction::ServiceKeyList,
        Some(SystemAction::ManageKeys),
        || get(admin::list_keys),
    ),
    route(
        "/admin/api-keys",
        Method::POST,
        AuditAction::ServiceKeyCreate,
        Some(SystemAction::ManageKeys),
        || post(admin::create_service_key),
    ),
    route(
        "/admin/api-keys/{name}",
        Method::DELETE,
        AuditAction::ServiceKeyRevoke,
        Some(SystemAction::ManageKeys),
        || delete(admin::revoke_key),
    ),
    route(
        "/auth/api-keys",
        Method::GET,
        AuditAction::OwnKeyList,
        None,
        || get(admin::list_own_keys),
    ),
    route(
        "/auth/api-keys",
        Method::POST,
        AuditAction::OwnKeyCreate,
        None,
        || post(admin::create_own_key),
    ),
    route(
        "/auth/api-keys/{name}",
        Method::DELETE,
        AuditAction::OwnKeyRevoke,
        None,
        || delete(admin::revoke_own_key),
    ),
    route(
        "/auth/break-glass",
        Method::POST,
        AuditAction::BreakGlass,
        Some(SystemAction::BreakGlass),
        || post(admin::break_glass),
    ),
    route(
        "/admin/keys",
        Method::GET,
        AuditAction::KekStatus,
        Some(SystemAction::ManageKeys),
        || get(keys::status),
    ),
    route(
        "/admin/keys/rotate",
        Method::POST,
        AuditAction::KekRotate,
        Some(SystemAction::ManageKeys),
        || post(keys::rotate),
    ),
    route(
        "/admin/keys/rotate-data",
        Method::POST,
        AuditAction::DataKeyRotate,
        Some(SystemAction::ManageKeys),
        || post(keys::rotate_data),
    ),
    route(
        "/admin/keys/min-version",
        Method::POST,
        AuditAction::KekMinVersion,
        Some(SystemAction::ManageKeys),
        || post(keys::min_version),
    ),
    route(
        "/admin/keys/{version}",
        Method::DELETE,
        AuditAction::KekDestroy,
        Some(SystemAction::ManageKeys),
        || delete(keys::destroy),
    ),
    route(
        "/admin/patients/{id}/shred-approval",
        Method::POST,
        AuditAction::ShredApprove,
        Some(SystemAction::ManageKeys),
        || post(keys::approve_shred),
    ),
    route(
        "/admin/patients/{id}/shred",
        Method::POST,
        AuditAction::Shred,
        Some(SystemAction::ManageKeys),
        || post(keys::shred),
    ),
    route(
        "/metrics",
        Method::GET,
        AuditAction::MetricsRead,
        Some(SystemAction::MetricsRead),
        || get(admin::metrics),
    ),
    route(
        "/audit/events",
        Method::GET,
        AuditAction::AuditRead,
        Some(SystemAction::AuditRead),
        || get(audit_api::events),
    ),
    route(
        "/alerts",
        Method::GET,
        AuditAction::AlertList,
        Some(SystemAction::AuditRead),
        || get(alerts_api::list),
    ),
    route(
        "/alerts/{id}",
        Method::GET,
        AuditAction::AlertRead,
        Some(SystemAction::AuditRead),
        || get(alerts_api::show),
    ),
    route(
        "/alerts/{id}/ack",
        Method::POST,
        AuditAction::AlertAck,
        Some(SystemAction::AuditRead),
        || post(alerts_api::ack),
    ),
    route(
        "/fhir/metadata",
        Method::GET,
        AuditAction::Capabilities,
        None,
        || get(fhir::metadata),
    ),
    route(
        "/fhir",
        Method::GET,
        AuditAction::SearchSystem,
        None,
        || get(system_search::search_system),
    ),
    route("/fhir", Method::POST, AuditAction::Bundle, None, || {
        post(fhir::bundle)
    }),
    route(
        "/fhir/{rtype}",
        Method::GET,
        AuditAction::SearchType,
        None,
        || get(fhir::search_type),
    ),
    route(
        "/fhir/{rtype}",
        Method::POST,
        AuditAction::Create,
        None,
        || post(fhir::create),
    ),
    route(
        "/fhir/{rtype}",
        Method::PUT,
        AuditAction::ConditionalUpdate,
        None,
        || put(conditional::update_conditional),
    ),
    route(
        "/fhir/{rtype}",
        Method::DELETE,
        AuditAction::ConditionalDelete,
        None,
        || delete(conditional::delete_conditional),
    ),
    route(
        "/fhir/{rtype}/$validate",
        Method::POST,
        AuditAction::Validate,
        None,
        || post(conditional::validate),
    ),
    route(
        "/fhir/{rtype}/_search",
        Method::POST,
        AuditAction::SearchTypePost,
        None,
        || post(fhir::search_post),
    ),
    route(
        "/fhir/_history",
        Method::GET,
        AuditAction::HistorySystem,
        None,
        || get(fhir::history_system),
    ),
    route(
        "/fhir/{rtype}/_history",
        Method::GET,
        AuditAction::HistoryType,
        None,
        || get(fhir::history_type),
    ),
    route(
        "/fhir/{rtype}/{id}",
        Method::GET,
        AuditAction::Read,
        None,
        || get(fhir::read),
    ),
    route(
        "/fhir/{rtype}/{id}",
        Method::PUT,
        AuditAction::Update,
        None,
        || put(fhir::update),
    ),
    route(
        "/fhir/{rtype}/{id}",
        Method::PATCH,
        AuditAction::Patch,
        None,
        || patch(conditional::patch),
    ),
    route(
        "/fhir/{rtype}/{id}",
        Method::DELETE,
        AuditAction::Delete,
        None,
        || delete(fhir::delete),
    ),
    route(
        "/fhir/{rtype}/{id}/_history",
        Method::GET,
        AuditAction::HistoryInstance,
        None,
        || get(fhir::history_instance),
    ),
    route(
        "/fhir/{rtype}/{id}/_history/{vid}",
        Method::GET,
        AuditAction::Vread,
        None,
        || get(fhir::vread),
    ),
    route(
        "/fhir/{rtype}/{id}/$everything",
        Method::GET,
        AuditAction::Everything,
        None,
        || get(fhir::everything),
    ),
    route(
        "/fhir/$export",
        Method::GET,
        AuditAction::ExportStart,
        None,
        || get(export::kick_off_system),
    ),
    route(
        "/fhir/{rtype}/$export",
        Method::GET,
        AuditAction::ExportStartPatient,
        None,
        || get(export::kick_off_type),
    ),
    route(
        "/fhir/{rtype}/{id}/$export",
        Method::GET,
        AuditAction::ExportStartGroup,
        None,
        || get(export::kick_off_group),
    ),
    route(
        "/fhir/$export",
        Method::POST,
        AuditAction::ExportStartPost,
        None,
        || post(export::kick_off_system_post),
    ),
    route(
        "/fhir/{rtype}/$export",
        Method::POST,
        AuditAction::ExportStartPatientPost,
        None,
        || post(export::kick_off_type_post),
    ),
    route(
        "/fhir/{rtype}/{id}/$export",
        Method::POST,
        AuditAction::ExportStartGroupPost,
        None,
        || post(export::kick_off_group_post),
    ),
    route(
        "/export/{job}",
        Method::GET,
        AuditAction::ExportStatus,
        None,
        || get(export::status),
    ),
    route(
        "/export/{job}",
        Method::DELETE,
        AuditAction::ExportCancel,
        None,
        || delete(export::cancel),
    ),
    route(
        "/export/{job}/{file}",
        Method::GET,
        AuditAction::ExportDownload,
        None,
        || get(export::download),
    ),
    route(
        "/fhir/{rtype}/{id}/{ctype}",
        Method::GET,
        AuditAction::SearchCompartment,
        None,
        || get(fhir::search_compartment),
    ),
];

/// `POST /fhir/` and `GET /fhir/Patient/` are how some FHIR clients write `[base]` and
/// `[base]/[type]` (fhir-kit-client posts Bundles to `[base]/`): the router sees the path
/// without its trailing slashes. Runs before routing, on every request of a connection.
pub(crate) fn trim_trailing_slash<B>(req: &mut axum::http::Request<B>) {
    let path = req.uri().path();
    if path.len() < 2 || !path.ends_with('/') {
        return;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = axum::http::uri::PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The audit action of a request, from its method and route template.
pub fn action_for(method: &Method, route: Option<&str>) -> AuditAction {
    let Some(route) = route else {
        return AuditAction::UnknownEndpoint;
    };
    ROUTE_TABLE
        .iter()
        .find(|r| r.path == route && r.method == method)
        .map_or(AuditAction::UnsupportedMethod, |r| r.action)
}

pub fn router(state: AppState) -> Router {
    let mut by_path: BTreeMap<&str, MethodRouter<AppState>> = BTreeMap::new();
    for route in ROUTE_TABLE {
        let mut handler = (route.handler)();
        if let Some(action) = route.requires {
            handler = handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), action),
                auth::authorize_route,
            ));
        }
        let merged = match by_path.remove(route.path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(route.path, merged);
    }
    let mut app = Router::new();
    for (path, route) in by_path {
        let route = if path.starts_with("/auth/") {
            route.route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::ip_rate_limit,
            ))
        } else {
            route
        };
        app = app.route(path, route);
    }
    app.fallback(|| async { ApiError::NoSuchEndpoint })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(pretty::pretty))
        .with_state(state.clone())
        // Probes are outside `observe`: counted, not audited.
        .merge(health::routes(state))
}

tokio::task_local! {
    /// A probe found in a JSON body the handler parsed, for `observe` to raise once the
    /// principal is known.
    static BODY_FINDING: std::cell::RefCell<Option<carevault_server::detection::Finding>>;
}

/// Inspect a request body for injection probes (before anything of it is digested or stored).
pub(crate) fn inspect_body(state: &AppState, bytes: &[u8]) {
    if let Some(finding) = state.inner.detection.inspect_body(bytes) {
        let _ = BODY_FINDING.try_with(|slot| {
            slot.borrow_mut().get_or_insert(finding);
        });
    }
}

/// Request id, audit event, security headers, OperationOutcome for every error, one PHI-free
/// log line.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    // The route template (`/fhir/{rtype}/{id}`), never the raw path or query: those may carry
    // identifiers and search values.
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let route = matched.clone().unwrap_or_else(|| "unmatched".to_owned());
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map_or_else(
            || "unknown".to_owned(),
            |ConnectInfo(ClientAddr(a))| a.ip().to_string(),
        );
    let blocked_for = state.inner.detection.blocked_for(&client_ip);
    let cors = cors::Cors::of(
        &method,
        req.headers(),
        &state.inner.config.cors_allowed_origins,
    );
    let action = if cors.is_preflight() {
        AuditAction::CorsPreflight
    } else {
        action_for(&method, matched.as_deref())
    };
    // Detection sees the raw path and query before their values are digested.
    let finding = state
        .inner
        .detection
        .inspect_request(req.uri().path(), req.uri().query());
    let audit = state.inner.audit.clone();
    // Query values may be search terms about a patient: only their keyed digests are kept.
    let query = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|Query(pairs)| {
            pairs
                .into_iter()
                .map(|(k, v)| (audit.digest(&k), audit.digest(&v)))
                .collect()
        })
        .unwrap_or_default();
    let scope = AuditScope::new(
        audit,
        EventRecord {
            request_id: request_id.clone(),
            principal: "anonymous".into(),
            auth_method: "none".into(),
            client_ip,
            action: action.as_str().to_owned(),
            method: method.to_string(),
            route: route.clone(),
            query,
            ..EventRecord::default()
        },
    );
    req.extensions_mut().insert(scope.clone());
    let (mut resp, body_finding) = if !state.inner.public_base.admits_request(&req) {
        (ApiError::MisdirectedRequest.into_response(), None)
    } else if let Some(retry_after_secs) = blocked_for {
        // An automatic response (detection.block_stuffing_minutes): refused before any handler.
        (
            ApiError::from(carevault_server::Error::TooManyRequests { retry_after_secs })
                .into_response(),
            None,
        )
    } else if cors.is_preflight() {
        (cors.preflight_response(), None)
    } else {
        BODY_FINDING
            .scope(std::cell::RefCell::new(None), async {
                let resp = next.run(req).await;
                (resp, BODY_FINDING.with(|slot| slot.borrow_mut().take()))
            })
            .await
    };

    let mut status = resp.status();
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
    // Fail closed: no response leaves before its audit event is durable.
    if let Err(e) = scope.finish(status.as_u16()).await {
        resp = ApiError::from(e).into_response();
        status = resp.status();
    }
    detect(
        &state,
        &scope,
        &resp,
        action,
        status,
        finding.or(body_finding),
    );
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    security_headers(&state, headers);
    cors.decorate(headers);

    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    state
        .inner
        .metrics
        .record(&route, method.as_str(), status.as_u16(), latency_us);
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

/// Hand the answered request to detection (the principal and patients from its audit event).
fn detect(
    state: &AppState,
    scope: &AuditScope,
    resp: &Response,
    action: AuditAction,
    status: StatusCode,
    finding: Option<carevault_server::detection::Finding>,
) {
    let detection = &state.inner.detection;
    if !detection.enabled() {
        return;
    }
    let integrity_failure = resp
        .extensions()
        .get::<ErrorDetail>()
        .is_some_and(|d| d.kind == "integrity_failure");
    scope.read(|r| {
        let detail = |key: &str| {
            r.detail
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        detection.observe(
            &carevault_server::detection::RequestFacts {
                principal: &r.principal,
                client_ip: &r.client_ip,
                action,
                status: status.as_u16(),
                patients: &r.patients,
                account_digest: detail("username_digest"),
                target_principal: detail("target_principal"),
                second_factor_failed: detail("second_factor") == Some("invalid"),
                key_outside_cidrs: detail("refused") == Some("outside-cidrs"),
                key_without_its_certificate: detail("refused") == Some("client-certificate"),
                integrity_failure,
            },
            finding,
        );
    });
}

/// The headers every response carries: no sniffing, no framing, no caching, HSTS over TLS.
pub(crate) fn security_headers(state: &AppState, headers: &mut HeaderMap) {
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
        if crate::body::is_body_timeout(&e) {
            state
                .inner
                .metrics
                .connections
                .timed_out(carevault_server::metrics::Timeout::Body);
            return ApiError::RequestTimeout;
        }
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::PayloadTooLarge
        } else {
            ApiError::Core(carevault_server::Error::BadRequest(
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
    use carevault_server::Error;
    inspect_body(state, bytes);
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
        Err(e) => ApiError::Core(carevault_server::Error::Internal(format!("serialize: {e}")))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trailing_slashes_are_trimmed_before_routing_and_the_query_is_kept() {
        for (sent, seen) in [
            ("/fhir/", "/fhir"),
            ("/fhir/?", "/fhir?"),
            ("/fhir/Patient//?name=a%2Fb", "/fhir/Patient?name=a%2Fb"),
            ("https://h.example/fhir/Patient/1/", "/fhir/Patient/1"),
            ("/fhir/Patient/1", "/fhir/Patient/1"),
            ("/", "/"),
            ("//", "/"),
        ] {
            let mut req = axum::http::Request::builder().uri(sent).body(()).unwrap();
            trim_trailing_slash(&mut req);
            let uri = req.uri();
            let got = match uri.query() {
                Some(q) => format!("{}?{q}", uri.path()),
                None => uri.path().to_owned(),
            };
            assert_eq!(got, seen, "{sent}");
        }
    }

    use super::*;

    #[test]
    fn every_route_in_the_table_is_listed_once_with_its_own_action() {
        let mut seen = std::collections::HashSet::new();
        let mut actions = std::collections::HashSet::new();
        for route in ROUTE_TABLE {
            assert!(
                seen.insert((route.path, route.method.clone())),
                "{} {} is listed twice",
                route.method,
                route.path
            );
            assert!(
                actions.insert(route.action),
                "{:?} names two routes",
                route.action
            );
            assert_eq!(action_for(&route.method, Some(route.path)), route.action);
        }
        assert_eq!(
            action_for(&Method::PATCH, Some("/fhir/{rtype}")),
            AuditAction::UnsupportedMethod
        );
        assert_eq!(action_for(&Method::GET, None), AuditAction::UnknownEndpoint);
    }

    #[test]
    fn every_administrative_route_requires_a_permission_before_its_handler() {
        for route in ROUTE_TABLE {
            let administrative = route.path.starts_with("/admin/")
                || route.path.starts_with("/alerts")
                || route.path == "/metrics"
                || route.path.starts_with("/audit/");
            assert_eq!(
                route.requires.is_some(),
                administrative || route.action == AuditAction::BreakGlass,
                "{} {}",
                route.method,
                route.path
            );
        }
    }
}
