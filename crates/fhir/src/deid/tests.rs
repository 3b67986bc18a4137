//! One test per kind of identifier (45 CFR 164.514(b)(2)(i)(A)-(R)) and per rule of the walk.

use serde_json::{Value, json};

use super::{DateHandling, DeidError, DeidOptions, Deidentifier};
use crate::{ResourceType, Validator};

const SECRET: [u8; 32] = [42; 32];

fn deid() -> Deidentifier {
    Deidentifier::new(&SECRET, DeidOptions::safe_harbor(2026)).unwrap()
}

/// Fails naming the first canary found anywhere in `out` (keys and values alike).
fn assert_none_of(out: &Value, canaries: &[&str]) {
    let text = out.to_string();
    for canary in canaries {
        assert!(!text.contains(canary), "{canary} survived in {text}");
    }
}

#[test]
fn names_are_removed_wherever_a_human_name_is() {
    let patient = json!({"resourceType": "Patient", "id": "p1",
        "name": [{"family": "CanaryFamily", "given": ["CanaryGiven"], "text": "CanaryText"}],
        "contact": [{"name": {"family": "CanaryContact"}, "gender": "male"}],
        "extension": [{"url": "http://example.org/mother", "valueHumanName": {"family": "CanaryMother"}}]});
    let out = deid().deidentify(&patient).unwrap();
    assert_none_of(&out, &["Canary"]);
    assert_eq!(out["contact"], json!([{"gender": "male"}]));
    for rtype in ["Practitioner", "RelatedPerson", "Person"] {
        let r = json!({"resourceType": rtype, "id": "x", "name": [{"family": "CanaryFamily"}],
            "patient": {"reference": "Patient/p1"}});
        assert_none_of(&deid().deidentify(&r).unwrap(), &["Canary"]);
    }
}

#[test]
fn addresses_keep_state_country_and_three_zip_digits() {
    let patient = json!({"resourceType": "Patient", "id": "p1", "address": [
        {"use": "home", "line": ["1 Canary Street"], "city": "CanaryCity", "district": "CanaryCounty",
         "state": "MA", "postalCode": "02139-4307", "country": "US", "text": "CanaryText"},
        {"city": "CanaryTown", "state": "WY", "postalCode": "82101"},
        {"city": "CanaryLondon", "postalCode": "SW1A 1AA", "country": "GB"}]});
    let out = deid().deidentify(&patient).unwrap();
    assert_none_of(&out, &["Canary", "4307", "02139", "82101", "SW1A"]);
    assert_eq!(
        out["address"],
        json!([{"use": "home", "state": "MA", "country": "US", "postalCode": "021"},
               {"state": "WY", "postalCode": "000"},
               {"country": "GB"}])
    );
}

#[test]
fn every_date_element_becomes_its_year() {
    let patient = json!({"resourceType": "Patient", "id": "p1", "birthDate": "1984-07-12",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                       "valueDateTime": "1984-07-12T08:15:00Z"}]},
        "deceasedDateTime": "2021-03-04T05:06:07+01:00",
        "meta": {"lastUpdated": "2025-11-02T10:11:12.123Z"},
        "extension": [{"url": "http://example.org/x", "valuePeriod": {"start": "2019-05-06", "end": "2019-06-07"}}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}}]});
    let out = deid().deidentify(&patient).unwrap();
    assert_eq!(out["birthDate"], "1984");
    assert_eq!(out["_birthDate"]["extension"][0]["valueDateTime"], "1984");
    assert_eq!(out["deceasedDateTime"], "2021");
    assert_eq!(out["meta"]["lastUpdated"], "2025-01-01T00:00:00Z");
    assert_eq!(
        out["extension"][0]["valuePeriod"],
        json!({"start": "2019", "end": "2019"})
    );
    assert_none_of(
        &out,
        &[
            "07-12", "08:15", "03-04", "05-06", "06-07", "11-02", "10:11",
        ],
    );
    let report = json!({"resourceType": "DiagnosticReport", "id": "d1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "effectivePeriod": {"start": "2020-02-03T04:05:06Z"}, "issued": "2020-02-03T09:10:11Z"});
    let out = deid().deidentify(&report).unwrap();
    assert_eq!(out["effectivePeriod"]["start"], "2020");
    assert_eq!(out["issued"], "2020-01-01T00:00:00Z");
}

#[test]
fn ages_over_89_collapse_into_one_category() {
    let deid = deid();
    let born = |d: &str| {
        deid.deidentify(&json!({"resourceType": "Patient", "id": "p", "birthDate": d}))
            .unwrap()["birthDate"]
            .clone()
    };
    assert_eq!(born("1937-12-31"), "1937"); // 89 in 2026
    assert_eq!(born("1936-01-01"), "1936"); // 89 or 90: collapsed (to the same year)
    assert_eq!(born("1935-06-01"), "1936"); // 90 or 91: collapsed
    assert_eq!(born("1901"), "1936");
    let condition = json!({"resourceType": "Condition", "id": "c",
        "subject": {"reference": "Patient/p"},
        "onsetAge": {"value": 97, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}});
    let out = deid.deidentify(&condition).unwrap();
    assert_eq!(out["onsetAge"]["value"], 90);
    assert_eq!(out["onsetAge"]["comparator"], ">=");
}

#[test]
fn phone_fax_email_and_url_contact_points_are_removed() {
    let telecom = json!([{"system": "phone", "value": "555-0100-canary"},
        {"system": "fax", "value": "555-0199-canary"},
        {"system": "email", "value": "canary@example.org"},
        {"system": "url", "value": "https://canary.example.org"}]);
    for rtype in ["Patient", "Practitioner", "Organization"] {
        let r = json!({"resourceType": rtype, "id": "x", "telecom": telecom,
            "contact": [{"telecom": telecom, "gender": "female"}]});
        let out = deid().deidentify(&r).unwrap();
        assert_none_of(&out, &["canary", "555-"]);
        assert!(out.get("telecom").is_none());
    }
}

#[test]
fn identifier_values_of_every_kind_are_removed() {
    let patient = json!({"resourceType": "Patient", "id": "p1", "identifier": [
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
         "value": "MRN-CANARY-1"},
        {"system": "urn:oid:2.16.840.1.113883.4.3.25", "value": "DL-CANARY"}],
        "managingOrganization": {"identifier": {"value": "ORG-CANARY"}, "display": "Canary Clinic"},
        "generalPractitioner": [{"reference": "Practitioner/pr1", "display": "Dr Canary"}]});
    let out = deid().deidentify(&patient).unwrap();
    assert_none_of(
        &out,
        &["999-12-3456", "CANARY", "Canary", "us-ssn", "2.16.840"],
    );
    assert!(out.get("identifier").is_none());
    assert!(out.get("managingOrganization").is_none());
    let pseudonym = deid().pseudonym("Practitioner", "pr1");
    assert_eq!(
        out["generalPractitioner"],
        json!([{"reference": format!("Practitioner/{pseudonym}")}])
    );
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final",
        "identifier": [{"value": "ACCESSION-CANARY"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}});
    assert_none_of(&deid().deidentify(&obs).unwrap(), &["ACCESSION-CANARY"]);
}

#[test]
fn urls_ips_device_ids_photos_and_attachments_are_removed() {
    let patient = json!({"resourceType": "Patient", "id": "p1",
        "photo": [{"contentType": "image/png", "data": "Q0FOQVJZ", "url": "https://canary.example.org/face.png"}],
        "extension": [{"url": "http://example.org/ip", "valueString": "203.0.113.77"},
                      {"url": "http://example.org/home", "valueUrl": "https://canary.example.org"},
                      {"url": "http://example.org/uri", "valueUri": "http://203.0.113.78/"}],
        "implicitRules": "https://canary.example.org/rules"});
    let out = deid().deidentify(&patient).unwrap();
    assert_none_of(&out, &["canary", "Q0FOQVJZ", "203.0.113"]);
    assert_eq!(
        out,
        json!({"resourceType": "Patient", "id": deid().pseudonym("Patient", "p1")})
    );

    let device = json!({"resourceType": "Device", "id": "d1",
        "udiCarrier": [{"deviceIdentifier": "UDI-CANARY", "carrierHRF": "(01)CANARY", "entryType": "barcode"}],
        "serialNumber": "SN-CANARY", "lotNumber": "LOT-CANARY", "distinctIdentifier": "DI-CANARY",
        "deviceName": [{"name": "Canary pump", "type": "user-friendly-name"}],
        "url": "https://canary.example.org/device", "patient": {"reference": "Patient/p1"}});
    let out = deid().deidentify(&device).unwrap();
    assert_none_of(&out, &["CANARY", "Canary", "canary"]);
    assert!(out.get("udiCarrier").is_none());

    // A required attachment is masked, not left out: the resource stays valid.
    let doc = json!({"resourceType": "DocumentReference", "id": "doc", "status": "current",
        "subject": {"reference": "Patient/p1"},
        "description": "Canary's discharge letter",
        "content": [{"attachment": {"contentType": "text/plain", "data": "Q0FOQVJZ",
                                    "title": "Canary letter", "url": "https://canary.example.org/l"}}]});
    let out = deid().deidentify(&doc).unwrap();
    assert_none_of(&out, &["Canary", "canary", "Q0FOQVJZ"]);
    assert_eq!(
        out["content"][0]["attachment"]["extension"][0]["valueCode"],
        "masked"
    );
    Validator::new()
        .unwrap()
        .validate(ResourceType::parse("DocumentReference").unwrap(), &out)
        .unwrap();
}

#[test]
fn free_text_is_removed_and_unclassifiable_elements_do_not_pass() {
    let condition = json!({"resourceType": "Condition", "id": "c1",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Canary narrative</div>"},
        "contained": [{"resourceType": "Practitioner", "id": "x", "gender": "male"}],
        "note": [{"text": "Canary note", "authorString": "Canary author", "time": "2020-01-02"}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Canary display"}],
                 "text": "Canary code text"},
        "subject": {"reference": "Patient/p1"},
        "evidence": [{"detail": [{"reference": "#x"}]}],
        "extension": [{"url": "http://example.org/remark", "valueString": "Canary remark"},
                      {"url": "http://example.org/flag", "valueBoolean": true},
                      {"url": "http://example.org/nested", "extension": [
                          {"url": "inner", "valueMarkdown": "Canary markdown"}]}],
        "_recordedDate": {"extension": [{"url": "http://example.org/why", "valueString": "Canary why"}]},
        "unknownElement": "Canary unknown"});
    let out = deid().deidentify(&condition).unwrap();
    assert_none_of(
        &out,
        &[
            "Canary",
            "#x",
            "contained",
            "unknownElement",
            "remark",
            "nested",
        ],
    );
    assert_eq!(
        out["code"],
        json!({"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]})
    );
    assert_eq!(
        out["extension"],
        json!([{"url": "http://example.org/flag", "valueBoolean": true}])
    );
    let procedure = json!({"resourceType": "Procedure", "id": "pr", "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "statusReason": {"text": "Canary reason"},
        "followUp": [{"text": "Canary follow up"}],
        "focalDevice": [{"manipulated": {"reference": "Device/d1", "display": "Canary"}}]});
    let out = deid().deidentify(&procedure).unwrap();
    assert_none_of(&out, &["Canary"]);
    let observation = json!({"resourceType": "Observation", "id": "o", "status": "final",
        "code": {"text": "Canary only text"}, "comment": "Canary comment",
        "subject": {"reference": "Patient/p1"}, "valueString": "Canary value",
        "valueQuantity": {"value": 7, "unit": "Canary units"}});
    let out = deid().deidentify(&observation).unwrap();
    assert_none_of(&out, &["Canary"]);
    // `code` is required: masked, so a development environment can still import the resource.
    assert_eq!(out["code"]["extension"][0]["valueCode"], "masked");
    Validator::new()
        .unwrap()
        .validate(ResourceType::parse("Observation").unwrap(), &out)
        .unwrap();
}

#[test]
fn meta_keeps_codes_and_profiles_only() {
    let patient = json!({"resourceType": "Patient", "id": "p1", "meta": {
        "versionId": "3", "source": "https://canary.example.org/#abc",
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data"}],
        "tag": [{"system": "http://example.org/tags", "code": "t1", "display": "Canary tag"}]}});
    let out = deid().deidentify(&patient).unwrap();
    assert_none_of(&out, &["canary", "Canary"]);
    assert_eq!(
        out["meta"],
        json!({"versionId": "3",
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}],
        "tag": [{"system": "http://example.org/tags", "code": "t1"}]})
    );
}

#[test]
fn ids_and_references_share_one_keyed_pseudonym() {
    let d = deid();
    let p = d.pseudonym("Patient", "canaryPatient");
    assert_eq!(p, d.pseudonym("Patient", "canaryPatient"));
    assert_ne!(p, d.pseudonym("Practitioner", "canaryPatient"));
    assert!(crate::ResourceId::parse(&p).is_ok());
    let other = Deidentifier::new(&[1; 32], DeidOptions::safe_harbor(2026)).unwrap();
    assert_ne!(p, other.pseudonym("Patient", "canaryPatient"));

    let obs = json!({"resourceType": "Observation", "id": "canaryObs", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "https://ehr.example.org/fhir/Patient/canaryPatient/_history/2"},
        "encounter": {"reference": "Encounter/canaryEncounter", "type": "Encounter"},
        "performer": [{"reference": "Practitioner?identifier=canary"},
                      {"reference": "urn:uuid:0b9c2cd0-7c6d-4f3b-a0f8-6d2f0f6f1e11"}],
        "hasMember": [{"reference": "Observation/o2"}]});
    let out = d.deidentify(&obs).unwrap();
    assert_eq!(out["id"], d.pseudonym("Observation", "canaryObs"));
    assert_eq!(
        out["subject"]["reference"],
        format!("https://ehr.example.org/fhir/Patient/{p}")
    );
    assert_eq!(
        out["encounter"],
        json!({"reference": format!("Encounter/{}", d.pseudonym("Encounter", "canaryEncounter")), "type": "Encounter"})
    );
    assert_eq!(
        out["performer"],
        json!([{"reference": format!("urn:uuid:{}",
        d.pseudonym_of("urn:uuid:0b9c2cd0-7c6d-4f3b-a0f8-6d2f0f6f1e11"))}])
    );
    assert_none_of(&out, &["canary", "0b9c2cd0", "_history"]);
}

#[test]
fn bundles_are_walked_entry_by_entry() {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "identifier": {"value": "CANARY"},
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
             "resource": {"resourceType": "Patient", "name": [{"family": "Canary"}], "birthDate": "1970-01-02"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "https://ehr.example.org/fhir/Observation/o1",
             "resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                          "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
             "request": {"method": "PUT", "url": "Observation/o1"}},
            {"request": {"method": "GET", "url": "Patient?name=Canary"}}]});
    let d = deid();
    let out = d.deidentify(&bundle).unwrap();
    assert_none_of(&out, &["Canary", "CANARY", "1111", "1970-", "/o1"]);
    assert_eq!(
        out["entry"][0]["fullUrl"],
        out["entry"][1]["resource"]["subject"]["reference"]
    );
    assert_eq!(
        out["entry"][0]["request"],
        json!({"method": "POST", "url": "Patient"})
    );
    let o1 = d.pseudonym("Observation", "o1");
    assert_eq!(
        out["entry"][1]["request"]["url"],
        format!("Observation/{o1}")
    );
    // A conditional request's url (a search, with its values) is removed, never passed through.
    assert_eq!(out["entry"][2]["request"], json!({"method": "GET"}));
}

#[test]
fn date_shifting_moves_one_patients_dates_by_one_offset() {
    let d = Deidentifier::new(
        &SECRET,
        DeidOptions::safe_harbor(2026).with_dates(DateHandling::Shift { max_days: 365 }),
    )
    .unwrap();
    let days = |v: &str| {
        let (y, m, dd) = (
            v[..4].parse().unwrap(),
            v[5..7].parse().unwrap(),
            v[8..10].parse().unwrap(),
        );
        crate::search::date::days_from_civil(y, m, dd)
    };
    let patient = json!({"resourceType": "Patient", "id": "p1", "birthDate": "1984-07-12"});
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2020-02-29T10:00:00Z",
        "issued": "2020-03-01T11:00:00.000Z"});
    let p = d.deidentify(&patient).unwrap();
    let o = d.deidentify(&obs).unwrap();
    let shift = days(p["birthDate"].as_str().unwrap()) - days("1984-07-12");
    assert!(shift != 0 && shift.abs() <= 365, "{shift}");
    let effective = o["effectiveDateTime"].as_str().unwrap();
    assert_eq!(days(effective) - days("2020-02-29"), shift);
    assert!(effective.ends_with("T10:00:00Z"));
    assert_eq!(
        days(o["issued"].as_str().unwrap()) - days("2020-03-01"),
        shift
    );
    // Another patient: (almost surely) another offset; the same patient: always the same.
    let offsets: std::collections::BTreeSet<i64> = (0..20)
        .map(|i| {
            let r = json!({"resourceType": "Patient", "id": format!("q{i}"), "birthDate": "2000-01-01"});
            days(d.deidentify(&r).unwrap()["birthDate"].as_str().unwrap()) - days("2000-01-01")
        })
        .collect();
    assert!(offsets.len() > 10);
    assert!(offsets.iter().all(|o| *o != 0 && o.abs() <= 365));
    assert_eq!(d.deidentify(&patient).unwrap(), p);
    // The caller can name the patient: a Practitioner's dates follow it.
    let explicit = d
        .deidentify_for(
            &json!({"resourceType": "Encounter", "id": "e", "status": "finished",
            "class": {"code": "AMB"}, "period": {"start": "2020-02-29"}}),
            Some("p1"),
        )
        .unwrap();
    assert_eq!(
        days(explicit["period"]["start"].as_str().unwrap()) - days("2020-02-29"),
        shift
    );
}

#[test]
fn what_is_not_a_resource_is_refused() {
    assert_eq!(deid().deidentify(&json!([1])), Err(DeidError::NotAResource));
    assert_eq!(
        deid().deidentify(&json!({"resourceType": "User", "id": "u"})),
        Err(DeidError::NotAResource)
    );
}

#[test]
fn searches_that_would_be_an_oracle_are_refused() {
    use crate::search::parse_query;
    let q = |rtype: &str, query: &str| {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        parse_query(ResourceType::parse(rtype).unwrap(), &pairs, false).unwrap()
    };
    for refused in [
        ("Patient", "name=smith"),
        ("Patient", "family:exact=Smith"),
        ("Patient", "identifier=123-45-6789"),
        ("Patient", "phone=5550100"),
        ("Patient", "email=a@example.org"),
        ("Patient", "birthdate=1984-07-12"),
        ("Patient", "birthdate=ge1984-07"),
        ("Observation", "date=2020-02-03"),
        ("Observation", "code:text=weight"),
        ("Observation", "subject:identifier=urn:mrn|123"),
        (
            "Patient",
            "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|123",
        ),
        ("Patient", "address-city=springfield"),
        ("Patient", "gender=female&_sort=birthdate"),
    ] {
        assert!(
            super::search_refusal(&q(refused.0, refused.1)).is_some(),
            "{refused:?}"
        );
    }
    for allowed in [
        ("Patient", "gender=female"),
        ("Patient", "birthdate=1984"),
        ("Patient", "birthdate=ge1950&birthdate=lt1960"),
        (
            "Observation",
            "code=http://loinc.org|8867-4&date=2020&value-quantity=gt100",
        ),
        ("Observation", "subject=Patient/abc&_sort=_id"),
    ] {
        assert_eq!(
            super::search_refusal(&q(allowed.0, allowed.1)),
            None,
            "{allowed:?}"
        );
    }
}

#[test]
fn a_timestamp_reduces_to_the_start_of_its_year() {
    // 2025-11-02T10:11:12Z
    assert_eq!(
        super::year_start_us(1_762_078_272_000_000),
        1_735_689_600_000_000
    );
}
