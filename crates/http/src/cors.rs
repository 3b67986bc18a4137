//! CORS for browser apps on the origins `cors.allowed_origins` names; off (no CORS header, no
//! preflight answered) while it is empty.
//!
//! Only exact origins are allowed, and never credentials: apps authenticate with
//! `Authorization: Bearer`, which a browser sends only when the app's own code adds it, so a page
//! on another origin cannot ride on a user's session the way it could with cookies.

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, If-Modified-Since";
const EXPOSE_HEADERS: &str =
    "ETag, Last-Modified, Location, Content-Location, Retry-After, X-Request-Id";
/// How long a browser may reuse a preflight's answer.
const MAX_AGE_SECS: &str = "600";

/// What CORS makes of one request.
pub(crate) struct Cors {
    enabled: bool,
    /// The request's `Origin`, when it is an allowed one.
    origin: Option<HeaderValue>,
    preflight: bool,
}

impl Cors {
    pub(crate) fn of(method: &Method, headers: &HeaderMap, allowed: &[String]) -> Self {
        let enabled = !allowed.is_empty();
        let origin = headers
            .get(ORIGIN)
            .filter(|o| enabled && allowed.iter().any(|a| o.as_bytes() == a.as_bytes()))
            .cloned();
        let preflight = enabled
            && method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        Self {
            enabled,
            origin,
            preflight,
        }
    }

    /// A preflight (`OPTIONS` with `Access-Control-Request-Method`), answered here without
    /// authentication: it carries no data and asks only what the API accepts.
    pub(crate) fn is_preflight(&self) -> bool {
        self.preflight
    }

    /// The answer to a preflight: 204, with the permissions only for an allowed origin (for any
    /// other, the browser refuses the app's request).
    pub(crate) fn preflight_response(&self) -> Response {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if self.origin.is_some() {
            let h = resp.headers_mut();
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECS),
            );
        }
        resp
    }

    /// The CORS headers of any response (preflight or not).
    pub(crate) fn decorate(&self, headers: &mut HeaderMap) {
        if !self.enabled {
            return;
        }
        // Caches must not serve one origin's answer to another.
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = &self.origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    const ALLOWED: &[&str] = &["https://app.example.org"];

    fn allowed() -> Vec<String> {
        ALLOWED.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_an_allowed_origin_gets_permissions_and_never_credentials() {
        let preflight = headers(&[
            ("origin", "https://app.example.org"),
            ("access-control-request-method", "PUT"),
        ]);
        let cors = Cors::of(&Method::OPTIONS, &preflight, &allowed());
        assert!(cors.is_preflight());
        let mut resp = cors.preflight_response();
        cors.decorate(resp.headers_mut());
        let h = resp.headers();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.org");
        assert!(
            h[ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .unwrap()
                .contains("PATCH")
        );
        assert!(h.get("access-control-allow-credentials").is_none());

        let evil = headers(&[
            ("origin", "https://app.example.org.evil.test"),
            ("access-control-request-method", "GET"),
        ]);
        let cors = Cors::of(&Method::OPTIONS, &evil, &allowed());
        let mut resp = cors.preflight_response();
        cors.decorate(resp.headers_mut());
        assert!(resp.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(resp.headers().get(ACCESS_CONTROL_ALLOW_METHODS).is_none());
        assert_eq!(resp.headers()[VARY], "Origin");
    }

    #[test]
    fn off_when_no_origin_is_configured() {
        let preflight = headers(&[
            ("origin", "https://app.example.org"),
            ("access-control-request-method", "GET"),
        ]);
        let cors = Cors::of(&Method::OPTIONS, &preflight, &[]);
        assert!(!cors.is_preflight());
        let mut h = HeaderMap::new();
        cors.decorate(&mut h);
        assert!(h.is_empty());
    }
}
