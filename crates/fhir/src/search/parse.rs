//! Query parsing: `name[:modifier]=value[,value]` pairs into a [`Query`].

use super::chain::{parse_chain, parse_has};
use super::composite::parse_composite;
use super::controls::{apply_control, control_name};
use super::date::parse_date;
use super::definitions::left_out;
use super::near::parse_near;
use super::params::{ParamDef, ParamType, param};
use super::quantity::parse_quantity;
use super::query::{
    Clause, MAX_VALUES_PER_PARAMETER, Query, SearchError, SearchValue, Sv, Total, invalid,
};
use super::reference::parse_reference;
use super::string::normalize_string;
use super::syntax::{Modifier, parse_modifier, split_prefix, split_unescaped, unescape};
use super::token::{parse_of_type, parse_token};
use super::uri::parse_number_value;
use crate::ResourceType;

/// Parses a search query (already URL-decoded `name=value` pairs, in order).
///
/// `_format` is accepted and ignored (the server handles it). With `lenient`, unknown
/// parameters and unknown modifiers are skipped and their names listed in [`Query::ignored`];
/// otherwise they are errors. Invalid values are errors in both modes.
///
/// # Errors
///
/// [`SearchError`], whose messages never contain a value.
pub fn parse_query(
    rtype: ResourceType,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<Query, SearchError> {
    let mut query = Query::with_clauses(Vec::new());
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, value) in pairs {
        let (base, modifier) = match name.split_once(':') {
            Some((base, modifier)) => (base, Some(modifier)),
            None => (name.as_str(), None),
        };
        if let Some(control) = control_name(base) {
            if control == "_format" {
                continue;
            }
            if modifier.is_some() {
                if lenient {
                    query.ignored.push(name.clone());
                    continue;
                }
                return Err(SearchError::UnknownModifier { param: control });
            }
            if !matches!(control, "_include" | "_revinclude") {
                if seen.contains(&control) {
                    return Err(invalid(control, "repeated parameter"));
                }
                seen.push(control);
            }
            apply_control(rtype, &mut query, control, value)?;
            continue;
        }
        if name == "_has" || name.starts_with("_has:") {
            if let Some(has) = parse_has(rtype, name, value, lenient)? {
                query.has.push(has);
            } else {
                query.ignored.push(name.clone());
            }
            continue;
        }
        if name.contains('.') {
            if let Some(chain) = parse_chain(rtype, name, value, lenient)? {
                query.chains.push(chain);
            } else {
                query.ignored.push(name.clone());
            }
            continue;
        }
        let Some(def) = param(rtype, base) else {
            if lenient {
                query.ignored.push(name.clone());
                continue;
            }
            return Err(match left_out(rtype, base) {
                Some(s) => SearchError::Unsupported {
                    param: &s.code,
                    reason: &s.reason,
                },
                None => SearchError::unknown(rtype, name),
            });
        };
        match parse_clause(def, modifier, value)? {
            Some(clause) => query.clauses.push(clause),
            None if lenient => query.ignored.push(name.clone()),
            None => return Err(SearchError::UnknownModifier { param: def.name }),
        }
    }
    // A count needs a total: `_summary=count` asks for an accurate one unless `_total` says
    // an estimate is enough.
    if query.summary_count && query.total == Total::None {
        query.total = Total::Accurate;
    }
    Ok(query)
}

/// One parameter occurrence `def[:modifier]=value[,value]`; `None` when the modifier is unknown
/// or not supported for `def`.
pub(super) fn parse_clause(
    def: &'static ParamDef,
    modifier: Option<&str>,
    value: &str,
) -> Result<Option<Clause>, SearchError> {
    let Some(parsed_modifier) = parse_modifier(def, modifier) else {
        return Ok(None);
    };
    let pieces = split_unescaped(value, ',');
    if pieces.len() > MAX_VALUES_PER_PARAMETER {
        return Err(invalid(def.name, "too many values"));
    }
    let values = pieces
        .into_iter()
        .map(|piece| {
            parse_value(def, parsed_modifier, piece)
                .map(SearchValue)
                .map_err(|reason| invalid(def.name, reason))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Clause {
        param: def,
        modifier: modifier.map(str::to_owned),
        values,
    }))
}

pub(super) fn parse_value(
    def: &'static ParamDef,
    modifier: Modifier,
    raw: &str,
) -> Result<Sv, &'static str> {
    if raw.is_empty() {
        return Err("empty value");
    }
    if modifier == Modifier::Missing {
        return match raw {
            "true" => Ok(Sv::Missing(true)),
            "false" => Ok(Sv::Missing(false)),
            _ => Err("expected true or false"),
        };
    }
    match def.ptype {
        ParamType::Token if modifier == Modifier::OfType => parse_of_type(raw),
        ParamType::Reference if modifier == Modifier::Identifier => match parse_token(def, raw)? {
            Sv::Token { system, code } if !code.is_empty() => Ok(Sv::RefIdentifier {
                system,
                value: code,
            }),
            _ => Err("expected system|value"),
        },
        ParamType::Token if modifier == Modifier::Text => {
            let norm = normalize_string(&unescape(raw));
            if norm.is_empty() {
                return Err("empty value");
            }
            Ok(Sv::Text(norm))
        }
        ParamType::Token => parse_token(def, raw),
        ParamType::String => {
            let raw = unescape(raw);
            let norm = normalize_string(&raw);
            if norm.is_empty() {
                return Err("empty value");
            }
            Ok(Sv::Str { raw, norm })
        }
        ParamType::Reference => parse_reference(def, modifier, &unescape(raw)),
        ParamType::Date => {
            let (prefix, rest) = split_prefix(raw)?;
            let range = parse_date(rest).ok_or("invalid date")?;
            Ok(Sv::Date { prefix, range })
        }
        ParamType::Quantity => parse_quantity(raw),
        ParamType::Number => parse_number_value(raw),
        ParamType::Uri => Ok(Sv::Uri(unescape(raw))),
        ParamType::Composite => parse_composite(def, raw),
        ParamType::Special => parse_near(raw),
    }
}
