//! `carevault`: the server and its command-line client in one binary.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool: standard output is its interface

mod client;
mod commands;
mod local;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use client::ConnectArgs;
use commands::{
    admin, audit, backup, break_glass, config, import, key, migrate, patient, policy, seed, serve,
    session, user, version,
};
use local::{ServerArgs, runtime};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (initializes an empty data directory first).
    Serve(ServerArgs),
    /// Initialize an environment in an empty data directory, without serving.
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
    Import {
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
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Generate a deterministic synthetic population as NDJSON files (for `import`).
    Seed {
        #[arg(long)]
        patients: usize,
        #[arg(long, default_value_t = 4)]
        organizations: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory to write `<Type>.ndjson` files into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Log in to a server (password and TOTP code) and keep the session for later commands.
    Login {
        /// The server's base URL, e.g. https://127.0.0.1:8443
        #[arg(long)]
        server: String,
        /// A PEM certificate to trust for this server (the self-signed one from `init`).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        #[arg(long)]
        username: Option<String>,
    },
    /// End the saved session.
    Logout,
    /// Enroll with a one-time enrollment token: set up TOTP and choose a password.
    Enroll {
        #[arg(long)]
        server: String,
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// The enrollment token an admin gave you.
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
    /// Encrypted backups of the environment: create (online), verify, restore.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Print the version; with --deps, the exact dependency versions this binary was built from.
    Version(version::VersionArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
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
        Command::Login {
            server,
            ca_cert,
            username,
        } => session::login(&server, ca_cert, username),
        Command::Import {
            path,
            batch,
            concurrency,
            restart,
            connect,
        } => import::run(
            connect.client()?,
            &path,
            &import::Options {
                batch,
                concurrency,
                restart,
            },
        ),
        Command::Seed {
            patients,
            organizations,
            seed,
            out,
        } => seed::run(patients, organizations, seed, &out),
        Command::Logout => session::logout(),
        Command::Enroll {
            server,
            ca_cert,
            token,
        } => session::enroll(&server, ca_cert.as_deref(), &token),
        Command::User { command } => user::run(command),
        Command::Version(args) => version::run(&args),
        Command::Audit { command } => audit::run(command),
        Command::Backup { command } => backup::run(command),
        Command::Migrate { command } => migrate::run(command),
        Command::Policy { command } => policy::run(command),
        Command::Key { command } => key::run(command),
        Command::Patient { command } => patient::run(command),
        Command::BreakGlass { reason, patient } => break_glass::run(reason, patient),
    }
}
