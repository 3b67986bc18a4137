//! Environment tiers: fixed at init, shown in the banner, `whoami`, metrics and every audit
//! event; a production environment refuses plain HTTP and an unsealed key file; production data
//! reaches another tier only as a de-identified export.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use carevault_testkit::{TestServer, key_provider, output_text};
use serde_json::json;

use crate::{bin, observation, patient};

fn init(data: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["init", "--data-dir", data.to_str().unwrap()])
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR")
        .env_remove("CAREVAULT_DATABASE_URL");
    // On the PostgreSQL pass, a fresh database of its own.
    let database = (carevault_testkit::backend() == carevault_testkit::Backend::Postgres)
        .then(carevault_testkit::TestDatabase::create);
    if let Some(db) = &database {
        cmd.env("CAREVAULT_DATABASE_URL", &db.url);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub(crate) fn passphrase_file(dir: &Path) -> String {
    let file = dir.join("kek-passphrase");
    std::fs::write(&file, "a long enough test passphrase for the KEK files\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn a_production_environment_refuses_plain_http_and_an_unsealed_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = passphrase_file(tmp.path());
    let prod = [("CAREVAULT_ENVIRONMENT_TIER", "production")];
    if key_provider() == "file" {
        let out = init(&tmp.path().join("a"), &prod);
        assert!(!out.status.success());
        assert!(
            output_text(&out).contains("refuses the file key provider without a passphrase"),
            "{}",
            output_text(&out)
        );
    }
    let out = init(
        &tmp.path().join("b"),
        &[
            prod[0],
            ("CAREVAULT_KEY_PASSPHRASE_FILE", &pass),
            ("CAREVAULT_ALLOW_PLAIN_HTTP", "true"),
            ("CAREVAULT_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("refuses allow_plain_http"),
        "{}",
        output_text(&out)
    );
    // Nothing was made: the refusals come before the environment exists.
    assert!(!tmp.path().join("b").join("environment.json").exists());
    let bad = init(
        &tmp.path().join("c"),
        &[("CAREVAULT_ENVIRONMENT_TIER", "prod")],
    );
    assert!(!bad.status.success());
    assert!(output_text(&bad).contains("environment.tier"));
}

#[test]
fn the_tier_is_fixed_at_init_and_shown_in_the_banner_whoami_metrics_and_every_audit_event() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = passphrase_file(tmp.path());
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_ENVIRONMENT_TIER", "production"),
            ("CAREVAULT_KEY_PASSPHRASE_FILE", &pass),
        ],
    );
    assert!(
        srv.output().contains("(tier production)"),
        "{}",
        srv.output()
    );
    let admin = srv.admin();
    assert_eq!(
        admin.api.get("/auth/whoami").json()["environment_tier"],
        "production"
    );
    let auditor = srv.user(&admin, "ann.tiers", &["auditor"], None);
    let metrics = auditor.api.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("carevault_environment_info{tier=\"production\"} 1")
    );
    // Every audit event names the tier.
    let stamped = if srv.is_postgres() {
        "SELECT COUNT(*) FROM audit_event WHERE position('\"environment_tier\":\"production\"' \
         IN convert_from(body, 'UTF8')) > 0"
    } else {
        "SELECT COUNT(*) FROM audit_event \
         WHERE instr(CAST(body AS TEXT), '\"environment_tier\":\"production\"') > 0"
    };
    let all = srv.query_i64("SELECT COUNT(*) FROM audit_event");
    assert!(all > 3);
    assert_eq!(srv.query_i64(stamped), all);
    // The tier cannot be changed by configuration afterwards.
    let changed = srv
        .command(bin())
        .args(["admin", "recover", "--data-dir"])
        .arg(srv.ca_pem().parent().unwrap().parent().unwrap())
        .env("CAREVAULT_ENVIRONMENT_TIER", "development")
        .output()
        .unwrap();
    assert!(!changed.status.success());
    assert!(
        output_text(&changed).contains("environment.tier is fixed"),
        "{}",
        output_text(&changed)
    );
}

#[test]
fn production_data_reaches_a_development_environment_only_de_identified() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = passphrase_file(tmp.path());
    let prod = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_ENVIRONMENT_TIER", "production"),
            ("CAREVAULT_KEY_PASSPHRASE_FILE", &pass),
        ],
    );
    let admin = prod.admin();
    let clin = prod.user(&admin, "dr.tiers", &["clinician"], Some("org-a"));
    let p = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Production", "Pat"));
    let p = p.json()["id"].as_str().unwrap().to_owned();
    clin.api
        .post_fhir("/fhir/Observation", &observation(&p, "prod note"));
    let key = admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "exp", "scopes": ["system/*.rs"]}),
    );
    let key_file = tmp.path().join("exp.key");
    std::fs::write(&key_file, key.json()["key"].as_str().unwrap()).unwrap();
    let out = tmp.path().join("prod-export");
    let exported = crate::export::cli(
        &prod,
        &key_file,
        tmp.path(),
        &["export", out.to_str().unwrap()],
    );
    assert!(exported.status.success(), "{}", output_text(&exported));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["extension"]["environmentTier"], "production");
    assert_eq!(manifest["extension"]["deidentified"], false);

    let dev = TestServer::start(bin());
    let dev_admin = dev.admin();
    let key = dev_admin.api.post_json(
        "/admin/api-keys",
        &json!({"name": "imp", "scopes": ["system/*.crus"]}),
    );
    let import_key = tmp.path().join("imp.key");
    std::fs::write(&import_key, key.json()["key"].as_str().unwrap()).unwrap();
    let refused = crate::export::cli(
        &dev,
        &import_key,
        &tmp.path().join("cli2"),
        &["import", out.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("not de-identified"),
        "{}",
        output_text(&refused)
    );
    // Editing the manifest to claim otherwise breaks its signature.
    let mut forged = manifest.clone();
    forged["extension"]["deidentified"] = true.into();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    let refused = crate::export::cli(
        &dev,
        &import_key,
        &tmp.path().join("cli3"),
        &["import", out.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("does not verify"),
        "{}",
        output_text(&refused)
    );
    let api = dev.api().with_token(key.json()["key"].as_str().unwrap());
    assert_eq!(api.get("/fhir/Patient?_summary=count").json()["total"], 0);

    // The same data exported de-identified is accepted, and arrives without its identifiers.
    let deidentified = tmp.path().join("prod-export-deid");
    let exported = crate::export::cli(
        &prod,
        &key_file,
        &tmp.path().join("cli4"),
        &["export", "--deidentify", deidentified.to_str().unwrap()],
    );
    assert!(exported.status.success(), "{}", output_text(&exported));
    let imported = crate::export::cli(
        &dev,
        &import_key,
        &tmp.path().join("cli5"),
        &["import", deidentified.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{}", output_text(&imported));
    assert_eq!(api.get("/fhir/Patient?_summary=count").json()["total"], 1);
    let everything = api.get("/fhir/Patient").text() + &api.get("/fhir/Observation").text();
    for identifying in ["Production", "prod note", p.as_str()] {
        assert!(!everything.contains(identifying), "{identifying} arrived");
    }
}
