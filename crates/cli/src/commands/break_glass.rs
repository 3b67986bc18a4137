//! `carevault break-glass`: emergency read access beyond your organizations, loudly audited.

use anyhow::Result;
use serde_json::json;

use crate::client::{Client, str_field};

pub(crate) fn run(reason: String, patient: Option<String>) -> Result<()> {
    let client = Client::from_session()?;
    let granted = client.expect(
        "POST",
        "/auth/break-glass",
        Some(&json!({"reason": reason, "patient": patient})),
    )?;
    println!(
        "break-glass access granted until {}; every use is audited and raises a security alert",
        str_field(&granted, "expires_at")
    );
    Ok(())
}
