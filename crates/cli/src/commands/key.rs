//! `carevault key ...`: API keys, and the keyring's key-encryption keys and data-key rotation.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use carevault_server::client_certificate::CertFingerprint;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, str_field, str_items};
use crate::output::OutputArgs;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an API key; prints it once (a bearer token for scripts: `Authorization: Bearer
    /// cvk_...`, or `--api-key-file` on CLI commands).
    ///
    /// Example: carevault key create first-steps --service --scope system/Patient.cru --expires-in-days 1 > first-steps.key
    ///
    /// Example: carevault key create lab-feed --service --scope system/Observation.c --client-cert lab-feed.crt
    Create {
        /// The key's name (unique among your keys, or among service keys).
        name: String,
        /// SMART v2 scopes, e.g. system/Observation.rs (repeatable), or `metrics` alone for a
        /// key that reads /metrics and nothing else (a Prometheus scraper's).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Days until the key stops working.
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
        /// Accept the key only from these networks (repeatable), e.g. 10.0.0.0/8.
        #[arg(long = "allow-cidr")]
        allowed_cidrs: Vec<String>,
        /// Accept the key only on connections that present this client certificate (PEM; its
        /// SHA-256 fingerprint is computed here, the file is not sent). Needs `tls.client_ca`
        /// on the server.
        #[arg(long, value_name = "FILE", conflicts_with = "client_cert_sha256")]
        client_cert: Option<PathBuf>,
        /// As --client-cert, given the certificate's SHA-256 fingerprint (AB:CD:... or 64 hex
        /// digits).
        #[arg(long, value_name = "FINGERPRINT")]
        client_cert_sha256: Option<String>,
        /// A service key (admin) instead of a key of your own.
        #[arg(long)]
        service: bool,
    },
    /// List API keys: name, state, expiry, scopes, and the client certificate a key is bound to.
    ///
    /// Example: carevault key list --service --output json
    List {
        /// The service keys (admin) instead of your own.
        #[arg(long)]
        service: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke an API key at once.
    ///
    /// Example: carevault key revoke first-steps --service
    Revoke {
        /// The key's name.
        name: String,
        /// A service key (admin) instead of one of your own.
        #[arg(long)]
        service: bool,
    },
    /// Key-encryption key versions: state, creation time, data keys each still wraps, re-wrap
    /// progress.
    ///
    /// Example: carevault key status
    Status,
    /// Add a KEK version (used by every new wrap at once); data keys are re-wrapped in the
    /// background. With --wait, show progress until the re-wrap is done.
    ///
    /// Example: carevault key rotate --wait
    Rotate {
        /// Show progress until the re-wrap is done.
        #[arg(long)]
        wait: bool,
    },
    /// Give every patient compartment a new data key: resource versions are re-sealed under
    /// the new keys in the background and the old keys dropped once nothing uses them. With
    /// --wait, show progress until it is done.
    ///
    /// Example: carevault key rotate-data --wait
    RotateData {
        /// Show progress until the rotation is done.
        #[arg(long)]
        wait: bool,
    },
    /// Refuse decryption under KEK versions older than VERSION (once none is in use).
    ///
    /// Example: carevault key min-version v2
    MinVersion {
        /// The oldest version still used for decryption: v1, v2, ...
        version: String,
    },
    /// Destroy a KEK version for good; refused while anything depends on it.
    ///
    /// Example: carevault key destroy v1
    Destroy {
        /// The version to destroy: v1, v2, ...
        version: String,
    },
}

pub(crate) fn run(command: KeyCommand) -> Result<()> {
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
            client_cert,
            client_cert_sha256,
            service,
        } => {
            let cidrs = (!allowed_cidrs.is_empty()).then_some(allowed_cidrs);
            let bound = match (client_cert, client_cert_sha256) {
                (Some(path), _) => Some(fingerprint_of_file(&path)?),
                (None, Some(fp)) => Some(
                    CertFingerprint::parse(&fp)
                        .map_err(|e| anyhow::anyhow!("--client-cert-sha256: {e}"))?
                        .to_string(),
                ),
                (None, None) => None,
            };
            let created = client.expect(
                "POST",
                base(service),
                Some(
                    &json!({"name": name, "scopes": scopes, "expires_in_days": expires_in_days,
                    "allowed_cidrs": cidrs, "client_cert_sha256": bound}),
                ),
            )?;
            println!("api key {}: {}", name, str_field(&created, "key"));
            println!(
                "(shown once; expires {})",
                str_field(&created, "expires_at")
            );
        }
        KeyCommand::List { service, output } => {
            let listed = client.expect("GET", base(service), None)?;
            if output.printed_json(&listed)? {
                return Ok(());
            }
            for k in listed["api_keys"].as_array().into_iter().flatten() {
                let scopes = str_items(k, "scopes");
                let bound = k["client_cert_sha256"]
                    .as_str()
                    .map(|fp| format!(" client-cert {fp}"))
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<8} expires {} scopes {}{bound}",
                    str_field(k, "name"),
                    str_field(k, "state"),
                    str_field(k, "expires_at"),
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

/// The SHA-256 fingerprint of the first certificate in a PEM file (only a public certificate is
/// read; a private key in the same file is not looked at).
fn fingerprint_of_file(path: &Path) -> Result<String> {
    let pem = std::fs::read(path)
        .with_context(|| format!("--client-cert: cannot read {}", path.display()))?;
    let fp = CertFingerprint::of_pem(&pem)
        .map_err(|e| anyhow::anyhow!("--client-cert {}: {e}", path.display()))?;
    Ok(fp.to_string())
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
        str_field(status, "provider"),
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
            str_field(v, "state"),
            str_field(v, "created_at"),
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
