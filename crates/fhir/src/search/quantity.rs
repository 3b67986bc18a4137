//! Quantity parameters: a number with optional units (no unit conversion), or a `Range` of them
//! (also in number parameters: `RiskAssessment?probability`).

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

/// A `Range`: its bounds that have a numeric value (an absent one is unbounded).
pub(super) struct QtyRange<'a> {
    pub(super) low: Option<Qty<'a>>,
    pub(super) high: Option<Qty<'a>>,
}

impl QtyRange<'_> {
    pub(super) fn bounds(&self) -> (Option<Dec>, Option<Dec>) {
        (
            self.low.as_ref().map(|q| q.value),
            self.high.as_ref().map(|q| q.value),
        )
    }

    /// Whether the units asked for are those of either bound.
    pub(super) fn units_match(&self, units: &Units) -> bool {
        self.low
            .iter()
            .chain(&self.high)
            .any(|q| units_match(units, q))
    }
}

/// A quantity with a numeric value.
fn quantity(value: &Value) -> Option<Qty<'_>> {
    let number = match value.get("value") {
        Some(Value::Number(n)) => parse_number(&n.to_string()).and_then(|n| n.exact_dec()),
        _ => None,
    }?;
    Some(Qty {
        value: number,
        system: str_of(value, "system"),
        code: str_of(value, "code"),
        unit: str_of(value, "unit"),
    })
}

/// The quantities of a quantity parameter that have a numeric value.
pub(super) fn quantities<'a>(def: &ParamDef, resource: &'a Value) -> Vec<Qty<'a>> {
    def.paths
        .iter()
        .filter(|p| p.kind == Kind::Quantity)
        .flat_map(|p| selected(resource, &p.segs))
        .filter_map(quantity)
        .collect()
}

/// The ranges of a quantity or number parameter with at least one bound.
pub(super) fn value_ranges<'a>(def: &ParamDef, resource: &'a Value) -> Vec<QtyRange<'a>> {
    def.paths
        .iter()
        .filter(|p| p.kind == Kind::Range)
        .flat_map(|p| selected(resource, &p.segs))
        .map(|range| QtyRange {
            low: range.get("low").and_then(quantity),
            high: range.get("high").and_then(quantity),
        })
        .filter(|r| r.low.is_some() || r.high.is_some())
        .collect()
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

/// The index keys of a quantity parameter: `u:*` (has a value), `u:|CODE` and `u:|UNIT`; never
/// the magnitude. `value|system|code` is looked up under `u:|CODE` and the system checked after
/// decryption (a unit code is rarely shared by two systems; a third row per quantity cost every
/// write).
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    let ranges = value_ranges(def, resource);
    let bounds = ranges.iter().flat_map(|r| r.low.iter().chain(&r.high));
    for q in quantities(def, resource).iter().chain(bounds) {
        keys.insert("u:*".to_owned());
        if let Some(code) = q.code {
            keys.insert(format!("u:|{code}"));
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
        Units::Code(code) | Units::SystemCode(_, code) => format!("u:|{code}"),
    }]
}
