//! Minimal valid FHIR R4 resources of any type, built from the vendored JSON schema (every
//! element the schema requires, with a plausible value), for tests that must cover every
//! resource type of a definition rather than a hand-picked few.
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(include_str!("../../../vendor/fhir/r4/fhir.schema.json"))
            .expect("the vendored schema parses")
    })
}

fn definition(name: &str) -> &'static Value {
    &schema()["definitions"][name]
}

/// The definition a property refers to (through `$ref`, or its array's `items`), and whether
/// it is an array.
fn target(property: &Value) -> (Option<&str>, bool) {
    match property.get("items") {
        Some(items) => (reference_name(items), true),
        None => (reference_name(property), false),
    }
}

fn reference_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

fn primitive(name: &str) -> Value {
    match name {
        "boolean" => json!(true),
        "integer" | "positiveInt" | "unsignedInt" | "decimal" => json!(1),
        "date" => json!("2024-01-01"),
        "dateTime" | "instant" => json!("2024-01-01T00:00:00Z"),
        "time" => json!("00:00:00"),
        "base64Binary" => json!("eA=="),
        "uuid" => json!("urn:uuid:6f1c3c8e-2b1a-4e55-9a0e-3c2f1d0b7a11"),
        "oid" => json!("urn:oid:1.2.3"),
        _ => json!("x"),
    }
}

fn value(property: &Value) -> Value {
    if let Some(first) = property.get("enum").and_then(|e| e.get(0)) {
        return first.clone();
    }
    let (name, array) = target(property);
    let one = match name {
        Some(name) => element(name),
        None => json!("x"),
    };
    if array { json!([one]) } else { one }
}

/// A minimal instance of the definition `name` (a complex type or a backbone element).
fn element(name: &str) -> Value {
    let def = definition(name);
    let Some(properties) = def.get("properties").and_then(Value::as_object) else {
        return primitive(name);
    };
    let mut out = Map::new();
    for required in def["required"].as_array().into_iter().flatten() {
        let Some(key) = required.as_str() else {
            continue;
        };
        if key != "resourceType" {
            out.insert(key.to_owned(), value(&properties[key]));
        }
    }
    // An empty element is not valid FHIR; a text or display says the least.
    if out.is_empty() {
        for key in ["text", "display", "description", "name"] {
            if properties.contains_key(key) && target(&properties[key]) == (Some("string"), false) {
                out.insert(key.to_owned(), json!("x"));
                break;
            }
        }
    }
    Value::Object(out)
}

/// A minimal valid resource of type `rtype`.
pub fn minimal(rtype: &str) -> Value {
    let mut resource = element(rtype);
    resource["resourceType"] = json!(rtype);
    resource
}

/// A minimal valid resource of type `rtype` whose element at `steps` (member names from the
/// root, arrays taken at their first item) is a Reference to `reference`.
pub fn with_reference(rtype: &str, steps: &[String], reference: &str) -> Value {
    let mut resource = minimal(rtype);
    let mut at = &mut resource;
    let mut def = rtype.to_owned();
    for (i, step) in steps.iter().enumerate() {
        let property = &definition(&def)["properties"][step.as_str()];
        let (name, array) = target(property);
        let name = name.unwrap_or_else(|| panic!("{rtype}: no element {step} in {def}"));
        let last = i + 1 == steps.len();
        let item = if last {
            json!({ "reference": reference })
        } else {
            element(name)
        };
        let slot = &mut at[step.as_str()];
        if array {
            *slot = json!([item]);
            at = &mut slot[0];
        } else {
            *slot = item;
            at = slot;
        }
        def = name.to_owned();
    }
    resource
}
