//! `carevault export DIR`: a bulk `$export` through the API (the HL7 Bulk Data async pattern):
//! kick off with `Prefer: respond-async`, poll the status URL (as `Retry-After` asks), download
//! every output file into DIR as `<Type>.ndjson` (each checked against the manifest's count),
//! write the completion manifest as `manifest.json`, then `DELETE` the job so the server drops
//! its copy. `carevault import DIR` loads the result into another server.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::client::Client;

/// What to export.
pub(crate) struct Options {
    pub types: Vec<String>,
    pub since: Option<String>,
    pub deidentify: bool,
    /// De-identified with shifted dates rather than years.
    pub shift_dates: bool,
    /// The label of linked de-identified exports.
    pub link: Option<String>,
    /// Only the data of this Group's member patients.
    pub group: Option<String>,
    /// Only the data in patients' compartments (`Patient/$export`).
    pub patients: bool,
}

/// The most seconds one wait between polls may take, whatever `Retry-After` says.
const MAX_WAIT_SECS: u64 = 30;

pub(crate) fn run(client: &Client, dir: &Path, options: &Options) -> Result<()> {
    prepare_dir(dir)?;
    let kick_off = kick_off_path(options)?;
    let (status, headers, text) = client.get_with_headers(
        &kick_off,
        &[
            ("Prefer", "respond-async"),
            ("Accept", "application/fhir+json"),
        ],
        &["content-location"],
    )?;
    if status != 202 {
        bail!("the server answered {status}: {}", diagnostics(&text));
    }
    let Some(Some(status_url)) = headers.into_iter().next() else {
        bail!("the server started the export but named no status URL (Content-Location)");
    };
    let manifest = poll(client, &status_url)?;
    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    let mut total = 0u64;
    for output in &outputs {
        let (Some(url), Some(rtype), Some(count)) = (
            output["url"].as_str(),
            output["type"].as_str(),
            output["count"].as_u64(),
        ) else {
            bail!("the manifest lists an output without url, type and count");
        };
        let name = file_name(url)?;
        let path = dir.join(name);
        let status = client.download(url, &path)?;
        if status != 200 {
            bail!("downloading the {rtype} file: the server answered {status}");
        }
        let lines = count_lines(&path)?;
        if lines != count {
            bail!(
                "{name} holds {lines} resources where the manifest says {count}: the download was cut short"
            );
        }
        eprintln!("{name}: {count} {rtype} resources");
        total += count;
    }
    let manifest_path = dir.join("manifest.json");
    carevault_crypto::write_private_new(&manifest_path, &serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    // The files are here: the server need not keep its sealed copy until it expires.
    match client.delete_url(&status_url)? {
        200..=299 => {}
        other => eprintln!("note: the server answered {other} when asked to delete the export job"),
    }
    println!(
        "exported {total} resources in {} files to {}",
        outputs.len(),
        dir.display()
    );
    Ok(())
}

/// DIR must be new or empty: an export never mixes with or overwrites other files.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let mut entries =
            fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: export into a new or empty directory",
                dir.display()
            );
        }
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn kick_off_path(options: &Options) -> Result<String> {
    let base = match (&options.group, options.patients) {
        (Some(_), true) => bail!("--group and --patients exclude each other"),
        (Some(group), false) => format!("/fhir/Group/{}/$export", encode(group)),
        (None, true) => "/fhir/Patient/$export".to_owned(),
        (None, false) => "/fhir/$export".to_owned(),
    };
    let mut query = vec![("_outputFormat", "application/fhir+ndjson".to_owned())];
    if !options.types.is_empty() {
        query.push(("_type", options.types.join(",")));
    }
    if let Some(since) = &options.since {
        query.push(("_since", since.clone()));
    }
    if options.deidentify {
        let method = if options.shift_dates {
            "shifted-dates"
        } else {
            "safe-harbor"
        };
        query.push(("_deidentify", method.to_owned()));
    }
    if let Some(label) = &options.link {
        query.push(("_deidentifyLink", label.clone()));
    }
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    Ok(format!("{base}?{}", query.join("&")))
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Poll the status URL until the export is done; the completion manifest.
fn poll(client: &Client, status_url: &str) -> Result<Value> {
    let mut last_progress = String::new();
    loop {
        let (status, headers, text) =
            client.get_with_headers(status_url, &[], &["retry-after", "x-progress"])?;
        match status {
            200 => {
                return serde_json::from_str(&text)
                    .context("the server's completion manifest is not JSON");
            }
            202 => {
                let mut headers = headers.into_iter();
                let wait = headers
                    .next()
                    .flatten()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(2)
                    .clamp(1, MAX_WAIT_SECS);
                if let Some(progress) = headers.next().flatten()
                    && progress != last_progress
                {
                    eprintln!("{progress}");
                    last_progress = progress;
                }
                std::thread::sleep(Duration::from_secs(wait));
            }
            other => bail!(
                "the export failed: the server answered {other}: {}",
                diagnostics(&text)
            ),
        }
    }
}

/// The last path segment of an output URL, as a local file name (`Patient.ndjson`).
fn file_name(url: &str) -> Result<&str> {
    let name = url.rsplit('/').next().unwrap_or_default();
    let valid = name.ends_with(".ndjson")
        && name.len() > ".ndjson".len()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !name.starts_with('.');
    if !valid {
        bail!("the manifest names an output file this command does not write");
    }
    Ok(name)
}

fn count_lines(path: &Path) -> Result<u64> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    for line in BufReader::new(file).split(b'\n') {
        if !line?.iter().all(u8::is_ascii_whitespace) {
            n += 1;
        }
    }
    Ok(n)
}

fn diagnostics(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["issue"][0]["diagnostics"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no details".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_urls_become_plain_file_names_only() {
        assert_eq!(
            file_name("https://h/export/j/Patient.ndjson").unwrap(),
            "Patient.ndjson"
        );
        for bad in [
            "https://h/export/j/..",
            "https://h/export/j/.ndjson",
            "https://h/export/j/a%2F..%2Fb.ndjson",
            "https://h/export/j/Patient.json",
        ] {
            assert!(file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kick_off_asks_for_what_was_given() {
        let o = Options {
            types: vec!["Patient".into(), "Observation".into()],
            since: Some("2024-01-01T00:00:00Z".into()),
            deidentify: true,
            shift_dates: false,
            link: None,
            group: None,
            patients: false,
        };
        assert_eq!(
            kick_off_path(&o).unwrap(),
            "/fhir/$export?_outputFormat=application%2Ffhir%2Bndjson&_type=Patient%2CObservation\
             &_since=2024%2D01%2D01T00%3A00%3A00Z&_deidentify=safe%2Dharbor"
        );
        let linked = Options {
            shift_dates: true,
            link: Some("study-7".into()),
            types: Vec::new(),
            since: None,
            ..o
        };
        assert_eq!(
            kick_off_path(&linked).unwrap(),
            "/fhir/$export?_outputFormat=application%2Ffhir%2Bndjson\
             &_deidentify=shifted%2Ddates&_deidentifyLink=study%2D7"
        );
    }
}
