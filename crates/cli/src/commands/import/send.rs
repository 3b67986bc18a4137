//! Sending a unit to the server and reading its answer, entry by entry.

use std::time::Duration;

use serde_json::Value;

use super::source::{Source, SourceKind, Unit};
use crate::client::Client;

const ATTEMPTS: u32 = 5;

/// What sending one unit came to.
pub(super) struct Done {
    pub(super) source: usize,
    pub(super) index: usize,
    pub(super) imported: usize,
    pub(super) rejections: Vec<(String, String)>,
    pub(super) fatal: Option<String>,
}

/// Send one unit, retrying while the server is unreachable or overloaded.
pub(super) fn send(client: &Client, sources: &[Source], unit: Unit) -> Done {
    let source = &sources[unit.source];
    let mut rejections: Vec<(String, String)> = unit
        .local_rejections
        .iter()
        .map(|(line, reason)| (format!("{} line {line}", source.name), reason.clone()))
        .collect();
    let mut done = Done {
        source: unit.source,
        index: unit.index,
        imported: 0,
        rejections: Vec::new(),
        fatal: None,
    };
    if unit.lines.is_empty() && source.kind == SourceKind::Ndjson {
        done.rejections = rejections;
        return done;
    }
    let mut attempt = 0;
    let (status, text) = loop {
        attempt += 1;
        match client.post_raw("/fhir", "application/fhir+json", &unit.body) {
            Ok((status, text)) if !matches!(status, 429 | 502 | 503 | 504) => break (status, text),
            Ok((status, _)) if attempt >= ATTEMPTS => {
                done.fatal = Some(format!("the server kept answering {status}"));
                return done;
            }
            Err(e) if attempt >= ATTEMPTS => {
                done.fatal = Some(format!("{e:#}"));
                return done;
            }
            _ => std::thread::sleep(Duration::from_millis(250 << attempt)),
        }
    };
    if status == 401 {
        done.fatal = Some("the server answered 401: log in again or check the API key".into());
        return done;
    }
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let place = |i: usize| match unit.lines.get(i) {
        Some(line) => format!("{} line {line}", source.name),
        None => format!("{} entry {i}", source.name),
    };
    if status != 200 {
        // The whole Bundle was refused: a transaction names its failing entry.
        let reason = format!("{status}: {}", diagnostics(&value));
        match source.kind {
            SourceKind::Bundle => rejections.push((source.name.clone(), reason)),
            SourceKind::Ndjson => {
                for i in 0..unit.lines.len() {
                    rejections.push((place(i), reason.clone()));
                }
            }
        }
        done.rejections = rejections;
        return done;
    }
    let entries = value["entry"].as_array().map_or(&[][..], |v| v.as_slice());
    for (i, entry) in entries.iter().enumerate() {
        let status = entry["response"]["status"].as_str().unwrap_or("");
        if status.starts_with('2') {
            done.imported += 1;
        } else {
            let reason = format!("{status}: {}", diagnostics(&entry["response"]["outcome"]));
            rejections.push((place(i), reason));
        }
    }
    done.rejections = rejections;
    done
}

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("no details")
        .to_owned()
}
