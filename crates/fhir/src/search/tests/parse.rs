use super::*;
use crate::summary::Summary;

#[test]
fn defaults() {
    let q = query(ResourceType::PATIENT, &[]);
    assert!(q.clauses.is_empty());
    assert_eq!(q.count, DEFAULT_COUNT);
    assert!(q.sort.is_empty());
    assert!(!q.summary_count);
    assert_eq!(q.total, Total::None);
    assert!(q.include.is_empty() && q.revinclude.is_empty());
    assert!(q.elements.is_none() && q.page.is_none() && q.ignored.is_empty());
}

#[test]
fn unknown_parameters_and_lenient_mode() {
    let rt = ResourceType::PATIENT;
    for name in ["foo", "nope.family", "", "Name", "_pretty"] {
        assert!(
            matches!(error(rt, &[(name, "x")]), SearchError::Unknown { name: n, .. } if n == name),
            "{name}"
        );
    }
    // A parameter R4 defines that is left out is named, with why (it is not client input).
    let left_out = error(
        ResourceType::parse("MolecularSequence").unwrap(),
        &[("chromosome-variant-coordinate", "1$gt70$lt80")],
    );
    assert!(
        matches!(
            left_out,
            SearchError::Unsupported {
                param: "chromosome-variant-coordinate",
                ..
            }
        ),
        "{left_out:?}"
    );
    assert!(
        left_out
            .to_string()
            .contains("chromosome-variant-coordinate")
    );
    for name in ["_content", "_text", "phonetic"] {
        assert!(
            matches!(error(rt, &[(name, "x")]), SearchError::Unsupported { param, .. } if param == name),
            "{name}"
        );
    }
    assert_eq!(unknown_modifier(rt, &[("gender:foo", "x")]), Some("gender"));
    assert_eq!(unknown_modifier(rt, &[("_count:x", "1")]), Some("_count"));
    let list = pairs(&[
        ("foo", "1"),
        ("gender", "male"),
        ("name:fuzzy", "x"),
        ("_include:iterate", "Patient:x"),
        ("bar:baz", "2"),
    ]);
    let q = parse_query(rt, &list, true).expect("lenient");
    assert_eq!(
        q.ignored,
        ["foo", "name:fuzzy", "_include:iterate", "bar:baz"]
    );
    assert_eq!(q.clauses.len(), 1);
    assert_eq!(q.clauses[0].param.name, "gender");
    // Lenient mode does not forgive bad values.
    assert!(parse_query(rt, &pairs(&[("birthdate", "x")]), true).is_err());
}

#[test]
fn count_summary_total_page_format() {
    let rt = ResourceType::PATIENT;
    assert_eq!(query(rt, &[("_count", "5")]).count, 5);
    assert_eq!(query(rt, &[("_count", "0")]).count, 0);
    assert_eq!(query(rt, &[("_count", "1000")]).count, 1000);
    assert_eq!(query(rt, &[("_count", "1001")]).count, MAX_COUNT);
    assert_eq!(
        query(rt, &[("_count", "99999999999999999999999")]).count,
        MAX_COUNT
    );
    assert_eq!(query(rt, &[("_count", "007")]).count, 7);
    for bad in ["", "-1", "1.5", "abc", " 5", "1e3"] {
        assert_eq!(
            invalid_param(rt, &[("_count", bad)]),
            Some("_count"),
            "{bad}"
        );
    }
    assert_eq!(
        invalid(rt, &[("_count", "1"), ("_count", "2")]),
        Some(("_count", "repeated parameter"))
    );
    let q = query(rt, &[("_summary", "count")]);
    assert!(q.summary_count);
    assert_eq!(q.total, Total::Accurate);
    let q = query(rt, &[("_summary", "count"), ("_total", "estimate")]);
    assert_eq!(q.total, Total::Estimate);
    let q = query(rt, &[("_total", "none"), ("_summary", "count")]);
    assert_eq!(q.total, Total::Accurate);
    assert!(!query(rt, &[("_summary", "false")]).summary_count);
    for (value, summary) in [
        ("true", Summary::True),
        ("text", Summary::Text),
        ("data", Summary::Data),
        ("false", Summary::False),
    ] {
        let q = query(rt, &[("_summary", value)]);
        assert_eq!(
            (q.summary, q.summary_count),
            (Some(summary), false),
            "{value}"
        );
    }
    assert_eq!(invalid_param(rt, &[("_summary", "TRUE")]), Some("_summary"));
    // fhirpy's count(): `_count=0&_totalMethod=count`.
    let q = query(rt, &[("_count", "0"), ("_totalMethod", "count")]);
    assert_eq!((q.count, q.total), (0, Total::Accurate));
    assert_eq!(
        query(rt, &[("_totalMethod", "estimate")]).total,
        Total::Estimate
    );
    assert_eq!(invalid_param(rt, &[("_total", "count")]), Some("_total"));
    assert_eq!(query(rt, &[("_total", "accurate")]).total, Total::Accurate);
    assert_eq!(query(rt, &[("_total", "estimate")]).total, Total::Estimate);
    assert_eq!(invalid_param(rt, &[("_total", "all")]), Some("_total"));
    assert_eq!(
        query(rt, &[("_page", "opaque-Cursor_1")]).page.as_deref(),
        Some("opaque-Cursor_1")
    );
    let q = query(
        rt,
        &[("_format", "json"), ("_format", "xml"), ("_format:x", "y")],
    );
    assert!(q.ignored.is_empty() && q.clauses.is_empty());
}

#[test]
fn sort() {
    let rt = ResourceType::OBSERVATION;
    let q = query(rt, &[("_sort", "-date,_id,_lastUpdated")]);
    assert_eq!(
        q.sort,
        [
            SortKey {
                param: "date",
                descending: true
            },
            SortKey {
                param: "_id",
                descending: false
            },
            SortKey {
                param: "_lastUpdated",
                descending: false
            }
        ]
    );
    assert_eq!(
        query(ResourceType::PATIENT, &[("_sort", "birthdate")]).sort[0].param,
        "birthdate"
    );
    for bad in [
        "birthdate",
        "code",
        "",
        "-",
        "date,",
        "--date",
        "date,-date",
        "Date",
        "name",
    ] {
        assert_eq!(invalid_param(rt, &[("_sort", bad)]), Some("_sort"), "{bad}");
    }
    assert_eq!(
        unknown_modifier(rt, &[("_sort:desc", "date")]),
        Some("_sort")
    );
}

#[test]
fn includes() {
    let rt = ResourceType::OBSERVATION;
    let q = query(
        rt,
        &[
            ("_include", "Observation:subject:Patient"),
            ("_include", "Observation:patient"),
        ],
    );
    assert_eq!(q.include.len(), 2);
    assert_eq!(q.include[0].source, ResourceType::OBSERVATION);
    assert_eq!(q.include[0].param.name, "subject");
    assert_eq!(q.include[0].target, Some(ResourceType::PATIENT));
    assert_eq!(q.include[1].target, None);
    let all = query(rt, &[("_include", "Observation:*")]);
    let names: Vec<_> = all.include.iter().map(|i| i.param.name).collect();
    // Every reference parameter of an Observation (R4 has eleven), and nothing else.
    for name in ["subject", "patient", "encounter", "focus"] {
        assert!(names.contains(&name), "{name}: {names:?}");
    }
    assert!(
        all.include
            .iter()
            .all(|i| i.param.ptype == ParamType::Reference)
    );
    assert_eq!(names.len(), 11, "{names:?}");
    let rev = query(
        ResourceType::PATIENT,
        &[
            ("_revinclude", "Observation:subject"),
            ("_revinclude", "Condition:patient:Patient"),
            ("_revinclude", "Immunization:*"),
        ],
    );
    assert_eq!(rev.revinclude.len(), 3);
    assert_eq!(rev.revinclude[1].source, ResourceType::CONDITION);
    assert_eq!(rev.revinclude[2].param.name, "patient");
    let group_rev = query(
        ResourceType::parse("Group").expect("type"),
        &[("_revinclude", "Observation:*")],
    );
    let mut names: Vec<_> = group_rev.revinclude.iter().map(|i| i.param.name).collect();
    names.sort_unstable();
    // `focus` may point to any type.
    assert_eq!(names, ["focus", "subject"]);
    for (name, value) in [
        ("_include", "Patient:nonsense"),
        ("_include", "Condition:patient"),
        ("_include", "Observation:code"),
        ("_include", "Observation:subject:Practitioner"),
        ("_include", "Observation:patient:Group"),
        ("_include", "Observation"),
        ("_include", "Observation:subject:Patient:x"),
        ("_include", "Foo:bar"),
        ("_include", "*"),
        ("_revinclude", "Observation:subject"),
        ("_revinclude", "Observation:subject:Group"),
    ] {
        assert!(invalid(rt, &[(name, value)]).is_some(), "{name}={value}");
    }
    assert_eq!(
        invalid_param(
            ResourceType::PATIENT,
            &[("_revinclude", "Observation:subject:Group")]
        ),
        Some("_revinclude")
    );
}

#[test]
fn elements() {
    let rt = ResourceType::PATIENT;
    let q = query(rt, &[("_elements", "name,birthDate,name,value[x]")]);
    assert_eq!(
        q.elements,
        Some(vec![
            "name".to_owned(),
            "birthDate".to_owned(),
            "value".to_owned()
        ])
    );
    for bad in ["", "name,", "name.family", "na me", "1abc", "_id", "ñame"] {
        assert_eq!(
            invalid_param(rt, &[("_elements", bad)]),
            Some("_elements"),
            "{bad:?}"
        );
    }
}

#[test]
fn values_are_limited() {
    let rt = ResourceType::PATIENT;
    let many = vec!["a"; MAX_VALUES_PER_PARAMETER].join(",");
    assert_eq!(
        query(rt, &[("gender", &many)]).clauses[0].values.len(),
        MAX_VALUES_PER_PARAMETER
    );
    let too_many = vec!["a"; MAX_VALUES_PER_PARAMETER + 1].join(",");
    assert_eq!(
        invalid(rt, &[("gender", &too_many)]),
        Some(("gender", "too many values"))
    );
}

#[test]
fn misuse_fails_closed() {
    // A clause of another type's parameter matches nothing.
    let q = query(ResourceType::CONDITION, &[("patient", "p1")]);
    let obs = observation_with_subject("Patient/p1");
    assert!(!matches(ResourceType::OBSERVATION, &obs, &q.clauses[0]));
    // A value of another parameter type matches nothing and has no candidates.
    let date = query(ResourceType::PATIENT, &[("birthdate", "1984")]);
    let gender = query(ResourceType::PATIENT, &[("gender:not", "x")]);
    let mixed = Clause {
        param: gender.clauses[0].param,
        modifier: Some("not".to_owned()),
        values: date.clauses[0].values.clone(),
    };
    assert!(!matches(
        ResourceType::PATIENT,
        &patient_born("1984"),
        &mixed
    ));
    let mixed = Clause {
        modifier: None,
        ..mixed
    };
    assert_eq!(candidate_keys(&mixed, &mixed.values[0]), Some(Vec::new()));
    // An unknown modifier smuggled into a clause.
    let bogus = Clause {
        modifier: Some("bogus".to_owned()),
        ..gender.clauses[0].clone()
    };
    assert!(!matches(ResourceType::PATIENT, &json!({}), &bogus));
    assert_eq!(candidate_keys(&bogus, &bogus.values[0]), Some(Vec::new()));
}
