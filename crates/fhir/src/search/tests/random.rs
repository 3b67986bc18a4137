use super::*;

use crate::search::date::days_in_month;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[usize::try_from(self.below(items.len() as u64)).expect("index")]
    }
}

fn random_date(rng: &mut Rng) -> String {
    let year = match rng.below(10) {
        0 => 1 + rng.below(9999),
        1 => 1790 + rng.below(20),
        2 => 2190 + rng.below(20),
        _ => 1980 + rng.below(10),
    };
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(u64::try_from(days_in_month(year as i64, month as i64)).expect("days"));
    let (hour, minute, second) = (rng.below(24), rng.below(60), rng.below(60));
    let zone = rng.pick(&["", "Z", "+14:00", "-14:00", "+05:30", "-03:00"]);
    match rng.below(7) {
        0 => format!("{year:04}"),
        1 => format!("{year:04}-{month:02}"),
        2 | 3 => format!("{year:04}-{month:02}-{day:02}"),
        4 => format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}{zone}"),
        5 => format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{zone}"),
        _ => format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{}{zone}",
            rng.below(1000)
        ),
    }
}

#[test]
fn random_dates_have_no_false_negatives() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let mut matched = 0;
    for _ in 0..1200 {
        let start = random_date(&mut rng);
        // Mostly nearby ends, so that short periods (day and month keys) are common.
        let end = if rng.below(2) == 0 {
            start.clone()
        } else {
            random_date(&mut rng)
        };
        let period = match rng.below(4) {
            0 => json!({ "start": start }),
            1 => json!({ "end": end }),
            _ => json!({ "start": start, "end": end }),
        };
        let encounter = json!({ "resourceType": "Encounter", "period": period });
        let observation = json!({ "resourceType": "Observation", "effectiveDateTime": start });
        for _ in 0..5 {
            let value = format!("{}{}", rng.pick(&prefixes), random_date(&mut rng));
            let e = query(ResourceType::ENCOUNTER, &[("date", &value)]);
            let o = query(ResourceType::OBSERVATION, &[("date", &value)]);
            matched += usize::from(assert_sound(
                ResourceType::ENCOUNTER,
                &encounter,
                &e.clauses[0],
            ));
            matched += usize::from(assert_sound(
                ResourceType::OBSERVATION,
                &observation,
                &o.clauses[0],
            ));
        }
        // Queries close to the stored value, where the interesting boundaries are.
        for prefix in prefixes {
            for near in [&start, &end] {
                let value = format!("{prefix}{near}");
                let e = query(ResourceType::ENCOUNTER, &[("date", &value)]);
                matched += usize::from(assert_sound(
                    ResourceType::ENCOUNTER,
                    &encounter,
                    &e.clauses[0],
                ));
                let truncated: String = near.chars().take(7).collect();
                let value = format!("{prefix}{truncated}");
                let o = query(ResourceType::OBSERVATION, &[("date", &value)]);
                matched += usize::from(assert_sound(
                    ResourceType::OBSERVATION,
                    &observation,
                    &o.clauses[0],
                ));
            }
        }
    }
    assert!(matched > 6_000, "{matched}");
}

#[test]
fn random_quantities_have_no_false_negatives_and_agree_with_f64() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let random_number = |rng: &mut Rng| -> String {
        let sign = if rng.below(4) == 0 { "-" } else { "" };
        let int = rng.below(200);
        match rng.below(3) {
            0 => format!("{sign}{int}"),
            1 => format!("{sign}{int}.{}", rng.below(10)),
            _ => format!("{sign}{int}.{:02}", rng.below(100)),
        }
    };
    let mut matched = 0;
    for _ in 0..3000 {
        let stored: f64 = random_number(&mut rng).parse().expect("f64");
        let obs = mg(json!(stored));
        let prefix = rng.pick(&prefixes);
        let number = random_number(&mut rng);
        let unit = rng.pick(&["", "||mg", "|http://unitsofmeasure.org|mg", "||g"]);
        let q = query(
            ResourceType::OBSERVATION,
            &[("value-quantity", &format!("{prefix}{number}{unit}"))],
        );
        let hit = assert_sound(ResourceType::OBSERVATION, &obs, &q.clauses[0]);
        matched += usize::from(hit);
        // Cross-check with floating point where it is unambiguous (away from boundaries).
        let n: f64 = number.parse().expect("f64");
        let decimals = number.split('.').nth(1).map_or(0, str::len);
        let half = 0.5 * 10f64.powi(-i32::try_from(decimals).expect("small"));
        let (lo, hi) = (n - half, n + half);
        let expected = match prefix {
            "" | "eq" => stored >= lo && stored < hi,
            "ne" => !(stored >= lo && stored < hi),
            "gt" => stored > n,
            "lt" => stored < n,
            "ge" => stored >= n,
            "le" => stored <= n,
            "sa" => stored >= hi,
            "eb" => stored < lo,
            _ => (stored >= lo && stored < hi) || (stored - n).abs() <= n.abs() / 10.0,
        } && unit != "||g";
        let near_boundary = [lo, hi, n, n - n.abs() / 10.0, n + n.abs() / 10.0]
            .iter()
            .any(|b| (stored - b).abs() < 1e-9);
        if !near_boundary {
            assert_eq!(hit, expected, "{stored} vs {prefix}{number}{unit}");
        }
    }
    assert!(matched > 500, "{matched}");
}

#[test]
fn random_strings_have_no_false_negatives() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let alphabet = [
        "a", "b", "é", "É", "ü", "Ü", "ß", "æ", " ", "  ", "-", "ł", "σ", "\u{0301}", "Z",
    ];
    let mut matched = 0;
    for _ in 0..2000 {
        let length = rng.below(20);
        let value: String = (0..length).map(|_| rng.pick(&alphabet)).collect();
        let patient = json!({ "resourceType": "Patient", "name": [{ "family": value }] });
        let norm = normalize_string(&value);
        let mut queries: Vec<(String, &str)> = Vec::new();
        let chars: Vec<char> = norm.chars().collect();
        if !chars.is_empty() {
            let cut = 1 + usize::try_from(rng.below(chars.len() as u64)).expect("index");
            queries.push((chars[..cut].iter().collect(), "family"));
        }
        if !norm.is_empty() {
            queries.push((value.clone(), "family:exact"));
            queries.push((value.to_uppercase(), "family"));
        }
        let random: String = (0..1 + rng.below(4)).map(|_| rng.pick(&alphabet)).collect();
        if !normalize_string(&random).is_empty() {
            queries.push((random, "family"));
        }
        for (q, name) in &queries {
            let escaped = q.replace('\\', "\\\\").replace(',', "\\,");
            let parsed = query(ResourceType::PATIENT, &[(name, &escaped)]);
            matched += usize::from(assert_sound(
                ResourceType::PATIENT,
                &patient,
                &parsed.clauses[0],
            ));
        }
    }
    assert!(matched > 2000, "{matched}");
}
