//! `carevault audit ...`: offline verification and export read the database (or an export)
//! directly and need only the public key; `public-key` and `hash` open the environment's
//! keyring; `search` goes through the API like any client.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use carevault_audit::{ExportLine, parse_export, parse_public_key};
use carevault_server::audit::Audit;
use carevault_server::config::Database;
use carevault_server::{SharedClock, SystemClock, environment};
use carevault_store::{PostgresOptions, PostgresStore, SqliteStore, Store};
use clap::Subcommand;

use crate::client::Client;
use crate::local::{ServerArgs, load_config, load_config_for_keys, runtime};
use crate::output::OutputArgs;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the trail offline: hash chains, sequence, and signed checkpoints. Exit code 0
    /// only if everything holds.
    ///
    /// Example: carevault audit verify --data-dir carevault-data --public-key 3f1c...
    Verify {
        /// A database to read: a SQLite file or a postgres:// URL (default: the configured
        /// database). Every node's chain is checked.
        #[arg(long, conflicts_with = "export")]
        db: Option<PathBuf>,
        /// A JSON Lines export (`carevault audit export`) to read instead of a database.
        #[arg(long)]
        export: Option<PathBuf>,
        /// The audit public key (hex), as printed by `init` and `carevault audit public-key`.
        #[arg(long)]
        public_key: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write the trail as JSON Lines (events and checkpoints), to standard output by default.
    ///
    /// Example: carevault audit export --data-dir carevault-data --out trail.jsonl
    Export {
        /// Only events at or after this instant (the result no longer verifies alone).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this instant (the result no longer verifies alone).
        #[arg(long)]
        until: Option<String>,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the key that verifies this environment's checkpoints (the last word of the output).
    ///
    /// Example: carevault audit public-key --data-dir carevault-data
    PublicKey(ServerArgs),
    /// The keyed digest under which the trail records VALUE (search values, attempted usernames).
    ///
    /// Example: carevault audit hash --data-dir carevault-data dr.grey
    Hash {
        /// The value to digest, as it was sent.
        value: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Search the trail through the API (auditor; uses the saved session).
    ///
    /// Example: carevault audit search --patient Patient/123 --since 2026-12-01T00:00:00Z --output json
    Search {
        /// Events of this principal (a username, or apikey:NAME).
        #[arg(long)]
        principal: Option<String>,
        /// Events that touched this patient (`Patient/ID` or `ID`).
        #[arg(long)]
        patient: Option<String>,
        /// Events of this action, e.g. read, search, create, login.
        #[arg(long)]
        action: Option<String>,
        /// `success` or `failure`.
        #[arg(long)]
        outcome: Option<String>,
        /// Events at or after this instant (e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Events before this instant.
        #[arg(long)]
        until: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        count: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
}

pub(crate) fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify {
            db,
            export,
            public_key,
            server,
        } => verify(db, export, &public_key, &server),
        AuditCommand::Export {
            since,
            until,
            out,
            server,
        } => export(since.as_deref(), until.as_deref(), out, &server),
        AuditCommand::PublicKey(server) => runtime()?.block_on(async {
            let audit = open_audit(&server).await?;
            println!("audit public key: {}", audit.public_key());
            Ok(())
        }),
        AuditCommand::Hash { value, server } => runtime()?.block_on(async {
            let audit = open_audit(&server).await?;
            println!("{}", audit.digest(&value));
            Ok(())
        }),
        AuditCommand::Search {
            principal,
            patient,
            action,
            outcome,
            since,
            until,
            count,
            output,
        } => search(
            output,
            &[
                ("principal", principal),
                ("patient", patient),
                ("action", action),
                ("outcome", outcome),
                ("since", since),
                ("until", until),
            ],
            count,
        ),
    }
}

async fn open_audit(server: &ServerArgs) -> Result<Audit> {
    let config = load_config_for_keys(server, false)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let env = environment::open(&config, clock.clone()).await?;
    Ok(Audit::open(env.store, &env.keyring, &config.node_id, clock).await?)
}

/// Where the trail is read from: a SQLite file, or a PostgreSQL database (every node's chain).
pub(crate) enum TrailSource {
    Sqlite(PathBuf),
    Postgres(PostgresOptions),
}

fn trail_source(db: Option<PathBuf>, server: &ServerArgs) -> Result<TrailSource> {
    if let Some(db) = db {
        let text = db.to_string_lossy();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(TrailSource::Postgres(PostgresOptions {
                url: text.into_owned(),
                password: std::env::var("CAREVAULT_DATABASE_PASSWORD").ok(),
                pool_size: 2,
            }));
        }
        return Ok(TrailSource::Sqlite(db));
    }
    let config = load_config(server)?;
    Ok(match &config.database {
        Database::Postgres(pg) => TrailSource::Postgres(pg.options()),
        _ => TrailSource::Sqlite(config.db_path()),
    })
}

/// Events `audit export` reads per query.
const EXPORT_PAGE: u32 = 10_000;

/// Open a database's trail read-only.
async fn open_trail(source: &TrailSource) -> Result<Box<dyn Store>> {
    Ok(match source {
        TrailSource::Sqlite(path) => {
            if !path.exists() {
                bail!("{} does not exist", path.display());
            }
            Box::new(
                SqliteStore::open_read_only(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        }
        TrailSource::Postgres(options) => Box::new(
            PostgresStore::connect_existing(options)
                .await
                .with_context(|| {
                    format!("cannot open {}", carevault_store::redact_url(&options.url))
                })?,
        ),
    })
}

/// Verify a database's whole trail a page at a time (memory stays flat however long it is).
pub(crate) async fn verify_trail(
    source: &TrailSource,
    key: carevault_audit::VerifyingKey,
) -> Result<std::result::Result<carevault_audit::Report, carevault_audit::Breach>> {
    let store = open_trail(source).await?;
    Ok(
        carevault_store::verify_audit_trail(&*store, key, carevault_store::TrailScope::Whole)
            .await?,
    )
}

fn verify(
    db: Option<PathBuf>,
    export: Option<PathBuf>,
    public_key: &str,
    server: &ServerArgs,
) -> Result<()> {
    let key = parse_public_key(public_key)?;
    let verdict = match export {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let (events, checkpoints) = parse_export(&text)?;
            carevault_audit::verify(&events, &checkpoints, &key)
        }
        None => runtime()?.block_on(verify_trail(&trail_source(db, server)?, key))?,
    };
    match verdict {
        Ok(report) => {
            for n in &report.nodes {
                println!(
                    "node {}: {} events, {} checkpoints, signed up to event {}, {} events after the last checkpoint",
                    n.node, n.events, n.checkpoints, n.signed_up_to, n.unsigned_tail
                );
            }
            println!("audit trail verified");
            Ok(())
        }
        Err(breach) => bail!("audit trail BROKEN: {breach}"),
    }
}

fn export(
    since: Option<&str>,
    until: Option<&str>,
    out: Option<PathBuf>,
    server: &ServerArgs,
) -> Result<()> {
    let parse = |s: Option<&str>, name: &str| -> Result<Option<i64>> {
        s.map(|v| {
            carevault_server::clock::parse_instant(v)
                .with_context(|| format!("--{name} must be an instant like 2026-11-27T08:00:00Z"))
        })
        .transpose()
    };
    let (since, until) = (parse(since, "since")?, parse(until, "until")?);
    let source = trail_source(None, server)?;
    let mut sink: Box<dyn Write> = match &out {
        Some(file) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(file)
                .with_context(|| format!("cannot create {}", file.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // A page at a time: the trail can be far larger than memory.
    let (written, checkpoints) = runtime()?.block_on(async {
        let store = open_trail(&source).await?;
        let mut written = 0u64;
        let mut after = None;
        loop {
            let page = store.audit_events(after.take(), EXPORT_PAGE).await?;
            let full = page.len() == EXPORT_PAGE as usize;
            for e in &page {
                if since.is_some_and(|s| e.time_us < s) || until.is_some_and(|u| e.time_us >= u) {
                    continue;
                }
                let line = ExportLine::event(e).context("an event's stored body is not JSON")?;
                serde_json::to_writer(&mut sink, &line)?;
                sink.write_all(b"\n")?;
                written += 1;
            }
            match page.last() {
                Some(last) if full => after = Some((last.node.clone(), last.seq)),
                _ => break,
            }
        }
        let checkpoints = store.audit_checkpoints().await?;
        for c in &checkpoints {
            serde_json::to_writer(&mut sink, &ExportLine::checkpoint(c))?;
            sink.write_all(b"\n")?;
        }
        anyhow::Ok((written, checkpoints.len()))
    })?;
    sink.flush()?;
    if let Some(file) = out {
        eprintln!(
            "wrote {written} events and {checkpoints} checkpoints to {}",
            file.display()
        );
    }
    Ok(())
}

fn search(output: OutputArgs, filters: &[(&str, Option<String>)], count: u32) -> Result<()> {
    let client = Client::from_session()?;
    let mut query = vec![format!("_count={count}")];
    for (k, v) in filters {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    let bundle = client.expect("GET", &format!("/audit/events?{}", query.join("&")), None)?;
    if output.printed_json(&bundle)? {
        return Ok(());
    }
    println!(
        "{:<28} {:<14} {:<38} {:<20} {:<6} PATIENTS",
        "RECORDED", "EVENT", "PRINCIPAL", "ACTION", "STATUS"
    );
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let r = &entry["resource"];
        let status = r["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["detail"].as_array().into_iter().flatten())
            .find(|d| d["type"] == "http_status")
            .and_then(|d| d["valueString"].as_str())
            .unwrap_or("");
        let patients: Vec<&str> = r["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["what"]["reference"].as_str())
            .filter(|p| p.starts_with("Patient/"))
            .collect();
        println!(
            "{:<28} {:<14} {:<38} {:<20} {:<6} {}",
            r["recorded"].as_str().unwrap_or(""),
            r["id"].as_str().unwrap_or(""),
            r["agent"][0]["who"]["identifier"]["value"]
                .as_str()
                .unwrap_or(""),
            r["subtype"][0]["code"].as_str().unwrap_or(""),
            status,
            patients.join(",")
        );
    }
    Ok(())
}

pub(crate) fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
