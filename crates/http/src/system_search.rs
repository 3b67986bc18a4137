//! `GET [base]?_type=A,B&...`: one search across several resource types (R4 3.1.1.5.6).
//!
//! Each named type is searched in turn with the same parameters, so only parameters every one of
//! them knows work together (the common ones: `_id`, `_lastUpdated`, `_tag`, `_profile`,
//! `_security`, `_source`); one a type does not know is refused before anything is read. Every
//! type is authorized up front as its own type search is (one the caller may not search makes
//! the whole search a 403, as it would be alone), and each result as in that search. A page
//! holds results of one type; its `next` link carries the type's position and that type's own
//! cursor, so paging reaches every match of every type. `_type` is required: a search of all
//! 145 types at once is not offered.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use carevault_fhir::ResourceType;
use carevault_fhir::bundle::BundleWriter;
use carevault_fhir::search::Total;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::fhir::{negotiate_pairs, prefers_lenient, push_page, searchset};
use carevault_server::Error;
use carevault_server::audit::AuditScope;
use carevault_server::records::Caller;

/// At most this many types in one `_type`.
const MAX_TYPES: usize = 20;
/// Types (or pages filtered empty) one request moves past looking for a non-empty page.
const MAX_STEPS: usize = 8;

/// Where a page starts: the index into `_type`'s list, and that type's own cursor.
struct Cursor {
    index: usize,
    inner: Option<String>,
}

impl Cursor {
    fn parse(value: &str) -> Result<Self, Error> {
        let invalid = || Error::BadRequest("_page is not a cursor this server gave".into());
        let (index, inner) = value.split_once('.').ok_or_else(invalid)?;
        Ok(Self {
            index: index.parse().map_err(|_| invalid())?,
            inner: (!inner.is_empty()).then(|| inner.to_owned()),
        })
    }

    fn encode(&self) -> String {
        format!("{}.{}", self.index, self.inner.as_deref().unwrap_or(""))
    }
}

pub async fn search_system(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditScope>,
    Authenticated(p): Authenticated,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    negotiate_pairs(&headers, &pairs)?;
    let caller = Caller::new(&p, &audit);
    let mut types: Vec<ResourceType> = Vec::new();
    let mut this_page = None;
    let mut rest = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "_type" => {
                for t in value.split(',') {
                    let t = ResourceType::parse(t.trim())
                        .map_err(|_| Error::BadRequest("_type names an unknown type".into()))?;
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
            }
            "_page" => this_page = Some(value),
            "_format" => {}
            _ => rest.push((name, value)),
        }
    }
    if types.is_empty() {
        return Err(Error::BadRequest(
            "a search across types needs _type (for example _type=Patient,Observation)".into(),
        )
        .into());
    }
    if types.len() > MAX_TYPES {
        return Err(Error::BadRequest(format!("_type names at most {MAX_TYPES} types")).into());
    }
    let lenient = prefers_lenient(&headers);
    // Every type's query first: a parameter one of them does not know is refused up front.
    let queries = types
        .iter()
        .map(|t| carevault_fhir::search::parse_query(*t, &rest, lenient))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let mut cursor = match &this_page {
        Some(page) => Cursor::parse(page)?,
        None => Cursor {
            index: 0,
            inner: None,
        },
    };
    if cursor.index >= types.len() {
        return Err(Error::BadRequest("_page is not a cursor this server gave".into()).into());
    }

    let records = &state.inner.records;
    // Every named type is authorized before anything is read, as its own search would be.
    if !types.iter().all(|t| records.may_search_type(&p, *t)) {
        return Err(Error::Forbidden.into());
    }
    let summary_count = queries.iter().any(|q| q.summary_count);
    let total = if summary_count || queries.iter().any(|q| !matches!(q.total, Total::None)) {
        let mut sum = 0;
        for (t, q) in types.iter().zip(&queries) {
            let mut count_only = q.clone();
            count_only.summary_count = true;
            count_only.page = None;
            sum += records.search(caller, *t, &count_only).await?.total;
        }
        Some(sum)
    } else {
        None
    };

    let base = crate::paging::fhir_base(&state);
    let mut entries = BundleWriter::default();
    let mut next = None;
    if !summary_count {
        let mut out_of_steps = true;
        for _ in 0..MAX_STEPS {
            let mut query = queries[cursor.index].clone();
            query.page = cursor.inner.take();
            let page = records.search(caller, types[cursor.index], &query).await?;
            push_page(&mut entries, base, &page, &query)?;
            next = match page.next {
                Some(inner) => Some(Cursor {
                    index: cursor.index,
                    inner: Some(inner),
                }),
                None if cursor.index + 1 < types.len() => Some(Cursor {
                    index: cursor.index + 1,
                    inner: None,
                }),
                None => None,
            };
            // An empty page with more to come: go on within this request.
            match next.take() {
                Some(following) if page.matches.is_empty() => cursor = following,
                following => {
                    next = following;
                    out_of_steps = false;
                    break;
                }
            }
        }
        if out_of_steps {
            // MAX_STEPS empty pages in a row: hand the client the place to go on from.
            next = Some(cursor);
        }
    }
    let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    rest.push(("_type".to_owned(), names.join(",")));
    let next = next.map(|c| c.encode());
    searchset(
        &state,
        base,
        &rest,
        (this_page.as_deref(), next.as_deref()),
        total,
        entries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let c = Cursor::parse("2.abc_-").unwrap();
        assert_eq!((c.index, c.inner.as_deref()), (2, Some("abc_-")));
        assert_eq!(c.encode(), "2.abc_-");
        let first = Cursor::parse("1.").unwrap();
        assert_eq!((first.index, first.inner), (1, None));
        for forged in ["", "x.y", "-1.a", "abc"] {
            assert!(Cursor::parse(forged).is_err(), "{forged}");
        }
    }
}
