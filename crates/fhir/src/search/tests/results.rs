use super::*;

use crate::search::date::format_instant;
use crate::search::results::SUBSETTED_SYSTEM;

#[test]
fn a_reduced_parse_keeps_only_the_members_read_and_refuses_what_a_full_parse_refuses() {
    let rt = ResourceType::parse("Observation").unwrap();
    let q = query(rt, &[("code", "1234-5"), ("_sort", "-date")]);
    let keep = elements_read(rt, &q.clauses, &q.sort);
    assert!(keep.contains("code") && keep.contains("effectiveDateTime"));
    assert!(!keep.contains("valueQuantity"));
    let obs = json!({
        "resourceType": "Observation",
        "id": "o1",
        "code": {"coding": [{"code": "1234-5"}]},
        "valueQuantity": {"value": 5, "unit": CANARY},
        "effectiveDateTime": "2024-01-05",
    });
    let reduced = parse_members(obs.to_string().as_bytes(), &keep).unwrap();
    assert_eq!(
        reduced,
        json!({
            "resourceType": "Observation",
            "code": {"coding": [{"code": "1234-5"}]},
            "effectiveDateTime": "2024-01-05",
        })
    );
    for bad in [
        "[1]",
        "\"x\"",
        "{\"code\": 1",
        "{\"valueQuantity\": {\"value\": }}",
        "{} trailing",
    ] {
        assert!(parse_members(bad.as_bytes(), &keep).is_err(), "{bad}");
    }
}

#[test]
fn sort_values() {
    let rt = ResourceType::ENCOUNTER;
    let asc = SortKey {
        param: "date",
        descending: false,
    };
    let desc = SortKey {
        param: "date",
        descending: true,
    };
    let enc = |period: Value| json!({ "resourceType": "Encounter", "id": "e1", "period": period });
    let closed = enc(json!({ "start": "2024-03-01", "end": "2024-03-05" }));
    assert_eq!(
        sort_value(rt, &closed, &asc).as_deref(),
        Some("2024-03-01T00:00:00.000000Z")
    );
    assert_eq!(
        sort_value(rt, &closed, &desc).as_deref(),
        Some("2024-03-05T23:59:59.999999Z")
    );
    let open_end = enc(json!({ "start": "2024-03-01T10:00:00+02:00" }));
    assert_eq!(
        sort_value(rt, &open_end, &asc).as_deref(),
        Some("2024-03-01T08:00:00.000000Z")
    );
    assert_eq!(sort_value(rt, &open_end, &desc).as_deref(), Some("~"));
    let open_start = enc(json!({ "end": "2024" }));
    assert_eq!(sort_value(rt, &open_start, &asc).as_deref(), Some("-"));
    assert!(Some("-".to_owned()) < sort_value(rt, &closed, &asc));
    assert!(sort_value(rt, &closed, &desc) < Some("~".to_owned()));
    assert_eq!(sort_value(rt, &json!({}), &asc), None);
    let id = SortKey {
        param: "_id",
        descending: false,
    };
    assert_eq!(sort_value(rt, &closed, &id).as_deref(), Some("e1"));
    let p = json!({ "birthDate": "1984-07", "meta": { "lastUpdated": "2024-01-01T00:00:00Z" } });
    let birth = SortKey {
        param: "birthdate",
        descending: false,
    };
    assert_eq!(
        sort_value(ResourceType::PATIENT, &p, &birth).as_deref(),
        Some("1984-07-01T00:00:00.000000Z")
    );
    let updated = SortKey {
        param: "_lastUpdated",
        descending: true,
    };
    assert_eq!(
        sort_value(ResourceType::PATIENT, &p, &updated).as_deref(),
        Some("2024-01-01T00:00:00.999999Z")
    );
    // Comparable as strings.
    let earlier = json!({ "birthDate": "0999-12-31" });
    assert!(
        sort_value(ResourceType::PATIENT, &earlier, &birth)
            < sort_value(ResourceType::PATIENT, &p, &birth)
    );
    assert_eq!(format_instant(i64::MAX - 1), "9999-12-31T23:59:59.999999Z");
    assert_eq!(format_instant(i64::MIN + 1), "0001-01-01T00:00:00.000000Z");
    // A resource reduced to the members a sort reads sorts the same.
    for (rt, resource) in [
        (ResourceType::ENCOUNTER, &closed),
        (ResourceType::ENCOUNTER, &open_end),
        (ResourceType::ENCOUNTER, &open_start),
        (ResourceType::PATIENT, &p),
    ] {
        for key in [&asc, &desc, &id, &birth, &updated] {
            let keep = elements_read(rt, &[], std::slice::from_ref(key));
            let bytes = serde_json::to_vec(resource).unwrap();
            let reduced = parse_members(&bytes, &keep).unwrap();
            assert_eq!(sort_value(rt, &reduced, key), sort_value(rt, resource, key));
        }
    }
}

#[test]
fn apply_elements_keeps_requested_and_mandatory_and_tags() {
    let mut p = json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": { "versionId": "3", "tag": [{ "system": "urn:x", "code": "y" }] },
        "text": { "div": "<div>secret</div>" },
        "name": [{ "family": "Doe" }],
        "birthDate": "1984",
        "_birthDate": { "extension": [] },
        "gender": "female",
        "deceasedBoolean": false,
        "telecom": []
    });
    apply_elements(
        &mut p,
        &[
            "name".to_owned(),
            "birthDate".to_owned(),
            "deceased[x]".to_owned(),
        ],
    );
    let keys: BTreeSet<&str> = p
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "_birthDate",
            "birthDate",
            "deceasedBoolean",
            "id",
            "meta",
            "name",
            "resourceType"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(p["meta"]["versionId"], "3");
    assert_eq!(p["meta"]["tag"].as_array().map(Vec::len), Some(2));
    assert_eq!(p["meta"]["tag"][1]["code"], "SUBSETTED");
    assert_eq!(p["meta"]["tag"][1]["system"], SUBSETTED_SYSTEM);
    // Idempotent tag.
    apply_elements(&mut p, &["name".to_owned()]);
    assert_eq!(p["meta"]["tag"].as_array().map(Vec::len), Some(2));
    assert!(p.get("birthDate").is_none());
    // No meta: created.
    let mut bare = json!({ "resourceType": "Observation", "status": "final", "valueQuantity": {}, "valueSet": 1 });
    apply_elements(&mut bare, &["value".to_owned()]);
    assert_eq!(bare["meta"]["tag"][0]["code"], "SUBSETTED");
    assert!(bare.get("valueQuantity").is_some());
    assert!(bare.get("valueSet").is_some(), "over-inclusion is allowed");
    assert!(bare.get("status").is_none());
    let mut not_object = json!([1]);
    apply_elements(&mut not_object, &["x".to_owned()]);
    assert_eq!(not_object, json!([1]));
}
