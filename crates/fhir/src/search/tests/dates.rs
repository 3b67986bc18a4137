use serde_json::Map;

use super::*;

#[test]
fn birthdate_prefixes() {
    let rt = ResourceType::PATIENT;
    let p = patient_born("1984-07-12");
    for (value, expected) in [
        ("1984", true),
        ("1984-07", true),
        ("1984-07-12", true),
        ("eq1984-07-12", true),
        ("1984-07-13", false),
        ("1984-07-12T10:00", false),
        ("1985", false),
        ("ne1984", false),
        ("ne1985", true),
        ("ge1984-07", true),
        ("ge1984-07-12", true),
        ("ge1984-07-13", false),
        ("gt1984-07-11", true),
        ("gt1984-07", false),
        ("gt1984-07-12", false),
        ("le1984-07-12", true),
        ("le1984-07-11", false),
        ("le1984", true),
        ("lt1984-07-12", false),
        ("lt1984-07-13", true),
        ("lt1984-07", false),
        ("sa1984-07-11", true),
        ("sa1984-07-12", false),
        ("sa1984-06", true),
        ("eb1984-07-13", true),
        ("eb1984-07-12", false),
        ("eb1985", true),
        ("ap1984-07-12T23:59:59Z", true),
        ("ap1984-07-13", false),
        ("ap1984", true),
        ("1990,1984", true),
    ] {
        assert_eq!(
            hit(rt, &p, "birthdate", value),
            expected,
            "birthdate={value}"
        );
    }
    // A partial birth date is a range too.
    let year_only = patient_born("1984");
    assert!(hit(rt, &year_only, "birthdate", "1984"));
    assert!(!hit(rt, &year_only, "birthdate", "1984-07"));
    assert!(hit(rt, &year_only, "birthdate", "ap1984-07"));
    assert!(hit(rt, &year_only, "birthdate", "ge1984-07"));
    assert!(hit(rt, &year_only, "birthdate", "le1984-07"));
    assert!(hit(rt, &year_only, "birthdate", "ne1984-07"));
    assert!(hit(rt, &year_only, "birthdate", "sa1983-12-31"));
    assert!(!hit(rt, &year_only, "birthdate", "sa1984-01-01"));
}

#[test]
fn date_and_repeated_parameters() {
    let rt = ResourceType::PATIENT;
    let p = patient_born("1984-07-12");
    assert!(hits(
        rt,
        &p,
        &[("birthdate", "ge1984-01"), ("birthdate", "lt1985")]
    ));
    assert!(!hits(
        rt,
        &p,
        &[("birthdate", "ge1984-01"), ("birthdate", "lt1984-07")]
    ));
    assert!(hits(
        rt,
        &p,
        &[("birthdate", "1984"), ("gender:missing", "true")]
    ));
    assert!(!hits(rt, &p, &[("birthdate", "1984"), ("gender", "male")]));
}

#[test]
fn date_times_with_zones() {
    let rt = ResourceType::OBSERVATION;
    // 2024-03-03T10:30:00+01:00 is 09:30 UTC.
    let obs = heart_rate();
    for (value, expected) in [
        ("2024-03-03", true),
        ("2024-03-03T09:30:00Z", true),
        ("2024-03-03T09:30Z", true),
        ("2024-03-03T10:30:00+01:00", true),
        ("2024-03-03T10:30:00Z", false),
        ("gt2024-03-03T09:29:59Z", true),
        ("lt2024-03-03T09:30:01Z", true),
        ("lt2024-03-03T09:30:00Z", false),
    ] {
        assert_eq!(hit(rt, &obs, "date", value), expected, "date={value}");
    }
    // Late evening in New York is the next UTC day.
    let late =
        json!({ "resourceType": "Observation", "effectiveDateTime": "2024-03-03T23:30:00-05:00" });
    assert!(hit(rt, &late, "date", "2024-03-04"));
    assert!(!hit(rt, &late, "date", "2024-03-03"));
}

#[test]
fn periods() {
    let rt = ResourceType::ENCOUNTER;
    let period = |start: Option<&str>, end: Option<&str>| {
        let mut p = Map::new();
        if let Some(s) = start {
            p.insert("start".into(), json!(s));
        }
        if let Some(e) = end {
            p.insert("end".into(), json!(e));
        }
        json!({ "resourceType": "Encounter", "period": p })
    };
    let short = period(Some("2024-03-01"), Some("2024-03-05"));
    let open_end = period(Some("2024-03-01T08:00:00Z"), None);
    let open_start = period(None, Some("2024-03-05"));
    for (encounter, value, expected) in [
        (&short, "2024-03", true),
        (&short, "2024", true),
        (&short, "2024-03-03", false),
        (&short, "ap2024-03-03", true),
        (&short, "ap2024-03-06", false),
        (&short, "ge2024-03-03", true),
        (&short, "ge2024-03-06", false),
        (&short, "gt2024-03-04", true),
        (&short, "gt2024-03-05", false),
        (&short, "le2024-03-01", false),
        (&short, "le2024-03-02", true),
        (&short, "le2024-03-05", true),
        (&short, "lt2024-03-02", true),
        (&short, "lt2024-03-01", false),
        (&short, "sa2024-02-29", true),
        (&short, "sa2024-03-01", false),
        (&short, "eb2024-03-06", true),
        (&short, "eb2024-03-05", false),
        (&short, "ne2024-03-03", true),
        (&short, "ne2024-03", false),
        (&open_end, "2024", false),
        (&open_end, "ge2024", true),
        (&open_end, "gt2999", true),
        (&open_end, "gt9999", true),
        (&open_end, "ap2150", true),
        (&open_end, "ap2024-02", false),
        (&open_end, "lt2024-03-01T08:00:01Z", true),
        (&open_end, "lt2024-03-01T08:00:00Z", false),
        (&open_end, "sa2024-02", true),
        (&open_end, "eb2999", false),
        (&open_end, "ne2024", true),
        (&open_start, "2024", false),
        (&open_start, "le2024", true),
        (&open_start, "lt1000", true),
        (&open_start, "lt0001", true),
        (&open_start, "ap1500", true),
        (&open_start, "gt2024-03-04", true),
        (&open_start, "gt2024-03-05", false),
        (&open_start, "sa1000", false),
        (&open_start, "eb2024-03-06", true),
    ] {
        assert_eq!(
            hit(rt, encounter, "date", value),
            expected,
            "date={value} on {encounter}"
        );
    }
    // A period with neither start nor end, or an unparseable bound, has no value.
    for empty in [period(None, None), period(Some("garbage"), Some("2024"))] {
        assert!(keys_of(rt, &empty, "date").is_empty());
        assert!(hit(rt, &empty, "date:missing", "true"));
        assert!(!hit(rt, &empty, "date", "ne2024"));
    }
}

#[test]
fn date_index_keys() {
    let rt = ResourceType::ENCOUNTER;
    let keys = |period: Value| {
        keys_of(
            rt,
            &json!({ "resourceType": "Encounter", "period": period }),
            "date",
        )
    };
    assert_eq!(
        keys(json!({ "start": "2024-02-28", "end": "2024-03-01" })),
        [
            "d:2024-02-28",
            "d:2024-02-29",
            "d:2024-03-01",
            "m:2024-02",
            "m:2024-03",
            "y:2024"
        ]
    );
    assert_eq!(
        keys(json!({ "start": "2024-03-01T08:00:00Z" })),
        ["y:+", "y:2024"]
    );
    assert_eq!(keys(json!({ "end": "2024-03-01" })), ["y:-", "y:2024"]);
    assert_eq!(keys(json!({ "start": "1500", "end": "1600" })), ["y:-"]);
    assert_eq!(keys(json!({ "start": "2300-01-01" })), ["y:+"]);
    // 63 days: months and years only.
    let medium = keys(json!({ "start": "2023-12-01", "end": "2024-02-01" }));
    assert_eq!(
        medium,
        ["m:2023-12", "m:2024-01", "m:2024-02", "y:2023", "y:2024"]
    );
    // 62 days: days too.
    let days = keys(json!({ "start": "2023-12-01", "end": "2024-01-31" }));
    assert_eq!(days.iter().filter(|k| k.starts_with("d:")).count(), 62);
    // 25 months: years only.
    assert_eq!(
        keys(json!({ "start": "2022-01", "end": "2024-01" })),
        ["y:2022", "y:2023", "y:2024"]
    );
    // Crossing the horizon.
    let wide = keys(json!({ "start": "1790", "end": "2210" }));
    assert_eq!(wide.len(), 403);
    assert!(wide.contains(&"y:-".to_owned()) && wide.contains(&"y:+".to_owned()));
    // A birth date: its day, month and year.
    assert_eq!(
        keys_of(
            ResourceType::PATIENT,
            &patient_born("1984-07-12"),
            "birthdate"
        ),
        ["d:1984-07-12", "m:1984-07", "y:1984"]
    );
    // A year touches 12 months (<= 24): month keys too.
    let year = keys_of(ResourceType::PATIENT, &patient_born("1984"), "birthdate");
    assert_eq!(year.len(), 13);
    assert_eq!(year.first().map(String::as_str), Some("m:1984-01"));
    assert_eq!(year.last().map(String::as_str), Some("y:1984"));
}

#[test]
fn date_candidate_keys() {
    let rt = ResourceType::PATIENT;
    let c = |value: &str| candidates(rt, "birthdate", value).expect("bounded");
    assert_eq!(c("1984-07-12"), ["d:1984-07-12"]);
    assert_eq!(c("1984-07-12T10:00"), ["d:1984-07-12"]);
    assert_eq!(c("1984-07").len(), 1);
    assert_eq!(c("1984-07"), ["m:1984-07"]);
    assert_eq!(c("1984").len(), 12);
    assert_eq!(c("ap1984-07"), ["y:1984", "y:-", "y:+"]);
    let ge = c("ge1984-07");
    assert_eq!(ge.first().map(String::as_str), Some("y:1984"));
    assert_eq!(ge.last().map(String::as_str), Some("y:+"));
    assert_eq!(ge.len(), (2200 - 1984 + 1) + 1);
    assert_eq!(c("gt1984")[0], "y:1985");
    assert_eq!(c("gt2500"), ["y:+"]);
    assert_eq!(c("lt1700"), ["y:-"]);
    let lt = c("lt1984-01-01");
    assert_eq!(lt.last().map(String::as_str), Some("y:1983"));
    assert_eq!(lt.len(), 1 + (1983 - 1800 + 1));
    assert_eq!(c("le1984-01-01").last().map(String::as_str), Some("y:1984"));
    assert!(c("lt0001").len() == 1);
    assert_eq!(candidates(rt, "birthdate", "ne1984"), None);
    // Every year key list stays within the horizon.
    assert!(c("ge0001").len() <= 403);
}

/// The core property over a grid: dates of every shape x every prefix x many query values.
#[test]
fn date_index_has_no_false_negatives() {
    let rt = ResourceType::ENCOUNTER;
    let stored = [
        json!({ "start": "1984-07-12", "end": "1984-07-12" }),
        json!({ "start": "1984-07-12T10:30:00Z", "end": "1984-07-12T11:00:00+02:00" }),
        json!({ "start": "1984-07", "end": "1984-07" }),
        json!({ "start": "1984", "end": "1984" }),
        json!({ "start": "1983-12-31T23:00:00-05:00", "end": "1984-01-01T05:00:00Z" }),
        json!({ "start": "1984-01-15", "end": "1984-10-01" }),
        json!({ "start": "1984-11-15", "end": "1985-02-01" }),
        json!({ "start": "1980", "end": "1990-06-30" }),
        json!({ "start": "1984-03-01" }),
        json!({ "end": "1984-03-01" }),
        json!({ "start": "1700", "end": "1750" }),
        json!({ "start": "1790-05", "end": "1810" }),
        json!({ "start": "2190", "end": "2230" }),
        json!({ "start": "2300-01-01" }),
        json!({ "end": "1600" }),
        json!({ "start": "0001-01-01T00:00:00+14:00", "end": "0001-01-02" }),
        json!({ "start": "9999-12-31T23:00:00-14:00" }),
        json!({ "start": "9999-12-31", "end": "9999-12-31T23:59:59.999Z" }),
    ];
    let values = [
        "0001",
        "1600",
        "1700",
        "1750",
        "1799",
        "1800",
        "1810",
        "1983",
        "1983-12-31",
        "1984",
        "1984-01",
        "1984-01-01",
        "1984-03-01",
        "1984-07",
        "1984-07-11",
        "1984-07-12",
        "1984-07-12T10:45Z",
        "1984-07-12T10:30:00Z",
        "1984-07-13",
        "1984-10",
        "1985",
        "1985-01-31",
        "1990",
        "2200",
        "2201",
        "2230",
        "2300",
        "2500",
        "9999",
        "9999-12-31",
    ];
    let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let mut matched = 0;
    for period in &stored {
        let encounter = json!({ "resourceType": "Encounter", "period": period });
        assert!(!keys_of(rt, &encounter, "date").is_empty(), "{period}");
        for prefix in prefixes {
            for value in values {
                let q = query(rt, &[("date", &format!("{prefix}{value}"))]);
                if assert_sound(rt, &encounter, &q.clauses[0]) {
                    matched += 1;
                }
            }
        }
    }
    assert!(matched > 1000, "{matched}");
}

#[test]
fn timing_uses_outer_limits() {
    let rt = ResourceType::OBSERVATION;
    let obs = json!({ "resourceType": "Observation", "effectiveTiming": { "event": ["2024-01-05", "2024-03-10T10:00:00Z"] } });
    assert!(hit(rt, &obs, "date", "2024"));
    assert!(!hit(rt, &obs, "date", "2024-01"));
    assert!(hit(rt, &obs, "date", "ap2024-02"));
    assert!(hit(rt, &obs, "date", "sa2024-01-04"));
    assert!(hit(rt, &obs, "date", "eb2024-03-11"));
    let instant =
        json!({ "resourceType": "Observation", "effectiveInstant": "2024-01-05T10:00:00.123Z" });
    assert!(hit(rt, &instant, "date", "2024-01-05"));
    let period =
        json!({ "resourceType": "Observation", "effectivePeriod": { "start": "2024-01-05" } });
    assert!(hit(rt, &period, "date", "gt2025"));
}

#[test]
fn condition_onset() {
    let rt = ResourceType::CONDITION;
    let dated = json!({ "resourceType": "Condition", "onsetDateTime": "2010-05-05" });
    let period = json!({ "resourceType": "Condition", "onsetPeriod": { "start": "2010-05", "end": "2010-06" } });
    let age = json!({ "resourceType": "Condition", "onsetAge": { "value": 40 } });
    assert!(hit(rt, &dated, "onset-date", "2010-05"));
    assert!(hit(rt, &period, "onset-date", "2010"));
    assert!(!hit(rt, &period, "onset-date", "2010-05"));
    assert!(!hit(rt, &age, "onset-date", "ne2010"));
}

#[test]
fn date_errors() {
    let rt = ResourceType::PATIENT;
    for (value, reason) in [
        ("xx2024", "unknown prefix"),
        ("2024-13", "invalid date"),
        ("2024-02-30", "invalid date"),
        ("GT2024", "invalid date"),
        ("eq", "invalid date"),
        ("1984,", "empty value"),
        ("", "empty value"),
    ] {
        assert_eq!(
            invalid(rt, &[("birthdate", value)]),
            Some(("birthdate", reason)),
            "{value}"
        );
    }
}

#[test]
fn id_and_last_updated() {
    let rt = ResourceType::PATIENT;
    let p = json!({ "resourceType": "Patient", "id": "p-1.a", "meta": { "lastUpdated": "2024-05-06T07:08:09.123+02:00" } });
    assert!(hit(rt, &p, "_id", "p-1.a"));
    assert!(hit(rt, &p, "_id", "x,p-1.a"));
    assert!(!hit(rt, &p, "_id", "P-1.A"));
    assert!(!hit(rt, &p, "_id", "p-1"));
    assert!(hit(rt, &p, "_id:not", "x"));
    assert!(hit(rt, &p, "_lastUpdated", "2024-05-06"));
    assert!(hit(rt, &p, "_lastUpdated", "gt2024-05-06T05:08:08Z"));
    assert!(!hit(rt, &p, "_lastUpdated", "gt2024-05-06T05:08:09Z"));
    assert!(hit(rt, &p, "_lastUpdated", "ge2024-05-06T05:08:09Z"));
    assert!(hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09Z"));
    assert!(hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09.12Z"));
    assert!(!hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09.124Z"));
    assert!(hit(rt, &p, "_lastUpdated", "2024-05-06T05:08:09.123Z"));
    assert!(hit(rt, &p, "_lastUpdated", "le2024-05"));
    assert!(!hit(rt, &p, "_lastUpdated", "2024-05-07"));
    // `_id` is answered by id, not from the index.
    assert!(keys_of(rt, &p, "_id").is_empty());
    assert_eq!(candidates(rt, "_id", "p-1.a"), None);
    let ids = |list: &[(&str, &str)]| id_candidates(&query(rt, list).clauses[0]);
    assert_eq!(ids(&[("_id", "p-1.a,x")]).unwrap(), ["p-1.a", "x"]);
    assert_eq!(ids(&[("_id", "|p-1.a")]).unwrap(), ["p-1.a"]);
    assert_eq!(ids(&[("_id:not", "x")]), None);
    assert_eq!(ids(&[("_id:missing", "true")]), None);
    assert_eq!(ids(&[("gender", "male")]), None);
    // _id on any type.
    let claim = ResourceType::parse("Claim").expect("type");
    assert!(hit(claim, &json!({ "id": "c1" }), "_id", "c1"));
}
