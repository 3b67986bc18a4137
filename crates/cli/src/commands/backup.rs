//! `carevault backup create|verify|restore`: encrypted backups of an environment (the
//! `carevault-backup` crate does the work; this is the command line around it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use carevault_backup::{Decryption, Encryption, RestoreOptions, VerifyReport};
use carevault_server::config::PostgresConfig;
use carevault_server::{SharedClock, SystemClock};
use clap::{Args, Subcommand};

use crate::local::{ServerArgs, load_config_for_keys, runtime};
use crate::output::OutputArgs;

#[derive(Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up the environment (online: the server may keep serving) into one age-encrypted
    /// file: database snapshot, KEK files as stored, keyring state, manifest.
    ///
    /// Example: carevault backup create --out /backups/carevault-2026-12-05.age --recipient age1...
    Create {
        /// The backup file to create (must not exist; written to a temporary file and renamed
        /// when complete).
        #[arg(long)]
        out: PathBuf,
        /// An age X25519 recipient (age1...) who can open the backup (repeatable).
        #[arg(long = "recipient")]
        recipients: Vec<String>,
        /// A file of age recipients, one a line (# comments).
        #[arg(long)]
        recipients_file: Option<PathBuf>,
        /// Encrypt with the passphrase in this file's first line (at least 12 bytes) instead.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Decrypt a backup, check every hash, restore it into a scratch environment, open every
    /// resource version with the restored keys, verify the audit trail, compare the counts.
    ///
    /// Example: carevault backup verify /backups/carevault-2026-12-05.age --identity ~/backup-key.txt
    Verify {
        /// The backup file to check.
        file: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// For a PostgreSQL backup: an empty database to restore into for the check.
        #[arg(long)]
        scratch_database: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Restore a backup as a new node: into --data-dir (empty or absent) and, with
    /// database.url, into that (empty) PostgreSQL database. Checked whole before it is moved
    /// into place.
    ///
    /// Example: carevault backup restore /backups/carevault-2026-12-05.age --identity ~/backup-key.txt --data-dir /srv/carevault-restored
    Restore {
        /// The backup file to restore.
        file: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// The live (or last) data directory of the same environment: its shred list is applied
        /// to the restore, so shreds made after the backup are not undone.
        #[arg(long)]
        live_data_dir: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Scheduled backups (`backup.schedule`): the last success (time, duration, size, file),
    /// the last failure, the next run, the backups kept, and the last verification.
    ///
    /// Example: carevault backup status --config /etc/carevault/carevault.toml --output json
    Status {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
pub(crate) struct SecretArgs {
    /// An age identity file (AGE-SECRET-KEY-1...) that opens the backup.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The backup's passphrase, in this file's first line.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl SecretArgs {
    fn decryption(&self) -> Result<Decryption> {
        Ok(Decryption::from_args(
            self.identity.as_deref(),
            self.passphrase_file.as_deref(),
        )?)
    }
}

pub(crate) fn run(command: BackupCommand) -> Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    let started = Instant::now();
    match command {
        BackupCommand::Create {
            out,
            recipients,
            recipients_file,
            passphrase_file,
            server,
        } => {
            let enc = Encryption::from_args(
                &recipients,
                recipients_file.as_deref(),
                passphrase_file.as_deref(),
            )?;
            let config = load_config_for_keys(&server, false)?;
            let report =
                runtime()?.block_on(carevault_backup::create(&config, &out, &enc, clock))?;
            let m = &report.manifest;
            println!(
                "backup of environment {} written to {} ({} bytes, {:.1} s)",
                m.environment_id,
                report.path.display(),
                report.size,
                started.elapsed().as_secs_f64()
            );
            println!(
                "schema {} ({}), {} resources, {} versions, {} audit events",
                m.database.schema_version,
                m.backend,
                m.database.resources.values().sum::<u64>(),
                m.database.versions,
                m.database.audit_events
            );
            if !m.hsm_kek_versions.is_empty() {
                println!(
                    "KEKs stay in the HSM: a restore needs versions {:?} there",
                    m.hsm_kek_versions
                );
            }
            Ok(())
        }
        BackupCommand::Verify {
            file,
            secret,
            scratch_database,
            server,
        } => {
            let dec = secret.decryption()?;
            let config = load_config_for_keys(&server, false)?;
            let scratch = scratch_database.map(|url| PostgresConfig {
                url,
                password: std::env::var("CAREVAULT_DATABASE_PASSWORD")
                    .ok()
                    .map(Into::into),
                pool_size: 2,
            });
            let report = runtime()?.block_on(carevault_backup::verify(
                &config, &file, &dec, scratch, clock,
            ))?;
            print_report(&report, started);
            println!("backup verified");
            Ok(())
        }
        BackupCommand::Status { output, server } => {
            let config = load_config_for_keys(&server, false)?;
            let status = carevault_backup::schedule::status_report(&config, &*clock)?;
            if !output.printed_json(&status)? {
                print_status(&status);
            }
            Ok(())
        }
        BackupCommand::Restore {
            file,
            secret,
            live_data_dir,
            server,
        } => {
            let dec = secret.decryption()?;
            let config = load_config_for_keys(&server, false)?;
            let options = RestoreOptions { live_data_dir };
            let report = runtime()?.block_on(carevault_backup::restore(
                &config, &file, &dec, &options, clock,
            ))?;
            print_report(&report, started);
            println!(
                "restored environment {} into {}; start it with `carevault serve`",
                report.manifest.environment_id,
                config.data_dir.display()
            );
            Ok(())
        }
    }
}

fn print_report(report: &VerifyReport, started: Instant) {
    let m = &report.manifest;
    println!(
        "backup of environment {} taken {} on node {} (schema {}, {})",
        m.environment_id, m.created_at, m.node, m.database.schema_version, m.backend
    );
    println!("every part matches its SHA-256; the database matches the manifest's counts");
    for (rtype, n) in &m.database.resources {
        println!("  {rtype:<28} {n:>10}");
    }
    println!(
        "{} resource versions opened with the restored keys",
        report.versions_opened
    );
    println!("audit public key: {}", m.audit_public_key);
    for n in &report.audit {
        println!(
            "audit node {}: {} events, {} checkpoints, signed up to event {}",
            n.node, n.events, n.checkpoints, n.signed_up_to
        );
    }
    println!(
        "audit trail verified ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

fn print_status(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    println!(
        "schedule: every {} into {} (keep {})",
        text(&s["schedule"]),
        text(&s["dir"]),
        text(&s["keep"])
    );
    match s["last_success"].as_object() {
        Some(l) => println!(
            "last success: {} ({}, {} bytes, {:.1} s)",
            text(&l["at"]),
            text(&l["file"]),
            l["size"].as_u64().unwrap_or(0),
            l["duration_secs"].as_f64().unwrap_or(0.0)
        ),
        None => println!("last success: none"),
    }
    if let Some(f) = s["last_failure"].as_object() {
        println!("last failure: {}: {}", text(&f["at"]), text(&f["error"]));
    }
    println!("failures: {}", s["failures"].as_u64().unwrap_or(0));
    println!("next run: {}", text(&s["next_run"]));
    println!("backups kept: {}", s["backups"].as_u64().unwrap_or(0));
    for t in s["offsite"].as_array().into_iter().flatten() {
        let copy = t["last_copy"].as_object().map_or_else(
            || "none".to_owned(),
            |c| format!("{} ({})", text(&c["at"]), text(&c["file"])),
        );
        println!(
            "off-site {}: last copy {copy}, {} failed",
            text(&t["target"]),
            t["failures"].as_u64().unwrap_or(0)
        );
        if let Some(f) = t["last_failure"].as_object() {
            println!("  last failure: {}: {}", text(&f["at"]), text(&f["error"]));
        }
    }
    match s["last_verify"].as_object() {
        Some(v) => println!(
            "last verification: {} of {} ({}): {}",
            text(&v["at"]),
            text(&v["file"]),
            text(&v["level"]),
            if v["passed"].as_bool() == Some(true) {
                "passed".to_owned()
            } else {
                format!("FAILED: {}", text(&v["error"]))
            }
        ),
        None if s["verify_schedule"].is_null() => {
            println!("last verification: none (backup.verify_schedule is not set)");
        }
        None => println!(
            "last verification: none yet (every {})",
            text(&s["verify_schedule"])
        ),
    }
}
