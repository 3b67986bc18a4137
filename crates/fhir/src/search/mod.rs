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
//! * token: `c:CODE` (any system) and `s:SYSTEM` for a Coding or Identifier with a system.
//!   Codes, identifier values, e-mail addresses (ASCII-lowercased) and phone numbers (without
//!   spaces, `-`, `.`, `(`, `)`) are revealed as equality classes.
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
//! * quantity: `u:*` (has a value), `u:|CODE` and `u:|UNIT`. Reveals units, never magnitudes.
//! * composite: its first component's keys, in each base element (see `composite`).
//! * `near`: `g:LAT:LONG`, the one-degree cell of each position (see `near`).
//!
//! The same key string can appear under several parameters (`subject` and `patient` of an
//! Observation both give `r:Patient/p1`): the server must namespace keys by type and parameter
//! name before hashing. `_lastUpdated` is indexed like any parameter. `_id` is not indexed: the id
//! is the resource's key in the store, so [`id_candidates`] gives an `_id` clause's candidates
//! directly (an index row per resource with a random token was a random page per write).
//!
//! Candidate keys: token `code`, `|code` and `system|code` give `c:code` (no key joins a system
//! to its code: the system is checked after decryption); `system|` gives `s:system`. A bare
//! reference id gives one `r:Type/id` per target type. A string gives `p:` + its first
//! [`MAX_STRING_PREFIX`] normalized characters (`:exact` of a longer value: `f:` + all of it).
//! A quantity gives its unit code's key `u:|code` (with or without a system), or `u:*`. Dates:
//! `eq` gives the day keys of the query range if it touches at most 7 days, else its month keys
//! if it touches at most 24 months, else its year keys; `ap` gives the range's year keys plus `y:-` and `y:+`; `gt`, `sa` and `ge` give every
//! year key from the query's year up to `y:+`, `lt`, `eb` and `le` every one from `y:-` (so up
//! to 403 keys per value; with [`MAX_VALUES_PER_PARAMETER`] values, 40 300 for a clause).
//! `None` (no prefilter): `:missing`, `:not`, `:text`, `:contains` and date `ne`.
//!
//! # Limits and choices
//!
//! * Supported modifiers: `:missing` (all types), `:not`, `:text` and `:of-type` (token),
//!   `:exact` and `:contains` (string), `:Type` and `:identifier` (reference), `:above` and
//!   `:below` (uri). No `:in`, no unit conversion. Composite parameters (`code-value-quantity`)
//!   take no modifier but `:missing`; every component must hold within one base element.
//! * Chaining and `_has`, one level each, are parsed into [`Query::chains`] and [`Query::has`]
//!   (see [`Chain`]); resolving them takes a search of another type, which is the server's.
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

// Layout. By phase: `params` (which parameters each type has), `query` (a parsed search) and
// `parse` with `controls` (its result parameters), `index` (index keys), `candidates`
// (candidate keys), `matching` (the predicate), `results` (sorting, includes, `_elements`).
// By parameter type, each with its values, parsing and keys: `token`, `reference`, `string`,
// `date`, `quantity` (with `number`). Shared below them: `syntax` (modifiers, prefixes,
// escapes) and `extract` (the elements at a path). They import each other directly, never
// through this module (no import cycle).
mod candidates;
mod chain;
mod composite;
mod controls;
pub(crate) mod date;
mod definitions;
mod extract;
mod fhirpath;
mod index;
mod matching;
mod near;
mod number;
mod params;
mod parse;
mod quantity;
mod query;
mod reference;
mod results;
mod string;
mod syntax;
mod token;
mod uri;

#[cfg(test)]
mod tests;

pub use candidates::{candidate_keys, id_candidates};
pub use chain::{Chain, Has};
pub(crate) use controls::parse_elements;
pub use date::{MAX_BUCKET_YEAR, MAX_DAY_BUCKETS, MAX_MONTH_BUCKETS, MIN_BUCKET_YEAR};
pub use definitions::{Skipped, definitions_json, skipped};
pub use index::index_keys;
pub use matching::matches;
pub use params::{ParamDef, ParamType, param, params};
pub use parse::parse_query;
pub use query::{
    Clause, DEFAULT_COUNT, Include, MAX_COUNT, MAX_VALUES_PER_PARAMETER, Query, SearchError,
    SearchValue, SortKey, Total,
};
pub use results::{apply_elements, elements_read, parse_members, references, sort_value};
pub(crate) use results::{is_element, mark_subsetted};
pub use string::{MAX_STRING_PREFIX, normalize_string};
