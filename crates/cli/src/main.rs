//! `carevault`: the server and its command-line client in one binary.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool: standard output is its interface

mod audit_cmd;
mod client;
mod migrate_cmd;
mod version;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use carevault_server::{Application, Config, FileConfig, SharedClock, SystemClock, environment};
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
    /// API keys: service keys (admin, `--service`) or your own (limited to your rights).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
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

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
    let config = load_config(&args)?;
    init_logging(&config);
    let clock: SharedClock = Arc::new(SystemClock);
    let report = environment::init(&config, clock).await?;
    print_init_report(&report, &config);
    Ok(())
}

async fn serve(args: ServerArgs) -> Result<()> {
    let config = load_config(&args)?;
    init_logging(&config);
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
    let config = load_config(&args)?;
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
    let scope = carevault_server::audit::AuditScope::local(audit, "admin.recover");
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
    }
    Ok(())
}
