//! Chaining (`subject:Patient.name=x`) and reverse chaining (`_has:Observation:patient:code=x`),
//! one level each (R4 3.1.1.4.10 and 3.1.1.4.11).
//!
//! Parsing only: the server resolves a [`Chain`] by searching its target type for
//! [`Chain::inner`] and replacing it with [`Clause::references`] to what it found, and a
//! [`Has`] by searching its source type and replacing it with [`Clause::ids`] of what those
//! resources point to. Both inner searches run as the caller, so they only ever see what the
//! caller may read.
//!
//! Without a `:Type` modifier, a chain's target is the one target type of the reference
//! parameter that has the chained parameter: `Observation?subject.family=x` searches Patients
//! because no other target of `subject` has `family`. When several do, the chain is ambiguous
//! and refused (name the type: `subject:Patient.name=x`).

use super::controls::control_name;
use super::params::{ParamDef, ParamType, param};
use super::parse::parse_clause;
use super::query::{Clause, SearchError, SearchValue, Sv, Sys, invalid};
use crate::{ResourceId, ResourceType};

/// A chained parameter: the search matches resources whose `param` points to a resource of
/// `target` matching `inner`.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The reference parameter of the searched type.
    pub param: &'static ParamDef,
    /// The type the chain searches (one of `param`'s targets).
    pub target: ResourceType,
    /// The condition on `target` (a parameter of `target`).
    pub inner: Clause,
}

/// A `_has` parameter: the search matches resources that some resource of `source` matching
/// `inner` points to through `param`.
#[derive(Clone, Debug)]
pub struct Has {
    /// The type whose resources point to the matches.
    pub source: ResourceType,
    /// The reference parameter of `source` (it can point to the searched type).
    pub param: &'static ParamDef,
    /// The condition on `source` (a parameter of `source`).
    pub inner: Clause,
}

impl Clause {
    /// `param=target/id,...`: references to any of `ids` (of type `target`). With no ids, the
    /// clause matches nothing.
    #[must_use]
    pub fn references(
        param: &'static ParamDef,
        target: ResourceType,
        ids: impl IntoIterator<Item = ResourceId>,
    ) -> Self {
        let values = ids
            .into_iter()
            .map(|id| {
                SearchValue(Sv::Ref {
                    rtype: Some(target),
                    id: id.as_str().to_owned(),
                })
            })
            .collect();
        Self {
            param,
            modifier: None,
            values,
        }
    }

    /// `_id=id,...` of `rtype`: the resources with one of `ids` (none: nothing matches).
    #[must_use]
    pub fn ids(rtype: ResourceType, ids: impl IntoIterator<Item = ResourceId>) -> Option<Self> {
        let param = param(rtype, "_id")?;
        let values = ids
            .into_iter()
            .map(|id| {
                SearchValue(Sv::Token {
                    system: Sys::Any,
                    code: id.as_str().to_owned(),
                })
            })
            .collect();
        Some(Self {
            param,
            modifier: None,
            values,
        })
    }
}

const ONE_LEVEL: &str = "one level of chaining is supported";

/// `ref[:Type].name[:modifier]` = `value`. `None`: unknown in lenient mode (ignore it).
pub(super) fn parse_chain(
    rtype: ResourceType,
    name: &str,
    value: &str,
    lenient: bool,
) -> Result<Option<Chain>, SearchError> {
    let unknown = |e: SearchError| if lenient { Ok(None) } else { Err(e) };
    let (head, inner_name) = name.split_once('.').unwrap_or((name, ""));
    let (base, type_modifier) = match head.split_once(':') {
        Some((base, t)) => (base, Some(t)),
        None => (head, None),
    };
    let Some(def) = param(rtype, base) else {
        return unknown(SearchError::unknown(rtype, name));
    };
    if def.ptype != ParamType::Reference {
        return Err(invalid(
            def.name,
            "only a reference parameter can be chained",
        ));
    }
    if !def.refers_by_id() {
        return Err(invalid(
            def.name,
            "a reference by canonical URL cannot be chained",
        ));
    }
    if inner_name.contains('.') || inner_name.starts_with("_has") {
        return Err(invalid(def.name, ONE_LEVEL));
    }
    let (inner_base, inner_modifier) = split_modifier(inner_name);
    if inner_base.is_empty() || control_name(inner_base).is_some() {
        return Err(invalid(
            def.name,
            "a chain ends in a search parameter of the target type",
        ));
    }
    let target = match type_modifier {
        Some(t) => match ResourceType::parse(t).ok().filter(|t| def.targets_type(*t)) {
            Some(t) => t,
            None => return unknown(SearchError::UnknownModifier { param: def.name }),
        },
        None => {
            let mut having = def.targets().filter(|t| param(*t, inner_base).is_some());
            match (having.next(), having.next()) {
                (Some(t), None) => t,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        def.name,
                        "the chain is ambiguous: name the target type (parameter:Type.name)",
                    ));
                }
                (None, _) => return unknown(unknown_in_chain(def)),
            }
        }
    };
    let Some(inner_def) = param(target, inner_base) else {
        return unknown(unknown_in_chain(def));
    };
    match parse_clause(inner_def, inner_modifier, value)? {
        Some(inner) => Ok(Some(Chain {
            param: def,
            target,
            inner,
        })),
        None => unknown(SearchError::UnknownModifier {
            param: inner_def.name,
        }),
    }
}

fn unknown_in_chain(def: &'static ParamDef) -> SearchError {
    invalid(
        def.name,
        "the chained parameter is not a search parameter of the target type",
    )
}

/// `_has:Source:reference:name[:modifier]` = `value`, searching `rtype`. `None`: unknown in
/// lenient mode (ignore it).
pub(super) fn parse_has(
    rtype: ResourceType,
    name: &str,
    value: &str,
    lenient: bool,
) -> Result<Option<Has>, SearchError> {
    const HAS: &str = "_has";
    let unknown = |reason| {
        if lenient {
            Ok(None)
        } else {
            Err(invalid(HAS, reason))
        }
    };
    let mut parts = name.splitn(4, ':').skip(1);
    let (Some(source), Some(reference), Some(inner_name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(HAS, "expected _has:Type:reference:parameter"));
    };
    if inner_name.starts_with("_has") || inner_name.contains('.') {
        return Err(invalid(HAS, ONE_LEVEL));
    }
    let (inner_base, inner_modifier) = split_modifier(inner_name);
    if inner_base.is_empty() || control_name(inner_base).is_some() {
        return Err(invalid(
            HAS,
            "_has ends in a search parameter of the source type",
        ));
    }
    let Ok(source) = ResourceType::parse(source) else {
        return unknown("unknown resource type");
    };
    let Some(def) =
        param(source, reference).filter(|d| d.ptype == ParamType::Reference && d.refers_by_id())
    else {
        return unknown("not a reference parameter of the source type");
    };
    if !def.targets_type(rtype) {
        return Err(invalid(
            HAS,
            "the reference parameter cannot point to the searched type",
        ));
    }
    let Some(inner_def) = param(source, inner_base) else {
        return unknown("not a search parameter of the source type");
    };
    match parse_clause(inner_def, inner_modifier, value)? {
        Some(inner) => Ok(Some(Has {
            source,
            param: def,
            inner,
        })),
        None if lenient => Ok(None),
        None => Err(SearchError::UnknownModifier {
            param: inner_def.name,
        }),
    }
}

/// `name[:modifier]`.
fn split_modifier(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    }
}
