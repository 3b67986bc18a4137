//! The links of every paged answer (search, compartment search, `$everything`, history, the
//! audit trail), from one base URL: `self` is the request's own URL and parameters, `next` the
//! same with the cursor of the next page (from `carevault_server::paging`).

use serde_json::{Value, json};

use crate::AppState;

/// `https://host:port` where clients reach this server (`public_base_url`, or the bound
/// address): never the request's `Host` header.
pub fn origin(state: &AppState) -> &str {
    state.inner.public_base.origin()
}

/// The FHIR base URL (`[base]` in the FHIR specification).
pub fn fhir_base(state: &AppState) -> &str {
    state.inner.public_base.fhir_base()
}

/// `self` and (when there is a next page) `next` links: `url` with `params` (the request's own,
/// minus any `cursor_param`) and, for each link, its page's cursor.
pub fn page_links(
    url: &str,
    params: &[(String, String)],
    cursor_param: &str,
    (this, next): (Option<&str>, Option<&str>),
) -> Vec<Value> {
    let own: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != cursor_param).collect();
    let link = |cursor: Option<&str>| {
        let page = cursor.map(|c| (cursor_param.to_owned(), c.to_owned()));
        let query: Vec<&(String, String)> = own.iter().copied().chain(page.as_ref()).collect();
        let encoded = serde_urlencoded::to_string(&query).unwrap_or_default();
        if encoded.is_empty() {
            url.to_owned()
        } else {
            format!("{url}?{encoded}")
        }
    };
    let mut links = vec![json!({"relation": "self", "url": link(this)})];
    if let Some(next) = next {
        links.push(json!({"relation": "next", "url": link(Some(next))}));
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn links_keep_the_request_parameters_encoded_and_replace_the_cursor() {
        let params = pairs(&[
            ("_since", "2026-01-01T00:00:00+01:00"),
            ("_cursor", "old"),
            ("name", "a&b"),
        ]);
        let links = page_links(
            "https://h/fhir/Patient/_history",
            &params,
            "_cursor",
            (Some("this"), Some("next")),
        );
        assert_eq!(links[0]["relation"], "self");
        assert_eq!(
            links[0]["url"],
            "https://h/fhir/Patient/_history?_since=2026-01-01T00%3A00%3A00%2B01%3A00&name=a%26b&_cursor=this"
        );
        assert_eq!(links[1]["relation"], "next");
        assert!(links[1]["url"].as_str().unwrap().ends_with("&_cursor=next"));
        assert!(!links[1]["url"].as_str().unwrap().contains("old"));
        let last = page_links("https://h/audit/events", &[], "_cursor", (None, None));
        assert_eq!(
            last,
            vec![json!({"relation": "self", "url": "https://h/audit/events"})]
        );
    }
}
