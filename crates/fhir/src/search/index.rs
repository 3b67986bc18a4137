//! Index keys: what the server stores (as keyed HMACs) for each parameter of a resource.

use std::collections::BTreeSet;

use serde_json::Value;

use super::params::{ParamDef, ParamType, is_id, params};
use super::{composite, date, near, quantity, reference, string, token, uri};
use crate::ResourceType;

/// Every `(parameter name, index key)` of a resource, for the parameters of `rtype` that keep
/// their own rows (including `_id` and `_lastUpdated`; not those answered from another's rows,
/// see [`ParamDef::stored_as`]), deduplicated, in a deterministic order (parameters in
/// definition order, keys sorted). See the module documentation for the key scheme.
#[must_use]
pub fn index_keys(rtype: ResourceType, resource: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for def in params(rtype).into_iter().filter(|d| d.stored_as == d.name) {
        for key in param_index_keys(def, resource) {
            out.push((def.name, key));
        }
    }
    out
}

pub(super) fn param_index_keys(def: &ParamDef, resource: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if is_id(def) {
        return keys;
    }
    match def.ptype {
        ParamType::Token => token::index_keys(def, resource, &mut keys),
        ParamType::Reference => reference::index_keys(def, resource, &mut keys),
        ParamType::String => string::index_keys(def, resource, &mut keys),
        ParamType::Date => date::index_keys(def, resource, &mut keys),
        ParamType::Quantity => quantity::index_keys(def, resource, &mut keys),
        ParamType::Number => uri::number_index_keys(def, resource, &mut keys),
        ParamType::Uri => uri::uri_index_keys(def, resource, &mut keys),
        ParamType::Composite => composite::index_keys(def, resource, &mut keys),
        ParamType::Special => near::index_keys(def, resource, &mut keys),
    }
    keys
}
