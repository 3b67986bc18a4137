//! `carevault enroll`: choose a password (checked before anything else), bind an authenticator
//! app from a compact QR code or the grouped secret, and prove it with a code, asked again when
//! mistyped: the secret stays the same, so what was scanned keeps working.

use std::io::IsTerminal;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::client::{Client, str_field};
use crate::profile::{self, TargetArgs};
use crate::prompt;

/// Passwords one `enroll` asks for before giving up.
const PASSWORD_ATTEMPTS: usize = 5;
/// Codes one `enroll` asks for (the server's rate limits bound them too).
const CODE_ATTEMPTS: usize = 5;

pub(crate) fn enroll(target: &TargetArgs, token: &str) -> Result<()> {
    let target = target.resolve()?;
    let client = Client::for_target(&target)?;
    client.check_reachable()?;
    let started = client.expect(
        "POST",
        "/auth/enroll/start",
        Some(&json!({"enrollment_token": token})),
    )?;
    let uri = str_field(&started, "otpauth_uri");
    let secret = str_field(&started, "totp_secret");
    let username = str_field(&started, "username");
    if uri.is_empty() || secret.is_empty() {
        bail!("the server's answer has no authenticator secret");
    }
    println!("enrolling {username} on {}", target.server);
    let password = choose_password(username)?;
    println!();
    println!(
        "Add the account to an authenticator app: scan this QR code with it, or type the secret \
         below; then enter the 6-digit code it shows."
    );
    if std::io::stdout().is_terminal()
        && let Some(qr) = compact_qr(uri)
    {
        print!("{qr}");
    }
    println!("otpauth URI: {uri}");
    println!("secret: {}", grouped(secret));
    let finished = finish(&client, token, &password)?;
    println!(
        "enrolled. Recovery codes (each works once instead of an authenticator code; store them safely):"
    );
    for code in finished["recovery_codes"].as_array().into_iter().flatten() {
        println!("  {}", code.as_str().unwrap_or_default());
    }
    profile::save_profile(&target)?;
    println!();
    println!(
        "next: {} --username {username}   (with the app's next code: this one is used)",
        profile::login_hint()
    );
    Ok(())
}

/// A password the policy accepts, typed twice on a terminal.
fn choose_password(username: &str) -> Result<Zeroizing<String>> {
    for _ in 0..PASSWORD_ATTEMPTS {
        let password = prompt::secret(&format!(
            "choose a password ({}+ characters; a few unrelated words work well): ",
            carevault_server::identity::password::MIN_CHARS
        ))?;
        // The server's own policy, checked here before the authenticator step.
        if let Err(e) = carevault_server::identity::password::check_policy(&password, username) {
            let why = match e {
                carevault_server::Error::BadRequest(why) => why,
                other => other.to_string(),
            };
            eprintln!("{why}; choose another");
            continue;
        }
        if prompt::interactive() {
            let again = prompt::secret("repeat the password: ")?;
            if again.as_str() != password.as_str() {
                eprintln!("the passwords differ; choose it again");
                continue;
            }
        }
        return Ok(password);
    }
    bail!("no acceptable password was chosen; run the same enroll command again")
}

/// Ask for the code until the server takes it (the same secret each time).
fn finish(client: &Client, token: &str, password: &Zeroizing<String>) -> Result<Value> {
    for attempt in 1..=CODE_ATTEMPTS {
        let code = prompt::line("code shown by the app now: ")?;
        let (status, answer) = client.call(
            "POST",
            "/auth/enroll/finish",
            Some(&json!({"enrollment_token": token, "password": password.as_str(), "totp_code": code})),
        )?;
        let diagnostics = answer["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("no details");
        match status {
            200 => return Ok(answer),
            400 if diagnostics.contains("authenticator code") && attempt < CODE_ATTEMPTS => {
                eprintln!(
                    "that code does not match: type the code the app shows now (the secret has \
                     not changed, no need to scan again; if codes keep failing, check the \
                     phone's clock)"
                );
            }
            429 => bail!(
                "too many attempts; wait a minute, then run the same enroll command again (the \
                 token and the secret still work)"
            ),
            _ => bail!("the server answered {status}: {diagnostics}"),
        }
    }
    bail!("the code did not match {CODE_ATTEMPTS} times; run the same enroll command again")
}

/// The secret in groups of four, for typing.
fn grouped(secret: &str) -> String {
    secret
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The QR code in half-block characters, two modules per character cell and a one-module
/// border: a 37-module code takes 20 lines of 39 columns. Light modules are drawn (light text
/// on a dark terminal), dark ones left blank.
fn compact_qr(data: &str) -> Option<String> {
    let code =
        qrcode::QrCode::with_error_correction_level(data.as_bytes(), qrcode::EcLevel::L).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let side = width + 2;
    let light = |x: usize, y: usize| {
        if x == 0 || y == 0 || x > width || y > width {
            return true;
        }
        colors.get((y - 1) * width + (x - 1)) != Some(&qrcode::Color::Dark)
    };
    let mut out = String::new();
    for y in (0..side).step_by(2) {
        for x in 0..side {
            let bottom = y + 1 < side && light(x, y + 1);
            out.push(match (light(x, y), bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_grouped_by_four() {
        assert_eq!(grouped("ABCDEFGHIJ"), "ABCD EFGH IJ");
    }

    #[test]
    fn the_qr_code_fits_an_80_by_24_terminal() {
        let uri = format!(
            "otpauth://totp/CareVault:dr.a-rather-long-username?secret={}&issuer=CareVault",
            "A".repeat(32)
        );
        let qr = compact_qr(&uri).unwrap_or_default();
        let lines: Vec<&str> = qr.lines().collect();
        assert!(!lines.is_empty());
        assert!(lines.len() <= 21, "{} lines", lines.len());
        assert!(lines.iter().all(|l| l.chars().count() <= 42));
    }
}
