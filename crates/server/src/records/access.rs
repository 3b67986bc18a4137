//! Authorization of reads and writes: the Cedar decision on a resource's attributes (its
//! compartment, organization and security labels), and break-glass grants.

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::BreakGlassRow;
use serde_json::Value;

use super::{Caller, Records, Version};
use crate::authz::{FhirAction, ResourceAttrs};
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::identity::{Principal, PrincipalKind, Role};
use crate::names::OrganizationId;

impl Records {
    /// Whether the caller may read `v` (a denial is not an error here: the row is left out).
    pub(super) async fn may_read(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        v: &Version,
    ) -> Result<bool> {
        match self.authorize_existing(caller, action, v).await {
            Ok(()) => Ok(true),
            Err(Error::NotFound | Error::Forbidden) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The organization managing a patient compartment (a patient created earlier in the same
    /// transaction counts).
    pub(super) async fn organization_of(
        &self,
        caller: Caller<'_>,
        compartment: Option<&Compartment>,
    ) -> Result<Option<OrganizationId>> {
        let Some(c) = compartment else {
            return Ok(None);
        };
        if let Some(tx) = caller.tx
            && let Some(org) = tx
                .organizations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(c)
        {
            return Ok(org.clone());
        }
        if let Some(org) = caller.organizations.and_then(|m| m.get(c)) {
            return Ok(org.clone());
        }
        self.authz.compartment_organization(c).await
    }

    /// Authorize `action` on a stored version. A denial of something the caller could do in
    /// their own organization answers 404, so foreign patients' records cannot be probed.
    pub(super) async fn authorize_existing(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        v: &Version,
    ) -> Result<()> {
        let attrs = self.existing_attrs(caller, v).await?;
        self.authorize(caller, action, &attrs, true).await
    }

    /// What the policies see of a stored version.
    pub(super) async fn existing_attrs(
        &self,
        caller: Caller<'_>,
        v: &Version,
    ) -> Result<Vec<ResourceAttrs>> {
        self.compartment_attrs(
            caller,
            v.rtype,
            &v.id,
            &v.compartment,
            security_labels(&v.json),
            None,
        )
        .await
    }

    /// Authorize writing `body` (its compartment and labels as they will be); returns the
    /// compartment it is to be sealed under.
    pub(super) async fn authorize_write(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        rtype: ResourceType,
        id: &ResourceId,
        body: &Value,
    ) -> Result<Compartment> {
        let compartment = self.compartment_of_new(caller, rtype, id, body).await?;
        let security: Vec<String> = body
            .pointer("/meta/security")
            .and_then(Value::as_array)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|l| l["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // A Patient's organization is the one it will have (its own managingOrganization).
        let patient_organization =
            (rtype == ResourceType::PATIENT).then(|| managing_organization(body));
        let attrs = self
            .compartment_attrs(
                caller,
                rtype,
                id,
                &compartment,
                security,
                patient_organization.clone(),
            )
            .await?;
        match self.authorize(caller, action, &attrs, false).await {
            Err(Error::Forbidden) => Err(patient_refusal(caller.principal, patient_organization)),
            other => other,
        }?;
        Ok(compartment)
    }

    /// Authorize `action` on a resource with these attributes: one set per compartment member,
    /// and every one must be allowed.
    pub(super) async fn authorize(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        attrs: &[ResourceAttrs],
        existing: bool,
    ) -> Result<()> {
        for attrs in attrs {
            let decision = self.authz.fhir(caller.principal, action, attrs, false);
            self.authorize_decided(caller, action, attrs, existing, decision)
                .await?;
        }
        Ok(())
    }

    /// [`Self::authorize`] with the policies' first decision (without break-glass) already made.
    pub(super) async fn authorize_decided(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        attrs: &ResourceAttrs,
        existing: bool,
        decision: crate::authz::Decision,
    ) -> Result<()> {
        caller.audit.set_policies(&decision.policies);
        if decision.allowed {
            return Ok(());
        }
        // Break-glass: a clinician's active grant opens reads beyond their organizations.
        if action.is_read()
            && let Some(compartment) = &attrs.compartment
            && may_break_glass(caller.principal)
            && let Some(reason) = self.break_glass_covering(caller, compartment).await?
        {
            let decision = self.authz.fhir(caller.principal, action, attrs, true);
            caller.audit.set_policies(&decision.policies);
            if decision.allowed {
                caller.audit.set_break_glass(&reason);
                tracing::warn!(
                    event = "security_alert",
                    kind = "break_glass_access",
                    principal = %caller.principal.id,
                    request_id = %caller.audit.request_id(),
                    "break-glass access used"
                );
                return Ok(());
            }
        }
        if existing && self.authz.fhir_type(caller.principal, action, attrs.rtype) {
            Err(Error::NotFound)
        } else {
            Err(Error::Forbidden)
        }
    }

    async fn break_glass_covering(
        &self,
        caller: Caller<'_>,
        compartment: &Compartment,
    ) -> Result<Option<String>> {
        if let Some(grants) = caller.break_glass_grants {
            return Ok(grant_covering(grants, Some(compartment)).map(|g| g.reason.clone()));
        }
        let grants = self
            .store
            .break_glass_grants(&caller.principal.id, self.clock.now_secs())
            .await?;
        Ok(grant_covering(&grants, Some(compartment)).map(|g| g.reason.clone()))
    }
}

/// Why a Patient the caller writes is refused, when its `managingOrganization` is the reason:
/// a member of an organization writes the Patients their organization manages. It tells only
/// what the body says and the caller's own organization, nothing of any stored record.
fn patient_refusal(principal: &Principal, written: Option<Option<OrganizationId>>) -> Error {
    let Some(own) = &principal.organization else {
        return Error::Forbidden;
    };
    match written {
        Some(None) => Error::ForbiddenBecause(format!(
            "set the Patient's managingOrganization to {{\"reference\": \"Organization/{own}\"}}: \
             you may write the Patients your organization manages"
        )),
        Some(Some(org)) if org != *own => Error::ForbiddenBecause(format!(
            "the Patient's managingOrganization must be your organization, Organization/{own}"
        )),
        _ => Error::Forbidden,
    }
}

/// `Organization/<id>` from a Patient's `managingOrganization`, as the bare id.
pub(super) fn managing_organization(patient: &Value) -> Option<OrganizationId> {
    let reference = patient
        .pointer("/managingOrganization/reference")?
        .as_str()?;
    let id = reference.rsplit_once("Organization/").map(|(_, id)| id)?;
    // A FHIR id (the reference's own rule), which is also an organization id.
    let id = ResourceId::parse(id).ok()?;
    OrganizationId::parse(id.as_str()).ok()
}

/// Break-glass opens reads to clinicians signed in as themselves (not to API keys).
pub(super) fn may_break_glass(principal: &Principal) -> bool {
    matches!(principal.kind, PrincipalKind::User) && principal.has_role(Role::Clinician)
}

/// The first grant covering a patient compartment (a grant without a patient covers all).
pub(super) fn grant_covering<'g>(
    grants: &'g [BreakGlassRow],
    compartment: Option<&Compartment>,
) -> Option<&'g BreakGlassRow> {
    let compartment = compartment?;
    grants.iter().find(|g| {
        g.patient
            .as_deref()
            .is_none_or(|p| p == compartment.as_str())
    })
}

/// The `meta.security` codes of a stored resource (only `meta` is decoded).
fn security_labels(json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Coding {
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        security: Vec<Coding>,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        meta: Option<Meta>,
    }
    if json.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice::<Head>(json)
        .ok()
        .and_then(|h| h.meta)
        .map(|m| m.security.into_iter().filter_map(|c| c.code).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managing_organization_and_labels() {
        let p = serde_json::json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/org-a"}});
        assert_eq!(
            managing_organization(&p)
                .as_ref()
                .map(OrganizationId::as_str),
            Some("org-a")
        );
        let abs = serde_json::json!({"managingOrganization": {"reference": "https://x.example/fhir/Organization/org-b"}});
        assert_eq!(
            managing_organization(&abs)
                .as_ref()
                .map(OrganizationId::as_str),
            Some("org-b")
        );
        assert_eq!(managing_organization(&serde_json::json!({})), None);
        let json = br#"{"resourceType":"Patient","meta":{"security":[{"system":"s","code":"R"},{"code":"HTEST"}]},"name":[]}"#;
        assert_eq!(security_labels(json), ["R", "HTEST"]);
        assert!(security_labels(b"").is_empty());
    }
}
