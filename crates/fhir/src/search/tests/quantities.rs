use super::*;

#[test]
fn quantity_precision_and_prefixes() {
    let rt = ResourceType::OBSERVATION;
    for (value, query_value, expected) in [
        (json!(5.4), "5.4", true),
        (json!(5.35), "5.4", true),
        (json!(5.449), "5.4", true),
        (json!(5.45), "5.4", false),
        (json!(5.349), "5.4", false),
        (json!(5.4), "5.40", true),
        (json!(5.404), "5.40", true),
        (json!(5.41), "5.40", false),
        (json!(99.5), "100", true),
        (json!(100.5), "100", false),
        (json!(140), "1e2", true),
        (json!(150), "1e2", false),
        (json!(100), "ne100", false),
        (json!(100.5), "ne100", true),
        (json!(100.1), "gt100", true),
        (json!(100), "gt100", false),
        (json!(100), "ge100", true),
        (json!(99.99), "ge100", false),
        (json!(99.99), "lt100", true),
        (json!(100), "lt100", false),
        (json!(100), "le100", true),
        (json!(100.01), "le100", false),
        (json!(100.5), "sa100", true),
        (json!(100.49), "sa100", false),
        (json!(99.49), "eb100", true),
        (json!(99.5), "eb100", false),
        (json!(110), "ap100", true),
        (json!(90), "ap100", true),
        (json!(110.5), "ap100", false),
        (json!(-5.4), "-5.4", true),
        (json!(-5.449), "-5.4", true),
        (json!(-5.45), "-5.4", true),
        (json!(-5.35), "-5.4", false),
        (json!(-1), "lt0", true),
        (json!(0), "0", true),
        (json!(0.4), "0", true),
        (json!(0.5), "0", false),
        (json!(72), "72", true),
        (json!(1e21), "1e21", true),
        (json!(7), "1,7", true),
    ] {
        assert_eq!(
            hit(rt, &mg(value.clone()), "value-quantity", query_value),
            expected,
            "{value} vs {query_value}"
        );
    }
}

#[test]
fn quantity_units() {
    let rt = ResourceType::OBSERVATION;
    let obs = mg(json!(5.4));
    for (query_value, expected) in [
        ("5.4|http://unitsofmeasure.org|mg", true),
        ("5.4||mg", true),
        ("5.4||milligram", true),
        ("5.4||g", false),
        ("5.4|http://other.org|mg", false),
        ("5.4|http://unitsofmeasure.org|milligram", false),
        ("gt5|http://unitsofmeasure.org|mg", true),
        ("5.4||", true),
    ] {
        assert_eq!(
            hit(rt, &obs, "value-quantity", query_value),
            expected,
            "{query_value}"
        );
    }
    assert_eq!(
        keys_of(rt, &obs, "value-quantity"),
        ["u:*", "u:|mg", "u:|milligram"]
    );
    assert_eq!(
        candidates(rt, "value-quantity", "5.4||mg"),
        Some(vec!["u:|mg".to_owned()])
    );
    // With a system, the code's rows are the candidates; the system is checked on each.
    assert_eq!(
        candidates(rt, "value-quantity", "5.4|http://unitsofmeasure.org|mg"),
        Some(vec!["u:|mg".to_owned()])
    );
    assert!(!hit(rt, &obs, "value-quantity", "5.4|urn:other|mg"));
    assert_eq!(
        candidates(rt, "value-quantity", "ne5.4"),
        Some(vec!["u:*".to_owned()])
    );
    let no_value = observation_value(json!({ "unit": "mg" }));
    assert!(keys_of(rt, &no_value, "value-quantity").is_empty());
    assert!(!hit(rt, &no_value, "value-quantity", "ne5"));
    let sampled = json!({ "resourceType": "Observation", "valueSampledData": { "data": "1 2 3" } });
    assert!(!hit(rt, &sampled, "value-quantity", "ne5"));
    for bad in [
        "5.4|mg",
        "5.4|http://unitsofmeasure.org|",
        "abc",
        "xx5",
        "5.4|a|b|c",
        "5.4mg",
    ] {
        assert_eq!(
            invalid_param(rt, &[("value-quantity", bad)]),
            Some("value-quantity"),
            "{bad}"
        );
    }
}

#[test]
fn quantity_index_has_no_false_negatives() {
    let rt = ResourceType::OBSERVATION;
    let stored = [
        mg(json!(5.4)),
        mg(json!(-0.001)),
        mg(json!(0)),
        mg(json!(1e21)),
        mg(json!(123_456)),
        observation_value(json!({ "value": 7, "unit": "mmol/L" })),
        observation_value(json!({ "value": 7, "system": "http://s", "code": "c" })),
        observation_value(json!({ "value": 7 })),
    ];
    let units = [
        "",
        "|http://unitsofmeasure.org|mg",
        "||mg",
        "||milligram",
        "||mmol/L",
        "|http://s|c",
        "||c",
    ];
    let numbers = ["5.4", "5", "0", "-0.001", "7", "1e21", "123456", "1.2e5"];
    let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let mut matched = 0;
    for obs in &stored {
        for prefix in prefixes {
            for number in numbers {
                for unit in units {
                    let q = query(
                        rt,
                        &[("value-quantity", &format!("{prefix}{number}{unit}"))],
                    );
                    if assert_sound(rt, obs, &q.clauses[0]) {
                        matched += 1;
                    }
                }
            }
        }
    }
    assert!(matched > 300, "{matched}");
}

#[test]
fn a_range_matches_as_r4_says_for_ranges() {
    // Condition.onset[x] may be an Age or a Range: onset between 40 and 50 years.
    let condition = ResourceType::parse("Condition").expect("type");
    let years = |v: i64| json!({"value": v, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"});
    let onset = |range: Value| {
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
               "onsetRange": range})
    };
    let forties = onset(json!({"low": years(40), "high": years(50)}));
    let from_sixty = onset(json!({"low": years(60)}));
    let age = json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                     "onsetAge": years(45)});
    for (resource, value, expected) in [
        (&forties, "45", false),
        (
            &onset(json!({"low": years(41), "high": years(44)})),
            "4e1",
            true,
        ),
        (
            &onset(json!({"low": years(41), "high": years(44)})),
            "42",
            false,
        ),
        (&forties, "gt45", true),
        (&forties, "gt50", false),
        (&forties, "ge50", true),
        (&forties, "lt40", false),
        (&forties, "le40", true),
        (&forties, "sa39", true),
        (&forties, "sa40", false),
        (&forties, "eb51", true),
        (&forties, "eb50", false),
        (&forties, "ne45", true),
        (&forties, "ap55", true),
        (&forties, "ap70", false),
        (&forties, "gt45|http://unitsofmeasure.org|a", true),
        (&forties, "gt45|http://unitsofmeasure.org|mo", false),
        (&from_sixty, "gt1000", true),
        (&from_sixty, "lt60", false),
        (&from_sixty, "eb1000", false),
        (&from_sixty, "sa59", true),
        (&age, "45", true),
        (&age, "gt45", false),
    ] {
        assert_eq!(
            hit(condition, resource, "onset-age", value),
            expected,
            "{value} on {resource}"
        );
    }
    assert!(hit(condition, &from_sixty, "onset-age:missing", "false"));
    assert!(hit(
        condition,
        &onset(json!({})),
        "onset-age:missing",
        "true"
    ));

    // A number parameter whose values may be decimals or Ranges.
    let risk = ResourceType::parse("RiskAssessment").expect("type");
    let assessment = json!({"resourceType": "RiskAssessment", "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.7}, {"probabilityRange": {"low": {"value": 0.1}, "high": {"value": 0.2}}}]});
    for (value, expected) in [
        ("0.7", true),
        ("gt0.5", true),
        ("lt0.15", true),
        ("0.4", false),
        ("gt0.9", false),
    ] {
        assert_eq!(
            hit(risk, &assessment, "probability", value),
            expected,
            "{value}"
        );
    }
}
