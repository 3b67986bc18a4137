//! Limits a hostile or careless client meets (issue 27): the Host it names never reaches an
//! absolute URL, searches are bounded before they reach the database, and FHIR's string rules
//! hold. Each refusal answers a clear 4xx and the server keeps serving.

use std::io::Write;
use std::process::{Command, Stdio};

use carevault_testkit::{Api, TestServer};
use serde_json::json;

use crate::{patient, server};

/// A request through curl with `host` as the `Host` header (HTTP/1.1) or `:authority`
/// (HTTP/2): the status, the headers (lowercase names) and the body. A POST sends a Patient.
fn with_host(
    srv: &TestServer,
    api: &Api,
    request: (&str, &str),
    host: &str,
    http2: bool,
) -> (u16, Vec<(String, String)>, String) {
    let body = patient("Host", "Header").to_string();
    with_host_and_body(srv, api, request, host, http2, &body)
}

/// [`with_host`] with `body` as a POST's body.
fn with_host_and_body(
    srv: &TestServer,
    api: &Api,
    (method, path): (&str, &str),
    host: &str,
    http2: bool,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "-X", method, "--cacert"])
        .arg(srv.ca_pem())
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-H", &format!("Host: {host}")]);
    if let Some(token) = &api.token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    if method == "POST" {
        cmd.args([
            "-H",
            "Content-Type: application/fhir+json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .arg(format!("{}{path}", api.base))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("curl is needed for this test: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let body = if method == "POST" {
        body.to_owned()
    } else {
        String::new()
    };
    // Written from a thread: curl reads its body as it sends, and a body larger than a pipe
    // would otherwise block this one.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(body.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if status == 0 {
        // No HTTP answer at all: say what curl said (a transport failure is not a refusal).
        let said = format!(
            "curl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return (status, headers, said);
    }
    (status, headers, body.to_owned())
}

/// A Patient larger than HTTP/2's initial flow-control window (64 KiB), smaller than the body
/// limit.
fn large_patient() -> String {
    let mut large = patient("Large", "Upload");
    large["text"] = json!({"status": "generated", "div": "x".repeat(300_000)});
    large.to_string()
}

#[test]
fn a_foreign_host_never_reaches_a_location_or_a_link() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.host", &["clinician"], Some("org-a"));
    let versions = || srv.query_i64("SELECT COUNT(*) FROM resource_version");
    let before = versions();
    for http2 in [false, true] {
        for (method, path) in [("POST", "/fhir/Patient"), ("GET", "/fhir/Patient?_count=1")] {
            let (status, headers, body) =
                with_host(&srv, &clin.api, (method, path), "evil.example:666", http2);
            assert_eq!(status, 421, "{method} {path} (h2: {http2}): {body}");
            assert!(body.contains("OperationOutcome"), "{body}");
            assert!(
                !body.contains("evil") && !headers.iter().any(|(_, v)| v.contains("evil")),
                "the foreign host is not echoed: {headers:?} {body}"
            );
            assert!(!headers.iter().any(|(k, _)| k == "location"));
        }
        // A body larger than HTTP/2's initial flow-control window: the client is still
        // uploading when the 421 is sent, and gets the answer rather than a stream reset.
        let (status, _, body) = with_host_and_body(
            &srv,
            &clin.api,
            ("POST", "/fhir/Patient"),
            "evil.example:666",
            http2,
            &large_patient(),
        );
        assert_eq!(status, 421, "a large body (h2: {http2}): {body}");
        let (status, _, _) = with_host(
            &srv,
            &srv.api(),
            ("GET", "/fhir/metadata"),
            "evil.example",
            http2,
        );
        assert_eq!(status, 421, "unauthenticated requests too");
    }
    assert_eq!(versions(), before, "a misdirected create wrote nothing");

    // The bound address, and localhost on a loopback listener, are this server.
    let port = srv.base.rsplit(':').next().unwrap().to_owned();
    // Any early answer, not only 421: an unauthenticated upload over HTTP/2 gets its 401.
    let (status, _, body) = with_host_and_body(
        &srv,
        &srv.api(),
        ("POST", "/fhir/Patient"),
        &format!("localhost:{port}"),
        true,
        &large_patient(),
    );
    assert_eq!(status, 401, "{body}");
    let (status, headers, _) = with_host(
        &srv,
        &clin.api,
        ("POST", "/fhir/Patient"),
        &format!("localhost:{port}"),
        false,
    );
    assert_eq!(status, 201);
    let location = headers.iter().find(|(k, _)| k == "location").unwrap();
    assert!(
        location
            .1
            .starts_with(&format!("{}/fhir/Patient/", srv.base)),
        "links use the server's own address, not the Host sent: {location:?}"
    );

    // With public_base_url, every absolute URL starts with it, whatever the client named.
    let public = "https://fhir.example.test:9443";
    srv.stop();
    srv.restart(&[
        ("CAREVAULT_PUBLIC_BASE_URL", public),
        ("CAREVAULT_ALLOWED_HOSTS", &format!("127.0.0.1:{port}")),
    ]);
    let created = clin
        .api
        .post_fhir("/fhir/Patient", &patient("Public", "Base"));
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{public}/fhir/Patient/")),
        "{location}"
    );
    let page = clin.api.get("/fhir/Patient?_count=1").json();
    for link in page["link"].as_array().unwrap() {
        let url = link["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{public}/fhir/Patient")), "{url}");
    }
    for (host, expected) in [
        ("fhir.example.test:9443", 200),
        ("FHIR.example.test:9443", 200),
        ("fhir.example.test", 421),
        (&format!("localhost:{port}"), 421),
    ] {
        let (status, _, body) = with_host(
            &srv,
            &clin.api,
            ("GET", "/fhir/Patient?_count=1"),
            host,
            false,
        );
        assert_eq!(status, expected, "{host}: {body}");
    }
}

#[test]
fn searches_beyond_their_limits_answer_400_naming_the_limit_on_any_backend() {
    let mut srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.limits", &["clinician"], Some("org-a"));
    assert_eq!(
        clin.api
            .post_fhir("/fhir/Patient", &patient("Limit", "Tester"))
            .status,
        201
    );
    let repeated = |name: &str, value: &str, n: usize| -> String {
        (0..n)
            .map(|_| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let at_limit = clin.api.get(&format!(
        "/fhir/Patient?{}",
        repeated("family", "limit", 50)
    ));
    assert_eq!(at_limit.status, 200, "{}", at_limit.text());
    assert_eq!(at_limit.json()["entry"].as_array().map(Vec::len), Some(1));
    for n in [51, 501, 5_000] {
        let over = clin
            .api
            .get(&format!("/fhir/Patient?{}", repeated("family", "limit", n)));
        assert_eq!(over.status, 400, "{n} parameters: {}", over.text());
        assert!(
            over.diagnostics().contains("search.max_clauses"),
            "{}",
            over.diagnostics()
        );
    }
    let includes = clin.api.get(&format!(
        "/fhir/Patient?{}",
        repeated("_revinclude", "Observation:subject", 11)
    ));
    assert_eq!(includes.status, 400, "{}", includes.text());
    assert!(includes.diagnostics().contains("search.max_includes"));

    // The same limits hold for a conditional delete inside a batch, entry by entry.
    let batch = clin.api.post_fhir(
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "DELETE", "url": format!("Patient?{}", repeated("family", "limit", 501))}},
            {"request": {"method": "DELETE", "url": "Patient?family=nobody"}}
        ]}),
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    let entries = batch.json()["entry"].clone();
    assert_eq!(
        entries[0]["response"]["status"], "400 Bad Request",
        "{entries}"
    );
    assert!(
        entries[0].to_string().contains("search.max_clauses"),
        "{entries}"
    );
    assert_eq!(
        entries[1]["response"]["status"], "204 No Content",
        "{entries}"
    );

    let after = clin.api.get("/fhir/Patient?family=limit");
    assert_eq!(after.status, 200, "the server keeps serving");
    assert_eq!(
        after.json()["entry"].as_array().map(Vec::len),
        Some(1),
        "nothing deleted"
    );

    // With the most clauses allowed, their values could outgrow the parameters one statement
    // takes (SQLite: 32,766): 201 clauses of 100 distinct values each answer 400, not 500.
    srv.stop();
    srv.restart(&[("CAREVAULT_SEARCH_MAX_CLAUSES", "400")]);
    let form: Vec<String> = (0..201)
        .map(|c| {
            let values: Vec<String> = (0..100).map(|v| format!("c{c}v{v}")).collect();
            format!("family={}", values.join("%2C"))
        })
        .collect();
    let broad = clin.api.request(
        "POST",
        "/fhir/Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(form.join("&").as_bytes()),
    );
    assert_eq!(broad.status, 400, "{}", broad.text());
    assert!(
        broad.diagnostics().contains("index lookups"),
        "{}",
        broad.text()
    );
    let within = clin.api.request(
        "POST",
        "/fhir/Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(form[..150].join("&").as_bytes()),
    );
    assert_eq!(within.status, 200, "{}", within.text());
}

#[test]
fn strings_over_a_megabyte_or_with_control_characters_are_refused_naming_the_element() {
    let srv = server();
    let admin = srv.admin();
    let clin = srv.user(&admin, "dr.strings", &["clinician"], Some("org-a"));
    let versions = || srv.query_i64("SELECT COUNT(*) FROM resource_version");
    let before = versions();

    let mut nul = patient("Nul", "Byte");
    nul["name"][0]["family"] = json!("Canary\u{0}Family");
    let mut long = patient("Long", "Text");
    long["name"][0]["text"] = json!("x".repeat(1024 * 1024 + 1));
    for (body, element, words) in [
        (&nul, "Patient.name[0].family", "control character"),
        (&long, "Patient.name[0].text", "too long"),
    ] {
        let reply = clin.api.post_fhir("/fhir/Patient", body);
        assert_eq!(reply.status, 422, "{element}");
        let issues = reply.json()["issue"].clone();
        let issue = issues
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["expression"][0] == element)
            .unwrap_or_else(|| panic!("no issue names {element}: {issues}"));
        assert!(issue["diagnostics"].as_str().unwrap().contains(words));
        assert!(!reply.text().contains("Canary") && !reply.text().contains("xxxx"));
    }
    assert_eq!(versions(), before, "nothing was stored");

    let mut fine = patient("Tab", "Newline");
    fine["name"][0]["text"] = json!("line one\n\tline two\r\n");
    assert_eq!(clin.api.post_fhir("/fhir/Patient", &fine).status, 201);
}
