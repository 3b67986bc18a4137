//! Authorization: every decision is made by the Cedar policy engine over the shipped schema,
//! the built-in role policies and the custom policies an admin adds. Default deny; `forbid` wins.
//!
//! Custom policies are validated against the schema before they take effect; the policy set is
//! versioned in the database and swapped atomically, so a change applies to every request after
//! it commits.

mod actions;
mod decide;
mod entities;
mod policies;
mod policy_index;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use carevault_store::Store;
use cedar_policy::{Authorizer, Entities, Entity, EntityUid, Policy, Schema};

use crate::clock::SharedClock;
use policy_index::Loaded;

pub use actions::{Decision, FhirAction, ResourceAttrs, SystemAction};
pub use policies::{PolicyRejected, check_policy_text};

pub const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");
pub const BUILTIN_POLICIES: &str = include_str!("../../policies/builtin.cedar");
/// Stands for "no managing organization known" (such a compartment belongs to no clinician).
pub const NO_ORGANIZATION: &str = "__none__";

pub struct Authz {
    schema: Schema,
    /// The schema's action hierarchy (`read` in `fhir-read` in `fhir`), added to every request.
    actions: Entities,
    builtin: Vec<Policy>,
    current: RwLock<Arc<Loaded>>,
    authorizer: Authorizer,
    store: Arc<dyn Store>,
    clock: SharedClock,
    /// compartment -> managing organization.
    organizations:
        RwLock<HashMap<crate::compartment::Compartment, Option<crate::names::OrganizationId>>>,
    /// Other nodes write the same database: a patient's organization may change elsewhere, so
    /// it is read from the database on every decision instead of cached.
    shared_database: bool,
    /// Principals' Cedar entities, keyed by everything they are built from.
    principals: RwLock<HashMap<String, (EntityUid, Vec<Entity>)>>,
}
