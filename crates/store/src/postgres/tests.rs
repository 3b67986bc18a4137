//! These tests need a PostgreSQL server: `CAREVAULT_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test` (trust authentication). Each test makes its own
//! database and drops it at the end, so tests run in parallel.

use super::*;
use crate::contract_tests::{audit, data_key, first_audit_page_of_patient_1, put};
use crate::*;

pub(crate) struct TestDb {
    admin_url: String,
    name: String,
    pub url: String,
}

fn admin_url() -> String {
    std::env::var("CAREVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is needed for these tests ({}): {e}",
                redact_url(url)
            )
        });
    tokio::spawn(conn);
    client
}

impl TestDb {
    pub(crate) async fn new() -> Self {
        let admin_url = admin_url();
        let name = format!("cv_store_{}", uuid::Uuid::new_v4().simple());
        admin_client(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin_url.split('?').next().unwrap();
        let (server, _) = base.rsplit_once('/').unwrap();
        let url = format!("{server}/{name}");
        Self {
            admin_url,
            name,
            url,
        }
    }

    fn options(&self) -> PostgresOptions {
        PostgresOptions {
            url: self.url.clone(),
            password: None,
            pool_size: 8,
        }
    }

    /// A store on this database, migrated and empty.
    pub(crate) async fn bare_store(&self) -> PostgresStore {
        PostgresStore::connect(&self.options()).await.unwrap()
    }

    /// A store on this database whose data key 1 exists (the rows of [`row`] are sealed
    /// under it).
    async fn store(&self) -> PostgresStore {
        let store = PostgresStore::connect(&self.options()).await.unwrap();
        store.write(vec![data_key("Patient/test")]).await.unwrap();
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = admin_client(&url).await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// A URL with a password, built at run time (no credential-looking literal in the source).
fn with_password(pw: &str, rest: &str) -> String {
    format!("postgres://cv:{}@{}", pw, rest)
}

#[test]
fn urls_are_redacted_and_passwords_found() {
    assert_eq!(
        redact_url(&with_password(
            "s3cret",
            "db.example:5432/cv?sslmode=require"
        )),
        "postgres://cv@db.example:5432/cv"
    );
    assert_eq!(redact_url("postgres://cv@db/cv"), "postgres://cv@db/cv");
    assert!(url_has_password(&with_password("s3cret", "db/cv")));
    assert!(!url_has_password("postgres://cv@db/cv"));
    assert!(!url_has_password("postgres://db/cv?user=a:b"));
    let opts = PostgresOptions {
        url: with_password("s3cret", "db/cv"),
        password: Some("other-secret".into()),
        pool_size: 1,
    };
    let shown = format!("{opts:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("other-secret"),
        "{shown}"
    );
    let (url, mode, root) =
        split_tls("postgres://cv@db/cv?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3")
            .unwrap();
    assert_eq!(url, "postgres://cv@db/cv?connect_timeout=3");
    assert_eq!(mode, SslMode::VerifyFull);
    assert_eq!(root.as_deref(), Some("/ca.pem"));
    assert!(split_tls("postgres://cv@db/cv?sslmode=verify-full").is_err());
    assert!(split_tls("postgres://cv@db/cv?sslmode=prefer").is_err());
    // A root certificate with `require` would be checked by libpq but not by us: refused.
    assert!(split_tls("postgres://cv@db/cv?sslmode=require&sslrootcert=/ca.pem").is_err());
    assert!(split_tls("postgres://cv@db/cv?sslrootcert=/ca.pem").is_err());
    let (_, _, root) =
        split_tls("postgres://cv@db/cv?sslmode=verify-full&sslrootcert=/etc/db%20ca%2Epem")
            .unwrap();
    assert_eq!(root.as_deref(), Some("/etc/db ca.pem"));
    assert!(split_tls("postgres://cv@db/cv?sslmode=verify-full&sslrootcert=/ca%2").is_err());
    assert!(split_tls("postgres://cv@db/cv?sslmode=verify-full&sslrootcert=/ca%zz").is_err());
    // tokio-postgres takes a password from the query too.
    assert!(url_has_password(&format!(
        "postgres://cv@db/cv?sslmode=require&password={}",
        "s3cret"
    )));
    assert!(!url_has_password("postgres://cv@db/cv?passfile=/x"));
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_the_password_stays_out_of_the_error() {
    // Nothing listens on port 1.
    let opts = PostgresOptions {
        url: with_password("hunter2-secret", "127.0.0.1:1/cv"),
        password: None,
        pool_size: 2,
    };
    match PostgresStore::connect(&opts).await {
        Err(StoreError::Unavailable(msg)) => {
            assert!(!msg.contains("hunter2"), "{msg}");
            // The reason, not only tokio-postgres's "error connecting to server".
            assert!(msg.contains("refused"), "{msg}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn two_nodes_racing_on_one_resource_never_lose_an_update() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    a.write(vec![put("r", 1, None)]).await.unwrap();
    let mut wins = 0;
    for v in 1..=30u32 {
        let (ra, rb) = tokio::join!(
            a.write(vec![put("r", v + 1, Some(v)), audit("node-a", v)]),
            b.write(vec![put("r", v + 1, Some(v)), audit("node-b", v)]),
        );
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {v}: {ra:?} {rb:?}");
        for r in [ra, rb] {
            if let Err(e) = r {
                assert!(matches!(e, StoreError::Conflict), "{e}");
            }
        }
        wins += 1;
    }
    let current = b.resource_current("Patient", "r").await.unwrap().unwrap();
    assert_eq!(current.version, wins + 1);
    let history = a
        .history(HistoryQuery {
            id: Some("r".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut versions: Vec<u32> = history.iter().map(|h| h.row.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=wins + 1).collect::<Vec<_>>());
    // The losers' audit events rolled back with them: 30 events over two chains, gap-free.
    let events = a.audit_events(None, 1000).await.unwrap();
    assert_eq!(events.len(), 30);
    for node in ["node-a", "node-b"] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.node == node)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{node}");
    }
}

#[tokio::test]
async fn concurrent_appends_of_two_nodes_make_two_verifiable_chains() {
    let db = TestDb::new().await;
    let stores = [db.store().await, db.store().await];
    let mut tasks = Vec::new();
    for i in 0..80u32 {
        let s = stores[(i % 2) as usize].clone();
        let node = if i % 3 == 0 { "n1" } else { "n2" };
        tasks.push(tokio::spawn(async move {
            if i % 5 == 4 {
                s.write(vec![put("x", 9, Some(8)), audit(node, i)]).await
            } else {
                s.write(vec![audit(node, i)]).await
            }
        }));
    }
    let mut committed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.is_ok(), i % 5 != 4, "job {i}: {r:?}");
        committed += usize::from(r.is_ok());
    }
    let events = stores[0].audit_events(None, 1000).await.unwrap();
    assert_eq!(events.len(), committed);
    // Paging in chain order returns the same events.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = stores[1].audit_events(after.clone(), 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.node.clone(), last.seq));
        paged.extend(page);
    }
    assert_eq!(paged.len(), events.len());
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    for node in ["n1", "n2"] {
        let (head, cp) = stores[0].audit_head(node).await.unwrap();
        assert!(cp.is_none());
        let (seq, hash) = head.unwrap();
        let cp = Checkpoint::sign(&key, node, 1, seq, hash, 5, None);
        stores[1]
            .write(vec![WriteOp::InsertCheckpoint(cp.clone())])
            .await
            .unwrap();
        assert!(matches!(
            stores[0].write(vec![WriteOp::InsertCheckpoint(cp)]).await,
            Err(StoreError::Conflict)
        ));
    }
    let report = carevault_audit::verify(
        &events,
        &stores[0].audit_checkpoints().await.unwrap(),
        &key.verifying_key(),
    )
    .unwrap();
    assert_eq!(report.nodes.len(), 2);
    assert_eq!(
        report
            .nodes
            .iter()
            .map(|n| n.signed_up_to as usize)
            .sum::<usize>(),
        committed
    );
    let page = first_audit_page_of_patient_1(&stores[0]).await;
    let last = page.last().unwrap();
    let next = stores[0]
        .audit_search(AuditQuery {
            patient: Some("Patient/1".into()),
            before: Some((last.time_us, last.node.clone(), last.seq)),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(next.iter().all(|e| e.time_us <= last.time_us));
    assert!(
        !next
            .iter()
            .any(|e| page.iter().any(|p| p.node == e.node && p.seq == e.seq))
    );
}

#[tokio::test]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let db = TestDb::new().await;
    // Three nodes starting at once all end up on the same schema.
    let options = db.options();
    let (a, b, c) = tokio::join!(
        PostgresStore::connect(&options),
        PostgresStore::connect(&options),
        PostgresStore::connect(&options),
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    a.write(vec![WriteOp::SetMeta {
        key: "environment_id".into(),
        value: "env-1".into(),
    }])
    .await
    .unwrap();
    let again = PostgresStore::connect_existing(&db.options())
        .await
        .unwrap();
    assert_eq!(
        again.meta("environment_id").await.unwrap().as_deref(),
        Some("env-1")
    );
    let client = admin_client(&db.url).await;
    client
        .batch_execute("INSERT INTO carevault_schema (version) VALUES (99)")
        .await
        .unwrap();
    assert!(matches!(
        PostgresStore::connect(&db.options()).await,
        Err(StoreError::TooNew { found: 99, .. })
    ));
    assert!(matches!(
        PostgresStore::connect_existing(&db.options()).await,
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[tokio::test]
async fn of_nodes_claiming_a_backup_period_at_once_exactly_one_wins() {
    let db = TestDb::new().await;
    let (a, b) = (db.bare_store().await, db.bare_store().await);
    let hour = 3_600_000_000_i64;
    let start = 1_796_503_200_000_000_i64;
    for period in 0..10 {
        let now = start + period * hour;
        let (ra, rb) = tokio::join!(
            a.claim_backup_slot(now, hour),
            b.claim_backup_slot(now, hour)
        );
        let wins = [ra.unwrap(), rb.unwrap()].iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "period {period}");
        // Later in the same period: nobody.
        assert!(!a.claim_backup_slot(now + hour / 2, hour).await.unwrap());
        assert!(!b.claim_backup_slot(now + hour - 1, hour).await.unwrap());
    }
}
