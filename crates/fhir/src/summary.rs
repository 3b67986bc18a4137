//! `_summary` (R4 3.1.1.5.8): the parts of a resource a client asks for.
//!
//! - `true`: the top-level elements R4 marks `isSummary`;
//! - `text`: `text`, `id`, `meta` and the mandatory top-level elements;
//! - `data`: everything but `text`;
//! - `false`: everything.
//!
//! Which elements are summary or mandatory comes from `vendor/fhir/r4/summary-elements.json`,
//! derived from the R4 StructureDefinitions (see `vendor/fhir/README.md`). A narrowed resource
//! carries the `SUBSETTED` tag in `meta.tag`, as R4 asks, so that nobody stores it back as whole.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::ResourceType;
use crate::search::{SearchError, apply_elements, is_element, mark_subsetted, parse_elements};

const SUMMARY_ELEMENTS_JSON: &str = include_str!("../../../vendor/fhir/r4/summary-elements.json");

/// What `_summary` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    False,
}

impl Summary {
    /// The value of a `_summary` parameter (`count` is a search's, not a resource's: `None`).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "true" => Self::True,
            "text" => Self::Text,
            "data" => Self::Data,
            "false" => Self::False,
            _ => return None,
        })
    }
}

/// What a client asks to see of each resource: `_summary` and `_elements` (R4 applies both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Narrowing {
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
}

impl Narrowing {
    /// From a read's `_summary` and `_elements` values. Errors name the parameter, never the
    /// value.
    ///
    /// # Errors
    ///
    /// [`SearchError::Invalid`] for a value that is not one of R4's.
    pub fn parse(summary: Option<&str>, elements: Option<&str>) -> Result<Self, SearchError> {
        let summary = summary
            .map(|v| {
                Summary::parse(v).ok_or(SearchError::Invalid {
                    param: "_summary",
                    reason: "expected true, text, data or false",
                })
            })
            .transpose()?;
        let elements = elements
            .map(|v| {
                parse_elements(v).map_err(|reason| SearchError::Invalid {
                    param: "_elements",
                    reason,
                })
            })
            .transpose()?;
        Ok(Self { summary, elements })
    }

    /// Whether the resource is wanted whole.
    pub fn is_whole(&self) -> bool {
        matches!(self.summary, None | Some(Summary::False)) && self.elements.is_none()
    }

    /// Narrows `resource` (of type `rtype`) as asked.
    pub fn apply(&self, rtype: ResourceType, resource: &mut Value) {
        if let Some(summary) = self.summary {
            apply_summary(rtype, resource, summary);
        }
        if let Some(elements) = &self.elements {
            apply_elements(resource, elements);
        }
    }
}

/// One type's top-level elements: summary and mandatory (a choice element keeps its `[x]`).
#[derive(serde::Deserialize)]
struct Elements {
    summary: Vec<String>,
    mandatory: Vec<String>,
}

fn table() -> &'static HashMap<String, Elements> {
    static TABLE: OnceLock<HashMap<String, Elements>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // The file is embedded and checked by a unit test; an unreadable one is a build defect.
        serde_json::from_str(SUMMARY_ELEMENTS_JSON).unwrap_or_default()
    })
}

/// Narrows `resource` (of type `rtype`) to what `summary` asks for; `false` leaves it whole.
pub fn apply_summary(rtype: ResourceType, resource: &mut Value, summary: Summary) {
    let Value::Object(map) = resource else {
        return;
    };
    let elements = table().get(rtype.as_str());
    let listed = |key: &str, list: fn(&Elements) -> &Vec<String>| {
        elements.is_some_and(|e| list(e).iter().any(|element| is_element(key, element)))
    };
    match summary {
        Summary::False => return,
        Summary::Data => {
            if map.remove("text").is_none() {
                return;
            }
        }
        Summary::True => map.retain(|key, _| {
            matches!(key.as_str(), "resourceType" | "id" | "meta") || listed(key, |e| &e.summary)
        }),
        Summary::Text => map.retain(|key, _| {
            matches!(key.as_str(), "resourceType" | "id" | "meta" | "text")
                || listed(key, |e| &e.mandatory)
        }),
    }
    mark_subsetted(map);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"versionId": "2"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "identifier": [{"value": "MRN1"}],
            "name": [{"family": "Summary"}],
            "birthDate": "1970-01-01",
            "_birthDate": {"extension": []},
            "deceasedBoolean": false,
            "contact": [{"name": {"family": "Kin"}}],
            "communication": [{"language": {"text": "en"}}],
            "maritalStatus": {"text": "M"}
        })
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    fn subsetted(v: &Value) -> bool {
        v["meta"]["tag"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
    }

    #[test]
    fn every_resource_type_has_its_elements_and_the_file_parses() {
        let parsed: HashMap<String, Elements> =
            serde_json::from_str(SUMMARY_ELEMENTS_JSON).expect("summary-elements.json parses");
        for rtype in ResourceType::all() {
            let e = parsed
                .get(rtype.as_str())
                .unwrap_or_else(|| panic!("{rtype:?}"));
            assert!(e.summary.iter().any(|s| s == "id"), "{rtype:?}");
        }
        let observation = &parsed["Observation"];
        assert!(observation.summary.iter().any(|s| s == "value[x]"));
        assert_eq!(observation.mandatory, ["code", "status"]);
    }

    #[test]
    fn true_keeps_the_summary_elements_with_their_variants_and_extensions() {
        let mut p = patient();
        apply_summary(ResourceType::PATIENT, &mut p, Summary::True);
        assert_eq!(
            keys(&p),
            [
                "_birthDate",
                "birthDate",
                "deceasedBoolean",
                "id",
                "identifier",
                "meta",
                "name",
                "resourceType"
            ]
        );
        assert!(subsetted(&p));
        assert_eq!(p["meta"]["versionId"], "2");
    }

    #[test]
    fn text_keeps_the_narrative_and_the_mandatory_elements() {
        let mut o = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "hr"}, "valueQuantity": {"value": 1},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}
        });
        apply_summary(ResourceType::OBSERVATION, &mut o, Summary::Text);
        assert_eq!(
            keys(&o),
            ["code", "id", "meta", "resourceType", "status", "text"]
        );
        assert!(subsetted(&o));
    }

    #[test]
    fn data_drops_the_narrative_and_false_changes_nothing() {
        let mut p = patient();
        apply_summary(ResourceType::PATIENT, &mut p, Summary::Data);
        assert!(p.get("text").is_none() && p.get("contact").is_some());
        assert!(subsetted(&p));
        let mut whole = patient();
        apply_summary(ResourceType::PATIENT, &mut whole, Summary::False);
        assert_eq!(whole, patient());
        // Nothing to drop: not marked as subsetted.
        let mut plain = json!({"resourceType": "Patient", "id": "p2"});
        apply_summary(ResourceType::PATIENT, &mut plain, Summary::Data);
        assert_eq!(plain, json!({"resourceType": "Patient", "id": "p2"}));
    }

    #[test]
    fn values_parse_and_count_is_not_a_resource_summary() {
        assert_eq!(Summary::parse("true"), Some(Summary::True));
        assert_eq!(Summary::parse("text"), Some(Summary::Text));
        assert_eq!(Summary::parse("data"), Some(Summary::Data));
        assert_eq!(Summary::parse("false"), Some(Summary::False));
        assert_eq!(Summary::parse("count"), None);
        assert_eq!(Summary::parse("TRUE"), None);
    }
}
