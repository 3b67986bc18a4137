//! The files to import, and reading them into units: Bundle files as they are, NDJSON lines
//! in batch Bundles.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// Types loaded before everything else (compartment owners and what they refer to).
const FIRST: &[&str] = &[
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
];

#[derive(Clone)]
pub(super) struct Source {
    pub(super) path: PathBuf,
    /// The name shown in reports and kept in the journal.
    pub(super) name: String,
    pub(super) kind: SourceKind,
    pub(super) first_phase: bool,
    pub(super) resources: usize,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum SourceKind {
    Ndjson,
    Bundle,
}

/// One request's worth of work.
pub(super) struct Unit {
    pub(super) source: usize,
    pub(super) index: usize,
    pub(super) body: Vec<u8>,
    /// For NDJSON: the line number of each entry in the Bundle; for a Bundle file: empty.
    pub(super) lines: Vec<usize>,
    /// Entries refused before sending (not JSON, no resourceType): (line, reason).
    pub(super) local_rejections: Vec<(usize, String)>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
}

/// The NDJSON files a bulk `$export` completion manifest lists (`output[].url`), found by
/// their file names beside it (as `carevault export` writes them), with the count each should
/// hold; None when `path` is not such a manifest.
/// One output file a bulk export's manifest lists.
struct ManifestOutput {
    path: PathBuf,
    count: u64,
    sha256: Option<String>,
}

fn manifest_outputs(path: &Path) -> Result<Option<Vec<ManifestOutput>>> {
    let text = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Ok(value) = serde_json::from_slice::<Value>(&text) else {
        return Ok(None);
    };
    if value.get("resourceType").is_some() || !value["output"].is_array() {
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut outputs = Vec::new();
    for output in value["output"].as_array().into_iter().flatten() {
        let name = output["url"]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| {
                n.ends_with(".ndjson")
                    && !n.starts_with('.')
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            })
            .context("the manifest lists an output whose URL names no .ndjson file")?;
        let count = output["count"]
            .as_u64()
            .context("the manifest lists an output without a count")?;
        let sha256 = output["extension"]["sha256"].as_str().map(str::to_owned);
        outputs.push(ManifestOutput {
            path: dir.join(name),
            count,
            sha256,
        });
    }
    Ok(Some(outputs))
}

/// The files to import, with their type, phase and size: a file, a directory of NDJSON files
/// and Bundles, or a bulk export (its `manifest.json`, or a directory holding one): then the
/// files the manifest lists, each checked against its count.
pub(super) fn discover(path: &Path) -> Result<Vec<Source>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest = if meta.is_dir() {
        let candidate = path.join("manifest.json");
        if candidate.is_file() {
            manifest_outputs(&candidate)?
        } else {
            None
        }
    } else if path.extension().and_then(|e| e.to_str()) == Some("json") {
        manifest_outputs(path)?
    } else {
        None
    };
    if let Some(outputs) = manifest {
        let files: Vec<PathBuf> = outputs.iter().map(|o| o.path.clone()).collect();
        let sources = sources_of(files)?;
        for (source, output) in sources.iter().zip(&outputs) {
            let count = output.count;
            if source.resources as u64 != count {
                bail!(
                    "{} holds {} resources where the export's manifest says {count}",
                    source.name,
                    source.resources
                );
            }
            if let Some(expected) = &output.sha256
                && file_sha256(&source.path)? != *expected
            {
                bail!(
                    "{} is not the file the export's manifest names (its SHA-256 differs)",
                    source.name
                );
            }
        }
        return Ok(sources);
    }
    let mut files = Vec::new();
    if meta.is_dir() {
        for entry in
            fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
        {
            let p = entry?.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_file() && matches!(ext, "ndjson" | "json") {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    sources_of(files)
}

fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut digest = carevault_crypto::Sha256Stream::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(digest.finish_hex());
        }
        digest.update(buf.get(..n).unwrap_or_default());
    }
}

fn sources_of(files: Vec<PathBuf>) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    for p in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.extension().and_then(|e| e.to_str()) == Some("ndjson") {
            let file =
                fs::File::open(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let mut first_type = None;
            let mut resources = 0usize;
            for line in BufReader::with_capacity(1 << 20, file).split(b'\n') {
                let line = line.with_context(|| format!("cannot read {}", p.display()))?;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if first_type.is_none() {
                    first_type = serde_json::from_slice::<Head>(&line)
                        .ok()
                        .and_then(|h| h.resource_type);
                }
                resources += 1;
            }
            let first_phase = first_type.as_deref().is_some_and(|t| FIRST.contains(&t));
            sources.push(Source {
                path: p,
                name,
                kind: SourceKind::Ndjson,
                first_phase,
                resources,
            });
        } else {
            let text = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let value: Value =
                serde_json::from_slice(&text).with_context(|| format!("{name} is not JSON"))?;
            if value["resourceType"] != "Bundle" {
                bail!("{name} is not a FHIR Bundle (NDJSON files end in .ndjson)");
            }
            let resources = value["entry"].as_array().map_or(0, Vec::len);
            sources.push(Source {
                path: p,
                name,
                kind: SourceKind::Bundle,
                first_phase: false,
                resources,
            });
        }
    }
    Ok(sources)
}

/// Read one source and queue its units; returns how many resources were skipped as done.
pub(super) fn produce(
    s: usize,
    source: &Source,
    batch: usize,
    done: &HashSet<(String, usize)>,
    tx: &mpsc::SyncSender<Unit>,
    stop: &AtomicBool,
) -> Result<usize> {
    let mut skipped = 0;
    match source.kind {
        SourceKind::Bundle => {
            if done.contains(&(source.name.clone(), 0)) {
                return Ok(source.resources);
            }
            let body = fs::read(&source.path)
                .with_context(|| format!("cannot read {}", source.path.display()))?;
            let unit = Unit {
                source: s,
                index: 0,
                body,
                lines: Vec::new(),
                local_rejections: Vec::new(),
            };
            if tx.send(unit).is_err() {
                return Ok(skipped);
            }
        }
        SourceKind::Ndjson => {
            let file = fs::File::open(&source.path)
                .with_context(|| format!("cannot read {}", source.path.display()))?;
            let mut lines = BufReader::with_capacity(1 << 20, file).lines();
            let mut number = 0usize;
            for index in 0.. {
                let mut chunk = Vec::with_capacity(batch);
                while chunk.len() < batch {
                    let Some(line) = lines.next() else { break };
                    number += 1;
                    let line = line
                        .with_context(|| format!("{} line {number} cannot be read", source.name))?;
                    if !line.trim().is_empty() {
                        chunk.push((number, line));
                    }
                }
                if chunk.is_empty() {
                    break;
                }
                if done.contains(&(source.name.clone(), index)) {
                    skipped += chunk.len();
                    continue;
                }
                if stop.load(Ordering::Relaxed) || tx.send(batch_unit(s, index, chunk)).is_err() {
                    break;
                }
            }
        }
    }
    Ok(skipped)
}

/// A batch Bundle of NDJSON lines; each line is embedded as it is (after checking it is JSON).
fn batch_unit(source: usize, index: usize, chunk: Vec<(usize, String)>) -> Unit {
    let mut body = Vec::with_capacity(chunk.iter().map(|(_, l)| l.len() + 80).sum::<usize>() + 64);
    body.extend_from_slice(br#"{"resourceType":"Bundle","type":"batch","entry":["#);
    let mut lines = Vec::with_capacity(chunk.len());
    let mut local_rejections = Vec::new();
    for (number, line) in chunk {
        let head: Head = match serde_json::from_str(&line) {
            Ok(h) => h,
            Err(e) => {
                // serde_json's message names a position, never the content.
                local_rejections.push((number, format!("not a JSON resource ({e})")));
                continue;
            }
        };
        let Some(rtype) = head.resource_type.filter(|t| is_type_name(t)) else {
            local_rejections.push((number, "no valid resourceType".to_owned()));
            continue;
        };
        let request = match head.id.filter(|id| is_id(id)) {
            Some(id) => format!(r#"{{"method":"PUT","url":"{rtype}/{id}"}}"#),
            None => format!(r#"{{"method":"POST","url":"{rtype}"}}"#),
        };
        if !lines.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"resource":"#);
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(br#","request":"#);
        body.extend_from_slice(request.as_bytes());
        body.push(b'}');
        lines.push(number);
    }
    body.extend_from_slice(b"]}");
    Unit {
        source,
        index,
        body,
        lines,
        local_rejections,
    }
}

fn is_type_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// FHIR id syntax: [A-Za-z0-9\-\.]{1,64}.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bundles_embed_lines_and_refuse_bad_ones_locally() {
        let unit = batch_unit(
            0,
            3,
            vec![
                (1, r#"{"resourceType":"Patient","id":"p1"}"#.to_owned()),
                (2, "{not json".to_owned()),
                (
                    3,
                    r#"{"resourceType":"Observation","status":"final"}"#.to_owned(),
                ),
                (4, r#"{"id":"x"}"#.to_owned()),
                (
                    5,
                    r#"{"resourceType":"Patient","id":"bad id/../x"}"#.to_owned(),
                ),
            ],
        );
        let bundle: Value = serde_json::from_slice(&unit.body).unwrap();
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(unit.lines, vec![1, 3, 5]);
        assert_eq!(entries[0]["request"]["url"], "Patient/p1");
        assert_eq!(entries[0]["request"]["method"], "PUT");
        assert_eq!(entries[1]["request"]["method"], "POST");
        // An id that is not a FHIR id is not put into a URL; the server judges the resource.
        assert_eq!(entries[2]["request"]["url"], "Patient");
        let rejected: Vec<usize> = unit.local_rejections.iter().map(|r| r.0).collect();
        assert_eq!(rejected, vec![2, 4]);
        assert!(!unit.local_rejections[0].1.contains("not json"));
    }
}
