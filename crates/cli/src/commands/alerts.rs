//! `carevault alerts list|show|ack`: security alerts through the API (auditor; uses the saved
//! session), as `GET /alerts`, `GET /alerts/{id}` and `POST /alerts/{id}/ack`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::audit::encode;
use crate::client::Client;
use crate::output::OutputArgs;

#[derive(Subcommand)]
pub(crate) enum AlertsCommand {
    /// List security alerts, newest first.
    ///
    /// Example: carevault alerts list --count 20
    List {
        /// At most this many alerts.
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show one alert (a DetectedIssue) by id.
    ///
    /// Example: carevault alerts show 0f3a9c8e-1b2c-4d5e-8f90-123456789abc
    Show {
        /// The alert's id, as `alerts list` prints it.
        id: String,
    },
    /// Acknowledge an alert (the acknowledgement is an audit event naming you).
    ///
    /// Example: carevault alerts ack 0f3a9c8e-1b2c-4d5e-8f90-123456789abc
    Ack {
        /// The alert's id, as `alerts list` prints it.
        id: String,
    },
}

pub(crate) fn run(command: AlertsCommand) -> Result<()> {
    let client = Client::from_session()?;
    match command {
        AlertsCommand::List { count, output } => {
            let bundle = client.expect("GET", &format!("/alerts?_count={count}"), None)?;
            if output.printed_json(&bundle)? {
                return Ok(());
            }
            println!(
                "{:<36} {:<28} {:<32} {:<9} {:<24} {:<16} {:>6} ACK",
                "ID", "IDENTIFIED", "RULE", "SEVERITY", "PRINCIPAL", "SOURCE", "COUNT"
            );
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                let r = &entry["resource"];
                println!(
                    "{:<36} {:<28} {:<32} {:<9} {:<24} {:<16} {:>6} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["identifiedDateTime"].as_str().unwrap_or(""),
                    r["code"]["coding"][0]["code"].as_str().unwrap_or(""),
                    ext(r, "severity"),
                    ext(r, "principal"),
                    ext(r, "source-ip"),
                    ext(r, "count"),
                    ext(r, "acknowledged-by"),
                );
            }
            Ok(())
        }
        AlertsCommand::Show { id } => {
            let issue = client.expect("GET", &format!("/alerts/{}", encode(&id)), None)?;
            println!("{}", serde_json::to_string_pretty(&issue)?);
            Ok(())
        }
        AlertsCommand::Ack { id } => {
            let issue = client.expect("POST", &format!("/alerts/{}/ack", encode(&id)), None)?;
            println!(
                "alert {} acknowledged by {}",
                issue["id"].as_str().unwrap_or(&id),
                ext(&issue, "acknowledged-by")
            );
            Ok(())
        }
    }
}

/// An extension's value (`urn:carevault:alert:NAME`) as text.
fn ext(resource: &Value, name: &str) -> String {
    let url = format!("urn:carevault:alert:{name}");
    resource["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == url.as_str())
        .map(|e| match (&e["valueString"], &e["valueUnsignedInt"]) {
            (Value::String(s), _) => s.clone(),
            (_, Value::Number(n)) => n.to_string(),
            _ => String::new(),
        })
        .unwrap_or_default()
}
