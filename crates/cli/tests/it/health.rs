//! `/healthz` and `/readyz`: unauthenticated, a status word only, counted but not audited, and
//! `/readyz` fails (saying why in the log only) when the audit trail refuses events or falls
//! behind on signing.

use crate::server;
use carevault_testkit::TestServer;

fn audit_events(srv: &TestServer) -> i64 {
    srv.query_i64("SELECT COUNT(*) FROM audit_event")
}

#[test]
fn probes_answer_a_word_unaudited_and_readyz_fails_while_the_trail_refuses_events() {
    let srv = server();
    let admin = srv.admin();
    let auditor = srv.user(&admin, "aud.probes", &["auditor"], None);
    let anonymous = srv.api();
    let before = audit_events(&srv);
    for _ in 0..20 {
        let health = anonymous.get("/healthz");
        assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
        let ready = anonymous.get("/readyz");
        assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));
        assert_eq!(ready.header("cache-control"), Some("no-store"));
    }
    assert_eq!(audit_events(&srv), before, "probes are not audit events");
    let metrics = auditor.api.get("/metrics").text();
    assert!(
        metrics
            .contains(r#"carevault_requests_total{route="/readyz",method="GET",status="200"} 20"#),
        "probes are counted: {metrics}"
    );

    // The trail refuses events: requests fail closed (503) and the node says it is not ready.
    srv.refuse_inserts("audit_event");
    assert_eq!(anonymous.get("/fhir/metadata").status, 503);
    let ready = anonymous.get("/readyz");
    assert_eq!((ready.status, ready.text().as_str()), (503, "not ready\n"));
    assert_eq!(
        anonymous.get("/healthz").status,
        200,
        "the process still answers"
    );
    let line = srv.wait_for_log(r#""event":"not_ready""#);
    assert!(line.contains("audit_trail"), "{line}");

    srv.allow_inserts("audit_event");
    assert_eq!(anonymous.get("/fhir/metadata").status, 200);
    assert_eq!(anonymous.get("/readyz").status, 200);
    srv.wait_for_log(r#""event":"ready""#);
}

#[test]
fn probes_are_rate_limited_per_address_without_touching_other_routes() {
    let srv = server();
    let anonymous = srv.api();
    // 600 probes a minute per address (a burst of 600, then 10 a second): a flood beyond is
    // refused, however fast this machine sends it, and other routes are not.
    let mut statuses = Vec::new();
    while !statuses.contains(&429) && statuses.len() < 3_000 {
        statuses.push(anonymous.get("/healthz").status);
    }
    assert!(statuses.contains(&429), "a probe flood is limited");
    assert!(statuses[..500].iter().all(|s| *s == 200));
    assert_eq!(anonymous.get("/fhir/metadata").status, 200);
}
