//! `carevault`: the server and its command-line client in one binary.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool: standard output is its interface

mod audit_cmd;
mod client;
mod import;
mod migrate_cmd;
mod seed;
mod version;

use std::io::{BufRead, IsTerminal};

/// mimalloc instead of the system allocator: glibc's malloc/free and their arena locks were
/// 15-25% of the server's CPU under load (perf), from the JSON values and buffers each request
/// builds and drops. Its `override` feature makes it `malloc` for the C code too (SQLite's page
/// caches and row buffers, churned by a dozen connections on different threads): under glibc those
/// left the server's resident size creeping up under a sustained mixed load (262 -> 293 MiB over
/// six 12-second runs, still rising; 253 -> 259 MiB and flat with the override).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use carevault_http::Application;
use carevault_server::{Config, FileConfig, SharedClock, SystemClock, environment};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use client::{Client, SavedSession};

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
        command: AdminCommand,
    },
    /// Move an environment's database to another backend.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Check a configuration and explain every problem.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
        command: UserCommand,
    },
    /// Custom authorization policies (Cedar): add, list, remove (admin), test offline.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// API keys: service keys (admin, `--service`) or your own (limited to your rights); and
    /// the keyring's key-encryption keys (admin): status, rotate, min-version, destroy.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Crypto-shredding a patient (admin, with a second admin's approval).
    Patient {
        #[command(subcommand)]
        command: PatientCommand,
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
        command: AuditCommand,
    },
    /// Print the version; with --deps, the exact dependency versions this binary was built from.
    Version(version::VersionArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Add (or replace) a custom policy from a Cedar file; refused with Cedar's diagnostics if invalid.
    Add {
        name: String,
        file: PathBuf,
    },
    List,
    Rm {
        name: String,
    },
    /// Validate a Cedar file against the shipped schema and built-in policies, offline.
    Test {
        file: PathBuf,
    },
}

/// How an API command reaches the server: the saved session (`carevault login`), or an API key.
#[derive(Args)]
struct ConnectArgs {
    /// Authenticate with the API key in this file instead of the saved session.
    #[arg(long, env = "CAREVAULT_API_KEY_FILE", requires = "server")]
    api_key_file: Option<PathBuf>,
    /// The server, with --api-key-file (e.g. https://127.0.0.1:8443).
    #[arg(long)]
    server: Option<String>,
    /// The server's certificate (or its CA), with --api-key-file.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

impl ConnectArgs {
    fn client(&self) -> Result<Client> {
        match (&self.api_key_file, &self.server) {
            (Some(key), Some(server)) => Client::with_api_key(server, self.ca_cert.as_deref(), key),
            _ => Client::from_session(),
        }
    }
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; prints it once.
    Create {
        name: String,
        /// SMART v2 scopes, e.g. system/Observation.rs (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
        /// Accept the key only from these networks (repeatable), e.g. 10.0.0.0/8.
        #[arg(long = "allow-cidr")]
        allowed_cidrs: Vec<String>,
        /// A service key (admin) instead of a key of your own.
        #[arg(long)]
        service: bool,
    },
    List {
        #[arg(long)]
        service: bool,
    },
    Revoke {
        name: String,
        #[arg(long)]
        service: bool,
    },
    /// Key-encryption key versions: state, creation time, data keys each still wraps, re-wrap
    /// progress.
    Status,
    /// Add a KEK version (used by every new wrap at once); data keys are re-wrapped in the
    /// background. With --wait, show progress until the re-wrap is done.
    Rotate {
        #[arg(long)]
        wait: bool,
    },
    /// Give every patient compartment a new data key: resource versions are re-sealed under
    /// the new keys in the background and the old keys dropped once nothing uses them. With
    /// --wait, show progress until it is done.
    RotateData {
        #[arg(long)]
        wait: bool,
    },
    /// Refuse decryption under KEK versions older than VERSION (once none is in use).
    MinVersion { version: String },
    /// Destroy a KEK version for good; refused while anything depends on it.
    Destroy { version: String },
}

#[derive(Subcommand)]
enum PatientCommand {
    /// Approve another admin's crypto-shred of a patient: prints a one-time approval token
    /// (valid 15 minutes) to hand to them.
    ApproveShred { patient: String },
    /// Destroy a patient's data key: every version of every resource in their compartment
    /// becomes unreadable for good, backups included. Needs a second admin's approval token.
    Shred {
        patient: String,
        /// Why; audited (as a keyed digest and sealed, never in clear).
        #[arg(long)]
        reason: String,
        /// The approval token from `carevault patient approve-shred` run by another admin.
        #[arg(long)]
        approval: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the trail offline: hash chains, sequence, and signed checkpoints. Exit code 0
    /// only if everything holds.
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
    Export {
        /// Only events at or after this instant (the result no longer verifies alone).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this instant (the result no longer verifies alone).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the key that verifies this environment's checkpoints (the last word of the output).
    PublicKey(ServerArgs),
    /// The keyed digest under which the trail records VALUE (search values, attempted usernames).
    Hash {
        value: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Search the trail through the API (auditor; uses the saved session).
    Search {
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        count: u32,
    },
}

#[derive(Args, Clone)]
pub(crate) struct ServerArgs {
    /// A TOML configuration file.
    #[arg(long, env = "CAREVAULT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (CAREVAULT_LISTEN), default 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (CAREVAULT_DATA_DIR), default ./carevault-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Issue a new enrollment token for an account (default `admin`) that has lost its credentials.
    Recover {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value = "admin")]
        user: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum MigrateCommand {
    /// Copy a SQLite database (stop the server first) into PostgreSQL, with progress; run it
    /// again to resume an interrupted copy. Verifies row counts and the audit trail after.
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

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file + environment + flags) and print the result.
    Check(ServerArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; prints its one-time enrollment token.
    Add {
        username: String,
        /// admin, clinician, auditor, developer or service (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long)]
        organization: Option<String>,
    },
    List,
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    Unlock {
        username: String,
    },
    /// Revoke an account's credentials and sessions; prints a new enrollment token.
    Reset {
        username: String,
    },
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
        Command::Serve(args) => runtime()?.block_on(serve(args)),
        Command::Init(args) => runtime()?.block_on(init(args)),
        Command::Admin {
            command: AdminCommand::Recover { server, user },
        } => runtime()?.block_on(recover(server, &user)),
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let config = load_config(&args)?;
            println!("configuration is valid");
            println!("listen:   {}", config.listen);
            println!("data dir: {}", config.data_dir.display());
            println!(
                "tls:      {}",
                if config.plain_http {
                    "off (plain HTTP on loopback)"
                } else {
                    "on"
                }
            );
            Ok(())
        }
        Command::Login {
            server,
            ca_cert,
            username,
        } => login(&server, ca_cert, username),
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
        } => {
            let started = std::time::Instant::now();
            let summary = seed::generate(patients, organizations, seed, &out)?;
            for (rtype, count) in &summary.per_type {
                println!("{rtype:<20} {count:>9}");
            }
            println!(
                "wrote {} resources for {} patients to {} in {:.1} s; load them with `carevault import {}`",
                summary.resources,
                summary.patients,
                out.display(),
                started.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        Command::Logout => {
            let client = Client::from_session()?;
            let (status, _) = client.call("POST", "/auth/logout", None)?;
            client::forget_session()?;
            if status == 204 {
                println!("logged out");
            } else {
                println!("the session had already ended; forgotten locally");
            }
            Ok(())
        }
        Command::Enroll {
            server,
            ca_cert,
            token,
        } => enroll(&server, ca_cert.as_deref(), &token),
        Command::User { command } => user(command),
        Command::Version(args) => version::run(&args),
        Command::Audit { command } => audit_cmd::run(command),
        Command::Migrate { command } => migrate_cmd::run(command),
        Command::Policy { command } => policy(command),
        Command::Key { command } => key(command),
        Command::Patient { command } => patient(command),
        Command::BreakGlass { reason, patient } => {
            let client = Client::from_session()?;
            let granted = client.expect(
                "POST",
                "/auth/break-glass",
                Some(&json!({"reason": reason, "patient": patient})),
            )?;
            println!(
                "break-glass access granted until {}; every use is audited and raises a security alert",
                granted["expires_at"].as_str().unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// Threads of the runtime's blocking pool.
const BLOCKING_THREADS: usize = 16;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is bounded anyway (8 store scans at once, password hashing); tokio's
        // default of 512 threads let bursts leave dozens behind, each with its own allocator
        // heap, which locked memory (see `memory`) can never give back (peak RSS 339 MiB).
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn load_config(args: &ServerArgs) -> Result<Config> {
    let mut file = FileConfig::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = &args.listen {
        file.listen = Some(listen.clone());
    }
    if let Some(dir) = &args.data_dir {
        file.data_dir = Some(dir.clone());
    }
    Ok(Config::from_file(file)?)
}

/// The configuration of a command that unseals keys in this process, whose memory is protected
/// (locked, not dumpable) before any key is read. The server commands set up logging first, so
/// that a failure to lock is logged.
pub(crate) fn load_config_for_keys(args: &ServerArgs, logging: bool) -> Result<Config> {
    let config = load_config(args)?;
    if logging {
        init_logging(&config);
    }
    carevault_server::memory::protect_process(config.key_lock_memory)?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = std::env::var("CAREVAULT_LOG")
        .unwrap_or_else(|_| format!("{},hyper=warn,rustls=warn", config.log_level));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// What init prints, to the terminal only: never to the log.
fn print_init_report(report: &environment::InitReport, config: &Config) {
    println!(
        "initialized CareVault environment {}",
        report.environment_id
    );
    println!("data directory: {}", config.data_dir.display());
    if let Some(fp) = &report.tls_fingerprint {
        println!(
            "TLS certificate: {} (self-signed)",
            config.tls_cert.display()
        );
        println!("TLS certificate SHA-256 fingerprint: {fp}");
    }
    println!("audit public key: {}", report.audit_public_key);
    println!();
    println!(
        "enrollment token for admin: {}",
        report.admin.enrollment_token
    );
    println!(
        "(shown once; expires {}; `carevault admin recover` issues a new one)",
        report.admin.expires_at
    );
    let scheme = if config.plain_http { "http" } else { "https" };
    let ca = if config.plain_http {
        String::new()
    } else {
        format!(" --ca-cert {}", config.tls_cert.display())
    };
    println!(
        "enroll with: carevault enroll --server {scheme}://{}{ca} --token <TOKEN>",
        config.listen
    );
    println!();
}

async fn init(args: ServerArgs) -> Result<()> {
    let config = load_config_for_keys(&args, true)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let report = environment::init(&config, clock).await?;
    print_init_report(&report, &config);
    Ok(())
}

async fn serve(args: ServerArgs) -> Result<()> {
    let config = load_config_for_keys(&args, true)?;
    let clock: SharedClock = Arc::new(SystemClock);
    if !environment::is_initialized(&config) {
        let report = environment::init(&config, clock.clone()).await?;
        print_init_report(&report, &config);
    }
    let app = Application::build(config, clock).await?;
    println!("environment {}", app.environment_id());
    if let Some(fp) = app.tls_fingerprint() {
        println!("TLS certificate SHA-256 fingerprint: {fp}");
    }
    println!("listening on {}", app.url());
    tracing::info!(event = "server_started", address = %app.local_addr(), "CareVault is serving");
    app.run_until_stopped(shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!(event = "server_stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn recover(args: ServerArgs, user: &str) -> Result<()> {
    let config = load_config_for_keys(&args, false)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let env = environment::open(&config, clock.clone()).await?;
    let audit = Arc::new(
        carevault_server::audit::Audit::open(
            env.store.clone(),
            &env.keyring,
            &config.node_id,
            clock.clone(),
        )
        .await?,
    );
    let identity =
        carevault_server::identity::Identity::new(&config, env.store, env.keyring, clock)?;
    let scope = carevault_server::audit::AuditScope::local(
        audit,
        carevault_server::audit::AuditAction::UserRecover,
    );
    let issued = identity.reissue_enrollment(&scope, user).await?;
    println!(
        "enrollment token for {}: {}",
        issued.username, issued.enrollment_token
    );
    println!(
        "(expires {}; earlier enrollment tokens for this account no longer work)",
        issued.expires_at
    );
    Ok(())
}

/// Read a secret: hidden prompt on a terminal, one line of standard input otherwise (scripts).
fn read_secret(prompt: &str) -> Result<Zeroizing<String>> {
    if std::io::stdin().is_terminal() {
        Ok(Zeroizing::new(rpassword::prompt_password(prompt)?))
    } else {
        read_line_stdin()
    }
}

fn read_line(prompt: &str) -> Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
    }
    Ok(read_line_stdin()?.trim().to_owned())
}

fn read_line_stdin() -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin().lock().read_line(&mut line)?;
    if n == 0 {
        bail!("unexpected end of input");
    }
    let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    Ok(trimmed)
}

fn login(server: &str, ca_cert: Option<PathBuf>, username: Option<String>) -> Result<()> {
    let client = Client::new(server, ca_cert.as_deref())?;
    let username = match username {
        Some(u) => u,
        None => read_line("username: ")?,
    };
    let password = read_secret("password: ")?;
    let code = read_line("authenticator code (or recovery code): ")?;
    let granted = client.expect(
        "POST",
        "/auth/login",
        Some(&json!({"username": username, "password": password.as_str(), "totp_code": code})),
    )?;
    let token = granted["access_token"]
        .as_str()
        .context("the server's answer has no access_token")?
        .to_owned();
    let ca_cert = ca_cert.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let path = client::save_session(&SavedSession {
        server: server.trim_end_matches('/').to_owned(),
        ca_cert,
        access_token: token,
    })?;
    println!(
        "logged in as {username}; session saved to {}",
        path.display()
    );
    Ok(())
}

fn enroll(server: &str, ca_cert: Option<&Path>, token: &str) -> Result<()> {
    let client = Client::new(server, ca_cert)?;
    let started = client.expect(
        "POST",
        "/auth/enroll/start",
        Some(&json!({"enrollment_token": token})),
    )?;
    let uri = started["otpauth_uri"]
        .as_str()
        .context("no otpauth_uri in the answer")?;
    let secret = started["totp_secret"].as_str().unwrap_or_default();
    let username = started["username"].as_str().unwrap_or_default();
    if std::io::stdout().is_terminal()
        && let Ok(code) = qrcode::QrCode::new(uri.as_bytes())
    {
        let image = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build();
        println!("{image}");
    }
    println!("account: {username}");
    println!("add this to your authenticator app (scan the QR code or enter the secret):");
    println!("otpauth URI: {uri}");
    println!("secret: {secret}");
    let password = read_secret("choose a password (12+ characters): ")?;
    if std::io::stdin().is_terminal() {
        let again = read_secret("repeat the password: ")?;
        if again.as_str() != password.as_str() {
            bail!("the passwords differ; nothing was changed, run enroll again");
        }
    }
    let code = read_line("current authenticator code: ")?;
    let finished = client.expect(
        "POST",
        "/auth/enroll/finish",
        Some(&json!({"enrollment_token": token, "password": password.as_str(), "totp_code": code})),
    )?;
    println!(
        "enrolled. Recovery codes (each works once instead of an authenticator code; store them safely):"
    );
    for code in finished["recovery_codes"].as_array().into_iter().flatten() {
        println!("  {}", code.as_str().unwrap_or_default());
    }
    Ok(())
}

fn user(command: UserCommand) -> Result<()> {
    let client = Client::from_session()?;
    match command {
        UserCommand::Add {
            username,
            roles,
            organization,
        } => {
            let created = client.expect(
                "POST",
                "/admin/users",
                Some(&json!({"username": username, "roles": roles, "organization": organization})),
            )?;
            println!(
                "created {}",
                created["username"].as_str().unwrap_or_default()
            );
            println!(
                "enrollment token for {}: {}",
                created["username"].as_str().unwrap_or_default(),
                created["enrollment_token"].as_str().unwrap_or_default()
            );
            println!(
                "(expires {})",
                created["expires_at"].as_str().unwrap_or_default()
            );
        }
        UserCommand::List => {
            let listed = client.expect("GET", "/admin/users", None)?;
            println!(
                "{:<24} {:<24} {:<16} {:<8} STATE",
                "USERNAME", "ROLES", "ORGANIZATION", "ENROLLED"
            );
            for u in listed["users"].as_array().into_iter().flatten() {
                let roles: Vec<&str> = u["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect();
                let state = if u["disabled"].as_bool() == Some(true) {
                    "disabled"
                } else if u["locked"].as_bool() == Some(true) {
                    "locked"
                } else {
                    "active"
                };
                println!(
                    "{:<24} {:<24} {:<16} {:<8} {state}",
                    u["username"].as_str().unwrap_or_default(),
                    roles.join(","),
                    u["organization"].as_str().unwrap_or("-"),
                    if u["enrolled"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
        }
        UserCommand::Disable { username } => {
            client.expect("POST", &format!("/admin/users/{username}/disable"), None)?;
            println!("disabled {username}; its sessions are revoked");
        }
        UserCommand::Enable { username } => {
            client.expect("POST", &format!("/admin/users/{username}/enable"), None)?;
            println!("enabled {username}");
        }
        UserCommand::Unlock { username } => {
            client.expect("POST", &format!("/admin/users/{username}/unlock"), None)?;
            println!("unlocked {username}");
        }
        UserCommand::Reset { username } => {
            let reset = client.expect("POST", &format!("/admin/users/{username}/reset"), None)?;
            println!("reset {username}: credentials and sessions revoked");
            println!(
                "enrollment token for {username}: {}",
                reset["enrollment_token"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn policy(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Test { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            match carevault_server::authz::check_policy_text(&text) {
                Ok(n) => {
                    println!("{}: {n} valid policies", file.display());
                    Ok(())
                }
                Err(rejected) => {
                    for d in &rejected.0 {
                        eprintln!("{d}");
                    }
                    bail!("{} is not a valid CareVault policy", file.display())
                }
            }
        }
        PolicyCommand::Add { name, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let client = Client::from_session()?;
            let (status, body) = client.call(
                "POST",
                "/admin/policies",
                Some(&json!({"name": name, "policy": text})),
            )?;
            if status == 201 {
                println!(
                    "policy {name} is in force (policy set version {})",
                    body["policy_set_version"]
                );
                return Ok(());
            }
            for issue in body["issue"].as_array().into_iter().flatten() {
                eprintln!("{}", issue["diagnostics"].as_str().unwrap_or_default());
            }
            bail!("the server refused the policy ({status}); nothing changed")
        }
        PolicyCommand::List => {
            let client = Client::from_session()?;
            let listed = client.expect("GET", "/admin/policies", None)?;
            println!("policy set version {}", listed["policy_set_version"]);
            for p in listed["policies"].as_array().into_iter().flatten() {
                println!(
                    "--- {} (updated {})",
                    p["name"].as_str().unwrap_or_default(),
                    p["updated_at"].as_str().unwrap_or_default()
                );
                println!("{}", p["policy"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        PolicyCommand::Rm { name } => {
            let client = Client::from_session()?;
            client.expect("DELETE", &format!("/admin/policies/{name}"), None)?;
            println!("policy {name} removed");
            Ok(())
        }
    }
}

fn key(command: KeyCommand) -> Result<()> {
    let client = Client::from_session()?;
    let base = |service: bool| {
        if service {
            "/admin/api-keys"
        } else {
            "/auth/api-keys"
        }
    };
    match command {
        KeyCommand::Create {
            name,
            scopes,
            expires_in_days,
            allowed_cidrs,
            service,
        } => {
            let cidrs = (!allowed_cidrs.is_empty()).then_some(allowed_cidrs);
            let created = client.expect(
                "POST",
                base(service),
                Some(&json!({"name": name, "scopes": scopes, "expires_in_days": expires_in_days, "allowed_cidrs": cidrs})),
            )?;
            println!(
                "api key {}: {}",
                name,
                created["key"].as_str().unwrap_or_default()
            );
            println!(
                "(shown once; expires {})",
                created["expires_at"].as_str().unwrap_or_default()
            );
        }
        KeyCommand::List { service } => {
            let listed = client.expect("GET", base(service), None)?;
            for k in listed["api_keys"].as_array().into_iter().flatten() {
                let scopes: Vec<&str> = k["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                println!(
                    "{:<24} {:<8} expires {} scopes {}",
                    k["name"].as_str().unwrap_or_default(),
                    k["state"].as_str().unwrap_or_default(),
                    k["expires_at"].as_str().unwrap_or_default(),
                    scopes.join(" ")
                );
            }
        }
        KeyCommand::Revoke { name, service } => {
            client.expect("DELETE", &format!("{}/{name}", base(service)), None)?;
            println!("api key {name} revoked");
        }
        KeyCommand::Status => print_key_status(&client.expect("GET", "/admin/keys", None)?),
        KeyCommand::Rotate { wait } => {
            let rotated = client.expect("POST", "/admin/keys/rotate", None)?;
            println!(
                "key-encryption key v{} is active; {} data keys to re-wrap in the background",
                rotated["active_version"], rotated["rewrap_remaining"]
            );
            if wait {
                wait_for_rewrap(&client)?;
            }
        }
        KeyCommand::RotateData { wait } => {
            let started = client.expect("POST", "/admin/keys/rotate-data", None)?;
            println!(
                "{} data keys to rotate; {} resource versions to re-seal in the background",
                started["data_keys_to_rotate"], started["data_rotation"]["versions_remaining"]
            );
            if wait {
                wait_for_data_rotation(&client)?;
            }
        }
        KeyCommand::MinVersion { version } => {
            let version = kek_version_arg(&version)?;
            client.expect(
                "POST",
                "/admin/keys/min-version",
                Some(&json!({"version": version})),
            )?;
            println!("minimum decryption version is now v{version}");
        }
        KeyCommand::Destroy { version } => {
            let version = kek_version_arg(&version)?;
            client.expect("DELETE", &format!("/admin/keys/v{version}"), None)?;
            println!("key-encryption key v{version} destroyed");
        }
    }
    Ok(())
}

fn kek_version_arg(text: &str) -> Result<u32> {
    text.strip_prefix('v')
        .unwrap_or(text)
        .parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .with_context(|| "a key version is written v1, v2, ...".to_owned())
}

fn print_key_status(status: &serde_json::Value) {
    println!(
        "provider {}; active v{}; minimum decryption version v{}",
        status["provider"].as_str().unwrap_or_default(),
        status["active_version"],
        status["min_decrypt_version"]
    );
    println!(
        "{:<8} {:<13} {:<28} DATA KEYS",
        "VERSION", "STATE", "CREATED"
    );
    for v in status["versions"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<13} {:<28} {}",
            format!("v{}", v["version"]),
            v["state"].as_str().unwrap_or_default(),
            v["created_at"].as_str().unwrap_or_default(),
            v["data_keys"]
        );
    }
    let total = status["data_keys_total"].as_u64().unwrap_or(0);
    let remaining = status["rewrap_remaining"].as_u64().unwrap_or(0);
    if remaining == 0 {
        println!("re-wrap: complete ({total} data keys under the active version)");
    } else {
        println!(
            "re-wrap: {} of {total} data keys done, {remaining} remaining",
            total.saturating_sub(remaining)
        );
    }
    let r = &status["data_rotation"];
    if r["complete"].as_bool().unwrap_or(true) {
        println!("data-key rotation: none under way");
    } else {
        println!(
            "data-key rotation: {} compartments waiting for a new key, {} resource versions to re-seal, {} old keys to drop",
            r["keys_to_rotate"], r["versions_remaining"], r["keys_retiring"]
        );
    }
}

/// Progress of the background re-wrap, on one line on a terminal, until it is complete.
fn wait_for_rewrap(client: &Client) -> Result<()> {
    wait_for_job(client, "re-wrap complete", |status, _| {
        let total = status["data_keys_total"].as_u64().unwrap_or(0);
        let remaining = status["rewrap_remaining"].as_u64().unwrap_or(0);
        let done = total.saturating_sub(remaining);
        (
            done,
            total,
            "data keys re-wrapped".to_owned(),
            remaining == 0,
        )
    })
}

fn wait_for_data_rotation(client: &Client) -> Result<()> {
    wait_for_job(client, "data-key rotation complete", |status, total| {
        let r = &status["data_rotation"];
        let remaining = r["versions_remaining"].as_u64().unwrap_or(0);
        let keys =
            r["keys_to_rotate"].as_u64().unwrap_or(0) + r["keys_retiring"].as_u64().unwrap_or(0);
        // The job does not report how many versions it started with: the most seen stands in.
        let total = total.max(remaining);
        (
            total.saturating_sub(remaining),
            total,
            format!("resource versions re-sealed, {keys} old data keys left"),
            r["complete"].as_bool().unwrap_or(false),
        )
    })
}

/// Poll `/admin/keys` every half second and draw a bar (one line on a terminal, a line per poll
/// otherwise) until `progress` says the job is complete. `progress` gets the status and the
/// previous total, and answers (done, total, what is counted, complete).
fn wait_for_job(
    client: &Client,
    finished: &str,
    progress: impl Fn(&serde_json::Value, u64) -> (u64, u64, String, bool),
) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let width = 30usize;
    let mut total = 0;
    loop {
        let status = client.expect("GET", "/admin/keys", None)?;
        let (done, now_total, what, complete) = progress(&status, total);
        total = now_total;
        let filled = if total == 0 {
            width
        } else {
            (done.min(total) as usize * width) / total as usize
        };
        let bar = format!(
            "[{}{}] {done}/{total} {what}",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        if tty {
            print!("\r{bar}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("{bar}");
        }
        if complete {
            if tty {
                println!();
            }
            println!("{finished}");
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn patient(command: PatientCommand) -> Result<()> {
    let client = Client::from_session()?;
    let id = |p: &str| p.strip_prefix("Patient/").unwrap_or(p).to_owned();
    match command {
        PatientCommand::ApproveShred { patient } => {
            let approved = client.expect(
                "POST",
                &format!("/admin/patients/{}/shred-approval", id(&patient)),
                None,
            )?;
            println!(
                "approval token for shredding {}: {}",
                approved["patient"].as_str().unwrap_or_default(),
                approved["approval_token"].as_str().unwrap_or_default()
            );
            println!(
                "(one use, by another admin; expires {})",
                approved["expires_at"].as_str().unwrap_or_default()
            );
        }
        PatientCommand::Shred {
            patient,
            reason,
            approval,
        } => {
            let done = client.expect(
                "POST",
                &format!("/admin/patients/{}/shred", id(&patient)),
                Some(&json!({"reason": reason, "approval": approval})),
            )?;
            println!(
                "{} shredded: its data key is destroyed and its resources are gone",
                done["patient"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}
