//! Matching: the exact predicate that decides what a search returns.

use serde_json::Value;

use super::composite::{composite_matches, composite_present};
use super::date::{date_matches, ranges};
use super::near::{near_matches, positions};
use super::number::{number_matches, range_matches};
use super::params::{ParamDef, ParamType, belongs};
use super::quantity::{quantities, units_match, value_ranges};
use super::query::{Clause, Sv};
use super::reference::{canonical_matches, canonical_values, identifier_matches, reference_values};
use super::string::{normalize_string, strings};
use super::syntax::{Modifier, parse_modifier};
use super::token::{of_type_matches, token_matches, token_texts, tokens};
use super::uri::{numbers, uri_matches, uris};
use crate::ResourceType;

/// Whether `resource` (of type `rtype`) satisfies `clause`: any of its values (with `:not`,
/// none of them). Exact: this is the predicate that decides what a search returns. A clause
/// whose parameter is not one of `rtype`'s matches nothing.
#[must_use]
pub fn matches(rtype: ResourceType, resource: &Value, clause: &Clause) -> bool {
    let def = clause.param;
    if !belongs(rtype, def) {
        return false;
    }
    clause_matches(resource, clause)
}

/// Whether `resource` (or, for a composite's component, one base element) satisfies `clause`,
/// whatever type it is of.
pub(super) fn clause_matches(resource: &Value, clause: &Clause) -> bool {
    let def = clause.param;
    let Some(modifier) = parse_modifier(def, clause.modifier.as_deref()) else {
        return false;
    };
    let values = &clause.values;
    if modifier == Modifier::Missing {
        let present = has_value(def, resource);
        return values
            .iter()
            .any(|v| matches!(v.0, Sv::Missing(missing) if missing != present));
    }
    match def.ptype {
        ParamType::Token if modifier == Modifier::OfType => values.iter().any(|v| match &v.0 {
            Sv::OfType {
                type_system,
                type_code,
                value,
            } => of_type_matches(def, resource, (type_system, type_code, value)),
            _ => false,
        }),
        ParamType::Reference if modifier == Modifier::Identifier => {
            values.iter().any(|v| match &v.0 {
                Sv::RefIdentifier { system, value } => {
                    identifier_matches(def, resource, system, value)
                }
                _ => false,
            })
        }
        ParamType::Token if modifier == Modifier::Text => {
            let texts = token_texts(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Text(query) => texts.iter().any(|t| t.starts_with(query.as_str())),
                _ => false,
            })
        }
        ParamType::Token => {
            if !values.iter().all(|v| matches!(v.0, Sv::Token { .. })) {
                return false;
            }
            let toks = tokens(def, resource);
            let any = values.iter().any(|v| match &v.0 {
                Sv::Token { system, code } => toks.iter().any(|t| token_matches(t, system, code)),
                _ => false,
            });
            if modifier == Modifier::Not { !any } else { any }
        }
        ParamType::String => {
            let found = strings(def, resource);
            let normalized: Vec<String> = found.iter().map(|s| normalize_string(s)).collect();
            values.iter().any(|v| match &v.0 {
                Sv::Str { raw, norm } => match modifier {
                    Modifier::Exact => found.iter().any(|s| s == raw),
                    Modifier::Contains => normalized.iter().any(|s| s.contains(norm.as_str())),
                    _ => normalized.iter().any(|s| s.starts_with(norm.as_str())),
                },
                _ => false,
            })
        }
        ParamType::Reference => {
            let refs = reference_values(def, resource);
            let canonicals = canonical_values(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Ref { rtype, id } => refs
                    .iter()
                    .any(|(t, i)| i == id && rtype.is_none_or(|r| r == *t)),
                Sv::Canonical { url, version } => canonicals
                    .iter()
                    .any(|c| canonical_matches(url, version.as_deref(), c)),
                _ => false,
            })
        }
        ParamType::Date => {
            let found = ranges(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Date { prefix, range } => {
                    found.iter().any(|t| date_matches(*prefix, *range, *t))
                }
                _ => false,
            })
        }
        ParamType::Quantity => {
            let found = quantities(def, resource);
            let ranges = value_ranges(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Quantity {
                    prefix,
                    number,
                    units,
                } => {
                    found
                        .iter()
                        .any(|q| units_match(units, q) && number_matches(*prefix, *number, q.value))
                        || ranges.iter().any(|r| {
                            let (low, high) = r.bounds();
                            r.units_match(units) && range_matches(*prefix, *number, low, high)
                        })
                }
                _ => false,
            })
        }
        ParamType::Number => {
            let found = numbers(def, resource);
            let ranges = value_ranges(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Number { prefix, number } => {
                    found.iter().any(|n| number_matches(*prefix, *number, *n))
                        || ranges.iter().any(|r| {
                            let (low, high) = r.bounds();
                            range_matches(*prefix, *number, low, high)
                        })
                }
                _ => false,
            })
        }
        ParamType::Uri => {
            let found = uris(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Uri(query) => found.iter().any(|u| uri_matches(modifier, query, u)),
                _ => false,
            })
        }
        ParamType::Composite => values.iter().any(|v| match &v.0 {
            Sv::Composite(clauses) => composite_matches(def, resource, clauses),
            _ => false,
        }),
        ParamType::Special => {
            let found = positions(def, resource);
            values.iter().any(|v| match &v.0 {
                Sv::Near { lat, lon, metres } => {
                    found.iter().any(|p| near_matches(*lat, *lon, *metres, *p))
                }
                _ => false,
            })
        }
    }
}

pub(super) fn has_value(def: &ParamDef, resource: &Value) -> bool {
    match def.ptype {
        ParamType::Token => {
            !tokens(def, resource).is_empty() || !token_texts(def, resource).is_empty()
        }
        ParamType::Reference => {
            !reference_values(def, resource).is_empty()
                || !canonical_values(def, resource).is_empty()
        }
        ParamType::String => !strings(def, resource).is_empty(),
        ParamType::Date => !ranges(def, resource).is_empty(),
        ParamType::Quantity => {
            !quantities(def, resource).is_empty() || !value_ranges(def, resource).is_empty()
        }
        ParamType::Number => {
            !numbers(def, resource).is_empty() || !value_ranges(def, resource).is_empty()
        }
        ParamType::Uri => !uris(def, resource).is_empty(),
        ParamType::Composite => composite_present(def, resource),
        ParamType::Special => !positions(def, resource).is_empty(),
    }
}
