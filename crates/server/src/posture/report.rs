//! The report's forms: text (one line per check), JSON (`vendor/posture/report.schema.json`)
//! and SARIF 2.1.0 (for CI dashboards; it validates against the OASIS schema in `vendor/sarif/`).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{CHECKS, Report, Status};

/// One line per check: status, id, what was found, the fix, the checklist item and the HIPAA
/// section; then the totals.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let _ = write!(out, "{:<4} {:<18} {}", f.status.as_str(), f.id, f.found);
        if !f.fix.is_empty() {
            let _ = write!(out, " | fix: {}", f.fix);
        }
        let _ = writeln!(out, " | {}; HIPAA {}", f.checklist, f.hipaa);
    }
    let _ = writeln!(
        out,
        "{} pass, {} warn, {} fail ({} tier)",
        report.count(Status::Pass),
        report.count(Status::Warn),
        report.count(Status::Fail),
        report.tier
    );
    out
}

/// The report as JSON, with totals.
pub fn json(report: &Report) -> Value {
    json!({
        "tool": "carevault doctor",
        "version": env!("CARGO_PKG_VERSION"),
        "tier": report.tier,
        "generated_at": report.generated_at,
        "summary": {
            "pass": report.count(Status::Pass),
            "warn": report.count(Status::Warn),
            "fail": report.count(Status::Fail),
        },
        "findings": report.findings,
    })
}

/// The report as a SARIF 2.1.0 log: one rule per check, one result per finding (a pass is a
/// result of kind `pass`, so dashboards see what was checked, not only what failed).
pub fn sarif(report: &Report) -> Value {
    let rules: Vec<Value> = CHECKS
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "name": c.id.replace('.', "_"),
                "shortDescription": {"text": c.title},
                "help": {"text": "docs/posture.md lists every check with its fix"},
                "properties": {"checklist": c.checklist, "hipaa": c.hipaa, "tags": ["security", "HIPAA"]},
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let (kind, level) = match f.status {
                Status::Pass => ("pass", "none"),
                Status::Warn => ("fail", "warning"),
                Status::Fail => ("fail", "error"),
            };
            let text = if f.fix.is_empty() {
                f.found.clone()
            } else {
                format!("{} Fix: {}", f.found, f.fix)
            };
            json!({
                "ruleId": f.id,
                "ruleIndex": CHECKS.iter().position(|c| c.id == f.id).unwrap_or(0),
                "kind": kind,
                "level": level,
                "message": {"text": text},
                "properties": {"status": f.status, "fix": f.fix, "checklist": f.checklist, "hipaa": f.hipaa},
            })
        })
        .collect();
    json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "carevault doctor",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{"executionSuccessful": true, "endTimeUtc": report.generated_at}],
            "properties": {"tier": report.tier},
            "results": results,
        }],
    })
}
