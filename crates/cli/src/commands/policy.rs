//! `carevault policy ...`: custom Cedar policies, tested offline or managed through the API.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, str_field};
use crate::output::OutputArgs;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Add (or replace) a custom policy from a Cedar file; refused with Cedar's diagnostics if invalid.
    ///
    /// Example: carevault policy add night-shift night-shift.cedar
    Add {
        /// The policy's name.
        name: String,
        /// The Cedar file (test it first with `carevault policy test FILE`).
        file: PathBuf,
    },
    /// List the custom policies with their text.
    ///
    /// Example: carevault policy list --output json
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove a custom policy.
    ///
    /// Example: carevault policy rm night-shift
    Rm {
        /// The policy's name (as `policy list` shows it).
        name: String,
    },
    /// Validate a Cedar file against the shipped schema and built-in policies, offline.
    ///
    /// Example: carevault policy test night-shift.cedar
    Test {
        /// The Cedar file.
        file: PathBuf,
    },
}

pub(crate) fn run(command: PolicyCommand) -> Result<()> {
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
                eprintln!("{}", str_field(issue, "diagnostics"));
            }
            bail!("the server refused the policy ({status}); nothing changed")
        }
        PolicyCommand::List { output } => {
            let client = Client::from_session()?;
            let listed = client.expect("GET", "/admin/policies", None)?;
            if output.printed_json(&listed)? {
                return Ok(());
            }
            println!("policy set version {}", listed["policy_set_version"]);
            for p in listed["policies"].as_array().into_iter().flatten() {
                println!(
                    "--- {} (updated {})",
                    str_field(p, "name"),
                    str_field(p, "updated_at")
                );
                println!("{}", str_field(p, "policy"));
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
