//! The deny-by-default walk: every element is looked up in the [`Model`](super::model::Model)
//! and kept only where a rule keeps its datatype (see the module documentation of
//! [`super`]).

use serde_json::{Map, Value, json};

use super::model::Kind;
use super::{Deidentifier, zip};
use crate::ResourceType;
use crate::search::date::{civil_from_days, days_from_civil};

/// Nesting deeper than this is removed rather than walked (validated resources stay far below).
const MAX_DEPTH: usize = 48;

/// The extension that stands for a required element whose content was removed.
const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// Datatypes removed whole: each one identifies a person or is free text.
const REMOVED_TYPES: [&str; 8] = [
    "HumanName",
    "ContactPoint",
    "Identifier",
    "Attachment",
    "Annotation",
    "Narrative",
    "Signature",
    "Device_UdiCarrier",
];

/// Definitions that are quantities (`value`, `comparator`, `unit`, `system`, `code`).
const QUANTITIES: [&str; 7] = [
    "Quantity",
    "Age",
    "Count",
    "Distance",
    "Duration",
    "MoneyQuantity",
    "SimpleQuantity",
];

/// Whether a `uri`/`canonical` element names a code system, unit system, extension or profile
/// (a definition, not a person): those are kept.
fn kept_uri(def: &str, name: &str) -> bool {
    matches!(
        (def, name),
        ("Coding", "system") | ("Extension", "url") | ("Meta", "profile")
    ) || (name == "system" && QUANTITIES.contains(&def))
}

pub(super) struct Walker<'a> {
    pub(super) deid: &'a Deidentifier,
    /// Days to add to every date (0: Safe Harbor years).
    pub(super) shift_days: i64,
}

impl Walker<'_> {
    /// A whole resource of type `rtype`.
    pub(super) fn resource(&self, rtype: &str, resource: &Value) -> Value {
        let mut out = self.object(rtype, resource, 0).unwrap_or_default();
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            out.insert("id".into(), self.deid.pseudonym(rtype, id).into());
        }
        let mut ordered = Map::new();
        ordered.insert("resourceType".into(), rtype.into());
        ordered.extend(out);
        Value::Object(ordered)
    }

    /// An object of definition `def`; None when nothing is left.
    fn object(&self, def: &str, value: &Value, depth: usize) -> Option<Map<String, Value>> {
        let input = value.as_object()?;
        if depth > MAX_DEPTH || REMOVED_TYPES.contains(&def) {
            return None;
        }
        let definition = self.deid.model.definition(def)?;
        let mut out = Map::new();
        for (name, v) in input {
            let Some(kind) = definition.elements.get(name) else {
                continue; // unknown to the schema: removed
            };
            if let Some(kept) = self.element(def, name, kind, v, depth) {
                out.insert(name.clone(), kept);
            }
        }
        match def {
            "Address" => address(input, &mut out),
            d if QUANTITIES.contains(&d) => quantity(d, input, &mut out),
            // An extension whose value and sub-extensions were all removed says nothing; a
            // Reference without its reference points nowhere.
            "Extension" if out.keys().all(|k| k == "url") => return None,
            "Reference" if !out.contains_key("reference") => return None,
            _ => {}
        }
        for required in &definition.required {
            let Some(was) = input.get(required) else {
                continue;
            };
            if !out.contains_key(required) {
                let placeholder = match definition.elements.get(required) {
                    Some(Kind::Primitive(_) | Kind::Code) => json!("masked"),
                    _ => masked_extension(),
                };
                let placeholder = if was.is_array() {
                    Value::Array(vec![placeholder])
                } else {
                    placeholder
                };
                out.insert(required.clone(), placeholder);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// One element (an array element by element); None when removed.
    fn element(
        &self,
        def: &str,
        name: &str,
        kind: &Kind,
        value: &Value,
        depth: usize,
    ) -> Option<Value> {
        if let Value::Array(items) = value {
            // The `_element` array of a repeating primitive stays aligned with its values:
            // what is removed there becomes `null`, as FHIR JSON writes "no extension here".
            if name.starts_with('_') {
                let kept: Vec<Value> = items
                    .iter()
                    .map(|v| {
                        self.element(def, name, kind, v, depth)
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                return kept
                    .iter()
                    .any(|v| !v.is_null())
                    .then_some(Value::Array(kept));
            }
            let kept: Vec<Value> = items
                .iter()
                .filter_map(|v| self.element(def, name, kind, v, depth))
                .collect();
            return (!kept.is_empty()).then_some(Value::Array(kept));
        }
        match (def, name) {
            ("Reference", "reference") => return value.as_str().and_then(|r| self.reference(r)),
            ("Reference", "type") => {
                return value
                    .as_str()
                    .filter(|t| ResourceType::parse(t).is_ok())
                    .map(Value::from);
            }
            ("Bundle_Entry", "fullUrl") | ("Bundle_Response", "location") => {
                return value.as_str().and_then(|r| self.reference(r));
            }
            ("Bundle_Request", "url") => {
                return value.as_str().and_then(|u| self.request_url(u));
            }
            ("Meta", "versionId") => return value.as_str().map(Value::from),
            (_, "birthDate") => return value.as_str().and_then(|d| self.birth_date(d)),
            _ => {}
        }
        match kind {
            Kind::Code => value.as_str().map(Value::from),
            Kind::Primitive(p) => self.primitive(def, name, p, value),
            Kind::Complex(inner) => self.object(inner, value, depth + 1).map(Value::Object),
            // Embedded resources: a Bundle's entries are resources of their own; anything
            // contained in a resource is removed (it cannot be classified safely).
            Kind::Resource if def == "Bundle_Entry" && name == "resource" => {
                self.deid.deidentify(value).ok()
            }
            Kind::Resource | Kind::Unknown => None,
        }
    }

    fn primitive(&self, def: &str, name: &str, p: &str, value: &Value) -> Option<Value> {
        match p {
            "boolean" => value.as_bool().map(Value::from),
            "integer" | "decimal" | "positiveInt" | "unsignedInt" => {
                value.is_number().then(|| value.clone())
            }
            "code" => value.as_str().map(Value::from),
            "date" | "dateTime" => value.as_str().and_then(|d| self.date(d)).map(Value::from),
            "instant" => value
                .as_str()
                .and_then(|d| self.instant(d))
                .map(Value::from),
            "uri" | "canonical" if kept_uri(def, name) => value.as_str().map(Value::from),
            // time, string, markdown, xhtml, base64Binary, oid, uuid, url, id, other uris.
            _ => None,
        }
    }

    /// A reference, `fullUrl` or `location`: its id replaced by the pseudonym.
    fn reference(&self, reference: &str) -> Option<Value> {
        if reference.starts_with("urn:uuid:") {
            return Some(format!("urn:uuid:{}", self.deid.pseudonym_of(reference)).into());
        }
        let path = match reference.find("/_history/") {
            Some(at) => &reference[..at],
            None => reference,
        };
        if path.contains(['?', '#']) {
            return None; // conditional or contained
        }
        let mut parts = path.rsplitn(3, '/');
        let id = parts.next()?;
        let rtype = parts.next()?;
        let base = parts.next();
        ResourceType::parse(rtype).ok()?;
        crate::ResourceId::parse(id).ok()?;
        let pseudonym = self.deid.pseudonym(rtype, id);
        Some(match base {
            Some(base) if base.contains("://") => format!("{base}/{rtype}/{pseudonym}").into(),
            Some(_) => return None,
            None => format!("{rtype}/{pseudonym}").into(),
        })
    }

    /// A transaction entry's `request.url`: `Type` kept, `Type/id` pseudonymized; a query
    /// (conditional request) removed.
    fn request_url(&self, url: &str) -> Option<Value> {
        if ResourceType::parse(url).is_ok() {
            return Some(url.into());
        }
        self.reference(url)
    }

    /// A `date`/`dateTime`: the year, or shifted keeping its precision.
    fn date(&self, value: &str) -> Option<String> {
        let year = value
            .get(..4)
            .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))?;
        if self.shift_days == 0 {
            return Some(year.to_owned());
        }
        shift(value, self.shift_days)
    }

    /// An `instant` (the type needs a full timestamp).
    fn instant(&self, value: &str) -> Option<String> {
        if self.shift_days == 0 {
            return self.date(value).map(|y| format!("{y}-01-01T00:00:00Z"));
        }
        shift(value, self.shift_days)
    }

    /// A birth date: as [`Self::date`], and 90 or more years before the reference year
    /// collapsed to the year `reference_year - 90`.
    fn birth_date(&self, value: &str) -> Option<Value> {
        let reference = self.deid.options.reference_year;
        let year: i32 = value.get(..4)?.parse().ok()?;
        if reference - year >= 90 {
            return Some(format!("{:04}", reference - 90).into());
        }
        self.date(value).map(Value::from)
    }
}

/// An Address: `state` and `country` kept (strings the generic walk removes), the US ZIP code
/// generalized.
fn address(input: &Map<String, Value>, out: &mut Map<String, Value>) {
    for kept in ["state", "country"] {
        if let Some(v) = input.get(kept).and_then(Value::as_str) {
            out.insert(kept.into(), v.into());
        }
    }
    let country = input.get("country").and_then(Value::as_str);
    let us = country.is_none_or(|c| {
        ["US", "USA", "UNITED STATES", "UNITED STATES OF AMERICA"]
            .contains(&c.trim().to_ascii_uppercase().as_str())
    });
    if us
        && let Some(zip) = input
            .get("postalCode")
            .and_then(Value::as_str)
            .and_then(zip::generalize)
    {
        out.insert("postalCode".into(), zip.into());
    }
}

/// A quantity: `unit` (a string) kept only where it repeats the `code` already kept; an `Age`
/// over 89 years becomes 90.
fn quantity(def: &str, input: &Map<String, Value>, out: &mut Map<String, Value>) {
    let code = input.get("code").and_then(Value::as_str);
    if let Some(unit) = input.get("unit").and_then(Value::as_str)
        && Some(unit) == code
    {
        out.insert("unit".into(), unit.into());
    }
    if def == "Age"
        && code == Some("a")
        && input
            .get("value")
            .and_then(Value::as_f64)
            .is_some_and(|v| v > 89.0)
    {
        out.insert("value".into(), 90.into());
        out.insert("comparator".into(), ">=".into());
    }
}

fn masked_extension() -> Value {
    json!({"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]})
}

/// `value` (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, optionally with a time) moved by `days`, at the
/// same precision; None if it is not a date.
fn shift(value: &str, days: i64) -> Option<String> {
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = value.get(range)?;
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let year = num(0..4)?;
    match value.len() {
        4 => {
            // A year alone: moved as its middle day is.
            let (y, _, _) = civil_from_days(days_from_civil(year, 7, 2) + days);
            Some(format!("{y:04}"))
        }
        7 => {
            let month = num(5..7)?;
            let (y, m, _) = civil_from_days(days_from_civil(year, month, 15) + days);
            Some(format!("{y:04}-{m:02}"))
        }
        n if n >= 10 => {
            let (month, day) = (num(5..7)?, num(8..10)?);
            let (y, m, d) = civil_from_days(days_from_civil(year, month, day) + days);
            Some(format!("{y:04}-{m:02}-{d:02}{}", value.get(10..)?))
        }
        _ => None,
    }
}
