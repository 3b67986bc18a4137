//! Writes a processed transaction or batch ([`BundleResponse`]) as a FHIR Bundle: each entry's
//! `response.status` is the status with its reason phrase, and a failed entry carries the
//! OperationOutcome of the one error map.

use carevault_fhir::bundle::{BundleError, BundleHead, BundleWriter};
use carevault_server::bundle::{BundleResponse, EntryResponse, Outcome};
use carevault_server::clock::fhir_instant;
use serde_json::json;

use crate::error::status_code;

/// The response Bundle.
pub fn response_bundle(response: BundleResponse) -> Result<Vec<u8>, BundleError> {
    let mut entries = BundleWriter::default();
    for entry in response.entries {
        match entry {
            EntryResponse::Done(outcome) => done(&mut entries, outcome)?,
            EntryResponse::Failed(e) => entries.push(
                &json!({"response": {"status": status_line(e.status()), "outcome": e.outcome()}}),
                None,
            )?,
        }
    }
    entries.finish(&BundleHead::new(
        response.kind,
        uuid::Uuid::new_v4().to_string(),
    ))
}

fn done(entries: &mut BundleWriter, o: Outcome) -> Result<(), BundleError> {
    let mut response = json!({"status": status_line(o.status)});
    if let Some(location) = &o.location {
        response["location"] = json!(location);
    }
    let Some(v) = &o.version else {
        return entries.push(&json!({"response": response}), None);
    };
    response["etag"] = json!(format!("W/\"{}\"", v.version));
    response["lastModified"] = json!(fhir_instant(v.last_updated_us));
    entries.push(
        &json!({"fullUrl": format!("{}/{}", v.rtype, v.id), "response": response}),
        Some(&v.json),
    )
}

/// `201 Created`: FHIR's `Bundle.entry.response.status` is the status code, optionally followed by
/// the reason phrase; the phrase comes from the HTTP library, so no table of ours can drift.
fn status_line(status: u16) -> String {
    let code = status_code(status);
    match code.canonical_reason() {
        Some(reason) => format!("{} {reason}", code.as_u16()),
        None => code.as_u16().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_carry_the_standard_reason_phrase() {
        assert_eq!(status_line(201), "201 Created");
        assert_eq!(status_line(204), "204 No Content");
        // The old hand-written table labelled every unlisted status "500 Internal Server Error".
        assert_eq!(status_line(503), "503 Service Unavailable");
        assert_eq!(status_line(429), "429 Too Many Requests");
    }

    #[test]
    fn a_failed_entry_tells_the_error_with_its_outcome() {
        let body = response_bundle(BundleResponse {
            kind: "batch-response",
            entries: vec![EntryResponse::Failed(carevault_server::Error::Conflict(
                "the record changed concurrently".into(),
            ))],
        })
        .unwrap();
        let bundle: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(bundle["type"], "batch-response");
        let e = &bundle["entry"][0];
        assert_eq!(e["response"]["status"], "409 Conflict");
        assert_eq!(e["response"]["outcome"]["issue"][0]["code"], "conflict");
    }
}
