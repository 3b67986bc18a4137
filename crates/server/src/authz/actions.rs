//! The vocabulary of a decision: FHIR and system actions, what authorization knows of a
//! resource, and the decision itself.

use carevault_fhir::ResourceType;

use crate::compartment::Compartment;
use crate::names::OrganizationId;

/// A FHIR interaction, as authorization names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FhirAction {
    Read,
    Vread,
    Search,
    History,
    Create,
    Update,
    Delete,
}

impl FhirAction {
    pub fn name(self) -> &'static str {
        match self {
            FhirAction::Read => "read",
            FhirAction::Vread => "vread",
            FhirAction::Search => "search",
            FhirAction::History => "history",
            FhirAction::Create => "create",
            FhirAction::Update => "update",
            FhirAction::Delete => "delete",
        }
    }

    /// The SMART v2 permission letter this interaction needs.
    pub fn scope_letter(self) -> char {
        match self {
            FhirAction::Read | FhirAction::Vread | FhirAction::History => 'r',
            FhirAction::Search => 's',
            FhirAction::Create => 'c',
            FhirAction::Update => 'u',
            FhirAction::Delete => 'd',
        }
    }

    pub fn is_read(self) -> bool {
        matches!(
            self,
            FhirAction::Read | FhirAction::Vread | FhirAction::Search | FhirAction::History
        )
    }
}

/// An administrative or monitoring action on the server itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemAction {
    ManageUsers,
    ManageKeys,
    ManagePolicies,
    AuditRead,
    MetricsRead,
    BreakGlass,
}

impl SystemAction {
    pub fn name(self) -> &'static str {
        match self {
            SystemAction::ManageUsers => "manage-users",
            SystemAction::ManageKeys => "manage-keys",
            SystemAction::ManagePolicies => "manage-policies",
            SystemAction::AuditRead => "audit-read",
            SystemAction::MetricsRead => "metrics-read",
            SystemAction::BreakGlass => "break-glass",
        }
    }
}

/// What authorization knows of a resource: never its content.
#[derive(Clone, Debug)]
pub struct ResourceAttrs {
    pub rtype: ResourceType,
    pub id: String,
    /// `Patient/<id>`, or None outside patient compartments.
    pub compartment: Option<Compartment>,
    pub organization: Option<OrganizationId>,
    pub security: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that determined the decision.
    pub policies: Vec<String>,
}
