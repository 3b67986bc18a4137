//! `carevault login`, `logout` and `enroll`: getting, keeping and ending a session.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{self, Client, SavedSession, str_field};

pub(crate) fn login(
    server: &str,
    ca_cert: Option<PathBuf>,
    username: Option<String>,
) -> Result<()> {
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

pub(crate) fn enroll(server: &str, ca_cert: Option<&Path>, token: &str) -> Result<()> {
    let client = Client::new(server, ca_cert)?;
    let started = client.expect(
        "POST",
        "/auth/enroll/start",
        Some(&json!({"enrollment_token": token})),
    )?;
    let uri = started["otpauth_uri"]
        .as_str()
        .context("no otpauth_uri in the answer")?;
    let secret = str_field(&started, "totp_secret");
    let username = str_field(&started, "username");
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

pub(crate) fn logout() -> Result<()> {
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
