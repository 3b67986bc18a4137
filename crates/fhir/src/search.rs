//! FHIR R4 search semantics, without storage: parameter definitions, query parsing, blind-index
//! keys and the exact matching predicate.
//!
//! # How the server uses this module
//!
//! 1. On every write, [`index_keys`] extracts `(parameter name, index key)` pairs from the
//!    resource; the server stores a keyed HMAC of each (namespaced by type and parameter name).
//! 2. A search is parsed with [`parse_query`]. Each [`Clause`] (repeated parameters: AND) holds
//!    [`SearchValue`]s (comma-separated: OR).
//! 3. For each value, [`candidate_keys`] returns keys of which every truly matching resource has
//!    at least one among its index keys for that parameter (no false negatives, ever), or `None`
//!    when no bounded key set exists ("scan every resource of the type"). A clause's candidates
//!    are the union over its values (any `None` makes the clause `None`); the query's candidates
//!    are the intersection over its clauses (ignoring `None` clauses; all `None`: scan).
//! 4. Every candidate is decrypted and [`matches()`] is applied to every clause: false positives
//!    of the index never reach a result.
//!
//! # Index keys (what the blind index reveals)
//!
//! Keys are plain strings before the server's HMAC; the index reveals equality and frequency of
//! these keys within a parameter, never their content.
//!
//! * token: `c:CODE` (any system), `s:SYSTEM` and `sc:SYSTEM|CODE` for a Coding or Identifier
//!   with a system. Codes, identifier values, e-mail addresses (ASCII-lowercased) and phone
//!   numbers (without spaces, `-`, `.`, `(`, `)`) are revealed as equality classes.
//! * reference: `r:Type/id`.
//! * string: each value is normalized ([`normalize_string`]); `p:` + every prefix of 1 to
//!   [`MAX_STRING_PREFIX`] characters, and `f:` + the whole normalized value when it is longer.
//!   Reveals equality of normalized prefixes (e.g. how many patients' family names start with
//!   "mü" = "mu").
//! * date: every value is a UTC range `[low, high)` (a date without a time zone is a UTC day).
//!   A bounded range gets `y:YYYY` for every year it touches; plus `m:YYYY-MM` for every month
//!   if it touches at most [`MAX_MONTH_BUCKETS`] months; plus `d:YYYY-MM-DD` for every day if
//!   it touches at most [`MAX_DAY_BUCKETS`] days. Years before [`MIN_BUCKET_YEAR`] all map to
//!   `y:-`, years after [`MAX_BUCKET_YEAR`] to `y:+` (so a value has at most 403 year keys).
//!   A Period open at the end gets only the year key of its start and `y:+`; open at the start,
//!   `y:-` and the year key of its end. Reveals equality of years, months and days.
//! * quantity: `u:*` (has a value), `u:SYSTEM|CODE`, `u:|CODE` and `u:|UNIT`. Reveals units,
//!   never magnitudes.
//!
//! The same key string can appear under several parameters (`subject` and `patient` of an
//! Observation both give `r:Patient/p1`): the server must namespace keys by type and parameter
//! name before hashing. `_lastUpdated` is indexed like any parameter. `_id` is not indexed: the id
//! is the resource's key in the store, so [`id_candidates`] gives an `_id` clause's candidates
//! directly (an index row per resource with a random token was a random page per write).
//!
//! Candidate keys: token `code` and `|code` give `c:code`; `system|code` gives `sc:system|code`
//! (plus `c:code` for parameters over primitive codes); `system|` gives `s:system`. A bare
//! reference id gives one `r:Type/id` per target type. A string gives `p:` + its first
//! [`MAX_STRING_PREFIX`] normalized characters (`:exact` of a longer value: `f:` + all of it).
//! A quantity gives its unit key, or `u:*`. Dates: `eq` gives the day keys of the query range if
//! it touches at most 7 days, else its month keys if it touches at most 24 months, else its year
//! keys; `ap` gives the range's year keys plus `y:-` and `y:+`; `gt`, `sa` and `ge` give every
//! year key from the query's year up to `y:+`, `lt`, `eb` and `le` every one from `y:-` (so up
//! to 403 keys per value; with [`MAX_VALUES_PER_PARAMETER`] values, 40 300 for a clause).
//! `None` (no prefilter): `:missing`, `:not`, `:text`, `:contains` and date `ne`.
//!
//! # Limits and choices
//!
//! * Supported modifiers: `:missing` (all types), `:not` and `:text` (token), `:exact` and
//!   `:contains` (string), `:Type` (reference). No chaining, `_has`, `:of-type`, `:in`,
//!   `:below`, `:above`, `:identifier`, no unit conversion, no composite parameters.
//! * Token: for `code` elements (`gender`, `status`, `_id`) and ContactPoints (`email`, `phone`)
//!   the system part of a query is ignored (their system is implicit). `:not` matches resources
//!   having no token equal to any of the values (including resources without the element).
//!   `:text` is a case- and accent-insensitive prefix match on `CodeableConcept.text`,
//!   `Coding.display` and `Identifier.type.text`.
//! * Date: prefix semantics of the R4 search specification; `ap` means "the ranges overlap".
//!   Timing values count as the range from their first to their last event (and
//!   `repeat.boundsPeriod`).
//! * Quantity/number: `eq`, `ne`, `sa`, `eb` and `ap` use the implicit precision of the query
//!   number (`5.4` is `[5.35, 5.45)`, `1e2` is `[50, 150)`); `gt`, `lt`, `ge`, `le` compare with
//!   the exact number (as in the R4 examples). `ap` also accepts values within 10 % of the
//!   number. The resource's value is exact; its `comparator` is ignored.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::ResourceType;
use crate::types::is_valid_id;

/// Longest normalized string prefix, in characters, stored as an index key.
pub const MAX_STRING_PREFIX: usize = 12;
/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: u32 = 20;
/// Largest page size; larger `_count` values are clamped to it.
pub const MAX_COUNT: u32 = 1000;
/// At most this many comma-separated values in one parameter.
pub const MAX_VALUES_PER_PARAMETER: usize = 100;
/// Years before this one share the year key `y:-`.
pub const MIN_BUCKET_YEAR: i64 = 1800;
/// Years after this one share the year key `y:+`.
pub const MAX_BUCKET_YEAR: i64 = 2200;
/// A bounded date range touching at most this many days gets day keys.
pub const MAX_DAY_BUCKETS: i64 = 62;
/// A bounded date range touching at most this many months gets month keys.
pub const MAX_MONTH_BUCKETS: i64 = 24;
/// An `eq` date query touching at most this many days is looked up by day keys.
const EQ_DAY_CANDIDATES: i64 = 7;
/// Parameters that `_sort` accepts (when the type has them).
const SORTABLE: [&str; 4] = ["_lastUpdated", "date", "birthdate", "_id"];
/// The code system of the `SUBSETTED` tag.
const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

// ------------------------------------------------------------------------------------------
// Parameter definitions
// ------------------------------------------------------------------------------------------

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
}

/// A search parameter of a resource type.
#[derive(Debug)]
pub struct ParamDef {
    /// The parameter's name, e.g. `birthdate`.
    pub name: &'static str,
    /// Its type.
    pub ptype: ParamType,
    paths: &'static [Path],
    targets: &'static [&'static str],
}

/// Where a parameter's values are and what FHIR datatype they have.
#[derive(Debug)]
struct Path {
    segs: &'static [&'static str],
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A primitive `code`, `id`, `string` or `boolean` (token with an implicit system).
    Code,
    Coding,
    Concept,
    Identifier,
    /// `ContactPoint` with `system = email`.
    Email,
    /// `ContactPoint` with `system = phone`.
    Phone,
    Reference,
    HumanName,
    Str,
    /// `date`, `dateTime` or `instant`.
    Date,
    Period,
    Timing,
    Quantity,
}

macro_rules! path {
    ($kind:ident $(, $seg:literal)+) => {
        Path { segs: &[$($seg),+], kind: Kind::$kind }
    };
}

macro_rules! pdef {
    ($name:literal, $ptype:ident, [$($path:expr),+ $(,)?]) => {
        ParamDef { name: $name, ptype: ParamType::$ptype, paths: &[$($path),+], targets: &[] }
    };
    ($name:literal, $ptype:ident, [$($path:expr),+ $(,)?], $targets:expr) => {
        ParamDef { name: $name, ptype: ParamType::$ptype, paths: &[$($path),+], targets: $targets }
    };
}

const TO_PATIENT: &[&str] = &["Patient"];
const OBSERVATION_SUBJECT: &[&str] = &["Group", "Device", "Patient", "Location"];

static COMMON: [ParamDef; 2] = [
    pdef!("_id", Token, [path!(Code, "id")]),
    pdef!("_lastUpdated", Date, [path!(Date, "meta", "lastUpdated")]),
];

static PATIENT_PARAMS: [ParamDef; 8] = [
    pdef!("identifier", Token, [path!(Identifier, "identifier")]),
    pdef!("name", String, [path!(HumanName, "name")]),
    pdef!("family", String, [path!(Str, "name", "family")]),
    pdef!("given", String, [path!(Str, "name", "given")]),
    pdef!("birthdate", Date, [path!(Date, "birthDate")]),
    pdef!("gender", Token, [path!(Code, "gender")]),
    pdef!("email", Token, [path!(Email, "telecom")]),
    pdef!("phone", Token, [path!(Phone, "telecom")]),
];

static OBSERVATION_PARAMS: [ParamDef; 7] = [
    pdef!(
        "subject",
        Reference,
        [path!(Reference, "subject")],
        OBSERVATION_SUBJECT
    ),
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!("category", Token, [path!(Concept, "category")]),
    pdef!(
        "date",
        Date,
        [
            path!(Date, "effectiveDateTime"),
            path!(Period, "effectivePeriod"),
            path!(Timing, "effectiveTiming"),
            path!(Date, "effectiveInstant"),
        ]
    ),
    pdef!("status", Token, [path!(Code, "status")]),
    pdef!(
        "value-quantity",
        Quantity,
        [path!(Quantity, "valueQuantity")]
    ),
];

static CONDITION_PARAMS: [ParamDef; 4] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!("clinical-status", Token, [path!(Concept, "clinicalStatus")]),
    pdef!(
        "onset-date",
        Date,
        [path!(Date, "onsetDateTime"), path!(Period, "onsetPeriod")]
    ),
];

static ENCOUNTER_PARAMS: [ParamDef; 4] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("date", Date, [path!(Period, "period")]),
    pdef!("status", Token, [path!(Code, "status")]),
    pdef!("class", Token, [path!(Coding, "class")]),
];

static MEDICATION_REQUEST_PARAMS: [ParamDef; 4] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("status", Token, [path!(Code, "status")]),
    pdef!("code", Token, [path!(Concept, "medicationCodeableConcept")]),
    pdef!("authoredon", Date, [path!(Date, "authoredOn")]),
];

static ALLERGY_INTOLERANCE_PARAMS: [ParamDef; 2] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "patient")],
        TO_PATIENT
    ),
    pdef!(
        "code",
        Token,
        [
            path!(Concept, "code"),
            path!(Concept, "reaction", "substance")
        ]
    ),
];

static PROCEDURE_PARAMS: [ParamDef; 3] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!(
        "date",
        Date,
        [
            path!(Date, "performedDateTime"),
            path!(Period, "performedPeriod")
        ]
    ),
];

static IMMUNIZATION_PARAMS: [ParamDef; 3] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "patient")],
        TO_PATIENT
    ),
    pdef!("vaccine-code", Token, [path!(Concept, "vaccineCode")]),
    pdef!("date", Date, [path!(Date, "occurrenceDateTime")]),
];

static DIAGNOSTIC_REPORT_PARAMS: [ParamDef; 4] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!(
        "date",
        Date,
        [
            path!(Date, "effectiveDateTime"),
            path!(Period, "effectivePeriod")
        ]
    ),
    pdef!("category", Token, [path!(Concept, "category")]),
];

static DOCUMENT_REFERENCE_PARAMS: [ParamDef; 3] = [
    pdef!(
        "patient",
        Reference,
        [path!(Reference, "subject")],
        TO_PATIENT
    ),
    pdef!("type", Token, [path!(Concept, "type")]),
    pdef!("date", Date, [path!(Date, "date")]),
];

static PRACTITIONER_PARAMS: [ParamDef; 2] = [
    pdef!("identifier", Token, [path!(Identifier, "identifier")]),
    pdef!("name", String, [path!(HumanName, "name")]),
];

static ORGANIZATION_PARAMS: [ParamDef; 2] = [
    pdef!("identifier", Token, [path!(Identifier, "identifier")]),
    pdef!("name", String, [path!(Str, "name"), path!(Str, "alias")]),
];

/// The type-specific parameters (without `_id` and `_lastUpdated`).
fn type_params(rtype: ResourceType) -> &'static [ParamDef] {
    match rtype.as_str() {
        "Patient" => &PATIENT_PARAMS,
        "Observation" => &OBSERVATION_PARAMS,
        "Condition" => &CONDITION_PARAMS,
        "Encounter" => &ENCOUNTER_PARAMS,
        "MedicationRequest" => &MEDICATION_REQUEST_PARAMS,
        "AllergyIntolerance" => &ALLERGY_INTOLERANCE_PARAMS,
        "Procedure" => &PROCEDURE_PARAMS,
        "Immunization" => &IMMUNIZATION_PARAMS,
        "DiagnosticReport" => &DIAGNOSTIC_REPORT_PARAMS,
        "DocumentReference" => &DOCUMENT_REFERENCE_PARAMS,
        "Practitioner" => &PRACTITIONER_PARAMS,
        "Organization" => &ORGANIZATION_PARAMS,
        _ => &[],
    }
}

/// The search parameter `name` of `rtype` (`_id` and `_lastUpdated` exist for every type).
#[must_use]
pub fn param(rtype: ResourceType, name: &str) -> Option<&'static ParamDef> {
    COMMON
        .iter()
        .chain(type_params(rtype))
        .find(|def| def.name == name)
}

/// All search parameters of `rtype`, `_id` and `_lastUpdated` first.
#[must_use]
pub fn params(rtype: ResourceType) -> Vec<&'static ParamDef> {
    COMMON.iter().chain(type_params(rtype)).collect()
}

/// Whether `def` is one of `rtype`'s parameters (the same static definition).
fn belongs(rtype: ResourceType, def: &ParamDef) -> bool {
    COMMON
        .iter()
        .chain(type_params(rtype))
        .any(|own| std::ptr::eq(own, def))
}

impl ParamDef {
    /// The resource types a reference parameter may point to (empty for other types).
    pub fn targets(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.targets
            .iter()
            .filter_map(|name| ResourceType::parse(name).ok())
    }

    fn targets_type(&self, rtype: ResourceType) -> bool {
        self.targets.contains(&rtype.as_str())
    }

    /// Whether some path holds tokens whose system is implicit (codes, contact points).
    fn has_implicit_tokens(&self) -> bool {
        self.paths
            .iter()
            .any(|p| matches!(p.kind, Kind::Code | Kind::Email | Kind::Phone))
    }

    /// Whether some path holds Codings, CodeableConcepts or Identifiers (which have text).
    fn has_coded_tokens(&self) -> bool {
        self.paths
            .iter()
            .any(|p| matches!(p.kind, Kind::Coding | Kind::Concept | Kind::Identifier))
    }

    /// The contact-point kind whose normalization applies to this parameter's codes.
    fn contact_kind(&self) -> Option<Kind> {
        self.paths
            .iter()
            .map(|p| p.kind)
            .find(|k| matches!(k, Kind::Email | Kind::Phone))
    }
}

// ------------------------------------------------------------------------------------------
// Queries
// ------------------------------------------------------------------------------------------

/// Whether and how to count the total number of matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Total {
    /// No total (the default, unless `_summary=count`).
    #[default]
    None,
    /// An estimate is enough.
    Estimate,
    /// The exact number (implied by `_summary=count`).
    Accurate,
}

/// A parsed search.
#[derive(Clone, Debug)]
pub struct Query {
    /// Conditions that must all hold (repeated parameters: AND).
    pub clauses: Vec<Clause>,
    /// Page size (`_count`, default [`DEFAULT_COUNT`], at most [`MAX_COUNT`], may be 0).
    pub count: u32,
    /// Sort keys, most significant first (`_sort`).
    pub sort: Vec<SortKey>,
    /// `_summary=count`: only the total is wanted.
    pub summary_count: bool,
    /// `_total` (with `_summary=count`, at least [`Total::Accurate`] unless `estimate`).
    pub total: Total,
    /// `_include`s.
    pub include: Vec<Include>,
    /// `_revinclude`s.
    pub revinclude: Vec<Include>,
    /// `_elements` (top-level element names), if given.
    pub elements: Option<Vec<String>>,
    /// The opaque paging cursor `_page`, carried through unchanged.
    pub page: Option<String>,
    /// Names (as written, with modifier) of parameters ignored in lenient mode. They are client
    /// input: do not log them.
    pub ignored: Vec<String>,
}

/// One search parameter occurrence: the resource matches if any value matches.
#[derive(Clone, Debug)]
pub struct Clause {
    /// The parameter.
    pub param: &'static ParamDef,
    /// The modifier as written (already validated), e.g. `exact` or `Patient`.
    pub modifier: Option<String>,
    /// The values (comma-separated: OR).
    pub values: Vec<SearchValue>,
}

/// A parsed search value. Its `Debug` output does not show the value (it may be patient data).
#[derive(Clone)]
pub struct SearchValue(Sv);

impl fmt::Debug for SearchValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Sv::Token { .. } => "token",
            Sv::Text(_) => "text",
            Sv::Str { .. } => "string",
            Sv::Ref { .. } => "reference",
            Sv::Date { .. } => "date",
            Sv::Quantity { .. } => "quantity",
            Sv::Missing(_) => "missing",
        };
        write!(f, "SearchValue({kind}, ..)")
    }
}

#[derive(Clone)]
enum Sv {
    Token {
        system: Sys,
        code: String,
    },
    /// A normalized string for token `:text`.
    Text(String),
    /// A string value: as written (for `:exact`) and normalized.
    Str {
        raw: String,
        norm: String,
    },
    /// A reference: type (when known) and id.
    Ref {
        rtype: Option<ResourceType>,
        id: String,
    },
    Date {
        prefix: Prefix,
        range: Range,
    },
    Quantity {
        prefix: Prefix,
        number: Dec,
        units: Units,
    },
    /// `:missing=true` (`true`) or `:missing=false`.
    Missing(bool),
}

/// The system part of a token query.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sys {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    Absent,
    /// `system|code` or `system|`.
    Is(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Units {
    Any,
    /// `number||code`: code or unit.
    Code(String),
    /// `number|system|code`.
    SystemCode(String, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A sort key of `_sort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortKey {
    /// `_lastUpdated`, `date`, `birthdate` or `_id`.
    pub param: &'static str,
    /// Written with a leading `-`.
    pub descending: bool,
}

/// An `_include` or `_revinclude`: resources of `source` referenced by (include) or referencing
/// (revinclude) the matches through `param`, optionally only references to `target`.
#[derive(Clone, Debug)]
pub struct Include {
    /// The type holding the reference.
    pub source: ResourceType,
    /// The reference parameter of `source`.
    pub param: &'static ParamDef,
    /// Only references to this type, if given.
    pub target: Option<ResourceType>,
}

/// Errors of [`parse_query`]. Neither `Display` nor `Debug` shows a value or an unknown name.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// An unknown parameter. The field holds the name as written (client input: do not log
    /// or echo it); it is not displayed.
    #[error("unknown search parameter")]
    Unknown(String),
    /// A known parameter with a modifier that is unknown or not supported for it.
    #[error("unsupported modifier on search parameter {param}")]
    UnknownModifier {
        /// The (known) parameter.
        param: &'static str,
    },
    /// A value that cannot be parsed or is not allowed.
    #[error("invalid value for search parameter {param}: {reason}")]
    Invalid {
        /// The (known) parameter.
        param: &'static str,
        /// What is wrong, fixed text.
        reason: &'static str,
    },
}

impl fmt::Debug for SearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(_) => f.write_str("Unknown(..)"),
            Self::UnknownModifier { param } => f
                .debug_struct("UnknownModifier")
                .field("param", param)
                .finish(),
            Self::Invalid { param, reason } => f
                .debug_struct("Invalid")
                .field("param", param)
                .field("reason", reason)
                .finish(),
        }
    }
}

/// Modifiers, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Modifier {
    None,
    Missing,
    Not,
    Text,
    Exact,
    Contains,
    Type(ResourceType),
}

fn parse_modifier(def: &ParamDef, modifier: Option<&str>) -> Option<Modifier> {
    let Some(modifier) = modifier else {
        return Some(Modifier::None);
    };
    if modifier == "missing" {
        return Some(Modifier::Missing);
    }
    match (def.ptype, modifier) {
        (ParamType::Token, "not") => Some(Modifier::Not),
        (ParamType::Token, "text") if def.has_coded_tokens() => Some(Modifier::Text),
        (ParamType::String, "exact") => Some(Modifier::Exact),
        (ParamType::String, "contains") => Some(Modifier::Contains),
        (ParamType::Reference, name) => ResourceType::parse(name)
            .ok()
            .filter(|rt| def.targets_type(*rt))
            .map(Modifier::Type),
        _ => None,
    }
}

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
    let mut query = Query {
        clauses: Vec::new(),
        count: DEFAULT_COUNT,
        sort: Vec::new(),
        summary_count: false,
        total: Total::None,
        include: Vec::new(),
        revinclude: Vec::new(),
        elements: None,
        page: None,
        ignored: Vec::new(),
    };
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
        let Some(def) = param(rtype, base) else {
            if lenient {
                query.ignored.push(name.clone());
                continue;
            }
            return Err(SearchError::Unknown(name.clone()));
        };
        let Some(parsed_modifier) = parse_modifier(def, modifier) else {
            if lenient {
                query.ignored.push(name.clone());
                continue;
            }
            return Err(SearchError::UnknownModifier { param: def.name });
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
        query.clauses.push(Clause {
            param: def,
            modifier: modifier.map(str::to_owned),
            values,
        });
    }
    // A count needs a total: `_summary=count` asks for an accurate one unless `_total` says
    // an estimate is enough.
    if query.summary_count && query.total == Total::None {
        query.total = Total::Accurate;
    }
    Ok(query)
}

fn invalid(param: &'static str, reason: &'static str) -> SearchError {
    SearchError::Invalid { param, reason }
}

/// The result-control parameters, as static names.
fn control_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "_count" => "_count",
        "_sort" => "_sort",
        "_summary" => "_summary",
        "_total" => "_total",
        "_include" => "_include",
        "_revinclude" => "_revinclude",
        "_elements" => "_elements",
        "_format" => "_format",
        "_page" => "_page",
        _ => return None,
    })
}

fn apply_control(
    rtype: ResourceType,
    query: &mut Query,
    control: &'static str,
    value: &str,
) -> Result<(), SearchError> {
    match control {
        "_count" => query.count = parse_count(value).map_err(|r| invalid(control, r))?,
        "_sort" => query.sort = parse_sort(rtype, value)?,
        "_summary" => match value {
            "count" => query.summary_count = true,
            "false" => {}
            _ => return Err(invalid(control, "only count and false are supported")),
        },
        "_total" => {
            query.total = match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => return Err(invalid(control, "expected none, estimate or accurate")),
            }
        }
        "_include" => {
            let includes = parse_include(rtype, value, false).map_err(|r| invalid(control, r))?;
            query.include.extend(includes);
        }
        "_revinclude" => {
            let includes = parse_include(rtype, value, true).map_err(|r| invalid(control, r))?;
            query.revinclude.extend(includes);
        }
        "_elements" => {
            query.elements = Some(parse_elements(value).map_err(|r| invalid(control, r))?);
        }
        "_page" => {
            if value.is_empty() {
                return Err(invalid(control, "empty value"));
            }
            query.page = Some(value.to_owned());
        }
        _ => {}
    }
    Ok(())
}

fn parse_count(value: &str) -> Result<u32, &'static str> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a non-negative integer");
    }
    let digits = value.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if digits.len() > 9 {
        return Ok(MAX_COUNT);
    }
    let count: u32 = digits
        .parse()
        .map_err(|_| "expected a non-negative integer")?;
    Ok(count.min(MAX_COUNT))
}

fn parse_sort(rtype: ResourceType, value: &str) -> Result<Vec<SortKey>, SearchError> {
    let mut keys = Vec::new();
    for item in value.split(',') {
        let (descending, name) = match item.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, item),
        };
        let def = SORTABLE
            .contains(&name)
            .then(|| param(rtype, name))
            .flatten()
            .ok_or_else(|| invalid("_sort", "unsupported sort parameter"))?;
        if keys.iter().any(|k: &SortKey| k.param == def.name) {
            return Err(invalid("_sort", "repeated sort parameter"));
        }
        keys.push(SortKey {
            param: def.name,
            descending,
        });
    }
    Ok(keys)
}

fn parse_include(
    rtype: ResourceType,
    value: &str,
    reverse: bool,
) -> Result<Vec<Include>, &'static str> {
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let name = parts.next().ok_or("expected Type:parameter[:Target]")?;
    let target = parts.next();
    if parts.next().is_some() {
        return Err("expected Type:parameter[:Target]");
    }
    let source = ResourceType::parse(source).map_err(|_| "unknown resource type")?;
    if !reverse && source != rtype {
        return Err("the source type must be the searched type");
    }
    let target = match target {
        Some(t) => Some(ResourceType::parse(t).map_err(|_| "unknown resource type")?),
        None => None,
    };
    if reverse && target.is_some_and(|t| t != rtype) {
        return Err("the target type must be the searched type");
    }
    let usable = |def: &ParamDef| {
        def.ptype == ParamType::Reference
            && target.is_none_or(|t| def.targets_type(t))
            && (!reverse || def.targets_type(rtype))
    };
    let defs: Vec<&'static ParamDef> = if name == "*" {
        params(source).into_iter().filter(|d| usable(d)).collect()
    } else {
        let def = param(source, name)
            .filter(|d| d.ptype == ParamType::Reference)
            .ok_or("not a reference parameter of the source type")?;
        if !usable(def) {
            return Err("the parameter cannot refer to the target type");
        }
        vec![def]
    };
    Ok(defs
        .into_iter()
        .map(|param| Include {
            source,
            param,
            target,
        })
        .collect())
}

fn parse_elements(value: &str) -> Result<Vec<String>, &'static str> {
    let mut elements = Vec::new();
    for item in value.split(',') {
        let name = item.strip_suffix("[x]").unwrap_or(item);
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err("expected element names");
        }
        if !elements.iter().any(|e: &String| e == name) {
            elements.push(name.to_owned());
        }
    }
    Ok(elements)
}

fn parse_value(def: &ParamDef, modifier: Modifier, raw: &str) -> Result<Sv, &'static str> {
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
    }
}

fn parse_token(def: &ParamDef, raw: &str) -> Result<Sv, &'static str> {
    let parts = split_unescaped(raw, '|');
    let (system, code) = match parts.as_slice() {
        [code] => (Sys::Any, unescape(code)),
        [system, code] => {
            let system = unescape(system);
            let code = unescape(code);
            match (system.is_empty(), code.is_empty()) {
                (true, true) => return Err("empty value"),
                (true, false) => (Sys::Absent, code),
                (false, _) => (Sys::Is(system), code),
            }
        }
        _ => return Err("malformed token"),
    };
    let code = match def.contact_kind() {
        Some(kind) if !code.is_empty() => {
            let code = normalize_contact(kind, &code);
            if code.is_empty() {
                return Err("empty value");
            }
            code
        }
        _ => code,
    };
    if code.is_empty() && !matches!(system, Sys::Is(_)) {
        return Err("empty value");
    }
    Ok(Sv::Token { system, code })
}

fn parse_reference(def: &ParamDef, modifier: Modifier, value: &str) -> Result<Sv, &'static str> {
    let (rtype, id) = if value.contains('/') {
        let (rtype, id) = literal_reference(value).ok_or("invalid reference")?;
        (Some(rtype), id.to_owned())
    } else if is_valid_id(value) {
        (None, value.to_owned())
    } else {
        return Err("invalid reference");
    };
    let rtype = match (modifier, rtype) {
        (Modifier::Type(m), Some(t)) if m != t => {
            return Err("the reference type differs from the modifier");
        }
        (Modifier::Type(m), _) => Some(m),
        (_, t) => t,
    };
    if rtype.is_some_and(|t| !def.targets_type(t)) {
        return Err("reference type not allowed for this parameter");
    }
    Ok(Sv::Ref { rtype, id })
}

fn parse_quantity(raw: &str) -> Result<Sv, &'static str> {
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

fn split_prefix(raw: &str) -> Result<(Prefix, &str), &'static str> {
    let bytes = raw.as_bytes();
    let has_prefix = bytes.len() >= 2 && bytes.iter().take(2).all(u8::is_ascii_lowercase);
    if !has_prefix {
        return Ok((Prefix::Eq, raw));
    }
    let (head, rest) = raw.split_at(2);
    let prefix = match head {
        "eq" => Prefix::Eq,
        "ne" => Prefix::Ne,
        "gt" => Prefix::Gt,
        "lt" => Prefix::Lt,
        "ge" => Prefix::Ge,
        "le" => Prefix::Le,
        "sa" => Prefix::Sa,
        "eb" => Prefix::Eb,
        "ap" => Prefix::Ap,
        _ => return Err("unknown prefix"),
    };
    Ok((prefix, rest))
}

/// Splits at `sep` where it is not escaped with a backslash (escapes are kept).
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + c.len_utf8();
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// Resolves the search escapes `\,`, `\|`, `\$` and `\\`; other backslashes stay.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let escaped = if c == '\\' {
            chars.next_if(|next| matches!(next, ',' | '|' | '$' | '\\'))
        } else {
            None
        };
        out.push(escaped.unwrap_or(c));
    }
    out
}

// ------------------------------------------------------------------------------------------
// Extraction of values from resources
// ------------------------------------------------------------------------------------------

/// The values at `segs` below `value`, arrays flattened at every level.
/// FHIR JSON has no arrays of arrays: nested arrays are skipped, which also bounds the
/// recursion depth by the path length.
fn select<'a>(value: &'a Value, segs: &[&str], out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => {
            for item in items.iter().filter(|item| !item.is_array()) {
                select(item, segs, out);
            }
        }
        Value::Object(map) => match segs.split_first() {
            Some((first, rest)) => {
                if let Some(child) = map.get(*first) {
                    select(child, rest, out);
                }
            }
            None => out.push(value),
        },
        _ => {
            if segs.is_empty() {
                out.push(value);
            }
        }
    }
}

fn selected<'a>(value: &'a Value, segs: &[&str]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    select(value, segs, &mut out);
    out
}

/// A non-empty string member.
fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[derive(Debug)]
struct Tok {
    system: Option<String>,
    code: Option<String>,
    /// A primitive or contact point: its system is implicit, only the code counts.
    implicit: bool,
}

fn push_coded(system: Option<&str>, code: Option<&str>, out: &mut Vec<Tok>) {
    if system.is_some() || code.is_some() {
        out.push(Tok {
            system: system.map(str::to_owned),
            code: code.map(str::to_owned),
            implicit: false,
        });
    }
}

fn tokens(def: &ParamDef, resource: &Value) -> Vec<Tok> {
    let mut out = Vec::new();
    for path in def.paths {
        for value in selected(resource, path.segs) {
            match path.kind {
                Kind::Code => {
                    let code = match value {
                        Value::String(s) if !s.is_empty() => Some(s.clone()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    };
                    if let Some(code) = code {
                        out.push(Tok {
                            system: None,
                            code: Some(code),
                            implicit: true,
                        });
                    }
                }
                Kind::Coding => {
                    push_coded(str_of(value, "system"), str_of(value, "code"), &mut out)
                }
                Kind::Concept => {
                    for coding in selected(value, &["coding"]) {
                        push_coded(str_of(coding, "system"), str_of(coding, "code"), &mut out);
                    }
                }
                Kind::Identifier => {
                    push_coded(str_of(value, "system"), str_of(value, "value"), &mut out);
                }
                Kind::Email | Kind::Phone => {
                    let wanted = if path.kind == Kind::Email {
                        "email"
                    } else {
                        "phone"
                    };
                    if str_of(value, "system") == Some(wanted) {
                        let code = str_of(value, "value")
                            .map(|v| normalize_contact(path.kind, v))
                            .filter(|v| !v.is_empty());
                        if let Some(code) = code {
                            out.push(Tok {
                                system: None,
                                code: Some(code),
                                implicit: true,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// E-mail addresses compare ASCII-case-insensitively; phone numbers without spaces and `-.()`.
fn normalize_contact(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Email => value.trim().to_ascii_lowercase(),
        Kind::Phone => value
            .chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '(' | ')'))
            .collect(),
        _ => value.to_owned(),
    }
}

/// Texts of coded values, normalized (for `:text`).
fn token_texts(def: &ParamDef, resource: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    let mut push = |s: Option<&str>| {
        if let Some(s) = s {
            let norm = normalize_string(s);
            if !norm.is_empty() {
                texts.push(norm);
            }
        }
    };
    for path in def.paths {
        for value in selected(resource, path.segs) {
            match path.kind {
                Kind::Concept => {
                    push(str_of(value, "text"));
                    for coding in selected(value, &["coding"]) {
                        push(str_of(coding, "display"));
                    }
                }
                Kind::Coding => push(str_of(value, "display")),
                Kind::Identifier => {
                    if let Some(kind) = value.get("type") {
                        push(str_of(kind, "text"));
                        for coding in selected(kind, &["coding"]) {
                            push(str_of(coding, "display"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    texts
}

/// The string values of a string parameter, as written.
fn strings<'a>(def: &ParamDef, resource: &'a Value) -> Vec<&'a str> {
    let mut out = Vec::new();
    for path in def.paths {
        for value in selected(resource, path.segs) {
            match path.kind {
                Kind::HumanName => {
                    for part in ["family", "given", "prefix", "suffix", "text"] {
                        out.extend(
                            selected(value, &[part])
                                .into_iter()
                                .filter_map(Value::as_str),
                        );
                    }
                }
                Kind::Str => out.extend(value.as_str()),
                _ => {}
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The literal references of a reference parameter to one of its target types, deduplicated.
fn reference_values(def: &ParamDef, resource: &Value) -> Vec<(ResourceType, String)> {
    let mut out: Vec<(ResourceType, String)> = Vec::new();
    for path in def.paths {
        if path.kind != Kind::Reference {
            continue;
        }
        for value in selected(resource, path.segs) {
            let Some((rtype, id)) = str_of(value, "reference").and_then(literal_reference) else {
                continue;
            };
            if def.targets_type(rtype) && !out.iter().any(|(t, i)| *t == rtype && i == id) {
                out.push((rtype, id.to_owned()));
            }
        }
    }
    out
}

/// `Type/id`, `Type/id/_history/v` or an absolute URL ending in one of them.
fn literal_reference(reference: &str) -> Option<(ResourceType, &str)> {
    let reference = strip_history(reference)?;
    let (head, id) = reference.rsplit_once('/')?;
    let type_name = if is_absolute_url(reference) {
        head.rsplit_once('/')?.1
    } else {
        head
    };
    let rtype = ResourceType::parse(type_name).ok()?;
    is_valid_id(id).then_some((rtype, id))
}

/// `reference` without a trailing `/_history/<version>`; `None` if the suffix is malformed.
fn strip_history(reference: &str) -> Option<&str> {
    const HISTORY: &str = "/_history/";
    match reference.rfind(HISTORY) {
        Some(start) => {
            let version = reference.get(start + HISTORY.len()..)?;
            if is_valid_id(version) {
                reference.get(..start)
            } else {
                None
            }
        }
        None => Some(reference),
    }
}

/// Whether `s` starts with `scheme://`.
fn is_absolute_url(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    let mut bytes = scheme.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// The date ranges of a date parameter. Values that do not parse are left out.
fn ranges(def: &ParamDef, resource: &Value) -> Vec<Range> {
    let mut out = Vec::new();
    for path in def.paths {
        for value in selected(resource, path.segs) {
            let range = match path.kind {
                Kind::Date => value.as_str().and_then(parse_date),
                Kind::Period => period_range(value),
                Kind::Timing => timing_range(value),
                _ => None,
            };
            out.extend(range);
        }
    }
    out
}

/// `start..end` (open where absent). `None` if both are absent or one does not parse.
fn period_range(value: &Value) -> Option<Range> {
    let bound = |key: &str| -> Option<Option<Range>> {
        match value.get(key) {
            None => Some(None),
            Some(v) => v.as_str().and_then(parse_date).map(Some),
        }
    };
    let start = bound("start")?;
    let end = bound("end")?;
    match (start, end) {
        (None, None) => None,
        (Some(s), None) => Some(Range {
            lo: s.lo,
            hi: OPEN_HI,
        }),
        (None, Some(e)) => Some(Range {
            lo: OPEN_LO,
            hi: e.hi,
        }),
        (Some(s), Some(e)) => Some(Range {
            lo: s.lo.min(e.lo),
            hi: s.hi.max(e.hi),
        }),
    }
}

/// The outer limits of a Timing: its events and `repeat.boundsPeriod`.
fn timing_range(value: &Value) -> Option<Range> {
    let mut parts = Vec::new();
    for event in selected(value, &["event"]) {
        parts.push(event.as_str().and_then(parse_date)?);
    }
    if let Some(bounds) = value.get("repeat").and_then(|r| r.get("boundsPeriod")) {
        parts.push(period_range(bounds)?);
    }
    let lo = parts.iter().map(|r| r.lo).min()?;
    let hi = parts.iter().map(|r| r.hi).max()?;
    Some(Range { lo, hi })
}

struct Qty<'a> {
    value: Dec,
    system: Option<&'a str>,
    code: Option<&'a str>,
    unit: Option<&'a str>,
}

/// The quantities of a quantity parameter that have a numeric value.
fn quantities<'a>(def: &ParamDef, resource: &'a Value) -> Vec<Qty<'a>> {
    let mut out = Vec::new();
    for path in def.paths {
        if path.kind != Kind::Quantity {
            continue;
        }
        for value in selected(resource, path.segs) {
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

fn has_value(def: &ParamDef, resource: &Value) -> bool {
    match def.ptype {
        ParamType::Token => {
            !tokens(def, resource).is_empty() || !token_texts(def, resource).is_empty()
        }
        ParamType::Reference => !reference_values(def, resource).is_empty(),
        ParamType::String => !strings(def, resource).is_empty(),
        ParamType::Date => !ranges(def, resource).is_empty(),
        ParamType::Quantity => !quantities(def, resource).is_empty(),
    }
}

// ------------------------------------------------------------------------------------------
// Index keys and candidate keys
// ------------------------------------------------------------------------------------------

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

fn is_id(def: &ParamDef) -> bool {
    std::ptr::eq(def, &COMMON[0])
}

// ------------------------------------------------------------------------------------------
// Matching
// ------------------------------------------------------------------------------------------

/// Whether `resource` (of type `rtype`) satisfies `clause`: any of its values (with `:not`,
/// none of them). Exact: this is the predicate that decides what a search returns. A clause
/// whose parameter is not one of `rtype`'s matches nothing.
#[must_use]
pub fn matches(rtype: ResourceType, resource: &Value, clause: &Clause) -> bool {
    let def = clause.param;
    if !belongs(rtype, def) {
        return false;
    }
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
            values.iter().any(|v| match &v.0 {
                Sv::Ref { rtype, id } => refs
                    .iter()
                    .any(|(t, i)| i == id && rtype.is_none_or(|r| r == *t)),
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
            values.iter().any(|v| match &v.0 {
                Sv::Quantity {
                    prefix,
                    number,
                    units,
                } => found
                    .iter()
                    .any(|q| units_match(units, q) && number_matches(*prefix, *number, q.value)),
                _ => false,
            })
        }
    }
}

fn token_matches(tok: &Tok, system: &Sys, code: &str) -> bool {
    let code_matches = !code.is_empty() && tok.code.as_deref() == Some(code);
    if tok.implicit {
        return code_matches;
    }
    match system {
        Sys::Any => code_matches,
        Sys::Absent => tok.system.is_none() && code_matches,
        Sys::Is(system) => {
            tok.system.as_deref() == Some(system.as_str()) && (code.is_empty() || code_matches)
        }
    }
}

fn units_match(units: &Units, q: &Qty<'_>) -> bool {
    match units {
        Units::Any => true,
        Units::Code(code) => q.code == Some(code.as_str()) || q.unit == Some(code.as_str()),
        Units::SystemCode(system, code) => {
            q.system == Some(system.as_str()) && q.code == Some(code.as_str())
        }
    }
}

// ------------------------------------------------------------------------------------------
// Sorting, includes, _elements
// ------------------------------------------------------------------------------------------

/// A sort key for `key` of this resource, comparable with `Ord` (`None`: no value, sorts last).
///
/// Dates: the lowest start of the resource's ranges for ascending order, the highest end for
/// descending order, as `YYYY-MM-DDThh:mm:ss.ffffffZ` in UTC (`-` for a range open at the start,
/// `~` for one open at the end). `_id`: the id.
#[must_use]
pub fn sort_value(rtype: ResourceType, resource: &Value, key: &SortKey) -> Option<String> {
    let def = param(rtype, key.param)?;
    match def.ptype {
        ParamType::Date => {
            let found = ranges(def, resource);
            if key.descending {
                found.iter().map(|r| r.hi).max().map(|hi| {
                    if hi == OPEN_HI {
                        "~".to_owned()
                    } else {
                        format_instant(hi - 1)
                    }
                })
            } else {
                found.iter().map(|r| r.lo).min().map(|lo| {
                    if lo == OPEN_LO {
                        "-".to_owned()
                    } else {
                        format_instant(lo)
                    }
                })
            }
        }
        ParamType::Token => {
            let codes = tokens(def, resource).into_iter().filter_map(|t| t.code);
            if key.descending {
                codes.max()
            } else {
                codes.min()
            }
        }
        _ => None,
    }
}

/// The references (`Type/id`) a resource holds for a reference parameter of `rtype`, in
/// document order, deduplicated, only to the parameter's target types (for `_include` and
/// `_revinclude`). Empty for other parameters.
#[must_use]
pub fn references(rtype: ResourceType, resource: &Value, param: &ParamDef) -> Vec<String> {
    if param.ptype != ParamType::Reference || !belongs(rtype, param) {
        return Vec::new();
    }
    reference_values(param, resource)
        .into_iter()
        .map(|(t, id)| format!("{t}/{id}"))
        .collect()
}

/// The top-level elements that [`matches`] and [`sort_value`] read for these clauses and sort
/// keys (with `resourceType`): a resource reduced to them gives the same answers.
#[must_use]
pub fn elements_read(
    rtype: ResourceType,
    clauses: &[Clause],
    sort: &[SortKey],
) -> BTreeSet<&'static str> {
    let sorted = sort.iter().filter_map(|k| param(rtype, k.param));
    let mut out = BTreeSet::from(["resourceType"]);
    for def in clauses.iter().map(|c| c.param).chain(sorted) {
        out.extend(def.paths.iter().filter_map(|p| p.segs.first().copied()));
    }
    out
}

/// A JSON object parsed with only the top-level members in `keep` (the rest are skipped
/// without being built): what [`matches`] needs of a search candidate, at a fraction of the
/// cost of the whole document (allocation of every member dominated search CPU). Fails where
/// parsing the whole document would, or if it is not an object.
pub fn parse_members(json: &[u8], keep: &BTreeSet<&str>) -> serde_json::Result<Value> {
    struct Members<'k>(&'k BTreeSet<&'k str>);

    impl<'de> serde::de::Visitor<'de> for Members<'_> {
        type Value = Map<String, Value>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut access: A,
        ) -> Result<Self::Value, A::Error> {
            let mut map = Map::new();
            while let Some(key) = access.next_key::<String>()? {
                if self.0.contains(key.as_str()) {
                    map.insert(key, access.next_value::<Value>()?);
                } else {
                    access.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(map)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    let map = serde::Deserializer::deserialize_map(&mut de, Members(keep))?;
    de.end()?;
    Ok(Value::Object(map))
}

/// Keeps only the top-level `elements` (plus `resourceType`, `id` and `meta`; `value` or
/// `value[x]` keeps `valueQuantity` etc.; `_birthDate` goes with `birthDate`) and adds the
/// `SUBSETTED` tag to `meta.tag`. Does nothing to a non-object.
pub fn apply_elements(resource: &mut Value, elements: &[String]) {
    let Value::Object(map) = resource else {
        return;
    };
    let wanted: Vec<&str> = elements
        .iter()
        .map(|e| e.strip_suffix("[x]").unwrap_or(e))
        .filter(|e| !e.is_empty())
        .collect();
    map.retain(|key, _| {
        let base = key.strip_prefix('_').unwrap_or(key);
        matches!(base, "resourceType" | "id" | "meta")
            || wanted.iter().any(|w| {
                base == *w
                    || base
                        .strip_prefix(w)
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
            })
    });
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else {
        return;
    };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !tags.is_array() {
        *tags = Value::Array(Vec::new());
    }
    if let Value::Array(tags) = tags {
        let present = tags.iter().any(|t| {
            t.get("system").and_then(Value::as_str) == Some(SUBSETTED_SYSTEM)
                && t.get("code").and_then(Value::as_str) == Some("SUBSETTED")
        });
        if !present {
            tags.push(serde_json::json!({
                "system": SUBSETTED_SYSTEM,
                "code": "SUBSETTED",
                "display": "subsetted"
            }));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Strings
// ------------------------------------------------------------------------------------------

/// Normalizes a string for matching: accents of Latin letters removed (Latin-1 and Latin
/// Extended-A letters mapped to their base letters, `ß` to `ss`, `æ` to `ae`, ...; combining
/// marks dropped), lowercased, whitespace runs collapsed to one space, trimmed.
#[must_use]
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        for lower in c.to_lowercase() {
            if is_combining(lower) {
                continue;
            }
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            match fold_latin(lower) {
                Some(base) => out.push_str(base),
                None => out.push(lower),
            }
        }
    }
    out
}

fn is_combining(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

/// Base letters of U+00C0..=U+00FF; `&` = "ae", `!` = "th", `$` = "ss", `*` = keep.
const LATIN_1: &[u8; 64] = b"aaaaaa&ceeeeiiiidnooooo*ouuuuy!$aaaaaa&ceeeeiiiidnooooo*ouuuuy!y";
/// Base letters of U+0100..=U+017F; `#` = "ij", `%` = "oe".
const LATIN_EXTENDED_A: &[u8; 128] = b"aaaaaaccccccccddddeeeeeeeeeegggggggghhhhiiiiiiiiii##jjkkkllllllllllnnnnnnnnnoooooo%%rrrrrrssssssssttttttuuuuuuuuuuuuwwyyyzzzzzzs";

fn fold_latin(c: char) -> Option<&'static str> {
    let code = u32::from(c);
    let byte = match code {
        0xC0..=0xFF => LATIN_1.get(usize::try_from(code - 0xC0).ok()?)?,
        0x100..=0x17F => LATIN_EXTENDED_A.get(usize::try_from(code - 0x100).ok()?)?,
        _ => return None,
    };
    Some(match byte {
        b'&' => "ae",
        b'!' => "th",
        b'$' => "ss",
        b'#' => "ij",
        b'%' => "oe",
        b'a' => "a",
        b'c' => "c",
        b'd' => "d",
        b'e' => "e",
        b'g' => "g",
        b'h' => "h",
        b'i' => "i",
        b'j' => "j",
        b'k' => "k",
        b'l' => "l",
        b'n' => "n",
        b'o' => "o",
        b'r' => "r",
        b's' => "s",
        b't' => "t",
        b'u' => "u",
        b'w' => "w",
        b'y' => "y",
        b'z' => "z",
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------------
// Dates
// ------------------------------------------------------------------------------------------

const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;
const OPEN_LO: i64 = i64::MIN;
const OPEN_HI: i64 = i64::MAX;

/// A half-open UTC range of microseconds since 1970; `lo == OPEN_LO` / `hi == OPEN_HI`: open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    lo: i64,
    hi: i64,
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

fn digits_at(bytes: &[u8], at: usize, n: usize) -> Option<i64> {
    let slice = bytes.get(at..at.checked_add(n)?)?;
    slice.iter().try_fold(0i64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn day_range(first_day: i64, end_day: i64) -> Range {
    Range {
        lo: first_day * US_PER_DAY,
        hi: end_day * US_PER_DAY,
    }
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.f+]][Z|(+|-)hh:mm]` into the
/// UTC range its precision covers (no time zone: UTC).
fn parse_date(s: &str) -> Option<Range> {
    let b = s.as_bytes();
    let year = digits_at(b, 0, 4)?;
    if year < 1 {
        return None;
    }
    if b.len() == 4 {
        return Some(day_range(
            days_from_civil(year, 1, 1),
            days_from_civil(year + 1, 1, 1),
        ));
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = digits_at(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 {
        let end = if month == 12 {
            days_from_civil(year + 1, 1, 1)
        } else {
            days_from_civil(year, month + 1, 1)
        };
        return Some(day_range(days_from_civil(year, month, 1), end));
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = digits_at(b, 8, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let day_number = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(day_range(day_number, day_number + 1));
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let hour = digits_at(b, 11, 2)?;
    let minute = digits_at(b, 14, 2)?;
    if b.get(13) != Some(&b':') || hour > 23 || minute > 59 {
        return None;
    }
    let mut pos = 16;
    let mut second = 0;
    let mut micros = 0;
    let mut width = 60 * US_PER_SEC;
    if b.get(pos) == Some(&b':') {
        second = digits_at(b, 17, 2)?;
        if second > 60 {
            return None;
        }
        pos = 19;
        width = US_PER_SEC;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let count = pos - start;
            if count == 0 {
                return None;
            }
            let used = count.min(6);
            let scale = 10i64.pow(u32::try_from(6 - used).ok()?);
            micros = digits_at(b, start, used)? * scale;
            width = scale;
        }
    }
    let offset = match b.get(pos..)? {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits_at(&[*h1, *h2], 0, 2)?;
            let minutes = digits_at(&[*m1, *m2], 0, 2)?;
            if hours > 14 || minutes > 59 {
                return None;
            }
            let offset = (hours * 3600 + minutes * 60) * US_PER_SEC;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let lo = day_number * US_PER_DAY + (hour * 3600 + minute * 60 + second) * US_PER_SEC + micros
        - offset;
    Some(Range { lo, hi: lo + width })
}

fn day_of(us: i64) -> i64 {
    us.div_euclid(US_PER_DAY)
}

fn year_of(us: i64) -> i64 {
    civil_from_days(day_of(us)).0
}

fn month_index_of(us: i64) -> i64 {
    let (year, month, _) = civil_from_days(day_of(us));
    year * 12 + month - 1
}

/// `y:` keys for the years `from..=to`, years beyond the horizon folded into `y:-` and `y:+`.
fn year_keys(from: i64, to: i64, out: &mut Vec<String>) {
    if from > to {
        return;
    }
    if from < MIN_BUCKET_YEAR {
        out.push("y:-".to_owned());
    }
    for year in from.max(MIN_BUCKET_YEAR)..=to.min(MAX_BUCKET_YEAR) {
        out.push(format!("y:{year:04}"));
    }
    if to > MAX_BUCKET_YEAR {
        out.push("y:+".to_owned());
    }
}

fn day_keys(first: i64, last: i64, out: &mut Vec<String>) {
    for day in day_of(first)..=day_of(last) {
        let (y, m, d) = civil_from_days(day);
        out.push(format!("d:{y:04}-{m:02}-{d:02}"));
    }
}

fn month_keys(first: i64, last: i64, out: &mut Vec<String>) {
    for index in month_index_of(first)..=month_index_of(last) {
        let (y, m) = (index.div_euclid(12), index.rem_euclid(12) + 1);
        out.push(format!("m:{y:04}-{m:02}"));
    }
}

/// The index keys of one date range (see the module documentation).
fn range_keys(range: Range, keys: &mut BTreeSet<String>) {
    let mut out = Vec::new();
    match (range.lo == OPEN_LO, range.hi == OPEN_HI) {
        (true, true) => {
            out.push("y:-".to_owned());
            out.push("y:+".to_owned());
        }
        (true, false) => {
            out.push("y:-".to_owned());
            let last = year_of(range.hi - 1);
            year_keys(last, last, &mut out);
        }
        (false, true) => {
            let first = year_of(range.lo);
            year_keys(first, first, &mut out);
            out.push("y:+".to_owned());
        }
        (false, false) => {
            let (first, last) = (range.lo, range.hi - 1);
            year_keys(year_of(first), year_of(last), &mut out);
            if month_index_of(last) - month_index_of(first) < MAX_MONTH_BUCKETS {
                month_keys(first, last, &mut out);
            }
            if day_of(last) - day_of(first) < MAX_DAY_BUCKETS {
                day_keys(first, last, &mut out);
            }
        }
    }
    keys.extend(out);
}

/// Candidate keys of a date query (see [`candidate_keys`]).
fn date_candidates(prefix: Prefix, s: Range) -> Option<Vec<String>> {
    let (first, last) = (s.lo, s.hi - 1);
    let mut out = Vec::new();
    match prefix {
        Prefix::Ne => return None,
        Prefix::Eq => {
            // A matching value lies inside the query range, so it touches no more days (or
            // months) than the range does, and has day (month) keys when the range is short.
            if day_of(last) - day_of(first) < EQ_DAY_CANDIDATES {
                day_keys(first, last, &mut out);
            } else if month_index_of(last) - month_index_of(first) < MAX_MONTH_BUCKETS {
                month_keys(first, last, &mut out);
            } else {
                year_keys(year_of(first), year_of(last), &mut out);
            }
        }
        Prefix::Ap => {
            // Overlap: a bounded value touches a year of the range; open values have y:-/y:+.
            year_keys(year_of(first), year_of(last), &mut out);
            for key in ["y:-", "y:+"] {
                if !out.iter().any(|k| k == key) {
                    out.push(key.to_owned());
                }
            }
        }
        // The value's last instant is at or after the end of the query range.
        Prefix::Gt | Prefix::Sa => year_keys(year_of(s.hi), i64::MAX, &mut out),
        Prefix::Ge => year_keys(year_of(first), i64::MAX, &mut out),
        // The value's first instant is before the start of the query range.
        Prefix::Lt | Prefix::Eb => year_keys(i64::MIN, year_of(first - 1), &mut out),
        Prefix::Le => year_keys(i64::MIN, year_of(last), &mut out),
    }
    Some(out)
}

/// The R4 prefix semantics for ranges: `s` is the query range, `t` the resource's.
fn date_matches(prefix: Prefix, s: Range, t: Range) -> bool {
    let contains = s.lo <= t.lo && t.hi <= s.hi;
    match prefix {
        Prefix::Eq => contains,
        Prefix::Ne => !contains,
        Prefix::Gt => t.hi > s.hi,
        Prefix::Lt => t.lo < s.lo,
        Prefix::Ge => t.hi > s.hi || contains,
        Prefix::Le => t.lo < s.lo || contains,
        Prefix::Sa => t.lo >= s.hi,
        Prefix::Eb => t.hi <= s.lo,
        Prefix::Ap => t.lo < s.hi && t.hi > s.lo,
    }
}

/// `YYYY-MM-DDThh:mm:ss.ffffffZ`, clamped to years 0001..=9999.
fn format_instant(us: i64) -> String {
    let min = days_from_civil(1, 1, 1) * US_PER_DAY;
    let max = days_from_civil(10_000, 1, 1) * US_PER_DAY - 1;
    let us = us.clamp(min, max);
    let (year, month, day) = civil_from_days(day_of(us));
    let within = us.rem_euclid(US_PER_DAY);
    let seconds = within / US_PER_SEC;
    let micros = within % US_PER_SEC;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

// ------------------------------------------------------------------------------------------
// Numbers
// ------------------------------------------------------------------------------------------

/// A decimal `m × 10^e`. Compare with [`dec_cmp`] (equal values can have different `m`/`e`).
#[derive(Clone, Copy, Debug)]
struct Dec {
    m: i128,
    e: i32,
}

/// At most this many significant digits in a query number.
const MAX_QUERY_DIGITS: usize = 30;
/// At most this many significant digits in a resource value (after dropping trailing zeros).
const MAX_VALUE_DIGITS: usize = 36;
const MAX_EXPONENT: i64 = 1000;

struct RawNumber {
    negative: bool,
    /// The digits as written, without leading zeros (empty: zero).
    digits: String,
    /// The power of ten of the last digit.
    exp: i64,
}

/// Parses `-?digits(.digits)?([eE][+-]?digits)?`.
fn parse_number(s: &str) -> Option<RawNumber> {
    let b = s.as_bytes();
    let mut pos = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        pos = 1;
    }
    let digit_run = |pos: &mut usize| {
        let start = *pos;
        while b.get(*pos).is_some_and(u8::is_ascii_digit) {
            *pos += 1;
        }
        start
    };
    let int_start = digit_run(&mut pos);
    if pos == int_start {
        return None;
    }
    let mut digits = s.get(int_start..pos)?.to_owned();
    let mut fraction = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = digit_run(&mut pos);
        if pos == start {
            return None;
        }
        digits.push_str(s.get(start..pos)?);
        fraction = i64::try_from(pos - start).ok()?;
    }
    let mut exp = 0i64;
    if matches!(b.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        let exp_negative = b.get(pos) == Some(&b'-');
        if matches!(b.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        let start = digit_run(&mut pos);
        if pos == start || pos - start > 6 {
            return None;
        }
        exp = s.get(start..pos)?.parse().ok()?;
        if exp_negative {
            exp = -exp;
        }
    }
    if pos != b.len() {
        return None;
    }
    Some(RawNumber {
        negative,
        digits: digits.trim_start_matches('0').to_owned(),
        exp: exp - fraction,
    })
}

impl RawNumber {
    fn to_dec(&self, digits: &str, exp: i64, max_digits: usize) -> Option<Dec> {
        if digits.len() > max_digits || exp.abs() > MAX_EXPONENT {
            return None;
        }
        let magnitude: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        Some(Dec {
            m: if self.negative { -magnitude } else { magnitude },
            e: i32::try_from(exp).ok()?,
        })
    }

    /// As written, keeping trailing zeros (they give the precision).
    fn query_dec(&self) -> Option<Dec> {
        self.to_dec(&self.digits, self.exp, MAX_QUERY_DIGITS)
    }

    /// The exact value, trailing zeros dropped.
    fn exact_dec(&self) -> Option<Dec> {
        let trimmed = self.digits.trim_end_matches('0');
        let dropped = i64::try_from(self.digits.len() - trimmed.len()).ok()?;
        let exp = if trimmed.is_empty() {
            0
        } else {
            self.exp + dropped
        };
        self.to_dec(trimmed, exp, MAX_VALUE_DIGITS)
    }
}

fn ndigits(x: u128) -> i64 {
    x.checked_ilog10().map_or(0, |d| i64::from(d) + 1)
}

fn scale_up(x: u128, k: i32) -> Option<u128> {
    10u128.checked_pow(u32::try_from(k).ok()?)?.checked_mul(x)
}

fn dec_cmp(a: Dec, b: Dec) -> Ordering {
    let (sa, sb) = (a.m.signum(), b.m.signum());
    if sa != sb || sa == 0 {
        return sa.cmp(&sb);
    }
    let (ua, ub) = (a.m.unsigned_abs(), b.m.unsigned_abs());
    let mag_a = ndigits(ua) + i64::from(a.e);
    let mag_b = ndigits(ub) + i64::from(b.e);
    let magnitude = if mag_a == mag_b {
        // Same order of magnitude: aligned, each has at most max(digits) <= 36 digits, which
        // fits in u128, so the fallback is unreachable.
        let e = a.e.min(b.e);
        match (scale_up(ua, a.e - e), scale_up(ub, b.e - e)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => Ordering::Equal,
        }
    } else {
        mag_a.cmp(&mag_b)
    };
    if sa > 0 {
        magnitude
    } else {
        magnitude.reverse()
    }
}

/// The R4 number semantics; `n` is the query number (its digits give the precision).
fn number_matches(prefix: Prefix, n: Dec, v: Dec) -> bool {
    let lo = Dec {
        m: n.m.saturating_mul(10).saturating_sub(5),
        e: n.e - 1,
    };
    let hi = Dec {
        m: n.m.saturating_mul(10).saturating_add(5),
        e: n.e - 1,
    };
    let at_least = |a: Dec, b: Dec| dec_cmp(a, b) != Ordering::Less;
    let within = at_least(v, lo) && dec_cmp(v, hi) == Ordering::Less;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => dec_cmp(v, n) == Ordering::Greater,
        Prefix::Lt => dec_cmp(v, n) == Ordering::Less,
        Prefix::Ge => at_least(v, n),
        Prefix::Le => at_least(n, v),
        Prefix::Sa => at_least(v, hi),
        Prefix::Eb => dec_cmp(v, lo) == Ordering::Less,
        Prefix::Ap => {
            let tenth = n.m.saturating_abs();
            let near_lo = Dec {
                m: n.m.saturating_mul(10).saturating_sub(tenth),
                e: n.e - 1,
            };
            let near_hi = Dec {
                m: n.m.saturating_mul(10).saturating_add(tenth),
                e: n.e - 1,
            };
            within || (at_least(v, near_lo) && at_least(near_hi, v))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CANARY: &str = "CANARY-9Q";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn query(rtype: ResourceType, list: &[(&str, &str)]) -> Query {
        match parse_query(rtype, &pairs(list), false) {
            Ok(q) => q,
            Err(e) => panic!("{list:?} does not parse: {e}"),
        }
    }

    fn error(rtype: ResourceType, list: &[(&str, &str)]) -> SearchError {
        match parse_query(rtype, &pairs(list), false) {
            Ok(q) => panic!("{list:?} parsed: {q:?}"),
            Err(e) => e,
        }
    }

    /// Whether `resource` matches every clause of the query, checking on the way that the
    /// index never produces a false negative for any value.
    /// Also checks that the resource reduced to the query's [`elements_read`] gets the same
    /// answer.
    fn hits(rtype: ResourceType, resource: &Value, list: &[(&str, &str)]) -> bool {
        let q = query(rtype, list);
        let reduced = reduced(rtype, resource, &q);
        q.clauses.iter().all(|clause| {
            assert_sound(rtype, resource, clause);
            let full = matches(rtype, resource, clause);
            assert_eq!(
                full,
                matches(rtype, &reduced, clause),
                "{list:?} on {resource} reduced to {reduced}"
            );
            full
        })
    }

    /// `resource` as a search reads it for `q`: serialized, then parsed with only the members
    /// the query reads.
    fn reduced(rtype: ResourceType, resource: &Value, q: &Query) -> Value {
        let keep = elements_read(rtype, &q.clauses, &q.sort);
        let bytes = serde_json::to_vec(resource).unwrap();
        if resource.is_object() {
            parse_members(&bytes, &keep).unwrap()
        } else {
            assert!(parse_members(&bytes, &keep).is_err());
            resource.clone()
        }
    }

    #[test]
    fn a_reduced_parse_keeps_only_the_members_read_and_refuses_what_a_full_parse_refuses() {
        let rt = ResourceType::parse("Observation").unwrap();
        let q = query(rt, &[("code", "1234-5"), ("_sort", "-date")]);
        let keep = elements_read(rt, &q.clauses, &q.sort);
        assert!(keep.contains("code") && keep.contains("effectiveDateTime"));
        assert!(!keep.contains("valueQuantity"));
        let obs = json!({
            "resourceType": "Observation",
            "id": "o1",
            "code": {"coding": [{"code": "1234-5"}]},
            "valueQuantity": {"value": 5, "unit": CANARY},
            "effectiveDateTime": "2024-01-05",
        });
        let reduced = parse_members(obs.to_string().as_bytes(), &keep).unwrap();
        assert_eq!(
            reduced,
            json!({
                "resourceType": "Observation",
                "code": {"coding": [{"code": "1234-5"}]},
                "effectiveDateTime": "2024-01-05",
            })
        );
        for bad in [
            "[1]",
            "\"x\"",
            "{\"code\": 1",
            "{\"valueQuantity\": {\"value\": }}",
            "{} trailing",
        ] {
            assert!(parse_members(bad.as_bytes(), &keep).is_err(), "{bad}");
        }
    }

    fn hit(rtype: ResourceType, resource: &Value, name: &str, value: &str) -> bool {
        hits(rtype, resource, &[(name, value)])
    }

    /// The no-false-negative property: whenever a value matches, one of its candidate keys is
    /// among the resource's index keys for the parameter (or candidates are `None`). Returns
    /// whether some value matched.
    fn assert_sound(rtype: ResourceType, resource: &Value, clause: &Clause) -> bool {
        let keys: BTreeSet<String> = index_keys(rtype, resource)
            .into_iter()
            .filter(|(name, _)| *name == clause.param.name)
            .map(|(_, key)| key)
            .collect();
        let mut any = false;
        for value in &clause.values {
            let single = Clause {
                param: clause.param,
                modifier: clause.modifier.clone(),
                values: vec![value.clone()],
            };
            if !matches(rtype, resource, &single) {
                continue;
            }
            any = true;
            if let Some(ids) = id_candidates(&single) {
                let id = resource
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                assert!(ids.iter().any(|c| c == id), "false negative: _id {ids:?}");
            }
            if let Some(candidates) = candidate_keys(&single, value) {
                assert!(
                    candidates.iter().any(|c| keys.contains(c)),
                    "false negative: {} {:?} on {resource}: candidates {candidates:?}, keys {keys:?}",
                    clause.param.name,
                    clause.modifier,
                );
            }
        }
        if clause.modifier.as_deref() != Some("not") {
            assert_eq!(any, matches(rtype, resource, clause), "OR of values");
        }
        any
    }

    fn keys_of(rtype: ResourceType, resource: &Value, name: &str) -> Vec<String> {
        index_keys(rtype, resource)
            .into_iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, k)| k)
            .collect()
    }

    fn candidates(rtype: ResourceType, name: &str, value: &str) -> Option<Vec<String>> {
        let q = query(rtype, &[(name, value)]);
        let clause = &q.clauses[0];
        candidate_keys(clause, &clause.values[0])
    }

    // --------------------------------------------------------------------------------------
    // Parameter table
    // --------------------------------------------------------------------------------------

    #[test]
    fn every_type_has_id_and_last_updated() {
        for rtype in ResourceType::all() {
            let names: Vec<_> = params(rtype).iter().map(|d| d.name).collect();
            assert_eq!(&names[..2], &["_id", "_lastUpdated"]);
            assert!(param(rtype, "_id").is_some());
        }
        let names: Vec<_> = params(ResourceType::PATIENT)
            .iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(
            names,
            [
                "_id",
                "_lastUpdated",
                "identifier",
                "name",
                "family",
                "given",
                "birthdate",
                "gender",
                "email",
                "phone"
            ]
        );
        assert_eq!(
            param(ResourceType::OBSERVATION, "value-quantity").map(|d| d.ptype),
            Some(ParamType::Quantity)
        );
        assert!(param(ResourceType::OBSERVATION, "birthdate").is_none());
        assert!(param(ResourceType::PATIENT, "Name").is_none());
    }

    #[test]
    fn parameter_names_are_unique_and_reference_targets_are_types() {
        for rtype in ResourceType::all() {
            let defs = params(rtype);
            for (i, def) in defs.iter().enumerate() {
                assert!(defs[..i].iter().all(|d| d.name != def.name), "{}", def.name);
                assert_eq!(def.targets().count(), def.targets.len());
                assert_eq!(
                    def.ptype == ParamType::Reference,
                    !def.targets.is_empty(),
                    "{}",
                    def.name
                );
            }
        }
        let subject = param(ResourceType::OBSERVATION, "subject").expect("subject");
        let targets: Vec<_> = subject.targets().map(ResourceType::as_str).collect();
        assert_eq!(targets, ["Group", "Device", "Patient", "Location"]);
    }

    // --------------------------------------------------------------------------------------
    // Tokens
    // --------------------------------------------------------------------------------------

    fn heart_rate() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {
                "coding": [
                    { "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" },
                    { "code": "HR" },
                    { "system": "http://acme.org/codes" }
                ],
                "text": "Pulse"
            },
            "category": [
                { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] },
                { "coding": [{ "system": "http://acme.org/cat", "code": "a,b|c" }] }
            ],
            "subject": { "reference": "Patient/p1" },
            "effectiveDateTime": "2024-03-03T10:30:00+01:00",
            "valueQuantity": { "value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" }
        })
    }

    #[test]
    fn token_forms() {
        let obs = heart_rate();
        let rt = ResourceType::OBSERVATION;
        let cases = [
            ("8867-4", true),
            ("http://loinc.org|8867-4", true),
            ("|8867-4", false),
            ("http://snomed.info/sct|8867-4", false),
            ("http://loinc.org|", true),
            ("http://acme.org/codes|", true),
            ("http://snomed.info/sct|", false),
            ("HR", true),
            ("|HR", true),
            ("hr", false),
            ("http://loinc.org|HR", false),
            ("8867", false),
            ("8867-4x", false),
            ("xyz,8867-4", true),
            ("xyz,abc", false),
        ];
        for (value, expected) in cases {
            assert_eq!(hit(rt, &obs, "code", value), expected, "code={value}");
        }
        assert!(hit(rt, &obs, "category", "vital-signs"));
        assert!(hit(rt, &obs, "status", "final"));
        assert!(!hit(rt, &obs, "status", "Final"));
        assert!(!hit(rt, &obs, "status", "preliminary"));
    }

    #[test]
    fn token_escapes() {
        let obs = heart_rate();
        let rt = ResourceType::OBSERVATION;
        assert!(hit(rt, &obs, "category", r"a\,b\|c"));
        assert!(hit(rt, &obs, "category", r"http://acme.org/cat|a\,b\|c"));
        // Unescaped: "a" OR "b|c" (system b, code c): no match.
        assert!(!hit(rt, &obs, "category", "a,b|c"));
        let q = query(rt, &[("category", r"x,a\,b\|c,y")]);
        assert_eq!(q.clauses[0].values.len(), 3);
        assert!(matches!(
            error(rt, &[("code", "a|b|c")]),
            SearchError::Invalid { param: "code", .. }
        ));
    }

    #[test]
    fn token_not_and_text() {
        let obs = heart_rate();
        let rt = ResourceType::OBSERVATION;
        assert!(!hit(rt, &obs, "code:not", "8867-4"));
        assert!(!hit(rt, &obs, "code:not", "xyz,HR"));
        assert!(hit(rt, &obs, "code:not", "xyz"));
        assert!(hit(rt, &obs, "status:not", "preliminary"));
        assert!(!hit(rt, &obs, "status:not", "final"));
        // Resources without the element match :not.
        let bare = json!({ "resourceType": "Observation" });
        assert!(hit(rt, &bare, "code:not", "8867-4"));
        assert!(!hit(rt, &bare, "code", "8867-4"));
        assert_eq!(candidates(rt, "code:not", "8867-4"), None);

        assert!(hit(rt, &obs, "code:text", "heart"));
        assert!(hit(rt, &obs, "code:text", "PULSE"));
        assert!(hit(rt, &obs, "code:text", "héart RATE"));
        assert!(!hit(rt, &obs, "code:text", "rate"));
        assert!(!hit(rt, &obs, "code:text", "8867"));
        assert_eq!(candidates(rt, "code:text", "heart"), None);
        // :text only on coded parameters.
        assert!(matches!(
            error(rt, &[("status:text", "final")]),
            SearchError::UnknownModifier { param: "status" }
        ));
    }

    #[test]
    fn identifiers_and_primitive_codes() {
        let rt = ResourceType::PATIENT;
        let patient = json!({
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [
                { "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345" },
                { "value": "A|B" }
            ],
            "gender": "female",
            "active": true
        });
        assert!(hit(rt, &patient, "identifier", "12345"));
        assert!(hit(
            rt,
            &patient,
            "identifier",
            "urn:oid:1.2.36.146.595.217.0.1|12345"
        ));
        assert!(!hit(rt, &patient, "identifier", "|12345"));
        assert!(hit(rt, &patient, "identifier", r"|A\|B"));
        assert!(!hit(rt, &patient, "identifier", "urn:other|12345"));
        assert!(hit(rt, &patient, "gender", "female"));
        assert!(hit(
            rt,
            &patient,
            "gender",
            "http://hl7.org/fhir/administrative-gender|female"
        ));
        assert!(hit(rt, &patient, "gender", "|female"));
        assert!(!hit(
            rt,
            &patient,
            "gender",
            "http://hl7.org/fhir/administrative-gender|"
        ));
        assert!(!hit(rt, &patient, "gender", "male"));
        assert!(!hit(rt, &patient, "gender", "Female"));
        assert!(hit(rt, &patient, "gender:missing", "false"));
        assert!(!hit(rt, &patient, "gender:missing", "true"));
        assert!(hit(rt, &patient, "birthdate:missing", "true"));
        assert!(hit(rt, &patient, "birthdate:missing", "true,false"));
        assert_eq!(
            candidates(
                rt,
                "gender",
                "http://hl7.org/fhir/administrative-gender|female"
            ),
            Some(vec![
                "sc:http://hl7.org/fhir/administrative-gender|female".to_owned(),
                "c:female".to_owned()
            ])
        );
        assert_eq!(
            candidates(rt, "identifier", "urn:x|1"),
            Some(vec!["sc:urn:x|1".to_owned()])
        );
        assert_eq!(candidates(rt, "gender:missing", "true"), None);
    }

    #[test]
    fn telecom() {
        let rt = ResourceType::PATIENT;
        let patient = json!({
            "resourceType": "Patient",
            "telecom": [
                { "system": "email", "value": "Jane.Doe@Example.org" },
                { "system": "phone", "value": "+1 (555) 123-4567" },
                { "system": "fax", "value": "+1 555 999" },
                { "value": "nosystem@example.org" }
            ]
        });
        assert!(hit(rt, &patient, "email", "jane.doe@example.org"));
        assert!(hit(rt, &patient, "email", "JANE.DOE@EXAMPLE.ORG"));
        assert!(hit(rt, &patient, "email", "email|jane.doe@example.org"));
        assert!(!hit(rt, &patient, "email", "jane.doe@example"));
        assert!(!hit(rt, &patient, "email", "nosystem@example.org"));
        assert!(!hit(rt, &patient, "email", "+15551234567"));
        assert!(hit(rt, &patient, "phone", "+15551234567"));
        assert!(hit(rt, &patient, "phone", "+1 555 123 4567"));
        assert!(hit(rt, &patient, "phone", "+1.555.123.4567"));
        assert!(!hit(rt, &patient, "phone", "5551234567"));
        assert!(!hit(rt, &patient, "phone", "+1555999"));
        assert!(!hit(rt, &patient, "phone", "jane.doe@example.org"));
        assert!(matches!(
            error(rt, &[("phone", " - ")]),
            SearchError::Invalid {
                param: "phone",
                reason: "empty value"
            }
        ));
    }

    #[test]
    fn encounter_class_is_a_coding() {
        let rt = ResourceType::ENCOUNTER;
        let encounter = json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory" }
        });
        assert!(hit(rt, &encounter, "class", "AMB"));
        assert!(hit(
            rt,
            &encounter,
            "class",
            "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"
        ));
        assert!(hit(rt, &encounter, "class:text", "ambul"));
        assert!(!hit(rt, &encounter, "class", "IMP"));
        assert!(hit(rt, &encounter, "status", "finished"));
    }

    #[test]
    fn other_token_parameters() {
        let coding = |code: &str| json!({ "coding": [{ "system": "http://snomed.info/sct", "code": code }] });
        let allergy = json!({
            "resourceType": "AllergyIntolerance",
            "code": coding("227493005"),
            "reaction": [{ "substance": coding("1191") }, { "substance": coding("2222") }]
        });
        let rt = ResourceType::ALLERGY_INTOLERANCE;
        for code in ["227493005", "1191", "2222"] {
            assert!(hit(rt, &allergy, "code", code), "{code}");
        }
        assert!(!hit(rt, &allergy, "code", "3333"));

        let rt = ResourceType::MEDICATION_REQUEST;
        let request = json!({ "resourceType": "MedicationRequest", "status": "active", "medicationCodeableConcept": coding("m1"), "authoredOn": "2024-01-02" });
        assert!(hit(rt, &request, "code", "m1"));
        assert!(hit(rt, &request, "status", "active"));
        assert!(hit(rt, &request, "authoredon", "2024-01"));
        let by_reference = json!({ "resourceType": "MedicationRequest", "medicationReference": { "reference": "Medication/m1" } });
        assert!(!hit(rt, &by_reference, "code", "m1"));

        let rt = ResourceType::CONDITION;
        let condition = json!({ "resourceType": "Condition", "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] }, "code": coding("c1") });
        assert!(hit(rt, &condition, "clinical-status", "active"));
        assert!(hit(rt, &condition, "code", "c1"));

        let rt = ResourceType::IMMUNIZATION;
        let immunization = json!({ "resourceType": "Immunization", "vaccineCode": coding("v1"), "patient": { "reference": "Patient/p1" }, "occurrenceDateTime": "2021-05-01" });
        assert!(hit(rt, &immunization, "vaccine-code", "v1"));
        assert!(hit(rt, &immunization, "patient", "p1"));
        assert!(hit(rt, &immunization, "date", "2021"));

        let rt = ResourceType::DIAGNOSTIC_REPORT;
        let report = json!({ "resourceType": "DiagnosticReport", "code": coding("r1"), "category": [coding("LAB")], "subject": { "reference": "Patient/p1" }, "effectivePeriod": { "start": "2020-01-01", "end": "2020-01-03" } });
        assert!(hit(rt, &report, "code", "r1"));
        assert!(hit(rt, &report, "category", "LAB"));
        assert!(hit(rt, &report, "date", "2020-01"));

        let rt = ResourceType::DOCUMENT_REFERENCE;
        let document = json!({ "resourceType": "DocumentReference", "type": coding("t1"), "subject": { "reference": "Patient/p1" }, "date": "2022-02-02T10:00:00Z" });
        assert!(hit(rt, &document, "type", "t1"));
        assert!(hit(rt, &document, "patient", "Patient/p1"));
        assert!(hit(rt, &document, "date", "2022-02-02"));

        let rt = ResourceType::PROCEDURE;
        let procedure = json!({ "resourceType": "Procedure", "code": coding("x1"), "subject": { "reference": "Patient/p1" }, "performedPeriod": { "start": "2019-06-01" } });
        assert!(hit(rt, &procedure, "code", "x1"));
        assert!(hit(rt, &procedure, "date", "ge2030"));
        assert!(!hit(rt, &procedure, "date", "2019"));
    }

    // --------------------------------------------------------------------------------------
    // References
    // --------------------------------------------------------------------------------------

    fn observation_with_subject(reference: &str) -> Value {
        json!({ "resourceType": "Observation", "subject": { "reference": reference } })
    }

    #[test]
    fn reference_forms() {
        let rt = ResourceType::OBSERVATION;
        let typed = observation_with_subject("Patient/p1");
        let absolute = observation_with_subject("https://example.org/fhir/Patient/p1/_history/3");
        let group = observation_with_subject("Group/p1");
        for obs in [&typed, &absolute] {
            for (name, value) in [
                ("subject", "p1"),
                ("subject", "Patient/p1"),
                ("subject", "Patient/p1/_history/9"),
                ("subject", "https://other.example/fhir/Patient/p1"),
                ("subject:Patient", "p1"),
                ("subject:Patient", "Patient/p1"),
                ("patient", "p1"),
                ("patient", "Patient/p1"),
                ("patient:Patient", "p1"),
                ("subject", "x,p1"),
            ] {
                assert!(hit(rt, obs, name, value), "{name}={value} on {obs}");
            }
            for (name, value) in [
                ("subject", "p2"),
                ("subject", "Group/p1"),
                ("subject:Group", "p1"),
                ("subject", "P1"),
            ] {
                assert!(!hit(rt, obs, name, value), "{name}={value} on {obs}");
            }
        }
        assert!(hit(rt, &group, "subject", "p1"));
        assert!(hit(rt, &group, "subject", "Group/p1"));
        assert!(!hit(rt, &group, "patient", "p1"));
        assert!(!hit(rt, &group, "subject", "Patient/p1"));
        for odd in [
            "#p1",
            "urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
            "Patient?identifier=x",
            "p1",
            "Patient/p1/x",
        ] {
            let obs = observation_with_subject(odd);
            assert!(!hit(rt, &obs, "subject", "p1"), "{odd}");
            assert!(keys_of(rt, &obs, "subject").is_empty());
        }
        // A reference to a type outside the targets is not a value of the parameter.
        let practitioner = observation_with_subject("Practitioner/p1");
        assert!(!hit(rt, &practitioner, "subject", "p1"));
        assert!(keys_of(rt, &practitioner, "subject").is_empty());
    }

    #[test]
    fn reference_candidates_and_errors() {
        let rt = ResourceType::OBSERVATION;
        assert_eq!(
            candidates(rt, "subject", "p1"),
            Some(vec![
                "r:Group/p1".to_owned(),
                "r:Device/p1".to_owned(),
                "r:Patient/p1".to_owned(),
                "r:Location/p1".to_owned()
            ])
        );
        assert_eq!(
            candidates(rt, "patient", "p1"),
            Some(vec!["r:Patient/p1".to_owned()])
        );
        assert_eq!(
            candidates(rt, "subject", "https://x.org/fhir/Device/d1/_history/2"),
            Some(vec!["r:Device/d1".to_owned()])
        );
        assert_eq!(
            keys_of(
                rt,
                &observation_with_subject("http://x/Patient/p1/_history/1"),
                "patient"
            ),
            ["r:Patient/p1"]
        );
        for (name, value) in [
            ("patient", "Group/g1"),
            ("subject", "Practitioner/1"),
            ("subject", "Foo/1"),
            ("subject", "a b"),
            ("subject", "#p1"),
            ("subject", "urn:uuid:1"),
            ("subject:Patient", "Group/g1"),
            ("subject", "Patient/"),
        ] {
            assert!(
                matches!(error(rt, &[(name, value)]), SearchError::Invalid { .. }),
                "{name}={value}"
            );
        }
        assert!(matches!(
            error(rt, &[("patient:Group", "g1")]),
            SearchError::UnknownModifier { param: "patient" }
        ));
        assert!(matches!(
            error(rt, &[("subject:identifier", "x|1")]),
            SearchError::UnknownModifier { param: "subject" }
        ));
        assert!(matches!(
            error(rt, &[("subject.name", "x")]),
            SearchError::Unknown(_)
        ));
    }

    #[test]
    fn other_reference_parameters() {
        for rtype in [
            ResourceType::CONDITION,
            ResourceType::ENCOUNTER,
            ResourceType::MEDICATION_REQUEST,
            ResourceType::PROCEDURE,
            ResourceType::DIAGNOSTIC_REPORT,
            ResourceType::DOCUMENT_REFERENCE,
        ] {
            let resource = json!({ "subject": { "reference": "Patient/p9" } });
            assert!(hit(rtype, &resource, "patient", "p9"), "{rtype}");
            assert!(hit(rtype, &resource, "patient", "Patient/p9"), "{rtype}");
            let group = json!({ "subject": { "reference": "Group/p9" } });
            assert!(!hit(rtype, &group, "patient", "p9"), "{rtype}");
        }
        for rtype in [
            ResourceType::ALLERGY_INTOLERANCE,
            ResourceType::IMMUNIZATION,
        ] {
            let resource = json!({ "patient": { "reference": "Patient/p9" } });
            assert!(hit(rtype, &resource, "patient", "p9"), "{rtype}");
        }
    }

    #[test]
    fn references_for_includes() {
        let rt = ResourceType::OBSERVATION;
        let subject = param(rt, "subject").expect("subject");
        let patient = param(rt, "patient").expect("patient");
        let obs = observation_with_subject("https://x/fhir/Group/g1/_history/2");
        assert_eq!(references(rt, &obs, subject), ["Group/g1"]);
        assert!(references(rt, &obs, patient).is_empty());
        assert_eq!(references(rt, &heart_rate(), patient), ["Patient/p1"]);
        // A parameter of another type, or not a reference: nothing.
        let condition_patient = param(ResourceType::CONDITION, "patient").expect("patient");
        assert!(references(rt, &heart_rate(), condition_patient).is_empty());
        let code = param(rt, "code").expect("code");
        assert!(references(rt, &heart_rate(), code).is_empty());
    }

    // --------------------------------------------------------------------------------------
    // Strings
    // --------------------------------------------------------------------------------------

    #[test]
    fn normalization() {
        assert_eq!(normalize_string("  Müller  "), "muller");
        assert_eq!(normalize_string("MÜLLER"), "muller");
        assert_eq!(normalize_string("Mu\u{0308}ller"), "muller");
        assert_eq!(normalize_string("José\t  María\n"), "jose maria");
        assert_eq!(normalize_string("Łódź Straße"), "lodz strasse");
        assert_eq!(
            normalize_string("Ærøskøbing Œuvre ĲSSEL"),
            "aeroskobing oeuvre ijssel"
        );
        assert_eq!(normalize_string("Þór Ðiđ ſ Ÿ İ"), "thor did s y i");
        assert_eq!(normalize_string("Smith-Jones"), "smith-jones");
        assert_eq!(normalize_string("× ÷"), "× ÷");
        assert_eq!(normalize_string("ΣΟΦΊΑ"), "σοφία");
        assert_eq!(normalize_string(" \u{0301} "), "");
        // Every Latin-1 and Latin Extended-A letter folds to ASCII.
        for code in (0xC0..=0x17F_u32).filter(|c| *c != 0xD7 && *c != 0xF7) {
            let c = char::from_u32(code).expect("char");
            let folded = normalize_string(&c.to_string());
            assert!(
                folded.bytes().all(|b| b.is_ascii_lowercase()),
                "{c} -> {folded}"
            );
        }
    }

    fn mueller() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "name": [
                { "family": "Müller", "given": ["Anna", "Maria Luisa"], "prefix": ["Dr."], "text": "Dr. Anna Müller" },
                { "family": "Smith-Jones", "suffix": ["Jr."] },
                { "family": "Vanderbilt-Worthington" }
            ]
        })
    }

    #[test]
    fn string_prefix_case_and_accents() {
        let rt = ResourceType::PATIENT;
        let p = mueller();
        for (name, value, expected) in [
            ("family", "mul", true),
            ("family", "MÜL", true),
            ("family", "müller", true),
            ("family", "Muller", true),
            ("family", "mülle", true),
            ("family", "mullerx", false),
            ("family", "ller", false),
            ("family", "smi", true),
            ("family", "smith-j", true),
            ("family", "smith j", false),
            ("family", "jones", false),
            ("family", "vanderbilt-worthington", true),
            ("family", "VANDERBILT-WORTH", true),
            ("family", "vanderbilt-worthingtonx", false),
            ("family", "vanderbilt-wx", false),
            ("family", "anna", false),
            ("given", "anna", true),
            ("given", "maria   luisa", true),
            ("given", "maría l", true),
            ("given", "luisa", false),
            ("given", "mul", false),
            ("name", "anna", true),
            ("name", "mul", true),
            ("name", "dr", true),
            ("name", "jr", true),
            ("name", "dr. anna m", true),
            ("name", "luisa", false),
            ("name", "xyz,smi", true),
        ] {
            assert_eq!(hit(rt, &p, name, value), expected, "{name}={value}");
        }
    }

    #[test]
    fn string_exact_and_contains() {
        let rt = ResourceType::PATIENT;
        let p = mueller();
        assert!(hit(rt, &p, "family:exact", "Müller"));
        assert!(!hit(rt, &p, "family:exact", "müller"));
        assert!(!hit(rt, &p, "family:exact", "MÜLLER"));
        assert!(!hit(rt, &p, "family:exact", "Muller"));
        assert!(!hit(rt, &p, "family:exact", "Mül"));
        assert!(hit(rt, &p, "family:exact", "Vanderbilt-Worthington"));
        assert!(!hit(rt, &p, "family:exact", "Vanderbilt-Worthingto"));
        let upper = json!({ "resourceType": "Patient", "name": [{ "family": "MÜLLER" }] });
        assert!(hit(rt, &upper, "family", "mul"));
        assert!(hit(rt, &upper, "family:exact", "MÜLLER"));
        assert!(!hit(rt, &upper, "family:exact", "Müller"));
        assert!(hit(rt, &p, "family:contains", "JONES"));
        assert!(hit(rt, &p, "family:contains", "ülle"));
        assert!(!hit(rt, &p, "family:contains", "jonesy"));
        assert_eq!(candidates(rt, "family:contains", "jones"), None);
        assert_eq!(
            candidates(rt, "family:exact", "Vanderbilt-Worthington"),
            Some(vec!["f:vanderbilt-worthington".to_owned()])
        );
        assert_eq!(
            candidates(rt, "family:exact", "Müller"),
            Some(vec!["p:muller".to_owned()])
        );
        assert_eq!(
            candidates(rt, "family", "Vanderbilt-Worthington"),
            Some(vec!["p:vanderbilt-w".to_owned()])
        );
        assert!(matches!(
            error(rt, &[("family:below", "x")]),
            SearchError::UnknownModifier { param: "family" }
        ));
        assert!(matches!(
            error(rt, &[("family", " ")]),
            SearchError::Invalid {
                param: "family",
                reason: "empty value"
            }
        ));
    }

    #[test]
    fn string_index_keys() {
        let rt = ResourceType::PATIENT;
        let p = json!({ "resourceType": "Patient", "name": [{ "family": "Ab" }, { "family": "Vanderbilt-Worthington" }] });
        let keys = keys_of(rt, &p, "family");
        let expected: BTreeSet<String> = [
            "p:a",
            "p:ab",
            "p:v",
            "p:va",
            "p:van",
            "p:vand",
            "p:vande",
            "p:vander",
            "p:vanderb",
            "p:vanderbi",
            "p:vanderbil",
            "p:vanderbilt",
            "p:vanderbilt-",
            "p:vanderbilt-w",
            "f:vanderbilt-worthington",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert!(
            keys.iter()
                .filter(|k| k.starts_with("p:"))
                .all(|k| k.chars().count() <= 2 + MAX_STRING_PREFIX)
        );
    }

    #[test]
    fn organization_and_practitioner_names() {
        let rt = ResourceType::ORGANIZATION;
        let org = json!({ "resourceType": "Organization", "name": "Hôpital Saint-Éloi", "alias": ["HSE", "Saint Eloi"], "identifier": [{ "system": "urn:siret", "value": "123" }] });
        assert!(hit(rt, &org, "name", "hopital s"));
        assert!(hit(rt, &org, "name", "hse"));
        assert!(hit(rt, &org, "name", "saint e"));
        assert!(!hit(rt, &org, "name", "eloi"));
        assert!(hit(rt, &org, "identifier", "urn:siret|123"));
        let rt = ResourceType::PRACTITIONER;
        let doc = json!({ "resourceType": "Practitioner", "name": [{ "family": "House", "given": ["Gregory"] }] });
        assert!(hit(rt, &doc, "name", "greg"));
        assert!(hit(rt, &doc, "name", "hou"));
        assert!(!hit(rt, &doc, "name", "wilson"));
        assert!(matches!(
            error(rt, &[("family", "x")]),
            SearchError::Unknown(_)
        ));
    }

    // --------------------------------------------------------------------------------------
    // Dates
    // --------------------------------------------------------------------------------------

    fn patient_born(date: &str) -> Value {
        json!({ "resourceType": "Patient", "birthDate": date })
    }

    #[test]
    fn date_parsing() {
        let day = |y, m, d| days_from_civil(y, m, d) * US_PER_DAY;
        assert_eq!(
            parse_date("1984"),
            Some(Range {
                lo: day(1984, 1, 1),
                hi: day(1985, 1, 1)
            })
        );
        assert_eq!(
            parse_date("1984-02"),
            Some(Range {
                lo: day(1984, 2, 1),
                hi: day(1984, 3, 1)
            })
        );
        assert_eq!(
            parse_date("1984-12"),
            Some(Range {
                lo: day(1984, 12, 1),
                hi: day(1985, 1, 1)
            })
        );
        assert_eq!(
            parse_date("1984-02-29"),
            Some(Range {
                lo: day(1984, 2, 29),
                hi: day(1984, 3, 1)
            })
        );
        let t = day(2024, 3, 3) + 10 * 3600 * US_PER_SEC;
        assert_eq!(
            parse_date("2024-03-03T10:00"),
            Some(Range {
                lo: t,
                hi: t + 60 * US_PER_SEC
            })
        );
        assert_eq!(
            parse_date("2024-03-03T10:00:00Z"),
            Some(Range {
                lo: t,
                hi: t + US_PER_SEC
            })
        );
        assert_eq!(
            parse_date("2024-03-03T11:30:00+01:30"),
            Some(Range {
                lo: t,
                hi: t + US_PER_SEC
            })
        );
        assert_eq!(
            parse_date("2024-03-03T10:00:00.5Z"),
            Some(Range {
                lo: t + 500_000,
                hi: t + 600_000
            })
        );
        assert_eq!(
            parse_date("2024-03-03T10:00:00.123456789Z"),
            Some(Range {
                lo: t + 123_456,
                hi: t + 123_457
            })
        );
        assert_eq!(
            parse_date("1970-01-01"),
            Some(Range {
                lo: 0,
                hi: US_PER_DAY
            })
        );
        for bad in [
            "",
            "198",
            "19844",
            "0000",
            "1984-13",
            "1984-00",
            "1984-02-30",
            "1983-02-29",
            "1900-02-29",
            "1984-1-01",
            "1984/01",
            "1984-01-01T",
            "1984-01-01T24:00",
            "1984-01-01T10:60",
            "1984-01-01T10:00:61",
            "1984-01-01T10:00:00.",
            "1984-01-01T10:00:00+15:00",
            "1984-01-01T10:00:00+01",
            "1984-01-01Z",
            "1984-01-01T10:00:00ZZ",
            " 1984",
            "1984 ",
            "１９８４",
            "CANARY-9Q",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
        assert!(parse_date("2000-02-29").is_some());
        assert!(parse_date("1984-01-01T10:00:60Z").is_some());
    }

    #[test]
    fn calendar_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }

    #[test]
    fn birthdate_prefixes() {
        let rt = ResourceType::PATIENT;
        let p = patient_born("1984-07-12");
        for (value, expected) in [
            ("1984", true),
            ("1984-07", true),
            ("1984-07-12", true),
            ("eq1984-07-12", true),
            ("1984-07-13", false),
            ("1984-07-12T10:00", false),
            ("1985", false),
            ("ne1984", false),
            ("ne1985", true),
            ("ge1984-07", true),
            ("ge1984-07-12", true),
            ("ge1984-07-13", false),
            ("gt1984-07-11", true),
            ("gt1984-07", false),
            ("gt1984-07-12", false),
            ("le1984-07-12", true),
            ("le1984-07-11", false),
            ("le1984", true),
            ("lt1984-07-12", false),
            ("lt1984-07-13", true),
            ("lt1984-07", false),
            ("sa1984-07-11", true),
            ("sa1984-07-12", false),
            ("sa1984-06", true),
            ("eb1984-07-13", true),
            ("eb1984-07-12", false),
            ("eb1985", true),
            ("ap1984-07-12T23:59:59Z", true),
            ("ap1984-07-13", false),
            ("ap1984", true),
            ("1990,1984", true),
        ] {
            assert_eq!(
                hit(rt, &p, "birthdate", value),
                expected,
                "birthdate={value}"
            );
        }
        // A partial birth date is a range too.
        let year_only = patient_born("1984");
        assert!(hit(rt, &year_only, "birthdate", "1984"));
        assert!(!hit(rt, &year_only, "birthdate", "1984-07"));
        assert!(hit(rt, &year_only, "birthdate", "ap1984-07"));
        assert!(hit(rt, &year_only, "birthdate", "ge1984-07"));
        assert!(hit(rt, &year_only, "birthdate", "le1984-07"));
        assert!(hit(rt, &year_only, "birthdate", "ne1984-07"));
        assert!(hit(rt, &year_only, "birthdate", "sa1983-12-31"));
        assert!(!hit(rt, &year_only, "birthdate", "sa1984-01-01"));
    }

    #[test]
    fn date_and_repeated_parameters() {
        let rt = ResourceType::PATIENT;
        let p = patient_born("1984-07-12");
        assert!(hits(
            rt,
            &p,
            &[("birthdate", "ge1984-01"), ("birthdate", "lt1985")]
        ));
        assert!(!hits(
            rt,
            &p,
            &[("birthdate", "ge1984-01"), ("birthdate", "lt1984-07")]
        ));
        assert!(hits(
            rt,
            &p,
            &[("birthdate", "1984"), ("gender:missing", "true")]
        ));
        assert!(!hits(rt, &p, &[("birthdate", "1984"), ("gender", "male")]));
    }

    #[test]
    fn date_times_with_zones() {
        let rt = ResourceType::OBSERVATION;
        // 2024-03-03T10:30:00+01:00 is 09:30 UTC.
        let obs = heart_rate();
        for (value, expected) in [
            ("2024-03-03", true),
            ("2024-03-03T09:30:00Z", true),
            ("2024-03-03T09:30Z", true),
            ("2024-03-03T10:30:00+01:00", true),
            ("2024-03-03T10:30:00Z", false),
            ("gt2024-03-03T09:29:59Z", true),
            ("lt2024-03-03T09:30:01Z", true),
            ("lt2024-03-03T09:30:00Z", false),
        ] {
            assert_eq!(hit(rt, &obs, "date", value), expected, "date={value}");
        }
        // Late evening in New York is the next UTC day.
        let late = json!({ "resourceType": "Observation", "effectiveDateTime": "2024-03-03T23:30:00-05:00" });
        assert!(hit(rt, &late, "date", "2024-03-04"));
        assert!(!hit(rt, &late, "date", "2024-03-03"));
    }

    #[test]
    fn periods() {
        let rt = ResourceType::ENCOUNTER;
        let period = |start: Option<&str>, end: Option<&str>| {
            let mut p = Map::new();
            if let Some(s) = start {
                p.insert("start".into(), json!(s));
            }
            if let Some(e) = end {
                p.insert("end".into(), json!(e));
            }
            json!({ "resourceType": "Encounter", "period": p })
        };
        let short = period(Some("2024-03-01"), Some("2024-03-05"));
        let open_end = period(Some("2024-03-01T08:00:00Z"), None);
        let open_start = period(None, Some("2024-03-05"));
        for (encounter, value, expected) in [
            (&short, "2024-03", true),
            (&short, "2024", true),
            (&short, "2024-03-03", false),
            (&short, "ap2024-03-03", true),
            (&short, "ap2024-03-06", false),
            (&short, "ge2024-03-03", true),
            (&short, "ge2024-03-06", false),
            (&short, "gt2024-03-04", true),
            (&short, "gt2024-03-05", false),
            (&short, "le2024-03-01", false),
            (&short, "le2024-03-02", true),
            (&short, "le2024-03-05", true),
            (&short, "lt2024-03-02", true),
            (&short, "lt2024-03-01", false),
            (&short, "sa2024-02-29", true),
            (&short, "sa2024-03-01", false),
            (&short, "eb2024-03-06", true),
            (&short, "eb2024-03-05", false),
            (&short, "ne2024-03-03", true),
            (&short, "ne2024-03", false),
            (&open_end, "2024", false),
            (&open_end, "ge2024", true),
            (&open_end, "gt2999", true),
            (&open_end, "gt9999", true),
            (&open_end, "ap2150", true),
            (&open_end, "ap2024-02", false),
            (&open_end, "lt2024-03-01T08:00:01Z", true),
            (&open_end, "lt2024-03-01T08:00:00Z", false),
            (&open_end, "sa2024-02", true),
            (&open_end, "eb2999", false),
            (&open_end, "ne2024", true),
            (&open_start, "2024", false),
            (&open_start, "le2024", true),
            (&open_start, "lt1000", true),
            (&open_start, "lt0001", true),
            (&open_start, "ap1500", true),
            (&open_start, "gt2024-03-04", true),
            (&open_start, "gt2024-03-05", false),
            (&open_start, "sa1000", false),
            (&open_start, "eb2024-03-06", true),
        ] {
            assert_eq!(
                hit(rt, encounter, "date", value),
                expected,
                "date={value} on {encounter}"
            );
        }
        // A period with neither start nor end, or an unparseable bound, has no value.
        for empty in [period(None, None), period(Some("garbage"), Some("2024"))] {
            assert!(keys_of(rt, &empty, "date").is_empty());
            assert!(hit(rt, &empty, "date:missing", "true"));
            assert!(!hit(rt, &empty, "date", "ne2024"));
        }
    }

    #[test]
    fn date_index_keys() {
        let rt = ResourceType::ENCOUNTER;
        let keys = |period: Value| {
            keys_of(
                rt,
                &json!({ "resourceType": "Encounter", "period": period }),
                "date",
            )
        };
        assert_eq!(
            keys(json!({ "start": "2024-02-28", "end": "2024-03-01" })),
            [
                "d:2024-02-28",
                "d:2024-02-29",
                "d:2024-03-01",
                "m:2024-02",
                "m:2024-03",
                "y:2024"
            ]
        );
        assert_eq!(
            keys(json!({ "start": "2024-03-01T08:00:00Z" })),
            ["y:+", "y:2024"]
        );
        assert_eq!(keys(json!({ "end": "2024-03-01" })), ["y:-", "y:2024"]);
        assert_eq!(keys(json!({ "start": "1500", "end": "1600" })), ["y:-"]);
        assert_eq!(keys(json!({ "start": "2300-01-01" })), ["y:+"]);
        // 63 days: months and years only.
        let medium = keys(json!({ "start": "2023-12-01", "end": "2024-02-01" }));
        assert_eq!(
            medium,
            ["m:2023-12", "m:2024-01", "m:2024-02", "y:2023", "y:2024"]
        );
        // 62 days: days too.
        let days = keys(json!({ "start": "2023-12-01", "end": "2024-01-31" }));
        assert_eq!(days.iter().filter(|k| k.starts_with("d:")).count(), 62);
        // 25 months: years only.
        assert_eq!(
            keys(json!({ "start": "2022-01", "end": "2024-01" })),
            ["y:2022", "y:2023", "y:2024"]
        );
        // Crossing the horizon.
        let wide = keys(json!({ "start": "1790", "end": "2210" }));
        assert_eq!(wide.len(), 403);
        assert!(wide.contains(&"y:-".to_owned()) && wide.contains(&"y:+".to_owned()));
        // A birth date: its day, month and year.
        assert_eq!(
            keys_of(
                ResourceType::PATIENT,
                &patient_born("1984-07-12"),
                "birthdate"
            ),
            ["d:1984-07-12", "m:1984-07", "y:1984"]
        );
        // A year touches 12 months (<= 24): month keys too.
        let year = keys_of(ResourceType::PATIENT, &patient_born("1984"), "birthdate");
        assert_eq!(year.len(), 13);
        assert_eq!(year.first().map(String::as_str), Some("m:1984-01"));
        assert_eq!(year.last().map(String::as_str), Some("y:1984"));
    }

    #[test]
    fn date_candidate_keys() {
        let rt = ResourceType::PATIENT;
        let c = |value: &str| candidates(rt, "birthdate", value).expect("bounded");
        assert_eq!(c("1984-07-12"), ["d:1984-07-12"]);
        assert_eq!(c("1984-07-12T10:00"), ["d:1984-07-12"]);
        assert_eq!(c("1984-07").len(), 1);
        assert_eq!(c("1984-07"), ["m:1984-07"]);
        assert_eq!(c("1984").len(), 12);
        assert_eq!(c("ap1984-07"), ["y:1984", "y:-", "y:+"]);
        let ge = c("ge1984-07");
        assert_eq!(ge.first().map(String::as_str), Some("y:1984"));
        assert_eq!(ge.last().map(String::as_str), Some("y:+"));
        assert_eq!(ge.len(), (2200 - 1984 + 1) + 1);
        assert_eq!(c("gt1984")[0], "y:1985");
        assert_eq!(c("gt2500"), ["y:+"]);
        assert_eq!(c("lt1700"), ["y:-"]);
        let lt = c("lt1984-01-01");
        assert_eq!(lt.last().map(String::as_str), Some("y:1983"));
        assert_eq!(lt.len(), 1 + (1983 - 1800 + 1));
        assert_eq!(c("le1984-01-01").last().map(String::as_str), Some("y:1984"));
        assert!(c("lt0001").len() == 1);
        assert_eq!(candidates(rt, "birthdate", "ne1984"), None);
        // Every year key list stays within the horizon.
        assert!(c("ge0001").len() <= 403);
    }

    /// The core property over a grid: dates of every shape x every prefix x many query values.
    #[test]
    fn date_index_has_no_false_negatives() {
        let rt = ResourceType::ENCOUNTER;
        let stored = [
            json!({ "start": "1984-07-12", "end": "1984-07-12" }),
            json!({ "start": "1984-07-12T10:30:00Z", "end": "1984-07-12T11:00:00+02:00" }),
            json!({ "start": "1984-07", "end": "1984-07" }),
            json!({ "start": "1984", "end": "1984" }),
            json!({ "start": "1983-12-31T23:00:00-05:00", "end": "1984-01-01T05:00:00Z" }),
            json!({ "start": "1984-01-15", "end": "1984-10-01" }),
            json!({ "start": "1984-11-15", "end": "1985-02-01" }),
            json!({ "start": "1980", "end": "1990-06-30" }),
            json!({ "start": "1984-03-01" }),
            json!({ "end": "1984-03-01" }),
            json!({ "start": "1700", "end": "1750" }),
            json!({ "start": "1790-05", "end": "1810" }),
            json!({ "start": "2190", "end": "2230" }),
            json!({ "start": "2300-01-01" }),
            json!({ "end": "1600" }),
            json!({ "start": "0001-01-01T00:00:00+14:00", "end": "0001-01-02" }),
            json!({ "start": "9999-12-31T23:00:00-14:00" }),
            json!({ "start": "9999-12-31", "end": "9999-12-31T23:59:59.999Z" }),
        ];
        let values = [
            "0001",
            "1600",
            "1700",
            "1750",
            "1799",
            "1800",
            "1810",
            "1983",
            "1983-12-31",
            "1984",
            "1984-01",
            "1984-01-01",
            "1984-03-01",
            "1984-07",
            "1984-07-11",
            "1984-07-12",
            "1984-07-12T10:45Z",
            "1984-07-12T10:30:00Z",
            "1984-07-13",
            "1984-10",
            "1985",
            "1985-01-31",
            "1990",
            "2200",
            "2201",
            "2230",
            "2300",
            "2500",
            "9999",
            "9999-12-31",
        ];
        let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
        let mut matched = 0;
        for period in &stored {
            let encounter = json!({ "resourceType": "Encounter", "period": period });
            assert!(!keys_of(rt, &encounter, "date").is_empty(), "{period}");
            for prefix in prefixes {
                for value in values {
                    let q = query(rt, &[("date", &format!("{prefix}{value}"))]);
                    if assert_sound(rt, &encounter, &q.clauses[0]) {
                        matched += 1;
                    }
                }
            }
        }
        assert!(matched > 1000, "{matched}");
    }

    #[test]
    fn timing_uses_outer_limits() {
        let rt = ResourceType::OBSERVATION;
        let obs = json!({ "resourceType": "Observation", "effectiveTiming": { "event": ["2024-01-05", "2024-03-10T10:00:00Z"] } });
        assert!(hit(rt, &obs, "date", "2024"));
        assert!(!hit(rt, &obs, "date", "2024-01"));
        assert!(hit(rt, &obs, "date", "ap2024-02"));
        assert!(hit(rt, &obs, "date", "sa2024-01-04"));
        assert!(hit(rt, &obs, "date", "eb2024-03-11"));
        let instant = json!({ "resourceType": "Observation", "effectiveInstant": "2024-01-05T10:00:00.123Z" });
        assert!(hit(rt, &instant, "date", "2024-01-05"));
        let period =
            json!({ "resourceType": "Observation", "effectivePeriod": { "start": "2024-01-05" } });
        assert!(hit(rt, &period, "date", "gt2025"));
    }

    #[test]
    fn condition_onset() {
        let rt = ResourceType::CONDITION;
        let dated = json!({ "resourceType": "Condition", "onsetDateTime": "2010-05-05" });
        let period = json!({ "resourceType": "Condition", "onsetPeriod": { "start": "2010-05", "end": "2010-06" } });
        let age = json!({ "resourceType": "Condition", "onsetAge": { "value": 40 } });
        assert!(hit(rt, &dated, "onset-date", "2010-05"));
        assert!(hit(rt, &period, "onset-date", "2010"));
        assert!(!hit(rt, &period, "onset-date", "2010-05"));
        assert!(!hit(rt, &age, "onset-date", "ne2010"));
    }

    #[test]
    fn date_errors() {
        let rt = ResourceType::PATIENT;
        for (value, reason) in [
            ("xx2024", "unknown prefix"),
            ("2024-13", "invalid date"),
            ("2024-02-30", "invalid date"),
            ("GT2024", "invalid date"),
            ("eq", "invalid date"),
            ("1984,", "empty value"),
            ("", "empty value"),
        ] {
            match error(rt, &[("birthdate", value)]) {
                SearchError::Invalid { param, reason: r } => {
                    assert_eq!((param, r), ("birthdate", reason), "{value}");
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn id_and_last_updated() {
        let rt = ResourceType::PATIENT;
        let p = json!({ "resourceType": "Patient", "id": "p-1.a", "meta": { "lastUpdated": "2024-05-06T07:08:09.123+02:00" } });
        assert!(hit(rt, &p, "_id", "p-1.a"));
        assert!(hit(rt, &p, "_id", "x,p-1.a"));
        assert!(!hit(rt, &p, "_id", "P-1.A"));
        assert!(!hit(rt, &p, "_id", "p-1"));
        assert!(hit(rt, &p, "_id:not", "x"));
        assert!(hit(rt, &p, "_lastUpdated", "2024-05-06"));
        assert!(hit(rt, &p, "_lastUpdated", "gt2024-05-06T05:08:08Z"));
        assert!(!hit(rt, &p, "_lastUpdated", "gt2024-05-06T05:08:09Z"));
        assert!(hit(rt, &p, "_lastUpdated", "ge2024-05-06T05:08:09Z"));
        assert!(hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09Z"));
        assert!(hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09.12Z"));
        assert!(!hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09.124Z"));
        assert!(hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09.123Z"));
        assert!(hit(rt, &p, "_lastUpdated", "le2024-05"));
        assert!(!hit(rt, &p, "_lastUpdated", "2024-05-07"));
        // `_id` is answered by id, not from the index.
        assert!(keys_of(rt, &p, "_id").is_empty());
        assert_eq!(candidates(rt, "_id", "p-1.a"), None);
        let ids = |list: &[(&str, &str)]| id_candidates(&query(rt, list).clauses[0]);
        assert_eq!(ids(&[("_id", "p-1.a,x")]).unwrap(), ["p-1.a", "x"]);
        assert_eq!(ids(&[("_id", "|p-1.a")]).unwrap(), ["p-1.a"]);
        assert_eq!(ids(&[("_id:not", "x")]), None);
        assert_eq!(ids(&[("_id:missing", "true")]), None);
        assert_eq!(ids(&[("gender", "male")]), None);
        // _id on any type.
        let claim = ResourceType::parse("Claim").expect("type");
        assert!(hit(claim, &json!({ "id": "c1" }), "_id", "c1"));
    }

    // --------------------------------------------------------------------------------------
    // Quantities
    // --------------------------------------------------------------------------------------

    fn observation_value(quantity: Value) -> Value {
        json!({ "resourceType": "Observation", "valueQuantity": quantity })
    }

    fn mg(value: Value) -> Value {
        observation_value(
            json!({ "value": value, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg" }),
        )
    }

    #[test]
    fn number_parsing_and_comparison() {
        let dec = |s: &str| parse_number(s).and_then(|n| n.exact_dec()).expect("number");
        let q = |s: &str| parse_number(s).and_then(|n| n.query_dec()).expect("number");
        assert_eq!(dec_cmp(dec("5.40"), dec("5.4")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("100"), dec("1e2")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("0.001"), dec("1E-3")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("-0"), dec("0.000")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("5.449"), dec("5.45")), Ordering::Less);
        assert_eq!(dec_cmp(dec("-5.449"), dec("-5.45")), Ordering::Greater);
        assert_eq!(dec_cmp(dec("99"), dec("100")), Ordering::Less);
        assert_eq!(dec_cmp(dec("-1"), dec("0")), Ordering::Less);
        assert_eq!(dec_cmp(dec("1e300"), dec("1e-300")), Ordering::Greater);
        assert_eq!(
            dec_cmp(
                dec("123456789012345678901234567890123456"),
                dec("123456789012345678901234567890123457")
            ),
            Ordering::Less
        );
        assert_eq!((q("100").m, q("100").e), (100, 0));
        assert_eq!((q("5.40").m, q("5.40").e), (540, -2));
        assert_eq!((q("1e2").m, q("1e2").e), (1, 2));
        assert_eq!((q("-0.05").m, q("-0.05").e), (-5, -2));
        for bad in [
            "",
            "-",
            ".5",
            "5.",
            "5..4",
            "1e",
            "1e+",
            "0x10",
            "5,4",
            "1e1234567",
            " 5",
            "5 ",
            "+5",
            "NaN",
            "inf",
        ] {
            assert!(
                parse_number(bad).and_then(|n| n.query_dec()).is_none(),
                "{bad:?}"
            );
        }
        assert!(
            parse_number(&"9".repeat(31))
                .and_then(|n| n.query_dec())
                .is_none()
        );
        assert!(
            parse_number(&"9".repeat(30))
                .and_then(|n| n.query_dec())
                .is_some()
        );
    }

    #[test]
    fn quantity_precision_and_prefixes() {
        let rt = ResourceType::OBSERVATION;
        for (value, query_value, expected) in [
            (json!(5.4), "5.4", true),
            (json!(5.35), "5.4", true),
            (json!(5.449), "5.4", true),
            (json!(5.45), "5.4", false),
            (json!(5.349), "5.4", false),
            (json!(5.4), "5.40", true),
            (json!(5.404), "5.40", true),
            (json!(5.41), "5.40", false),
            (json!(99.5), "100", true),
            (json!(100.5), "100", false),
            (json!(140), "1e2", true),
            (json!(150), "1e2", false),
            (json!(100), "ne100", false),
            (json!(100.5), "ne100", true),
            (json!(100.1), "gt100", true),
            (json!(100), "gt100", false),
            (json!(100), "ge100", true),
            (json!(99.99), "ge100", false),
            (json!(99.99), "lt100", true),
            (json!(100), "lt100", false),
            (json!(100), "le100", true),
            (json!(100.01), "le100", false),
            (json!(100.5), "sa100", true),
            (json!(100.49), "sa100", false),
            (json!(99.49), "eb100", true),
            (json!(99.5), "eb100", false),
            (json!(110), "ap100", true),
            (json!(90), "ap100", true),
            (json!(110.5), "ap100", false),
            (json!(-5.4), "-5.4", true),
            (json!(-5.449), "-5.4", true),
            (json!(-5.45), "-5.4", true),
            (json!(-5.35), "-5.4", false),
            (json!(-1), "lt0", true),
            (json!(0), "0", true),
            (json!(0.4), "0", true),
            (json!(0.5), "0", false),
            (json!(72), "72", true),
            (json!(1e21), "1e21", true),
            (json!(7), "1,7", true),
        ] {
            assert_eq!(
                hit(rt, &mg(value.clone()), "value-quantity", query_value),
                expected,
                "{value} vs {query_value}"
            );
        }
    }

    #[test]
    fn quantity_units() {
        let rt = ResourceType::OBSERVATION;
        let obs = mg(json!(5.4));
        for (query_value, expected) in [
            ("5.4|http://unitsofmeasure.org|mg", true),
            ("5.4||mg", true),
            ("5.4||milligram", true),
            ("5.4||g", false),
            ("5.4|http://other.org|mg", false),
            ("5.4|http://unitsofmeasure.org|milligram", false),
            ("gt5|http://unitsofmeasure.org|mg", true),
            ("5.4||", true),
        ] {
            assert_eq!(
                hit(rt, &obs, "value-quantity", query_value),
                expected,
                "{query_value}"
            );
        }
        assert_eq!(
            keys_of(rt, &obs, "value-quantity"),
            [
                "u:*",
                "u:http://unitsofmeasure.org|mg",
                "u:|mg",
                "u:|milligram"
            ]
        );
        assert_eq!(
            candidates(rt, "value-quantity", "5.4||mg"),
            Some(vec!["u:|mg".to_owned()])
        );
        assert_eq!(
            candidates(rt, "value-quantity", "ne5.4"),
            Some(vec!["u:*".to_owned()])
        );
        let no_value = observation_value(json!({ "unit": "mg" }));
        assert!(keys_of(rt, &no_value, "value-quantity").is_empty());
        assert!(!hit(rt, &no_value, "value-quantity", "ne5"));
        let sampled =
            json!({ "resourceType": "Observation", "valueSampledData": { "data": "1 2 3" } });
        assert!(!hit(rt, &sampled, "value-quantity", "ne5"));
        for bad in [
            "5.4|mg",
            "5.4|http://unitsofmeasure.org|",
            "abc",
            "xx5",
            "5.4|a|b|c",
            "5.4mg",
        ] {
            assert!(
                matches!(
                    error(rt, &[("value-quantity", bad)]),
                    SearchError::Invalid {
                        param: "value-quantity",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn quantity_index_has_no_false_negatives() {
        let rt = ResourceType::OBSERVATION;
        let stored = [
            mg(json!(5.4)),
            mg(json!(-0.001)),
            mg(json!(0)),
            mg(json!(1e21)),
            mg(json!(123_456)),
            observation_value(json!({ "value": 7, "unit": "mmol/L" })),
            observation_value(json!({ "value": 7, "system": "http://s", "code": "c" })),
            observation_value(json!({ "value": 7 })),
        ];
        let units = [
            "",
            "|http://unitsofmeasure.org|mg",
            "||mg",
            "||milligram",
            "||mmol/L",
            "|http://s|c",
            "||c",
        ];
        let numbers = ["5.4", "5", "0", "-0.001", "7", "1e21", "123456", "1.2e5"];
        let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
        let mut matched = 0;
        for obs in &stored {
            for prefix in prefixes {
                for number in numbers {
                    for unit in units {
                        let q = query(
                            rt,
                            &[("value-quantity", &format!("{prefix}{number}{unit}"))],
                        );
                        if assert_sound(rt, obs, &q.clauses[0]) {
                            matched += 1;
                        }
                    }
                }
            }
        }
        assert!(matched > 300, "{matched}");
    }

    #[test]
    fn token_string_reference_index_has_no_false_negatives() {
        let patients = [
            mueller(),
            json!({ "resourceType": "Patient", "id": "p2", "gender": "male", "name": [{ "text": "  Ærø   Œil ", "given": ["É"] }],
                    "identifier": [{ "system": "urn:a", "value": "1" }, { "value": "2" }, { "system": "urn:b" }],
                    "telecom": [{ "system": "email", "value": "X@Y.Z" }, { "system": "phone", "value": "(0) 1-2" }] }),
            json!({ "resourceType": "Patient" }),
        ];
        let queries: Vec<(&str, &str)> = vec![
            ("_id", "p1"),
            ("_id", "p2"),
            ("gender", "male"),
            ("gender", "|male"),
            ("gender", "x|male"),
            ("identifier", "1"),
            ("identifier", "urn:a|1"),
            ("identifier", "|2"),
            ("identifier", "urn:b|"),
            ("identifier", "urn:a|"),
            ("identifier", "2"),
            ("identifier", "urn:a|2"),
            ("email", "x@y.z"),
            ("email", "mailto|X@y.Z"),
            ("phone", "012"),
            ("phone", "0 1 2"),
            ("name", "a"),
            ("name", "aero oe"),
            ("name", "AERØ ŒIL"),
            ("name", "e"),
            ("name", "dr. anna müller"),
            ("name", "smith-jones"),
            ("name", "vanderbilt-worthington"),
            ("name", "vanderbilt-worthingtonian"),
            ("name:exact", "Dr. Anna Müller"),
            ("name:exact", "  Ærø   Œil "),
            ("name:exact", "Vanderbilt-Worthington"),
            ("name:exact", "Vanderbilt"),
            ("family:exact", "Smith-Jones"),
            ("given", "maria luisa"),
            ("given", "É"),
            ("name:contains", "orth"),
            ("gender:missing", "true"),
            ("gender:not", "female"),
            ("name:missing", "false"),
        ];
        let mut matched = 0;
        for patient in &patients {
            for (name, value) in &queries {
                let q = query(ResourceType::PATIENT, &[(name, value)]);
                if assert_sound(ResourceType::PATIENT, patient, &q.clauses[0]) {
                    matched += 1;
                }
            }
        }
        assert!(matched >= 25, "{matched}");

        let rt = ResourceType::OBSERVATION;
        let observations = [
            heart_rate(),
            observation_with_subject("Group/g1"),
            observation_with_subject("https://x/fhir/Device/d1/_history/1"),
            observation_with_subject("Location/l1"),
        ];
        let reference_queries = [
            ("subject", "p1"),
            ("subject", "g1"),
            ("subject", "d1"),
            ("subject", "l1"),
            ("subject", "Device/d1"),
            ("subject:Group", "g1"),
            ("subject:Location", "l1"),
            ("patient", "p1"),
            ("code", "http://acme.org/codes|"),
            ("code", "|HR"),
            ("category", "http://acme.org/cat|"),
            ("status", "final"),
        ];
        for obs in &observations {
            for (name, value) in reference_queries {
                let q = query(rt, &[(name, value)]);
                assert_sound(rt, obs, &q.clauses[0]);
            }
        }
    }

    #[test]
    fn index_keys_are_deterministic_and_deduplicated() {
        let rt = ResourceType::OBSERVATION;
        let mut obs = heart_rate();
        obs["category"] = json!([
            { "coding": [{ "system": "s", "code": "c" }] },
            { "coding": [{ "system": "s", "code": "c" }] }
        ]);
        let keys = index_keys(rt, &obs);
        assert_eq!(keys, index_keys(rt, &obs.clone()));
        let unique: BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        assert_eq!(keys_of(rt, &obs, "category"), ["c:c", "s:s", "sc:s|c"]);
        assert!(keys_of(rt, &obs, "_id").is_empty());
        assert_eq!(keys_of(rt, &obs, "patient"), ["r:Patient/p1"]);
        assert_eq!(keys_of(rt, &obs, "subject"), ["r:Patient/p1"]);
        assert_eq!(
            keys_of(rt, &obs, "code"),
            [
                "c:8867-4",
                "c:HR",
                "s:http://acme.org/codes",
                "s:http://loinc.org",
                "sc:http://loinc.org|8867-4"
            ]
        );
        // Parameter order follows params().
        let order: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
        let mut expected_order = order.clone();
        expected_order.dedup();
        let defined: Vec<&str> = params(rt)
            .iter()
            .map(|d| d.name)
            .filter(|n| expected_order.contains(n))
            .collect();
        assert_eq!(expected_order, defined);
        // Garbage does not panic and yields nothing.
        for garbage in [
            json!(null),
            json!([1, 2]),
            json!("x"),
            json!({ "code": 5, "subject": [] }),
        ] {
            assert!(index_keys(rt, &garbage).is_empty(), "{garbage}");
        }
    }

    // --------------------------------------------------------------------------------------
    // Query parsing
    // --------------------------------------------------------------------------------------

    #[test]
    fn defaults() {
        let q = query(ResourceType::PATIENT, &[]);
        assert!(q.clauses.is_empty());
        assert_eq!(q.count, DEFAULT_COUNT);
        assert!(q.sort.is_empty());
        assert!(!q.summary_count);
        assert_eq!(q.total, Total::None);
        assert!(q.include.is_empty() && q.revinclude.is_empty());
        assert!(q.elements.is_none() && q.page.is_none() && q.ignored.is_empty());
    }

    #[test]
    fn unknown_parameters_and_lenient_mode() {
        let rt = ResourceType::PATIENT;
        for name in [
            "foo",
            "_has:Observation:patient:code",
            "_tag",
            "address",
            "name.family",
            "",
            "Name",
            "_pretty",
        ] {
            assert!(
                matches!(error(rt, &[(name, "x")]), SearchError::Unknown(n) if n == name),
                "{name}"
            );
        }
        assert!(matches!(
            error(rt, &[("gender:foo", "x")]),
            SearchError::UnknownModifier { param: "gender" }
        ));
        assert!(matches!(
            error(rt, &[("_count:x", "1")]),
            SearchError::UnknownModifier { param: "_count" }
        ));
        let list = pairs(&[
            ("foo", "1"),
            ("gender", "male"),
            ("name:fuzzy", "x"),
            ("_include:iterate", "Patient:x"),
            ("bar:baz", "2"),
        ]);
        let q = parse_query(rt, &list, true).expect("lenient");
        assert_eq!(
            q.ignored,
            ["foo", "name:fuzzy", "_include:iterate", "bar:baz"]
        );
        assert_eq!(q.clauses.len(), 1);
        assert_eq!(q.clauses[0].param.name, "gender");
        // Lenient mode does not forgive bad values.
        assert!(parse_query(rt, &pairs(&[("birthdate", "x")]), true).is_err());
    }

    #[test]
    fn count_summary_total_page_format() {
        let rt = ResourceType::PATIENT;
        assert_eq!(query(rt, &[("_count", "5")]).count, 5);
        assert_eq!(query(rt, &[("_count", "0")]).count, 0);
        assert_eq!(query(rt, &[("_count", "1000")]).count, 1000);
        assert_eq!(query(rt, &[("_count", "1001")]).count, MAX_COUNT);
        assert_eq!(
            query(rt, &[("_count", "99999999999999999999999")]).count,
            MAX_COUNT
        );
        assert_eq!(query(rt, &[("_count", "007")]).count, 7);
        for bad in ["", "-1", "1.5", "abc", " 5", "1e3"] {
            assert!(
                matches!(
                    error(rt, &[("_count", bad)]),
                    SearchError::Invalid {
                        param: "_count",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            error(rt, &[("_count", "1"), ("_count", "2")]),
            SearchError::Invalid {
                param: "_count",
                reason: "repeated parameter"
            }
        ));
        let q = query(rt, &[("_summary", "count")]);
        assert!(q.summary_count);
        assert_eq!(q.total, Total::Accurate);
        let q = query(rt, &[("_summary", "count"), ("_total", "estimate")]);
        assert_eq!(q.total, Total::Estimate);
        let q = query(rt, &[("_total", "none"), ("_summary", "count")]);
        assert_eq!(q.total, Total::Accurate);
        assert!(!query(rt, &[("_summary", "false")]).summary_count);
        assert!(matches!(
            error(rt, &[("_summary", "true")]),
            SearchError::Invalid {
                param: "_summary",
                ..
            }
        ));
        assert_eq!(query(rt, &[("_total", "accurate")]).total, Total::Accurate);
        assert_eq!(query(rt, &[("_total", "estimate")]).total, Total::Estimate);
        assert!(matches!(
            error(rt, &[("_total", "all")]),
            SearchError::Invalid {
                param: "_total",
                ..
            }
        ));
        assert_eq!(
            query(rt, &[("_page", "opaque-Cursor_1")]).page.as_deref(),
            Some("opaque-Cursor_1")
        );
        let q = query(
            rt,
            &[("_format", "json"), ("_format", "xml"), ("_format:x", "y")],
        );
        assert!(q.ignored.is_empty() && q.clauses.is_empty());
    }

    #[test]
    fn sort() {
        let rt = ResourceType::OBSERVATION;
        let q = query(rt, &[("_sort", "-date,_id,_lastUpdated")]);
        assert_eq!(
            q.sort,
            [
                SortKey {
                    param: "date",
                    descending: true
                },
                SortKey {
                    param: "_id",
                    descending: false
                },
                SortKey {
                    param: "_lastUpdated",
                    descending: false
                }
            ]
        );
        assert_eq!(
            query(ResourceType::PATIENT, &[("_sort", "birthdate")]).sort[0].param,
            "birthdate"
        );
        for bad in [
            "birthdate",
            "code",
            "",
            "-",
            "date,",
            "--date",
            "date,-date",
            "Date",
            "name",
        ] {
            assert!(
                matches!(
                    error(rt, &[("_sort", bad)]),
                    SearchError::Invalid { param: "_sort", .. }
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            error(rt, &[("_sort:desc", "date")]),
            SearchError::UnknownModifier { param: "_sort" }
        ));
    }

    #[test]
    fn sort_values() {
        let rt = ResourceType::ENCOUNTER;
        let asc = SortKey {
            param: "date",
            descending: false,
        };
        let desc = SortKey {
            param: "date",
            descending: true,
        };
        let enc =
            |period: Value| json!({ "resourceType": "Encounter", "id": "e1", "period": period });
        let closed = enc(json!({ "start": "2024-03-01", "end": "2024-03-05" }));
        assert_eq!(
            sort_value(rt, &closed, &asc).as_deref(),
            Some("2024-03-01T00:00:00.000000Z")
        );
        assert_eq!(
            sort_value(rt, &closed, &desc).as_deref(),
            Some("2024-03-05T23:59:59.999999Z")
        );
        let open_end = enc(json!({ "start": "2024-03-01T10:00:00+02:00" }));
        assert_eq!(
            sort_value(rt, &open_end, &asc).as_deref(),
            Some("2024-03-01T08:00:00.000000Z")
        );
        assert_eq!(sort_value(rt, &open_end, &desc).as_deref(), Some("~"));
        let open_start = enc(json!({ "end": "2024" }));
        assert_eq!(sort_value(rt, &open_start, &asc).as_deref(), Some("-"));
        assert!(Some("-".to_owned()) < sort_value(rt, &closed, &asc));
        assert!(sort_value(rt, &closed, &desc) < Some("~".to_owned()));
        assert_eq!(sort_value(rt, &json!({}), &asc), None);
        let id = SortKey {
            param: "_id",
            descending: false,
        };
        assert_eq!(sort_value(rt, &closed, &id).as_deref(), Some("e1"));
        let p =
            json!({ "birthDate": "1984-07", "meta": { "lastUpdated": "2024-01-01T00:00:00Z" } });
        let birth = SortKey {
            param: "birthdate",
            descending: false,
        };
        assert_eq!(
            sort_value(ResourceType::PATIENT, &p, &birth).as_deref(),
            Some("1984-07-01T00:00:00.000000Z")
        );
        let updated = SortKey {
            param: "_lastUpdated",
            descending: true,
        };
        assert_eq!(
            sort_value(ResourceType::PATIENT, &p, &updated).as_deref(),
            Some("2024-01-01T00:00:00.999999Z")
        );
        // Comparable as strings.
        let earlier = json!({ "birthDate": "0999-12-31" });
        assert!(
            sort_value(ResourceType::PATIENT, &earlier, &birth)
                < sort_value(ResourceType::PATIENT, &p, &birth)
        );
        assert_eq!(format_instant(i64::MAX - 1), "9999-12-31T23:59:59.999999Z");
        assert_eq!(format_instant(i64::MIN + 1), "0001-01-01T00:00:00.000000Z");
        // A resource reduced to the members a sort reads sorts the same.
        for (rt, resource) in [
            (ResourceType::ENCOUNTER, &closed),
            (ResourceType::ENCOUNTER, &open_end),
            (ResourceType::ENCOUNTER, &open_start),
            (ResourceType::PATIENT, &p),
        ] {
            for key in [&asc, &desc, &id, &birth, &updated] {
                let keep = elements_read(rt, &[], std::slice::from_ref(key));
                let bytes = serde_json::to_vec(resource).unwrap();
                let reduced = parse_members(&bytes, &keep).unwrap();
                assert_eq!(sort_value(rt, &reduced, key), sort_value(rt, resource, key));
            }
        }
    }

    #[test]
    fn includes() {
        let rt = ResourceType::OBSERVATION;
        let q = query(
            rt,
            &[
                ("_include", "Observation:subject:Patient"),
                ("_include", "Observation:patient"),
            ],
        );
        assert_eq!(q.include.len(), 2);
        assert_eq!(q.include[0].source, ResourceType::OBSERVATION);
        assert_eq!(q.include[0].param.name, "subject");
        assert_eq!(q.include[0].target, Some(ResourceType::PATIENT));
        assert_eq!(q.include[1].target, None);
        let all = query(rt, &[("_include", "Observation:*")]);
        let names: Vec<_> = all.include.iter().map(|i| i.param.name).collect();
        assert_eq!(names, ["subject", "patient"]);
        let rev = query(
            ResourceType::PATIENT,
            &[
                ("_revinclude", "Observation:subject"),
                ("_revinclude", "Condition:patient:Patient"),
                ("_revinclude", "Immunization:*"),
            ],
        );
        assert_eq!(rev.revinclude.len(), 3);
        assert_eq!(rev.revinclude[1].source, ResourceType::CONDITION);
        assert_eq!(rev.revinclude[2].param.name, "patient");
        let group_rev = query(
            ResourceType::parse("Group").expect("type"),
            &[("_revinclude", "Observation:*")],
        );
        let names: Vec<_> = group_rev.revinclude.iter().map(|i| i.param.name).collect();
        assert_eq!(names, ["subject"]);
        for (name, value) in [
            ("_include", "Patient:organization"),
            ("_include", "Condition:patient"),
            ("_include", "Observation:code"),
            ("_include", "Observation:subject:Practitioner"),
            ("_include", "Observation:patient:Group"),
            ("_include", "Observation"),
            ("_include", "Observation:subject:Patient:x"),
            ("_include", "Foo:bar"),
            ("_include", "*"),
            ("_revinclude", "Observation:subject"),
            ("_revinclude", "Observation:subject:Group"),
        ] {
            assert!(
                matches!(error(rt, &[(name, value)]), SearchError::Invalid { .. }),
                "{name}={value}"
            );
        }
        assert!(matches!(
            error(
                ResourceType::PATIENT,
                &[("_revinclude", "Observation:subject:Group")]
            ),
            SearchError::Invalid {
                param: "_revinclude",
                ..
            }
        ));
    }

    #[test]
    fn elements() {
        let rt = ResourceType::PATIENT;
        let q = query(rt, &[("_elements", "name,birthDate,name,value[x]")]);
        assert_eq!(
            q.elements,
            Some(vec![
                "name".to_owned(),
                "birthDate".to_owned(),
                "value".to_owned()
            ])
        );
        for bad in ["", "name,", "name.family", "na me", "1abc", "_id", "ñame"] {
            assert!(
                matches!(
                    error(rt, &[("_elements", bad)]),
                    SearchError::Invalid {
                        param: "_elements",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn apply_elements_keeps_requested_and_mandatory_and_tags() {
        let mut p = json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": { "versionId": "3", "tag": [{ "system": "urn:x", "code": "y" }] },
            "text": { "div": "<div>secret</div>" },
            "name": [{ "family": "Doe" }],
            "birthDate": "1984",
            "_birthDate": { "extension": [] },
            "gender": "female",
            "deceasedBoolean": false,
            "telecom": []
        });
        apply_elements(
            &mut p,
            &[
                "name".to_owned(),
                "birthDate".to_owned(),
                "deceased[x]".to_owned(),
            ],
        );
        let keys: BTreeSet<&str> = p
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "_birthDate",
                "birthDate",
                "deceasedBoolean",
                "id",
                "meta",
                "name",
                "resourceType"
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(p["meta"]["versionId"], "3");
        assert_eq!(p["meta"]["tag"].as_array().map(Vec::len), Some(2));
        assert_eq!(p["meta"]["tag"][1]["code"], "SUBSETTED");
        assert_eq!(p["meta"]["tag"][1]["system"], SUBSETTED_SYSTEM);
        // Idempotent tag.
        apply_elements(&mut p, &["name".to_owned()]);
        assert_eq!(p["meta"]["tag"].as_array().map(Vec::len), Some(2));
        assert!(p.get("birthDate").is_none());
        // No meta: created.
        let mut bare = json!({ "resourceType": "Observation", "status": "final", "valueQuantity": {}, "valueSet": 1 });
        apply_elements(&mut bare, &["value".to_owned()]);
        assert_eq!(bare["meta"]["tag"][0]["code"], "SUBSETTED");
        assert!(bare.get("valueQuantity").is_some());
        assert!(bare.get("valueSet").is_some(), "over-inclusion is allowed");
        assert!(bare.get("status").is_none());
        let mut not_object = json!([1]);
        apply_elements(&mut not_object, &["x".to_owned()]);
        assert_eq!(not_object, json!([1]));
    }

    #[test]
    fn values_are_limited() {
        let rt = ResourceType::PATIENT;
        let many = vec!["a"; MAX_VALUES_PER_PARAMETER].join(",");
        assert_eq!(
            query(rt, &[("gender", &many)]).clauses[0].values.len(),
            MAX_VALUES_PER_PARAMETER
        );
        let too_many = vec!["a"; MAX_VALUES_PER_PARAMETER + 1].join(",");
        assert!(matches!(
            error(rt, &[("gender", &too_many)]),
            SearchError::Invalid {
                reason: "too many values",
                ..
            }
        ));
    }

    #[test]
    fn misuse_fails_closed() {
        // A clause of another type's parameter matches nothing.
        let q = query(ResourceType::CONDITION, &[("patient", "p1")]);
        let obs = observation_with_subject("Patient/p1");
        assert!(!matches(ResourceType::OBSERVATION, &obs, &q.clauses[0]));
        // A value of another parameter type matches nothing and has no candidates.
        let date = query(ResourceType::PATIENT, &[("birthdate", "1984")]);
        let gender = query(ResourceType::PATIENT, &[("gender:not", "x")]);
        let mixed = Clause {
            param: gender.clauses[0].param,
            modifier: Some("not".to_owned()),
            values: date.clauses[0].values.clone(),
        };
        assert!(!matches(
            ResourceType::PATIENT,
            &patient_born("1984"),
            &mixed
        ));
        let mixed = Clause {
            modifier: None,
            ..mixed
        };
        assert_eq!(candidate_keys(&mixed, &mixed.values[0]), Some(Vec::new()));
        // An unknown modifier smuggled into a clause.
        let bogus = Clause {
            modifier: Some("bogus".to_owned()),
            ..gender.clauses[0].clone()
        };
        assert!(!matches(ResourceType::PATIENT, &json!({}), &bogus));
        assert_eq!(candidate_keys(&bogus, &bogus.values[0]), Some(Vec::new()));
    }

    // --------------------------------------------------------------------------------------
    // Errors never echo values
    // --------------------------------------------------------------------------------------

    #[test]
    fn errors_do_not_echo_values_or_unknown_names() {
        let cases: Vec<(ResourceType, Vec<(String, String)>)> = [
            (ResourceType::PATIENT, (CANARY, "x")),
            (ResourceType::PATIENT, ("name:CANARY-9Q", "x")),
            (ResourceType::PATIENT, ("_count:CANARY-9Q", "x")),
            (ResourceType::PATIENT, ("birthdate", CANARY)),
            (ResourceType::PATIENT, ("birthdate", "geCANARY-9Q")),
            (ResourceType::PATIENT, ("birthdate", "CANARY-9Q,1984")),
            (ResourceType::PATIENT, ("identifier", "a|b|CANARY-9Q")),
            (ResourceType::PATIENT, ("gender:missing", CANARY)),
            (ResourceType::PATIENT, ("_count", CANARY)),
            (ResourceType::PATIENT, ("_sort", CANARY)),
            (ResourceType::PATIENT, ("_summary", CANARY)),
            (ResourceType::PATIENT, ("_total", CANARY)),
            (ResourceType::PATIENT, ("_include", CANARY)),
            (
                ResourceType::PATIENT,
                ("_revinclude", "Observation:CANARY-9Q"),
            ),
            (ResourceType::PATIENT, ("_elements", "CANARY-9Q")),
            (ResourceType::OBSERVATION, ("subject", "CANARY 9Q")),
            (ResourceType::OBSERVATION, ("subject", "Patient/CANARY 9Q")),
            (ResourceType::OBSERVATION, ("value-quantity", CANARY)),
            (
                ResourceType::OBSERVATION,
                ("value-quantity", "5|CANARY-9Q|"),
            ),
        ]
        .into_iter()
        .map(|(rt, (n, v))| (rt, pairs(&[(n, v)])))
        .collect();
        for (rt, list) in cases {
            let err = parse_query(rt, &list, false).expect_err("refused");
            assert!(!err.to_string().contains("CANARY"), "{list:?}: {err}");
            assert!(!format!("{err:?}").contains("CANARY"), "{list:?}: {err:?}");
        }
        assert_eq!(
            SearchError::Unknown(CANARY.to_owned()).to_string(),
            "unknown search parameter"
        );
        assert_eq!(
            SearchError::Invalid {
                param: "birthdate",
                reason: "invalid date"
            }
            .to_string(),
            "invalid value for search parameter birthdate: invalid date"
        );
        // Nor does the Debug output of a parsed query.
        let q = query(
            ResourceType::PATIENT,
            &[
                ("name", CANARY),
                ("family:exact", CANARY),
                ("identifier", "CANARY-9Q|CANARY-9Q"),
            ],
        );
        assert!(!format!("{q:?}").contains("CANARY"));
    }

    // --------------------------------------------------------------------------------------
    // Randomized properties
    // --------------------------------------------------------------------------------------

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[usize::try_from(self.below(items.len() as u64)).expect("index")]
        }
    }

    fn random_date(rng: &mut Rng) -> String {
        let year = match rng.below(10) {
            0 => 1 + rng.below(9999),
            1 => 1790 + rng.below(20),
            2 => 2190 + rng.below(20),
            _ => 1980 + rng.below(10),
        };
        let month = 1 + rng.below(12);
        let day =
            1 + rng.below(u64::try_from(days_in_month(year as i64, month as i64)).expect("days"));
        let (hour, minute, second) = (rng.below(24), rng.below(60), rng.below(60));
        let zone = rng.pick(&["", "Z", "+14:00", "-14:00", "+05:30", "-03:00"]);
        match rng.below(7) {
            0 => format!("{year:04}"),
            1 => format!("{year:04}-{month:02}"),
            2 | 3 => format!("{year:04}-{month:02}-{day:02}"),
            4 => format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}{zone}"),
            5 => format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{zone}"),
            _ => format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{}{zone}",
                rng.below(1000)
            ),
        }
    }

    #[test]
    fn random_dates_have_no_false_negatives() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
        let mut matched = 0;
        for _ in 0..1200 {
            let start = random_date(&mut rng);
            // Mostly nearby ends, so that short periods (day and month keys) are common.
            let end = if rng.below(2) == 0 {
                start.clone()
            } else {
                random_date(&mut rng)
            };
            let period = match rng.below(4) {
                0 => json!({ "start": start }),
                1 => json!({ "end": end }),
                _ => json!({ "start": start, "end": end }),
            };
            let encounter = json!({ "resourceType": "Encounter", "period": period });
            let observation = json!({ "resourceType": "Observation", "effectiveDateTime": start });
            for _ in 0..5 {
                let value = format!("{}{}", rng.pick(&prefixes), random_date(&mut rng));
                let e = query(ResourceType::ENCOUNTER, &[("date", &value)]);
                let o = query(ResourceType::OBSERVATION, &[("date", &value)]);
                matched += usize::from(assert_sound(
                    ResourceType::ENCOUNTER,
                    &encounter,
                    &e.clauses[0],
                ));
                matched += usize::from(assert_sound(
                    ResourceType::OBSERVATION,
                    &observation,
                    &o.clauses[0],
                ));
            }
            // Queries close to the stored value, where the interesting boundaries are.
            for prefix in prefixes {
                for near in [&start, &end] {
                    let value = format!("{prefix}{near}");
                    let e = query(ResourceType::ENCOUNTER, &[("date", &value)]);
                    matched += usize::from(assert_sound(
                        ResourceType::ENCOUNTER,
                        &encounter,
                        &e.clauses[0],
                    ));
                    let truncated: String = near.chars().take(7).collect();
                    let value = format!("{prefix}{truncated}");
                    let o = query(ResourceType::OBSERVATION, &[("date", &value)]);
                    matched += usize::from(assert_sound(
                        ResourceType::OBSERVATION,
                        &observation,
                        &o.clauses[0],
                    ));
                }
            }
        }
        assert!(matched > 6_000, "{matched}");
    }

    #[test]
    fn random_quantities_have_no_false_negatives_and_agree_with_f64() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
        let random_number = |rng: &mut Rng| -> String {
            let sign = if rng.below(4) == 0 { "-" } else { "" };
            let int = rng.below(200);
            match rng.below(3) {
                0 => format!("{sign}{int}"),
                1 => format!("{sign}{int}.{}", rng.below(10)),
                _ => format!("{sign}{int}.{:02}", rng.below(100)),
            }
        };
        let mut matched = 0;
        for _ in 0..3000 {
            let stored: f64 = random_number(&mut rng).parse().expect("f64");
            let obs = mg(json!(stored));
            let prefix = rng.pick(&prefixes);
            let number = random_number(&mut rng);
            let unit = rng.pick(&["", "||mg", "|http://unitsofmeasure.org|mg", "||g"]);
            let q = query(
                ResourceType::OBSERVATION,
                &[("value-quantity", &format!("{prefix}{number}{unit}"))],
            );
            let hit = assert_sound(ResourceType::OBSERVATION, &obs, &q.clauses[0]);
            matched += usize::from(hit);
            // Cross-check with floating point where it is unambiguous (away from boundaries).
            let n: f64 = number.parse().expect("f64");
            let decimals = number.split('.').nth(1).map_or(0, str::len);
            let half = 0.5 * 10f64.powi(-i32::try_from(decimals).expect("small"));
            let (lo, hi) = (n - half, n + half);
            let expected = match prefix {
                "" | "eq" => stored >= lo && stored < hi,
                "ne" => !(stored >= lo && stored < hi),
                "gt" => stored > n,
                "lt" => stored < n,
                "ge" => stored >= n,
                "le" => stored <= n,
                "sa" => stored >= hi,
                "eb" => stored < lo,
                _ => (stored >= lo && stored < hi) || (stored - n).abs() <= n.abs() / 10.0,
            } && unit != "||g";
            let near_boundary = [lo, hi, n, n - n.abs() / 10.0, n + n.abs() / 10.0]
                .iter()
                .any(|b| (stored - b).abs() < 1e-9);
            if !near_boundary {
                assert_eq!(hit, expected, "{stored} vs {prefix}{number}{unit}");
            }
        }
        assert!(matched > 500, "{matched}");
    }

    #[test]
    fn random_strings_have_no_false_negatives() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let alphabet = [
            "a", "b", "é", "É", "ü", "Ü", "ß", "æ", " ", "  ", "-", "ł", "σ", "\u{0301}", "Z",
        ];
        let mut matched = 0;
        for _ in 0..2000 {
            let length = rng.below(20);
            let value: String = (0..length).map(|_| rng.pick(&alphabet)).collect();
            let patient = json!({ "resourceType": "Patient", "name": [{ "family": value }] });
            let norm = normalize_string(&value);
            let mut queries: Vec<(String, &str)> = Vec::new();
            let chars: Vec<char> = norm.chars().collect();
            if !chars.is_empty() {
                let cut = 1 + usize::try_from(rng.below(chars.len() as u64)).expect("index");
                queries.push((chars[..cut].iter().collect(), "family"));
            }
            if !norm.is_empty() {
                queries.push((value.clone(), "family:exact"));
                queries.push((value.to_uppercase(), "family"));
            }
            let random: String = (0..1 + rng.below(4)).map(|_| rng.pick(&alphabet)).collect();
            if !normalize_string(&random).is_empty() {
                queries.push((random, "family"));
            }
            for (q, name) in &queries {
                let escaped = q.replace('\\', "\\\\").replace(',', "\\,");
                let parsed = query(ResourceType::PATIENT, &[(name, &escaped)]);
                matched += usize::from(assert_sound(
                    ResourceType::PATIENT,
                    &patient,
                    &parsed.clauses[0],
                ));
            }
        }
        assert!(matched > 2000, "{matched}");
    }
}
