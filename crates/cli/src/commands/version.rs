//! `carevault version [--deps] [--format text|cyclonedx]`: what this binary was built from, so
//! an operator can check a deployment against advisories published after it was built.
//!
//! The dependency list is recorded at build time from `Cargo.lock` by `build.rs` (see there for
//! exactly what it covers): the dependency closure of `carevault`, workspace crates'
//! dev-dependencies left out, all target platforms included.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

/// A package the binary was built from, as `build.rs` read it from `Cargo.lock`.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// `None` for the workspace's own crates.
    pub source: Option<&'static str>,
    /// SHA-256 of the `.crate` file, for registry packages.
    pub checksum: Option<&'static str>,
    /// Indexes into [`PACKAGES`].
    pub dependencies: &'static [usize],
}

// `PACKAGES` (index 0 is carevault itself, then its dependencies sorted by name and version),
// and the `RUSTC` version, `TARGET` and `PROFILE` of the build.
include!(concat!(env!("OUT_DIR"), "/dependencies.rs"));

const CRATES_IO: [&str; 2] = [
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
];

#[derive(Args, Clone, Debug)]
pub struct VersionArgs {
    /// Also list every dependency the binary was built from, with its exact version.
    #[arg(long)]
    deps: bool,
    /// `text`, or `cyclonedx` for a CycloneDX 1.5 JSON SBOM (always includes the dependencies).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Check the compiled-in dependency versions against the advisory database of
    /// --advisory-db; non-zero exit status when a vulnerability applies.
    #[arg(long, requires = "advisory_db")]
    check: bool,
    /// A RustSec advisory database directory (the one `cargo deny` reads).
    #[arg(long)]
    advisory_db: Option<std::path::PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Cyclonedx,
}

pub fn run(args: &VersionArgs) -> Result<()> {
    if args.check {
        return check(args.advisory_db.as_deref());
    }
    let out = match args.format {
        Format::Text => text(args.deps),
        Format::Cyclonedx => {
            let mut json =
                serde_json::to_string_pretty(&cyclonedx()).context("cannot serialize the SBOM")?;
            json.push('\n');
            json
        }
    };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        // `carevault version --deps | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

/// `version --check`: the advisories that apply to this build, one line each.
fn check(db: Option<&std::path::Path>) -> Result<()> {
    let Some(db) = db else {
        anyhow::bail!("--check needs --advisory-db DIR (a RustSec advisory database)");
    };
    let packages: Vec<(&str, &str)> = PACKAGES[1..]
        .iter()
        .filter(|p| is_crates_io(p))
        .map(|p| (p.name, p.version))
        .collect();
    let found = super::advisories::check(db, &packages)?;
    let mut out = String::new();
    for a in &found {
        let patched = if a.patched.is_empty() {
            "no patched version".to_owned()
        } else {
            format!("patched: {}", a.patched.join(", "))
        };
        let _ = writeln!(
            out,
            "{} {} {} ({}): {} [{patched}]",
            a.id, a.package, a.version, a.kind, a.title
        );
    }
    let vulnerable = found.iter().filter(|a| a.kind == "vulnerability").count();
    let _ = writeln!(
        out,
        "{} advisories apply to {} {} ({vulnerable} vulnerabilities) among {} packages checked",
        found.len(),
        root().name,
        root().version,
        packages.len()
    );
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write to standard output")?;
    if vulnerable > 0 {
        anyhow::bail!("{vulnerable} known vulnerabilities in this build: update it");
    }
    Ok(())
}

fn root() -> &'static Package {
    &PACKAGES[0]
}

fn is_crates_io(p: &Package) -> bool {
    p.source.is_some_and(|s| CRATES_IO.contains(&s))
}

fn text(deps: bool) -> String {
    let mut out = format!(
        "{} {}\nbuilt with {RUSTC} for {TARGET} ({PROFILE} profile)\n",
        root().name,
        root().version
    );
    if deps {
        let _ = writeln!(
            out,
            "# {} packages, exact versions from Cargo.lock: the dependency closure of {} \
             (a superset of what is linked: it may name crates used only on other platforms \
             or with other features); source crates.io unless shown",
            PACKAGES.len() - 1,
            root().name
        );
        for p in &PACKAGES[1..] {
            let _ = match p.source {
                _ if is_crates_io(p) => writeln!(out, "{} {}", p.name, p.version),
                None => writeln!(out, "{} {} (workspace)", p.name, p.version),
                Some(source) => writeln!(out, "{} {} ({source})", p.name, p.version),
            };
        }
    }
    out
}

/// A reference unique within the SBOM: the package URL for crates.io packages.
fn bom_ref(p: &Package) -> String {
    match purl(p) {
        Some(purl) => purl,
        None => format!("{}@{}", p.name, p.version),
    }
}

/// `pkg:cargo/NAME@VERSION` (the purl type `cargo` means crates.io).
fn purl(p: &Package) -> Option<String> {
    is_crates_io(p).then(|| format!("pkg:cargo/{}@{}", p.name, purl_escape(p.version)))
}

fn purl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b".-_~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn component(p: &Package, kind: &str) -> Value {
    let mut c = json!({
        "type": kind,
        "bom-ref": bom_ref(p),
        "name": p.name,
        "version": p.version,
    });
    if let Some(purl) = purl(p) {
        c["purl"] = json!(purl);
    }
    if let Some(sum) = p.checksum {
        c["hashes"] = json!([{ "alg": "SHA-256", "content": sum }]);
    }
    match p.source {
        None => c["properties"] = json!([{ "name": "cargo:source", "value": "workspace" }]),
        Some(source) if !is_crates_io(p) => {
            c["properties"] = json!([{ "name": "cargo:source", "value": source }]);
        }
        Some(_) => {}
    }
    c
}

/// A CycloneDX 1.5 SBOM: the binary as the described component, every package it was built
/// from as a component, and the dependency graph between them.
fn cyclonedx() -> Value {
    let mut app = component(root(), "application");
    app["properties"] = json!([
        { "name": "cargo:source", "value": "workspace" },
        { "name": "carevault:build:rustc", "value": RUSTC },
        { "name": "carevault:build:target", "value": TARGET },
        { "name": "carevault:build:profile", "value": PROFILE },
        { "name": "carevault:dependencies", "value": "the dependency closure of carevault in \
            Cargo.lock: a superset of what is linked (may include crates used only on other \
            platforms or with other features)" },
    ]);
    let components: Vec<Value> = PACKAGES[1..]
        .iter()
        .map(|p| component(p, "library"))
        .collect();
    let dependencies: Vec<Value> = PACKAGES
        .iter()
        .map(|p| {
            let on: Vec<String> = p
                .dependencies
                .iter()
                .filter_map(|&i| PACKAGES.get(i))
                .map(bom_ref)
                .collect();
            json!({ "ref": bom_ref(p), "dependsOn": on })
        })
        .collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "tools": {
                "components": [{
                    "type": "application",
                    "name": root().name,
                    "version": root().version,
                }],
            },
            "component": app,
        },
        "components": components,
        "dependencies": dependencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn find(name: &str) -> Option<&'static Package> {
        PACKAGES.iter().find(|p| p.name == name)
    }

    #[test]
    fn root_is_this_crate() {
        assert_eq!(root().name, "carevault");
        assert_eq!(root().version, env!("CARGO_PKG_VERSION"));
        assert!(root().source.is_none());
    }

    #[test]
    fn lists_direct_and_transitive_dependencies_but_not_test_only_ones() {
        for name in [
            "clap",
            "serde_json",
            "carevault-server",
            "rustls",
            "ring",
            "rusqlite",
        ] {
            assert!(find(name).is_some(), "{name} is missing");
        }
        // Dev-dependencies of the workspace crates only build tests.
        assert!(find("carevault-testkit").is_none());
        let names: BTreeSet<_> = PACKAGES.iter().map(|p| (p.name, p.version)).collect();
        assert_eq!(names.len(), PACKAGES.len(), "a package is listed twice");
    }

    /// The versions are exactly those in Cargo.lock.
    #[test]
    fn versions_match_the_lockfile() {
        let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
        let lock = std::fs::read_to_string(lock_path).unwrap();
        let mut locked: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
        let mut name = String::new();
        let mut version = String::new();
        for line in lock.lines() {
            let value = |l: &str| l.split('"').nth(1).unwrap_or_default().to_owned();
            if line.starts_with("name = ") {
                name = value(line);
            } else if line.starts_with("version = ") {
                version = value(line);
                locked.insert((name.clone(), version.clone()), None);
            } else if line.starts_with("checksum = ") {
                locked.insert((name.clone(), version.clone()), Some(value(line)));
            }
        }
        for p in PACKAGES {
            let key = (p.name.to_owned(), p.version.to_owned());
            let checksum = locked.get(&key);
            assert!(
                checksum.is_some(),
                "{} {} is not in Cargo.lock",
                p.name,
                p.version
            );
            assert_eq!(
                checksum.cloned().flatten().as_deref(),
                p.checksum,
                "{}",
                p.name
            );
        }
        for p in PACKAGES.iter().filter(|p| is_crates_io(p)) {
            assert_eq!(
                p.checksum.map(str::len),
                Some(64),
                "{} has no checksum",
                p.name
            );
        }
    }

    #[test]
    fn text_lists_every_dependency() {
        let out = text(true);
        assert!(out.starts_with(&format!("carevault {}\n", env!("CARGO_PKG_VERSION"))));
        let ring = find("ring").unwrap();
        assert!(out.contains(&format!("\nring {}\n", ring.version)));
        assert!(out.contains("\ncarevault-server 0.1.0 (workspace)\n"));
        assert_eq!(out.lines().count(), 3 + PACKAGES.len() - 1);
        assert!(!text(false).contains("ring"));
    }

    #[test]
    fn cyclonedx_is_a_consistent_sbom() {
        let bom = cyclonedx();
        assert_eq!(bom["bomFormat"], "CycloneDX");
        assert_eq!(bom["specVersion"], "1.5");
        assert_eq!(bom["metadata"]["component"]["name"], "carevault");
        let components = bom["components"].as_array().unwrap();
        assert_eq!(components.len(), PACKAGES.len() - 1);
        let mut refs: BTreeSet<&str> = components
            .iter()
            .map(|c| c["bom-ref"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), components.len(), "bom-refs are unique");
        refs.insert(bom["metadata"]["component"]["bom-ref"].as_str().unwrap());
        let ring = find("ring").unwrap();
        let c = components.iter().find(|c| c["name"] == "ring").unwrap();
        assert_eq!(c["purl"], format!("pkg:cargo/ring@{}", ring.version));
        assert_eq!(c["hashes"][0]["alg"], "SHA-256");
        assert_eq!(c["hashes"][0]["content"], ring.checksum.unwrap());
        let deps = bom["dependencies"].as_array().unwrap();
        assert_eq!(deps.len(), PACKAGES.len());
        for d in deps {
            assert!(refs.contains(d["ref"].as_str().unwrap()));
            for on in d["dependsOn"].as_array().unwrap() {
                assert!(refs.contains(on.as_str().unwrap()), "dangling {on}");
            }
        }
        let root_deps = &deps[0]["dependsOn"];
        assert!(
            root_deps
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "carevault-server@0.1.0")
        );
    }

    #[test]
    fn purl_versions_are_escaped() {
        assert_eq!(
            purl_escape("0.11.1+wasi-snapshot-preview1"),
            "0.11.1%2Bwasi-snapshot-preview1"
        );
        assert_eq!(purl_escape("1.0.0-rc.1"), "1.0.0-rc.1");
    }
}
