//! The result parameters of a search: `_count`, `_sort`, `_summary`, `_total`, `_include`,
//! `_revinclude`, `_elements`, `_format` and `_page`; and `_totalMethod`, which fhirpy sends for a
//! count (`count`, `estimate` or `none`, as `_total` says `accurate`, `estimate` or `none`).

use super::params::{ParamDef, ParamType, param, params};
use super::query::{Include, MAX_COUNT, Query, SearchError, SortKey, Total, invalid};
use crate::ResourceType;
use crate::summary::Summary;

/// Parameters that `_sort` accepts (when the type has them).
const SORTABLE: [&str; 4] = ["_lastUpdated", "date", "birthdate", "_id"];

/// The result-control parameters, as static names.
pub(super) fn control_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "_count" => "_count",
        "_sort" => "_sort",
        "_summary" => "_summary",
        "_total" => "_total",
        "_totalMethod" => "_totalMethod",
        "_include" => "_include",
        "_revinclude" => "_revinclude",
        "_elements" => "_elements",
        "_format" => "_format",
        "_page" => "_page",
        _ => return None,
    })
}

pub(super) fn apply_control(
    rtype: ResourceType,
    query: &mut Query,
    control: &'static str,
    value: &str,
) -> Result<(), SearchError> {
    match control {
        "_count" => query.count = parse_count(value).map_err(|r| invalid(control, r))?,
        "_sort" => query.sort = parse_sort(rtype, value)?,
        "_summary" => match value {
            "count" => query.summary_count = true,
            other => {
                let summary = Summary::parse(other)
                    .ok_or_else(|| invalid(control, "expected true, text, data, count or false"))?;
                query.summary = Some(summary);
            }
        },
        // fhirpy's `count()` asks `_totalMethod=count` (Aidbox's name for `_total`).
        "_total" | "_totalMethod" => {
            query.total = match value {
                "count" if control == "_totalMethod" => Total::Accurate,
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => return Err(invalid(control, "expected none, estimate or accurate")),
            }
        }
        "_include" => {
            let includes = parse_include(rtype, value, false).map_err(|r| invalid(control, r))?;
            query.include.extend(includes);
        }
        "_revinclude" => {
            let includes = parse_include(rtype, value, true).map_err(|r| invalid(control, r))?;
            query.revinclude.extend(includes);
        }
        "_elements" => {
            query.elements = Some(parse_elements(value).map_err(|r| invalid(control, r))?);
        }
        "_page" => {
            if value.is_empty() {
                return Err(invalid(control, "empty value"));
            }
            query.page = Some(value.to_owned());
        }
        _ => {}
    }
    Ok(())
}

fn parse_count(value: &str) -> Result<u32, &'static str> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a non-negative integer");
    }
    let digits = value.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if digits.len() > 9 {
        return Ok(MAX_COUNT);
    }
    let count: u32 = digits
        .parse()
        .map_err(|_| "expected a non-negative integer")?;
    Ok(count.min(MAX_COUNT))
}

fn parse_sort(rtype: ResourceType, value: &str) -> Result<Vec<SortKey>, SearchError> {
    let mut keys = Vec::new();
    for item in value.split(',') {
        let (descending, name) = match item.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, item),
        };
        let def = SORTABLE
            .contains(&name)
            .then(|| param(rtype, name))
            .flatten()
            .ok_or_else(|| invalid("_sort", "unsupported sort parameter"))?;
        if keys.iter().any(|k: &SortKey| k.param == def.name) {
            return Err(invalid("_sort", "repeated sort parameter"));
        }
        keys.push(SortKey {
            param: def.name,
            descending,
        });
    }
    Ok(keys)
}

fn parse_include(
    rtype: ResourceType,
    value: &str,
    reverse: bool,
) -> Result<Vec<Include>, &'static str> {
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let name = parts.next().ok_or("expected Type:parameter[:Target]")?;
    let target = parts.next();
    if parts.next().is_some() {
        return Err("expected Type:parameter[:Target]");
    }
    let source = ResourceType::parse(source).map_err(|_| "unknown resource type")?;
    if !reverse && source != rtype {
        return Err("the source type must be the searched type");
    }
    let target = match target {
        Some(t) => Some(ResourceType::parse(t).map_err(|_| "unknown resource type")?),
        None => None,
    };
    if reverse && target.is_some_and(|t| t != rtype) {
        return Err("the target type must be the searched type");
    }
    let usable = |def: &ParamDef| {
        def.ptype == ParamType::Reference
            && def.refers_by_id()
            && target.is_none_or(|t| def.targets_type(t))
            && (!reverse || def.targets_type(rtype))
    };
    let defs: Vec<&'static ParamDef> = if name == "*" {
        params(source).into_iter().filter(|d| usable(d)).collect()
    } else {
        let def = param(source, name)
            .filter(|d| d.ptype == ParamType::Reference)
            .ok_or("not a reference parameter of the source type")?;
        if !usable(def) {
            return Err("the parameter cannot refer to the target type");
        }
        vec![def]
    };
    Ok(defs
        .into_iter()
        .map(|param| Include {
            source,
            param,
            target,
        })
        .collect())
}

pub(crate) fn parse_elements(value: &str) -> Result<Vec<String>, &'static str> {
    let mut elements = Vec::new();
    for item in value.split(',') {
        let name = item.strip_suffix("[x]").unwrap_or(item);
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err("expected element names");
        }
        if !elements.iter().any(|e: &String| e == name) {
            elements.push(name.to_owned());
        }
    }
    Ok(elements)
}
