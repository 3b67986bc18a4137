//! Composite parameters: `code-value-quantity=http://loinc.org|8480-6$gt100` matches a resource
//! when one base element (the Observation itself, or one of its components) satisfies every
//! component of the value, each by its own type's rules.
//!
//! A composite's components are ordinary parameter definitions whose paths start at the base
//! element (`code`, `valueQuantity`), so each is matched by the same code as a plain parameter,
//! with the base element standing in for the resource. The index holds the first component's
//! keys only (the code of `code-value-quantity`): they bound the candidates, and the exact check
//! after decryption applies the other components within the same element.

use std::collections::BTreeSet;

use serde_json::Value;

use super::candidates::candidate_keys as component_candidate_keys;
use super::extract::selected;
use super::index::param_index_keys;
use super::matching::{clause_matches, has_value};
use super::params::ParamDef;
use super::parse::parse_value;
use super::query::{Clause, SearchValue, Sv};
use super::syntax::{Modifier, split_unescaped};

/// `value$value[$value]`: one value per component, each parsed as its component's type, kept
/// as that component's clause (so that matching a candidate builds nothing).
pub(super) fn parse_composite(def: &'static ParamDef, raw: &str) -> Result<Sv, &'static str> {
    let pieces = split_unescaped(raw, '$');
    if pieces.len() != def.components.len() {
        return Err("expected one value per component, separated by $");
    }
    let clauses = def
        .components
        .iter()
        .zip(pieces)
        .map(|(component, piece)| {
            Ok(Clause {
                param: component,
                modifier: None,
                values: vec![SearchValue(parse_value(component, Modifier::None, piece)?)],
            })
        })
        .collect::<Result<Vec<_>, &'static str>>()?;
    Ok(Sv::Composite(clauses))
}

/// The base elements of a composite parameter in `resource` (the resource itself for a
/// composite over the whole resource).
fn base_elements<'a>(def: &ParamDef, resource: &'a Value) -> Vec<&'a Value> {
    def.paths
        .iter()
        .flat_map(|path| selected(resource, &path.segs))
        .collect()
}

/// Whether one base element of `resource` satisfies every component clause.
pub(super) fn composite_matches(def: &ParamDef, resource: &Value, clauses: &[Clause]) -> bool {
    base_elements(def, resource)
        .into_iter()
        .any(|element| clauses.iter().all(|c| clause_matches(element, c)))
}

/// Whether some base element has a value for every component.
pub(super) fn composite_present(def: &ParamDef, resource: &Value) -> bool {
    base_elements(def, resource).into_iter().any(|element| {
        def.components
            .iter()
            .all(|component| has_value(component, element))
    })
}

/// The index keys of a composite: its first component's keys in every base element.
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    let Some(first) = def.components.first() else {
        return;
    };
    for element in base_elements(def, resource) {
        keys.extend(param_index_keys(first, element));
    }
}

/// The candidate keys of a composite value: its first component clause's.
pub(super) fn candidate_keys(clauses: &[Clause]) -> Option<Vec<String>> {
    let first = clauses.first()?;
    component_candidate_keys(first, first.values.first()?)
}
