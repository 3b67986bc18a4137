//! De-identification of FHIR R4 resources by the HIPAA Safe Harbor method
//! (45 CFR 164.514(b)(2)): JSON in, JSON out, no I/O.
//!
//! # API
//!
//! ```
//! use carevault_fhir::deid::{DateHandling, Deidentifier, DeidOptions};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per export (or per environment): a 256-bit secret that never leaves the server.
//! let secret = [7u8; 32];
//! let deid = Deidentifier::new(&secret, DeidOptions::safe_harbor(2026))?;
//!
//! let patient = json!({"resourceType": "Patient", "id": "p1",
//!     "name": [{"family": "Canary"}], "birthDate": "1984-07-12",
//!     "address": [{"city": "Springfield", "state": "MA", "postalCode": "02139"}]});
//! let out = deid.deidentify(&patient)?;
//! assert_eq!(out["id"], deid.pseudonym("Patient", "p1"));
//! assert_eq!(out["birthDate"], "1984");
//! assert_eq!(out["address"][0], json!({"state": "MA", "postalCode": "021"}));
//! assert!(out.get("name").is_none());
//!
//! // References keep the graph: they carry the same pseudonym as the resource's id.
//! let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
//!     "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
//!     "subject": {"reference": "Patient/p1", "display": "Canary"}});
//! let out = deid.deidentify(&obs)?;
//! assert_eq!(out["subject"], json!({"reference": format!("Patient/{}", deid.pseudonym("Patient", "p1"))}));
//! # Ok(())
//! # }
//! ```
//!
//! * [`Deidentifier::new`]`(secret: &[u8; 32], options: DeidOptions) -> Result<Deidentifier, DeidError>`
//! * [`Deidentifier::deidentify`]`(&self, resource: &Value) -> Result<Value, DeidError>`: any
//!   resource, a `Bundle` included (its entries' resources are de-identified each with their own
//!   patient); the patient whose date offset applies is found from the resource itself (the
//!   Patient CompartmentDefinition, see [`crate::patient_compartments`]).
//! * [`Deidentifier::deidentify_for`]`(&self, resource: &Value, patient: Option<&str>) -> ...`:
//!   the same, the caller naming the patient (a Patient id) whose offset shifts the dates.
//! * [`Deidentifier::pseudonym`]`(&self, rtype: &str, id: &str) -> String`: the pseudonym that
//!   replaces `rtype/id` everywhere (ids, references, `fullUrl`s).
//! * [`search_refusal`]`(query: &Query) -> Option<&'static str>`: whether a search over
//!   de-identified data would act as an oracle on identifying values (refuse it if Some).
//! * [`year_start_us`]`(us: i64) -> i64`: a timestamp outside a resource (`Last-Modified`)
//!   reduced like an `instant`.
//!
//! # What happens to each element (a deny-by-default walk)
//!
//! Every element is classified by its datatype in the official R4 schema (the vendored one the
//! validator uses). Only what a rule below keeps survives: an element the schema does not know,
//! a datatype without a rule, a `contained` resource, and an extension whose value is removed
//! are all removed, never passed through. An object or array left empty is removed.
//!
//! | datatype / element | treatment |
//! | --- | --- |
//! | `boolean`, `integer`, `decimal`, `positiveInt`, `unsignedInt`, `code` | kept |
//! | `date`, `dateTime` | the year only (`1984`); or shifted, see [`DateHandling`] |
//! | `instant` (must stay a full timestamp) | `YYYY-01-01T00:00:00Z`; or shifted |
//! | `birthDate` 90 or more years before `reference_year` | the year `reference_year - 90` |
//! | `Age` over 89 years | `>= 90` |
//! | `time`, `string`, `markdown`, `xhtml`, `base64Binary`, `oid`, `uuid`, `url` | removed |
//! | `uri`, `canonical` | removed, except `Coding.system`, `Quantity.system`, `Extension.url`, `Meta.profile` |
//! | `id` | a resource's `id`: pseudonym; `Meta.versionId` kept; element ids removed |
//! | `HumanName`, `ContactPoint` (phone, fax, email, url), `Identifier` (MRN, SSN, any), `Attachment` (photos, documents), `Annotation` (`note`), `Narrative` (`text`), `Signature`, `Device.udiCarrier` | removed |
//! | `Address` | `state`, `country`, `use`, `type`, `period` kept; `postalCode` (US) to three digits, `000` for the restricted prefixes (`vendor/deid/`); all else removed |
//! | `Coding` | `system`, `code`, `userSelected`: `display` (free text) and `version` (a string) removed |
//! | `CodeableConcept` | its codings; `text` removed |
//! | `Quantity` | `value`, `comparator`, `system`, `code`; `unit` only where it equals `code` |
//! | `Reference` | `reference` pseudonymized (`Type/id`, an absolute URL's id, `urn:uuid:`), `type` kept; `display`, `identifier`, contained (`#x`) and conditional references removed |
//! | `Meta` | `versionId`, `lastUpdated` (as a date), `profile`, `security` and `tag` codes; `source` removed |
//! | `Bundle.entry` | `fullUrl` pseudonymized like a reference; `resource` de-identified; `request.url` reduced to `Type` or `Type/<pseudonym>` |
//! | `description`, `comment`, `note`, `text`... | removed: they are `string`, `markdown` or `Annotation` |
//!
//! Removing an element that the schema requires would leave an invalid resource (a development
//! environment could not import it): a required complex element whose content was removed is
//! replaced by the `data-absent-reason` extension with the code `masked`, a required primitive
//! by the string `masked`.
//!
//! # Pseudonyms
//!
//! `pseudonym(rtype, id)` is HMAC-SHA256 under the secret of `rtype/id`, its first 128 bits
//! written as a UUID (a valid FHIR id). The same secret gives the same pseudonym, in one export
//! and across exports; a fresh secret per export gives unlinkable exports. The pseudonym is not
//! derived from an identifier of the person (identifier values are removed, never hashed) and
//! cannot be reversed without the secret, which the recipient never gets (45 CFR 164.514(c)).
//!
//! # Date shifting (not Safe Harbor)
//!
//! [`DateHandling::Shift`] moves every date of a patient's resources by the same number of days
//! (from the HMAC of the patient's id, never zero, at most `max_days` either way) and keeps
//! their precision, so intervals between events survive. Safe Harbor requires removing every
//! date element but the year: shifted dates need an expert's determination (45 CFR
//! 164.514(b)(1)) that the risk of re-identification is very small.

mod model;
mod walk;
mod zip;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_carebundle;

use carevault_crypto::hmac_sha256;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::{ResourceId, ResourceType};
use model::Model;

/// How date elements are de-identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DateHandling {
    /// Safe Harbor: the year only (instants become `YYYY-01-01T00:00:00Z`).
    YearOnly,
    /// Every date of one patient shifted by the same offset of 1 to `max_days` days, earlier or
    /// later, derived from the secret and the patient's id. Expert Determination, not Safe
    /// Harbor.
    Shift { max_days: u16 },
}

/// The choices of a de-identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeidOptions {
    pub dates: DateHandling,
    /// The year ages are counted to (the current year): a birth date 90 or more years before it
    /// becomes `reference_year - 90` (every such person in one category, "90 or older").
    pub reference_year: i32,
}

impl DeidOptions {
    /// Safe Harbor: years only, ages counted to `reference_year`.
    #[must_use]
    pub fn safe_harbor(reference_year: i32) -> Self {
        Self {
            dates: DateHandling::YearOnly,
            reference_year,
        }
    }

    /// The same, with `dates` handled as given.
    #[must_use]
    pub fn with_dates(mut self, dates: DateHandling) -> Self {
        self.dates = dates;
        self
    }
}

/// Why a resource could not be de-identified. Never carries a value of the resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeidError {
    #[error("not a FHIR resource (an object with a known resourceType)")]
    NotAResource,
    #[error("the FHIR model did not load: {0}")]
    Model(String),
}

/// The de-identifying transform, keyed by a secret. Cheap to share (`Arc`) and `Sync`.
pub struct Deidentifier {
    key: Zeroizing<[u8; 32]>,
    options: DeidOptions,
    model: &'static Model,
}

impl std::fmt::Debug for Deidentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deidentifier")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Domain separation of the two uses of the secret.
const ID_LABEL: &[u8] = b"carevault-deid-id\0";
const SHIFT_LABEL: &[u8] = b"carevault-deid-shift\0";

impl Deidentifier {
    /// A transform under `secret` (keep it secret: whoever holds it can link pseudonyms to ids).
    ///
    /// # Errors
    ///
    /// [`DeidError::Model`] if the embedded FHIR schema does not load (a build defect).
    pub fn new(secret: &[u8; 32], options: DeidOptions) -> Result<Self, DeidError> {
        let model = Model::r4().map_err(|e| DeidError::Model(e.to_string()))?;
        Ok(Self {
            key: Zeroizing::new(*secret),
            options,
            model,
        })
    }

    #[must_use]
    pub fn options(&self) -> DeidOptions {
        self.options
    }

    /// De-identifies `resource`; the patient whose date offset applies is found in it.
    ///
    /// # Errors
    ///
    /// [`DeidError::NotAResource`] when `resource` is not an object with a known
    /// `resourceType`.
    pub fn deidentify(&self, resource: &Value) -> Result<Value, DeidError> {
        let (rtype, _) = resource_type(resource)?;
        let patient = patient_of(rtype, resource);
        self.deidentify_for(resource, patient.as_ref().map(ResourceId::as_str))
    }

    /// De-identifies `resource`, shifting dates (if asked) by the offset of the Patient `patient`
    /// (a Patient id; without one, the resource's own `Type/id` chooses the offset).
    ///
    /// # Errors
    ///
    /// As [`Self::deidentify`].
    pub fn deidentify_for(
        &self,
        resource: &Value,
        patient: Option<&str>,
    ) -> Result<Value, DeidError> {
        let (rtype, id) = resource_type(resource)?;
        let shift_days = match self.options.dates {
            DateHandling::YearOnly => 0,
            DateHandling::Shift { max_days } => {
                let subject = match (patient, id) {
                    (Some(p), _) => format!("Patient/{p}"),
                    (None, Some(id)) => format!("{rtype}/{id}"),
                    (None, None) => String::new(),
                };
                self.shift_days(&subject, max_days)
            }
        };
        let walker = walk::Walker {
            deid: self,
            shift_days,
        };
        Ok(walker.resource(rtype.as_str(), resource))
    }

    /// The pseudonym of `rtype/id` (a UUID-shaped FHIR id).
    #[must_use]
    pub fn pseudonym(&self, rtype: &str, id: &str) -> String {
        self.pseudonym_of(&format!("{rtype}/{id}"))
    }

    /// The pseudonym of any name (`Type/id`, or a whole `urn:uuid:...`).
    pub(super) fn pseudonym_of(&self, name: &str) -> String {
        let mac = self.mac(ID_LABEL, name);
        let hex: String = mac.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// The day offset of `subject`: never 0, at most `max_days` either way.
    fn shift_days(&self, subject: &str, max_days: u16) -> i64 {
        let max = i64::from(max_days.max(1));
        let mac = self.mac(SHIFT_LABEL, subject);
        let mut first = [0u8; 8];
        first.copy_from_slice(&mac[..8]);
        let span = u64::from(max_days.max(1)) * 2;
        // 0..2max (below 2^17: the conversion cannot fail) -> -max..-1 and 1..max
        let n = i64::try_from(u64::from_be_bytes(first) % span).unwrap_or(0);
        if n < max { n - max } else { n - max + 1 }
    }

    fn mac(&self, label: &[u8], message: &str) -> [u8; 32] {
        hmac_sha256(self.key.as_slice(), &[label, message.as_bytes()].concat())
    }
}

/// Why a search over de-identified data is refused, or None when it may run.
///
/// A search runs on the identified data: answering it would turn identifying parameters into
/// an oracle (does a patient named X, born on D, exist?) even though every result is
/// de-identified. Refused: string parameters (names, addresses, any text), tokens on
/// identifiers, phones and emails or with `:text`, dates finer than a year (`birthdate=1984` is
/// fine, `birthdate=1984-07-12` and `date=ge2020-03` are not), and sorting by a date. The message
/// names the rule, never the value.
#[must_use]
pub fn search_refusal(query: &crate::search::Query) -> Option<&'static str> {
    // A chain's or `_has`'s condition is a search too: `subject.name=x` singles a person out
    // as `name=x` does.
    if query
        .all_clauses()
        .any(crate::search::Clause::could_identify)
    {
        return Some(
            "de-identified data cannot be searched by name, address, text, identifier, phone, \
             email, or a date finer than a year",
        );
    }
    if query.sort.iter().any(|k| k.param != "_id") {
        return Some("de-identified data can be sorted by _id only");
    }
    None
}

/// The start of the (UTC) year of a time in microseconds since the epoch: what a timestamp
/// outside a resource (`Last-Modified`) becomes, as `instant` elements do.
#[must_use]
pub fn year_start_us(us: i64) -> i64 {
    const US_PER_DAY: i64 = 86_400_000_000;
    let (year, _, _) = crate::search::date::civil_from_days(us.div_euclid(US_PER_DAY));
    crate::search::date::days_from_civil(year, 1, 1) * US_PER_DAY
}

/// The resource's type and id.
fn resource_type(resource: &Value) -> Result<(ResourceType, Option<&str>), DeidError> {
    let rtype = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|t| ResourceType::parse(t).ok())
        .ok_or(DeidError::NotAResource)?;
    Ok((rtype, resource.get("id").and_then(Value::as_str)))
}

/// The first patient whose compartment holds the resource.
fn patient_of(rtype: ResourceType, resource: &Value) -> Option<ResourceId> {
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .and_then(|i| ResourceId::parse(i).ok());
    match id {
        Some(id) => crate::patient_compartment(rtype, &id, resource),
        // Without an id a Patient has no compartment; another type's is in its references.
        None if rtype != ResourceType::PATIENT => {
            crate::patient_compartment(rtype, &ResourceId::parse("new").ok()?, resource)
        }
        None => None,
    }
}
