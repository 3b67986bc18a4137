//! `_pretty=true`: JSON answers indented for people reading them (curl in a terminal). The
//! parameter is taken off the request before anything else sees it, so every endpoint accepts
//! it; the answer is re-indented as it is (members keep their order).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Uri, header};
use axum::middleware::Next;
use axum::response::Response;

/// The largest answer re-indented; a larger one (or one of unknown length) is sent as it is,
/// compact: indenting means holding the answer twice in memory.
const LIMIT: u64 = 16 * 1024 * 1024;

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
    let small = axum::body::HttpBody::size_hint(resp.body())
        .upper()
        .is_some_and(|n| n <= LIMIT);
    if !wanted || !is_json || !small {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Only a body that fails while it is read (it is known to be within the limit) ends here.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return crate::error::outcome_response(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "the answer could not be read to indent it; ask again without _pretty",
        );
    };
    // The new body has its own (exact) length.
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(reindent(&bytes)))
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

    /// A router answering `body` as FHIR JSON at `/`, behind the `_pretty` layer.
    async fn answer(body: Vec<u8>, query: &str) -> Vec<u8> {
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || async move {
                    crate::error::fhir_json(axum::http::StatusCode::OK, body)
                }),
            )
            .layer(axum::middleware::from_fn(pretty));
        let req = Request::builder()
            .uri(format!("/?{query}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn small_answers_are_indented_and_large_ones_pass_through_compact() {
        assert_eq!(
            answer(br#"{"a":1}"#.to_vec(), "_pretty=true").await,
            b"{\n  \"a\": 1\n}\n"
        );
        assert_eq!(
            answer(br#"{"a":1}"#.to_vec(), "_pretty=false").await,
            br#"{"a":1}"#
        );
        // Over the limit: sent as it is, not refused (it used to answer 500).
        let mut big = br#"{"a":""#.to_vec();
        big.resize(LIMIT as usize + 1, b'x');
        big.extend_from_slice(br#""}"#);
        let got = answer(big.clone(), "_pretty=true").await;
        assert!(
            got == big,
            "the large answer came back changed ({} bytes)",
            got.len()
        );
    }

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
