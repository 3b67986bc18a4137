//! Tests of searches end to end (parse, index keys, candidate keys, matching), by parameter type.
//! Every matching test also checks that the index has no false negative ([`assert_sound`]).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;
use crate::ResourceType;

mod chains;
mod composites;
mod dates;
mod errors;
mod index;
mod near;
mod parse;
mod quantities;
mod random;
mod references;
mod results;
mod strings;
mod tokens;

const CANARY: &str = "CANARY-9Q";

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn query(rtype: ResourceType, list: &[(&str, &str)]) -> Query {
    match parse_query(rtype, &pairs(list), false) {
        Ok(q) => q,
        Err(e) => panic!("{list:?} does not parse: {e}"),
    }
}

fn error(rtype: ResourceType, list: &[(&str, &str)]) -> SearchError {
    match parse_query(rtype, &pairs(list), false) {
        Ok(q) => panic!("{list:?} parsed: {q:?}"),
        Err(e) => e,
    }
}

/// The parameter and reason of the [`SearchError::Invalid`] that parsing `list` fails with
/// (`None` for another error).
fn invalid(rtype: ResourceType, list: &[(&str, &str)]) -> Option<(&'static str, &'static str)> {
    match error(rtype, list) {
        SearchError::Invalid { param, reason } => Some((param, reason)),
        _ => None,
    }
}

/// The parameter of the [`SearchError::Invalid`] that parsing `list` fails with.
fn invalid_param(rtype: ResourceType, list: &[(&str, &str)]) -> Option<&'static str> {
    invalid(rtype, list).map(|(param, _)| param)
}

/// The parameter of the [`SearchError::UnknownModifier`] that parsing `list` fails with.
fn unknown_modifier(rtype: ResourceType, list: &[(&str, &str)]) -> Option<&'static str> {
    match error(rtype, list) {
        SearchError::UnknownModifier { param } => Some(param),
        _ => None,
    }
}

/// Whether `resource` matches every clause of the query, checking on the way that the
/// index never produces a false negative for any value.
/// Also checks that the resource reduced to the query's [`elements_read`] gets the same
/// answer.
fn hits(rtype: ResourceType, resource: &Value, list: &[(&str, &str)]) -> bool {
    let q = query(rtype, list);
    let reduced = reduced(rtype, resource, &q);
    q.clauses.iter().all(|clause| {
        assert_sound(rtype, resource, clause);
        let full = matches(rtype, resource, clause);
        assert_eq!(
            full,
            matches(rtype, &reduced, clause),
            "{list:?} on {resource} reduced to {reduced}"
        );
        full
    })
}

/// `resource` as a search reads it for `q`: serialized, then parsed with only the members
/// the query reads.
fn reduced(rtype: ResourceType, resource: &Value, q: &Query) -> Value {
    let keep = elements_read(rtype, &q.clauses, &q.sort);
    let bytes = serde_json::to_vec(resource).unwrap();
    if resource.is_object() {
        parse_members(&bytes, &keep).unwrap()
    } else {
        assert!(parse_members(&bytes, &keep).is_err());
        resource.clone()
    }
}

fn hit(rtype: ResourceType, resource: &Value, name: &str, value: &str) -> bool {
    hits(rtype, resource, &[(name, value)])
}

/// The no-false-negative property: whenever a value matches, one of its candidate keys is
/// among the resource's index keys for the parameter (or candidates are `None`). Returns
/// whether some value matched.
fn assert_sound(rtype: ResourceType, resource: &Value, clause: &Clause) -> bool {
    let keys: BTreeSet<String> = index_keys(rtype, resource)
        .into_iter()
        .filter(|(name, _)| *name == clause.param.stored_as)
        .map(|(_, key)| key)
        .collect();
    let mut any = false;
    for value in &clause.values {
        let single = Clause {
            param: clause.param,
            modifier: clause.modifier.clone(),
            values: vec![value.clone()],
        };
        if !matches(rtype, resource, &single) {
            continue;
        }
        any = true;
        if let Some(ids) = id_candidates(&single) {
            let id = resource
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(ids.iter().any(|c| c == id), "false negative: _id {ids:?}");
        }
        if let Some(candidates) = candidate_keys(&single, value) {
            assert!(
                candidates.iter().any(|c| keys.contains(c)),
                "false negative: {} {:?} on {resource}: candidates {candidates:?}, keys {keys:?}",
                clause.param.name,
                clause.modifier,
            );
        }
    }
    if clause.modifier.as_deref() != Some("not") {
        assert_eq!(any, matches(rtype, resource, clause), "OR of values");
    }
    any
}

/// The index keys a parameter is answered from: its own, or its host's (`ParamDef::stored_as`).
fn keys_of(rtype: ResourceType, resource: &Value, name: &str) -> Vec<String> {
    let stored_as = param(rtype, name).map_or(name, |def| def.stored_as);
    index_keys(rtype, resource)
        .into_iter()
        .filter(|(n, _)| *n == stored_as)
        .map(|(_, k)| k)
        .collect()
}

fn candidates(rtype: ResourceType, name: &str, value: &str) -> Option<Vec<String>> {
    let q = query(rtype, &[(name, value)]);
    let clause = &q.clauses[0];
    candidate_keys(clause, &clause.values[0])
}

fn heart_rate() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {
            "coding": [
                { "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" },
                { "code": "HR" },
                { "system": "http://acme.org/codes" }
            ],
            "text": "Pulse"
        },
        "category": [
            { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] },
            { "coding": [{ "system": "http://acme.org/cat", "code": "a,b|c" }] }
        ],
        "subject": { "reference": "Patient/p1" },
        "effectiveDateTime": "2024-03-03T10:30:00+01:00",
        "valueQuantity": { "value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" }
    })
}

fn observation_with_subject(reference: &str) -> Value {
    json!({ "resourceType": "Observation", "subject": { "reference": reference } })
}

fn mueller() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "name": [
            { "family": "Müller", "given": ["Anna", "Maria Luisa"], "prefix": ["Dr."], "text": "Dr. Anna Müller" },
            { "family": "Smith-Jones", "suffix": ["Jr."] },
            { "family": "Vanderbilt-Worthington" }
        ]
    })
}

fn patient_born(date: &str) -> Value {
    json!({ "resourceType": "Patient", "birthDate": date })
}

fn observation_value(quantity: Value) -> Value {
    json!({ "resourceType": "Observation", "valueQuantity": quantity })
}

fn mg(value: Value) -> Value {
    observation_value(
        json!({ "value": value, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg" }),
    )
}
