//! The harness end to end on a tiny population: every workload runs against a real CareVault
//! (TLS, sessions, authorization, encryption, audit) and the baseline, and the report says what
//! it measured. Figures are not asserted (a debug build on a shared machine); that each workload
//! ran without an error, and that the report is whole and consistent, is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use carevault_testkit::output_text;
use serde_json::Value;

/// The carevault binary, built next to this one by the README's test command
/// (`cargo nextest run --workspace` builds every package's binaries).
fn carevault() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_carevault-bench")).with_file_name("carevault");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (`cargo nextest run --workspace`) or `cargo build -p carevault` first",
        bin.display()
    );
    bin
}

/// A population and a run short enough for a debug build.
const TINY: [&str; 8] = [
    "--patients",
    "16",
    "--organizations",
    "2",
    "--seconds",
    "1",
    "--warmup-seconds",
    "0",
];

fn bench(work: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carevault-bench"))
        .arg("run")
        .arg("--bin")
        .arg(carevault())
        .arg("--work-dir")
        .arg(work)
        .args(args)
        .output()
        .unwrap()
}

fn number(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v}"))
}

/// Resources `carevault seed` wrote: one per NDJSON line.
fn seeded_resources(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .sum()
}

#[test]
fn a_workload_list_that_cannot_run_is_refused_before_anything_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    for (workloads, expect) in [
        ("read,reed", "unknown workload reed"),
        ("baseline-read,read", "list baseline workloads last"),
        ("baseline-mixed", "reads only"),
    ] {
        let out = bench(&work, &["--workloads", workloads]);
        let printed = output_text(&out);
        assert!(!out.status.success(), "{workloads}: {printed}");
        assert!(printed.contains(expect), "{workloads}: {printed}");
        assert!(!work.exists(), "{workloads}: the work directory was made");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_carevault-bench"))
        .args(["run", "--bin"])
        .arg(dir.path().join("no-such-binary"))
        .output()
        .unwrap();
    let printed = output_text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("cargo build --profile profiling"),
        "{printed}"
    );
}

#[test]
fn every_workload_runs_without_an_error_and_the_report_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let report_file = dir.path().join("report.json");
    let out = bench(
        &work,
        &[
            &TINY[..],
            &[
                "--connections",
                "4",
                "--json",
                report_file.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let printed = output_text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("importing"), "{printed}");
    assert!(printed.contains("CPU s/1k req"), "{printed}");
    assert!(
        printed.contains("read by id, CareVault / baseline throughput"),
        "{printed}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["patients"], 16);

    // The import loaded every seeded resource through the API.
    let seeded = seeded_resources(&work.join("seed-16-1"));
    assert!(seeded > 16, "{seeded}");
    assert_eq!(number(&report, "/import/resources") as usize, seeded);
    assert!(number(&report, "/import/resources_per_s") > 0.0);
    assert!(
        number(&report, "/startup_ms/first_answer") >= number(&report, "/startup_ms/listening")
    );

    let rows = report["workloads"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "read",
            "vread",
            "search-patient",
            "search-name",
            "search-encounter",
            "search-chain",
            "create",
            "update",
            "transaction",
            "mixed",
            "baseline-read"
        ]
    );
    for row in rows {
        let name = &row["name"];
        assert_eq!(row["errors"], 0, "{name}: {row}");
        assert!(number(row, "/ok") >= 1.0, "{name}: {row}");
        assert!(number(row, "/requests_per_s") > 0.0, "{name}: {row}");
        let (p50, p90, p99) = (
            number(row, "/p50_ms"),
            number(row, "/p90_ms"),
            number(row, "/p99_ms"),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{name}: {row}");
        assert!(number(row, "/server_peak_rss_mib") > 1.0, "{name}: {row}");
    }
    // The workloads' traffic is benign: no injection, credential, enumeration or integrity
    // rule fires. Only the volume rules may (`bulk.*`): one clinician's token stands for a
    // whole clinic's staff, so at load-test rates it reads like bulk access by design.
    assert_eq!(report["detection"], true);
    let alerts = report["alerts_raised"]
        .as_object()
        .expect("alerts were read");
    assert!(
        alerts.keys().all(|rule| rule.starts_with("bulk.")),
        "benign workloads raised {alerts:?}"
    );
    let read = number(&rows[0], "/requests_per_s");
    let baseline_row = rows.iter().find(|r| r["name"] == "baseline-read").unwrap();
    let baseline = number(baseline_row, "/requests_per_s");
    let ratio = number(&report, "/read_vs_baseline");
    assert!((ratio - read / baseline).abs() < 1e-9, "{report}");

    // A later run on the same work directory reuses the data and the accounts; `everything`
    // (not in the default list) answers each clinician's patients whole; `--export` exports
    // every seeded resource, plain and de-identified.
    let again = bench(
        &work,
        &[
            &TINY[..],
            &[
                "--connections",
                "2",
                "--workloads",
                "read,everything",
                "--export",
            ],
            &["--json", report_file.to_str().unwrap()],
        ]
        .concat(),
    );
    let printed = output_text(&again);
    assert!(again.status.success(), "{printed}");
    assert!(!printed.contains("importing"), "{printed}");
    assert_eq!(printed.matches("\"errors\": 0").count(), 2, "{printed}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let exports = report["exports"].as_array().unwrap();
    let names: Vec<&str> = exports
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["export", "export-deid"]);
    // Everything: the seeded resources and those the first run's writes added.
    assert_eq!(exports[0]["resources"], exports[1]["resources"]);
    for e in exports {
        assert!(number(e, "/resources") as usize > seeded, "{e}");
        assert!(number(e, "/resources_per_s") > 0.0, "{e}");
        assert!(number(e, "/server_peak_rss_mib") > 1.0, "{e}");
    }
}
