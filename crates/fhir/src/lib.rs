//! FHIR R4 JSON handling for CareVault.
//!
//! This crate knows what a valid FHIR R4 resource looks like, and nothing about storage,
//! HTTP or access control. It provides:
//!
//! * [`ResourceType`]: one of the 146 R4 resource types (Medplum-only types such as `Project`
//!   or `User`, present in the vendored schema, are refused), and [`ResourceId`]: a valid
//!   logical id (`[A-Za-z0-9\-\.]{1,64}`).
//! * [`check_depth`]: a one-pass, allocation-free guard against deeply nested JSON, to run on
//!   request bodies before parsing them.
//! * [`Validator`]: validation against the official FHIR R4 JSON schema (vendored under
//!   `vendor/fhir/`, embedded in the binary), reporting [`Issue`]s that never contain values
//!   from the validated resource, so that they can be logged and returned to clients.
//! * [`patient_compartments`]: the patients a resource belongs to, from the official R4 Patient
//!   CompartmentDefinition (vendored beside the schema, with the SearchParameter definitions its
//!   parameters come from).
//! * [`outcome`]: building `OperationOutcome` responses.
//! * [`deid`]: de-identification by the HIPAA Safe Harbor method (names, addresses, dates,
//!   identifiers, free text...), ids and references replaced by keyed pseudonyms.
//!
//! No error or issue produced by this crate echoes client input.
//!
//! # Example
//!
//! ```
//! use carevault_fhir::{ResourceId, ResourceType, Validator, check_depth, outcome, patient_compartment};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at start-up (share it, e.g. in an `Arc`):
//! let validator = Validator::new()?;
//! // Optionally, in a background thread: validator.warm_up();
//!
//! // Per request:
//! let body = br#"{"resourceType": "Observation", "status": "final",
//!                 "code": {"text": "Heart rate"},
//!                 "subject": {"reference": "Patient/p1"},
//!                 "valueQuantity": {"value": 72, "unit": "/min"}}"#;
//! check_depth(body, 64)?;
//! let resource: serde_json::Value = serde_json::from_slice(body)?;
//! let rt = ResourceType::parse("Observation")?;
//! validator.validate(rt, &resource).map_err(|issues| outcome::from_issues(&issues).to_string())?;
//!
//! let id = ResourceId::parse("obs-1")?;
//! assert_eq!(patient_compartment(rt, &id, &resource), Some(ResourceId::parse("p1")?));
//!
//! // An invalid resource: the issues say where and what, without the offending value.
//! let bad = serde_json::json!({"resourceType": "Patient", "birthDate": "12/07/1984"});
//! let issues = validator.validate(ResourceType::PATIENT, &bad).err().ok_or("expected issues")?;
//! assert_eq!(issues[0].location, "Patient.birthDate");
//! assert_eq!(issues[0].message, "does not match the required pattern for date");
//! let response_body = outcome::from_issues(&issues);
//! assert_eq!(response_body["issue"][0]["code"], "value");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod bundle;
mod compartment;
pub mod deid;
mod depth;
mod error;
pub mod fhirpatch;
mod model;
pub mod outcome;
pub mod patch;
mod schema;
pub mod search;
pub mod summary;
mod types;
mod validate;

pub use compartment::{
    CompartmentDefinition, CompartmentError, CompartmentParam, ElementPath, MAX_PATIENTS,
    patient_compartment, patient_compartments, patient_id_of, reference_to,
};
pub use depth::check_depth;
pub use error::FhirError;
pub use types::{PATIENT, ResourceId, ResourceType};
pub use validate::{Issue, MAX_ISSUES, Validator};
