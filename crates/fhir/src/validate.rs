//! [`Validator`]: schema validation of FHIR R4 resources, reporting [`Issue`]s that are safe to
//! log and to return to a client.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::{Location, LocationSegment};
use serde_json::{Map, Value, json};

use crate::schema::{BASE_URI, pattern_types, prepared_schema};
use crate::types::RESOURCE_TYPE_COUNT;
use crate::{FhirError, ResourceType};

/// At most this many issues are reported for one resource.
pub const MAX_ISSUES: usize = 20;

/// Embedded resources (`contained`, `Bundle.entry.resource`, ...) nested deeper than this are
/// refused.
const MAX_EMBEDDING: usize = 16;

/// The types [`Validator::warm_up`] compiles.
const WARM_UP_TYPES: [ResourceType; 13] = [
    ResourceType::PATIENT,
    ResourceType::OBSERVATION,
    ResourceType::CONDITION,
    ResourceType::ENCOUNTER,
    ResourceType::MEDICATION_REQUEST,
    ResourceType::ALLERGY_INTOLERANCE,
    ResourceType::PROCEDURE,
    ResourceType::IMMUNIZATION,
    ResourceType::DIAGNOSTIC_REPORT,
    ResourceType::DOCUMENT_REFERENCE,
    ResourceType::PRACTITIONER,
    ResourceType::ORGANIZATION,
    ResourceType::BUNDLE,
];

/// Message prefixes, shared with [`crate::outcome`] to pick an issue code.
pub(crate) const MSG_REQUIRED: &str = "required element missing";
pub(crate) const MSG_UNKNOWN_ELEMENT: &str = "unknown element";
pub(crate) const MSG_WRONG_TYPE: &str = "wrong type";
pub(crate) const MSG_PATTERN: &str = "does not match the required pattern";
pub(crate) const MSG_NOT_ALLOWED_VALUE: &str = "value is not one of the allowed values";
pub(crate) const MSG_WRONG_VALUE: &str = "wrong value";
pub(crate) const MSG_UNKNOWN_RESOURCE_TYPE: &str = "unknown resource type";
pub(crate) const MSG_WRONG_RESOURCE_TYPE: &str = "wrong resource type";
pub(crate) const MSG_STRING_TOO_LONG: &str = "too long for a FHIR string";
pub(crate) const MSG_CONTROL_CHARACTER: &str = "contains a control character";

/// The longest string FHIR R4 allows: "Strings SHALL NOT exceed 1MB (1024*1024 characters)".
pub const MAX_STRING_CHARS: usize = 1024 * 1024;

/// A validation problem, safe to return to a client and to log.
///
/// It names WHERE (`location`, a FHIRPath-like path such as `Patient.name[0].given[1]`) and WHAT
/// KIND of rule failed (`message`, e.g. `wrong type: expected string`). It never contains a value
/// taken from the validated instance, which may be patient data. Element names in `location` are
/// names the schema knows, or unknown names that look like plain identifiers
/// (`^[A-Za-z_][A-Za-z0-9_]{0,63}$`); any other unknown name is left out and the issue points
/// at the enclosing element.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    /// Where the problem is, e.g. `Patient.name[0].given[1]`.
    pub location: String,
    /// What kind of rule failed, e.g. `does not match the required pattern for date`.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Compiled validator for the vendored FHIR R4 schema.
///
/// Creating one parses the schema (about 40 ms and 30 MB in a release build); the validator of
/// each resource type is compiled on first use (about 1–4 ms and 0.3–1 MB each). Call
/// [`Validator::warm_up`] (for instance from a background thread at start-up) to compile the
/// common types ahead of time; [`Validator::compile_all`] compiles every type (about 200 ms and
/// 100 MB). It is `Send + Sync`: share one instance (e.g. in an `Arc`).
pub struct Validator {
    registry: jsonschema::Registry<'static>,
    patterns: jsonschema::PatternCache,
    /// The FHIR primitive type of each `pattern` in the schema, to name it in issues.
    pattern_types: HashMap<String, String>,
    /// One slot per [`ResourceType`], indexed by [`ResourceType::index`]. A failed compilation
    /// stores its error message (an internal error, not client data).
    compiled: Box<[OnceLock<Result<jsonschema::Validator, String>>]>,
}

impl Validator {
    /// Loads the vendored schema. Resource types are compiled lazily, see [`Validator`].
    ///
    /// # Errors
    ///
    /// [`FhirError::Schema`] if the embedded schema cannot be loaded (a build defect).
    pub fn new() -> Result<Self, FhirError> {
        let schema = prepared_schema()?;
        let pattern_types = pattern_types(&schema);
        let registry = jsonschema::Registry::new()
            .draft(jsonschema::Draft::Draft6)
            .add(BASE_URI, schema)
            .and_then(jsonschema::RegistryBuilder::prepare)
            .map_err(|e| FhirError::Schema(e.to_string()))?;
        Ok(Self {
            registry,
            patterns: jsonschema::PatternCache::new(),
            pattern_types,
            compiled: (0..RESOURCE_TYPE_COUNT).map(|_| OnceLock::new()).collect(),
        })
    }

    /// Compiles the validators of the most used resource types (Patient, Observation,
    /// Condition, Encounter, MedicationRequest, AllergyIntolerance, Procedure, Immunization,
    /// DiagnosticReport, DocumentReference, Practitioner, Organization, Bundle) so that their
    /// first validation is not slowed down by compilation. Meant to be called from a background
    /// thread at start-up; validations running meanwhile wait for, or do, the compilation.
    pub fn warm_up(&self) {
        for rt in WARM_UP_TYPES {
            // A failure is remembered and reported by `validate` / `compile_all`.
            let _ = self.compiled(rt);
        }
    }

    /// Compiles the validators of all 146 resource types (about 200 ms and 100 MB in a release
    /// build: each type's validator holds its own compiled copy of the datatypes it uses). Meant
    /// for tests and diagnostics; servers should rely on lazy compilation and
    /// [`Validator::warm_up`].
    ///
    /// # Errors
    ///
    /// [`FhirError::Schema`] naming the first type whose schema failed to compile (a build
    /// defect; the tests compile every type).
    pub fn compile_all(&self) -> Result<(), FhirError> {
        for rt in ResourceType::all() {
            self.compiled(rt)
                .map_err(|e| FhirError::Schema(format!("{rt}: {e}")))?;
        }
        Ok(())
    }

    /// Validates `resource` as a resource of type `rt`.
    ///
    /// Besides the schema, checks that `resource` is a JSON object whose `resourceType` is `rt`,
    /// and validates embedded resources (`contained`, `Bundle.entry.resource`,
    /// `Bundle.entry.response.outcome`, `Parameters.parameter.resource`, at any depth) against
    /// their own type.
    ///
    /// # Errors
    ///
    /// The problems found, at most [`MAX_ISSUES`] of them. They are safe to log and to return to
    /// the client (see [`Issue`]).
    pub fn validate(&self, rt: ResourceType, resource: &Value) -> Result<(), Vec<Issue>> {
        let mut issues = Issues::default();
        self.check_resource(rt, resource, rt.as_str(), 0, &mut issues);
        check_strings(resource, &mut rt.as_str().to_owned(), &mut issues);
        if issues.list.is_empty() {
            Ok(())
        } else {
            Err(issues.list)
        }
    }

    /// The compiled validator of `rt`, compiling it on first use.
    fn compiled(&self, rt: ResourceType) -> Result<&jsonschema::Validator, &str> {
        let slot = rt
            .index()
            .and_then(|index| self.compiled.get(index))
            .ok_or("no validator slot for this resource type")?;
        slot.get_or_init(|| self.compile(rt))
            .as_ref()
            .map_err(String::as_str)
    }

    fn compile(&self, rt: ResourceType) -> Result<jsonschema::Validator, String> {
        let root = json!({ "$ref": format!("{BASE_URI}#/definitions/{rt}") });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .with_registry(&self.registry)
            // The `regex` engine matches in linear time: no catastrophic backtracking on
            // client-controlled strings.
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .with_pattern_cache(self.patterns.clone())
            .should_validate_formats(false)
            .build(&root)
            .map_err(|e| e.to_string())
    }

    /// Checks one resource (top-level or embedded) found at `location`.
    fn check_resource(
        &self,
        rt: ResourceType,
        resource: &Value,
        location: &str,
        embedding: usize,
        issues: &mut Issues,
    ) {
        if issues.is_full() {
            return;
        }
        let Some(object) = resource.as_object() else {
            issues.push(
                location.to_owned(),
                format!("{MSG_WRONG_TYPE}: expected object"),
            );
            return;
        };
        match object.get("resourceType") {
            None => {
                issues.push(location.to_owned(), format!("{MSG_REQUIRED}: resourceType"));
                return;
            }
            Some(Value::String(name)) if name == rt.as_str() => {}
            Some(_) => {
                issues.push(
                    format!("{location}.resourceType"),
                    format!("{MSG_WRONG_RESOURCE_TYPE}: expected {rt}"),
                );
                return;
            }
        }
        match self.compiled(rt) {
            Ok(schema) => {
                if !schema.is_valid(resource) {
                    for error in schema.iter_errors(resource) {
                        if issues.is_full() {
                            break;
                        }
                        push_error_issues(&error, location, &self.pattern_types, issues);
                    }
                }
            }
            Err(_) => issues.push(
                location.to_owned(),
                "internal error: this resource type cannot be validated".to_owned(),
            ),
        }
        self.check_embedded_resources(rt, object, location, embedding, issues);
    }

    /// Validates the resources embedded in `object` (a resource of type `rt`).
    fn check_embedded_resources(
        &self,
        rt: ResourceType,
        object: &Map<String, Value>,
        location: &str,
        embedding: usize,
        issues: &mut Issues,
    ) {
        // Bundle, Binary and Parameters are not DomainResources: they have no `contained`
        // (the schema reports one as an unknown element).
        let has_contained = ![
            ResourceType::BUNDLE,
            ResourceType::PARAMETERS,
            ResourceType::BINARY,
        ]
        .contains(&rt);
        if has_contained {
            for (i, item) in array_items(object.get("contained")) {
                let at = format!("{location}.contained[{i}]");
                self.check_embedded(item, &at, embedding, issues);
            }
        }
        if rt == ResourceType::BUNDLE {
            for (i, entry) in array_items(object.get("entry")) {
                if let Some(resource) = entry.get("resource") {
                    let at = format!("{location}.entry[{i}].resource");
                    self.check_embedded(resource, &at, embedding, issues);
                }
                if let Some(outcome) = entry.get("response").and_then(|r| r.get("outcome")) {
                    let at = format!("{location}.entry[{i}].response.outcome");
                    self.check_embedded(outcome, &at, embedding, issues);
                }
            }
        }
        if rt == ResourceType::PARAMETERS {
            for (i, parameter) in array_items(object.get("parameter")) {
                let at = format!("{location}.parameter[{i}]");
                self.check_parameter(parameter, &at, embedding, 0, issues);
            }
        }
    }

    /// Validates the resources in one `Parameters.parameter` (or a nested `part`).
    fn check_parameter(
        &self,
        parameter: &Value,
        location: &str,
        embedding: usize,
        part_depth: usize,
        issues: &mut Issues,
    ) {
        if let Some(resource) = parameter.get("resource") {
            self.check_embedded(resource, &format!("{location}.resource"), embedding, issues);
        }
        let parts = array_slice(parameter.get("part"));
        if part_depth >= MAX_EMBEDDING {
            if !parts.is_empty() {
                issues.push(
                    location.to_owned(),
                    "parameter parts nested too deeply".to_owned(),
                );
            }
            return;
        }
        for (i, part) in parts.iter().enumerate() {
            let at = format!("{location}.part[{i}]");
            self.check_parameter(part, &at, embedding, part_depth + 1, issues);
        }
    }

    /// Validates an embedded resource against the type it names. One that is not an object or
    /// does not name an R4 type was already reported by the enclosing resource's schema (whose
    /// `ResourceList` requires exactly that), so it is skipped here.
    fn check_embedded(
        &self,
        resource: &Value,
        location: &str,
        embedding: usize,
        issues: &mut Issues,
    ) {
        if issues.is_full() {
            return;
        }
        let Some(rt) = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(|name| ResourceType::parse(name).ok())
        else {
            return;
        };
        if embedding >= MAX_EMBEDDING {
            issues.push(
                location.to_owned(),
                "resources embedded too deeply".to_owned(),
            );
            return;
        }
        self.check_resource(rt, resource, location, embedding + 1, issues);
    }
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compiled = self
            .compiled
            .iter()
            .filter(|slot| slot.get().is_some())
            .count();
        f.debug_struct("Validator")
            .field("compiled_types", &compiled)
            .finish_non_exhaustive()
    }
}

/// The items of `value` if it is an array, with their indexes; nothing otherwise.
fn array_items(value: Option<&Value>) -> std::iter::Enumerate<std::slice::Iter<'_, Value>> {
    array_slice(value).iter().enumerate()
}

/// The items of `value` if it is an array; empty otherwise.
fn array_slice(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Checks every string in `value` (at `location`) against R4's rules for strings: at most
/// [`MAX_STRING_CHARS`] characters, and no character below U+0020 but tab, line feed and
/// carriage return (which the schema's patterns let through). Issues name the element, never
/// the value. Elements named `data` are exempt from the length rule: they are base64Binary
/// (Attachment, Binary, Signature), bounded by the request body limit, not by the string rule.
fn check_strings(value: &Value, location: &mut String, issues: &mut Issues) {
    if issues.is_full() {
        return;
    }
    match value {
        Value::String(s) => {
            // Bytes >= characters: count the characters only when the bytes exceed the limit.
            if s.len() > MAX_STRING_CHARS
                && s.chars().count() > MAX_STRING_CHARS
                && !location.ends_with(".data")
            {
                issues.push(
                    location.clone(),
                    format!("{MSG_STRING_TOO_LONG}: at most {MAX_STRING_CHARS} characters"),
                );
            }
            // In UTF-8, bytes below 0x20 are only ever those control characters themselves.
            if s.bytes()
                .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
            {
                issues.push(
                    location.clone(),
                    format!("{MSG_CONTROL_CHARACTER}: only tab, line feed and carriage return are allowed"),
                );
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = location.len();
                // Writing to a String cannot fail.
                let _ = write!(location, "[{index}]");
                check_strings(item, location, issues);
                location.truncate(len);
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                let len = location.len();
                // An unknown name that may be data is left out (the schema refuses it anyway).
                if is_plain_name(name) {
                    location.push('.');
                    location.push_str(name);
                }
                check_strings(member, location, issues);
                location.truncate(len);
            }
        }
        _ => {}
    }
}

/// Collected issues: at most [`MAX_ISSUES`], without duplicates.
#[derive(Default)]
struct Issues {
    list: Vec<Issue>,
}

impl Issues {
    fn is_full(&self) -> bool {
        self.list.len() >= MAX_ISSUES
    }

    fn push(&mut self, location: String, message: String) {
        let issue = Issue { location, message };
        if !self.is_full() && !self.list.contains(&issue) {
            self.list.push(issue);
        }
    }
}

/// Converts one schema error into issues (several for an `additionalProperties` error naming
/// several unknown elements).
///
/// Never uses the error's `Display` nor its `instance`: both may contain client data. Only the
/// error kind's schema-side fields (expected types, required element names, allowed codes) and
/// the instance path (made of schema-known names and array indexes) are used.
fn push_error_issues(
    error: &jsonschema::ValidationError<'_>,
    base: &str,
    pattern_types: &HashMap<String, String>,
    issues: &mut Issues,
) {
    let location = fhir_path(base, error.instance_path());
    let message = match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                let at = if is_plain_name(name) {
                    format!("{location}.{name}")
                } else {
                    location.clone()
                };
                issues.push(at, MSG_UNKNOWN_ELEMENT.to_owned());
            }
            return;
        }
        ValidationErrorKind::Required { property } => match property.as_str() {
            Some(name) if is_plain_name(name) => format!("{MSG_REQUIRED}: {name}"),
            _ => MSG_REQUIRED.to_owned(),
        },
        ValidationErrorKind::Type { kind } => {
            let expected: Vec<&str> = match kind {
                TypeKind::Single(t) => vec![t.as_str()],
                TypeKind::Multiple(set) => set.into_iter().map(|t| t.as_str()).collect(),
            };
            format!("{MSG_WRONG_TYPE}: expected {}", expected.join(" or "))
        }
        ValidationErrorKind::Pattern { pattern } => match pattern_types.get(pattern) {
            Some(primitive) if is_plain_name(primitive) => format!("{MSG_PATTERN} for {primitive}"),
            _ => MSG_PATTERN.to_owned(),
        },
        ValidationErrorKind::BacktrackLimitExceeded { .. }
        | ValidationErrorKind::RegexEngineFailure { .. } => {
            "could not be checked against the required pattern".to_owned()
        }
        ValidationErrorKind::Enum { options } => {
            if location.ends_with(".resourceType") {
                MSG_UNKNOWN_RESOURCE_TYPE.to_owned()
            } else {
                enum_message(options)
            }
        }
        ValidationErrorKind::Constant { expected_value } => match expected_value.as_str() {
            Some(expected) if is_plain_name(expected) => {
                format!("{MSG_WRONG_VALUE}: expected {expected}")
            }
            _ => MSG_WRONG_VALUE.to_owned(),
        },
        ValidationErrorKind::MinItems { limit } => format!("too few items: at least {limit}"),
        ValidationErrorKind::MaxItems { limit } => format!("too many items: at most {limit}"),
        ValidationErrorKind::MinLength { limit } => {
            format!("too short: at least {limit} characters")
        }
        ValidationErrorKind::MaxLength { limit } => format!("too long: at most {limit} characters"),
        ValidationErrorKind::Referencing(_) => "internal error: schema reference".to_owned(),
        // The FHIR schema uses no other keyword; name the rule, never the value.
        // (`keyword()` is the library's keyword name, or a custom keyword's name from the
        // schema; never instance data.)
        other => format!("does not satisfy the schema rule '{}'", other.keyword()),
    };
    issues.push(location, message);
}

/// `base` followed by `path` in FHIRPath-like form: `Patient` + `/name/0/given/1` gives
/// `Patient.name[0].given[1]`. A property segment that is not a plain name (never the case for
/// the schema-known names in instance paths) ends the path there, so that it cannot leak data.
fn fhir_path(base: &str, path: &Location) -> String {
    let mut out = base.to_owned();
    for segment in path.segments() {
        match segment {
            LocationSegment::Index(index) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "[{index}]");
            }
            LocationSegment::Property(name) if is_plain_name(&name) => {
                out.push('.');
                out.push_str(&name);
            }
            LocationSegment::Property(_) => break,
        }
    }
    out
}

/// Whether `name` matches `^[A-Za-z_][A-Za-z0-9_]{0,63}$`: a name that may appear in an issue.
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The message for a value outside an `enum`, listing the allowed codes if there are few.
fn enum_message(options: &Value) -> String {
    const MAX_LISTED: usize = 12;
    let allowed: Option<Vec<&str>> = options.as_array().and_then(|values| {
        (values.len() <= MAX_LISTED)
            .then(|| values.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .flatten()
    });
    match allowed {
        Some(codes) if !codes.is_empty() && codes.iter().all(|c| is_code(c)) => {
            format!("{MSG_NOT_ALLOWED_VALUE} ({})", codes.join(", "))
        }
        _ => MSG_NOT_ALLOWED_VALUE.to_owned(),
    }
}

/// Whether `s` looks like a FHIR code from the schema (short, no spaces or punctuation beyond
/// `-`, `.`, `_`, `/`, `:`, `>`, `<`, `=`, `!`). Codes listed in messages come from the schema,
/// never from the instance; this only keeps messages tidy.
fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:<>=!".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One validator shared by all tests (creating and compiling is slow in debug builds).
    fn validator() -> &'static Validator {
        static VALIDATOR: OnceLock<Validator> = OnceLock::new();
        VALIDATOR.get_or_init(|| Validator::new().expect("vendored schema loads"))
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
            "meta": { "versionId": "1", "lastUpdated": "2024-03-01T12:30:00.000Z" },
            "text": {
                "status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Doe</div>"
            },
            "extension": [{
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueCode": "F"
            }],
            "identifier": [{
                "system": "https://github.com/synthetichealth/synthea",
                "value": "8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d"
            }, {
                "type": {
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical Record Number"
                    }],
                    "text": "Medical Record Number"
                },
                "system": "http://hospital.smarthealthit.org",
                "value": "MRN-0042"
            }],
            "active": true,
            "name": [{
                "use": "official",
                "family": "Doe",
                "given": ["Jane", "Q."],
                "prefix": ["Ms."]
            }],
            "telecom": [{ "system": "phone", "value": "555-0100", "use": "home" }],
            "gender": "female",
            "birthDate": "1984-07-12",
            "address": [{
                "line": ["12 Main Street", "Apt 3"],
                "city": "Springfield",
                "state": "MA",
                "postalCode": "01101",
                "country": "US",
                "extension": [{
                    "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                    "extension": [
                        { "url": "latitude", "valueDecimal": 42.1015 },
                        { "url": "longitude", "valueDecimal": -72.5898 }
                    ]
                }]
            }],
            "maritalStatus": {
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": "M",
                    "display": "Married"
                }]
            },
            "multipleBirthBoolean": false,
            "communication": [{
                "language": {
                    "coding": [{ "system": "urn:ietf:bcp:47", "code": "en-US" }]
                }
            }]
        })
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "obs-bp-1",
            "status": "final",
            "category": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "vital-signs"
                }]
            }],
            "code": {
                "coding": [{
                    "system": "http://loinc.org",
                    "code": "85354-9",
                    "display": "Blood pressure panel with all children optional"
                }],
                "text": "Blood pressure"
            },
            "subject": { "reference": "Patient/8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" },
            "encounter": { "reference": "Encounter/enc-1" },
            "effectiveDateTime": "2024-03-01T09:15:00-05:00",
            "issued": "2024-03-01T09:15:00.123-05:00",
            "component": [{
                "code": {
                    "coding": [{ "system": "http://loinc.org", "code": "8462-4" }]
                },
                "valueQuantity": {
                    "value": 82,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]"
                }
            }, {
                "code": {
                    "coding": [{ "system": "http://loinc.org", "code": "8480-6" }]
                },
                "valueQuantity": {
                    "value": 128.5,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]"
                }
            }]
        })
    }

    fn bundle() -> Value {
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "fullUrl": "urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d",
                "resource": patient(),
                "request": { "method": "PUT", "url": "Patient/8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" }
            }, {
                "fullUrl": "urn:uuid:0b8e3c55-0d0e-4bb4-9a40-7c0f0f6d1e11",
                "resource": observation(),
                "request": { "method": "POST", "url": "Observation" }
            }, {
                "resource": {
                    "resourceType": "Condition",
                    "clinicalStatus": {
                        "coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active"
                        }]
                    },
                    "code": {
                        "coding": [{ "system": "http://snomed.info/sct", "code": "44054006" }],
                        "text": "Diabetes mellitus type 2"
                    },
                    "subject": { "reference": "urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d" },
                    "onsetDateTime": "2015-06-01"
                },
                "request": { "method": "POST", "url": "Condition" }
            }]
        })
    }

    fn issues(rt: ResourceType, resource: &Value) -> Vec<Issue> {
        validator()
            .validate(rt, resource)
            .expect_err("expected validation issues")
    }

    fn has(issues: &[Issue], location: &str, message: &str) -> bool {
        issues
            .iter()
            .any(|i| i.location == location && i.message == message)
    }

    #[test]
    fn validator_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Validator>();
    }

    #[test]
    fn accepts_realistic_resources() {
        assert_eq!(
            validator().validate(ResourceType::PATIENT, &patient()),
            Ok(())
        );
        assert_eq!(
            validator().validate(ResourceType::OBSERVATION, &observation()),
            Ok(())
        );
        assert_eq!(
            validator().validate(ResourceType::BUNDLE, &bundle()),
            Ok(())
        );
    }

    #[test]
    fn accepts_minimal_resources() {
        assert_eq!(
            validator().validate(PATIENT_RT, &json!({"resourceType": "Patient"})),
            Ok(())
        );
        let basic = json!({"resourceType": "Basic", "code": {"text": "x"}});
        let rt = ResourceType::parse("Basic").expect("R4 type");
        assert_eq!(validator().validate(rt, &basic), Ok(()));
    }

    const PATIENT_RT: ResourceType = ResourceType::PATIENT;

    #[test]
    fn rejects_wrong_type_for_a_field() {
        let mut p = patient();
        p["name"][0]["given"][1] = json!(42);
        p["active"] = json!("yes");
        let found = issues(PATIENT_RT, &p);
        assert!(
            has(
                &found,
                "Patient.name[0].given[1]",
                "wrong type: expected string"
            ),
            "{found:?}"
        );
        assert!(
            has(&found, "Patient.active", "wrong type: expected boolean"),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_array_where_object_expected() {
        let mut o = observation();
        o["code"] = json!([{ "text": "Blood pressure" }]);
        let found = issues(ResourceType::OBSERVATION, &o);
        assert!(
            has(&found, "Observation.code", "wrong type: expected object"),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_object_where_array_expected() {
        let mut p = patient();
        p["name"] = json!({ "family": "Doe" });
        let found = issues(PATIENT_RT, &p);
        assert!(
            has(&found, "Patient.name", "wrong type: expected array"),
            "{found:?}"
        );
    }

    #[test]
    fn accepts_primitive_extensions_with_null_placeholders() {
        let mut p = patient();
        p["name"][0]["_given"] = json!([null, {
            "extension": [{ "url": "http://example.org/initial", "valueBoolean": true }]
        }]);
        p["_birthDate"] = json!({
            "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                            "valueDateTime": "1984-07-12T14:35:45-05:00" }]
        });
        assert_eq!(validator().validate(PATIENT_RT, &p), Ok(()));
        p["_birthDate"] = json!(null);
        let found = issues(PATIENT_RT, &p);
        assert!(
            has(&found, "Patient._birthDate", "wrong type: expected object"),
            "{found:?}"
        );
    }

    #[test]
    fn narrative_div_must_be_a_string() {
        let mut p = patient();
        p["text"]["div"] = json!({ "p": "Jane" });
        let found = issues(PATIENT_RT, &p);
        assert!(
            has(&found, "Patient.text.div", "wrong type: expected string"),
            "{found:?}"
        );
    }

    #[test]
    fn validates_concurrently_while_compiling_lazily() {
        let fresh = Validator::new().expect("loads");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10 {
                        assert_eq!(fresh.validate(PATIENT_RT, &patient()), Ok(()));
                        assert_eq!(
                            fresh.validate(ResourceType::OBSERVATION, &observation()),
                            Ok(())
                        );
                    }
                });
            }
        });
        assert!(format!("{fresh:?}").contains("compiled_types: 2"));
    }

    #[test]
    fn rejects_unknown_element() {
        let mut p = patient();
        p["favouriteColour"] = json!("blue");
        p["name"][0]["nickname"] = json!("JD");
        let found = issues(PATIENT_RT, &p);
        assert!(
            has(&found, "Patient.favouriteColour", "unknown element"),
            "{found:?}"
        );
        assert!(
            has(&found, "Patient.name[0].nickname", "unknown element"),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_medplum_only_elements() {
        let mut p = patient();
        p["meta"]["project"] = json!({ "reference": "Project/1" });
        p["managingOrganization"] = json!({
            "reference": "Organization/1",
            "resource": { "resourceType": "Organization" }
        });
        let found = issues(PATIENT_RT, &p);
        assert!(
            has(&found, "Patient.meta.project", "unknown element"),
            "{found:?}"
        );
        assert!(
            has(
                &found,
                "Patient.managingOrganization.resource",
                "unknown element"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_bad_date_format() {
        for bad in [
            "12/07/1984",
            "1984-13-01",
            "1984-07-12T10:00:00Z",
            "84-07-12",
            "",
        ] {
            let mut p = patient();
            p["birthDate"] = json!(bad);
            let found = issues(PATIENT_RT, &p);
            assert_eq!(
                found,
                vec![Issue {
                    location: "Patient.birthDate".into(),
                    message: "does not match the required pattern for date".into(),
                }],
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_bad_datetime_and_code() {
        let mut o = observation();
        o["effectiveDateTime"] = json!("2024-03-01T09:15"); // time without seconds and zone
        o["status"] = json!("done");
        let found = issues(ResourceType::OBSERVATION, &o);
        assert!(
            has(
                &found,
                "Observation.effectiveDateTime",
                "does not match the required pattern for dateTime"
            ),
            "{found:?}"
        );
        assert!(
            found.iter().any(|i| i.location == "Observation.status"
                && i.message.starts_with(
                    "value is not one of the allowed values (registered, preliminary, final"
                )),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_missing_required_element() {
        let mut o = observation();
        if let Some(object) = o.as_object_mut() {
            object.remove("code");
        }
        let found = issues(ResourceType::OBSERVATION, &o);
        assert!(
            has(&found, "Observation", "required element missing: code"),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_resource_type_mismatch() {
        let found = issues(ResourceType::OBSERVATION, &patient());
        assert_eq!(
            found,
            vec![Issue {
                location: "Observation.resourceType".into(),
                message: "wrong resource type: expected Observation".into(),
            }]
        );
        let found = issues(PATIENT_RT, &json!({ "resourceType": 7 }));
        assert!(has(
            &found,
            "Patient.resourceType",
            "wrong resource type: expected Patient"
        ));
    }

    #[test]
    fn rejects_missing_resource_type_and_non_objects() {
        let found = issues(PATIENT_RT, &json!({ "gender": "female" }));
        assert!(
            has(&found, "Patient", "required element missing: resourceType"),
            "{found:?}"
        );
        for value in [json!([]), json!("Patient"), json!(null), json!(1)] {
            let found = issues(PATIENT_RT, &value);
            assert!(
                has(&found, "Patient", "wrong type: expected object"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn validates_resources_inside_a_bundle() {
        let mut b = bundle();
        b["entry"][1]["resource"]["issued"] = json!(3);
        b["entry"][0]["resource"]["birthDate"] = json!("July 1984");
        let found = issues(ResourceType::BUNDLE, &b);
        assert!(
            has(
                &found,
                "Bundle.entry[1].resource.issued",
                "wrong type: expected string"
            ),
            "{found:?}"
        );
        assert!(
            has(
                &found,
                "Bundle.entry[0].resource.birthDate",
                "does not match the required pattern for date"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn refuses_medplum_and_unknown_types_inside_a_bundle() {
        let mut b = bundle();
        b["entry"][0]["resource"] = json!({ "resourceType": "Project", "name": "x" });
        b["entry"][1]["resource"] = json!({ "resourceType": "CANARY-7f3a-SMITH" });
        b["entry"][2]["resource"] = json!({ "name": "no type" });
        let found = issues(ResourceType::BUNDLE, &b);
        assert!(
            has(
                &found,
                "Bundle.entry[0].resource.resourceType",
                "unknown resource type"
            ),
            "{found:?}"
        );
        assert!(
            has(
                &found,
                "Bundle.entry[1].resource.resourceType",
                "unknown resource type"
            ),
            "{found:?}"
        );
        assert!(
            has(
                &found,
                "Bundle.entry[2].resource",
                "required element missing: resourceType"
            ),
            "{found:?}"
        );
        assert!(!format!("{found:?}").contains("CANARY"));
    }

    #[test]
    fn validates_contained_and_nested_resources() {
        let mut o = observation();
        o["contained"] = json!([{ "resourceType": "Patient", "id": "p1", "birthDate": 1984 }]);
        let found = issues(ResourceType::OBSERVATION, &o);
        assert!(
            has(
                &found,
                "Observation.contained[0].birthDate",
                "wrong type: expected string"
            ),
            "{found:?}"
        );

        let params = json!({
            "resourceType": "Parameters",
            "parameter": [{
                "name": "outer",
                "part": [{ "name": "inner", "resource": { "resourceType": "Patient", "active": "no" } }]
            }]
        });
        let found = issues(ResourceType::PARAMETERS, &params);
        assert!(
            has(
                &found,
                "Parameters.parameter[0].part[0].resource.active",
                "wrong type: expected boolean"
            ),
            "{found:?}"
        );

        let mut inner = bundle();
        inner["entry"][0]["resource"]["birthDate"] = json!(false);
        let outer = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": inner }] });
        let found = issues(ResourceType::BUNDLE, &outer);
        assert!(
            has(
                &found,
                "Bundle.entry[0].resource.entry[0].resource.birthDate",
                "wrong type: expected string"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn deeply_embedded_resources_are_refused() {
        let mut resource = json!({ "resourceType": "Patient" });
        for _ in 0..(MAX_EMBEDDING + 2) {
            resource = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": resource }] });
        }
        let found = issues(ResourceType::BUNDLE, &resource);
        assert!(
            found
                .iter()
                .any(|i| i.message == "resources embedded too deeply"),
            "{found:?}"
        );
    }

    #[test]
    fn reports_at_most_twenty_issues() {
        let mut p = patient();
        let names: Vec<Value> = (0..100).map(|i| json!({ "given": [i] })).collect();
        p["name"] = Value::Array(names);
        let found = issues(PATIENT_RT, &p);
        assert_eq!(found.len(), MAX_ISSUES);
    }

    #[test]
    fn canary_in_invalid_values_never_appears_in_issues() {
        const CANARY: &str = "CANARY-7f3a-SMITH";
        let mut p = patient();
        p["birthDate"] = json!(CANARY);
        p["gender"] = json!(CANARY);
        p["active"] = json!(CANARY);
        p["id"] = json!(format!("{CANARY} with spaces"));
        p["name"][0]["family"] = json!([CANARY]);
        p["name"][0]["given"] = json!(CANARY);
        p["telecom"][0]["system"] = json!(CANARY);
        p["resourceType"] = json!("Patient");
        p["address"][0]["line"] = json!({ CANARY: CANARY });
        p["extension"][0]["url"] = json!({ "v": CANARY });
        let found = issues(PATIENT_RT, &p);
        assert!(found.len() >= 8, "{found:?}");
        let text = serde_json::to_string(&found).expect("serializable");
        assert!(!text.contains("CANARY"), "{text}");
        assert!(!text.contains("SMITH"), "{text}");
        assert!(!format!("{found:?}").contains("CANARY"));
        let mismatch = issues(
            ResourceType::OBSERVATION,
            &json!({ "resourceType": CANARY }),
        );
        assert!(!format!("{mismatch:?}").contains("CANARY"));
    }

    #[test]
    fn canary_in_unknown_element_names_never_appears_in_issues() {
        const CANARY: &str = "CANARY-7f3a-SMITH";
        let mut p = patient();
        p[CANARY] = json!(1);
        p["name"][0][CANARY] = json!({ CANARY: CANARY });
        p["name"][0]["given dob 1984"] = json!(1);
        p["address"][0]["ünïcode"] = json!(1);
        let found = issues(PATIENT_RT, &p);
        let text = serde_json::to_string(&found).expect("serializable");
        assert!(!text.contains("CANARY"), "{text}");
        assert!(!text.contains("1984"), "{text}");
        assert!(!text.contains("code"), "{text}");
        assert!(has(&found, "Patient", "unknown element"), "{found:?}");
        assert!(
            has(&found, "Patient.name[0]", "unknown element"),
            "{found:?}"
        );
        assert!(
            has(&found, "Patient.address[0]", "unknown element"),
            "{found:?}"
        );
    }

    #[test]
    fn canary_inside_embedded_resources_never_appears_in_issues() {
        const CANARY: &str = "CANARY-7f3a-SMITH";
        let mut b = bundle();
        b["entry"][0]["resource"]["birthDate"] = json!(CANARY);
        b["entry"][0]["resource"][CANARY] = json!(CANARY);
        b["entry"][1]["resource"]["contained"] = json!([{ "resourceType": CANARY }, CANARY]);
        let found = issues(ResourceType::BUNDLE, &b);
        assert!(found.len() >= 3, "{found:?}");
        assert!(!format!("{found:?}").contains("CANARY"));
    }

    #[test]
    fn plain_names() {
        for ok in ["a", "_", "given", "_birthDate", "A1_b2", &"a".repeat(64)] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "a.b",
            "é",
            "CANARY-7f3a-SMITH",
            &"a".repeat(65),
        ] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_resource_type_compiles() {
        let started = std::time::Instant::now();
        validator().compile_all().expect("every R4 type compiles");
        println!(
            "compile_all (remaining types, debug build): {:?}",
            started.elapsed()
        );
        for rt in ResourceType::all() {
            let minimal = json!({ "resourceType": rt.as_str() });
            // Only required-element issues are acceptable for a bare resource.
            if let Err(found) = validator().validate(rt, &minimal) {
                assert!(
                    found.iter().all(|i| i.message.starts_with(MSG_REQUIRED)),
                    "{rt}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn timing_report() {
        let started = std::time::Instant::now();
        let fresh = Validator::new().expect("loads");
        let loaded = started.elapsed();
        let started = std::time::Instant::now();
        fresh.warm_up();
        let warmed = started.elapsed();
        println!(
            "Validator::new: {loaded:?}, warm_up: {warmed:?} (debug build; see examples/validator_timing.rs)"
        );
        assert_eq!(fresh.validate(PATIENT_RT, &patient()), Ok(()));
    }

    #[test]
    fn strings_over_a_megabyte_or_with_control_characters_are_refused_by_element() {
        let long = "a".repeat(MAX_STRING_CHARS + 1);
        let mut resource = patient();
        resource["name"][0]["family"] = json!(long);
        resource["name"][0]["given"] = json!(["Nul\u{0}", "Bell\u{7}", "tab\tline\nreturn\r"]);
        let found = issues(PATIENT_RT, &resource);
        let too_long = format!("{MSG_STRING_TOO_LONG}: at most {MAX_STRING_CHARS} characters");
        let control =
            format!("{MSG_CONTROL_CHARACTER}: only tab, line feed and carriage return are allowed");
        assert!(
            has(&found, "Patient.name[0].family", &too_long),
            "{found:?}"
        );
        assert!(
            has(&found, "Patient.name[0].given[0]", &control),
            "{found:?}"
        );
        assert!(
            has(&found, "Patient.name[0].given[1]", &control),
            "{found:?}"
        );
        assert!(
            !found
                .iter()
                .any(|i| i.location == "Patient.name[0].given[2]"),
            "tab, line feed and carriage return are allowed: {found:?}"
        );
        assert!(
            found
                .iter()
                .all(|i| !i.message.contains("Nul") && i.message.len() < 200)
        );

        // Exactly the limit passes; so does a larger base64Binary `data` element.
        let mut at_limit = patient();
        at_limit["name"][0]["family"] = json!("a".repeat(MAX_STRING_CHARS));
        assert_eq!(validator().validate(PATIENT_RT, &at_limit), Ok(()));
        let mut photo = patient();
        photo["photo"] =
            json!([{"contentType": "image/png", "data": "QUFB".repeat(MAX_STRING_CHARS / 4 + 1)}]);
        assert_eq!(validator().validate(PATIENT_RT, &photo), Ok(()));
    }
}
