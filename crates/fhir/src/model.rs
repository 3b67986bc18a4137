//! The R4 element model, from the JSON schema: for each element of each complex datatype,
//! backbone element and resource type, its datatype and whether it repeats (is a JSON array).
//!
//! FHIRPath Patch needs it (`add` cannot otherwise tell that a Patient's first `identifier` goes
//! in a new array while its `birthDate` does not, and a complex value given as `part`s could not
//! be assembled), and so do the search parameter definitions (a FHIRPath member is typed by it,
//! and a choice element `value` reaches `valueQuantity`, `valueString`, ...). Built once from the
//! same prepared schema the validator uses.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde_json::Value;

use crate::schema::prepared_schema;

/// The datatype name of embedded resources (`contained`, `Bundle.entry.resource`, ...): the
/// element's real type is its value's `resourceType`.
pub(crate) const RESOURCE_LIST: &str = "ResourceList";

/// One element of a definition.
#[derive(Debug)]
pub(crate) struct Element {
    /// Its datatype's definition name (`HumanName`, `string`, `Patient_Contact`, ...).
    pub(crate) datatype: Option<String>,
    pub(crate) repeats: bool,
}

/// Every definition's elements, by definition name then element name.
#[derive(Debug, Default)]
pub(crate) struct Model {
    definitions: HashMap<String, HashMap<String, Element>>,
    /// Every definition name, primitives included (what a choice element's suffix may spell).
    types: HashSet<String>,
}

impl Model {
    /// The model of the vendored R4 schema, built on first use. Should the schema not load (the
    /// validator would then refuse every write anyway), the model is empty and every element is
    /// unknown.
    pub(crate) fn r4() -> &'static Self {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Self::build().unwrap_or_default())
    }

    fn build() -> Option<Self> {
        let prepared = prepared_schema().ok()?;
        let all = prepared.get("definitions")?.as_object()?;
        // A primitive written inline (no `$ref`, as the variants of a choice are) is known by
        // its pattern: that of the primitive's own definition (several share one; any of them
        // reads the same here).
        let mut patterns: HashMap<&str, &str> = HashMap::new();
        for (name, definition) in all {
            if let Some(pattern) = definition.get("pattern").and_then(Value::as_str) {
                patterns.entry(pattern).or_insert(name);
            }
        }
        let definitions = all
            .iter()
            .filter_map(|(name, definition)| {
                let properties = definition.get("properties")?.as_object()?;
                let elements = properties
                    .iter()
                    .map(|(element, schema)| (element.clone(), element_of(schema, &patterns)))
                    .collect();
                Some((name.clone(), elements))
            })
            .collect();
        Some(Self {
            definitions,
            types: all.keys().cloned().collect(),
        })
    }

    /// The JSON members (with their datatypes) that the FHIRPath member `name` of `datatype`
    /// reaches: the element itself, or every variant of a choice element (`value` ->
    /// `valueQuantity`, `valueDateTime`: the suffix spells the variant's datatype).
    pub(crate) fn members(&self, datatype: &str, name: &str) -> Vec<(String, String)> {
        let Some(elements) = self.definitions.get(datatype) else {
            return Vec::new();
        };
        if let Some(element) = elements.get(name) {
            return element
                .datatype
                .iter()
                .map(|t| (name.to_owned(), t.clone()))
                .collect();
        }
        let mut variants: Vec<(String, String)> = elements
            .keys()
            .filter_map(|member| {
                let suffix = member.strip_prefix(name)?;
                let mut chars = suffix.chars();
                let first = chars.next().filter(char::is_ascii_uppercase)?;
                let primitive = first.to_ascii_lowercase().to_string() + chars.as_str();
                [primitive, suffix.to_owned()]
                    .into_iter()
                    .find(|t| self.types.contains(t))
                    .map(|t| (member.clone(), t))
            })
            .collect();
        variants.sort();
        variants
    }

    /// The element `name` of the definition `datatype`, when both are known.
    pub(crate) fn element(&self, datatype: Option<&str>, name: &str) -> Option<&Element> {
        self.definitions.get(datatype?)?.get(name)
    }

    /// The JSON name under which an element called `name` is written, given the type suffix of
    /// the value's `value[x]` (`Boolean` for `valueBoolean`): `name` itself when the datatype
    /// has it, else the choice element `name` + suffix (`deceased` + `Boolean`) when it has that.
    pub(crate) fn json_name(
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

/// An element's schema: `$ref` (or its array items' `$ref`) names its datatype; an `enum` is a
/// code; an inline primitive is known by its pattern or JSON type.
fn element_of(schema: &Value, patterns: &HashMap<&str, &str>) -> Element {
    let repeats = schema.get("type").and_then(Value::as_str) == Some("array");
    let item = schema.get("items").unwrap_or(schema);
    let datatype = if let Some(r) = item.get("$ref").and_then(Value::as_str) {
        r.strip_prefix("#/definitions/").map(str::to_owned)
    } else if item.get("enum").is_some() {
        Some("code".to_owned())
    } else if let Some(t) = item
        .get("pattern")
        .and_then(Value::as_str)
        .and_then(|p| patterns.get(p))
    {
        Some((*t).to_owned())
    } else {
        match item.get("type").and_then(Value::as_str) {
            Some("boolean") => Some("boolean".to_owned()),
            Some("number") => Some("decimal".to_owned()),
            Some("string") => Some("string".to_owned()),
            _ => None,
        }
    };
    Element { datatype, repeats }
}
