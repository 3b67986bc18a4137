//! `carevault import FILE|DIR`: loads FHIR R4 Bulk Data NDJSON files and transaction/batch
//! Bundles through the server's API, so every resource takes the same path as any other write:
//! validation, authorization, encryption, indexing and audit.
//!
//! NDJSON lines are sent in batch Bundles of `--batch` entries (`PUT Type/id`, keeping the
//! file's ids so references between files hold; `POST Type` for lines without an id), several
//! Bundles at once. Bundle files are sent as they are. A rejected entry is reported with its
//! file, line and the server's reason, and the rest goes on. Progress is kept in a journal under
//! the CLI's config directory: an interrupted import resumes where it stopped.
//!
//! Resuming is exact for what the journal holds. A Bundle in flight when the import itself is
//! killed is sent again: lines with ids are `PUT` again (a new version of the same content),
//! lines without ids are created again, so give resources ids when imports may be interrupted.
//!
//! Organizations, practitioners and patients load first, so that every later resource's patient
//! compartment already knows its managing organization.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::client::{self, Client};

pub struct Options {
    pub batch: usize,
    pub concurrency: usize,
    pub restart: bool,
}

/// Types loaded before everything else (compartment owners and what they refer to).
const FIRST: &[&str] = &[
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
];
const MAX_PRINTED_REJECTIONS: usize = 200;
const ATTEMPTS: u32 = 5;

#[derive(Clone)]
struct Source {
    path: PathBuf,
    /// The name shown in reports and kept in the journal.
    name: String,
    kind: SourceKind,
    first_phase: bool,
    resources: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum SourceKind {
    Ndjson,
    Bundle,
}

/// One request's worth of work.
struct Unit {
    source: usize,
    index: usize,
    body: Vec<u8>,
    /// For NDJSON: the line number of each entry in the Bundle; for a Bundle file: empty.
    lines: Vec<usize>,
    /// Entries refused before sending (not JSON, no resourceType): (line, reason).
    local_rejections: Vec<(usize, String)>,
}

struct Done {
    source: usize,
    index: usize,
    imported: usize,
    rejections: Vec<(String, String)>,
    fatal: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
}

pub fn run(client: Client, path: &Path, options: &Options) -> Result<()> {
    if options.batch == 0 || options.batch > 1000 {
        bail!("--batch must be between 1 and 1000 (the server's Bundle limit)");
    }
    if options.concurrency == 0 || options.concurrency > 64 {
        bail!("--concurrency must be between 1 and 64");
    }
    let sources = discover(path)?;
    if sources.is_empty() {
        bail!(
            "{} holds no .ndjson or .json files to import",
            path.display()
        );
    }
    let mut journal = Journal::open(path, client.server(), options.batch, options.restart)?;
    let total: usize = sources.iter().map(|s| s.resources).sum();
    let client = Arc::new(client);
    let mut progress = Progress::new(total);
    for phase in [true, false] {
        let picked: Vec<usize> = (0..sources.len())
            .filter(|&i| sources[i].first_phase == phase)
            .collect();
        run_phase(
            &client,
            &sources,
            &picked,
            options,
            &mut journal,
            &mut progress,
        )?;
    }
    progress.finish();
    let secs = progress.started.elapsed().as_secs_f64();
    println!(
        "imported {} resources in {:.1} s ({:.0} resources/s); {} rejected; {} already imported earlier",
        progress.imported,
        secs,
        progress.imported as f64 / secs.max(1e-9),
        progress.rejected,
        progress.skipped,
    );
    if progress.rejected > 0 {
        bail!(
            "{} entries were rejected (reasons above); the rest is imported",
            progress.rejected
        );
    }
    Ok(())
}

fn run_phase(
    client: &Arc<Client>,
    sources: &[Source],
    picked: &[usize],
    options: &Options,
    journal: &mut Journal,
    progress: &mut Progress,
) -> Result<()> {
    let (unit_tx, unit_rx) = mpsc::sync_channel::<Unit>(options.concurrency * 2);
    let unit_rx = Arc::new(Mutex::new(unit_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let done_set = journal.done.clone();
    // Set when the import must stop (the server is gone or refuses the credentials): the
    // reader stops reading, the workers drain what is queued without sending it.
    let stop = AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|scope| -> Result<()> {
        let producer = scope.spawn(move || -> Result<usize> {
            let mut skipped = 0;
            for &s in picked {
                skipped += produce(s, &sources[s], options.batch, &done_set, &unit_tx, stop)?;
            }
            Ok(skipped)
        });
        for _ in 0..options.concurrency {
            let rx = unit_rx.clone();
            let tx = done_tx.clone();
            let client = client.clone();
            scope.spawn(move || {
                loop {
                    let unit = {
                        let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                        guard.recv()
                    };
                    let Ok(unit) = unit else { break };
                    if stop.load(Ordering::Relaxed) {
                        continue;
                    }
                    if tx.send(send(&client, sources, unit)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut fatal = None;
        for done in done_rx {
            if let Some(reason) = done.fatal {
                stop.store(true, Ordering::Relaxed);
                fatal.get_or_insert(reason);
                continue;
            }
            journal.record(&sources[done.source].name, done.index)?;
            for (place, reason) in &done.rejections {
                progress.reject(place, reason);
            }
            progress.add(done.imported);
        }
        let skipped = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the file reader failed"))??;
        progress.skipped += skipped;
        if let Some(reason) = fatal {
            bail!("import stopped: {reason}; run the same command again to resume");
        }
        Ok(())
    })
}

/// Read one source and queue its units; returns how many resources were skipped as done.
fn produce(
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

/// Send one unit, retrying while the server is unreachable or overloaded.
fn send(client: &Client, sources: &[Source], unit: Unit) -> Done {
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

/// The files to import, with their type, phase and size.
fn discover(path: &Path) -> Result<Vec<Source>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
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

/// Which units are done, kept in an append-only file so a crash loses at most the units in
/// flight (the server has them; they are sent again, as `PUT`s with the same ids, or rejected
/// by the same rule again).
struct Journal {
    file: fs::File,
    done: HashSet<(String, usize)>,
}

impl Journal {
    fn open(path: &Path, server: &str, batch: usize, restart: bool) -> Result<Self> {
        let absolute =
            fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
        let key =
            carevault_crypto::sha256_hex(format!("{server}\n{}", absolute.display()).as_bytes());
        let dir = client::config_dir()?.join("imports");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let journal = dir.join(format!("{}.journal", &key[..32]));
        if restart {
            let _ = fs::remove_file(&journal);
        }
        let header = format!("carevault-import 1 batch={batch}");
        let mut done = HashSet::new();
        let existing = fs::read_to_string(&journal).ok();
        if let Some(text) = &existing {
            let mut lines = text.lines();
            if lines.next() != Some(header.as_str()) {
                bail!(
                    "an earlier import of {} used another --batch size; resume with the same size, or pass --restart",
                    path.display()
                );
            }
            for line in lines {
                if let Some((name, index)) = line.rsplit_once('\t')
                    && let Ok(index) = index.parse()
                {
                    done.insert((name.to_owned(), index));
                }
            }
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .with_context(|| format!("cannot write {}", journal.display()))?;
        if existing.is_none() {
            writeln!(file, "{header}")?;
        }
        Ok(Self { file, done })
    }

    fn record(&mut self, name: &str, index: usize) -> Result<()> {
        writeln!(self.file, "{name}\t{index}").context("cannot write the import journal")?;
        self.done.insert((name.to_owned(), index));
        Ok(())
    }
}

struct Progress {
    total: usize,
    imported: usize,
    rejected: usize,
    skipped: usize,
    started: Instant,
    last_draw: Instant,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        let now = Instant::now();
        Self {
            total,
            imported: 0,
            rejected: 0,
            skipped: 0,
            started: now,
            last_draw: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, imported: usize) {
        self.imported += imported;
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if self.last_draw.elapsed() >= every {
            self.draw();
        }
    }

    fn reject(&mut self, place: &str, reason: &str) {
        self.rejected += 1;
        if self.rejected <= MAX_PRINTED_REJECTIONS {
            self.clear_line();
            eprintln!("rejected {place}: {reason}");
        } else if self.rejected == MAX_PRINTED_REJECTIONS + 1 {
            eprintln!("(further rejections are counted, not printed)");
        }
    }

    fn clear_line(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }

    fn draw(&mut self) {
        self.last_draw = Instant::now();
        let done = self.imported + self.rejected + self.skipped;
        let fraction = done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = ((fraction * width as f64) as usize).min(width);
        let rate = self.imported as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "[{}{}] {:>3.0}% {done}/{} resources, {rate:.0}/s, {} rejected",
            "#".repeat(filled),
            ".".repeat(width - filled),
            fraction * 100.0,
            self.total,
            self.rejected
        );
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        self.draw();
        if self.terminal {
            eprintln!();
        }
    }
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
