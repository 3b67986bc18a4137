//! `carevault`: the server and its command-line client in one binary.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool: standard output is its interface

mod client;
mod commands;
mod local;
mod output;
mod profile;
mod prompt;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use client::ConnectArgs;
use commands::{
    admin, alerts, audit, backup, break_glass, config, doctor, enroll, export, import, key,
    migrate, patient, policy, seed, serve, session, user, version,
};
use local::{ServerArgs, runtime};
use profile::TargetArgs;

/// mimalloc instead of the system allocator: glibc's malloc/free and their arena locks were
/// 15-25% of the server's CPU under load (perf), from the JSON values and buffers each request
/// builds and drops. Its `override` feature makes it `malloc` for the C code too (SQLite's page
/// caches and row buffers, churned by a dozen connections on different threads): under glibc those
/// left the server's resident size creeping up under a sustained mixed load (262 -> 293 MiB over
/// six 12-second runs, still rising; 253 -> 259 MiB and flat with the override).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "carevault",
    version,
    about = "CareVault: a FHIR R4 health-record server with security on by default"
)]
struct Cli {
    /// Which saved server and session to use (`carevault login` saves one per profile).
    #[arg(long, global = true, env = "CAREVAULT_PROFILE")]
    profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (initializes an empty data directory first, printing the admin's
    /// `carevault enroll` command). One server per data directory.
    ///
    /// Example: carevault serve --data-dir carevault-data --listen 127.0.0.1:8443
    Serve(ServerArgs),
    /// Initialize an environment in an empty data directory, without serving.
    ///
    /// Example: carevault init --data-dir carevault-data
    Init(ServerArgs),
    /// Local administration that needs the data directory.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Move an environment's database to another backend.
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
    },
    /// Check a configuration and explain every problem.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Load FHIR NDJSON files and Bundles (a file or a directory) through the API: validated,
    /// authorized, encrypted, indexed and audited like any write. Resumable.
    ///
    /// Example: carevault import synthetic/ --batch 250
    Import {
        /// An NDJSON file, a Bundle, a directory of them, or a bulk export (`carevault export`'s
        /// directory or its manifest.json: the files the manifest lists, checked against its
        /// counts).
        path: PathBuf,
        /// Resources per batch Bundle (NDJSON).
        #[arg(long, default_value_t = 250)]
        batch: usize,
        /// Bundles in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Forget an earlier, interrupted import of the same path and start over.
        #[arg(long)]
        restart: bool,
        /// For a bulk export: the source environment's audit public key (as `init` printed
        /// it); the export's manifest must be signed with it.
        #[arg(long)]
        source_public_key: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Bulk-export what you may read (FHIR Bulk Data `$export`, asynchronous) into a new
    /// directory: one `<Type>.ndjson` file per type and the server's `manifest.json`; `import`
    /// loads such a directory into another server.
    ///
    /// Example: carevault export exported/ --type Patient,Observation --since 2024-01-01T00:00:00Z
    Export {
        /// A new or empty directory to write the files into.
        dir: PathBuf,
        /// Only these resource types (comma-separated, or repeated).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only resources changed at or after this FHIR instant.
        #[arg(long)]
        since: Option<String>,
        /// Ask for a HIPAA Safe Harbor de-identified export (`_deidentify=safe-harbor`).
        #[arg(long)]
        deidentify: bool,
        /// De-identify with each patient's dates shifted by an offset of their own instead of
        /// cut to the year (`_deidentify=shifted-dates`; Expert Determination, not Safe Harbor).
        #[arg(long, requires = "deidentify")]
        shift_dates: bool,
        /// Pseudonyms shared by every de-identified export of yours under this label, so they
        /// can be joined (`_deidentifyLink`).
        #[arg(long, requires = "deidentify")]
        link: Option<String>,
        /// Only the data of this Group's member patients.
        #[arg(long)]
        group: Option<String>,
        /// Only the data in patients' compartments (`Patient/$export`).
        #[arg(long)]
        patients: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Generate a deterministic synthetic population as NDJSON files (for `import`).
    ///
    /// Example: carevault seed --patients 100 --out synthetic/
    Seed {
        /// How many patients (each with about 50 resources).
        #[arg(long)]
        patients: usize,
        /// Organizations the patients are spread over (org-1, org-2, ...).
        #[arg(long, default_value_t = 4)]
        organizations: usize,
        /// The random seed: the same seed makes the same population.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory to write `<Type>.ndjson` files into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Log in to a server (password and authenticator code) and keep the session for later
    /// commands; remembers the server and its certificate, so later commands need neither.
    ///
    /// Example: carevault login --server https://127.0.0.1:8443 --ca-cert carevault-data/tls/cert.pem --username admin
    Login {
        #[command(flatten)]
        target: TargetArgs,
        /// The account to log in as (asked for when not given).
        #[arg(long)]
        username: Option<String>,
    },
    /// End the saved session.
    ///
    /// Example: carevault logout
    Logout,
    /// Print the bearer token the other commands send (the saved session's, or the API key of
    /// --api-key-file), for scripts and curl.
    ///
    /// Example: carevault token --api-key-file first-steps.key
    Token {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Enroll with a one-time enrollment token: choose a password, add the account to an
    /// authenticator app (QR code or secret), confirm with a code.
    ///
    /// Example: carevault enroll --server https://127.0.0.1:8443 --ca-cert carevault-data/tls/cert.pem --token cve_...
    Enroll {
        #[command(flatten)]
        target: TargetArgs,
        /// The enrollment token an admin gave you (`cve_...`).
        #[arg(long)]
        token: String,
    },
    /// Manage accounts (admin; uses the saved session).
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Custom authorization policies (Cedar): add, list, remove (admin), test offline.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// API keys: service keys (admin, `--service`) or your own (limited to your rights); and
    /// the keyring's key-encryption keys (admin): status, rotate, min-version, destroy.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
    /// Crypto-shredding a patient (admin, with a second admin's approval).
    Patient {
        #[command(subcommand)]
        command: patient::PatientCommand,
    },
    /// Emergency read access beyond your organizations (clinicians), loudly audited.
    ///
    /// Example: carevault break-glass --patient Patient/123 --reason "unconscious patient in the emergency room"
    BreakGlass {
        /// Why (at least 20 characters); recorded in the audit trail.
        #[arg(long)]
        reason: String,
        /// Limit the access to one patient (`Patient/ID` or `ID`).
        #[arg(long)]
        patient: Option<String>,
    },
    /// The audit trail: verify it offline, export it, search it, compute digests.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Security alerts raised by attack detection: list, show, acknowledge (auditor).
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
    },
    /// Encrypted backups of the environment: create (online), verify, restore.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Check the deployment's security posture (configuration, files, keys, accounts, policies,
    /// audit trail, database, the server): one line per check with its fix, the checklist item
    /// and the HIPAA section it evidences; non-zero exit status on any failed check. `--fix`
    /// repairs what is safe, audited.
    ///
    /// Example: carevault doctor --data-dir carevault-data --output sarif
    Doctor(doctor::DoctorArgs),
    /// Ask the local server's /healthz over TLS (the configured listener and certificate, as
    /// `serve` reads them); exit status 0 when it answers. For a container's HEALTHCHECK, where
    /// there is no curl.
    ///
    /// Example: carevault healthz --data-dir /var/lib/carevault --listen 0.0.0.0:8443
    Healthz(ServerArgs),
    /// Print the version; with --deps, the exact dependency versions this binary was built from;
    /// with --check, the advisories of a RustSec database that apply to them.
    ///
    /// Example: carevault version --check --advisory-db /srv/advisory-db
    Version(version::VersionArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = profile::select(cli.profile.clone()).and_then(|()| run(cli));
    let result = match result {
        // An ended session on a terminal: offer to log in again, then run the command again.
        Err(e) if e.is::<client::SessionEnded>() => {
            eprintln!("{e}");
            match prompt::confirm("log in again now?") {
                Ok(true) => {
                    session::login(&TargetArgs::default(), None).and_then(|()| run(Cli::parse()))
                }
                Ok(false) => Err(anyhow::anyhow!("not logged in")),
                Err(prompt_error) => Err(prompt_error),
            }
        }
        other => other,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve::serve(args)),
        Command::Init(args) => runtime()?.block_on(serve::init(args)),
        Command::Admin { command } => admin::run(command),
        Command::Config { command } => config::run(command),
        Command::Login { target, username } => session::login(&target, username),
        Command::Import {
            path,
            batch,
            concurrency,
            restart,
            source_public_key,
            connect,
        } => import::run(
            connect.client()?,
            &path,
            &import::Options {
                batch,
                concurrency,
                restart,
                source_key: source_public_key,
            },
        ),
        Command::Export {
            dir,
            types,
            since,
            deidentify,
            shift_dates,
            link,
            group,
            patients,
            connect,
        } => export::run(
            &connect.client()?,
            &dir,
            &export::Options {
                types,
                since,
                deidentify,
                shift_dates,
                link,
                group,
                patients,
            },
        ),
        Command::Seed {
            patients,
            organizations,
            seed,
            out,
        } => seed::run(patients, organizations, seed, &out),
        Command::Logout => session::logout(),
        Command::Token { connect } => session::token(&connect),
        Command::Enroll { target, token } => enroll::enroll(&target, &token),
        Command::User { command } => user::run(command),
        Command::Version(args) => version::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Healthz(args) => doctor::healthz(&args),
        Command::Audit { command } => audit::run(command),
        Command::Alerts { command } => alerts::run(command),
        Command::Backup { command } => backup::run(command),
        Command::Migrate { command } => migrate::run(command),
        Command::Policy { command } => policy::run(command),
        Command::Key { command } => key::run(command),
        Command::Patient { command } => patient::run(command),
        Command::BreakGlass { reason, patient } => break_glass::run(reason, patient),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument without a description, and every command without an example, under `cmd`.
    fn undocumented(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if !matches!(id, "help" | "version") && arg.get_help().is_none() {
                found.push(format!("{path} <{id}>: no description"));
            }
        }
        let subcommands: Vec<&clap::Command> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subcommands.is_empty() {
            let about = cmd
                .get_long_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            if !about.contains("Example: carevault ") {
                found.push(format!("{path}: no example"));
            }
        }
        for sub in subcommands {
            undocumented(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }

    #[test]
    fn every_argument_is_described_and_every_command_has_an_example() {
        let mut found = Vec::new();
        undocumented(&Cli::command(), "carevault", &mut found);
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    #[test]
    fn the_release_binary_is_stripped_and_profiling_keeps_line_tables() {
        let manifest: toml::Table = include_str!("../../../Cargo.toml").parse().unwrap();
        let profiles = &manifest["profile"];
        assert_eq!(profiles["release"]["strip"].as_bool(), Some(true));
        assert_eq!(profiles["release"]["debug"].as_bool(), Some(false));
        assert_eq!(profiles["profiling"]["inherits"].as_str(), Some("release"));
        assert_eq!(
            profiles["profiling"]["debug"].as_str(),
            Some("line-tables-only")
        );
    }
}
