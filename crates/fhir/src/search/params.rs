//! Parameter definitions: the search parameters of each resource type, where their values are
//! and what FHIR datatype they have. The definitions are R4's own ([`super::definitions`]).

use serde_json::Value;

use super::definitions::registry;
use crate::ResourceType;

/// The type of a search parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// Codes, identifiers, contact points.
    Token,
    /// References to other resources.
    Reference,
    /// Names and other text.
    String,
    /// Dates, date-times, instants, Periods, Timings.
    Date,
    /// Quantities (number and unit).
    Quantity,
    /// Numbers.
    Number,
    /// URIs (matched whole, or by `:above`/`:below`).
    Uri,
    /// Several values that one element must hold together (`code-value-quantity`).
    Composite,
    /// R4's `special` type: `Location?near` (a distance from a point).
    Special,
}

impl ParamType {
    /// The R4 name of the type (`token`, `reference`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Reference => "reference",
            Self::String => "string",
            Self::Date => "date",
            Self::Quantity => "quantity",
            Self::Number => "number",
            Self::Uri => "uri",
            Self::Composite => "composite",
            Self::Special => "special",
        }
    }
}

/// A search parameter of a resource type.
#[derive(Debug)]
pub struct ParamDef {
    /// The parameter's name, e.g. `birthdate`.
    pub name: &'static str,
    /// Its type.
    pub ptype: ParamType,
    pub(super) paths: Vec<Path>,
    pub(super) targets: Vec<ResourceType>,
    /// The FHIRPath expression it was compiled from (R4's, as published).
    pub expression: String,
    /// The canonical URL of its R4 SearchParameter definition.
    pub url: String,
    /// The parameter whose index rows answer this one: itself, or one whose paths hold all of
    /// this one's (`patient` is answered from `subject`'s rows, `code` from `combo-code`'s), so
    /// that every key of this one is a key of that one (see `definitions::assign_hosts`).
    pub stored_as: &'static str,
    /// A composite's components, in order: definitions whose paths start at each of the
    /// composite's base elements (its `paths`). Empty for other types.
    pub(super) components: Vec<ParamDef>,
}

/// Where a parameter's values are and what FHIR datatype they have.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Path {
    pub(super) segs: Vec<Seg>,
    pub(super) kind: Kind,
}

/// One step of a path from the resource root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    /// A JSON member (arrays are flattened).
    Member(String),
    /// The `n`th value so far (FHIRPath `[n]`).
    Index(usize),
    /// References whose literal target is of this type (`where(resolve() is T)`).
    RefersTo(ResourceType),
    /// Values whose string member equals the literal (`where(system = 'email')`).
    Where(String, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A primitive `code`, `id`, `string`, `uri` or `boolean` (token with an implicit system).
    Code,
    Coding,
    Concept,
    Identifier,
    /// `ContactPoint` with `system = email`.
    Email,
    /// `ContactPoint` with `system = phone`.
    Phone,
    /// Any `ContactPoint` (its value, normalized by its own system).
    Contact,
    Reference,
    /// A `canonical` (or `uri`) element of a reference parameter: a URL, maybe `url|version`.
    Canonical,
    HumanName,
    Address,
    Str,
    /// `date`, `dateTime` or `instant`.
    Date,
    Period,
    Timing,
    Quantity,
    /// A `Range` (low and high, either may be absent) in a quantity or number parameter.
    Range,
    Number,
    Uri,
    /// A boolean computed from the resource (a token `true` or `false`).
    Boolean(Boolean),
    /// A base element of a composite parameter (the resource, or `Observation.component`).
    Element,
    /// A `Location.position` (latitude and longitude, WGS84).
    Position,
}

/// The boolean FHIRPath of a definition, compiled (`deceased.exists() and deceased != false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Boolean {
    And(Box<Boolean>, Box<Boolean>),
    /// Some value at one of the paths.
    Exists(Vec<Vec<Seg>>),
    /// Some value at the paths, and none equal to the literal.
    NotEqual(Vec<Vec<Seg>>, Value),
}

/// The search parameter `name` of `rtype`.
#[must_use]
pub fn param(rtype: ResourceType, name: &str) -> Option<&'static ParamDef> {
    registry()
        .by_type
        .get(&rtype)?
        .iter()
        .find(|def| def.name == name)
}

/// All search parameters of `rtype`, `_id` and `_lastUpdated` first.
#[must_use]
pub fn params(rtype: ResourceType) -> Vec<&'static ParamDef> {
    registry()
        .by_type
        .get(&rtype)
        .map(|defs| defs.iter().collect())
        .unwrap_or_default()
}

/// Whether `def` is one of `rtype`'s parameters (the same definition).
pub(super) fn belongs(rtype: ResourceType, def: &ParamDef) -> bool {
    registry()
        .by_type
        .get(&rtype)
        .is_some_and(|defs| defs.iter().any(|own| std::ptr::eq(own, def)))
}

impl ParamDef {
    /// The resource types a reference parameter may point to (empty for other types).
    pub fn targets(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.targets.iter().copied()
    }

    pub(super) fn targets_type(&self, rtype: ResourceType) -> bool {
        self.targets.contains(&rtype)
    }

    /// Whether some path holds Codings, CodeableConcepts or Identifiers (which have text).
    pub(super) fn has_coded_tokens(&self) -> bool {
        self.paths
            .iter()
            .any(|p| matches!(p.kind, Kind::Coding | Kind::Concept | Kind::Identifier))
    }

    /// Whether some path holds Identifiers (for `:of-type`).
    pub(super) fn has_identifiers(&self) -> bool {
        self.paths.iter().any(|p| p.kind == Kind::Identifier)
    }

    /// The contact-point kind whose normalization applies to this parameter's codes.
    /// Whether a path of this (reference) parameter holds literal references (`Type/id`), which
    /// chains, `_has` and `_include` follow; canonical URLs they do not.
    #[must_use]
    pub fn refers_by_id(&self) -> bool {
        self.paths.iter().any(|p| p.kind == Kind::Reference)
    }

    /// Whether a path of this (reference) parameter holds canonical URLs.
    pub(super) fn has_canonical(&self) -> bool {
        self.paths.iter().any(|p| p.kind == Kind::Canonical)
    }

    pub(super) fn contact_kind(&self) -> Option<&Kind> {
        self.paths
            .iter()
            .map(|p| &p.kind)
            .find(|k| matches!(k, Kind::Email | Kind::Phone))
    }

    /// The top-level members of the resource its values come from.
    pub(super) fn top_members(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for p in &self.paths {
            if p.kind == Kind::Element && p.segs.is_empty() {
                // A composite over the whole resource: its components' members.
                out.extend(self.components.iter().flat_map(ParamDef::top_members));
                continue;
            }
            let booleans = match &p.kind {
                Kind::Boolean(b) => b.paths(),
                _ => Vec::new(),
            };
            out.extend(std::iter::once(&p.segs).chain(booleans).filter_map(
                |segs| match segs.first() {
                    Some(Seg::Member(m)) => Some(m.as_str()),
                    _ => None,
                },
            ));
        }
        out
    }
}

impl Boolean {
    fn paths(&self) -> Vec<&Vec<Seg>> {
        match self {
            Self::And(a, b) => a.paths().into_iter().chain(b.paths()).collect(),
            Self::Exists(paths) | Self::NotEqual(paths, _) => paths.iter().collect(),
        }
    }
}

pub(super) fn is_id(def: &ParamDef) -> bool {
    def.name == "_id"
}
