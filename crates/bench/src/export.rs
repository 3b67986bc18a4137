//! The `$export` measurement: one system-level bulk export of everything (by a service key that
//! reads every organization), asked plain and de-identified. Each is timed from the kick-off to
//! the completion manifest (the job: read, decrypt, authorize, optionally de-identify, write
//! sealed NDJSON) and then through the download of every file; the server's resident memory is
//! sampled every 50 ms while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use carevault_testkit::Api;
use serde_json::{Value, json};

use crate::proc_stats;

pub struct ExportRow {
    pub name: &'static str,
    pub resources: u64,
    pub bytes: u64,
    pub job_seconds: f64,
    pub download_seconds: f64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
}

impl ExportRow {
    pub fn resources_per_s(&self) -> f64 {
        self.resources as f64 / self.job_seconds.max(f64::EPSILON)
    }

    pub fn line(&self) -> String {
        format!(
            "{:<16} {:>10} {:>9.2} {:>12.0} {:>11.2} {:>10.1} {:>8.1}",
            self.name,
            self.resources,
            self.job_seconds,
            self.resources_per_s(),
            self.download_seconds,
            self.peak_rss_mib,
            self.cpu_seconds
        )
    }

    pub fn header() -> String {
        format!(
            "{:<16} {:>10} {:>9} {:>12} {:>11} {:>10} {:>8}",
            "export", "resources", "job s", "resources/s", "download s", "peak MiB", "CPU s"
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "resources": self.resources,
            "ndjson_bytes": self.bytes,
            "job_seconds": self.job_seconds,
            "resources_per_s": self.resources_per_s(),
            "download_seconds": self.download_seconds,
            "server_peak_rss_mib": self.peak_rss_mib,
            "server_cpu_s": self.cpu_seconds,
        })
    }
}

/// Both exports, printed as they finish. `key`: the work directory's export key.
pub fn plain_and_deidentified(api: &Api, key: Option<&str>, pid: u32) -> Result<Vec<ExportRow>> {
    let key = key.context(
        "this work directory was made by an older harness without an export key: use a new one",
    )?;
    let exporter = api.with_token(key);
    println!("{}", ExportRow::header());
    let mut rows = Vec::new();
    for deidentify in [false, true] {
        let row = run(&exporter, pid, deidentify)?;
        println!("{}", row.line());
        rows.push(row);
    }
    Ok(rows)
}

/// The exports' table again, in the run's summary.
pub fn print_table(rows: &[ExportRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!("{}", ExportRow::header());
    for row in rows {
        println!("{}", row.line());
    }
}

/// Export everything `api` (a service key with `system/*.rs`) may read; de-identified if asked.
pub fn run(api: &Api, pid: u32, deidentify: bool) -> Result<ExportRow> {
    let name = if deidentify { "export-deid" } else { "export" };
    let path = if deidentify {
        "/fhir/$export?_deidentify=safe-harbor"
    } else {
        "/fhir/$export"
    };
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(proc_stats::rss_mib(pid).unwrap_or(0.0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let before = proc_stats::sample(pid)?;
    let started = Instant::now();
    let kick_off = api.request("GET", path, &[("Prefer", "respond-async")], None);
    if kick_off.status != 202 {
        bail!(
            "{name}: the kick-off answered {}: {}",
            kick_off.status,
            kick_off.text()
        );
    }
    let status_url = kick_off
        .header("content-location")
        .context("the kick-off named no status URL")?
        .to_owned();
    let status_path = path_of(&status_url)?;
    let manifest = loop {
        let r = api.get(status_path);
        match r.status {
            200 => break r.json(),
            202 => std::thread::sleep(Duration::from_millis(100)),
            s => bail!("{name}: the status answered {s}: {}", r.text()),
        }
    };
    let job_seconds = started.elapsed().as_secs_f64();
    let downloading = Instant::now();
    let (mut resources, mut bytes) = (0u64, 0u64);
    for output in manifest["output"].as_array().into_iter().flatten() {
        let url = output["url"].as_str().context("an output without url")?;
        let (status, lines, size) = api
            .get_counting_lines(path_of(url)?)
            .map_err(|e| anyhow::anyhow!("{name}: download failed: {e}"))?;
        if status != 200 || Some(lines) != output["count"].as_u64() {
            bail!("{name}: {url} answered {status} with {lines} lines, not its manifest count");
        }
        resources += lines;
        bytes += size;
    }
    let download_seconds = downloading.elapsed().as_secs_f64();
    let after = proc_stats::sample(pid)?;
    sampling.store(false, Ordering::Relaxed);
    let peak_rss_mib = sampler.join().unwrap_or(0.0);
    let _ = api.delete(status_path);
    Ok(ExportRow {
        name,
        resources,
        bytes,
        job_seconds,
        download_seconds,
        peak_rss_mib,
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
    })
}

fn path_of(url: &str) -> Result<&str> {
    url.find("/export/")
        .map(|i| &url[i..])
        .context("a URL outside /export/")
}
