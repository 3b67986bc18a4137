//! `carevault import FILE|DIR`: loads FHIR R4 Bulk Data NDJSON files and transaction/batch
//! Bundles (or a bulk `$export`'s files, by its completion manifest) through the server's API, so every resource takes the same path as any other write:
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

mod journal;
mod progress;
mod provenance;
mod send;
mod source;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

use crate::client::Client;
use journal::Journal;
use progress::Progress;
use send::{Done, send};
use source::{Source, Unit, discover, produce};

pub(crate) struct Options {
    pub batch: usize,
    pub concurrency: usize,
    pub restart: bool,
    /// The audit public key a bulk export must be signed with (`--source-public-key`).
    pub source_key: Option<String>,
}

pub(crate) fn run(client: Client, path: &Path, options: &Options) -> Result<()> {
    if options.batch == 0 || options.batch > 1000 {
        bail!("--batch must be between 1 and 1000 (the server's Bundle limit)");
    }
    if options.concurrency == 0 || options.concurrency > 64 {
        bail!("--concurrency must be between 1 and 64");
    }
    if let Some(manifest) = provenance::manifest_at(path)? {
        provenance::check(&client, &manifest, options.source_key.as_deref())?;
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
