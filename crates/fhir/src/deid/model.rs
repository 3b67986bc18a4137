//! What the de-identifying walk knows of FHIR: for every complex datatype, backbone element and
//! resource type of the vendored R4 schema, the datatype of each of its elements and which of
//! them are required. Built once from the same prepared schema the validator uses, so the walk
//! classifies exactly the elements a valid resource can hold; anything else is unknown and
//! removed.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::FhirError;
use crate::schema::{pattern_types, prepared_schema};

/// The datatype of one element, as far as de-identification cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A primitive FHIR datatype, by its name (`date`, `string`, `uri`, ...).
    Primitive(&'static str),
    /// A code with a fixed value set (`enum` in the schema), or `resourceType` (`const`).
    Code,
    /// A complex datatype, backbone element or resource, by its definition name.
    Complex(String),
    /// An embedded resource (`contained`, `Bundle.entry.resource`, `Parameters...resource`).
    Resource,
    /// The schema gives no type the walk can classify: always removed.
    Unknown,
}

/// One definition's elements.
#[derive(Debug, Default)]
pub(super) struct Definition {
    pub(super) elements: HashMap<String, Kind>,
    pub(super) required: Vec<String>,
}

/// Every definition, by name.
#[derive(Debug)]
pub(super) struct Model {
    definitions: HashMap<String, Definition>,
}

/// The primitive datatypes of FHIR R4, as named in the schema.
const PRIMITIVES: [&str; 20] = [
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "xhtml",
];

impl Model {
    /// The model of the vendored R4 schema (built on first use, then shared).
    pub(super) fn r4() -> Result<&'static Self, FhirError> {
        static MODEL: OnceLock<Result<Model, String>> = OnceLock::new();
        MODEL
            .get_or_init(|| Self::build().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| FhirError::Schema(e.clone()))
    }

    fn build() -> Result<Self, FhirError> {
        let prepared = prepared_schema()?;
        let patterns = pattern_types(&prepared);
        let definitions = prepared
            .get("definitions")
            .and_then(Value::as_object)
            .ok_or_else(|| FhirError::Schema("prepared schema has no definitions".into()))?;
        let mut out = HashMap::new();
        for (name, definition) in definitions {
            let Some(properties) = definition.get("properties").and_then(Value::as_object) else {
                continue;
            };
            let elements = properties
                .iter()
                .map(|(element, schema)| (element.clone(), kind_of(schema, &patterns)))
                .collect();
            let required = definition
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .filter(|e| *e != "resourceType")
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            out.insert(name.clone(), Definition { elements, required });
        }
        Ok(Self { definitions: out })
    }

    pub(super) fn definition(&self, name: &str) -> Option<&Definition> {
        self.definitions.get(name)
    }
}

/// The kind of an element from its property schema (arrays by their items).
fn kind_of(schema: &Value, patterns: &HashMap<String, String>) -> Kind {
    let schema = schema.get("items").unwrap_or(schema);
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let Some(name) = reference.strip_prefix("#/definitions/") else {
            return Kind::Unknown;
        };
        if name == "ResourceList" {
            return Kind::Resource;
        }
        return match primitive(name) {
            Some(p) => Kind::Primitive(p),
            None => Kind::Complex(name.to_owned()),
        };
    }
    if schema.get("enum").is_some() || schema.get("const").is_some() {
        return Kind::Code;
    }
    // An inline primitive (a few elements repeat the primitive's pattern instead of a $ref):
    // classified by its pattern, the most restrictive type winning where patterns are shared.
    schema
        .get("pattern")
        .and_then(Value::as_str)
        .and_then(|p| patterns.get(p))
        .and_then(|name| primitive(name))
        .map_or(Kind::Unknown, Kind::Primitive)
}

fn primitive(name: &str) -> Option<&'static str> {
    PRIMITIVES.iter().copied().find(|p| *p == name)
}
