//! `carevault patient ...`: crypto-shredding a patient, with a second admin's approval.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, str_field};

#[derive(Subcommand)]
pub(crate) enum PatientCommand {
    /// Approve another admin's crypto-shred of a patient: prints a one-time approval token
    /// (valid 15 minutes) to hand to them.
    ///
    /// Example: carevault patient approve-shred Patient/123
    ApproveShred {
        /// The patient (`Patient/ID` or `ID`).
        patient: String,
    },
    /// Destroy a patient's data key: every version of every resource in their compartment
    /// becomes unreadable for good, backups included. Needs a second admin's approval token.
    ///
    /// Example: carevault patient shred Patient/123 --reason "erasure request 2026-117" --approval cva_...
    Shred {
        /// The patient (`Patient/ID` or `ID`).
        patient: String,
        /// Why; audited (as a keyed digest and sealed, never in clear).
        #[arg(long)]
        reason: String,
        /// The approval token from `carevault patient approve-shred` run by another admin.
        #[arg(long)]
        approval: String,
    },
}

pub(crate) fn run(command: PatientCommand) -> Result<()> {
    let client = Client::from_session()?;
    let id = |p: &str| p.strip_prefix("Patient/").unwrap_or(p).to_owned();
    match command {
        PatientCommand::ApproveShred { patient } => {
            let approved = client.expect(
                "POST",
                &format!("/admin/patients/{}/shred-approval", id(&patient)),
                None,
            )?;
            println!(
                "approval token for shredding {}: {}",
                str_field(&approved, "patient"),
                str_field(&approved, "approval_token")
            );
            println!(
                "(one use, by another admin; expires {})",
                str_field(&approved, "expires_at")
            );
        }
        PatientCommand::Shred {
            patient,
            reason,
            approval,
        } => {
            let done = client.expect(
                "POST",
                &format!("/admin/patients/{}/shred", id(&patient)),
                Some(&json!({"reason": reason, "approval": approval})),
            )?;
            println!(
                "{} shredded: its data key is destroyed and its resources are gone",
                str_field(&done, "patient")
            );
        }
    }
    Ok(())
}
