//! `/auth/*` (enrollment, login, sessions) and `/admin/users*` handlers, and the extractor that
//! turns a bearer token into a [`Principal`].

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::error::ApiError;
use super::tls::{ClientAddr, ClientCertificate};
use super::{AppState, json_body, json_response};
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::authz::SystemAction;
use carevault_server::identity::Principal;

/// An authenticated request. Rejects with 401 (and `WWW-Authenticate`) otherwise.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A route that requires a permission authenticated the caller before its handler.
        if let Some(AuthorizedPrincipal(principal)) = parts.extensions.get() {
            return Ok(Authenticated(principal.clone()));
        }
        let token = bearer_token(&parts.headers).ok_or(Error::Unauthorized)?;
        let client_ip = parts
            .extensions
            .get::<ConnectInfo<ClientAddr>>()
            .map(|ConnectInfo(ClientAddr(addr))| addr.ip());
        let client_cert = parts
            .extensions
            .get::<ClientCertificate>()
            .and_then(|ClientCertificate(fp)| fp.as_deref());
        let principal = state
            .inner
            .identity
            .authenticate(
                token,
                client_ip,
                client_cert,
                parts.extensions.get::<AuditScope>(),
            )
            .await?;
        if state.inner.config.database.is_shared() {
            state.inner.authz.refresh().await?;
        }
        if let Some(scope) = parts.extensions.get::<AuditScope>() {
            scope.set_principal(
                &principal.id,
                &principal.role_names(),
                principal.auth_method(),
            );
        }
        Ok(Authenticated(principal))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Cedar decides an administrative action; the deciding policies go into the audit event.
fn require(
    state: &AppState,
    audit: &AuditScope,
    principal: &Principal,
    action: SystemAction,
) -> Result<(), ApiError> {
    let decision = state.inner.authz.system(principal, action);
    audit.set_policies(&decision.policies);
    if decision.allowed {
        Ok(())
    } else {
        Err(Error::Forbidden.into())
    }
}

/// The principal that [`authorize_route`] authenticated and authorized (server-side only: a
/// request extension, never anything a client sends).
#[derive(Clone)]
struct AuthorizedPrincipal(Principal);

/// Before the handler of a route that requires a permission ([`crate::Route::requires`]):
/// authenticate the caller and have Cedar decide, so no handler can forget to.
pub async fn authorize_route(
    State((state, action)): State<(AppState, SystemAction)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let principal = match Authenticated::from_request_parts(&mut parts, &state).await {
        Ok(Authenticated(p)) => p,
        Err(e) => return e.into_response(),
    };
    let Some(audit) = parts.extensions.get::<AuditScope>().cloned() else {
        return ApiError::from(Error::Internal("no audit scope".into())).into_response();
    };
    if let Err(e) = require(&state, &audit, &principal, action) {
        return e.into_response();
    }
    parts.extensions.insert(AuthorizedPrincipal(principal));
    next.run(Request::from_parts(parts, body)).await
}

/// Per-client-IP rate limit on every `/auth/*` endpoint.
pub async fn ip_rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(addr))| addr.ip());
    if let Some(ip) = ip
        && let Err(e) = state.inner.identity.check_ip(ip)
    {
        return ApiError::from(e).into_response();
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollStartRequest {
    enrollment_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollFinishRequest {
    enrollment_token: String,
    password: Zeroizing<String>,
    totp_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: Zeroizing<String>,
    totp_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    username: String,
    roles: Vec<String>,
    #[serde(default)]
    organization: Option<String>,
}

pub async fn enroll_start(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: EnrollStartRequest = json_body(&state, &headers, body).await?;
    let started = state
        .inner
        .identity
        .enroll_start(&audit, &req.enrollment_token)
        .await?;
    Ok(json_response(StatusCode::OK, &started))
}

pub async fn enroll_finish(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: EnrollFinishRequest = json_body(&state, &headers, body).await?;
    let codes = state
        .inner
        .identity
        .enroll_finish(&audit, &req.enrollment_token, &req.password, &req.totp_code)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "recovery_codes": codes }),
    ))
}

pub async fn login(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: LoginRequest = json_body(&state, &headers, body).await?;
    // Whatever was typed as a username may be anything (even a patient's name): keep a digest.
    audit.add_digest("username_digest", &req.username);
    let granted = state
        .inner
        .identity
        .login(
            &audit,
            &req.username,
            &req.password,
            &req.totp_code,
            client.map(|Extension(ConnectInfo(ClientAddr(addr)))| addr.ip()),
        )
        .await?;
    Ok(json_response(StatusCode::OK, &granted))
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
) -> Result<Response, ApiError> {
    state.inner.identity.logout(&audit, &p).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn whoami(State(state): State<AppState>, Authenticated(p): Authenticated) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "username": p.username,
            "roles": p.roles,
            "organization": p.organization,
            "environment_tier": state.inner.audit.tier().as_str(),
        }),
    )
}

pub async fn create_user(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CreateUserRequest = json_body(&state, &headers, body).await?;
    let created = state
        .inner
        .identity
        .create_user(&audit, &req.username, &req.roles, req.organization)
        .await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

pub async fn list_users(State(state): State<AppState>) -> Result<Response, ApiError> {
    let users = state.inner.identity.list_users().await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "users": users }),
    ))
}

pub async fn disable_user(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.inner.identity.disable(&audit, &p, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn enable_user(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.inner.identity.enable(&audit, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn unlock_user(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.inner.identity.unlock(&audit, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reset_user(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let reset = state.inner.identity.reset(&audit, Some(&p), &name).await?;
    Ok(json_response(StatusCode::OK, &reset))
}
