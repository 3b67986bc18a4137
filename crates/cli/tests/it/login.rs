//! Logins and sessions under hostile load: concurrent wrong passwords from one address and
//! from many evaluate no more than the free attempts; the account's own user still gets in from
//! an address it has used; a short idle timeout holds for a session in use.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use carevault_testkit::{Api, TEST_PASSWORD, TestServer};
use serde_json::json;

use crate::bin;

/// `auth.throttle_after_failures`' default: the failures allowed before any delay.
const FREE_ATTEMPTS: usize = 5;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Send one wrong login for `username` from each client at once; the statuses.
fn wrong_logins_at_once(clients: Vec<Api>, username: &str) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(clients.len()));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, api)| {
            let (barrier, username) = (barrier.clone(), username.to_owned());
            std::thread::spawn(move || {
                barrier.wait();
                api.post_json(
                    "/auth/login",
                    &json!({"username": username, "password": format!("wrong-guess-{i}-quartz"), "totp_code": "123456"}),
                )
                .status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn failed_logins(srv: &TestServer, username: &str) -> i64 {
    srv.query_i64(&format!(
        "SELECT failed_logins FROM principal WHERE username = '{username}'"
    ))
}

fn locked(srv: &TestServer, username: &str) -> bool {
    // An integer on SQLite, a boolean on PostgreSQL: compare in SQL.
    srv.query_i64(&format!(
        "SELECT COUNT(*) FROM principal WHERE username = '{username}' AND locked"
    )) == 1
}

/// Of `statuses`, how many were evaluated (401); every other one must be a throttle's 429.
fn evaluated(statuses: &[u16], what: &str) -> usize {
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused + evaluated, statuses.len(), "{what}: {statuses:?}");
    evaluated
}

#[test]
fn parallel_wrong_logins_evaluate_no_more_than_the_free_attempts() {
    // The first delay outlasts the test: no attempt past the free ones is due during it.
    let srv = TestServer::start_with(
        bin(),
        &[
            ("CAREVAULT_AUTH_THROTTLE_BASE_MS", "600000"),
            ("CAREVAULT_AUTH_THROTTLE_MAX_MS", "600000"),
        ],
    );
    let admin = srv.admin();
    // Both users enroll and log in from 127.0.0.1: their known address.
    let mut one = srv.user(&admin, "dr.one", &["clinician"], Some("org-a"));
    let mut many = srv.user(&admin, "dr.many", &["clinician"], Some("org-a"));
    let anon = srv.api();

    // 100 at once from one address.
    let attacker = anon.from_address(loopback(2));
    let statuses = wrong_logins_at_once(vec![attacker; 100], "dr.one");
    let n = evaluated(&statuses, "one address");
    assert!(n <= FREE_ATTEMPTS, "{n} evaluated from one address");
    assert!(failed_logins(&srv, "dr.one") <= FREE_ATTEMPTS as i64);

    // 100 at once, each from its own address (127.0.0.2 to 127.0.0.101).
    let clients = (2..102)
        .map(|last| anon.from_address(loopback(last)))
        .collect();
    let statuses = wrong_logins_at_once(clients, "dr.many");
    let n = evaluated(&statuses, "many addresses");
    assert!(n <= FREE_ATTEMPTS, "{n} evaluated from 100 addresses");
    assert!(failed_logins(&srv, "dr.many") <= FREE_ATTEMPTS as i64);
    assert!(!locked(&srv, "dr.many"));

    // The users themselves, from their known address, are not held up.
    for (name, account) in [("dr.one", &mut one), ("dr.many", &mut many)] {
        let token = srv.login(name, &mut account.auth);
        assert_eq!(anon.with_token(&token).get("/auth/whoami").status, 200);
        assert_eq!(failed_logins(&srv, name), 0);
    }
    // Everyone else still waits.
    let stranger = anon.from_address(loopback(150));
    let r = stranger.post_json(
        "/auth/login",
        &json!({"username": "dr.many", "password": TEST_PASSWORD, "totp_code": "123456"}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
}

#[test]
fn a_locked_account_opens_only_from_an_address_it_has_logged_in_from() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_AUTH_LOCK_AFTER_FAILURES", "3")]);
    let admin = srv.admin();
    // Enrolled and logged in from 127.0.0.1.
    let mut clin = srv.user(&admin, "dr.target", &["clinician"], Some("org-a"));
    let stranger = srv.api().from_address(loopback(50));
    let login = |api: &Api, password: &str, code: &str| {
        api.post_json(
            "/auth/login",
            &json!({"username": "dr.target", "password": password, "totp_code": code}),
        )
    };
    for i in 0..3 {
        let r = login(&stranger, &format!("wrong-guess-{i}-quartz"), "123456");
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert!(locked(&srv, "dr.target"));

    // The right password and a valid, unused code: refused from elsewhere, with the same answer
    // as a wrong password...
    let code = clin.auth.fresh_code();
    let refused = login(&stranger, TEST_PASSWORD, &code);
    assert_eq!(refused.status, 401, "{}", refused.text());
    // ...accepted from the user's own address (the code was not spent by the refusal).
    let granted = login(&srv.api(), TEST_PASSWORD, &code);
    assert_eq!(granted.status, 200, "{}", granted.text());
    let token = granted.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(srv.api().with_token(&token).get("/auth/whoami").status, 200);
    // The lock stays for everyone else until an admin lifts it.
    assert!(locked(&srv, "dr.target"));
}

#[test]
fn a_short_idle_timeout_holds_for_a_session_in_use() {
    let srv = TestServer::start_with(bin(), &[("CAREVAULT_SESSION_IDLE_TIMEOUT_SECS", "20")]);
    let mut admin = srv.admin();
    let unused = srv.api().with_token(&srv.login("admin", &mut admin.auth));
    // One session used every 2 s for 30 s, half again the idle timeout...
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let r = admin.api.get("/auth/whoami");
        assert_eq!(r.status, 200, "in use, refused after {:?}", start.elapsed());
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(admin.api.get("/auth/whoami").status, 200);
    // ...while the other, unused since its login at least 30 s ago, has ended.
    assert_eq!(unused.get("/auth/whoami").status, 401);
}
