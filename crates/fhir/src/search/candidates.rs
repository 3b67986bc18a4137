//! Candidate keys: the index keys a search value looks up (no false negatives, ever).

use super::params::{ParamType, is_id};
use super::query::{Clause, SearchValue, Sv};
use super::syntax::{Modifier, parse_modifier};
use super::{composite, date, near, quantity, reference, string, token, uri};

/// Keys of which every resource matching `value` (for `clause.param`, with `clause.modifier`)
/// has at least one among its index keys for that parameter; `None` when no bounded key set
/// exists (`:missing`, `:not`, `:text`, `:contains`, date `ne`): the server must then consider
/// every resource of the type. An empty list means nothing can match.
#[must_use]
pub fn candidate_keys(clause: &Clause, value: &SearchValue) -> Option<Vec<String>> {
    let def = clause.param;
    if is_id(def) {
        // Not in the index: see [`id_candidates`].
        return None;
    }
    let Some(modifier) = parse_modifier(def, clause.modifier.as_deref()) else {
        return Some(Vec::new());
    };
    if matches!(
        modifier,
        Modifier::Missing
            | Modifier::Not
            | Modifier::Text
            | Modifier::Contains
            | Modifier::Identifier
    ) {
        return None;
    }
    if let Sv::OfType { value, .. } = &value.0 {
        // The identifier's value is indexed as a code.
        return Some(vec![format!("c:{value}")]);
    }
    match (&value.0, def.ptype) {
        (Sv::Token { system, code }, ParamType::Token) => Some(token::candidate_keys(system, code)),
        (Sv::Str { norm, .. }, ParamType::String) => {
            Some(string::candidate_keys(norm, modifier == Modifier::Exact))
        }
        (Sv::Ref { rtype, id }, ParamType::Reference) => {
            Some(reference::candidate_keys(def, *rtype, id))
        }
        (Sv::Canonical { url, version }, ParamType::Reference) => {
            Some(reference::canonical_candidate_keys(url, version.as_deref()))
        }
        (Sv::Date { prefix, range }, ParamType::Date) => date::candidate_keys(*prefix, *range),
        (Sv::Quantity { units, .. }, ParamType::Quantity) => Some(quantity::candidate_keys(units)),
        (Sv::Number { .. }, ParamType::Number) => Some(vec!["n:*".to_owned()]),
        (Sv::Uri(query), ParamType::Uri) => uri::uri_candidate_keys(modifier, query),
        (Sv::Composite(clauses), ParamType::Composite) => composite::candidate_keys(clauses),
        (Sv::Near { lat, lon, metres }, ParamType::Special) => {
            near::candidate_keys(*lat, *lon, *metres)
        }
        _ => Some(Vec::new()),
    }
}

/// The ids an `_id` clause can match (every resource it matches has one of them as its id), or
/// `None` for another parameter or a modifier (`:not`, `:missing`) that has no bounded set.
#[must_use]
pub fn id_candidates(clause: &Clause) -> Option<Vec<String>> {
    if !is_id(clause.param) || clause.modifier.is_some() {
        return None;
    }
    Some(
        clause
            .values
            .iter()
            .filter_map(|v| match &v.0 {
                Sv::Token { code, .. } if !code.is_empty() => Some(code.clone()),
                _ => None,
            })
            .collect(),
    )
}
