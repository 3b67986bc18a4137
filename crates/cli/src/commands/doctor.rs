//! `carevault doctor [--fix]`: the posture check of a deployment. The checks and repairs live in
//! `carevault_server::posture`; this command gathers what they need (the configuration, the
//! opened environment, whether the server answers), prints the report and repairs on request.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use carevault_server::config::Tier;
use carevault_server::posture::{
    self, CONFIG_VALID, ENVIRONMENT, Finding, Report, SERVER_REACHABLE, fix, local,
};
use carevault_server::{Config, SharedClock, SystemClock, environment};
use clap::{Args, ValueEnum};

use crate::local::{ServerArgs, runtime};

#[derive(Clone, Copy, Default, ValueEnum)]
pub(crate) enum Format {
    #[default]
    Text,
    Json,
    Sarif,
}

#[derive(Args, Clone)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// `text` (one line per check), `json` (docs/posture.md gives its schema) or `sarif`
    /// (SARIF 2.1.0, for CI dashboards).
    #[arg(long, value_enum, default_value_t)]
    output: Format,
    /// Repair what is safe: tighten file modes (never widen), disable accounts unused past
    /// posture.inactive_days (after confirmation); every repair is audited.
    #[arg(long)]
    fix: bool,
    /// Confirm the repairs of --fix without asking (required on a production tier).
    #[arg(long)]
    yes: bool,
    /// The directory the environment's backups are written to (for the backup check).
    #[arg(long)]
    backups: Option<PathBuf>,
    /// Skip the check through the API (whether the server answers).
    #[arg(long)]
    offline: bool,
}

pub(crate) fn run(args: &DoctorArgs) -> Result<()> {
    let report = runtime()?.block_on(doctor(args))?;
    let out = match args.output {
        Format::Text => posture::report::text(&report),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&posture::report::json(&report))?
        ),
        Format::Sarif => format!(
            "{}\n",
            serde_json::to_string_pretty(&posture::report::sarif(&report))?
        ),
    };
    print!("{out}");
    let failed = report.count(posture::Status::Fail);
    if failed > 0 {
        bail!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

async fn doctor(args: &DoctorArgs) -> Result<Report> {
    let clock: SharedClock = Arc::new(SystemClock);
    let env_vars = std::env::vars().chain(args.server.overrides());
    let checked = carevault_server::config::check(args.server.config.as_deref(), env_vars);
    let mut findings = Vec::new();
    if checked.problems.is_empty() {
        findings.push(CONFIG_VALID.pass("the configuration validates"));
    } else {
        let problems: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
        findings.push(CONFIG_VALID.fail(
            problems.join("; "),
            "correct the keys named (carevault config check explains each; docs/configuration.md)",
        ));
    }
    let Some(config) = checked.config else {
        return Ok(Report::new("unknown", clock.now_us(), findings));
    };
    if args.fix {
        repair(args, &config, &clock).await?;
    }
    findings.extend(local::run(
        &config,
        args.server.config.as_deref(),
        clock.now_us(),
    ));
    findings.extend(environment_checks(args, &config, &clock).await);
    if !args.offline {
        findings.push(reachable(&config));
    }
    Ok(Report::new(
        config.posture.tier.as_str(),
        clock.now_us(),
        findings,
    ))
}

/// Open the environment (keys unsealed in a protected process) and run the database checks.
async fn environment_checks(
    args: &DoctorArgs,
    config: &Config,
    clock: &SharedClock,
) -> Vec<Finding> {
    match open(config, clock).await {
        Ok((env, audit)) => {
            let mut out = vec![ENVIRONMENT.pass(format!("environment {} opens", env.id))];
            out.extend(
                posture::data::run(
                    config,
                    &env,
                    &audit,
                    args.backups.as_deref(),
                    clock.now_us(),
                )
                .await,
            );
            out
        }
        Err(e) => vec![ENVIRONMENT.fail(
            format!("the environment does not open: {e}"),
            "run `carevault init` for a new environment, or fix what is named (the files \
             checks above say which)",
        )],
    }
}

async fn open(
    config: &Config,
    clock: &SharedClock,
) -> Result<(
    environment::Environment,
    Arc<carevault_server::audit::Audit>,
)> {
    // Keys are unsealed below: protect this process's memory first, as the server does.
    let mode = match config.key_lock_memory {
        carevault_server::memory::LockMode::Required => carevault_server::memory::LockMode::Auto,
        other => other,
    };
    carevault_server::memory::protect_process(mode)?;
    let env = environment::open(config, clock.clone()).await?;
    let audit = carevault_server::audit::Audit::open(
        env.store.clone(),
        &env.keyring,
        &config.node_id,
        clock.clone(),
    )
    .await?;
    Ok((env, Arc::new(audit)))
}

/// Whether the server answers `/healthz` over TLS with its certificate.
fn reachable(config: &Config) -> Finding {
    let (url, answer) = probe(config);
    match answer {
        Ok(()) => SERVER_REACHABLE.pass(format!("{url}/healthz answers")),
        Err(e) => SERVER_REACHABLE.fail(
            format!("{url}: {e}"),
            "start the server (carevault serve, or its systemd unit), or pass --offline \
             to check the files alone",
        ),
    }
}

/// Ask the configured listener's `/healthz` (on loopback when it listens on every address),
/// trusting the configured certificate; returns the URL asked and the answer.
fn probe(config: &Config) -> (String, Result<()>) {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (url, ca) = if config.plain_http {
        (format!("http://{addr}"), None)
    } else {
        (format!("https://{addr}"), Some(config.tls_cert.as_path()))
    };
    let answer = crate::client::Client::new(&url, ca).and_then(|c| c.check_reachable());
    (url, answer)
}

/// `carevault healthz`: the probe of `server.reachable` alone, for a container's or a load
/// balancer's health check where no curl is at hand. Writes nothing, so it runs on a read-only
/// root file system.
pub(crate) fn healthz(args: &ServerArgs) -> Result<()> {
    let env_vars = std::env::vars().chain(args.overrides());
    let checked = carevault_server::config::check(args.config.as_deref(), env_vars);
    let Some(config) = checked.config else {
        let problems: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
        bail!(
            "the configuration does not validate: {}",
            problems.join("; ")
        );
    };
    let (url, answer) = probe(&config);
    answer?;
    println!("{url}/healthz answers");
    Ok(())
}

/// `--fix`: tighten modes, renew a stale generated certificate, disable inactive accounts
/// (after confirmation); each repair audited. Refuses a production tier without `--yes`.
async fn repair(args: &DoctorArgs, config: &Config, clock: &SharedClock) -> Result<()> {
    if config.posture.tier == Tier::Production && !args.yes {
        bail!(
            "refusing --fix on a production tier without --yes (posture.tier = \"production\"); \
             run it without --fix first to see what it would change"
        );
    }
    let mut repairs = fix::tighten_modes(config, args.server.config.as_deref());
    if !config.plain_http {
        repairs.extend(fix::renew_certificate(config, clock.now_secs()));
    }
    let opened = open(config, clock).await;
    if let Ok((env, audit)) = &opened {
        let audit = fix::AuditScopeFactory { audit };
        fix::record(&audit, &repairs).await?;
        let now = clock.now_us();
        let inactive =
            posture::data::inactive_accounts(config, &*env.store, now.div_euclid(1_000_000))
                .await?;
        if !inactive.is_empty() {
            let names: Vec<&str> = inactive.iter().map(|(p, _)| p.username.as_str()).collect();
            let question = format!("disable the inactive accounts {}?", names.join(", "));
            if args.yes || crate::prompt::confirm(&question)? {
                repairs.extend(fix::disable_inactive(config, &*env.store, &audit, now).await?);
            }
        }
    } else {
        for r in &mut repairs {
            r.what
                .push_str(" (not audited: the environment does not open)");
        }
    }
    for r in &repairs {
        eprintln!(
            "{} {}: {}",
            if r.done { "repaired" } else { "not repaired" },
            r.check,
            r.what
        );
    }
    if repairs.is_empty() {
        eprintln!("nothing to repair");
    }
    Ok(())
}
