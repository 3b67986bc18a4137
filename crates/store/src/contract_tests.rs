//! The [`Store`] contract, written once and run against both backends: SQLite on a temporary
//! file, PostgreSQL on a fresh database per test (PostgreSQL must be running: see
//! `postgres::tests`). Each test gets two handles on one database, as two nodes (or, on
//! SQLite, two clones of one store) would have. Behaviour only one backend has (SQLite's group
//! commit and WAL upkeep, PostgreSQL's locking across nodes, schema upgrades) is tested in the
//! backend's own `tests.rs`.

use carevault_audit::StoredEvent;

use crate::{
    AuditQuery, DataRotationProgress, HistoryQuery, IndexClause, NewAuditEvent, NewResourceVersion,
    ResourceRow, Store, StoreError, WriteOp,
};

mod identity;

use identity::{
    account_session_key_and_grant_rows_follow_their_operations,
    api_keys_keep_their_network_and_certificate_bindings, identity_rows_and_one_time_values,
    totp_steps_and_recovery_codes_are_single_use,
};

/// Runs each contract test (an `async fn(store, other)`) once per backend.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = crate::SqliteStore::open(&dir.path().join("t.db")).unwrap();
                    super::$name(&store, &store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = crate::postgres::tests::TestDb::new().await;
                    let (store, other) = (db.bare_store().await, db.bare_store().await);
                    super::$name(&store, &other).await;
                }
            )*
        }
    };
}

contract_tests!(
    versions_append_with_optimistic_concurrency,
    totp_steps_and_recovery_codes_are_single_use,
    identity_rows_and_one_time_values,
    api_keys_keep_their_network_and_certificate_bindings,
    policies_the_index_and_racing_data_key_inserts,
    a_rotated_data_key_takes_no_new_versions_and_goes_once_unused,
    shred_removes_every_generation_and_the_wrap_floor_refuses_old_kek_versions,
    rewrap_is_conditional_and_shred_removes_only_its_compartment,
    a_new_data_key_commits_with_its_data_or_not_at_all,
    reserved_data_key_ids_are_never_handed_out_twice,
    export_jobs_are_kept_replaced_and_deleted,
    the_audit_trail_verifies_a_page_at_a_time_whole_or_recent,
    an_index_replacement_for_a_stale_version_changes_nothing,
    account_session_key_and_grant_rows_follow_their_operations,
);

pub(crate) fn row(id: &str, version: u32, body: &[u8]) -> ResourceRow {
    ResourceRow {
        rtype: "Patient".into(),
        id: id.into(),
        version,
        last_updated_us: i64::from(version) * 1000,
        deleted: false,
        dek_id: 1,
        body: body.to_vec(),
    }
}

/// Version `version` of `Patient/<id>`, sealed (body `sealed-<version>`) under data key 1.
pub(crate) fn put(id: &str, version: u32, expected: Option<u32>) -> WriteOp {
    WriteOp::PutResource(NewResourceVersion {
        row: row(id, version, format!("sealed-{version}").as_bytes()),
        expected_current: expected,
    })
}

/// Audit event number `n` of `node` (time `n`), naming `Patient/<n % 2>`.
pub(crate) fn audit(node: &str, n: u32) -> WriteOp {
    WriteOp::AppendAudit(NewAuditEvent {
        node: node.into(),
        time_us: i64::from(n),
        principal: "p1".into(),
        action: "read".into(),
        outcome: "success".into(),
        patients: vec![format!("Patient/{}", n % 2)],
        body: format!("{{\"n\":{n}}}").into_bytes(),
    })
}

/// The newest five audit events naming `Patient/1`, checked to be five and newest first.
pub(crate) async fn first_audit_page_of_patient_1(store: &dyn Store) -> Vec<StoredEvent> {
    let page = store
        .audit_search(AuditQuery {
            patient: Some("Patient/1".into()),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 5);
    assert!(page.windows(2).all(|w| w[0].time_us >= w[1].time_us));
    page
}

pub(crate) fn data_key(compartment: &str) -> WriteOp {
    WriteOp::InsertDataKeyIfAbsent {
        compartment: compartment.into(),
        wrapped: b"w1".to_vec(),
        kek_version: 1,
        created_at: 0,
    }
}

pub(crate) async fn versions_append_with_optimistic_concurrency(
    store: &dyn Store,
    _other: &dyn Store,
) {
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    store.write(vec![put("a", 1, None)]).await.unwrap();
    assert!(matches!(
        store.write(vec![put("a", 1, None)]).await,
        Err(StoreError::Conflict)
    ));
    store.write(vec![put("a", 2, Some(1))]).await.unwrap();
    assert!(matches!(
        store.write(vec![put("a", 3, Some(1))]).await,
        Err(StoreError::Conflict)
    ));
    let current = store
        .resource_current("Patient", "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (current.version, current.body.as_slice()),
        (2, &b"sealed-2"[..])
    );
    assert_eq!(
        store
            .resource_version("Patient", "a", 1)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert!(
        store
            .resource_version("Patient", "a", 3)
            .await
            .unwrap()
            .is_none()
    );
    let history = store
        .history(HistoryQuery {
            rtype: Some("Patient".into()),
            id: Some("a".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|h| h.row.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let later = store
        .history(HistoryQuery {
            before_seq: Some(history[0].seq),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    // A failed operation takes the whole write down: nothing of it is visible.
    assert!(
        store
            .write(vec![put("b", 1, None), put("a", 9, Some(8))])
            .await
            .is_err()
    );
    assert!(
        store
            .resource_current("Patient", "b")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.resource_ids("Patient").await.unwrap(),
        vec!["a".to_string()]
    );
}

pub(crate) async fn policies_the_index_and_racing_data_key_inserts(
    store: &dyn Store,
    other: &dyn Store,
) {
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    assert_eq!(store.policies().await.unwrap(), (0, vec![]));
    store
        .write(vec![WriteOp::PutPolicy {
            name: "p".into(),
            text: "permit(principal, action, resource);".into(),
            at: 7,
        }])
        .await
        .unwrap();
    let (v, rows) = other.policies().await.unwrap();
    assert_eq!((v, rows.len()), (1, 1));
    other
        .write(vec![WriteOp::DeletePolicy {
            name: "p".into(),
            at: 8,
        }])
        .await
        .unwrap();
    assert_eq!(store.policies().await.unwrap(), (2, vec![]));
    assert!(matches!(
        store
            .write(vec![WriteOp::DeletePolicy {
                name: "p".into(),
                at: 9
            }])
            .await,
        Err(StoreError::Conflict)
    ));

    store
        .write(vec![put("a", 1, None), put("b", 1, None)])
        .await
        .unwrap();
    let index = |id: &str, tokens: &[(&str, &[u8])]| WriteOp::ReplaceSearchIndex {
        rtype: "Patient".into(),
        id: id.into(),
        tokens: tokens
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_vec()))
            .collect(),
        only_if_current: None,
    };
    store
        .write(vec![
            index("a", &[("name", b"x"), ("gender", b"f")]),
            index("b", &[("name", b"x"), ("gender", b"m")]),
        ])
        .await
        .unwrap();
    let clause = |param: &str, tokens: &[&[u8]]| IndexClause {
        param: param.into(),
        tokens: tokens.iter().map(|t| t.to_vec()).collect(),
    };
    let mut both = store
        .search_index("Patient", vec![clause("name", &[b"x"])])
        .await
        .unwrap();
    both.sort();
    assert_eq!(both, vec!["a", "b"]);
    assert_eq!(
        store
            .search_index(
                "Patient",
                vec![clause("name", &[b"x"]), clause("gender", &[b"m", b"z"])]
            )
            .await
            .unwrap(),
        vec!["b"]
    );
    let rows = store
        .resources_current("Patient", vec!["a".into(), "zz".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);

    store
        .write(vec![WriteOp::InsertDataKeyIfAbsent {
            compartment: "Patient/a".into(),
            wrapped: vec![1],
            kek_version: 1,
            created_at: 1,
        }])
        .await
        .unwrap();
    other
        .write(vec![WriteOp::InsertDataKeyIfAbsent {
            compartment: "Patient/a".into(),
            wrapped: vec![2],
            kek_version: 1,
            created_at: 2,
        }])
        .await
        .unwrap();
    let dk = other
        .data_key_by_compartment("Patient/a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dk.wrapped, vec![1]);
    assert_eq!(store.data_key_by_id(dk.id).await.unwrap(), Some(dk));
}

pub(crate) async fn a_rotated_data_key_takes_no_new_versions_and_goes_once_unused(
    store: &dyn Store,
    _other: &dyn Store,
) {
    store.write(vec![data_key("Patient/a")]).await.unwrap();
    let old = store
        .data_key_by_compartment("Patient/a")
        .await
        .unwrap()
        .unwrap();
    store
        .write(vec![first_version_under("a", (old.id, b"old-1"))])
        .await
        .unwrap();
    store
        .write(vec![WriteOp::MarkDataKeysForRotation {
            compartment_prefix: "Patient/".into(),
        }])
        .await
        .unwrap();
    let marked = store.data_keys_to_rotate(10).await.unwrap();
    assert_eq!(marked.len(), 1);
    let progress = store.data_rotation_progress().await.unwrap();
    assert_eq!(
        (progress.keys_to_rotate, progress.versions_remaining),
        (1, 1)
    );
    let rotate = || WriteOp::RotateDataKey {
        old_id: old.id,
        compartment: "Patient/a".into(),
        wrapped: b"w-new".to_vec(),
        kek_version: 1,
        created_at: 1,
    };
    store.write(vec![rotate()]).await.unwrap();
    // Once only: the old key is no longer marked.
    store.write(vec![rotate()]).await.unwrap();
    let new = store
        .data_key_by_compartment("Patient/a")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(new.wrapped, b"w-new");
    // The old key still opens its versions, but takes no new one.
    assert!(store.data_key_by_id(old.id).await.unwrap().is_some());
    let mut v2 = row("a", 2, b"old-2");
    v2.dek_id = old.id;
    let stale = store
        .write(vec![WriteOp::PutResource(NewResourceVersion {
            row: v2.clone(),
            expected_current: Some(1),
        })])
        .await;
    assert!(matches!(stale, Err(StoreError::StaleKey)), "{stale:?}");
    v2.dek_id = new.id;
    store
        .write(vec![WriteOp::PutResource(NewResourceVersion {
            row: v2,
            expected_current: Some(1),
        })])
        .await
        .unwrap();
    // Not dropped while a version references it.
    assert!(store.unused_retiring_keys(10).await.unwrap().is_empty());
    store
        .write(vec![WriteOp::DropRetiredDataKey { id: old.id }])
        .await
        .unwrap();
    assert!(store.data_key_by_id(old.id).await.unwrap().is_some());
    let pending = store.versions_under_retiring_keys(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].version, 1);
    let reseal = |from, to| WriteOp::ResealResourceVersion {
        rtype: "Patient".into(),
        id: "a".into(),
        version: 1,
        from_dek_id: from,
        dek_id: to,
        body: b"new-1".to_vec(),
    };
    // Re-sealing under a retiring key is refused.
    assert!(matches!(
        store.write(vec![reseal(old.id, old.id)]).await,
        Err(StoreError::StaleKey)
    ));
    store.write(vec![reseal(old.id, new.id)]).await.unwrap();
    let v = store
        .resource_version("Patient", "a", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.dek_id, v.body.as_slice()), (new.id, &b"new-1"[..]));
    assert_eq!(store.unused_retiring_keys(10).await.unwrap(), vec![old.id]);
    store
        .write(vec![WriteOp::DropRetiredDataKey { id: old.id }])
        .await
        .unwrap();
    assert!(store.data_key_by_id(old.id).await.unwrap().is_none());
    assert_eq!(
        store.data_rotation_progress().await.unwrap(),
        DataRotationProgress::default()
    );
    // A version sealed under a key that is gone is refused.
    let mut v3 = row("a", 3, b"x");
    v3.dek_id = old.id;
    assert!(matches!(
        store
            .write(vec![WriteOp::PutResource(NewResourceVersion {
                row: v3,
                expected_current: Some(2),
            })])
            .await,
        Err(StoreError::StaleKey)
    ));
}

pub(crate) async fn shred_removes_every_generation_and_the_wrap_floor_refuses_old_kek_versions(
    store: &dyn Store,
    _other: &dyn Store,
) {
    store.write(vec![data_key("Patient/a")]).await.unwrap();
    let old = store
        .data_key_by_compartment("Patient/a")
        .await
        .unwrap()
        .unwrap();
    let mut v1 = row("a", 1, b"x");
    v1.dek_id = old.id;
    store
        .write(vec![
            WriteOp::PutResource(NewResourceVersion {
                row: v1,
                expected_current: None,
            }),
            WriteOp::MarkDataKeysForRotation {
                compartment_prefix: "Patient/".into(),
            },
            WriteOp::RotateDataKey {
                old_id: old.id,
                compartment: "Patient/a".into(),
                wrapped: b"w2".to_vec(),
                kek_version: 1,
                created_at: 1,
            },
        ])
        .await
        .unwrap();
    let new = store
        .data_key_by_compartment("Patient/a")
        .await
        .unwrap()
        .unwrap();
    // The shred names the newest key; the old generation and its versions go too.
    store
        .write(vec![WriteOp::ShredCompartment {
            compartment: "Patient/a".into(),
            data_key_id: new.id,
        }])
        .await
        .unwrap();
    assert!(store.data_key_by_id(old.id).await.unwrap().is_none());
    assert!(
        store
            .resource_version("Patient", "a", 1)
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(
        store
            .meta(crate::META_KEK_WRAP_FLOOR)
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
    store.write(vec![wrap_floor(2)]).await.unwrap();
    assert!(matches!(
        store.write(vec![data_key("Patient/b")]).await,
        Err(StoreError::StaleKey)
    ));
    store
        .write(vec![WriteOp::InsertDataKeyIfAbsent {
            compartment: "Patient/b".into(),
            wrapped: b"w".to_vec(),
            kek_version: 2,
            created_at: 0,
        }])
        .await
        .unwrap();
}

pub(crate) async fn rewrap_is_conditional_and_shred_removes_only_its_compartment(
    store: &dyn Store,
    _other: &dyn Store,
) {
    store
        .write(vec![data_key("Patient/a"), data_key("Patient/b")])
        .await
        .unwrap();
    let a = store
        .data_key_by_compartment("Patient/a")
        .await
        .unwrap()
        .unwrap();
    let b = store
        .data_key_by_compartment("Patient/b")
        .await
        .unwrap()
        .unwrap();
    let mut ra = row("a", 1, b"x");
    ra.dek_id = a.id;
    let mut rb = row("b", 1, b"y");
    rb.dek_id = b.id;
    for r in [ra, rb] {
        let id = r.id.clone();
        store
            .write(vec![
                WriteOp::PutResource(NewResourceVersion {
                    row: r,
                    expected_current: None,
                }),
                WriteOp::ReplaceSearchIndex {
                    rtype: "Patient".into(),
                    id,
                    tokens: vec![("name".into(), b"t".to_vec())],
                    only_if_current: None,
                },
            ])
            .await
            .unwrap();
    }
    assert_eq!(store.data_key_counts().await.unwrap(), vec![(1, 2)]);
    let rewrap = |from| WriteOp::RewrapDataKey {
        id: a.id,
        from_kek_version: from,
        wrapped: b"w2".to_vec(),
        kek_version: 2,
    };
    store.write(vec![rewrap(1)]).await.unwrap();
    // A stale re-wrap (the row moved on) changes nothing.
    store.write(vec![rewrap(1)]).await.unwrap();
    assert_eq!(store.data_key_counts().await.unwrap(), vec![(1, 1), (2, 1)]);
    let left = store.data_keys_not_under(2, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].compartment, "Patient/b");

    let shred = || WriteOp::ShredCompartment {
        compartment: "Patient/a".into(),
        data_key_id: a.id,
    };
    store.write(vec![shred()]).await.unwrap();
    store.write(vec![shred()]).await.unwrap();
    assert!(
        store
            .data_key_by_compartment("Patient/a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .resource_current("Patient", "a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .resource_version("Patient", "a", 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .resource_current("Patient", "b")
            .await
            .unwrap()
            .is_some()
    );
    let hits = store
        .search_index(
            "Patient",
            vec![IndexClause {
                param: "name".into(),
                tokens: vec![b"t".to_vec()],
            }],
        )
        .await
        .unwrap();
    assert_eq!(hits, vec!["b".to_owned()]);
}

/// Raise the KEK wrap floor to `version`.
fn wrap_floor(version: u32) -> WriteOp {
    WriteOp::SetMeta {
        key: crate::META_KEK_WRAP_FLOOR.into(),
        value: version.to_string(),
    }
}

/// `InsertDataKey` of `compartment` under the reserved `id`, and `Patient/<rid>` v1 sealed under it.
fn new_key_and_version(id: u64, compartment: &str, rid: &str) -> Vec<WriteOp> {
    vec![
        WriteOp::InsertDataKey {
            id,
            compartment: compartment.into(),
            wrapped: format!("w-{id}").into_bytes(),
            kek_version: 1,
            created_at: 0,
        },
        first_version_under(rid, (id, b"sealed-1")),
    ]
}

/// Version 1 of `Patient/<rid>`, sealed (`body`) under data key `dek_id`.
fn first_version_under(rid: &str, (dek_id, body): (u64, &[u8])) -> WriteOp {
    let mut v1 = row(rid, 1, body);
    v1.dek_id = dek_id;
    WriteOp::PutResource(NewResourceVersion {
        row: v1,
        expected_current: None,
    })
}

pub(crate) async fn a_new_data_key_commits_with_its_data_or_not_at_all(
    store: &dyn Store,
    other: &dyn Store,
) {
    // Two first writes into one new compartment, at once (on PostgreSQL from two nodes): one
    // key and one version commit; the other write fails as stale and leaves nothing.
    let (a, b) = (
        store.reserve_data_key_id().await.unwrap(),
        other.reserve_data_key_id().await.unwrap(),
    );
    assert_ne!(a, b);
    let (ra, rb) = tokio::join!(
        store.write(new_key_and_version(a, "Patient/n", "x")),
        other.write(new_key_and_version(b, "Patient/n", "y")),
    );
    let (winner, loser, loser_rid) = match (ra, rb) {
        (Ok(()), Err(StoreError::StaleKey)) => (a, b, "y"),
        (Err(StoreError::StaleKey), Ok(())) => (b, a, "x"),
        other => panic!("one write wins, the other is stale: {other:?}"),
    };
    let live = other.data_key_by_compartment("Patient/n").await.unwrap();
    assert_eq!(live.map(|k| k.id), Some(winner));
    assert_eq!(store.data_key_by_id(loser).await.unwrap(), None);
    assert_eq!(
        store.resource_current("Patient", loser_rid).await.unwrap(),
        None
    );
    // The loser seals again under the winner's key and commits.
    other
        .write(vec![first_version_under(loser_rid, (winner, b"sealed-1"))])
        .await
        .unwrap();
    assert_eq!(store.data_key_counts().await.unwrap(), vec![(1, 1)]);

    // A write refused for another reason takes its new key with it.
    let c = store.reserve_data_key_id().await.unwrap();
    let mut refused = new_key_and_version(c, "Patient/m", "x");
    refused.push(put("x", 1, None));
    assert!(matches!(
        store.write(refused).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.data_key_by_id(c).await.unwrap(), None);
    assert_eq!(
        other.data_key_by_compartment("Patient/m").await.unwrap(),
        None
    );

    // Below the KEK wrap floor a new key is stale too (wrap it again under the active version).
    store.write(vec![wrap_floor(2)]).await.unwrap();
    let d = store.reserve_data_key_id().await.unwrap();
    assert!(matches!(
        store.write(new_key_and_version(d, "Patient/m", "z")).await,
        Err(StoreError::StaleKey)
    ));
    assert_eq!(store.data_key_counts().await.unwrap(), vec![(1, 1)]);
}

pub(crate) async fn reserved_data_key_ids_are_never_handed_out_twice(
    store: &dyn Store,
    other: &dyn Store,
) {
    // More than a block from each handle, with keys inserted without an id (secrets, a
    // rotation's new generation) in between: every id differs, and a reserved id is one the
    // database never gave to such a key.
    let mut seen = std::collections::HashSet::new();
    let total = 2 * crate::ids::BLOCK + 3;
    for i in 0..total {
        let handle = if i % 2 == 0 { store } else { other };
        assert!(seen.insert(handle.reserve_data_key_id().await.unwrap()));
        if i % 100 == 0 {
            let compartment = format!("secret:{i}");
            handle.write(vec![data_key(&compartment)]).await.unwrap();
            let key = handle
                .data_key_by_compartment(&compartment)
                .await
                .unwrap()
                .unwrap();
            assert!(seen.insert(key.id), "key {} reused a reserved id", key.id);
        }
    }
    // A reserved id is usable.
    let id = store.reserve_data_key_id().await.unwrap();
    assert!(!seen.contains(&id));
    store
        .write(new_key_and_version(id, "Patient/r", "r"))
        .await
        .unwrap();
    assert_eq!(
        other
            .data_key_by_compartment("Patient/r")
            .await
            .unwrap()
            .map(|k| k.id),
        Some(id)
    );
}

/// A bulk export job's row: inserted, its body replaced (never its owner or creation time),
/// listed oldest first, deleted (twice is no error).
async fn export_jobs_are_kept_replaced_and_deleted(store: &dyn Store, other: &dyn Store) {
    let job = |id: &str, principal: &str, created_us: i64, body: &str| crate::ExportJobRow {
        id: id.into(),
        principal_id: principal.into(),
        created_us,
        body: body.into(),
    };
    assert!(store.export_job("j1").await.unwrap().is_none());
    store
        .write(vec![
            WriteOp::PutExportJob(job("j2", "p2", 20, "{}")),
            WriteOp::PutExportJob(job("j1", "p1", 10, "{\"state\":\"running\"}")),
        ])
        .await
        .unwrap();
    store
        .write(vec![WriteOp::PutExportJob(job(
            "j1",
            "someone-else",
            99,
            "{\"state\":\"complete\"}",
        ))])
        .await
        .unwrap();
    assert_eq!(
        other.export_job("j1").await.unwrap(),
        Some(job("j1", "p1", 10, "{\"state\":\"complete\"}"))
    );
    let ids: Vec<String> = other
        .export_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["j1", "j2"]);
    for _ in 0..2 {
        store
            .write(vec![WriteOp::DeleteExportJob { id: "j1".into() }])
            .await
            .unwrap();
    }
    assert!(other.export_job("j1").await.unwrap().is_none());
    assert_eq!(other.export_jobs().await.unwrap().len(), 1);
}

/// Two nodes' chains, with checkpoints signed at times 100 and 200 (n1) and 150 (n2), verified
/// a few events per query: whole, and from the last checkpoint before an instant.
pub(crate) async fn the_audit_trail_verifies_a_page_at_a_time_whole_or_recent(
    store: &dyn Store,
    _: &dyn Store,
) {
    use crate::trail::{TrailScope, verify_in_pages};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut signed: std::collections::HashMap<&str, (u64, Vec<u8>)> = Default::default();
    let mut sign = async |node: &'static str, time_us: i64| {
        let (seq, hash) = store.audit_head(node).await.unwrap().0.unwrap();
        let (first, prev) = match signed.get(node) {
            Some((last, sig)) => (last + 1, Some(sig.clone())),
            None => (1, None),
        };
        let cp = carevault_audit::Checkpoint::sign(&key, node, first, seq, hash, time_us, prev);
        signed.insert(node, (seq, cp.signature.clone()));
        store
            .write(vec![WriteOp::InsertCheckpoint(cp)])
            .await
            .unwrap();
    };
    let append = async |node: &str, range: std::ops::RangeInclusive<u32>| {
        store
            .write(range.map(|n| audit(node, n)).collect())
            .await
            .unwrap();
    };
    append("n1", 1..=10).await;
    sign("n1", 100).await;
    append("n2", 1..=12).await;
    sign("n2", 150).await;
    append("n1", 11..=20).await;
    sign("n1", 200).await;
    append("n1", 21..=30).await;

    let verify = async |scope| {
        verify_in_pages(store, key.verifying_key(), scope, 7)
            .await
            .unwrap()
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| (n.node, n.first_verified, n.events, n.signed_up_to))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        verify(TrailScope::Whole).await,
        [("n1".into(), 1, 30, 20), ("n2".into(), 1, 12, 12)]
    );
    assert_eq!(
        verify(TrailScope::Since(150)).await,
        [("n1".into(), 11, 30, 20), ("n2".into(), 1, 12, 12)]
    );
    assert_eq!(
        verify(TrailScope::Since(201)).await,
        [("n1".into(), 21, 30, 20), ("n2".into(), 13, 12, 12)]
    );
}

/// The index rebuild's guard: entries computed from a version another node has since replaced
/// (or deleted) do not overwrite the newer version's entries.
pub(crate) async fn an_index_replacement_for_a_stale_version_changes_nothing(
    store: &dyn Store,
    other: &dyn Store,
) {
    let replace = |tokens: &[u8], only_if_current: Option<u32>| WriteOp::ReplaceSearchIndex {
        rtype: "Patient".into(),
        id: "a".into(),
        tokens: vec![("name".into(), tokens.to_vec())],
        only_if_current,
    };
    let found = |tokens: &[u8]| {
        let clause = IndexClause {
            param: "name".into(),
            tokens: vec![tokens.to_vec()],
        };
        async move { store.search_index("Patient", vec![clause]).await.unwrap() }
    };
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    store
        .write(vec![put("a", 1, None), replace(b"v1", None)])
        .await
        .unwrap();
    // The rebuild read version 1; meanwhile another node wrote version 2 and its entries.
    other
        .write(vec![put("a", 2, Some(1)), replace(b"v2", None)])
        .await
        .unwrap();
    store
        .write(vec![replace(b"v1-rebuilt", Some(1))])
        .await
        .unwrap();
    assert_eq!(found(b"v2").await, vec!["a"]);
    assert!(found(b"v1-rebuilt").await.is_empty());
    // For the current version, it replaces.
    store
        .write(vec![replace(b"v2-rebuilt", Some(2))])
        .await
        .unwrap();
    assert_eq!(found(b"v2-rebuilt").await, vec!["a"]);
    assert!(found(b"v2").await.is_empty());
    // Nothing for a resource that is not there.
    let absent = WriteOp::ReplaceSearchIndex {
        rtype: "Patient".into(),
        id: "zz".into(),
        tokens: vec![("name".into(), b"ghost".to_vec())],
        only_if_current: Some(1),
    };
    store.write(vec![absent]).await.unwrap();
    assert!(found(b"ghost").await.is_empty());
}
