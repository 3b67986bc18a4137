//! De-identifies independently generated data (the `carebundle` sample vendored under
//! `crates/fhir/tests/fixtures/`, and the whole shared data set when it is present) and checks
//! the output element by element: none of the 18 identifier kinds and no canary from any
//! free-text or identifying field survives, every reference resolves inside the de-identified
//! set, and every resource is still valid FHIR R4.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{DeidOptions, Deidentifier};
use crate::{ResourceType, Validator};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Elements whose every string is identifying or free text: collected from the input as
/// canaries, and never allowed in the output.
const IDENTIFYING: [&str; 17] = [
    "name",
    "identifier",
    "telecom",
    "address",
    "photo",
    "text",
    "div",
    "display",
    "note",
    "comment",
    "description",
    "contained",
    "udiCarrier",
    "serialNumber",
    "attachment",
    "source",
    "url",
];

/// The words of a string (split at anything but letters, digits and `-`), 4 characters or more;
/// a year alone is no canary (Safe Harbor keeps years).
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| w.len() >= 4 && !(w.len() == 4 && w.bytes().all(|b| b.is_ascii_digit())))
}

/// Strings of the input: those under an identifying element (and every id) as canaries, the
/// others (codes, systems, types...) as `plain`.
#[derive(Default)]
struct Canaries {
    values: HashSet<String>,
    words: HashSet<String>,
    plain_values: HashSet<String>,
    plain_words: HashSet<String>,
}

impl Canaries {
    fn collect(&mut self, value: &Value, identifying: bool) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let ident = identifying
                        || IDENTIFYING.contains(&k.as_str())
                        || ["id", "fullUrl", "reference"].contains(&k.as_str());
                    self.collect(v, ident);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.collect(v, identifying)),
            Value::String(s) if identifying => {
                let s = s.trim_start_matches("urn:uuid:");
                self.values.insert(s.to_owned());
                self.words.extend(words(s).map(str::to_owned));
            }
            Value::String(s) => {
                self.plain_values.insert(s.clone());
                self.plain_words.extend(words(s).map(str::to_owned));
            }
            _ => {}
        }
    }

    /// Canaries are what appears only in identifying or free-text elements: a word that is
    /// also a code, a type or a system (`Observation`, `final`) is no leak.
    fn settle(&mut self) {
        let plain_words = std::mem::take(&mut self.plain_words);
        let plain_values = std::mem::take(&mut self.plain_values);
        self.words
            .retain(|w| !plain_words.contains(w) && ResourceType::parse(w).is_err());
        self.values
            .retain(|v| v.len() >= 4 && !plain_values.contains(v));
    }

    fn assert_absent(&self, rtype: &str, s: &str) {
        assert!(
            !self.values.contains(s),
            "{rtype}: an identifying or free-text value survived"
        );
        for w in words(s) {
            assert!(
                !self.words.contains(w),
                "{rtype}: an identifying or free-text word survived: {w}"
            );
        }
    }
}

/// Checks one output element by element; collects its references.
fn check(path: &str, value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                assert!(
                    !IDENTIFYING.contains(&k.as_str())
                        || k == "url" && (path.ends_with("extension") || path.ends_with("request")),
                    "{path}.{k} survived"
                );
                if k == "reference" || k == "fullUrl" {
                    refs.push(v.as_str().unwrap_or_default().to_owned());
                }
                if k == "id" {
                    let id = v.as_str().unwrap_or_default();
                    assert!(is_pseudonym(id), "{path}.id is not a pseudonym");
                }
                check(&format!("{path}.{k}"), v, refs);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check(path, v, refs)),
        Value::String(s) => {
            // A date or time: the year only (an instant: January 1st, midnight).
            let b = s.as_bytes();
            let looks_dated = b.len() >= 7
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[5..7].iter().all(u8::is_ascii_digit);
            assert!(
                !looks_dated || s.ends_with("-01-01T00:00:00Z") || s.starts_with("urn:"),
                "{path} keeps a date below the year"
            );
            assert!(
                !s.contains('@') && !s.contains("<div"),
                "{path} keeps free text"
            );
        }
        _ => {}
    }
}

fn is_pseudonym(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn all_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.values().for_each(|v| all_strings(v, out)),
        Value::Array(items) => items.iter().for_each(|v| all_strings(v, out)),
        Value::String(s) => out.push(s.clone()),
        _ => {}
    }
}

/// De-identifies `inputs` (as one set) and runs every check; returns the resource count.
fn deidentify_and_check(inputs: &[Value]) -> usize {
    let deid = Deidentifier::new(&[9; 32], DeidOptions::safe_harbor(2026)).unwrap();
    let validator = Validator::new().unwrap();
    let mut canaries = Canaries::default();
    for input in inputs {
        canaries.collect(input, false);
    }
    canaries.settle();
    assert!(
        canaries.values.len() > inputs.len(),
        "the inputs hold identifying values"
    );

    let outputs: Vec<Value> = inputs.iter().map(|i| deid.deidentify(i).unwrap()).collect();
    // Every address a reference may use: `Type/<pseudonym>` and each Bundle entry's fullUrl.
    let mut targets: HashSet<String> = HashSet::new();
    let mut count = 0;
    for out in &outputs {
        let entries = out["entry"]
            .as_array()
            .filter(|_| out["resourceType"] == "Bundle");
        let resources: Vec<&Value> = match entries {
            Some(entries) => {
                for entry in entries {
                    if let Some(full) = entry["fullUrl"].as_str() {
                        targets.insert(full.to_owned());
                    }
                }
                entries.iter().map(|e| &e["resource"]).collect()
            }
            None => vec![out],
        };
        for r in resources {
            count += 1;
            if let Some(id) = r["id"].as_str() {
                targets.insert(format!("{}/{id}", r["resourceType"].as_str().unwrap()));
            }
        }
    }
    for out in &outputs {
        let rtype = out["resourceType"].as_str().unwrap();
        let mut refs = Vec::new();
        check(rtype, out, &mut refs);
        for reference in refs {
            assert!(
                targets.contains(&reference),
                "{rtype}: a reference does not resolve"
            );
        }
        let mut strings = Vec::new();
        all_strings(out, &mut strings);
        for s in &strings {
            canaries.assert_absent(rtype, s);
        }
        validator
            .validate(ResourceType::parse(rtype).unwrap(), out)
            .unwrap_or_else(|issues| panic!("{rtype} is no longer valid: {issues:?}"));
    }
    count
}

fn read_bundles(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

#[test]
fn the_vendored_carebundle_sample_leaves_no_identifier_and_keeps_its_graph() {
    let bundles = read_bundles(&manifest_dir().join("tests/fixtures/carebundle"));
    assert_eq!(bundles.len(), 3);
    let n = deidentify_and_check(&bundles);
    assert!(n > 100, "{n}");
}

/// The whole shared data set (13,502 NDJSON resources and 40 Bundles), when it is there: the
/// repository does not depend on it, the sample above always runs.
#[test]
fn the_shared_carebundle_data_when_present_leaves_no_identifier() {
    let shared = manifest_dir().join("../../../shared/data/carebundle");
    if !shared.is_dir() {
        return;
    }
    deidentify_and_check(&read_bundles(&shared.join("bundles-40")));
    let mut resources = Vec::new();
    for file in std::fs::read_dir(shared.join("ndjson-300")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        resources.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    assert_eq!(deidentify_and_check(&resources), 13_502);
}
