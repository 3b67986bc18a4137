//! The compiled policy set: an index from principal and action to the policies that can apply,
//! and what the policies read (whether decisions can be cached, whether labels matter).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use carevault_store::PolicyRow;
use cedar_policy::{Entities, Entity, EntityTypeName, EntityUid, Policy, PolicySet};

use super::Decision;
use super::decide::DecisionKey;
use crate::identity::Role;

pub(super) struct Loaded {
    pub(super) version: i64,
    pub(super) custom: Vec<PolicyRow>,
    pub(super) index: PolicyIndex,
    /// FHIR decisions already made under this policy set, when no policy can tell two
    /// resources apart beyond the attributes in [`DecisionKey`] (see [`identity_free`]).
    pub(super) decisions: Option<RwLock<HashMap<DecisionKey, Decision>>>,
    /// No policy reads a resource's security labels (see [`label_free`]).
    pub(super) label_free: bool,
}

impl Loaded {
    pub(super) fn new(
        version: i64,
        set: PolicySet,
        custom: Vec<PolicyRow>,
        actions: &Entities,
    ) -> Self {
        let cacheable = set.policies().all(identity_free);
        let label_free = set.policies().all(label_free);
        Self {
            version,
            custom,
            index: PolicyIndex::new(&set, actions),
            decisions: cacheable.then(|| RwLock::new(HashMap::new())),
            label_free,
        }
    }
}

/// The resource attributes a policy may read for its decision to stay cacheable.
const CACHEABLE_RESOURCE_ATTRS: [&str; 4] = ["type", "in_compartment", "organization", "security"];

/// Does this policy decide the same for every resource with equal type, organization,
/// compartment membership and labels? True when its resource scope is unconstrained and its
/// conditions read `resource` only through those attributes. Anything else (a resource
/// uid, `resource.compartment`, `resource has ...`, a form this check does not know) is
/// treated as identity-dependent, which only turns the cache off.
pub(super) fn identity_free(policy: &Policy) -> bool {
    let Ok(json) = policy.to_json() else {
        return false;
    };
    // `resource is CareVault::Resource` holds for every FHIR request alike.
    let scope_free = match json
        .pointer("/resource/op")
        .and_then(serde_json::Value::as_str)
    {
        Some("All") => true,
        Some("is") => json.pointer("/resource/in").is_none(),
        _ => false,
    };
    scope_free && conditions_read_resource_only(&json, &CACHEABLE_RESOURCE_ATTRS)
}

/// The resource attributes other than its security labels.
const UNLABELLED_RESOURCE_ATTRS: [&str; 4] =
    ["type", "in_compartment", "organization", "compartment"];

/// Does this policy decide the same whatever the resource's security labels? True when its
/// conditions read `resource` only through attributes other than `security` (its scope names
/// types and uids, never labels). Like [`identity_free`], an unknown form counts as reading them.
fn label_free(policy: &Policy) -> bool {
    policy
        .to_json()
        .is_ok_and(|json| conditions_read_resource_only(&json, &UNLABELLED_RESOURCE_ATTRS))
}

/// Whether a policy's conditions (in Cedar's JSON form) use `resource` only as `resource.<attr>`
/// with `attr` among `attrs`.
fn conditions_read_resource_only(policy: &serde_json::Value, attrs: &[&str]) -> bool {
    fn reads_only(v: &serde_json::Value, attrs: &[&str]) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(dot) = m.get(".")
                    && dot.get("left") == Some(&serde_json::json!({"Var": "resource"}))
                {
                    return dot
                        .get("attr")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|a| attrs.contains(&a));
                }
                if m.get("Var").and_then(serde_json::Value::as_str) == Some("resource") {
                    return false;
                }
                m.values().all(|v| reads_only(v, attrs))
            }
            serde_json::Value::Array(items) => items.iter().all(|v| reads_only(v, attrs)),
            _ => true,
        }
    }
    policy
        .get("conditions")
        .is_some_and(|c| reads_only(c, attrs))
}

/// Cedar evaluates every policy it is given, and even one whose scope cannot match costs about a
/// microsecond. The index hands each request only the policies whose principal and action
/// scopes can match it (the decision is the same: a policy out of scope is never satisfied), in
/// policy sets cached per (action, principal type, roles).
pub(super) struct PolicyIndex {
    entries: Vec<(Policy, Scope)>,
    /// action -> itself and the groups it belongs to.
    action_groups: HashMap<String, HashSet<String>>,
    /// action -> its entity and its groups' entities (the hierarchy a request needs).
    pub(super) action_entities: HashMap<String, Vec<Entity>>,
    buckets: RwLock<HashMap<(String, bool, u8), Arc<PolicySet>>>,
}

struct Scope {
    principal: PrincipalScope,
    /// None: any action.
    actions: Option<HashSet<String>>,
}

enum PrincipalScope {
    Any,
    /// `principal in Role::"x"` (optionally with a type).
    Role(Option<String>, String),
    /// `principal is T`, `principal == T::"id"`, or another shape: kept for that type.
    Type(String),
    /// A shape the index does not reason about: always kept.
    Keep,
}

const ROLE_NAMES: [&str; 5] = ["admin", "clinician", "auditor", "developer", "service"];

impl PolicyIndex {
    pub(super) fn new(set: &PolicySet, actions: &Entities) -> Self {
        let mut action_groups: HashMap<String, HashSet<String>> = HashMap::new();
        let mut action_entities: HashMap<String, Vec<Entity>> = HashMap::new();
        for entity in actions.iter() {
            let uid = entity.uid();
            let name = uid.id().unescaped().to_owned();
            let mut groups: HashSet<String> = actions
                .ancestors(&uid)
                .map(|a| a.map(|g| g.id().unescaped().to_owned()).collect())
                .unwrap_or_default();
            groups.insert(name.clone());
            let chain: Vec<Entity> = actions
                .iter()
                .filter(|e| groups.contains(e.uid().id().unescaped()))
                .cloned()
                .collect();
            action_entities.insert(name.clone(), chain);
            action_groups.insert(name, groups);
        }
        let entries = set
            .policies()
            .map(|p| {
                let principal = match p.principal_constraint() {
                    cedar_policy::PrincipalConstraint::Any => PrincipalScope::Any,
                    cedar_policy::PrincipalConstraint::In(uid) => role_scope(None, &uid),
                    cedar_policy::PrincipalConstraint::IsIn(t, uid) => {
                        role_scope(Some(type_name(&t)), &uid)
                    }
                    cedar_policy::PrincipalConstraint::Is(t) => PrincipalScope::Type(type_name(&t)),
                    cedar_policy::PrincipalConstraint::Eq(uid) => {
                        PrincipalScope::Type(type_name(&uid.type_name().clone()))
                    }
                };
                let actions = match p.action_constraint() {
                    cedar_policy::ActionConstraint::Any => None,
                    cedar_policy::ActionConstraint::Eq(uid) => {
                        Some(HashSet::from([uid.id().unescaped().to_owned()]))
                    }
                    cedar_policy::ActionConstraint::In(uids) => {
                        Some(uids.iter().map(|u| u.id().unescaped().to_owned()).collect())
                    }
                };
                (p.clone(), Scope { principal, actions })
            })
            .collect();
        Self {
            entries,
            action_groups,
            action_entities,
            buckets: RwLock::new(HashMap::new()),
        }
    }

    /// The policies that can apply to `action` by a principal of this kind and these roles.
    pub(super) fn bucket(&self, action: &str, is_key: bool, roles: &[Role]) -> Arc<PolicySet> {
        let mask = roles.iter().fold(0u8, |m, r| {
            m | 1
                << ROLE_NAMES
                    .iter()
                    .position(|n| *n == r.as_str())
                    .unwrap_or(7)
        });
        let key = (action.to_owned(), is_key, mask);
        if let Some(set) = self
            .buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return set.clone();
        }
        let principal_type = if is_key { "ApiKey" } else { "User" };
        let groups = self.action_groups.get(action);
        let role_names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let applies = |scope: &Scope| {
            let action_ok = match (&scope.actions, groups) {
                (None, _) => true,
                (Some(wanted), Some(groups)) => wanted.iter().any(|w| groups.contains(w)),
                (Some(_), None) => true,
            };
            let principal_ok = match &scope.principal {
                PrincipalScope::Any | PrincipalScope::Keep => true,
                PrincipalScope::Type(t) => t == principal_type,
                PrincipalScope::Role(t, role) => {
                    t.as_deref().is_none_or(|t| t == principal_type)
                        && role_names.contains(&role.as_str())
                }
            };
            action_ok && principal_ok
        };
        let policies = self
            .entries
            .iter()
            .filter(|(_, scope)| applies(scope))
            .map(|(p, _)| p.clone());
        // A subset of a valid set is valid; should it fail anyway, the full set decides alike.
        let set = Arc::new(PolicySet::from_policies(policies).unwrap_or_else(|_| {
            PolicySet::from_policies(self.entries.iter().map(|(p, _)| p.clone()))
                .unwrap_or_default()
        }));
        self.buckets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, set.clone());
        set
    }
}

fn type_name(t: &EntityTypeName) -> String {
    t.basename().to_owned()
}

fn role_scope(ty: Option<String>, uid: &EntityUid) -> PrincipalScope {
    let parent_type = type_name(uid.type_name());
    match parent_type.as_str() {
        "Role" => PrincipalScope::Role(ty, uid.id().unescaped().to_owned()),
        "User" | "ApiKey" => PrincipalScope::Type(parent_type),
        _ => PrincipalScope::Keep,
    }
}
