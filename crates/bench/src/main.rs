//! `carevault-bench`: measures a release CareVault with every security feature on (TLS,
//! password + TOTP sessions, Cedar authorization, AES-256-GCM at rest, blind-index search,
//! durable audit) against a no-security baseline, and prints the figures as a table and JSON.
//!
//! `carevault-bench run` seeds a synthetic population with `carevault seed`, loads it with
//! `carevault import` (the API path), restarts the server to time start-up with the data loaded,
//! then drives each workload from many keep-alive HTTPS connections, authenticated as clinicians
//! of several organizations.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool: its report is its output

mod baseline;
mod export;
mod load;
mod proc_stats;
mod workloads;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use carevault_testkit::{Api, Authenticator, TEST_PASSWORD};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::load::Outcome;
use crate::workloads::Population;

#[derive(Parser)]
#[command(
    name = "carevault-bench",
    about = "Benchmark CareVault against a no-security baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load data and run the workloads.
    Run(RunArgs),
    /// The baseline server (started by `run`).
    Baseline {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The carevault binary to measure (build it with `cargo build --profile profiling`: the
    /// release build with symbols, for `perf`).
    #[arg(long, default_value = "target/profiling/carevault")]
    bin: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    patients: usize,
    #[arg(long, default_value_t = 4)]
    organizations: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Unmeasured seconds of load before each workload's measured ones.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Client threads (the load generator shares the machine with the server).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "read,vread,search-patient,search-name,search-encounter,search-chain,create,update,transaction,mixed,baseline-read"
    )]
    workloads: Vec<String>,
    /// Keep the data directory, seed files and accounts here; a later run reuses them.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Run CareVault on this (empty, on the first run) PostgreSQL database instead of SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Import settings.
    #[arg(long, default_value_t = 4)]
    import_concurrency: usize,
    #[arg(long, default_value_t = 250)]
    import_batch: usize,
    /// Also time a bulk `$export` of everything, plain and de-identified (after start-up,
    /// before the workloads).
    #[arg(long)]
    export: bool,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Baseline {
            db,
            cert,
            key,
            listen,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(baseline::serve(db, &cert, &key, &listen)),
        Cmd::Run(args) => bench(&args),
    }
}

/// A running server process (CareVault or the baseline) and what it printed.
struct Server {
    child: Child,
    base: String,
    stdout: Arc<Mutex<String>>,
    started_in: Duration,
}

impl Server {
    fn spawn(mut cmd: Command) -> Result<Self> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the server")?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().context("no stdout")?;
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let base = loop {
            let text = stdout.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(base) = text
                .lines()
                .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
            {
                break base;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("the server exited early ({status}):\n{text}");
            }
            if Instant::now() > deadline {
                bail!("the server did not start in 120 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Self {
            child,
            base,
            stdout,
            started_in: started.elapsed(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> Result<SocketAddr> {
        let host = self
            .base
            .trim_start_matches("https://")
            .trim_end_matches('/');
        host.parse()
            .context("the server printed an unexpected address")
    }

    fn printed(&self, prefix: &str) -> Option<String> {
        let text = self
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
    }

    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

fn carevault(bin: &Path, data_dir: &Path, port: u16, database_url: Option<&str>) -> Command {
    let mut cmd = Command::new(bin);
    match database_url {
        Some(url) => cmd.env("CAREVAULT_DATABASE_URL", url),
        None => cmd.env_remove("CAREVAULT_DATABASE_URL"),
    };
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR");
    cmd
}

/// Accounts made on the first run and reused after (TOTP secrets of a throwaway environment).
#[derive(serde::Serialize, serde::Deserialize)]
struct Accounts {
    clinicians: Vec<(String, String)>,
    /// The port the loading server listened on (the import journal is per server address).
    port: u16,
    loaded: bool,
    import: Option<Value>,
    /// A key of scope `metrics`, to read the alerts the run raised (absent in work directories
    /// made by older harnesses).
    #[serde(default)]
    metrics_key: Option<String>,
    /// A key of scope `system/*.rs` (reads every organization), for `--export` (absent in work
    /// directories made by older harnesses).
    #[serde(default)]
    export_key: Option<String>,
    /// The last TOTP step each clinician used, so the next run never replays a code (the server
    /// refuses replays and counts them as failed logins).
    #[serde(default)]
    totp_steps: std::collections::BTreeMap<String, u64>,
}

/// Enroll the admin, make the import key and one clinician per organization.
fn make_accounts(
    server: &Server,
    ca: &Path,
    work: &Path,
    organizations: usize,
) -> Result<Accounts> {
    let admin_token = server
        .printed("enrollment token for admin: ")
        .context("no admin enrollment token printed")?;
    let api = Api::new(&server.base, ca);
    let (_, mut admin_auth) = enroll(&api, &admin_token)?;
    let admin = api.with_token(&login(&api, "admin", &mut admin_auth)?);
    let key = admin.post_json(
        "/admin/api-keys",
        &json!({"name": "bench-import", "scopes": ["system/*.cu"], "expires_in_days": 7}),
    );
    if key.status != 201 {
        bail!("cannot create the import key: {}", key.text());
    }
    write_private(
        &work.join("import.key"),
        key.json()["key"].as_str().unwrap_or_default(),
    )?;
    let metrics = admin.post_json(
        "/admin/api-keys",
        &json!({"name": "bench-metrics", "scopes": ["metrics"], "expires_in_days": 90}),
    );
    if metrics.status != 201 {
        bail!("cannot create the metrics key: {}", metrics.text());
    }
    let export = admin.post_json(
        "/admin/api-keys",
        &json!({"name": "bench-export", "scopes": ["system/*.rs"], "expires_in_days": 90}),
    );
    if export.status != 201 {
        bail!("cannot create the export key: {}", export.text());
    }
    let mut clinicians = Vec::new();
    for o in 1..=organizations {
        let name = format!("clinician-{o}");
        let made = admin.post_json(
            "/admin/users",
            &json!({"username": name, "roles": ["clinician"], "organization": format!("org-{o}")}),
        );
        if made.status != 201 {
            bail!("cannot create {name}: {}", made.text());
        }
        let token = made.json()["enrollment_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (secret, _) = enroll(&api, &token)?;
        clinicians.push((name, secret));
    }
    Ok(Accounts {
        clinicians,
        port: server.addr()?.port(),
        loaded: false,
        import: None,
        metrics_key: metrics.json()["key"].as_str().map(str::to_owned),
        export_key: export.json()["key"].as_str().map(str::to_owned),
        totp_steps: std::collections::BTreeMap::new(),
    })
}

fn enroll(api: &Api, token: &str) -> Result<(String, Authenticator)> {
    let started = api.post_json("/auth/enroll/start", &json!({"enrollment_token": token}));
    if started.status != 200 {
        bail!("enroll/start answered {}", started.status);
    }
    let secret = started.json()["totp_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut auth = Authenticator::new(&secret);
    let finished = api.post_json(
        "/auth/enroll/finish",
        &json!({"enrollment_token": token, "password": TEST_PASSWORD, "totp_code": auth.fresh_code()}),
    );
    if finished.status != 200 {
        bail!("enroll/finish answered {}", finished.status);
    }
    Ok((secret, auth))
}

/// Log in; a code already used in this 30 s step (by an earlier run) is refused, so try the next.
fn login(api: &Api, username: &str, auth: &mut Authenticator) -> Result<String> {
    for _ in 0..3 {
        let reply = api.post_json(
            "/auth/login",
            &json!({"username": username, "password": TEST_PASSWORD, "totp_code": auth.fresh_code()}),
        );
        if reply.status == 200 {
            return Ok(reply.json()["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned());
        }
    }
    bail!("cannot log in as {username}")
}

/// A session per clinician; the TOTP steps they used are saved in the work directory's accounts
/// file for the next run.
fn log_in_clinicians(api: &Api, work: &Path, accounts: &mut Accounts) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for (name, secret) in &accounts.clinicians {
        let mut auth = Authenticator::after_step(secret, accounts.totp_steps.get(name).copied());
        tokens.push(login(api, name, &mut auth)?);
        if let Some(step) = auth.last_step() {
            accounts.totp_steps.insert(name.clone(), step);
        }
    }
    std::fs::write(
        work.join("accounts.json"),
        serde_json::to_vec_pretty(accounts)?,
    )?;
    Ok(tokens)
}

/// Seed, start, make the accounts and import, once per work directory: a later run finds the
/// data loaded (its accounts file says so) and reuses it.
fn load_once(args: &RunArgs, bin: &Path, work: &Path) -> Result<Accounts> {
    let data_dir = work.join("data");
    let seed_dir = work.join(format!("seed-{}-{}", args.patients, args.seed));
    let accounts_file = work.join("accounts.json");
    let cli_dir = work.join("cli");
    let ca = data_dir.join("tls").join("cert.pem");
    let bin = bin.to_path_buf();
    let work = work.to_path_buf();

    let mut accounts: Option<Accounts> = std::fs::read(&accounts_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if !accounts.as_ref().is_some_and(|a| a.loaded) {
        // A first run seeds and makes the accounts; a run after an interrupted load resumes
        // the import (same server address, so `carevault import` finds its journal).
        let (server, mut made) = match accounts.take() {
            Some(a) => (
                Server::spawn(carevault(
                    &bin,
                    &data_dir,
                    a.port,
                    args.database_url.as_deref(),
                ))?,
                a,
            ),
            None => {
                let _ = std::fs::remove_dir_all(&data_dir);
                println!("seeding {} patients ...", args.patients);
                let status = Command::new(&bin)
                    .args(["seed", "--patients", &args.patients.to_string()])
                    .args(["--organizations", &args.organizations.to_string()])
                    .args(["--seed", &args.seed.to_string(), "--out"])
                    .arg(&seed_dir)
                    .status()?;
                if !status.success() {
                    bail!("carevault seed failed");
                }
                let server =
                    Server::spawn(carevault(&bin, &data_dir, 0, args.database_url.as_deref()))?;
                let made = make_accounts(&server, &ca, &work, args.organizations)?;
                std::fs::write(&accounts_file, serde_json::to_vec_pretty(&made)?)?;
                (server, made)
            }
        };
        println!("importing {} ...", seed_dir.display());
        let started = Instant::now();
        let output = Command::new(&bin)
            .arg("import")
            .arg(&seed_dir)
            .args(["--concurrency", &args.import_concurrency.to_string()])
            .args(["--batch", &args.import_batch.to_string()])
            .arg("--api-key-file")
            .arg(work.join("import.key"))
            .args(["--server", &server.base])
            .arg("--ca-cert")
            .arg(&ca)
            .env("CAREVAULT_CLI_CONFIG_DIR", &cli_dir)
            .stderr(Stdio::inherit())
            .output()?;
        let import_secs = started.elapsed().as_secs_f64();
        let summary = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!("{summary}");
        if !output.status.success() {
            bail!("carevault import failed; run the same command again to resume");
        }
        let imported: f64 = summary
            .strip_prefix("imported ")
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let rss = proc_stats::sample(server.pid())?;
        server.stop()?;
        made.loaded = true;
        made.import = Some(json!({
            "resources": imported,
            "seconds": import_secs,
            "resources_per_s": imported / import_secs,
            "server_peak_rss_mib": rss.peak_rss_mib,
            "server_cpu_s": rss.cpu_seconds,
        }));
        std::fs::write(&accounts_file, serde_json::to_vec_pretty(&made)?)?;
        accounts = Some(made);
    }
    accounts.context("no accounts")
}

fn bench(args: &RunArgs) -> Result<()> {
    workloads::check(&args.workloads)?;
    let bin = std::fs::canonicalize(&args.bin).with_context(|| {
        format!(
            "{} not found: build it with `cargo build --profile profiling -p carevault`",
            args.bin.display()
        )
    })?;
    let _tmp;
    let work = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            _tmp = tempfile::tempdir()?;
            _tmp.path().to_path_buf()
        }
    };
    let data_dir = work.join("data");
    let seed_dir = work.join(format!("seed-{}-{}", args.patients, args.seed));
    let ca = data_dir.join("tls").join("cert.pem");
    let mut accounts = load_once(args, &bin, &work)?;

    // Start-up with the data loaded: spawn to "listening on", then to the first answer.
    let started = Instant::now();
    let server = Server::spawn(carevault(&bin, &data_dir, 0, args.database_url.as_deref()))?;
    let listening_ms = server.started_in.as_secs_f64() * 1000.0;
    let api = Api::new(&server.base, &ca);
    let first = api.get("/fhir/metadata");
    let startup = started.elapsed();
    if first.status != 200 {
        bail!("the restarted server answered {}", first.status);
    }
    println!(
        "start-up with data loaded: listening after {:.0} ms, first answer after {:.0} ms",
        listening_ms,
        startup.as_secs_f64() * 1000.0
    );

    let tokens = log_in_clinicians(&api, &work, &mut accounts)?;
    let population = Arc::new(Population::load(&seed_dir, tokens)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()?;
    let tls = load::tls_connector(&ca)?;
    let exports = if args.export {
        export::plain_and_deidentified(&api, accounts.export_key.as_deref(), server.pid())?
    } else {
        Vec::new()
    };
    let mut results = Vec::new();
    let mut server = Some(server);
    // Read before CareVault stops: which detection rules the workloads' traffic made fire.
    let metrics_api = accounts.metrics_key.as_ref().map(|k| api.with_token(k));
    let mut alerts = None;
    for name in &args.workloads {
        let (pid, addr, baseline_server) = if workloads::is_baseline(name) {
            if let Some(s) = server.take() {
                alerts = metrics_api.as_ref().map(alerts_raised);
                s.stop()?;
            }
            let db = work.join("baseline.db");
            if !db.exists() {
                println!("building the baseline's SQLite file ...");
                baseline::build_db(&seed_dir, &db)?;
            }
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg("baseline")
                .arg("--db")
                .arg(&db)
                .arg("--cert")
                .arg(&ca)
                .arg("--key")
                .arg(data_dir.join("tls").join("key.pem"));
            let b = Server::spawn(cmd)?;
            (b.pid(), b.addr()?, Some(b))
        } else {
            let s = server
                .as_ref()
                .context("the server was stopped for the baseline; list baseline workloads last")?;
            (s.pid(), s.addr()?, None)
        };
        let workload = workloads::by_name(name, population.clone())?;
        let before = proc_stats::sample(pid)?;
        let outcome = runtime.block_on(load::run(
            addr,
            tls.clone(),
            workload,
            args.connections,
            Duration::from_secs(args.warmup_seconds),
            Duration::from_secs(args.seconds),
        ));
        let after = proc_stats::sample(pid)?;
        let row = Row::new(name, &outcome, &before, &after);
        println!("{}", row.line());
        results.push(row);
        if let Some(b) = baseline_server {
            b.stop()?;
        }
    }
    if let Some(s) = server.take() {
        alerts = metrics_api.as_ref().map(alerts_raised);
        s.stop()?;
    }

    Row::print_table(&results);
    export::print_table(&exports);
    let read = results.iter().find(|r| r.name == "read");
    let base = results.iter().find(|r| r.name == "baseline-read");
    let ratio = match (read, base) {
        (Some(r), Some(b)) if b.throughput > 0.0 => Some(r.throughput / b.throughput),
        _ => None,
    };
    if let Some(ratio) = ratio {
        println!("read by id, CareVault / baseline throughput: {ratio:.2}");
    }
    let detection = std::env::var("CAREVAULT_DETECTION_ENABLED").map_or(true, |v| v != "false");
    match &alerts {
        Some(a) => println!(
            "detection {}; alerts the run raised: {a}",
            on_off(detection)
        ),
        None => println!(
            "detection {}; alerts not read (a work directory made by an older harness has no metrics key)",
            on_off(detection)
        ),
    }
    let report = json!({
        "backend": if args.database_url.is_some() { "postgresql" } else { "sqlite" },
        "patients": args.patients,
        "connections": args.connections,
        "seconds": args.seconds,
        "machine": proc_stats::machine(),
        "import": accounts.import,
        "startup_ms": {"listening": listening_ms, "first_answer": startup.as_secs_f64() * 1000.0},
        "workloads": results.iter().map(Row::json).collect::<Vec<_>>(),
        "exports": exports.iter().map(export::ExportRow::json).collect::<Vec<_>>(),
        "read_vs_baseline": ratio,
        "detection": detection,
        "alerts_raised": alerts,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    Ok(())
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// `{rule: count}` of the alerts raised so far, from `carevault_alerts_total` (Null when
/// `/metrics` cannot be read).
fn alerts_raised(metrics: &Api) -> Value {
    let reply = metrics.get("/metrics");
    if reply.status != 200 {
        return Value::Null;
    }
    let mut raised = serde_json::Map::new();
    for line in reply.text().lines() {
        let Some(rest) = line.strip_prefix("carevault_alerts_total{rule=\"") else {
            continue;
        };
        let (rule, _) = rest.split_once('"').unwrap_or_default();
        let count: u64 = line
            .rsplit_once(' ')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        if count > 0 {
            let total = raised.get(rule).and_then(Value::as_u64).unwrap_or(0) + count;
            raised.insert(rule.to_owned(), json!(total));
        }
    }
    Value::Object(raised)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

struct Row {
    name: String,
    throughput: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    ok: u64,
    errors: u64,
    error_statuses: Vec<(u16, u64)>,
    peak_rss_mib: f64,
    cpu_s_per_1k: f64,
}

impl Row {
    /// The workloads' table, in the run's summary.
    fn print_table(rows: &[Row]) {
        println!();
        println!(
            "{:<16} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10} {:>12}",
            "workload", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "peak MiB", "CPU s/1k req"
        );
        for r in rows {
            println!("{}", r.line());
        }
    }

    fn new(
        name: &str,
        o: &Outcome,
        before: &proc_stats::Sample,
        after: &proc_stats::Sample,
    ) -> Self {
        let cpu = after.cpu_seconds - before.cpu_seconds;
        Self {
            name: name.to_owned(),
            throughput: o.throughput(),
            p50: o.quantile_ms(0.50),
            p90: o.quantile_ms(0.90),
            p99: o.quantile_ms(0.99),
            ok: o.ok,
            errors: o.errors,
            error_statuses: o.error_statuses.clone(),
            peak_rss_mib: after.peak_rss_mib,
            cpu_s_per_1k: cpu / (o.total().max(1) as f64) * 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "{:<16} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>10.1} {:>12.3}",
            self.name,
            self.throughput,
            self.p50,
            self.p90,
            self.p99,
            self.errors,
            self.peak_rss_mib,
            self.cpu_s_per_1k
        )
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "requests_per_s": self.throughput,
            "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99,
            "ok": self.ok, "errors": self.errors,
            "error_statuses": self.error_statuses,
            "server_peak_rss_mib": self.peak_rss_mib,
            "server_cpu_s_per_1k_requests": self.cpu_s_per_1k,
        })
    }
}
