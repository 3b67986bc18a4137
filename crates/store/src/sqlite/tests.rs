use std::path::{Path, PathBuf};

use super::index::*;
use super::write::*;
use super::*;
use crate::contract_tests::{audit, data_key, first_audit_page_of_patient_1, put, row};
use crate::*;
use tokio::sync::oneshot;

#[tokio::test]
async fn audit_chain_is_assigned_in_commit_order_and_rolls_back_with_its_job() {
    let (_dir, store) = store().await;
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 3 {
                // A failing data change takes its audit event down with it.
                s.write(vec![put("a", 9, Some(8)), audit("n1", i)]).await
            } else {
                s.write(vec![audit("n1", i)]).await
            }
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    store.write(vec![audit("n2", 1)]).await.unwrap();
    let events = store.audit_events(None, 1000).await.unwrap();
    let n1: Vec<_> = events.iter().filter(|e| e.node == "n1").collect();
    assert_eq!(n1.len(), 30);
    assert!(n1.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let (head, last_cp) = store.audit_head("n1").await.unwrap();
    assert!(last_cp.is_none());
    let (seq, hash) = head.unwrap();
    let cp = carevault_audit::Checkpoint::sign(&key, "n1", 1, seq, hash, 5, None);
    store
        .write(vec![WriteOp::InsertCheckpoint(cp.clone())])
        .await
        .unwrap();
    assert!(matches!(
        store.write(vec![WriteOp::InsertCheckpoint(cp)]).await,
        Err(StoreError::Conflict)
    ));
    let report = carevault_audit::verify(
        &events,
        &store.audit_checkpoints().await.unwrap(),
        &key.verifying_key(),
    )
    .unwrap();
    assert_eq!(report.nodes[0].signed_up_to, 30);
    first_audit_page_of_patient_1(&store).await;
}

/// A fresh store whose data key 1 exists (the rows of [`row`] are sealed under it).
async fn store() -> (tempfile::TempDir, SqliteStore) {
    let (dir, store) = bare_store().await;
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    (dir, store)
}

async fn bare_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    (dir, store)
}

/// A steady stream of group commits beside steady reads never lets the WAL start over by
/// itself; the writer resets it once it passes the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_steady_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let limit = 256 * 1024;
    let store = SqliteStore::open_with_wal_limit(&path, limit).unwrap();
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    let wal = dir.path().join("t.db-wal");
    let stop = std::time::Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while std::time::Instant::now() < stop {
                let id = format!("w{w}-{n}");
                let new = NewResourceVersion {
                    row: row(&id, 1, &[7u8; 4096]),
                    expected_current: None,
                };
                store.write(vec![WriteOp::PutResource(new)]).await.unwrap();
                store
                    .resource_current("Patient", &id)
                    .await
                    .unwrap()
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    assert!(
        written * 4096 > 4 * limit,
        "the test wrote too little ({written} resources) to exceed the limit"
    );
    // The next commit after the check interval finds the log over the limit and resets it.
    tokio::time::sleep(WAL_CHECK_EVERY + Duration::from_millis(100)).await;
    store.write(vec![put("last", 1, None)]).await.unwrap();
    // The writer resets after answering that commit and before taking the next job.
    store.write(vec![put("after", 1, None)]).await.unwrap();
    let size = std::fs::metadata(&wal).unwrap().len();
    assert!(size <= limit, "the WAL is still {size} bytes");
    // Everything is still there.
    assert!(
        store
            .resource_current("Patient", "w0-0")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_failed_job_changes_nothing_and_others_in_the_batch_commit() {
    let (_dir, store) = store().await;
    store.write(vec![put("a", 1, None)]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            // Half the jobs are valid creates; half try a stale update after a valid op.
            if i % 2 == 0 {
                s.write(vec![put(&format!("p{i}"), 1, None)]).await
            } else {
                s.write(vec![put(&format!("q{i}"), 1, None), put("a", 5, Some(4))])
                    .await
            }
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.is_ok(), i % 2 == 0, "job {i}: {r:?}");
    }
    assert!(
        store
            .resource_current("Patient", "p0")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .resource_current("Patient", "q1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .resource_current("Patient", "a")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
}

/// The writer applies a batch without savepoints first and again with them when a job fails:
/// either way each job succeeds or fails alone, in its own slot.
#[tokio::test]
async fn a_batch_with_a_failing_job_is_applied_again_job_by_job() {
    let (dir, store) = store().await;
    store.write(vec![put("a", 1, None)]).await.unwrap();
    drop(store);
    let mut conn = open_connection(&dir.path().join("t.db"), Mode::ReadWrite).unwrap();
    let job = |ops: Vec<WriteOp>| WriteJob {
        ops,
        reply: oneshot::channel().0,
    };
    let current = |conn: &Connection, id: &str| -> Option<u32> {
        conn.query_row(
            "SELECT version FROM resource_current WHERE rtype = 'Patient' AND id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    };

    let clean = [
        job(vec![put("b", 1, None)]),
        job(vec![put("a", 2, Some(1))]),
    ];
    let results = commit_batch(&mut conn, &clean);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        (current(&conn, "a"), current(&conn, "b")),
        (Some(2), Some(1))
    );

    // The failing job wrote a row before its stale update failed; that row goes with it.
    let mixed = [
        job(vec![put("c", 1, None)]),
        job(vec![put("d", 1, None), put("a", 9, Some(8))]),
        job(vec![put("e", 1, None), put("b", 2, Some(1))]),
    ];
    let results = commit_batch(&mut conn, &mixed);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::Conflict)),
        "{results:?}"
    );
    assert_eq!(current(&conn, "c"), Some(1));
    assert_eq!(current(&conn, "d"), None);
    assert_eq!(current(&conn, "e"), Some(1));
    assert_eq!(
        (current(&conn, "a"), current(&conn, "b")),
        (Some(2), Some(2))
    );

    let alone = [job(vec![put("f", 1, None), put("a", 9, Some(8))])];
    let results = commit_batch(&mut conn, &alone);
    assert!(
        matches!(results[0], Err(StoreError::Conflict)),
        "{results:?}"
    );
    assert_eq!(current(&conn, "f"), None);
    assert_eq!(current(&conn, "a"), Some(2));
}

fn index(id: &str, tokens: &[(&str, &[u8])]) -> WriteOp {
    WriteOp::ReplaceSearchIndex {
        rtype: "Patient".into(),
        id: id.into(),
        tokens: tokens
            .iter()
            .map(|(p, t)| ((*p).to_owned(), t.to_vec()))
            .collect(),
        only_if_current: None,
    }
}

async fn found(store: &SqliteStore, param: &str, token: &[u8]) -> Vec<String> {
    let mut ids = store
        .search_index(
            "Patient",
            vec![IndexClause {
                param: param.into(),
                tokens: vec![token.to_vec()],
            }],
        )
        .await
        .unwrap();
    ids.sort();
    ids
}

fn ords(path: &Path, id: &str) -> Vec<(Vec<u8>, i64)> {
    let conn = Connection::open(path).unwrap();
    let mut s = conn
        .prepare("SELECT token, ord FROM search_index WHERE id = ?1 ORDER BY token")
        .unwrap();
    s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Every blind-index row is listed in its resource's `search_keys` row and every listed key
/// is a row; returns how many rows there are.
fn index_rows_listed(path: &Path) -> usize {
    let conn = Connection::open(path).unwrap();
    let mut rows: Vec<(String, String, String, Vec<u8>, i64)> = conn
        .prepare("SELECT rtype, id, param, token, ord FROM search_index")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut listed = Vec::new();
    let lists: Vec<(String, String, String)> = conn
        .prepare("SELECT rtype, id, keys FROM search_keys")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for (rtype, id, keys) in lists {
        let keys = IndexKeys::parse(&keys).unwrap();
        assert!(!keys.0.is_empty(), "an empty list is not kept");
        for (param, token, ord) in keys.0 {
            listed.push((rtype.clone(), id.clone(), param, token, ord));
        }
    }
    rows.sort();
    listed.sort();
    assert_eq!(rows, listed);
    rows.len()
}

#[test]
fn index_key_lists_read_back_what_was_written_and_refuse_damage() {
    let keys = IndexKeys(vec![
        ("code".into(), vec![0, 0xab, 0xff], 7),
        ("_id".into(), Vec::new(), 0),
    ]);
    let text = keys.to_text();
    assert_eq!(text, "code 00ABFF 7\n_id  0");
    assert_eq!(IndexKeys::parse(&text).unwrap().0, keys.0);
    assert!(IndexKeys::parse("").unwrap().0.is_empty());
    let conn = Connection::open_in_memory().unwrap();
    for sql in MIGRATIONS {
        conn.execute_batch(sql).unwrap();
    }
    replace_search_index(&conn, "Patient", "a", &[("code".to_owned(), vec![1u8])]).unwrap();
    for name in ["", "na me", "name\nx 00 1"] {
        let tokens = [(name.to_owned(), vec![1u8])];
        let err = replace_search_index(&conn, "Patient", "a", &tokens).err();
        assert!(matches!(err, Some(StoreError::Backend(_))), "{name:?}");
    }
    for damaged in [
        "code 0AB 7",
        "code ZZ 7",
        "code 00 x",
        "code 00",
        "code 00 1 2",
    ] {
        let err = IndexKeys::parse(damaged).err().unwrap();
        assert!(err.to_string().contains("search_keys"), "{damaged}: {err}");
    }
}

#[tokio::test]
async fn a_damaged_key_list_fails_the_write_and_changes_nothing() {
    let (dir, store) = store().await;
    let path = dir.path().join("t.db");
    store
        .write(vec![put("a", 1, None), index("a", &[("code", b"x")])])
        .await
        .unwrap();
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE search_keys SET keys = 'code nothex 1'", [])
        .unwrap();
    let result = store
        .write(vec![put("a", 2, Some(1)), index("a", &[("code", b"y")])])
        .await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert_eq!(found(&store, "code", b"x").await, ["a"]);
    assert!(found(&store, "code", b"y").await.is_empty());
    let current = store.resource_current("Patient", "a").await.unwrap();
    assert_eq!(current.unwrap().version, 1);
}

#[tokio::test]
async fn an_index_replacement_keeps_unchanged_rows_and_orders_new_ones_by_write() {
    let (dir, store) = store().await;
    store
        .write(vec![
            put("a", 1, None),
            index("a", &[("code", b"x"), ("code", b"y")]),
        ])
        .await
        .unwrap();
    store
        .write(vec![put("b", 1, None), index("b", &[("code", b"x")])])
        .await
        .unwrap();
    let before = ords(&dir.path().join("t.db"), "a");
    store
        .write(vec![
            put("a", 2, Some(1)),
            index("a", &[("code", b"x"), ("code", b"z")]),
        ])
        .await
        .unwrap();
    assert_eq!(found(&store, "code", b"x").await, ["a", "b"]);
    assert!(found(&store, "code", b"y").await.is_empty());
    assert_eq!(found(&store, "code", b"z").await, ["a"]);
    assert!(found(&store, "other", b"x").await.is_empty());
    let after = ords(&dir.path().join("t.db"), "a");
    // `x` kept its row (and its place); `z` was written after everything before it.
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1].0, b"z");
    assert!(after[1].1 > before[0].1 && after[1].1 > 0);
    let b = ords(&dir.path().join("t.db"), "b");
    assert!(b[0].1 > before[0].1 && after[1].1 > b[0].1);
    assert_eq!(index_rows_listed(&dir.path().join("t.db")), 3);
    // A deleted resource has no index rows.
    store.write(vec![index("a", &[])]).await.unwrap();
    assert_eq!(found(&store, "code", b"x").await, ["b"]);
    assert!(found(&store, "code", b"z").await.is_empty());
    assert_eq!(index_rows_listed(&dir.path().join("t.db")), 1);
}

/// A database at the schema just before the first migration containing `marker`.
fn database_before(marker: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let conn = Connection::open(&path).unwrap();
    let before = MIGRATIONS.iter().position(|m| m.contains(marker)).unwrap();
    for sql in &MIGRATIONS[..before] {
        conn.execute_batch(sql).unwrap();
    }
    conn.execute_batch(&format!("PRAGMA user_version = {before}"))
        .unwrap();
    (dir, path)
}

#[tokio::test]
async fn index_rows_written_before_the_ord_migration_stay_searchable() {
    let (_dir, path) = database_before("search_index_new");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO search_index (rtype, param, token, id)
             VALUES ('Patient', 'code', x'01', 'old1'), ('Patient', 'code', x'01', 'old2'),
                    ('Patient', 'name', x'02', 'old1');",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(found(&store, "code", &[1]).await, ["old1", "old2"]);
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    store
        .write(vec![put("old1", 1, None), index("old1", &[("code", &[1])])])
        .await
        .unwrap();
    // The old `name` row went (no longer wanted), the kept `code` row is still there.
    assert!(found(&store, "name", &[2]).await.is_empty());
    assert_eq!(found(&store, "code", &[1]).await, ["old1", "old2"]);
    assert_eq!(ords(&path, "old1"), [(vec![1u8], 0)]);
    assert_eq!(index_rows_listed(&path), 2);
}

#[tokio::test]
async fn index_rows_written_before_the_key_lists_are_listed_and_replaced() {
    let (_dir, path) = database_before("CREATE TABLE search_keys");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO search_index (rtype, param, token, ord, id)
             VALUES ('Patient', 'code', x'01', 5, 'old1'), ('Patient', 'code', x'01', 6, 'old2'),
                    ('Patient', 'name', x'02ff', 5, 'old1'), ('Condition', 'code', x'01', 9, 'old1'),
                    ('Patient', '_id', x'03', 5, 'old1'), ('Condition', '_id', x'04', 9, 'old1');
         INSERT INTO resource_current (rtype, id, version, deleted, seq)
             VALUES ('Patient', 'old1', 1, 0, 1), ('Condition', 'old1', 1, 0, 2);",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    // The `_id` rows are gone (the server answers `_id` by id); the rest are listed.
    assert!(found(&store, "_id", &[3]).await.is_empty());
    assert_eq!(index_rows_listed(&path), 4);
    let conn = Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'search_index_resource'"),
        0
    );
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    store
        .write(vec![
            put("old1", 2, Some(1)),
            index("old1", &[("code", &[1]), ("name", &[3])]),
        ])
        .await
        .unwrap();
    assert_eq!(found(&store, "code", &[1]).await, ["old1", "old2"]);
    assert!(found(&store, "name", &[2, 0xff]).await.is_empty());
    assert_eq!(found(&store, "name", &[3]).await, ["old1"]);
    // The same id under another type is another resource: its row is untouched.
    assert_eq!(
        count("SELECT COUNT(*) FROM search_index WHERE rtype = 'Condition' AND id = 'old1'"),
        1
    );
    assert_eq!(index_rows_listed(&path), 4);
}

#[tokio::test]
async fn audit_patients_recorded_before_the_event_first_key_are_still_found() {
    let (_dir, path) = database_before("CREATE TABLE audit_patient_new");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO audit_event (node, seq, time_us, principal, action, outcome, body, hash)
             VALUES ('n1', 1, 1, 'p1', 'read', 'success', x'00', zeroblob(32)),
                    ('n1', 2, 2, 'p1', 'read', 'success', x'00', zeroblob(32)),
                    ('n1', 3, 3, 'p1', 'search', 'success', x'00', zeroblob(32));
         INSERT INTO audit_patient (patient, node, seq)
             VALUES ('Patient/a', 'n1', 1), ('Patient/b', 'n1', 2),
                    ('Patient/a', 'n1', 3), ('Patient/b', 'n1', 3);",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let seqs_of = |patient: &str| {
        let store = store.clone();
        let patient = patient.to_owned();
        async move {
            let page = store
                .audit_search(AuditQuery {
                    patient: Some(patient),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            page.iter().map(|e| e.seq).collect::<Vec<_>>()
        }
    };
    assert_eq!(seqs_of("Patient/a").await, [3, 1]);
    assert_eq!(seqs_of("Patient/b").await, [3, 2]);
    assert!(seqs_of("Patient/c").await.is_empty());
    // Events written after the upgrade are found the same way (the chain continues at 4).
    store
        .write(vec![audit("n1", 4), audit("n1", 7)])
        .await
        .unwrap();
    assert_eq!(seqs_of("Patient/0").await, [4]);
    assert_eq!(seqs_of("Patient/1").await, [5]);
    assert_eq!(seqs_of("Patient/a").await, [3, 1]);
    // The rows are keyed by the event first, so a new event's rows append.
    let conn = Connection::open(&path).unwrap();
    let key: Vec<String> = conn
        .prepare("SELECT name FROM pragma_index_info('sqlite_autoindex_audit_patient_1')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(key, ["node", "seq", "patient"]);
}

#[tokio::test]
async fn the_current_pointer_names_its_row_and_an_edited_pointer_substitutes_nothing() {
    let (dir, store) = store().await;
    store.write(vec![put("a", 1, None)]).await.unwrap();
    store.write(vec![put("a", 2, Some(1))]).await.unwrap();
    store.write(vec![put("b", 1, None)]).await.unwrap();
    let a = store
        .resource_current("Patient", "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.id.as_str(), a.version), ("a", 2));
    let found = store
        .resources_current("Patient", vec!["a".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let conn = Connection::open(dir.path().join("t.db")).unwrap();
    conn.execute(
        "UPDATE resource_current SET seq = (SELECT seq FROM resource_version WHERE id = 'b')
         WHERE id = 'a'",
        [],
    )
    .unwrap();
    let substituted = store.resource_current("Patient", "a").await.unwrap();
    assert!(substituted.is_none(), "the edited pointer names no row");
    let found = store
        .resources_current("Patient", vec!["a".into()])
        .await
        .unwrap();
    assert!(found.is_empty());
}

#[tokio::test]
async fn current_pointers_written_before_the_seq_migration_are_filled_in() {
    let (_dir, path) = database_before("ADD COLUMN seq");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO resource_version (rtype, id, version, last_updated_us, deleted, dek_id, body)
             VALUES ('Patient', 'a', 1, 1, 0, 1, x'01'), ('Patient', 'b', 1, 1, 0, 1, x'02'),
                    ('Patient', 'a', 2, 2, 0, 1, x'03');
         INSERT INTO resource_current (rtype, id, version, deleted)
             VALUES ('Patient', 'a', 2, 0), ('Patient', 'b', 1, 0);",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let a = store
        .resource_current("Patient", "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.version, a.body.as_slice()), (2, &[3u8][..]));
    let b = store
        .resource_current("Patient", "b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.body, [2u8]);
}

#[tokio::test]
async fn api_keys_made_before_certificate_binding_stay_usable_and_unbound() {
    let (_dir, path) = database_before("client_cert_sha256");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO api_key (name, key_hash, owner_id, scopes, allowed_cidrs, expires_at, revoked, created_at)
             VALUES ('etl', 'h1', NULL, 'Patient.r', '10.0.0.0/8', 100, 0, 1);",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let key = store.api_key_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(key.allowed_cidrs, ["10.0.0.0/8"]);
    assert_eq!(key.client_cert_sha256, None);
}

#[tokio::test]
async fn refuses_a_database_from_a_newer_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

/// On SQLite the contract's shred also removes the shredded resource's index key list (the other
/// resource's stays).
#[tokio::test]
async fn a_shred_removes_the_index_key_list_of_the_resources_it_deletes() {
    let (dir, store) = bare_store().await;
    crate::contract_tests::rewrap_is_conditional_and_shred_removes_only_its_compartment(
        &store, &store,
    )
    .await;
    assert_eq!(index_rows_listed(&dir.path().join("t.db")), 1);
}
