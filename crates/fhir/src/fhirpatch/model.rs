//! What FHIRPath Patch needs to know of FHIR beyond the JSON in hand: for each element of each
//! complex datatype, backbone element and resource type, its datatype and whether it repeats
//! (is a JSON array). Without it, `add` could not tell that a Patient's first `identifier` goes
//! in a new array while its `birthDate` does not, and a complex value given as `part`s could not
//! be assembled. Built once from the same prepared schema the validator uses.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::schema::prepared_schema;

/// The datatype name of embedded resources (`contained`, `Bundle.entry.resource`, ...): the
/// element's real type is its value's `resourceType`.
pub(super) const RESOURCE_LIST: &str = "ResourceList";

/// One element of a definition.
#[derive(Debug)]
pub(super) struct Element {
    /// Its datatype's definition name (`HumanName`, `string`, `Patient_Contact`, ...).
    pub(super) datatype: Option<String>,
    pub(super) repeats: bool,
}

/// Every definition's elements, by definition name then element name.
#[derive(Debug, Default)]
pub(super) struct Model {
    definitions: HashMap<String, HashMap<String, Element>>,
}

impl Model {
    /// The model of the vendored R4 schema, built on first use. Should the schema not load (the
    /// validator would then refuse every write anyway), the model is empty and every element is
    /// unknown.
    pub(super) fn r4() -> &'static Self {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Self::build().unwrap_or_default())
    }

    fn build() -> Option<Self> {
        let prepared = prepared_schema().ok()?;
        let definitions = prepared.get("definitions")?.as_object()?;
        let definitions = definitions
            .iter()
            .filter_map(|(name, definition)| {
                let properties = definition.get("properties")?.as_object()?;
                let elements = properties
                    .iter()
                    .map(|(element, schema)| (element.clone(), element_of(schema)))
                    .collect();
                Some((name.clone(), elements))
            })
            .collect();
        Some(Self { definitions })
    }

    /// The element `name` of the definition `datatype`, when both are known.
    pub(super) fn element(&self, datatype: Option<&str>, name: &str) -> Option<&Element> {
        self.definitions.get(datatype?)?.get(name)
    }

    /// The JSON name under which an element called `name` is written, given the type suffix of
    /// the value's `value[x]` (`Boolean` for `valueBoolean`): `name` itself when the datatype
    /// has it, else the choice element `name` + suffix (`deceased` + `Boolean`) when it has that.
    pub(super) fn json_name(
        &self,
        datatype: Option<&str>,
        name: &str,
        suffix: Option<&str>,
    ) -> String {
        if self.element(datatype, name).is_none()
            && let Some(suffix) = suffix
        {
            let choice = format!("{name}{suffix}");
            if self.element(datatype, &choice).is_some() {
                return choice;
            }
        }
        name.to_owned()
    }
}

fn element_of(schema: &Value) -> Element {
    let repeats = schema.get("type").and_then(Value::as_str) == Some("array");
    let datatype = schema
        .get("items")
        .unwrap_or(schema)
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/definitions/"))
        .map(str::to_owned);
    Element { datatype, repeats }
}
