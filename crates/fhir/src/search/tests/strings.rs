use super::*;

#[test]
fn string_prefix_case_and_accents() {
    let rt = ResourceType::PATIENT;
    let p = mueller();
    for (name, value, expected) in [
        ("family", "mul", true),
        ("family", "MÜL", true),
        ("family", "müller", true),
        ("family", "Muller", true),
        ("family", "mülle", true),
        ("family", "mullerx", false),
        ("family", "ller", false),
        ("family", "smi", true),
        ("family", "smith-j", true),
        ("family", "smith j", false),
        ("family", "jones", false),
        ("family", "vanderbilt-worthington", true),
        ("family", "VANDERBILT-WORTH", true),
        ("family", "vanderbilt-worthingtonx", false),
        ("family", "vanderbilt-wx", false),
        ("family", "anna", false),
        ("given", "anna", true),
        ("given", "maria   luisa", true),
        ("given", "maría l", true),
        ("given", "luisa", false),
        ("given", "mul", false),
        ("name", "anna", true),
        ("name", "mul", true),
        ("name", "dr", true),
        ("name", "jr", true),
        ("name", "dr. anna m", true),
        ("name", "luisa", false),
        ("name", "xyz,smi", true),
    ] {
        assert_eq!(hit(rt, &p, name, value), expected, "{name}={value}");
    }
}

#[test]
fn string_exact_and_contains() {
    let rt = ResourceType::PATIENT;
    let p = mueller();
    assert!(hit(rt, &p, "family:exact", "Müller"));
    assert!(!hit(rt, &p, "family:exact", "müller"));
    assert!(!hit(rt, &p, "family:exact", "MÜLLER"));
    assert!(!hit(rt, &p, "family:exact", "Muller"));
    assert!(!hit(rt, &p, "family:exact", "Mül"));
    assert!(hit(rt, &p, "family:exact", "Vanderbilt-Worthington"));
    assert!(!hit(rt, &p, "family:exact", "Vanderbilt-Worthingto"));
    let upper = json!({ "resourceType": "Patient", "name": [{ "family": "MÜLLER" }] });
    assert!(hit(rt, &upper, "family", "mul"));
    assert!(hit(rt, &upper, "family:exact", "MÜLLER"));
    assert!(!hit(rt, &upper, "family:exact", "Müller"));
    assert!(hit(rt, &p, "family:contains", "JONES"));
    assert!(hit(rt, &p, "family:contains", "ülle"));
    assert!(!hit(rt, &p, "family:contains", "jonesy"));
    assert_eq!(candidates(rt, "family:contains", "jones"), None);
    assert_eq!(
        candidates(rt, "family:exact", "Vanderbilt-Worthington"),
        Some(vec!["f:vanderbilt-worthington".to_owned()])
    );
    assert_eq!(
        candidates(rt, "family:exact", "Müller"),
        Some(vec!["p:muller".to_owned()])
    );
    assert_eq!(
        candidates(rt, "family", "Vanderbilt-Worthington"),
        Some(vec!["p:vanderbilt-w".to_owned()])
    );
    assert_eq!(
        unknown_modifier(rt, &[("family:below", "x")]),
        Some("family")
    );
    assert_eq!(
        invalid(rt, &[("family", " ")]),
        Some(("family", "empty value"))
    );
}

#[test]
fn string_index_keys() {
    let rt = ResourceType::PATIENT;
    let p = json!({ "resourceType": "Patient", "name": [{ "family": "Ab" }, { "family": "Vanderbilt-Worthington" }] });
    let keys = keys_of(rt, &p, "family");
    let expected: BTreeSet<String> = [
        "p:a",
        "p:ab",
        "p:v",
        "p:va",
        "p:van",
        "p:vand",
        "p:vande",
        "p:vander",
        "p:vanderb",
        "p:vanderbi",
        "p:vanderbil",
        "p:vanderbilt",
        "p:vanderbilt-",
        "p:vanderbilt-w",
        "f:vanderbilt-worthington",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        keys.iter()
            .filter(|k| k.starts_with("p:"))
            .all(|k| k.chars().count() <= 2 + MAX_STRING_PREFIX)
    );
}

#[test]
fn organization_and_practitioner_names() {
    let rt = ResourceType::ORGANIZATION;
    let org = json!({ "resourceType": "Organization", "name": "Hôpital Saint-Éloi", "alias": ["HSE", "Saint Eloi"], "identifier": [{ "system": "urn:siret", "value": "123" }] });
    assert!(hit(rt, &org, "name", "hopital s"));
    assert!(hit(rt, &org, "name", "hse"));
    assert!(hit(rt, &org, "name", "saint e"));
    assert!(!hit(rt, &org, "name", "eloi"));
    assert!(hit(rt, &org, "identifier", "urn:siret|123"));
    let rt = ResourceType::PRACTITIONER;
    let doc = json!({ "resourceType": "Practitioner", "name": [{ "family": "House", "given": ["Gregory"] }] });
    assert!(hit(rt, &doc, "name", "greg"));
    assert!(hit(rt, &doc, "name", "hou"));
    assert!(!hit(rt, &doc, "name", "wilson"));
    // R4's `family` covers a Practitioner's name too.
    assert!(hit(rt, &doc, "family", "hou"));
    assert!(!hit(rt, &doc, "family", "greg"));
}
