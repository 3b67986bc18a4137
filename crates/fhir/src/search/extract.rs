//! Extraction of values from resources: the elements at a parameter's paths.

use serde_json::Value;

/// The values at `segs` below `value`, arrays flattened at every level.
/// FHIR JSON has no arrays of arrays: nested arrays are skipped, which also bounds the
/// recursion depth by the path length.
fn select<'a>(value: &'a Value, segs: &[&str], out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => {
            for item in items.iter().filter(|item| !item.is_array()) {
                select(item, segs, out);
            }
        }
        Value::Object(map) => match segs.split_first() {
            Some((first, rest)) => {
                if let Some(child) = map.get(*first) {
                    select(child, rest, out);
                }
            }
            None => out.push(value),
        },
        _ => {
            if segs.is_empty() {
                out.push(value);
            }
        }
    }
}

pub(super) fn selected<'a>(value: &'a Value, segs: &[&str]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    select(value, segs, &mut out);
    out
}

/// A non-empty string member.
pub(super) fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}
