//! Extraction of values from resources: the elements at a parameter's paths.

use serde_json::Value;

use super::params::Seg;
use super::reference::literal_reference;

/// The values at `segs` from `value`, arrays flattened at every member (FHIR JSON has no arrays
/// of arrays: nested arrays are skipped).
pub(super) fn selected<'a>(value: &'a Value, segs: &[Seg]) -> Vec<&'a Value> {
    let mut at = vec![value];
    for seg in segs {
        at = match seg {
            Seg::Member(name) => {
                let mut next = Vec::new();
                for v in at {
                    match v.get(name) {
                        Some(Value::Array(items)) => {
                            next.extend(items.iter().filter(|item| !item.is_array()));
                        }
                        Some(item) => next.push(item),
                        None => {}
                    }
                }
                next
            }
            Seg::Index(n) => at.get(*n).copied().into_iter().collect(),
            Seg::RefersTo(rtype) => at
                .into_iter()
                .filter(|v| {
                    str_of(v, "reference")
                        .and_then(literal_reference)
                        .is_some_and(|(t, _)| t == *rtype)
                })
                .collect(),
            Seg::Where(member, literal) => at
                .into_iter()
                .filter(|v| v.get(member).and_then(Value::as_str) == Some(literal.as_str()))
                .collect(),
        };
    }
    at
}

/// The values at one member of `value` (arrays flattened).
pub(super) fn member<'a>(value: &'a Value, name: &str) -> Vec<&'a Value> {
    match value.get(name) {
        Some(Value::Array(items)) => items.iter().filter(|item| !item.is_array()).collect(),
        Some(item) => vec![item],
        None => Vec::new(),
    }
}

/// A non-empty string member.
pub(super) fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}
