//! Reference parameters: literal references (`Type/id`, with a version or as an absolute URL),
//! and canonical references (R4 3.1.1.4.7.1): a `canonical` or `uri` element holds a URL, maybe
//! `url|version`; `?param=url` matches it with any version, `?param=url|version` that version
//! only. No R4 parameter mixes the two kinds of element.

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::{selected, str_of};
use super::params::{Kind, ParamDef};
use super::query::{Sv, Sys};
use super::syntax::Modifier;
use crate::ResourceType;
use crate::types::is_valid_id;

pub(super) fn parse_reference(
    def: &ParamDef,
    modifier: Modifier,
    value: &str,
) -> Result<Sv, &'static str> {
    if def.has_canonical() && !matches!(modifier, Modifier::Type(_)) && is_canonical_url(value) {
        let (url, version) = match value.split_once('|') {
            Some((url, version)) if !version.is_empty() => (url, Some(version.to_owned())),
            Some(_) => return Err("invalid canonical reference"),
            None => (value, None),
        };
        return Ok(Sv::Canonical {
            url: url.to_owned(),
            version,
        });
    }
    let (rtype, id) = if value.contains('/') {
        let (rtype, id) = literal_reference(value).ok_or("invalid reference")?;
        (Some(rtype), id.to_owned())
    } else if is_valid_id(value) {
        (None, value.to_owned())
    } else {
        return Err("invalid reference");
    };
    let rtype = match (modifier, rtype) {
        (Modifier::Type(m), Some(t)) if m != t => {
            return Err("the reference type differs from the modifier");
        }
        (Modifier::Type(m), _) => Some(m),
        (_, t) => t,
    };
    if rtype.is_some_and(|t| !def.targets_type(t)) {
        return Err("reference type not allowed for this parameter");
    }
    Ok(Sv::Ref { rtype, id })
}

/// The literal references of a reference parameter to one of its target types, deduplicated.
pub(super) fn reference_values(def: &ParamDef, resource: &Value) -> Vec<(ResourceType, String)> {
    let mut out: Vec<(ResourceType, String)> = Vec::new();
    for path in &def.paths {
        if path.kind != Kind::Reference {
            continue;
        }
        for value in selected(resource, &path.segs) {
            let Some((rtype, id)) = str_of(value, "reference").and_then(literal_reference) else {
                continue;
            };
            if def.targets_type(rtype) && !out.iter().any(|(t, i)| *t == rtype && i == id) {
                out.push((rtype, id.to_owned()));
            }
        }
    }
    out
}

/// The canonical URLs (as stored, maybe `url|version`) of a reference parameter.
pub(super) fn canonical_values<'a>(def: &ParamDef, resource: &'a Value) -> Vec<&'a str> {
    def.paths
        .iter()
        .filter(|p| p.kind == Kind::Canonical)
        .flat_map(|p| selected(resource, &p.segs))
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether the stored canonical `found` is `url` (any version, or exactly `version`).
pub(super) fn canonical_matches(url: &str, version: Option<&str>, found: &str) -> bool {
    let (found_url, found_version) = match found.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (found, None),
    };
    found_url == url && version.is_none_or(|v| found_version == Some(v))
}

/// A canonical reference is an absolute URL or a URN (`urn:uuid:...`, `urn:oid:...`).
fn is_canonical_url(value: &str) -> bool {
    is_absolute_url(value) || value.starts_with("urn:")
}

/// Whether some reference of the parameter carries the identifier `system|value`
/// (`:identifier`; the system as in a token query).
pub(super) fn identifier_matches(
    def: &ParamDef,
    resource: &Value,
    system: &Sys,
    value: &str,
) -> bool {
    def.paths
        .iter()
        .filter(|p| p.kind == Kind::Reference)
        .flat_map(|p| selected(resource, &p.segs))
        .filter_map(|reference| reference.get("identifier"))
        .any(|identifier| {
            str_of(identifier, "value") == Some(value)
                && match system {
                    Sys::Any => true,
                    Sys::Absent => str_of(identifier, "system").is_none(),
                    Sys::Is(s) => str_of(identifier, "system") == Some(s.as_str()),
                }
        })
}

/// `Type/id`, `Type/id/_history/v` or an absolute URL ending in one of them.
pub(super) fn literal_reference(reference: &str) -> Option<(ResourceType, &str)> {
    let reference = strip_history(reference)?;
    let (head, id) = reference.rsplit_once('/')?;
    let type_name = if is_absolute_url(reference) {
        head.rsplit_once('/')?.1
    } else {
        head
    };
    let rtype = ResourceType::parse(type_name).ok()?;
    is_valid_id(id).then_some((rtype, id))
}

/// `reference` without a trailing `/_history/<version>`; `None` if the suffix is malformed.
fn strip_history(reference: &str) -> Option<&str> {
    const HISTORY: &str = "/_history/";
    match reference.rfind(HISTORY) {
        Some(start) => {
            let version = reference.get(start + HISTORY.len()..)?;
            if is_valid_id(version) {
                reference.get(..start)
            } else {
                None
            }
        }
        None => Some(reference),
    }
}

/// Whether `s` starts with `scheme://`.
fn is_absolute_url(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    let mut bytes = scheme.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// The index keys of a reference parameter: `r:Type/id`; for a canonical, `i:url` and, when
/// it names a version, `i:url|version`.
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    for (rtype, id) in reference_values(def, resource) {
        keys.insert(format!("r:{rtype}/{id}"));
    }
    for canonical in canonical_values(def, resource) {
        if let Some((url, _)) = canonical.split_once('|') {
            keys.insert(format!("i:{url}"));
        }
        keys.insert(format!("i:{canonical}"));
    }
}

/// The candidate key of a canonical value: the URL, with its version when one is asked.
pub(super) fn canonical_candidate_keys(url: &str, version: Option<&str>) -> Vec<String> {
    vec![match version {
        Some(v) => format!("i:{url}|{v}"),
        None => format!("i:{url}"),
    }]
}

/// The candidate keys of a reference value: one per target type for a bare id (see
/// [`candidate_keys`](super::candidate_keys)).
pub(super) fn candidate_keys(def: &ParamDef, rtype: Option<ResourceType>, id: &str) -> Vec<String> {
    match rtype {
        Some(rtype) => vec![format!("r:{rtype}/{id}")],
        None => def.targets().map(|t| format!("r:{t}/{id}")).collect(),
    }
}
