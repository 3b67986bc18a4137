//! Bulk `$export` (HL7 Bulk Data Access IG v2) end to end: the async kick-off, polling, the
//! completion manifest, downloads only by the principal who started it, files that hold only
//! what that principal may read and are sealed at rest, cancellation, the audit event naming
//! the patients exported, the limits and refusals, and an export interrupted by a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use carevault_testkit::{Api, Reply, TestServer};
use serde_json::{Value, json};

use crate::{bin, observation, patient, server};

const ASYNC: &[(&str, &str)] = &[
    ("Prefer", "respond-async"),
    ("Accept", "application/fhir+json"),
];

fn create(api: &Api, body: &Value) -> String {
    let rtype = body["resourceType"].as_str().unwrap();
    let r = api.post_fhir(&format!("/fhir/{rtype}"), body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

fn kick_off(api: &Api, path: &str) -> Reply {
    api.request("GET", path, ASYNC, None)
}

/// Kick off, expecting 202; the status URL's path.
pub(crate) fn started(api: &Api, path: &str) -> String {
    let r = kick_off(api, path);
    assert_eq!(r.status, 202, "{path}: {}", r.text());
    let location = r.header("content-location").expect("Content-Location");
    assert!(location.starts_with("https://"), "{location}");
    location[location.find("/export/").unwrap()..].to_owned()
}

/// Poll until the export is done; the manifest.
pub(crate) fn manifest(api: &Api, status: &str) -> Value {
    for _ in 0..600 {
        let r = api.get(status);
        match r.status {
            202 => {
                assert!(r.header("x-progress").is_some());
                assert_eq!(r.header("retry-after"), Some("2"));
                std::thread::sleep(Duration::from_millis(100));
            }
            200 => {
                assert!(
                    r.header("content-type")
                        .unwrap()
                        .starts_with("application/json")
                );
                return r.json();
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    panic!("the export did not finish");
}

fn path_of(url: &str) -> &str {
    &url[url.find("/export/").unwrap()..]
}

/// Every output file's resources, by type.
pub(crate) fn downloaded(api: &Api, manifest: &Value) -> Vec<(String, Vec<Value>)> {
    manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let r = api.get(path_of(o["url"].as_str().unwrap()));
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
            let lines: Vec<Value> = r
                .text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap());
            for line in &lines {
                assert_eq!(line["resourceType"], o["type"]);
            }
            (o["type"].as_str().unwrap().to_owned(), lines)
        })
        .collect()
}

pub(crate) fn ids_of(files: &[(String, Vec<Value>)], rtype: &str) -> BTreeSet<String> {
    files
        .iter()
        .filter(|(t, _)| t == rtype)
        .flat_map(|(_, lines)| lines.iter())
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

#[test]
fn a_system_export_holds_what_its_principal_may_read_sealed_and_served_to_them_alone() {
    let srv = server();
    let admin = srv.admin();
    let clin_a = srv.user(&admin, "dr.export.a", &["clinician"], Some("org-a"));
    let clin_b = srv.user(&admin, "dr.export.b", &["clinician"], Some("org-b"));
    let auditor = srv.user(&admin, "ann.export", &["auditor"], None);
    let canary = "Canary-Export-Note-7f3a";
    let a1 = create(&clin_a.api, &patient("Exportable", "Ann"));
    let a2 = create(&clin_a.api, &patient("Exportable", "Bea"));
    let o1 = create(&clin_a.api, &observation(&a1, canary));
    let o2 = create(&clin_a.api, &observation(&a2, canary));
    let mut theirs = patient("Elsewhere", "Cid");
    theirs["managingOrganization"] = json!({"reference": "Organization/org-b"});
    let b1 = create(&clin_b.api, &theirs);
    create(&clin_b.api, &observation(&b1, canary));

    // The async pattern is required.
    let sync = clin_a.api.get("/fhir/$export");
    assert_eq!(sync.status, 400, "{}", sync.text());
    assert!(sync.diagnostics().contains("respond-async"));

    let status = started(
        &clin_a.api,
        "/fhir/$export?_type=Patient,Observation&_outputFormat=application%2Ffhir%2Bndjson",
    );
    let done = manifest(&clin_a.api, &status);
    assert_eq!(done["requiresAccessToken"], true);
    assert_eq!(done["error"], json!([]));
    assert!(
        done["request"]
            .as_str()
            .unwrap()
            .contains("/fhir/$export?_type=Patient,Observation")
    );
    assert!(done["transactionTime"].as_str().unwrap().ends_with('Z'));
    let files = downloaded(&clin_a.api, &done);
    assert_eq!(ids_of(&files, "Patient"), set(&[&a1, &a2]));
    assert_eq!(ids_of(&files, "Observation"), set(&[&o1, &o2]));

    // Sealed at rest: the finished files hold no plaintext.
    let at_rest = srv.at_rest();
    assert!(at_rest.iter().any(|(name, _)| name.contains("/exports/")));
    for (name, bytes) in &at_rest {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{name} holds the canary"
        );
    }

    // Only the principal who started it sees its status and files.
    let file = path_of(done["output"][0]["url"].as_str().unwrap()).to_owned();
    for other in [&clin_b.api, &auditor.api] {
        assert_eq!(other.get(&status).status, 404);
        assert_eq!(other.get(&file).status, 404);
        assert_eq!(other.delete(&status).status, 404);
    }
    assert_eq!(srv.api().get(&file).status, 401);
    assert_eq!(
        clin_a.api.get(&format!("{status}/Secret.ndjson")).status,
        404
    );

    // The background job's audit event names the patients it holds, and no one else.
    let named = |id: &str| {
        let r = auditor.api.get(&format!(
            "/audit/events?action=export.complete&patient={id}"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["entry"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(named(&a1), 1);
    assert_eq!(named(&a2), 1);
    assert_eq!(named(&b1), 0);

    // DELETE on the status URL deletes the job and its files.
    assert_eq!(clin_a.api.delete(&status).status, 202);
    assert_eq!(clin_a.api.get(&status).status, 404);
    assert_eq!(clin_a.api.get(&file).status, 404);
    assert!(
        !srv.at_rest()
            .iter()
            .any(|(name, _)| name.contains("/exports/"))
    );
}

#[test]
fn patient_and_group_levels_type_filters_and_since_choose_what_is_exported() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.export.levels", &["clinician"], Some("org-a"));
    let api = &clin.api;
    let p1 = create(api, &patient("Grouped", "Ann"));
    let p2 = create(api, &patient("Ungrouped", "Bea"));
    let o1 = create(api, &observation(&p1, "n1"));
    let o2 = create(api, &observation(&p2, "n2"));
    let mut bp = observation(&p2, "n3");
    bp["code"]["coding"][0]["code"] = json!("8480-6");
    create(api, &bp);
    let org = create(
        api,
        &json!({"resourceType": "Organization", "name": "Shared Clinic"}),
    );
    let group = create(
        api,
        &json!({"resourceType": "Group", "type": "person", "actual": true,
                "member": [{"entity": {"reference": format!("Patient/{p1}")}}]}),
    );

    // System level: the shared Organization too.
    let all = downloaded(
        api,
        &manifest(
            api,
            &started(api, "/fhir/$export?_type=Organization,Patient"),
        ),
    );
    assert_eq!(ids_of(&all, "Organization"), set(&[&org]));

    // Patient level: only what lives in a patient's compartment (the Group too: its member is
    // a patient, so the CompartmentDefinition files it in that patient's compartment).
    let patients = downloaded(api, &manifest(api, &started(api, "/fhir/Patient/$export")));
    assert!(ids_of(&patients, "Organization").is_empty());
    assert_eq!(ids_of(&patients, "Group"), set(&[&group]));
    assert_eq!(ids_of(&patients, "Patient"), set(&[&p1, &p2]));
    assert_eq!(ids_of(&patients, "Observation").len(), 3);

    // Group level: the members' data only.
    let members = downloaded(
        api,
        &manifest(api, &started(api, &format!("/fhir/Group/{group}/$export"))),
    );
    assert_eq!(ids_of(&members, "Patient"), set(&[&p1]));
    assert_eq!(ids_of(&members, "Observation"), set(&[&o1]));
    assert_eq!(
        kick_off(api, "/fhir/Group/no-such-group/$export").status,
        404
    );
    assert_eq!(kick_off(api, "/fhir/Observation/$export").status, 404);

    // _typeFilter: a search each resource of its type must match.
    let filtered = downloaded(
        api,
        &manifest(
            api,
            &started(
                api,
                "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcode%3D8867-4",
            ),
        ),
    );
    assert_eq!(ids_of(&filtered, "Observation"), set(&[&o1, &o2]));

    // _since in the future: nothing changed since, so no files.
    let none = manifest(
        api,
        &started(
            api,
            "/fhir/$export?_type=Patient&_since=2999-01-01T00:00:00Z",
        ),
    );
    assert_eq!(none["output"], json!([]));
}

#[test]
fn refusals_come_before_anything_starts() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_EXPORT_MAX_RESOURCES", "3")]);
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.export.limits", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "ann.export.limits", &["auditor"], None);
    let p1 = create(&clin.api, &patient("Limited", "Ann"));
    create(&clin.api, &patient("Limited", "Bea"));
    create(&clin.api, &observation(&p1, "n1"));
    create(&clin.api, &observation(&p1, "n2"));

    // A principal who may read no patient data: 403 before anything starts.
    assert_eq!(kick_off(&auditor.api, "/fhir/$export").status, 403);
    assert_eq!(
        kick_off(&auditor.api, "/fhir/$export?_type=Patient").status,
        403
    );
    assert_eq!(
        kick_off(&admin.api, "/fhir/$export?_type=Observation").status,
        403
    );
    // Over export.max_resources: 413, naming the key.
    let big = kick_off(&clin.api, "/fhir/$export?_type=Patient,Observation");
    assert_eq!(big.status, 413, "{}", big.text());
    assert!(big.diagnostics().contains("export.max_resources"));
    assert_eq!(
        kick_off(&clin.api, "/fhir/$export?_type=Patient").status,
        202
    );
    // Bad parameters.
    for bad in [
        "/fhir/$export?_type=NoSuchType",
        "/fhir/$export?_outputFormat=text%2Fcsv",
        "/fhir/$export?_since=yesterday",
        "/fhir/$export?_typeFilter=Observation",
        "/fhir/$export?_elements=id",
    ] {
        assert_eq!(kick_off(&clin.api, bad).status, 400, "{bad}");
    }
    // De-identification is Safe Harbor or nothing (the export itself: it::deid).
    assert_eq!(
        kick_off(&clin.api, "/fhir/$export?_deidentify=expert").status,
        400
    );
    assert_eq!(srv.api().get("/export/abc").status, 401);
    assert_eq!(clin.api.get("/export/abc").status, 404);
    assert_eq!(clin.api.get("/export/..%2F..%2Fkeys").status, 404);
}

#[test]
fn an_export_interrupted_by_a_restart_begins_again_and_completes() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.export.restart", &["clinician"], Some("org-a"));
    let mut made = BTreeSet::new();
    for i in 0..30 {
        made.insert(create(&clin.api, &patient("Restarted", &format!("P{i}"))));
    }
    let status = started(&clin.api, "/fhir/$export?_type=Patient");
    // Killed at once: the job is recorded running (or, on a fast machine, already complete).
    srv.kill();
    srv.restart(&[]);
    // Sessions live in the database: the same token polls the restarted server.
    let files = downloaded(&clin.api, &manifest(&clin.api, &status));
    assert_eq!(ids_of(&files, "Patient"), made);
}

/// A service key with `scopes`, written to a file for the CLI; and a client with it.
fn service_key(
    srv: &TestServer,
    admin: &carevault_testkit::Account,
    name: &str,
    scopes: &[&str],
    dir: &std::path::Path,
) -> (std::path::PathBuf, Api) {
    let key = admin
        .api
        .post_json("/admin/api-keys", &json!({"name": name, "scopes": scopes}));
    assert_eq!(key.status, 201, "{}", key.text());
    let key = key.json()["key"].as_str().unwrap().to_owned();
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, &key).unwrap();
    (file, srv.api().with_token(&key))
}

pub(crate) fn cli(
    srv: &TestServer,
    key: &std::path::Path,
    config: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .arg("--api-key-file")
        .arg(key)
        .args(["--server", &srv.base])
        .arg("--ca-cert")
        .arg(srv.ca_pem())
        .env("CAREVAULT_CLI_CONFIG_DIR", config)
        .output()
        .unwrap()
}

/// Everything of `rtype` a client may read, by id, without `meta` (versions and times differ
/// between servers).
fn contents(api: &Api, rtype: &str) -> std::collections::BTreeMap<String, Value> {
    let r = api.get(&format!("/fhir/{rtype}?_count=1000"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut resource = e["resource"].clone();
            resource.as_object_mut().unwrap().remove("meta");
            (resource["id"].as_str().unwrap().to_owned(), resource)
        })
        .collect()
}

#[test]
fn carevault_export_writes_the_files_and_manifest_that_import_loads_into_a_fresh_server() {
    let tmp = tempfile::tempdir().unwrap();
    let source = server();
    let admin = source.admin();
    let clin = source.user(&admin, "dr.export.cli", &["clinician"], Some("org-a"));
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = create(&clin.api, &patient("Roundtrip", &format!("P{i}")));
        create(&clin.api, &observation(&p, &format!("note {i}")));
        ids.push(p);
    }
    let (key, _) = service_key(&source, &admin, "exporter", &["system/*.rs"], tmp.path());
    let out = tmp.path().join("exported");
    let run = cli(
        &source,
        &key,
        tmp.path(),
        &[
            "export",
            out.to_str().unwrap(),
            "--type",
            "Patient,Observation",
        ],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("exported 10 resources in 2 files"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["output"].as_array().unwrap().len(), 2);
    use std::os::unix::fs::PermissionsExt;
    for name in ["manifest.json", "Patient.ndjson", "Observation.ndjson"] {
        let mode = std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} is readable by others");
    }
    // The CLI deleted the job on the server once the files were down.
    let status = manifest["output"][0]["url"].as_str().unwrap();
    let status = &status[status.find("/export/").unwrap()..status.rfind('/').unwrap()];
    let exporter = source
        .api()
        .with_token(std::fs::read_to_string(&key).unwrap().trim());
    assert_eq!(exporter.get(status).status, 404);
    // A second export into the same, now full, directory is refused.
    let again = cli(
        &source,
        &key,
        tmp.path(),
        &["export", out.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    // Import the export (its manifest) into a fresh server: the same resources.
    let target = server();
    let target_admin = target.admin();
    let (import_key, importer) = service_key(
        &target,
        &target_admin,
        "importer",
        &["system/*.crus"],
        tmp.path(),
    );
    let loaded = cli(
        &target,
        &import_key,
        &tmp.path().join("cli2"),
        &["import", out.join("manifest.json").to_str().unwrap()],
    );
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    for rtype in ["Patient", "Observation"] {
        let before = contents(&exporter, rtype);
        assert_eq!(before.len(), 5);
        assert_eq!(contents(&importer, rtype), before, "{rtype}");
    }

    // A file cut short is refused against the manifest's count before anything is sent.
    let lines = std::fs::read_to_string(out.join("Observation.ndjson")).unwrap();
    std::fs::write(
        out.join("Observation.ndjson"),
        lines.lines().next().unwrap(),
    )
    .unwrap();
    let third = server();
    let third_admin = third.admin();
    let (third_key, third_api) = service_key(
        &third,
        &third_admin,
        "importer3",
        &["system/*.crus"],
        tmp.path(),
    );
    let refused = cli(
        &third,
        &third_key,
        &tmp.path().join("cli3"),
        &["import", out.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the export's manifest says 5"));
    assert_eq!(contents(&third_api, "Patient").len(), 0);
}

/// A POST kick-off (the IG v2 permits it): parameters in the query with no body (as
/// `@medplum/core`'s `bulkExport` sends them), in a `Parameters` body, or both; the same
/// checks and refusals as a GET, and its own audit action.
#[test]
fn a_post_kick_off_takes_its_parameters_from_the_query_or_a_parameters_body() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.export.post", &["clinician"], Some("org-a"));
    let auditor = srv.user(&admin, "ann.export.post", &["auditor"], None);
    let api = &clin.api;
    let canary = "Canary-Post-Family-5c1e";
    let p1 = create(api, &patient(canary, "Ann"));
    let o1 = create(api, &observation(&p1, "post note"));
    let group = create(
        api,
        &json!({"resourceType": "Group", "type": "person", "actual": true,
                "member": [{"entity": {"reference": format!("Patient/{p1}")}}]}),
    );
    let post = |path: &str, headers: &[(&str, &str)], body: Option<&[u8]>| {
        api.request("POST", path, headers, body)
    };
    let status_of = |r: &Reply| {
        assert_eq!(r.status, 202, "{}", r.text());
        let location = r.header("content-location").expect("Content-Location");
        location[location.find("/export/").unwrap()..].to_owned()
    };

    // No body, parameters in the query.
    let r = post("/fhir/$export?_type=Patient", ASYNC, None);
    let done = manifest(api, &status_of(&r));
    assert!(
        done["request"]
            .as_str()
            .unwrap()
            .ends_with("/fhir/$export?_type=Patient")
    );
    let files = downloaded(api, &done);
    assert_eq!(ids_of(&files, "Patient"), set(&[&p1]));
    assert!(ids_of(&files, "Observation").is_empty());

    // A Parameters body: its `_type` and `_deidentify` apply as a query's would.
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_type", "valueString": "Patient"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        {"name": "_deidentify", "valueCode": "safe-harbor"},
    ]})
    .to_string();
    let fhir_json = [
        ASYNC[0],
        ASYNC[1],
        ("Content-Type", "application/fhir+json"),
    ];
    let r = post("/fhir/$export", &fhir_json, Some(parameters.as_bytes()));
    let done = manifest(api, &status_of(&r));
    assert_eq!(done["extension"]["deidentified"], true);
    let files = downloaded(api, &done);
    assert_eq!(ids_of(&files, "Patient").len(), 1);
    assert_eq!(ids_of(&files, "Observation").len(), 1);
    let text: String = files
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(Value::to_string))
        .collect();
    for identifying in [canary, p1.as_str(), o1.as_str()] {
        assert!(!text.contains(identifying), "{identifying} was exported");
    }

    // Query and body together: a parameter in both counts as repeated.
    let only_obs = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"}]})
    .to_string();
    let r = post(
        "/fhir/Patient/$export?_type=Patient",
        &fhir_json,
        Some(only_obs.as_bytes()),
    );
    let files = downloaded(api, &manifest(api, &status_of(&r)));
    assert_eq!(ids_of(&files, "Patient"), set(&[&p1]));
    assert_eq!(ids_of(&files, "Observation"), set(&[&o1]));
    let r = post(&format!("/fhir/Group/{group}/$export"), ASYNC, None);
    let files = downloaded(api, &manifest(api, &status_of(&r)));
    assert_eq!(ids_of(&files, "Patient"), set(&[&p1]));

    // The refusals of a GET, and those of a body that is not a Parameters resource of strings.
    let no_async = post("/fhir/$export", &[], None);
    assert_eq!(no_async.status, 400, "{}", no_async.text());
    assert!(no_async.diagnostics().contains("respond-async"));
    assert_eq!(post("/fhir/Observation/$export", ASYNC, None).status, 404);
    assert_eq!(post("/fhir/$export?_elements=id", ASYNC, None).status, 400);
    let text_plain = [ASYNC[0], ASYNC[1], ("Content-Type", "text/plain")];
    assert_eq!(
        post("/fhir/$export", &text_plain, Some(b"_type=Patient")).status,
        415
    );
    for bad in [
        json!({"resourceType": "Patient", "name": [{"family": canary}]}),
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": format!("Patient/{canary}")}}]}),
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": canary}]}),
        json!({"resourceType": "Parameters", "parameter": [
            {"name": canary, "valueString": "Patient"}]}),
    ] {
        let r = post(
            "/fhir/$export",
            &fhir_json,
            Some(bad.to_string().as_bytes()),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(!r.text().contains(canary), "the refusal echoes its input");
    }
    let r = post("/fhir/$export", &fhir_json, Some(b"{not json"));
    assert_eq!(r.status, 400, "{}", r.text());

    // Audited as its own action.
    let started = auditor.api.get("/audit/events?action=export.start.post");
    assert_eq!(started.status, 200, "{}", started.text());
    assert!(
        started.json()["entry"].as_array().map_or(0, Vec::len) >= 2,
        "{}",
        started.text()
    );
}
