//! Chaining and `_has`: parsing, errors that name the parameter and never a value, lenient mode,
//! and the clauses the server replaces them with.

use super::*;
use crate::ResourceId;

const OBS: ResourceType = ResourceType::OBSERVATION;
const PAT: ResourceType = ResourceType::PATIENT;

fn id(s: &str) -> ResourceId {
    ResourceId::parse(s).unwrap()
}

#[test]
fn chains_parse_into_target_parameter_and_inner_clause() {
    for (name, target, outer, inner, modifier) in [
        ("subject:Patient.name", "Patient", "subject", "name", None),
        // Without a type: the one target of `subject` that has `family` (a Location has a
        // `name` too: `subject.name` is ambiguous).
        ("subject.family", "Patient", "subject", "family", None),
        (
            "patient.identifier",
            "Patient",
            "patient",
            "identifier",
            None,
        ),
        (
            "patient.name:exact",
            "Patient",
            "patient",
            "name",
            Some("exact"),
        ),
        (
            "subject:Patient.birthdate",
            "Patient",
            "subject",
            "birthdate",
            None,
        ),
    ] {
        let value = if inner == "birthdate" {
            "1980"
        } else {
            "smith"
        };
        let q = query(OBS, &[(name, value), ("code", "1234-5")]);
        assert_eq!(q.clauses.len(), 1, "{name}");
        assert_eq!(q.chains.len(), 1, "{name}");
        let chain = &q.chains[0];
        assert_eq!(chain.param.name, outer);
        assert_eq!(chain.target.as_str(), target);
        assert_eq!(chain.inner.param.name, inner);
        assert_eq!(chain.inner.modifier.as_deref(), modifier);
        assert_eq!(q.condition_count(), 2);
        assert_eq!(q.all_clauses().count(), 2);
    }
    let q = query(ResourceType::ENCOUNTER, &[("patient.family", "x,y")]);
    assert_eq!(q.chains[0].inner.values.len(), 2);
    // The inner value is parsed as the inner parameter's type.
    assert_eq!(
        invalid(OBS, &[("subject:Patient.birthdate", "2024-13-99")]),
        Some(("birthdate", "invalid date"))
    );
}

#[test]
fn has_parses_into_source_reference_and_inner_clause() {
    let q = query(PAT, &[("_has:Observation:patient:code", "1234-5")]);
    assert!(q.clauses.is_empty());
    let has = &q.has[0];
    assert_eq!(has.source, OBS);
    assert_eq!(has.param.name, "patient");
    assert_eq!(has.inner.param.name, "code");
    let q = query(
        PAT,
        &[
            ("_has:Observation:subject:code:not", "x"),
            ("_has:Encounter:patient:status", "finished"),
        ],
    );
    assert_eq!(q.has.len(), 2);
    assert_eq!(q.has[0].inner.modifier.as_deref(), Some("not"));
    assert_eq!(q.condition_count(), 2);
}

#[test]
fn chain_and_has_errors_name_the_parameter_never_the_value() {
    let cases: [(ResourceType, &str, &str); 13] = [
        (
            OBS,
            "code.name",
            "only a reference parameter can be chained",
        ),
        (
            OBS,
            "subject.organization.name",
            "one level of chaining is supported",
        ),
        (
            OBS,
            "subject._has:Observation:patient:code",
            "one level of chaining is supported",
        ),
        (
            OBS,
            "subject._count",
            "a chain ends in a search parameter of the target type",
        ),
        (
            OBS,
            "subject.",
            "a chain ends in a search parameter of the target type",
        ),
        (
            OBS,
            "subject.nope",
            "the chained parameter is not a search parameter of the target type",
        ),
        (
            OBS,
            "subject:Patient.nope",
            "the chained parameter is not a search parameter of the target type",
        ),
        // `_id` is a parameter of every target of `subject`.
        (
            OBS,
            "subject._id",
            "the chain is ambiguous: name the target type (parameter:Type.name)",
        ),
        (
            PAT,
            "_has:Observation:patient:_has:Observation:patient:code",
            "one level of chaining is supported",
        ),
        (
            PAT,
            "_has:Observation:patient",
            "expected _has:Type:reference:parameter",
        ),
        (PAT, "_has:Nope:patient:code", "unknown resource type"),
        (
            PAT,
            "_has:Observation:code:code",
            "not a reference parameter of the source type",
        ),
        (
            ResourceType::PRACTITIONER,
            "_has:Observation:patient:code",
            "the reference parameter cannot point to the searched type",
        ),
    ];
    for (rtype, name, reason) in cases {
        let e = error(rtype, &[(name, "CANARY-9Q")]);
        let text = format!("{e} {e:?}");
        assert!(!text.contains(CANARY), "{name}: {text}");
        let SearchError::Invalid { param, reason: got } = e else {
            panic!("{name}: {e:?}");
        };
        assert_eq!(got, reason, "{name}");
        let expected = if name.starts_with("_has") {
            "_has"
        } else {
            name.split(['.', ':']).next().unwrap()
        };
        assert_eq!(param, expected, "{name}");
    }
    assert_eq!(
        invalid(PAT, &[("_has:Observation:patient:nope", "x")]),
        Some(("_has", "not a search parameter of the source type"))
    );
    assert!(matches!(
        error(OBS, &[("nope.name", "x")]),
        SearchError::Unknown { .. }
    ));
    assert_eq!(
        unknown_modifier(OBS, &[("subject:Organization.name", "x")]),
        Some("subject")
    );
    assert_eq!(
        unknown_modifier(OBS, &[("subject.family:not", "x")]),
        Some("family")
    );
    assert_eq!(
        unknown_modifier(PAT, &[("_has:Observation:patient:code:exact", "x")]),
        Some("code")
    );
}

#[test]
fn lenient_mode_ignores_unknown_chains_but_not_malformed_ones() {
    let list = pairs(&[
        ("nope.name", "x"),
        ("subject.nope", "x"),
        ("subject:Organization.name", "x"),
        ("_has:Nope:patient:code", "x"),
        ("code", "1234-5"),
    ]);
    let q = parse_query(OBS, &list, true).expect("lenient");
    assert_eq!(q.clauses.len(), 1);
    assert!(q.chains.is_empty());
    assert_eq!(q.ignored.len(), 4);
    for malformed in ["subject.organization.name", "code.name", "subject._id"] {
        assert!(
            parse_query(OBS, &pairs(&[(malformed, "x")]), true).is_err(),
            "{malformed}"
        );
    }
    let q = parse_query(PAT, &pairs(&[("_has:Observation:patient:nope", "x")]), true).unwrap();
    assert!(q.has.is_empty());
    assert_eq!(q.ignored.len(), 1);
}

#[test]
fn replacement_clauses_match_what_the_inner_search_found() {
    let subject = param(OBS, "subject").unwrap();
    let clause = Clause::references(subject, PAT, [id("p1"), id("p7")]);
    let on = |reference: &str| matches(OBS, &observation_with_subject(reference), &clause);
    assert!(on("Patient/p1"));
    assert!(on("https://example.org/fhir/Patient/p7/_history/2"));
    assert!(!on("Group/p1"));
    assert!(!on("Patient/p2"));
    for value in &clause.values {
        let keys = candidate_keys(&clause, value).unwrap();
        assert!(keys.iter().all(|k| k.starts_with("r:Patient/")), "{keys:?}");
    }
    let none = Clause::references(subject, PAT, []);
    assert!(!matches(
        OBS,
        &observation_with_subject("Patient/p1"),
        &none
    ));

    let ids = Clause::ids(PAT, [id("p1"), id("p3")]).unwrap();
    assert_eq!(
        id_candidates(&ids),
        Some(vec!["p1".to_owned(), "p3".to_owned()])
    );
    assert!(matches(
        PAT,
        &json!({ "resourceType": "Patient", "id": "p3" }),
        &ids
    ));
    assert!(!matches(
        PAT,
        &json!({ "resourceType": "Patient", "id": "p2" }),
        &ids
    ));
}

#[test]
fn a_chained_name_search_is_refused_to_deidentified_callers() {
    for list in [
        [("subject:Patient.name", "smith")],
        [("_has:Observation:patient:code:text", "glucose")],
    ] {
        let rtype = if list[0].0.starts_with("_has") {
            PAT
        } else {
            OBS
        };
        assert!(
            crate::deid::search_refusal(&query(rtype, &list)).is_some(),
            "{list:?}"
        );
    }
    assert!(
        crate::deid::search_refusal(&query(PAT, &[("_has:Observation:patient:code", "1234-5")]))
            .is_none()
    );
}
