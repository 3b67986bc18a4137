//! `carevault migrate sqlite-to-postgres`: copy an environment's database into PostgreSQL,
//! resumably, then check that every table's rows arrived and that the audit trail verifies.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use carevault_audit::parse_public_key;
use carevault_store::{PostgresOptions, PostgresStore, copy_sqlite_to_postgres, redact_url};
use clap::Subcommand;

use crate::commands::audit::{TrailSource, verify_trail};
use crate::local::runtime;

#[derive(Subcommand)]
pub(crate) enum MigrateCommand {
    /// Copy a SQLite database (stop the server first) into PostgreSQL, with progress; run it
    /// again to resume an interrupted copy. Verifies row counts and the audit trail after.
    ///
    /// Example: carevault migrate sqlite-to-postgres --from carevault-data/carevault.db --to postgres://carevault@db.example/carevault --public-key 3f1c...
    SqliteToPostgres {
        /// The SQLite database (DATA_DIR/carevault.db).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL; its password from CAREVAULT_DATABASE_PASSWORD if not inside.
        #[arg(long)]
        to: String,
        /// The audit public key (hex), as printed by `init` and `carevault audit public-key`.
        #[arg(long)]
        public_key: String,
    },
}

pub(crate) fn run(command: MigrateCommand) -> Result<()> {
    match command {
        MigrateCommand::SqliteToPostgres {
            from,
            to,
            public_key,
        } => sqlite_to_postgres(&from, &to, &public_key),
    }
}

fn sqlite_to_postgres(from: &Path, to: &str, public_key: &str) -> Result<()> {
    let key = parse_public_key(public_key)?;
    if !from.exists() {
        bail!("{} does not exist", from.display());
    }
    let options = PostgresOptions {
        url: to.to_owned(),
        password: std::env::var("CAREVAULT_DATABASE_PASSWORD").ok(),
        pool_size: 2,
    };
    runtime()?.block_on(async {
        let store = PostgresStore::connect(&options)
            .await
            .with_context(|| format!("cannot open {}", redact_url(to)))?;
        let counts = copy_sqlite_to_postgres(from, &store, |p| {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{:<18} {:>10} / {:<10}", p.table, p.done, p.total);
            if p.done >= p.total {
                let _ = writeln!(err);
            }
        })
        .await
        .context("copy failed; run the same command again to resume")?;
        println!("{:<18} {:>10} {:>10}", "TABLE", "SQLITE", "POSTGRES");
        let mut mismatched = Vec::new();
        for c in &counts {
            println!("{:<18} {:>10} {:>10}", c.table, c.source, c.target);
            if c.source != c.target {
                mismatched.push(c.table);
            }
        }
        if !mismatched.is_empty() {
            bail!(
                "row counts differ in {} (was the server still writing?)",
                mismatched.join(", ")
            );
        }
        match verify_trail(&TrailSource::Postgres(options.clone()), key).await? {
            Ok(report) => {
                for n in &report.nodes {
                    println!(
                        "node {}: {} events, signed up to event {}",
                        n.node, n.events, n.signed_up_to
                    );
                }
                println!("copied; audit trail verified in PostgreSQL");
                Ok(())
            }
            Err(breach) => bail!("audit trail BROKEN after the copy: {breach}"),
        }
    })
}
