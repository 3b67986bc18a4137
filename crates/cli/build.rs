//! Records, at build time, the exact dependency versions `carevault` is built from, for
//! `carevault version --deps` (text or a CycloneDX SBOM).
//!
//! Source: the workspace's `Cargo.lock` (the build uses exactly these versions; CI builds with
//! `--locked`), read with simple line parsing so the build needs no extra crates and no
//! `cargo metadata`. The list is the dependency closure of the `carevault` package in the
//! lockfile: normal and build dependencies, leaving out the dev-dependencies of workspace
//! crates (test-only code). `Cargo.lock` records neither target platforms nor dependency
//! kinds of registry crates, so the list errs on the side of inclusion: it may name a few
//! crates that are not compiled for this target (such as `windows-sys` on Linux) and build-time
//! tools (build scripts, proc macros). That is what an advisory check needs: nothing the
//! binary was built from is missing.
//!
//! Output: `$OUT_DIR/dependencies.rs`, included by `src/version.rs`: the `PACKAGES` table and
//! the `RUSTC`, `TARGET` and `PROFILE` the binary was built with.

// A build script speaks to Cargo through standard output.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

type Error = Box<dyn std::error::Error>;

/// One `[[package]]` entry of `Cargo.lock`.
#[derive(Debug, Default, Clone)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    /// As written: `name`, `name version` or `name version (source)`.
    dependencies: Vec<String>,
}

fn main() -> Result<(), Error> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let root_name = std::env::var("CARGO_PKG_NAME")?;

    let workspace = find_workspace_root(&manifest_dir)?;
    let lock_path = workspace.join("Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).map_err(|e| {
        format!(
            "carevault records its dependency versions from Cargo.lock, but cannot read {}: {e}",
            lock_path.display()
        )
    })?;
    let packages = parse_lockfile(&lock);

    // Dev-dependencies of workspace crates are test-only: find them in their manifests.
    let root_manifest = workspace.join("Cargo.toml");
    println!("cargo::rerun-if-changed={}", root_manifest.display());
    let root_text = std::fs::read_to_string(&root_manifest)?;
    let renames = workspace_renames(&root_text);
    let mut members = BTreeMap::new();
    for manifest in member_manifests(&workspace, &root_text)? {
        println!("cargo::rerun-if-changed={}", manifest.display());
        let text = std::fs::read_to_string(&manifest)?;
        if let Some(name) = package_name(&text) {
            members.insert(name, linked_dependencies(&text, &renames));
        }
    }

    let closure = dependency_closure(&packages, &root_name, &members)?;
    let mut code = render(&packages, &closure);

    // The toolchain, target and profile are part of what the binary was built from. (Constants
    // in the generated file, not `rustc-env`: Cargo also passes those to `cargo run` and tests,
    // and the server refuses unknown CAREVAULT_* variables.)
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let _ = writeln!(
        code,
        "pub const RUSTC: &str = {rustc_version:?};\n\
         pub const TARGET: &str = {target:?};\n\
         pub const PROFILE: &str = {profile:?};"
    );
    std::fs::write(out_dir.join("dependencies.rs"), code)?;
    Ok(())
}

/// The nearest ancestor (or self) with a `Cargo.lock` next to a `Cargo.toml`.
fn find_workspace_root(start: &Path) -> Result<PathBuf, Error> {
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file() && d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "no Cargo.lock above {}: carevault is built inside its workspace, whose \
                 Cargo.lock records the dependency versions `carevault version --deps` reports",
                start.display()
            )
            .into()
        })
}

fn parse_lockfile(text: &str) -> Vec<LockPackage> {
    let mut packages = Vec::new();
    let mut current: Option<LockPackage> = None;
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line == "[[package]]" {
            packages.extend(current.take());
            current = Some(LockPackage::default());
            in_deps = false;
            continue;
        }
        if line.starts_with('[') {
            // [metadata] or anything else after the packages.
            packages.extend(current.take());
            in_deps = false;
            continue;
        }
        let Some(pkg) = current.as_mut() else {
            continue;
        };
        if in_deps {
            if line.starts_with(']') {
                in_deps = false;
            } else if let Some(dep) = unquote(line.trim().trim_end_matches(',')) {
                pkg.dependencies.push(dep.to_owned());
            }
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        match key.trim() {
            "name" => pkg.name = unquote(value).unwrap_or_default().to_owned(),
            "version" => pkg.version = unquote(value).unwrap_or_default().to_owned(),
            "source" => pkg.source = unquote(value).map(str::to_owned),
            "checksum" => pkg.checksum = unquote(value).map(str::to_owned),
            "dependencies" => {
                let value = value.trim();
                if value == "[" {
                    in_deps = true;
                } else {
                    // A one-line array: ["a", "b 1.0"].
                    let inner = value.trim_start_matches('[').trim_end_matches(']');
                    pkg.dependencies.extend(
                        inner
                            .split(',')
                            .filter_map(|d| unquote(d.trim()))
                            .map(str::to_owned),
                    );
                }
            }
            _ => {}
        }
    }
    packages.extend(current);
    packages
}

fn unquote(s: &str) -> Option<&str> {
    s.trim().strip_prefix('"')?.strip_suffix('"')
}

/// The manifests of the workspace members listed in `members = [...]` (entries `dir` or `dir/*`).
fn member_manifests(workspace: &Path, root_manifest: &str) -> Result<Vec<PathBuf>, Error> {
    let mut in_workspace = false;
    let mut list = String::new();
    let mut collecting = false;
    for line in root_manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !collecting {
            in_workspace = trimmed == "[workspace]";
            continue;
        }
        if collecting {
            list.push_str(trimmed);
            if trimmed.contains(']') {
                break;
            }
        } else if in_workspace
            && let Some(rest) = trimmed.strip_prefix("members")
            && let Some(rest) = rest.trim_start().strip_prefix('=')
        {
            list.push_str(rest.trim());
            if rest.contains(']') {
                break;
            }
            collecting = true;
        }
    }
    let mut manifests = vec![workspace.join("Cargo.toml")];
    for entry in list
        .trim_start_matches('[')
        .split([',', ']'])
        .filter_map(unquote)
    {
        if let Some(dir) = entry.strip_suffix("/*") {
            let mut found: Vec<PathBuf> = std::fs::read_dir(workspace.join(dir))?
                .filter_map(|e| e.ok().map(|e| e.path().join("Cargo.toml")))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            manifests.extend(found);
        } else if entry.contains('*') {
            return Err(format!("workspace member pattern `{entry}` is not understood").into());
        } else {
            manifests.push(workspace.join(entry).join("Cargo.toml"));
        }
    }
    manifests.retain(|p| p.is_file());
    Ok(manifests)
}

fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_package = trimmed == "[package]";
        } else if in_package
            && let Some((key, value)) = trimmed.split_once('=')
            && key.trim() == "name"
        {
            return unquote(value).map(str::to_owned);
        }
    }
    None
}

/// `[workspace.dependencies]` entries that rename a package: `key = { package = "real" }`.
fn workspace_renames(root_manifest: &str) -> BTreeMap<String, String> {
    let mut renames = BTreeMap::new();
    for (section, key, rest) in manifest_entries(root_manifest) {
        if section == "workspace.dependencies"
            && let Some(real) = inline_package(rest)
        {
            renames.insert(key.to_owned(), real);
        }
    }
    renames
}

/// The packages a workspace member links or builds with: its `[dependencies]` and
/// `[build-dependencies]`, including the `[target.*.]` and `[dependencies.name]` forms, but
/// not its `[dev-dependencies]`.
fn linked_dependencies(manifest: &str, renames: &BTreeMap<String, String>) -> BTreeSet<String> {
    let entries = manifest_entries(manifest);
    let mut names = BTreeSet::new();
    for (section, key, value) in &entries {
        match dependency_section(section) {
            Some(("dependencies" | "build-dependencies", None)) => {
                let real = inline_package(value)
                    .or_else(|| renames.get(*key).cloned())
                    .unwrap_or_else(|| (*key).to_owned());
                names.insert(real);
            }
            Some(("dependencies" | "build-dependencies", Some(dep))) => {
                // [dependencies.name]: the section names the dependency; `package` renames it.
                let package = entries
                    .iter()
                    .find(|(s, k, _)| s == section && *k == "package")
                    .and_then(|(_, _, v)| unquote(v).map(str::to_owned));
                let real = package
                    .or_else(|| renames.get(dep).cloned())
                    .unwrap_or_else(|| dep.to_owned());
                names.insert(real);
            }
            _ => {}
        }
    }
    names
}

/// For a dependency section (`dependencies`, `target.'cfg(unix)'.build-dependencies`,
/// `dev-dependencies.foo`...), its kind and, in the table form, the dependency's key.
fn dependency_section(section: &str) -> Option<(&'static str, Option<&str>)> {
    const KINDS: [&str; 3] = ["build-dependencies", "dev-dependencies", "dependencies"];
    let rest = if section.starts_with("target.") {
        let at = KINDS
            .iter()
            .filter_map(|k| section.find(&format!(".{k}")))
            .min()?;
        &section[at + 1..]
    } else {
        section
    };
    KINDS.iter().find_map(|&kind| {
        if rest == kind {
            Some((kind, None))
        } else {
            let name = rest.strip_prefix(kind)?.strip_prefix('.')?;
            Some((kind, Some(name.trim_matches('"'))))
        }
    })
}

/// `(section, key, value)` for each `key = value` line; a dotted key `a.workspace = true` gives
/// key `a`. Sections are returned without brackets.
fn manifest_entries(manifest: &str) -> Vec<(String, &str, &str)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in manifest.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(inner) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = inner.trim().to_owned();
            continue;
        }
        if let Some((key, rest)) = t.split_once('=') {
            let key = key.trim();
            let key = key
                .split('.')
                .next()
                .unwrap_or(key)
                .trim()
                .trim_matches('"');
            if key.is_empty() || key.contains(' ') {
                continue;
            }
            entries.push((section.clone(), key, rest.trim()));
        }
    }
    entries
}

/// `{ package = "real", ... }` -> `real`.
fn inline_package(value: &str) -> Option<String> {
    let inner = value.trim().strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == "package").then(|| unquote(v).map(str::to_owned))?
    })
}

/// Indexes into `packages` of everything `root` is built from, `root` first, then by name.
fn dependency_closure(
    packages: &[LockPackage],
    root: &str,
    members: &BTreeMap<String, BTreeSet<String>>,
) -> Result<Vec<usize>, Error> {
    let root_index = packages
        .iter()
        .position(|p| p.name == root && p.source.is_none())
        .ok_or_else(|| format!("package {root} is not in Cargo.lock"))?;
    let mut seen = BTreeSet::from([root_index]);
    let mut queue = VecDeque::from([root_index]);
    while let Some(i) = queue.pop_front() {
        let pkg = &packages[i];
        // For a workspace crate, skip its dev-dependencies.
        let linked = pkg
            .source
            .is_none()
            .then(|| members.get(&pkg.name))
            .flatten();
        for dep in &pkg.dependencies {
            let j = resolve(packages, dep)
                .ok_or_else(|| format!("Cargo.lock: {} depends on unknown {dep}", pkg.name))?;
            if let Some(linked) = linked
                && !linked.contains(&packages[j].name)
            {
                continue;
            }
            if seen.insert(j) {
                queue.push_back(j);
            }
        }
    }
    let mut order: Vec<usize> = seen.into_iter().filter(|&i| i != root_index).collect();
    order.sort_by(|&a, &b| {
        (&packages[a].name, &packages[a].version).cmp(&(&packages[b].name, &packages[b].version))
    });
    order.insert(0, root_index);
    Ok(order)
}

/// A lockfile dependency reference: `name`, `name version`, or `name version (source)`.
fn resolve(packages: &[LockPackage], reference: &str) -> Option<usize> {
    let mut parts = reference.splitn(3, ' ');
    let name = parts.next()?;
    let version = parts.next();
    let source = parts
        .next()
        .map(|s| s.trim_start_matches('(').trim_end_matches(')'));
    packages.iter().position(|p| {
        p.name == name
            && version.is_none_or(|v| p.version == v)
            && source.is_none_or(|s| p.source.as_deref() == Some(s))
    })
}

/// Rust source for the static table in `src/version.rs`.
fn render(packages: &[LockPackage], closure: &[usize]) -> String {
    let position: BTreeMap<usize, usize> = closure
        .iter()
        .enumerate()
        .map(|(pos, &i)| (i, pos))
        .collect();
    let mut code = String::from(
        "// @generated by crates/cli/build.rs from Cargo.lock. Index 0 is carevault itself.\n\
         pub static PACKAGES: &[Package] = &[\n",
    );
    for &i in closure {
        let p = &packages[i];
        let mut deps: Vec<usize> = p
            .dependencies
            .iter()
            .filter_map(|d| resolve(packages, d))
            .filter_map(|j| position.get(&j).copied())
            .collect();
        deps.sort_unstable();
        deps.dedup();
        let _ = writeln!(
            code,
            "    Package {{ name: {:?}, version: {:?}, source: {:?}, checksum: {:?}, dependencies: &{:?} }},",
            p.name, p.version, p.source, p.checksum, deps
        );
    }
    code.push_str("];\n");
    code
}
