//! `carevault serve` and `carevault init`: the server's process, and setting up an environment.
//! The only commands that build the HTTP application.

use std::sync::Arc;

use anyhow::{Context, Result};
use carevault_http::Application;
use carevault_server::{Config, SharedClock, SystemClock, environment};

use crate::local::{ServerArgs, load_config_for_keys};

/// What init prints, on standard output only: never to the log. `url` is where clients reach
/// the server.
fn print_init_report(report: &environment::InitReport, config: &Config, url: &str) {
    println!(
        "initialized CareVault environment {} (tier {})",
        report.environment_id,
        report.tier.as_str()
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
    let ca = if config.plain_http {
        String::new()
    } else {
        format!(" --ca-cert {}", config.tls_cert.display())
    };
    println!(
        "enroll with: carevault enroll --server {url}{ca} --token {}",
        report.admin.enrollment_token
    );
    println!();
}

/// The URL clients use: the configured public one, else the configured address.
fn client_url(config: &Config, bound: Option<String>) -> String {
    if let Some(public) = &config.public_base_url {
        return public.origin().to_owned();
    }
    bound.unwrap_or_else(|| {
        let scheme = if config.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", config.listen)
    })
}

pub(crate) async fn init(args: ServerArgs) -> Result<()> {
    let config = load_config_for_keys(&args, true)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let report = environment::init(&config, clock).await?;
    print_init_report(&report, &config, &client_url(&config, None));
    Ok(())
}

pub(crate) async fn serve(args: ServerArgs) -> Result<()> {
    let config = load_config_for_keys(&args, true)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let report = if environment::is_initialized(&config) {
        None
    } else {
        Some(environment::init(&config, clock.clone()).await?)
    };
    // Held until the process ends: released by the kernel even on a crash.
    let _lock = environment::DataDirLock::acquire(&config.data_dir)?;
    let printed_config = config.clone();
    let backup_config = config.clone();
    let app = Application::build(config, clock.clone()).await?;
    // After the database is migrated, before serving: a bad `[backup]` key stops the start,
    // naming it. The first backup is taken in the background.
    let backups =
        carevault_backup::schedule::start(&backup_config, clock, app.backup_stats(), app.alerts())
            .await?;
    if let Some(report) = &report {
        // After binding: the enroll command names the port actually listened on.
        print_init_report(
            report,
            &printed_config,
            &client_url(&printed_config, Some(app.url())),
        );
    }
    println!(
        "environment {} (tier {})",
        app.environment_id(),
        app.environment_tier().as_str()
    );
    if let Some(fp) = app.tls_fingerprint() {
        println!("TLS certificate SHA-256 fingerprint: {fp}");
    }
    println!("listening on {}", app.url());
    // Logged under the binary's target, as before the commands had modules of their own.
    tracing::info!(target: "carevault", event = "server_started", address = %app.local_addr(), "CareVault is serving");
    app.run_until_stopped(shutdown_signal())
        .await
        .context("server failed")?;
    drop(backups);
    tracing::info!(target: "carevault", event = "server_stopped");
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
