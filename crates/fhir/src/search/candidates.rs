//! Candidate keys: the index keys a search value looks up (no false negatives, ever).

use super::date::date_candidates;
use super::params::{ParamType, is_id};
use super::query::{Clause, SearchValue, Sv, Sys, Units};
use super::string::MAX_STRING_PREFIX;
use super::syntax::{Modifier, parse_modifier};

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
        Modifier::Missing | Modifier::Not | Modifier::Text | Modifier::Contains
    ) {
        return None;
    }
    match (&value.0, def.ptype) {
        (Sv::Token { system, code }, ParamType::Token) => Some(match system {
            Sys::Any | Sys::Absent => vec![format!("c:{code}")],
            Sys::Is(system) if code.is_empty() => vec![format!("s:{system}")],
            Sys::Is(system) => {
                let mut keys = vec![format!("sc:{system}|{code}")];
                if def.has_implicit_tokens() {
                    keys.push(format!("c:{code}"));
                }
                keys
            }
        }),
        (Sv::Str { norm, .. }, ParamType::String) => {
            let length = norm.chars().count();
            Some(vec![
                if modifier == Modifier::Exact && length > MAX_STRING_PREFIX {
                    format!("f:{norm}")
                } else {
                    let prefix: String = norm.chars().take(MAX_STRING_PREFIX).collect();
                    format!("p:{prefix}")
                },
            ])
        }
        (Sv::Ref { rtype, id }, ParamType::Reference) => Some(match rtype {
            Some(rtype) => vec![format!("r:{rtype}/{id}")],
            None => def.targets().map(|t| format!("r:{t}/{id}")).collect(),
        }),
        (Sv::Date { prefix, range }, ParamType::Date) => date_candidates(*prefix, *range),
        (Sv::Quantity { units, .. }, ParamType::Quantity) => Some(vec![match units {
            Units::Any => "u:*".to_owned(),
            Units::Code(code) => format!("u:|{code}"),
            Units::SystemCode(system, code) => format!("u:{system}|{code}"),
        }]),
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
