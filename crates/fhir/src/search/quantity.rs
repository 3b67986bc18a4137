//! Quantity parameters: a number with optional units (no unit conversion).

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::{selected, str_of};
use super::number::{Dec, parse_number};
use super::params::{Kind, ParamDef};
use super::query::{Sv, Units};
use super::syntax::{split_prefix, split_unescaped, unescape};

pub(super) fn parse_quantity(raw: &str) -> Result<Sv, &'static str> {
    let (prefix, rest) = split_prefix(raw)?;
    let parts = split_unescaped(rest, '|');
    let (number, units) = match parts.as_slice() {
        [number] => (*number, Units::Any),
        [number, system, code] => {
            let system = unescape(system);
            let code = unescape(code);
            let units = match (system.is_empty(), code.is_empty()) {
                (true, true) => Units::Any,
                (false, true) => return Err("a unit system needs a unit code"),
                (true, false) => Units::Code(code),
                (false, false) => Units::SystemCode(system, code),
            };
            (*number, units)
        }
        _ => return Err("malformed quantity"),
    };
    let number = parse_number(number)
        .and_then(|n| n.query_dec())
        .ok_or("invalid number")?;
    Ok(Sv::Quantity {
        prefix,
        number,
        units,
    })
}

pub(super) struct Qty<'a> {
    pub(super) value: Dec,
    pub(super) system: Option<&'a str>,
    pub(super) code: Option<&'a str>,
    pub(super) unit: Option<&'a str>,
}

/// The quantities of a quantity parameter that have a numeric value.
pub(super) fn quantities<'a>(def: &ParamDef, resource: &'a Value) -> Vec<Qty<'a>> {
    let mut out = Vec::new();
    for path in &def.paths {
        if path.kind != Kind::Quantity {
            continue;
        }
        for value in selected(resource, &path.segs) {
            let number = match value.get("value") {
                Some(Value::Number(n)) => parse_number(&n.to_string()).and_then(|n| n.exact_dec()),
                _ => None,
            };
            if let Some(number) = number {
                out.push(Qty {
                    value: number,
                    system: str_of(value, "system"),
                    code: str_of(value, "code"),
                    unit: str_of(value, "unit"),
                });
            }
        }
    }
    out
}

pub(super) fn units_match(units: &Units, q: &Qty<'_>) -> bool {
    match units {
        Units::Any => true,
        Units::Code(code) => q.code == Some(code.as_str()) || q.unit == Some(code.as_str()),
        Units::SystemCode(system, code) => {
            q.system == Some(system.as_str()) && q.code == Some(code.as_str())
        }
    }
}

/// The index keys of a quantity parameter: `u:*` (has a value), `u:SYSTEM|CODE`, `u:|CODE` and
/// `u:|UNIT`; never the magnitude.
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    for q in quantities(def, resource) {
        keys.insert("u:*".to_owned());
        if let Some(code) = q.code {
            keys.insert(format!("u:|{code}"));
            if let Some(system) = q.system {
                keys.insert(format!("u:{system}|{code}"));
            }
        }
        if let Some(unit) = q.unit {
            keys.insert(format!("u:|{unit}"));
        }
    }
}

/// The candidate key of a quantity value: its units' key (see
/// [`candidate_keys`](super::candidate_keys)).
pub(super) fn candidate_keys(units: &Units) -> Vec<String> {
    vec![match units {
        Units::Any => "u:*".to_owned(),
        Units::Code(code) => format!("u:|{code}"),
        Units::SystemCode(system, code) => format!("u:{system}|{code}"),
    }]
}
