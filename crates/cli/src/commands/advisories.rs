//! `carevault version --check --advisory-db DIR`: the advisories of a RustSec advisory
//! database (the directory `cargo deny` reads: `crates/NAME/RUSTSEC-*.md`, each opening with a
//! TOML block) that apply to the dependency versions compiled into this binary. An advisory
//! applies when the compiled-in version matches neither its `patched` nor its `unaffected`
//! ranges (semver requirements); withdrawn advisories are skipped.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Deserialize)]
struct AdvisoryFile {
    advisory: Advisory,
    #[serde(default)]
    versions: Versions,
}

#[derive(Deserialize)]
struct Advisory {
    id: String,
    package: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    informational: Option<String>,
    #[serde(default)]
    withdrawn: Option<String>,
}

#[derive(Default, Deserialize)]
struct Versions {
    #[serde(default)]
    patched: Vec<String>,
    #[serde(default)]
    unaffected: Vec<String>,
}

/// An advisory that applies to a compiled-in package.
#[derive(Debug)]
pub(crate) struct Applies {
    pub id: String,
    pub package: String,
    pub version: String,
    pub title: String,
    /// `vulnerability`, or the informational kind (`unmaintained`, `unsound`, ...).
    pub kind: String,
    pub patched: Vec<String>,
}

/// The advisories under `db` that apply to `packages` (name, version).
pub(crate) fn check(db: &Path, packages: &[(&str, &str)]) -> Result<Vec<Applies>> {
    let crates = db.join("crates");
    if !crates.is_dir() {
        bail!(
            "{} is not a RustSec advisory database (no crates/ directory in it)",
            db.display()
        );
    }
    let mut found = Vec::new();
    for &(name, version) in packages {
        let dir = crates.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let Ok(compiled) = semver::Version::parse(version) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "md"))
        {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed = front_matter(&text)
                .with_context(|| format!("{}: no TOML block", file.display()))?;
            let entry: AdvisoryFile = toml::from_str(parsed)
                .with_context(|| format!("{}: not an advisory", file.display()))?;
            if entry.advisory.withdrawn.is_some() || entry.advisory.package != name {
                continue;
            }
            let matches = |reqs: &[String]| -> Result<bool> {
                for r in reqs {
                    let req = semver::VersionReq::parse(r)
                        .with_context(|| format!("{}: version range `{r}`", file.display()))?;
                    if req.matches(&compiled) {
                        return Ok(true);
                    }
                }
                Ok(false)
            };
            if matches(&entry.versions.patched)? || matches(&entry.versions.unaffected)? {
                continue;
            }
            found.push(Applies {
                id: entry.advisory.id,
                package: name.to_owned(),
                version: version.to_owned(),
                title: entry.advisory.title.unwrap_or_else(|| title_of(&text)),
                kind: entry
                    .advisory
                    .informational
                    .unwrap_or_else(|| "vulnerability".to_owned()),
                patched: entry.versions.patched,
            });
        }
    }
    Ok(found)
}

/// The TOML between the opening ```toml fence and the next ```.
fn front_matter(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("```toml")?;
    rest.split_once("```").map(|(toml, _)| toml)
}

/// The first Markdown heading after the TOML block.
fn title_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("")
        .trim()
        .to_owned()
}
