//! Where a bulk export came from, checked before anything of it is imported: its manifest's
//! `extension` names the source environment's tier and whether it was de-identified, signed by
//! that environment's audit key over the files' names, counts and SHA-256 digests. Into a
//! non-production environment, an export is accepted only with a signature that verifies, and
//! from a production environment only de-identified.

use std::path::Path;

use anyhow::{Context, Result, bail};
use carevault_server::export::{SignedOutput, manifest_statement, verify_manifest};
use serde_json::Value;

use crate::client::Client;

/// The bulk export manifest at `path` (a `manifest.json`, or a directory holding one), if any.
pub(super) fn manifest_at(path: &Path) -> Result<Option<Value>> {
    let file = if path.is_dir() {
        path.join("manifest.json")
    } else {
        path.to_path_buf()
    };
    if file.extension().and_then(|e| e.to_str()) != Some("json") || !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(serde_json::from_slice::<Value>(&text)
        .ok()
        .filter(|v| v.get("resourceType").is_none() && v["output"].is_array()))
}

/// Refuse a manifest the target environment may not take (see the module's doc). The target's
/// tier comes from the server (`whoami`); `source_key`, when given, is the audit public key
/// the export must be signed with.
pub(super) fn check(client: &Client, manifest: &Value, source_key: Option<&str>) -> Result<()> {
    let whoami = client.expect("GET", "/auth/whoami", None)?;
    let target = whoami["environment_tier"].as_str().unwrap_or("development");
    check_for(target, manifest, source_key)
}

fn check_for(target: &str, manifest: &Value, source_key: Option<&str>) -> Result<()> {
    let ext = &manifest["extension"];
    let signed = match (
        ext["environmentTier"].as_str(),
        ext["deidentified"].as_bool(),
        ext["publicKey"].as_str(),
        ext["signature"].as_str(),
    ) {
        (Some(tier), Some(deidentified), Some(key), Some(signature)) => {
            Some((tier, deidentified, key, signature))
        }
        _ => None,
    };
    let Some((tier, deidentified, key, signature)) = signed else {
        if target == "production" {
            return Ok(());
        }
        bail!(
            "this export's manifest is not signed by a CareVault environment, and a {target} \
             environment takes only signed exports (data from production only de-identified)"
        );
    };
    if let Some(expected) = source_key
        && !expected.eq_ignore_ascii_case(key)
    {
        bail!("this export is signed by another environment than --source-public-key names");
    }
    let outputs: Vec<(String, String, u64, String)> = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["type"].as_str().unwrap_or_default().to_owned(),
                o["url"]
                    .as_str()
                    .and_then(|u| u.rsplit('/').next())
                    .unwrap_or_default()
                    .to_owned(),
                o["count"].as_u64().unwrap_or_default(),
                o["extension"]["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    // Absent on a Safe Harbor export; the signature covers it either way.
    let dates_shifted = ext["dates"].as_str() == Some("shifted");
    let statement = manifest_statement(
        tier,
        deidentified,
        dates_shifted,
        manifest["transactionTime"].as_str().unwrap_or_default(),
        &outputs
            .iter()
            .map(|(rtype, file, count, sha256)| SignedOutput {
                rtype,
                file,
                count: *count,
                sha256,
            })
            .collect::<Vec<_>>(),
    );
    if !verify_manifest(&statement, key, signature) {
        bail!(
            "this export's manifest signature does not verify: the manifest was changed after the export"
        );
    }
    if target != "production" && tier == "production" && !deidentified {
        bail!(
            "this export comes from a production environment and is not de-identified: a \
             {target} environment takes production data only as a de-identified export \
             (carevault export --deidentify)"
        );
    }
    if target != "production" && tier == "production" && dates_shifted {
        bail!(
            "this export comes from a production environment with shifted dates, which is not \
             Safe Harbor de-identification: a {target} environment takes production data only \
             as a Safe Harbor export (carevault export --deidentify, without --shift-dates)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(tier: &str, deidentified: bool) -> Value {
        signed_with_dates(tier, deidentified, false)
    }

    fn signed_with_dates(tier: &str, deidentified: bool, dates_shifted: bool) -> Value {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let statement = manifest_statement(
            tier,
            deidentified,
            dates_shifted,
            "2026-01-01T00:00:00.000000Z",
            &[SignedOutput {
                rtype: "Patient",
                file: "Patient.ndjson",
                count: 2,
                sha256: "aa",
            }],
        );
        let mut manifest = serde_json::json!({
            "output": [{"type": "Patient", "url": "https://h/export/j/Patient.ndjson", "count": 2,
                        "extension": {"sha256": "aa"}}],
            "extension": {
                "environmentTier": tier,
                "deidentified": deidentified,
                "publicKey": hex::encode(key.verifying_key().to_bytes()),
                "signature": hex::encode(key.sign(statement.as_bytes()).to_bytes()),
            }
        });
        manifest["transactionTime"] = "2026-01-01T00:00:00.000000Z".into();
        if dates_shifted {
            manifest["extension"]["dates"] = "shifted".into();
        }
        manifest
    }

    #[test]
    fn production_data_reaches_other_tiers_only_de_identified_and_signed() {
        for target in ["development", "staging"] {
            assert!(check_for(target, &signed("production", true), None).is_ok());
            assert!(check_for(target, &signed("staging", false), None).is_ok());
            let err = check_for(target, &signed("production", false), None).unwrap_err();
            assert!(err.to_string().contains("not de-identified"), "{err}");
            // Claiming de-identification after the fact breaks the signature.
            let mut forged = signed("production", false);
            forged["extension"]["deidentified"] = true.into();
            let err = check_for(target, &forged, None).unwrap_err();
            assert!(err.to_string().contains("does not verify"), "{err}");
            let mut relabelled = signed("production", false);
            relabelled["extension"]["environmentTier"] = "development".into();
            assert!(check_for(target, &relabelled, None).is_err());
            let mut unsigned = signed("production", true);
            unsigned.as_object_mut().unwrap().remove("extension");
            assert!(check_for(target, &unsigned, None).is_err());
        }
        // Shifted dates are not Safe Harbor: refused from production, and the claim cannot be
        // dropped from the manifest without breaking its signature.
        let shifted = signed_with_dates("production", true, true);
        let err = check_for("development", &shifted, None).unwrap_err();
        assert!(err.to_string().contains("shifted dates"), "{err}");
        let mut hidden = shifted.clone();
        hidden["extension"].as_object_mut().unwrap().remove("dates");
        let err = check_for("development", &hidden, None).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert!(check_for("production", &shifted, None).is_ok());
        assert!(
            check_for(
                "development",
                &signed_with_dates("staging", true, true),
                None
            )
            .is_ok()
        );
        // Production takes its own data; a pinned source key must match.
        assert!(check_for("production", &signed("production", false), None).is_ok());
        let pinned = "00".repeat(32);
        assert!(check_for("production", &signed("production", false), Some(&pinned)).is_err());
    }
}
