//! Writing Bundles: the one writer for every Bundle CareVault answers (searchset, history,
//! transaction-response, batch-response, the audit trail's pages).
//!
//! A resource in an entry is written as the stored JSON it is: that JSON was opened under its
//! data key (authenticated encryption), so it is the text this server serialized when the version
//! was written. Parsing it again to embed it was a third pass over every result's JSON.

use serde::Serialize;
use serde_json::Value;

/// Writing a Bundle failed (an entry or head that does not serialize to a JSON object).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the Bundle: {0}")]
pub struct BundleError(String);

/// Everything of a Bundle but its entries.
#[derive(Serialize)]
pub struct BundleHead<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta>,
    #[serde(rename = "type")]
    bundle_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<Value>,
}

#[derive(Serialize)]
struct Meta {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
}

impl<'a> BundleHead<'a> {
    /// A Bundle of `bundle_type` (`searchset`, `history`, `transaction-response`, ...); `id` is
    /// the caller's (a new random one for each answer).
    pub fn new(bundle_type: &'a str, id: String) -> Self {
        Self {
            resource_type: "Bundle",
            id,
            meta: None,
            bundle_type,
            total: None,
            link: Vec::new(),
        }
    }

    /// `meta.lastUpdated`: when the Bundle was assembled (a FHIR instant).
    #[must_use]
    pub fn last_updated(mut self, instant: String) -> Self {
        self.meta = Some(Meta {
            last_updated: instant,
        });
        self
    }

    #[must_use]
    pub fn total(mut self, total: Option<usize>) -> Self {
        self.total = total;
        self
    }

    /// `link`: `{"relation": ..., "url": ...}` objects.
    #[must_use]
    pub fn links(mut self, links: Vec<Value>) -> Self {
        self.link = links;
        self
    }
}

/// A Bundle's `entry` array, written as entries are added; [`BundleWriter::finish`] puts the head
/// around it.
#[derive(Default)]
pub struct BundleWriter(Vec<u8>);

impl BundleWriter {
    /// Append `{...entry, "resource": resource}`; `entry` serializes to a JSON object without a
    /// `resource` member, and `resource` is stored JSON written as it is.
    pub fn push(
        &mut self,
        entry: &impl Serialize,
        resource: Option<&[u8]>,
    ) -> Result<(), BundleError> {
        self.0.push(if self.0.is_empty() { b'[' } else { b',' });
        let start = self.0.len();
        serde_json::to_writer(&mut self.0, entry).map_err(|e| BundleError(e.to_string()))?;
        if let Some(resource) = resource {
            debug_assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(resource).is_ok(),
                "stored JSON of a Bundle entry does not parse"
            );
            if self.0.pop() != Some(b'}') {
                return Err(BundleError("an entry is not a JSON object".into()));
            }
            if self.0.len() > start + 1 {
                self.0.push(b',');
            }
            self.0.extend_from_slice(br#""resource":"#);
            self.0.extend_from_slice(resource);
            self.0.push(b'}');
        }
        Ok(())
    }

    /// The whole Bundle: `head` (a JSON object without `entry`) with these entries appended.
    pub fn finish(self, head: &impl Serialize) -> Result<Vec<u8>, BundleError> {
        let mut body = serde_json::to_vec(head).map_err(|e| BundleError(e.to_string()))?;
        if body.pop() != Some(b'}') {
            return Err(BundleError("a Bundle is not a JSON object".into()));
        }
        body.extend_from_slice(br#","entry":"#);
        if self.0.is_empty() {
            body.push(b'[');
        } else {
            body.extend_from_slice(&self.0);
        }
        body.extend_from_slice(b"]}");
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_embed_stored_json_and_parse_as_the_bundle_they_describe() {
        let head = json!({"resourceType": "Bundle", "type": "history"});
        let empty = BundleWriter::default().finish(&head).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap(),
            json!({"resourceType": "Bundle", "type": "history", "entry": []})
        );

        let mut entries = BundleWriter::default();
        let stored = br#"{"resourceType":"Patient","id":"p1","name":[{"family":"O\"Brien"}]}"#;
        entries
            .push(
                &json!({"fullUrl": "https://h/fhir/Patient/p1"}),
                Some(stored),
            )
            .unwrap();
        entries
            .push(&json!({"fullUrl": "https://h/fhir/Patient/p2"}), None)
            .unwrap();
        entries
            .push(&json!({}), Some(br#"{"resourceType":"Basic"}"#))
            .unwrap();
        let body = entries.finish(&head).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({
                "resourceType": "Bundle",
                "type": "history",
                "entry": [
                    {"fullUrl": "https://h/fhir/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1", "name": [{"family": "O\"Brien"}]}},
                    {"fullUrl": "https://h/fhir/Patient/p2"},
                    {"resource": {"resourceType": "Basic"}},
                ]
            })
        );
        assert!(
            BundleWriter::default()
                .finish(&json!(["not", "an", "object"]))
                .is_err()
        );
        assert!(
            BundleWriter::default()
                .push(&json!([1]), Some(b"{}"))
                .is_err()
        );
    }

    #[test]
    fn the_head_says_only_what_it_was_given() {
        let head =
            serde_json::to_value(BundleHead::new("transaction-response", "b-1".into())).unwrap();
        assert_eq!(head["resourceType"], "Bundle");
        assert_eq!(head["type"], "transaction-response");
        assert_eq!(head["id"], "b-1");
        for absent in ["meta", "total", "link"] {
            assert!(head.get(absent).is_none(), "{absent} was written");
        }
        let head = serde_json::to_value(
            BundleHead::new("searchset", "b-2".into())
                .last_updated("2026-12-05T00:00:00Z".into())
                .total(Some(0))
                .links(vec![
                    json!({"relation": "self", "url": "https://h/fhir/Patient"}),
                ]),
        )
        .unwrap();
        assert_eq!(head["meta"]["lastUpdated"], "2026-12-05T00:00:00Z");
        assert_eq!(head["total"], 0);
        assert_eq!(head["link"][0]["relation"], "self");
    }
}
