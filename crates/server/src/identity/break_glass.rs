//! Break-glass: emergency read access beyond a principal's organizations, loudly audited.

use carevault_store::WriteOp;

use super::{Identity, Principal};
use crate::audit::AuditScope;
use crate::compartment::Compartment;
use crate::error::{Error, Result};

impl Identity {
    /// Grant `principal` emergency read access beyond their organizations for `minutes`,
    /// optionally limited to one patient.
    pub async fn break_glass(
        &self,
        audit: &AuditScope,
        principal: &Principal,
        reason: &str,
        patient: Option<&str>,
        minutes: i64,
    ) -> Result<String> {
        if reason.trim().chars().count() < 20 {
            return Err(Error::BadRequest(
                "a break-glass reason of at least 20 characters is required".into(),
            ));
        }
        if reason.chars().count() > 1000 {
            return Err(Error::BadRequest(
                "the break-glass reason is limited to 1000 characters".into(),
            ));
        }
        let patient = match patient {
            Some(p) => {
                let id = crate::compartment::parse_patient(p)
                    .ok_or_else(|| Error::BadRequest("patient must be a Patient id".into()))?;
                Some(Compartment::patient(&id))
            }
            None => None,
        };
        let now = self.clock.now_secs();
        let until = now + minutes * 60;
        audit.set_break_glass(reason);
        if let Some(p) = &patient {
            audit.add_patient(p);
        }
        self.commit(
            audit,
            vec![WriteOp::InsertBreakGlass(carevault_store::BreakGlassRow {
                principal_id: principal.id.clone(),
                until,
                patient: patient.map(|p| p.to_string()),
                reason: reason.to_owned(),
                created_at: now,
            })],
            201,
        )
        .await?;
        tracing::warn!(
            event = "security_alert",
            kind = "break_glass_granted",
            principal = %principal.id,
            minutes,
            "break-glass access granted"
        );
        Ok(crate::clock::fhir_instant(until * 1_000_000))
    }
}
