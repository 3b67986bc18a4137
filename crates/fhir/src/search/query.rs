//! A parsed search: its clauses, values and result parameters, and the errors of parsing.

use std::fmt;

use super::chain::{Chain, Has};
use super::date::Range;
use super::number::Dec;
use super::params::{ParamDef, params};
use super::syntax::Prefix;
use crate::ResourceType;
use crate::summary::Summary;

/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: u32 = 20;
/// Largest page size; larger `_count` values are clamped to it.
pub const MAX_COUNT: u32 = 1000;
/// At most this many comma-separated values in one parameter.
pub const MAX_VALUES_PER_PARAMETER: usize = 100;

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
    /// `_summary=true|text|data|false`: the part of each match wanted.
    pub summary: Option<Summary>,
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
    /// Chained parameters (`subject:Patient.name=x`), one level: conditions on the resources
    /// a reference points to. The server resolves each to an ordinary clause before searching.
    pub chains: Vec<Chain>,
    /// `_has` (reverse chaining), one level: conditions on resources that point to the match.
    pub has: Vec<Has>,
}

impl Query {
    /// A search of `clauses` with every result parameter at its default (`_count` is
    /// [`DEFAULT_COUNT`]).
    #[must_use]
    pub fn with_clauses(clauses: Vec<Clause>) -> Self {
        Self {
            clauses,
            count: DEFAULT_COUNT,
            sort: Vec::new(),
            summary_count: false,
            summary: None,
            total: Total::None,
            include: Vec::new(),
            revinclude: Vec::new(),
            elements: None,
            page: None,
            ignored: Vec::new(),
            chains: Vec::new(),
            has: Vec::new(),
        }
    }

    /// Every condition of the search: its own clauses, then the inner clauses of its chains and
    /// `_has` parameters (what a check on the values searched for must see).
    pub fn all_clauses(&self) -> impl Iterator<Item = &Clause> {
        self.clauses
            .iter()
            .chain(self.chains.iter().map(|c| &c.inner))
            .chain(self.has.iter().map(|h| &h.inner))
    }

    /// How many conditions the search combines (clauses, chains and `_has` parameters).
    #[must_use]
    pub fn condition_count(&self) -> usize {
        self.clauses.len() + self.chains.len() + self.has.len()
    }
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
pub struct SearchValue(pub(super) Sv);

impl fmt::Debug for SearchValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Sv::Token { .. } => "token",
            Sv::Text(_) => "text",
            Sv::Str { .. } => "string",
            Sv::Ref { .. } => "reference",
            Sv::Canonical { .. } => "canonical",
            Sv::Date { .. } => "date",
            Sv::Quantity { .. } => "quantity",
            Sv::Number { .. } => "number",
            Sv::Uri(_) => "uri",
            Sv::OfType { .. } => "of-type",
            Sv::RefIdentifier { .. } => "reference identifier",
            Sv::Missing(_) => "missing",
            Sv::Composite(_) => "composite",
            Sv::Near { .. } => "near",
        };
        write!(f, "SearchValue({kind}, ..)")
    }
}

#[derive(Clone)]
pub(super) enum Sv {
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
    /// A canonical URL, and the version asked for (`url|version`), for a reference parameter
    /// whose elements are canonical.
    Canonical {
        url: String,
        version: Option<String>,
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
    Number {
        prefix: Prefix,
        number: Dec,
    },
    /// A uri, as written.
    Uri(String),
    /// `:of-type`: an Identifier's type (system and code) and value.
    OfType {
        type_system: String,
        type_code: String,
        value: String,
    },
    /// `:identifier` on a reference: the referenced resource's identifier.
    RefIdentifier {
        system: Sys,
        value: String,
    },
    /// `:missing=true` (`true`) or `:missing=false`.
    Missing(bool),
    /// A composite value: one clause per component, in order (each with one value).
    Composite(Vec<Clause>),
    /// `near`: a point and a distance in metres.
    Near {
        lat: f64,
        lon: f64,
        metres: f64,
    },
}

/// The system part of a token query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Sys {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    Absent,
    /// `system|code` or `system|`.
    Is(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Units {
    Any,
    /// `number||code`: code or unit.
    Code(String),
    /// `number|system|code`.
    SystemCode(String, String),
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

/// Errors of [`parse_query`](super::parse_query). Neither `Display` nor `Debug` shows a value or an unknown name.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// An unknown parameter. `name` holds the name as written (client input: do not log or
    /// echo it) and is not displayed; `nearest` is the type's parameter closest to it by
    /// spelling, if one is close (from the definitions, never the request), which is what the
    /// message names.
    #[error(
        "unknown search parameter{}",
        .nearest.map(|n| format!(" (did you mean {n}?)")).unwrap_or_default()
    )]
    Unknown {
        name: String,
        nearest: Option<&'static str>,
    },
    /// A parameter R4 defines for the type that CareVault does not search, and why (both from
    /// the embedded definitions, never from the request).
    #[error("search parameter {param} is not supported ({reason})")]
    Unsupported {
        param: &'static str,
        reason: &'static str,
    },
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
            Self::Unknown { nearest, .. } => f
                .debug_struct("Unknown")
                .field("nearest", nearest)
                .finish_non_exhaustive(),
            Self::Unsupported { param, .. } => {
                f.debug_struct("Unsupported").field("param", param).finish()
            }
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

impl SearchError {
    /// `name` (as written) is not a parameter of `rtype`; the error names the type's parameter
    /// closest to it by spelling, when one is within two edits, as a hint that never repeats
    /// what the client sent.
    pub(super) fn unknown(rtype: ResourceType, name: &str) -> Self {
        let written = name
            .split([':', '.'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let nearest = (written.len() <= 64)
            .then(|| {
                params(rtype)
                    .into_iter()
                    .map(|def| {
                        (
                            edit_distance(&written, &def.name.to_ascii_lowercase()),
                            def.name,
                        )
                    })
                    .filter(|&(d, known)| d <= 2 && d * 2 <= known.len())
                    .min()
                    .map(|(_, known)| known)
            })
            .flatten();
        SearchError::Unknown {
            name: name.to_owned(),
            nearest,
        }
    }
}

/// Levenshtein distance between two short strings (by character).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

pub(super) fn invalid(param: &'static str, reason: &'static str) -> SearchError {
    SearchError::Invalid { param, reason }
}

impl Clause {
    /// Whether this clause could single a person out of de-identified data (see
    /// [`crate::deid::search_refusal`]): a string parameter (names, addresses, free text), a
    /// token on an identifier, phone or email or with `:text`, or a date finer than a year.
    #[must_use]
    pub fn could_identify(&self) -> bool {
        use super::params::{Kind, ParamType};
        match self.param.ptype {
            ParamType::String => true,
            ParamType::Token => {
                self.modifier.as_deref() == Some("text")
                    || self.param.paths.iter().any(|p| {
                        matches!(
                            p.kind,
                            Kind::Identifier
                                | Kind::Email
                                | Kind::Phone
                                | Kind::Contact
                                | Kind::HumanName
                                | Kind::Str
                        )
                    })
            }
            ParamType::Date => self.values.iter().any(|v| match &v.0 {
                Sv::Date { range, .. } => !range.is_whole_year(),
                _ => false,
            }),
            // A reference's identifier is a person's (an MRN in `subject:identifier`).
            ParamType::Reference => self.modifier.as_deref() == Some("identifier"),
            ParamType::Quantity | ParamType::Number | ParamType::Uri => false,
            // A position may be a person's home.
            ParamType::Special => true,
            ParamType::Composite => self.values.iter().any(|v| match &v.0 {
                Sv::Composite(clauses) => clauses.iter().any(Clause::could_identify),
                _ => false,
            }),
        }
    }
}
