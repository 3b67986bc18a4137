//! FHIR's `patch` interaction: JSON Patch (RFC 6902), applied with a size budget, and
//! FHIRPath Patch ([`crate::fhirpatch`]), behind one [`Patch`] that the server parses and
//! applies without caring which format the client sent.
//!
//! The operations themselves are the `json-patch` crate's. What this module adds is what a
//! server needs around them: a budget on growth (a `copy` can double a document, and a patch of
//! a few hundred `copy` operations would otherwise build a document of gigabytes from a request
//! of kilobytes), and errors that say which operation failed without echoing any value or path
//! from the request.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::fhirpatch::{FhirPatch, FhirPatchError};

/// The format of a patch body, as its media type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatchFormat {
    /// `application/json-patch+json`: an array of RFC 6902 operations.
    JsonPatch,
    /// `application/fhir+json` or `application/json`: a `Parameters` resource.
    FhirPath,
}

/// A parsed patch in either format.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Patch {
    Json(Vec<PatchOperation>),
    FhirPath(FhirPatch),
}

impl Patch {
    /// Parse `body` as a patch of `format`.
    pub fn parse(format: PatchFormat, body: Value) -> Result<Self, PatchError> {
        match format {
            PatchFormat::JsonPatch => parse_patch(body).map(Patch::Json),
            PatchFormat::FhirPath => match FhirPatch::parse(&body) {
                Ok(p) => Ok(Patch::FhirPath(p)),
                // A JSON Patch sent as FHIR JSON: say which media type it needs.
                Err(FhirPatchError::Malformed) if body.is_array() => {
                    Err(PatchError::JsonPatchAsFhir)
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Apply the patch to `doc`. On an error `doc` may be partly patched: callers patch a copy
    /// and drop it. `max_bytes` bounds the patched resource.
    pub fn apply(&self, doc: &mut Value, max_bytes: usize) -> Result<(), PatchError> {
        match self {
            Patch::Json(ops) => apply_patch(doc, ops, max_bytes),
            Patch::FhirPath(p) => Ok(p.apply(doc, max_bytes)?),
        }
    }
}

/// Why a patch was refused. Messages name the operation's position only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The body is not a JSON Patch document (an array of operations).
    #[error(
        "the body is not a JSON Patch document (an array of add, remove, replace, move, copy and test operations); a FHIRPath Patch (a Parameters resource) needs Content-Type application/fhir+json"
    )]
    Malformed,
    /// The patch has no operations.
    #[error("the JSON Patch document has no operations")]
    Empty,
    /// Operation `index` (from 0) failed; nothing was changed.
    #[error("JSON Patch operation {index} failed: {reason}")]
    Failed { index: usize, reason: &'static str },
    /// Applying the patch would make the resource larger than the limit.
    #[error("the patched resource would be larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// A JSON Patch array sent as `application/fhir+json` or `application/json`.
    #[error(
        "a PATCH body sent as application/fhir+json or application/json must be a FHIRPath Patch (a Parameters resource); a JSON Patch array needs Content-Type application/json-patch+json"
    )]
    JsonPatchAsFhir,
    /// A FHIRPath Patch that was refused.
    #[error(transparent)]
    FhirPath(#[from] FhirPatchError),
}

/// Parse a JSON Patch document.
pub fn parse_patch(body: Value) -> Result<Vec<PatchOperation>, PatchError> {
    let json_patch::Patch(ops) = serde_json::from_value(body).map_err(|_| PatchError::Malformed)?;
    if ops.is_empty() {
        return Err(PatchError::Empty);
    }
    Ok(ops)
}

/// Apply `ops` to `doc` in order. On an error `doc` may be partly patched: callers patch a copy
/// and drop it. `max_bytes` bounds the serialized size the copies may grow the document to.
pub fn apply_patch(
    doc: &mut Value,
    ops: &[PatchOperation],
    max_bytes: usize,
) -> Result<(), PatchError> {
    // Every value an `add`, `replace` or `test` carries arrived in the request, which the body
    // limit bounds; only `copy` grows the document beyond what was sent.
    let mut size = serialized_len(doc);
    for (index, op) in ops.iter().enumerate() {
        if let PatchOperation::Copy(copy) = op
            && let Some(source) = doc.pointer(copy.from.as_str())
        {
            size = size.saturating_add(serialized_len(source));
            if size > max_bytes {
                return Err(PatchError::TooLarge { limit: max_bytes });
            }
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| PatchError::Failed {
            index,
            reason: match e.kind {
                PatchErrorKind::TestFailed => "its test did not match",
                PatchErrorKind::InvalidFromPointer => "its from path does not exist",
                PatchErrorKind::InvalidPointer => "its path does not exist",
                PatchErrorKind::CannotMoveInsideItself => "it moves a value inside itself",
                _ => "it could not be applied",
            },
        })?;
    }
    Ok(())
}

fn serialized_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(doc: Value, patch: Value) -> Result<Value, PatchError> {
        let mut doc = doc;
        apply_patch(&mut doc, &parse_patch(patch)?, 1 << 20)?;
        Ok(doc)
    }

    #[test]
    fn applies_each_kind_of_operation_in_order() {
        let doc = json!({"resourceType": "Patient", "id": "p1", "active": true,
            "name": [{"family": "Chalmers", "given": ["Peter"]}]});
        let out = patched(
            doc,
            json!([
                {"op": "test", "path": "/active", "value": true},
                {"op": "replace", "path": "/active", "value": false},
                {"op": "add", "path": "/name/0/given/-", "value": "James"},
                {"op": "copy", "from": "/name/0", "path": "/name/-"},
                {"op": "move", "from": "/name/1/family", "path": "/name/1/text"},
                {"op": "remove", "path": "/name/1/given"}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"resourceType": "Patient", "id": "p1", "active": false,
                "name": [{"family": "Chalmers", "given": ["Peter", "James"]}, {"text": "Chalmers"}]})
        );
    }

    #[test]
    fn a_failed_test_names_the_operation_and_not_the_value() {
        let err = patched(
            json!({"gender": "female"}),
            json!([{"op": "test", "path": "/gender", "value": "CANARY-male"}]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::Failed {
                index: 0,
                reason: "its test did not match"
            }
        );
        assert!(!err.to_string().contains("CANARY"));
        assert!(!err.to_string().contains("gender"));
    }

    #[test]
    fn a_missing_path_and_a_malformed_or_empty_patch_are_refused() {
        let err = patched(
            json!({"a": 1}),
            json!([{"op": "remove", "path": "/b/c"}, {"op": "add", "path": "/x", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::Failed {
                index: 0,
                reason: "its path does not exist"
            }
        );
        assert_eq!(
            patched(json!({}), json!({"op": "add"})).unwrap_err(),
            PatchError::Malformed
        );
        assert_eq!(
            patched(json!({}), json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err(),
            PatchError::Malformed
        );
        assert_eq!(
            patched(json!({}), json!([])).unwrap_err(),
            PatchError::Empty
        );
    }

    #[test]
    fn copies_that_would_grow_past_the_limit_are_refused_before_they_are_made() {
        // Each copy doubles the document: 40 of them would need a terabyte.
        let ops: Vec<Value> = (0..40)
            .map(|_| json!({"op": "copy", "from": "/a", "path": "/a/-"}))
            .collect();
        let mut doc = json!({"a": ["0123456789"]});
        let err =
            apply_patch(&mut doc, &parse_patch(Value::Array(ops)).unwrap(), 1 << 20).unwrap_err();
        assert_eq!(err, PatchError::TooLarge { limit: 1 << 20 });
        assert!(serialized_len(&doc) <= 1 << 20);
    }

    #[test]
    fn the_format_decides_how_a_body_is_read_and_a_mismatch_names_both_formats() {
        let json_patch = json!([{"op": "replace", "path": "/gender", "value": "male"}]);
        let fhirpath = json!({"resourceType": "Parameters", "parameter": [{"name": "operation",
            "part": [{"name": "type", "valueCode": "replace"},
                     {"name": "path", "valueString": "Patient.gender"},
                     {"name": "value", "valueCode": "male"}]}]});
        for (format, body) in [
            (PatchFormat::JsonPatch, &json_patch),
            (PatchFormat::FhirPath, &fhirpath),
        ] {
            let mut doc = json!({"resourceType": "Patient", "gender": "female"});
            Patch::parse(format, body.clone())
                .unwrap()
                .apply(&mut doc, 1 << 20)
                .unwrap();
            assert_eq!(doc["gender"], "male");
        }
        let swapped = [
            Patch::parse(PatchFormat::JsonPatch, fhirpath).unwrap_err(),
            Patch::parse(PatchFormat::FhirPath, json_patch).unwrap_err(),
            Patch::parse(PatchFormat::FhirPath, json!({"resourceType": "Patient"})).unwrap_err(),
        ];
        for err in swapped {
            let message = err.to_string();
            assert!(
                message.contains("JSON Patch") && message.contains("Parameters"),
                "{message}"
            );
        }
    }
}
