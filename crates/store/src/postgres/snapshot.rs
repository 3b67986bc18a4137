//! One `REPEATABLE READ` snapshot of the database, exported for `pg_dump --snapshot`, and the
//! facts of a database (the same queries as SQLite's).

use std::future::Future;

use super::{PostgresOptions, PostgresStore, map_err, schema_version};
use crate::StoreError;
use crate::snapshot::{
    AUDIT_HEADS, AuditHead, CHECKPOINTS, COUNTS, CheckpointHead, ENVIRONMENT_ID, RESOURCES,
    SnapshotFacts, hex,
};

/// The relations (`pg_class c`) that live in a schema of the user's, not PostgreSQL's.
const USER_RELATIONS: &str = "JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
     AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')";

impl PostgresStore {
    /// Connect without migrating or checking the schema (a restore's target, which must be
    /// empty).
    pub fn connect_unmigrated(options: &PostgresOptions) -> Result<Self, StoreError> {
        Self::open(options)
    }

    /// Relations (tables, views, sequences, foreign tables) in any schema but PostgreSQL's
    /// own: a restore writes only to a database where this is 0, so that undoing a failed
    /// restore ([`Self::drop_restored_relations`]) drops nothing that was there before.
    pub async fn relation_count(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT COUNT(*) FROM pg_class c {USER_RELATIONS}");
        let row = client.query_one(&sql, &[]).await.map_err(|e| map_err(&e))?;
        Ok(row.get(0))
    }

    /// Drop every relation outside PostgreSQL's own schemas, in one transaction: undoes a
    /// restore that failed its checks on a database that held none
    /// ([`Self::relation_count`] was 0 before it).
    pub async fn drop_restored_relations(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT n.nspname AS s, c.relname AS t, c.relkind AS k
                        FROM pg_class c {USER_RELATIONS} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                        ORDER BY c.relkind DESC LOOP
                 EXECUTE format(CASE r.k WHEN 'v' THEN 'DROP VIEW IF EXISTS %I.%I CASCADE'
                                         WHEN 'm' THEN 'DROP MATERIALIZED VIEW IF EXISTS %I.%I CASCADE'
                                         WHEN 'f' THEN 'DROP FOREIGN TABLE IF EXISTS %I.%I CASCADE'
                                         ELSE 'DROP TABLE IF EXISTS %I.%I CASCADE' END, r.s, r.t);
               END LOOP;
               FOR r IN SELECT n.nspname AS s, c.relname AS t FROM pg_class c {USER_RELATIONS}
                        AND c.relkind = 'S' LOOP
                 EXECUTE format('DROP SEQUENCE IF EXISTS %I.%I CASCADE', r.s, r.t);
               END LOOP;
             END $$"
        );
        client.batch_execute(&sql).await.map_err(|e| map_err(&e))
    }

    /// Open one read-only `REPEATABLE READ` transaction, read its facts, and run `dump` with
    /// its exported snapshot id while it stays open (so `pg_dump --snapshot=ID` sees exactly
    /// the state the facts describe). Writers are not blocked.
    pub async fn snapshot<F, Fut, E>(
        &self,
        dump: F,
    ) -> Result<(SnapshotFacts, Result<(), E>), StoreError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let client = self.client().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| map_err(&e))?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| map_err(&e))?
            .get(0);
        let facts = facts(&client).await;
        let dumped = match &facts {
            Ok(_) => dump(id).await,
            Err(_) => Ok(()),
        };
        let _ = client.batch_execute("COMMIT").await;
        Ok((facts?, dumped))
    }

    /// Claim the scheduled backup due at `now_us` when the last claim is `every_us` or more
    /// old: of several nodes asking at once, exactly one wins (a compare-and-set on a row of
    /// `meta`, no advisory lock: see the module doc of `postgres`). A node that claims and then
    /// fails loses that period's backup; the next claim is due `every_us` later.
    pub async fn claim_backup_slot(&self, now_us: i64, every_us: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('backup_claimed_us', '0') ON CONFLICT (key) DO NOTHING",
                &[],
            )
            .await
            .map_err(|e| map_err(&e))?;
        let claimed = client
            .execute(
                // CASE: the cast only ever sees this row's value (AND has no evaluation order).
                "UPDATE meta SET value = $1 WHERE key = 'backup_claimed_us' \
                 AND CASE WHEN key = 'backup_claimed_us' THEN value::BIGINT <= $2 ELSE FALSE END",
                &[&now_us.to_string(), &now_us.saturating_sub(every_us)],
            )
            .await
            .map_err(|e| map_err(&e))?;
        Ok(claimed == 1)
    }

    /// The facts of this database as it is now (a restored copy).
    pub async fn facts(&self) -> Result<SnapshotFacts, StoreError> {
        let client = self.client().await?;
        facts(&client).await
    }
}

async fn facts(client: &tokio_postgres::Client) -> Result<SnapshotFacts, StoreError> {
    let e = |e: tokio_postgres::Error| map_err(&e);
    let environment_id: String = client
        .query_one(ENVIRONMENT_ID, &[])
        .await
        .map_err(e)?
        .get(0);
    let mut facts = SnapshotFacts {
        environment_id,
        schema_version: schema_version(client).await?,
        ..SnapshotFacts::default()
    };
    for row in client.query(RESOURCES, &[]).await.map_err(e)? {
        facts
            .resources
            .insert(row.get(0), row.get::<_, i64>(1).unsigned_abs());
    }
    let row = client.query_one(COUNTS, &[]).await.map_err(e)?;
    facts.versions = row.get::<_, i64>(0).unsigned_abs();
    facts.data_keys = row.get::<_, i64>(1).unsigned_abs();
    facts.audit_events = row.get::<_, i64>(2).unsigned_abs();
    for row in client.query(AUDIT_HEADS, &[]).await.map_err(e)? {
        facts.audit_heads.push(AuditHead {
            node: row.get(0),
            seq: row.get::<_, i64>(1).unsigned_abs(),
            hash: hex(row.get::<_, &[u8]>(2)),
        });
    }
    for row in client.query(CHECKPOINTS, &[]).await.map_err(e)? {
        facts.checkpoints.push(CheckpointHead {
            node: row.get(0),
            last_seq: row.get::<_, i64>(1).unsigned_abs(),
            time_us: row.get(2),
            signature: hex(row.get::<_, &[u8]>(3)),
        });
    }
    Ok(facts)
}
