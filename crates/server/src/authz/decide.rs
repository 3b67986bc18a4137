//! Decisions: a FHIR, type-level or system request evaluated by Cedar over the principal's and
//! the resource's entities, cached per policy set when the policies allow it.

use carevault_fhir::ResourceType;
use cedar_policy::{Context, Decision as CedarDecision, Entities, Request, RestrictedExpression};

use super::entities::{principal_cache_key, resource_entity, uid};
use super::{Authz, Decision, FhirAction, ResourceAttrs, SystemAction};
use crate::compartment::Compartment;
use crate::error::Result;
use crate::identity::{Principal, PrincipalKind};
use crate::names::OrganizationId;

/// Decisions kept per policy set (the cache is cleared when full).
const DECISION_CACHE: usize = 20_000;

/// Everything a FHIR decision depends on when the policies are [`identity_free`]: who asks
/// (the principal's entity is built from exactly what `principal_cache_key` holds), the action,
/// the context (break-glass; the scope strings follow from action and type), and the resource's
/// attributes other than its id and compartment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    principal: String,
    action: String,
    rtype: ResourceType,
    in_compartment: bool,
    organization: Option<OrganizationId>,
    security: Vec<String>,
    break_glass: bool,
}

impl Authz {
    /// The organization managing a patient compartment (None when unknown).
    pub async fn compartment_organization(
        &self,
        compartment: &Compartment,
    ) -> Result<Option<OrganizationId>> {
        if self.shared_database {
            return self.stored_organization(compartment).await;
        }
        if let Some(org) = self
            .organizations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(compartment)
        {
            return Ok(org.clone());
        }
        let org = self.stored_organization(compartment).await?;
        self.remember_organization(compartment, org.clone());
        Ok(org)
    }

    async fn stored_organization(
        &self,
        compartment: &Compartment,
    ) -> Result<Option<OrganizationId>> {
        let stored = self
            .store
            .compartment_organization(compartment.as_str())
            .await?;
        Ok(OrganizationId::stored(stored.flatten().as_deref()))
    }

    pub fn remember_organization(
        &self,
        compartment: &Compartment,
        organization: Option<OrganizationId>,
    ) {
        if self.shared_database {
            return;
        }
        self.organizations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(compartment.clone(), organization);
    }

    /// True when no policy in force reads a resource's security labels: a decision made
    /// without them is the decision for any labels, so a search can decide a candidate before
    /// opening it.
    pub fn decides_without_labels(&self) -> bool {
        self.loaded().label_free
    }

    /// Decide a FHIR interaction on a resource.
    pub fn fhir(
        &self,
        principal: &Principal,
        action: FhirAction,
        attrs: &ResourceAttrs,
        break_glass: bool,
    ) -> Decision {
        let decision = self.decide(principal, action.name(), Some((action, attrs)), break_glass);
        // A key minted by a user grants at most what the user may do.
        match &principal.kind {
            PrincipalKind::ApiKey {
                owner: Some(owner), ..
            } if decision.allowed => {
                let mut owner_decision = self.fhir(owner, action, attrs, false);
                owner_decision.policies.extend(decision.policies);
                owner_decision
            }
            _ => decision,
        }
    }

    /// May `principal` perform `action` on some resource of this type at all (in their own
    /// organization)? Tells "forbidden" (403) apart from "not yours, so not found" (404).
    pub fn fhir_type(
        &self,
        principal: &Principal,
        action: FhirAction,
        rtype: ResourceType,
    ) -> bool {
        let attrs = ResourceAttrs {
            rtype,
            id: String::new(),
            compartment: Some(Compartment::some_patient()),
            organization: principal.organization.clone(),
            security: Vec::new(),
        };
        self.fhir(principal, action, &attrs, false).allowed
    }

    /// Decide an administrative or monitoring action.
    pub fn system(&self, principal: &Principal, action: SystemAction) -> Decision {
        match &principal.kind {
            // No administration through a key: a key reaches at most the metrics, and only
            // with the `metrics` scope (the policy `builtin.api-key.metrics` checks it).
            PrincipalKind::ApiKey { .. } if action != SystemAction::MetricsRead => {
                Decision::default()
            }
            PrincipalKind::ApiKey { owner, .. } => {
                let decision = self.decide(principal, action.name(), None, false);
                match owner {
                    // A key minted by a user grants at most what the user may do.
                    Some(owner) if decision.allowed => {
                        let mut owner_decision = self.system(owner, action);
                        owner_decision.policies.extend(decision.policies);
                        owner_decision
                    }
                    _ => decision,
                }
            }
            PrincipalKind::User => self.decide(principal, action.name(), None, false),
        }
    }

    pub(super) fn decide(
        &self,
        principal: &Principal,
        action: &str,
        fhir: Option<(FhirAction, &ResourceAttrs)>,
        break_glass: bool,
    ) -> Decision {
        // Building the request's entities (Cedar computes their transitive closure) and
        // evaluating took a third of a search's CPU, repeated for every candidate; most
        // candidates share their attributes.
        let loaded = self.loaded();
        let cached = loaded
            .decisions
            .as_ref()
            .zip(fhir)
            .map(|(cache, (_, attrs))| {
                let key = DecisionKey {
                    principal: principal_cache_key(principal),
                    action: action.to_owned(),
                    rtype: attrs.rtype,
                    in_compartment: attrs.compartment.is_some(),
                    organization: attrs.organization.clone(),
                    security: attrs.security.clone(),
                    break_glass,
                };
                (cache, key)
            });
        if let Some((cache, key)) = &cached
            && let Some(d) = cache.read().unwrap_or_else(|p| p.into_inner()).get(key)
        {
            return d.clone();
        }
        match self.evaluate(principal, action, fhir, break_glass) {
            Ok(d) => {
                if let Some((cache, key)) = cached {
                    let mut cache = cache.write().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= DECISION_CACHE {
                        cache.clear();
                    }
                    cache.insert(key, d.clone());
                }
                d
            }
            Err(e) => {
                // An evaluation error denies (default deny) and is logged without PHI.
                tracing::error!(event = "authz_error", action, error = %e, "authorization could not be evaluated");
                Decision::default()
            }
        }
    }

    fn evaluate(
        &self,
        principal: &Principal,
        action: &str,
        fhir: Option<(FhirAction, &ResourceAttrs)>,
        break_glass: bool,
    ) -> std::result::Result<Decision, String> {
        let loaded = self.loaded();
        let (principal_uid, mut entities) = self.principal_entities(principal)?;
        let (resource_uid, context) = match fhir {
            Some((action, attrs)) => {
                let (uid, entity) = resource_entity(attrs)?;
                entities.push(entity);
                let letter = action.scope_letter();
                let context = Context::from_pairs([
                    (
                        "break_glass".to_owned(),
                        RestrictedExpression::new_bool(break_glass),
                    ),
                    (
                        "scope".to_owned(),
                        RestrictedExpression::new_string(format!(
                            "{}.{letter}",
                            attrs.rtype.as_str()
                        )),
                    ),
                    (
                        "scope_any".to_owned(),
                        RestrictedExpression::new_string(format!("*.{letter}")),
                    ),
                ])
                .map_err(|e| e.to_string())?;
                (uid, context)
            }
            None => (uid("System", "carevault")?, Context::empty()),
        };
        let request = Request::new(
            principal_uid,
            uid("Action", action)?,
            resource_uid,
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        entities.extend(
            loaded
                .index
                .action_entities
                .get(action)
                .cloned()
                .unwrap_or_default(),
        );
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let policies = loaded.index.bucket(
            action,
            matches!(principal.kind, PrincipalKind::ApiKey { .. }),
            &principal.roles,
        );
        let response = self
            .authorizer
            .is_authorized(&request, &policies, &entities);
        if let Some(err) = response.diagnostics().errors().next() {
            tracing::warn!(event = "authz_policy_error", error = %err, "a policy failed to evaluate");
        }
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: response
                .diagnostics()
                .reason()
                .map(|id| id.to_string())
                .collect(),
        })
    }
}
