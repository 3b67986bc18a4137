//! Index keys: what the server stores (as keyed HMACs) for each parameter of a resource.

use std::collections::BTreeSet;

use serde_json::Value;

use super::date::{range_keys, ranges};
use super::params::{ParamDef, ParamType, is_id, params};
use super::quantity::quantities;
use super::reference::reference_values;
use super::string::{MAX_STRING_PREFIX, normalize_string, strings};
use super::token::tokens;
use crate::ResourceType;

/// Every `(parameter name, index key)` of a resource, for all parameters of `rtype` (including
/// `_id` and `_lastUpdated`), deduplicated, in a deterministic order (parameters in definition
/// order, keys sorted). See the module documentation for the key scheme.
#[must_use]
pub fn index_keys(rtype: ResourceType, resource: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for def in params(rtype) {
        for key in param_index_keys(def, resource) {
            out.push((def.name, key));
        }
    }
    out
}

fn param_index_keys(def: &ParamDef, resource: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if is_id(def) {
        return keys;
    }
    match def.ptype {
        ParamType::Token => {
            for tok in tokens(def, resource) {
                if let Some(code) = &tok.code {
                    keys.insert(format!("c:{code}"));
                }
                if tok.implicit {
                    continue;
                }
                if let Some(system) = &tok.system {
                    keys.insert(format!("s:{system}"));
                    if let Some(code) = &tok.code {
                        keys.insert(format!("sc:{system}|{code}"));
                    }
                }
            }
        }
        ParamType::Reference => {
            for (rtype, id) in reference_values(def, resource) {
                keys.insert(format!("r:{rtype}/{id}"));
            }
        }
        ParamType::String => {
            for value in strings(def, resource) {
                let norm = normalize_string(value);
                let mut prefix = String::new();
                for (count, c) in norm.chars().enumerate() {
                    if count >= MAX_STRING_PREFIX {
                        keys.insert(format!("f:{norm}"));
                        break;
                    }
                    prefix.push(c);
                    keys.insert(format!("p:{prefix}"));
                }
            }
        }
        ParamType::Date => {
            for range in ranges(def, resource) {
                range_keys(range, &mut keys);
            }
        }
        ParamType::Quantity => {
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
    }
    keys
}
