//! Copying an environment's SQLite database into PostgreSQL, table by table, in chunks that
//! commit one at a time. Rows already there are skipped (`ON CONFLICT DO NOTHING`), so an
//! interrupted copy resumes by running it again. Afterwards the PostgreSQL-only state
//! (sequences, audit chain heads, the policy-set version) is derived from the copied rows.

use std::path::Path;

use rusqlite::types::Value;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use crate::postgres::PostgresStore;
use crate::sqlite::SQLITE_SCHEMA_VERSION;
use crate::{SqliteStore, StoreError};

#[derive(Clone, Copy)]
enum Col {
    Text,
    Int,
    Bool,
    Bytes,
}

/// A table: name, columns with their PostgreSQL types, and the key to copy in order of.
type Table = (&'static str, &'static [(&'static str, Col)], &'static str);

/// Every table, parents before children (foreign keys), with its columns and key.
const TABLES: &[Table] = &[
    ("meta", &[("key", Col::Text), ("value", Col::Text)], "key"),
    (
        "principal",
        &[
            ("id", Col::Text),
            ("username", Col::Text),
            ("roles", Col::Text),
            ("organization", Col::Text),
            ("disabled", Col::Bool),
            ("locked", Col::Bool),
            ("failed_logins", Col::Int),
            ("created_at", Col::Int),
        ],
        "id",
    ),
    (
        "credential",
        &[
            ("principal_id", Col::Text),
            ("password_hash", Col::Text),
            ("totp_secret", Col::Bytes),
            ("totp_last_step", Col::Int),
            ("recovery_codes", Col::Text),
        ],
        "principal_id",
    ),
    (
        "enrollment",
        &[
            ("token_hash", Col::Text),
            ("principal_id", Col::Text),
            ("expires_at", Col::Int),
            ("pending_totp", Col::Bytes),
        ],
        "token_hash",
    ),
    (
        "session",
        &[
            ("token_hash", Col::Text),
            ("principal_id", Col::Text),
            ("created_at", Col::Int),
            ("last_seen", Col::Int),
            ("revoked", Col::Bool),
        ],
        "token_hash",
    ),
    (
        "data_key",
        &[
            ("id", Col::Int),
            ("compartment", Col::Text),
            ("wrapped", Col::Bytes),
            ("kek_version", Col::Int),
            ("state", Col::Text),
            ("created_at", Col::Int),
        ],
        "id",
    ),
    (
        "resource_version",
        &[
            ("seq", Col::Int),
            ("rtype", Col::Text),
            ("id", Col::Text),
            ("version", Col::Int),
            ("last_updated_us", Col::Int),
            ("deleted", Col::Bool),
            ("dek_id", Col::Int),
            ("body", Col::Bytes),
        ],
        "seq",
    ),
    (
        "resource_current",
        &[
            ("rtype", Col::Text),
            ("id", Col::Text),
            ("version", Col::Int),
            ("deleted", Col::Bool),
        ],
        "rtype, id",
    ),
    (
        "search_index",
        &[
            ("rtype", Col::Text),
            ("param", Col::Text),
            ("token", Col::Bytes),
            ("id", Col::Text),
        ],
        // SQLite's key order (it also keys by write order, `ord`, which PostgreSQL has not).
        "rtype, param, token, ord, id",
    ),
    (
        "compartment_org",
        &[("compartment", Col::Text), ("organization", Col::Text)],
        "compartment",
    ),
    (
        "api_key",
        &[
            ("name", Col::Text),
            ("key_hash", Col::Text),
            ("owner_id", Col::Text),
            ("scopes", Col::Text),
            ("allowed_cidrs", Col::Text),
            ("expires_at", Col::Int),
            ("revoked", Col::Bool),
            ("created_at", Col::Int),
            ("client_cert_sha256", Col::Text),
        ],
        "name",
    ),
    (
        "policy",
        &[
            ("name", Col::Text),
            ("text", Col::Text),
            ("updated_at", Col::Int),
        ],
        "name",
    ),
    (
        "policy_history",
        &[
            ("version", Col::Int),
            ("name", Col::Text),
            ("text", Col::Text),
            ("at", Col::Int),
        ],
        "version",
    ),
    (
        "break_glass",
        &[
            ("id", Col::Int),
            ("principal_id", Col::Text),
            ("until", Col::Int),
            ("patient", Col::Text),
            ("reason", Col::Text),
            ("created_at", Col::Int),
        ],
        "id",
    ),
    (
        "audit_event",
        &[
            ("node", Col::Text),
            ("seq", Col::Int),
            ("time_us", Col::Int),
            ("principal", Col::Text),
            ("action", Col::Text),
            ("outcome", Col::Text),
            ("body", Col::Bytes),
            ("hash", Col::Bytes),
        ],
        "node, seq",
    ),
    (
        "audit_patient",
        &[
            ("node", Col::Text),
            ("seq", Col::Int),
            ("patient", Col::Text),
        ],
        "node, seq, patient",
    ),
    (
        "audit_checkpoint",
        &[
            ("node", Col::Text),
            ("first_seq", Col::Int),
            ("last_seq", Col::Int),
            ("head_hash", Col::Bytes),
            ("time_us", Col::Int),
            ("prev_signature", Col::Bytes),
            ("signature", Col::Bytes),
        ],
        "node, last_seq",
    ),
];

/// Rows per committed chunk.
const CHUNK: usize = 500;

/// Where a copy stands, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct CopyProgress<'a> {
    pub table: &'a str,
    pub done: u64,
    pub total: u64,
}

/// One table's rows in the source and the target after the copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    pub source: u64,
    pub target: u64,
}

/// Copy the SQLite database at `from` into `to` (migrated, empty or holding a previous partial
/// copy of the same environment), reporting progress; then the rows of each table on both
/// sides. Refuses a target that belongs to another environment.
pub async fn copy_sqlite_to_postgres(
    from: &Path,
    to: &PostgresStore,
    mut progress: impl FnMut(CopyProgress<'_>) + Send,
) -> Result<Vec<TableCount>, StoreError> {
    let source = SqliteStore::open_read_only(from)?;
    // The copy reads tables by this binary's column lists (and key order): an older file must be
    // upgraded first, which the copy does not do behind the operator's back.
    let schema = sqlite_schema_version(from).await?;
    if schema < SQLITE_SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the SQLite database is at schema {schema} and this binary copies schema \
             {SQLITE_SCHEMA_VERSION}: start `carevault serve` of this version on it once (that \
             upgrades it), stop it, then run the copy again"
        )));
    }
    let env = source.meta("environment_id").await?;
    match (env, to.meta("environment_id").await?) {
        (None, _) => {
            return Err(StoreError::Backend(
                "the SQLite database holds no CareVault environment".into(),
            ));
        }
        (Some(a), Some(b)) if a != b => {
            return Err(StoreError::Backend(
                "the PostgreSQL database holds another environment".into(),
            ));
        }
        _ => {}
    }
    let mut counts = Vec::new();
    for (table, cols, key) in TABLES {
        let total = sqlite_count(from, table).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<Vec<Value>>>(2);
        let path = from.to_path_buf();
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let select = format!("SELECT {} FROM {table} ORDER BY {key}", names.join(", "));
        let reader = tokio::task::spawn_blocking(move || read_chunks(&path, &select, &tx));
        let mut done = 0u64;
        progress(CopyProgress { table, done, total });
        while let Some(chunk) = rx.recv().await {
            insert_chunk(to, table, cols, &chunk).await?;
            done += chunk.len() as u64;
            progress(CopyProgress { table, done, total });
        }
        reader
            .await
            .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))??;
        let target: i64 = to
            .client_for_tools()
            .await?
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .map_err(|e| pg_err(&e))?
            .get(0);
        counts.push(TableCount {
            table,
            source: total,
            target: u64::try_from(target).unwrap_or(0),
        });
    }
    derive_state(to).await?;
    Ok(counts)
}

async fn sqlite_schema_version(path: &Path) -> Result<i64, StoreError> {
    sqlite_scalar(path, "PRAGMA user_version".to_owned()).await
}

async fn sqlite_count(path: &Path, table: &str) -> Result<u64, StoreError> {
    let n = sqlite_scalar(path, format!("SELECT COUNT(*) FROM {table}")).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One integer from the SQLite file, read on a read-only connection of its own.
async fn sqlite_scalar(path: &Path, sql: String) -> Result<i64, StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(sqlite_err)?;
        conn.query_row(&sql, [], |r| r.get(0)).map_err(sqlite_err)
    })
    .await
    .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))?
}

fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("reading SQLite: {e}"))
}

fn pg_err(e: &tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) => StoreError::Backend(format!("SQLSTATE {}", code.code())),
        None => StoreError::Unavailable(format!("database connection: {e}")),
    }
}

fn read_chunks(
    path: &Path,
    select: &str,
    tx: &mpsc::Sender<Vec<Vec<Value>>>,
) -> Result<(), StoreError> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite_err)?;
    let mut stmt = conn.prepare(select).map_err(sqlite_err)?;
    let width = stmt.column_count();
    let mut rows = stmt.query([]).map_err(sqlite_err)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(row) = rows.next().map_err(sqlite_err)? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(row.get::<_, Value>(i).map_err(sqlite_err)?);
        }
        chunk.push(values);
        // A send fails only when the writer stopped; its error is the one reported.
        if chunk.len() == CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    Ok(())
}

/// One value as the PostgreSQL column's type expects it.
fn convert(value: &Value, col: Col) -> Box<dyn ToSql + Sync + Send> {
    match (col, value) {
        (Col::Text, Value::Null) => Box::new(None::<String>),
        (Col::Int, Value::Null) => Box::new(None::<i64>),
        (Col::Bool, Value::Null) => Box::new(None::<bool>),
        (Col::Bytes, Value::Null) => Box::new(None::<Vec<u8>>),
        (Col::Text, Value::Text(s)) => Box::new(s.clone()),
        (Col::Text, Value::Integer(i)) => Box::new(i.to_string()),
        (Col::Text, Value::Blob(b)) => Box::new(String::from_utf8_lossy(b).into_owned()),
        (Col::Int, Value::Integer(i)) => Box::new(*i),
        (Col::Bool, Value::Integer(i)) => Box::new(*i != 0),
        (Col::Bytes, Value::Blob(b)) => Box::new(b.clone()),
        // An audit body or hash stored as TEXT (a damaged row) keeps its bytes, so the
        // verifier reports it after the copy instead of the copy hiding it.
        (Col::Bytes, Value::Text(s)) => Box::new(s.clone().into_bytes()),
        (Col::Bytes, Value::Integer(i)) => Box::new(i.to_string().into_bytes()),
        (Col::Int, Value::Real(f)) => Box::new(*f as i64),
        (Col::Int | Col::Bool, other) => Box::new(format!("{other:?}")),
        (Col::Text | Col::Bytes, Value::Real(f)) => Box::new(f.to_string()),
    }
}

async fn insert_chunk(
    to: &PostgresStore,
    table: &str,
    cols: &[(&str, Col)],
    rows: &[Vec<Value>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", names.join(", "));
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(rows.len() * cols.len());
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for (c, (value, (_, col))) in row.iter().zip(cols).enumerate() {
            if c > 0 {
                sql.push(',');
            }
            params.push(convert(value, *col));
            sql.push_str(&format!("${}", params.len()));
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    to.client_for_tools()
        .await?
        .execute(&sql, &refs)
        .await
        .map_err(|e| pg_err(&e))?;
    Ok(())
}

/// What PostgreSQL keeps beside the rows: serial counters past the copied ids, each node's
/// audit chain head, the policy-set version.
async fn derive_state(to: &PostgresStore) -> Result<(), StoreError> {
    let client = to.client_for_tools().await?;
    client
        .batch_execute(
            "SELECT setval(pg_get_serial_sequence('resource_version', 'seq'),
                           GREATEST((SELECT MAX(seq) FROM resource_version), 1));
             SELECT setval(pg_get_serial_sequence('data_key', 'id'),
                           GREATEST((SELECT MAX(id) FROM data_key), 1));
             SELECT setval(pg_get_serial_sequence('break_glass', 'id'),
                           GREATEST((SELECT MAX(id) FROM break_glass), 1));
             INSERT INTO audit_head (node, seq, hash)
                 SELECT e.node, e.seq, e.hash FROM audit_event e
                 WHERE e.seq = (SELECT MAX(seq) FROM audit_event m WHERE m.node = e.node)
                 ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
             UPDATE policy_state SET version =
                 (SELECT COALESCE(MAX(version), 0) FROM policy_history) WHERE id = 1;",
        )
        .await
        .map_err(|e| pg_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::tests::TestDb;
    use crate::{NewAuditEvent, NewResourceVersion, PostgresOptions, ResourceRow, Store, WriteOp};

    fn audit(n: u32) -> WriteOp {
        WriteOp::AppendAudit(NewAuditEvent {
            node: "node-1".into(),
            time_us: i64::from(n),
            principal: "p".into(),
            action: "create".into(),
            outcome: "success".into(),
            patients: vec!["Patient/a".into()],
            body: format!("{{\"n\":{n}}}").into_bytes(),
        })
    }

    #[tokio::test]
    async fn a_copy_matches_its_source_resumes_and_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let sqlite = SqliteStore::open(&path).unwrap();
        sqlite
            .write(vec![WriteOp::SetMeta {
                key: "environment_id".into(),
                value: "env-x".into(),
            }])
            .await
            .unwrap();
        // Data key 1, which the versions below are sealed under.
        sqlite
            .write(vec![WriteOp::InsertDataKeyIfAbsent {
                compartment: "Patient/r".into(),
                wrapped: vec![0],
                kek_version: 1,
                created_at: 0,
            }])
            .await
            .unwrap();
        for v in 1..=1200u32 {
            let id = format!("r{}", v % 7);
            let current = sqlite.resource_current("Patient", &id).await.unwrap();
            sqlite
                .write(vec![
                    WriteOp::PutResource(NewResourceVersion {
                        row: ResourceRow {
                            rtype: "Patient".into(),
                            id: id.clone(),
                            version: current.as_ref().map_or(1, |c| c.version + 1),
                            last_updated_us: i64::from(v),
                            deleted: false,
                            dek_id: 1,
                            body: vec![1, 2, 3],
                        },
                        expected_current: current.map(|c| c.version),
                    }),
                    audit(v),
                ])
                .await
                .unwrap();
        }
        drop(sqlite);
        let db = TestDb::new().await;
        let options = PostgresOptions {
            url: db.url.clone(),
            password: None,
            pool_size: 2,
        };
        let pg = PostgresStore::connect(&options).await.unwrap();
        let mut seen = Vec::new();
        copy_sqlite_to_postgres(&path, &pg, |p| seen.push((p.table.to_owned(), p.done)))
            .await
            .unwrap();
        assert!(
            seen.iter()
                .any(|(t, n)| t == "resource_version" && *n == 500)
        );
        // As if the copy had stopped part-way: the later chunks of two tables are missing.
        let client = pg.client_for_tools().await.unwrap();
        client
            .batch_execute(
                "DELETE FROM resource_version WHERE seq > 700;
                 DELETE FROM audit_patient WHERE seq > 300;
                 DELETE FROM audit_event WHERE seq > 300;",
            )
            .await
            .unwrap();
        let counts = copy_sqlite_to_postgres(&path, &pg, |_| {}).await.unwrap();
        for c in &counts {
            assert_eq!(c.source, c.target, "{}", c.table);
        }
        let events = pg.audit_events(None, 5000).await.unwrap();
        assert_eq!(events.len(), 1200);
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        carevault_audit::verify(&events, &[], &key.verifying_key()).unwrap();
        // The copied chain continues where SQLite's ended.
        pg.write(vec![audit(5000)]).await.unwrap();
        let (head, _) = pg.audit_head("node-1").await.unwrap();
        assert_eq!(head.unwrap().0, 1201);
        let current = pg.resource_current("Patient", "r1").await.unwrap().unwrap();
        pg.write(vec![WriteOp::PutResource(NewResourceVersion {
            row: ResourceRow {
                version: current.version + 1,
                ..current.clone()
            },
            expected_current: Some(current.version),
        })])
        .await
        .unwrap();
        // Another environment's database is refused.
        client
            .batch_execute("UPDATE meta SET value = 'env-other' WHERE key = 'environment_id'")
            .await
            .unwrap();
        assert!(copy_sqlite_to_postgres(&path, &pg, |_| {}).await.is_err());
        // A file from an older binary is refused by name, before anything is copied.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA user_version = {}",
            SQLITE_SCHEMA_VERSION - 1
        ))
        .unwrap();
        drop(conn);
        let err = copy_sqlite_to_postgres(&path, &pg, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("upgrades it"), "{err}");
    }
}
