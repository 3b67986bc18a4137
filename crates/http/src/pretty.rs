//! `_pretty=true`: JSON answers indented for people reading them (curl in a terminal). The
//! parameter is taken off the request before anything else sees it, so every endpoint accepts
//! it; the answer is re-indented as it is (members keep their order).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Uri, header};
use axum::middleware::Next;
use axum::response::Response;

/// The largest answer re-indented; a larger one is sent as it is.
const LIMIT: usize = 256 * 1024 * 1024;

pub(crate) async fn pretty(mut req: Request, next: Next) -> Response {
    let Some((wanted, uri)) = without_pretty(req.uri()) else {
        return next.run(req).await;
    };
    *req.uri_mut() = uri;
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/fhir+json") || v.starts_with("application/json")
        });
    if !wanted || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, LIMIT).await else {
        return crate::error::outcome_response(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "the answer could not be read to indent it; ask again without _pretty",
        );
    };
    let indented = reindent(&bytes);
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Ok(len) = HeaderValue::from_str(&indented.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, len);
    }
    Response::from_parts(parts, Body::from(indented))
}

/// Whether `_pretty=true` was asked for, and the URI without `_pretty`; None without it.
fn without_pretty(uri: &Uri) -> Option<(bool, Uri)> {
    let query = uri.query()?;
    let mut wanted = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("_pretty", value)) => {
                wanted = Some(value == "true");
                false
            }
            None if *pair == "_pretty" => {
                wanted = Some(true);
                false
            }
            _ => true,
        })
        .collect();
    let wanted = wanted?;
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Some((wanted, Uri::from_parts(parts).ok()?))
}

/// `json` indented by two spaces, one member or item a line, in its own order.
fn reindent(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() * 2);
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut bytes = json.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                out.push(b);
                if !matches!(bytes.peek(), Some(b'}' | b']')) {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                if !matches!(out.last(), Some(b'{' | b'[')) {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            b' ' | b'\n' | b'\r' | b'\t' => {}
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reindents_in_order_and_leaves_strings_alone() {
        let compact = br#"{"resourceType":"Patient","a":[],"b":{"c":[1,2]},"s":"x, {\"y\": [z]}"}"#;
        let expected = "{\n  \"resourceType\": \"Patient\",\n  \"a\": [],\n  \"b\": {\n    \"c\": [\n      1,\n      2\n    ]\n  },\n  \"s\": \"x, {\\\"y\\\": [z]}\"\n}\n";
        let indented = reindent(compact);
        assert_eq!(String::from_utf8_lossy(&indented), expected);
        let before: serde_json::Value = serde_json::from_slice(compact).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&indented).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn the_parameter_is_taken_off_the_query() {
        let uri: Uri = "/fhir/Patient?name=x&_pretty=true&_count=2"
            .parse()
            .unwrap();
        let (wanted, rest) = without_pretty(&uri).unwrap();
        assert!(wanted);
        assert_eq!(rest.to_string(), "/fhir/Patient?name=x&_count=2");
        let (wanted, rest) =
            without_pretty(&"/fhir/Patient/1?_pretty=false".parse().unwrap()).unwrap();
        assert!(!wanted);
        assert_eq!(rest.to_string(), "/fhir/Patient/1");
        assert!(without_pretty(&"/fhir/Patient?name=_pretty".parse().unwrap()).is_none());
    }
}
