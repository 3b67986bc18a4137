//! One `REPEATABLE READ` snapshot of the database, exported for `pg_dump --snapshot`, and the
//! facts of a database (the same queries as SQLite's).

use std::future::Future;

use super::{PostgresOptions, PostgresStore, map_err, schema_version};
use crate::StoreError;
use crate::snapshot::{
    AUDIT_HEADS, AuditHead, CHECKPOINTS, COUNTS, CheckpointHead, ENVIRONMENT_ID, RESOURCES,
    SnapshotFacts, hex,
};

impl PostgresStore {
    /// Connect without migrating or checking the schema (a restore's target, which must be
    /// empty).
    pub fn connect_unmigrated(options: &PostgresOptions) -> Result<Self, StoreError> {
        Self::open(options)
    }

    /// Tables in the connection's schema (0: an empty database a restore may fill).
    pub async fn table_count(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
                &[],
            )
            .await
            .map_err(|e| map_err(&e))?;
        Ok(row.get(0))
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
