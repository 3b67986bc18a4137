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

mod strings;

pub(crate) use strings::MSG_STRING_TOO_LONG;
use strings::check_strings;

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
mod tests;
