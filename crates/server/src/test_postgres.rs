//! A PostgreSQL database of a test's own, on the server the test suite uses
//! (`CAREVAULT_TEST_POSTGRES_URL`, by default the local one): created on demand, dropped with
//! the value. Any number of stores (nodes) may connect to it.

use carevault_store::{PostgresOptions, PostgresStore};

pub(crate) struct TestPostgres {
    admin: String,
    name: String,
}

impl TestPostgres {
    pub(crate) fn create(prefix: &str) -> Self {
        let admin = std::env::var("CAREVAULT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let db = Self {
            admin,
            name: format!("cv_{prefix}_{}", uuid::Uuid::new_v4().simple()),
        };
        db.psql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    /// A store (a node) on this database, migrated.
    pub(crate) async fn store(&self) -> PostgresStore {
        let base = self.admin.split('?').next().unwrap_or(&self.admin);
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        PostgresStore::connect(&PostgresOptions {
            url: format!("{server}/{}", self.name),
            password: None,
            pool_size: 4,
        })
        .await
        .unwrap()
    }

    fn psql(&self, sql: &str) {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", &self.admin, "-c", sql])
            .output()
            .expect("psql runs (the PostgreSQL client is needed for this test)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.psql(&format!("DROP DATABASE {} WITH (FORCE)", self.name));
    }
}
