//! `carevault user ...`: account administration through the API (admin).

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, str_field, str_items};

#[derive(Subcommand)]
pub(crate) enum UserCommand {
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
        }
        UserCommand::List => {
            let listed = client.expect("GET", "/admin/users", None)?;
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
        }
    }
    Ok(())
}
