//! `carevault login`, `logout` and `token`: getting, keeping, showing and ending a session.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{Client, ConnectArgs};
use crate::profile::{self, SavedSession, TargetArgs};
use crate::prompt;

/// What the server says when the right password comes with a code already used.
pub(crate) const CODE_ALREADY_USED: &str = "this code was already used; wait for the next one";

/// Codes one `login` asks for when the last one was already used.
const CODE_ATTEMPTS: usize = 3;

pub(crate) fn login(target: &TargetArgs, username: Option<String>) -> Result<()> {
    let target = target.resolve()?;
    let client = Client::for_target(&target)?;
    // A wrong URL or an untrusted certificate is reported before anything is typed.
    client.check_reachable()?;
    let username = match username {
        Some(u) => u,
        None => prompt::line("username: ")?,
    };
    let password = prompt::secret("password: ")?;
    let token = login_with_code(&client, &username, &password)?;
    profile::save_profile(&target)?;
    let path = profile::save_session(&SavedSession {
        server: target.server.clone(),
        ca_cert: target.ca_cert.clone(),
        access_token: token,
    })?;
    println!(
        "logged in as {username} on {} (profile {}); session saved to {}",
        target.server,
        profile::name(),
        path.display()
    );
    println!("later commands use this server and session; `carevault token` prints it for curl");
    Ok(())
}

/// Ask for the code and log in; a code already used is asked for again (on a terminal).
fn login_with_code(
    client: &Client,
    username: &str,
    password: &Zeroizing<String>,
) -> Result<String> {
    for attempt in 1..=CODE_ATTEMPTS {
        let code = prompt::line("authenticator code (or recovery code): ")?;
        let (status, answer) = client.call(
            "POST",
            "/auth/login",
            Some(&json!({"username": username, "password": password.as_str(), "totp_code": code})),
        )?;
        let diagnostics = answer["issue"][0]["diagnostics"].as_str().unwrap_or("");
        match status {
            200 => {
                return answer["access_token"]
                    .as_str()
                    .map(str::to_owned)
                    .context("the server's answer has no access_token");
            }
            401 if diagnostics == CODE_ALREADY_USED
                && prompt::interactive()
                && attempt < CODE_ATTEMPTS =>
            {
                eprintln!("{CODE_ALREADY_USED} (codes change every 30 seconds)");
            }
            401 if diagnostics == CODE_ALREADY_USED => bail!("{CODE_ALREADY_USED}"),
            401 => bail!(
                "login failed: the username, password or code is wrong (or the account is \
                 disabled or locked; an admin can check with `carevault user list`)"
            ),
            429 => bail!("too many attempts; wait a minute before trying again"),
            _ => bail!(
                "the server answered {status}: {}",
                if diagnostics.is_empty() {
                    "no details"
                } else {
                    diagnostics
                }
            ),
        }
    }
    bail!("{CODE_ALREADY_USED}")
}

pub(crate) fn logout() -> Result<()> {
    let client = Client::from_session()?;
    let (status, _) = client.call("POST", "/auth/logout", None)?;
    profile::forget_session()?;
    if status == 204 {
        println!("logged out");
    } else {
        println!("the session had already ended; forgotten locally");
    }
    Ok(())
}

/// Print the bearer token (the session's or an API key), for scripts and curl.
pub(crate) fn token(connect: &ConnectArgs) -> Result<()> {
    let client = connect.client()?;
    // A token the server no longer accepts is no use to a script: say so now.
    client.expect("GET", "/auth/whoami", None)?;
    let token = client.token().context("no token to print")?;
    if std::io::stdout().is_terminal() {
        eprintln!(
            "warning: this token acts as you until the session ends; keep it out of shared \
             terminals and shell history. In scripts: TOKEN=$(carevault token)"
        );
    }
    println!("{token}");
    Ok(())
}
