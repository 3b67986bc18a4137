//! `carevault user ...`: account administration through the API (admin).

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, str_field, str_items};
use crate::output::OutputArgs;

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create an account; prints its one-time enrollment token and the exact `carevault
    /// enroll` command to hand to its owner.
    ///
    /// Example: carevault user add dr.grey --role clinician --organization org-a
    Add {
        /// The new account's name (letters, digits, '.', '-', '_').
        username: String,
        /// admin, clinician, auditor, developer or service (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The organization whose patients a clinician works with (its Patients'
        /// managingOrganization is Organization/ORG).
        #[arg(long)]
        organization: Option<String>,
    },
    /// List accounts: roles, organization, enrolled or not, active, disabled or locked.
    ///
    /// Example: carevault user list --output json
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Disable an account and revoke its sessions (reversible with `enable`).
    ///
    /// Example: carevault user disable dr.grey
    Disable {
        /// The account to disable.
        username: String,
    },
    /// Enable a disabled account.
    ///
    /// Example: carevault user enable dr.grey
    Enable {
        /// The account to enable.
        username: String,
    },
    /// Unlock an account locked after too many failed logins.
    ///
    /// Example: carevault user unlock dr.grey
    Unlock {
        /// The account to unlock.
        username: String,
    },
    /// Revoke an account's credentials and sessions; prints a new enrollment token.
    ///
    /// Example: carevault user reset dr.grey
    Reset {
        /// The account to reset.
        username: String,
    },
}

pub(crate) fn run(command: UserCommand) -> Result<()> {
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
            println!("created {}", str_field(&created, "username"));
            println!(
                "enrollment token for {}: {}",
                str_field(&created, "username"),
                str_field(&created, "enrollment_token")
            );
            println!("(expires {})", str_field(&created, "expires_at"));
            println!(
                "{} enrolls with: {}",
                str_field(&created, "username"),
                enroll_command(&client, str_field(&created, "enrollment_token"))
            );
        }
        UserCommand::List { output } => {
            let listed = client.expect("GET", "/admin/users", None)?;
            if output.printed_json(&listed)? {
                return Ok(());
            }
            println!(
                "{:<24} {:<24} {:<16} {:<8} STATE",
                "USERNAME", "ROLES", "ORGANIZATION", "ENROLLED"
            );
            for u in listed["users"].as_array().into_iter().flatten() {
                let roles = str_items(u, "roles");
                let state = if u["disabled"].as_bool() == Some(true) {
                    "disabled"
                } else if u["locked"].as_bool() == Some(true) {
                    "locked"
                } else {
                    "active"
                };
                println!(
                    "{:<24} {:<24} {:<16} {:<8} {state}",
                    str_field(u, "username"),
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
                str_field(&reset, "enrollment_token")
            );
            println!(
                "{username} enrolls again with: {}",
                enroll_command(&client, str_field(&reset, "enrollment_token"))
            );
        }
    }
    Ok(())
}

/// The exact `carevault enroll` line for a new account, for the admin to hand over.
fn enroll_command(client: &Client, token: &str) -> String {
    let ca = client
        .ca_cert()
        .map(|p| format!(" --ca-cert {}", p.display()))
        .unwrap_or_default();
    format!(
        "carevault enroll --server {}{ca} --token {token}",
        client.server()
    )
}
