//! Uri and number parameters.
//!
//! A uri matches whole (`:below`: the resource's uri starts with the value; `:above`: the value
//! starts with the resource's uri). Index keys: `i:` + the uri (equality only); a number has the
//! key `n:*` (it has one), never its magnitude.

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::selected;
use super::number::{Dec, parse_number};
use super::params::{Kind, ParamDef};
use super::quantity::value_ranges;
use super::query::Sv;
use super::syntax::{Modifier, split_prefix};

/// The uris of a uri parameter.
pub(super) fn uris<'a>(def: &ParamDef, resource: &'a Value) -> Vec<&'a str> {
    let mut out = Vec::new();
    for path in def.paths.iter().filter(|p| p.kind == Kind::Uri) {
        out.extend(
            selected(resource, &path.segs)
                .into_iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty()),
        );
    }
    out
}

pub(super) fn uri_matches(modifier: Modifier, query: &str, found: &str) -> bool {
    match modifier {
        Modifier::Below => found.starts_with(query),
        Modifier::Above => query.starts_with(found),
        _ => found == query,
    }
}

pub(super) fn uri_index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    keys.extend(uris(def, resource).into_iter().map(|u| format!("i:{u}")));
}

/// The candidate keys of a uri value: the uri itself; `None` for `:above` and `:below`.
pub(super) fn uri_candidate_keys(modifier: Modifier, query: &str) -> Option<Vec<String>> {
    match modifier {
        Modifier::Above | Modifier::Below => None,
        _ => Some(vec![format!("i:{query}")]),
    }
}

/// The numbers of a number parameter (JSON numbers, exactly).
pub(super) fn numbers(def: &ParamDef, resource: &Value) -> Vec<Dec> {
    let mut out = Vec::new();
    for path in def.paths.iter().filter(|p| p.kind == Kind::Number) {
        for value in selected(resource, &path.segs) {
            if let Value::Number(n) = value {
                out.extend(parse_number(&n.to_string()).and_then(|n| n.exact_dec()));
            }
        }
    }
    out
}

pub(super) fn parse_number_value(raw: &str) -> Result<Sv, &'static str> {
    let (prefix, rest) = split_prefix(raw)?;
    let number = parse_number(rest)
        .and_then(|n| n.query_dec())
        .ok_or("invalid number")?;
    Ok(Sv::Number { prefix, number })
}

pub(super) fn number_index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    if !numbers(def, resource).is_empty() || !value_ranges(def, resource).is_empty() {
        keys.insert("n:*".to_owned());
    }
}
