//! Shaping results: sort values, references for `_include` and `_revinclude`, `_elements`, and
//! reading only the members a search needs.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use super::date::{OPEN_HI, OPEN_LO, format_instant, ranges};
use super::params::{ParamDef, ParamType, belongs, param};
use super::query::{Clause, SortKey};
use super::reference::reference_values;
use super::token::tokens;
use crate::ResourceType;

/// The code system of the `SUBSETTED` tag.
pub(super) const SUBSETTED_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// A sort key for `key` of this resource, comparable with `Ord` (`None`: no value, sorts last).
///
/// Dates: the lowest start of the resource's ranges for ascending order, the highest end for
/// descending order, as `YYYY-MM-DDThh:mm:ss.ffffffZ` in UTC (`-` for a range open at the start,
/// `~` for one open at the end). `_id`: the id.
#[must_use]
pub fn sort_value(rtype: ResourceType, resource: &Value, key: &SortKey) -> Option<String> {
    let def = param(rtype, key.param)?;
    match def.ptype {
        ParamType::Date => {
            let found = ranges(def, resource);
            if key.descending {
                found.iter().map(|r| r.hi).max().map(|hi| {
                    if hi == OPEN_HI {
                        "~".to_owned()
                    } else {
                        format_instant(hi - 1)
                    }
                })
            } else {
                found.iter().map(|r| r.lo).min().map(|lo| {
                    if lo == OPEN_LO {
                        "-".to_owned()
                    } else {
                        format_instant(lo)
                    }
                })
            }
        }
        ParamType::Token => {
            let codes = tokens(def, resource).into_iter().filter_map(|t| t.code);
            if key.descending {
                codes.max()
            } else {
                codes.min()
            }
        }
        _ => None,
    }
}

/// The references (`Type/id`) a resource holds for a reference parameter of `rtype`, in
/// document order, deduplicated, only to the parameter's target types (for `_include` and
/// `_revinclude`). Empty for other parameters.
#[must_use]
pub fn references(rtype: ResourceType, resource: &Value, param: &ParamDef) -> Vec<String> {
    if param.ptype != ParamType::Reference || !belongs(rtype, param) {
        return Vec::new();
    }
    reference_values(param, resource)
        .into_iter()
        .map(|(t, id)| format!("{t}/{id}"))
        .collect()
}

/// The top-level elements that [`matches`](super::matches()) and [`sort_value`] read for these clauses and sort
/// keys (with `resourceType`): a resource reduced to them gives the same answers.
#[must_use]
pub fn elements_read(
    rtype: ResourceType,
    clauses: &[Clause],
    sort: &[SortKey],
) -> BTreeSet<&'static str> {
    let sorted = sort.iter().filter_map(|k| param(rtype, k.param));
    let mut out = BTreeSet::from(["resourceType"]);
    for def in clauses.iter().map(|c| c.param).chain(sorted) {
        out.extend(def.top_members());
    }
    out
}

/// A JSON object parsed with only the top-level members in `keep` (the rest are skipped
/// without being built): what [`matches`](super::matches()) needs of a search candidate, at a fraction of the
/// cost of the whole document (allocation of every member dominated search CPU). Fails where
/// parsing the whole document would, or if it is not an object.
pub fn parse_members(json: &[u8], keep: &BTreeSet<&str>) -> serde_json::Result<Value> {
    struct Members<'k>(&'k BTreeSet<&'k str>);

    impl<'de> serde::de::Visitor<'de> for Members<'_> {
        type Value = Map<String, Value>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut access: A,
        ) -> Result<Self::Value, A::Error> {
            let mut map = Map::new();
            while let Some(key) = access.next_key::<String>()? {
                if self.0.contains(key.as_str()) {
                    map.insert(key, access.next_value::<Value>()?);
                } else {
                    access.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(map)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    let map = serde::Deserializer::deserialize_map(&mut de, Members(keep))?;
    de.end()?;
    Ok(Value::Object(map))
}

/// Keeps only the top-level `elements` (plus `resourceType`, `id` and `meta`; `value` or
/// `value[x]` keeps `valueQuantity` etc.; `_birthDate` goes with `birthDate`) and adds the
/// `SUBSETTED` tag to `meta.tag`. Does nothing to a non-object.
pub fn apply_elements(resource: &mut Value, elements: &[String]) {
    let Value::Object(map) = resource else {
        return;
    };
    map.retain(|key, _| {
        matches!(key.as_str(), "resourceType" | "id" | "meta")
            || elements.iter().any(|e| is_element(key, e))
    });
    mark_subsetted(map);
}

/// Whether the JSON key `key` is the top-level element `element`: `_name` (a primitive's
/// extensions) goes with `name`, and `value` or `value[x]` is `valueQuantity` etc.
pub(crate) fn is_element(key: &str, element: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    let stem = element.strip_suffix("[x]").unwrap_or(element);
    !stem.is_empty()
        && (key == stem
            || key
                .strip_prefix(stem)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())))
}

/// Adds the `SUBSETTED` tag to `meta.tag` (once), making `meta` and `tag` if needed.
pub(crate) fn mark_subsetted(map: &mut Map<String, Value>) {
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else {
        return;
    };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !tags.is_array() {
        *tags = Value::Array(Vec::new());
    }
    if let Value::Array(tags) = tags {
        let present = tags.iter().any(|t| {
            t.get("system").and_then(Value::as_str) == Some(SUBSETTED_SYSTEM)
                && t.get("code").and_then(Value::as_str) == Some("SUBSETTED")
        });
        if !present {
            tags.push(serde_json::json!({
                "system": SUBSETTED_SYSTEM,
                "code": "SUBSETTED",
                "display": "subsetted"
            }));
        }
    }
}
