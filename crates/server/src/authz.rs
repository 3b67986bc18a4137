//! Authorization: every decision is made by the Cedar policy engine over the shipped schema,
//! the built-in role policies and the custom policies an admin adds. Default deny; `forbid` wins.
//!
//! Custom policies are validated against the schema before they take effect; the policy set is
//! versioned in the database and swapped atomically, so a change applies to every request after
//! it commits.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use carevault_fhir::ResourceType;
use carevault_store::{PolicyRow, Store, WriteOp};
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};

use crate::audit::AuditScope;
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::identity::{Principal, PrincipalKind, Role};

pub const SCHEMA: &str = include_str!("../policies/schema.cedarschema");
pub const BUILTIN_POLICIES: &str = include_str!("../policies/builtin.cedar");
/// Stands for "no managing organization known" (such a compartment belongs to no clinician).
pub const NO_ORGANIZATION: &str = "__none__";

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
    pub compartment: Option<String>,
    pub organization: Option<String>,
    pub security: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that determined the decision.
    pub policies: Vec<String>,
}

struct Loaded {
    version: i64,
    custom: Vec<PolicyRow>,
    index: PolicyIndex,
    /// FHIR decisions already made under this policy set, when no policy can tell two
    /// resources apart beyond the attributes in [`DecisionKey`] (see [`identity_free`]).
    decisions: Option<RwLock<HashMap<DecisionKey, Decision>>>,
    /// No policy reads a resource's security labels (see [`label_free`]).
    label_free: bool,
}

impl Loaded {
    fn new(version: i64, set: PolicySet, custom: Vec<PolicyRow>, actions: &Entities) -> Self {
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

/// Decisions kept per policy set (the cache is cleared when full).
const DECISION_CACHE: usize = 20_000;

/// Everything a FHIR decision depends on when the policies are [`identity_free`]: who asks
/// (the principal's entity is built from exactly what `principal_cache_key` holds), the action,
/// the context (break-glass; the scope strings follow from action and type), and the resource's
/// attributes other than its id and compartment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    principal: String,
    action: String,
    rtype: ResourceType,
    in_compartment: bool,
    organization: Option<String>,
    security: Vec<String>,
    break_glass: bool,
}

/// The resource attributes a policy may read for its decision to stay cacheable.
const CACHEABLE_RESOURCE_ATTRS: [&str; 4] = ["type", "in_compartment", "organization", "security"];

/// Does this policy decide the same for every resource with equal type, organization,
/// compartment membership and labels? True when its resource scope is unconstrained and its
/// conditions read `resource` only through those attributes. Anything else (a resource
/// uid, `resource.compartment`, `resource has ...`, a form this check does not know) is
/// treated as identity-dependent, which only turns the cache off.
fn identity_free(policy: &Policy) -> bool {
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
struct PolicyIndex {
    entries: Vec<(Policy, Scope)>,
    /// action -> itself and the groups it belongs to.
    action_groups: HashMap<String, HashSet<String>>,
    /// action -> its entity and its groups' entities (the hierarchy a request needs).
    action_entities: HashMap<String, Vec<Entity>>,
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
    fn new(set: &PolicySet, actions: &Entities) -> Self {
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
    fn bucket(&self, action: &str, is_key: bool, roles: &[Role]) -> Arc<PolicySet> {
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
    organizations: RwLock<HashMap<String, Option<String>>>,
    /// Other nodes write the same database: a patient's organization may change elsewhere, so
    /// it is read from the database on every decision instead of cached.
    shared_database: bool,
    /// Principals' Cedar entities, keyed by everything they are built from.
    principals: RwLock<HashMap<String, (EntityUid, Vec<Entity>)>>,
}

/// Principals whose entities stay built (the cache is cleared when full).
const PRINCIPAL_CACHE: usize = 10_000;

fn principal_cache_key(p: &Principal) -> String {
    let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
    let scopes = match &p.kind {
        PrincipalKind::User => String::from("user"),
        PrincipalKind::ApiKey { scopes, .. } => scopes.join(" "),
    };
    format!(
        "{}\0{}\0{}\0{}",
        p.id,
        roles.join(","),
        p.organization.as_deref().unwrap_or(""),
        scopes
    )
}

/// Why a custom policy was refused: Cedar's own diagnostics.
#[derive(Debug)]
pub struct PolicyRejected(pub Vec<String>);

impl Authz {
    pub async fn load(store: Arc<dyn Store>, clock: SharedClock) -> Result<Self> {
        let schema = shipped_schema()?;
        let builtin = builtin_policies()?;
        let actions = action_entities(&schema)?;
        let empty = Loaded::new(-1, PolicySet::new(), Vec::new(), &actions);
        let authz = Self {
            actions,
            schema,
            builtin,
            current: RwLock::new(Arc::new(empty)),
            authorizer: Authorizer::new(),
            store,
            clock,
            organizations: RwLock::new(HashMap::new()),
            shared_database: false,
            principals: RwLock::new(HashMap::new()),
        };
        authz.reload().await?;
        Ok(authz)
    }

    /// True when other nodes write the same database.
    pub fn shared_database(&self) -> bool {
        self.shared_database
    }

    /// Whether other nodes write the same database (see `shared_database`).
    pub fn with_shared_database(mut self, shared: bool) -> Self {
        self.shared_database = shared;
        self
    }

    /// Rebuild the policy set from the database if its version changed.
    pub async fn reload(&self) -> Result<i64> {
        let (version, rows) = self.store.policies().await?;
        if self.loaded().version == version {
            return Ok(version);
        }
        let set = self.compile(&rows).map_err(|PolicyRejected(d)| {
            Error::Internal(format!(
                "stored policies no longer compile: {}",
                d.join("; ")
            ))
        })?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Loaded::new(version, set, rows, &self.actions));
        Ok(version)
    }

    /// Pick up a policy change another node committed: one small read of the policy-set
    /// version, and a rebuild only when it moved. Called per request when the database is
    /// shared, so a change on any node applies on every node from the next request on.
    pub async fn refresh(&self) -> Result<()> {
        if self.store.policy_version().await? != self.loaded().version {
            self.reload().await?;
        }
        Ok(())
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn version(&self) -> i64 {
        self.loaded().version
    }

    pub fn custom_policies(&self) -> Vec<PolicyRow> {
        self.loaded().custom.clone()
    }

    /// Built-in plus `custom`, validated against the schema.
    fn compile(&self, custom: &[PolicyRow]) -> std::result::Result<PolicySet, PolicyRejected> {
        let mut set = PolicySet::new();
        for p in &self.builtin {
            set.add(p.clone())
                .map_err(|e| PolicyRejected(vec![e.to_string()]))?;
        }
        for row in custom {
            for p in parse_custom(&row.name, &row.text)? {
                set.add(p)
                    .map_err(|e| PolicyRejected(vec![e.to_string()]))?;
            }
        }
        let result = Validator::new(self.schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyRejected(
                result.validation_errors().map(|e| e.to_string()).collect(),
            ));
        }
        Ok(set)
    }

    /// Validate `text` as policy `name` with everything else in force; changes nothing.
    pub fn check_custom(&self, name: &str, text: &str) -> std::result::Result<(), PolicyRejected> {
        validate_policy_name(name).map_err(|e| PolicyRejected(vec![e.to_string()]))?;
        let mut rows: Vec<PolicyRow> = self
            .loaded()
            .custom
            .iter()
            .filter(|r| r.name != name)
            .cloned()
            .collect();
        rows.push(PolicyRow {
            name: name.to_owned(),
            text: text.to_owned(),
            updated_at: 0,
        });
        self.compile(&rows).map(|_| ())
    }

    /// Add or replace a custom policy; it applies to every request after this returns.
    pub async fn put_policy(
        &self,
        audit: &AuditScope,
        name: &str,
        text: &str,
    ) -> Result<std::result::Result<i64, PolicyRejected>> {
        if let Err(rejected) = self.check_custom(name, text) {
            return Ok(Err(rejected));
        }
        audit.set_resource("Policy", Some(name), None);
        audit
            .commit_with(
                &*self.store,
                vec![WriteOp::PutPolicy {
                    name: name.to_owned(),
                    text: text.to_owned(),
                    at: self.clock.now_secs(),
                }],
                201,
            )
            .await?;
        Ok(Ok(self.reload().await?))
    }

    pub async fn delete_policy(&self, audit: &AuditScope, name: &str) -> Result<i64> {
        audit.set_resource("Policy", Some(name), None);
        audit
            .commit_with(
                &*self.store,
                vec![WriteOp::DeletePolicy {
                    name: name.to_owned(),
                    at: self.clock.now_secs(),
                }],
                204,
            )
            .await
            .map_err(|e| match e {
                carevault_store::StoreError::Conflict => Error::NotFound,
                other => other.into(),
            })?;
        self.reload().await
    }

    /// The organization managing a patient compartment (None when unknown).
    pub async fn compartment_organization(&self, compartment: &str) -> Result<Option<String>> {
        if self.shared_database {
            return Ok(self
                .store
                .compartment_organization(compartment)
                .await?
                .flatten());
        }
        if let Some(org) = self
            .organizations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(compartment)
        {
            return Ok(org.clone());
        }
        let org = self
            .store
            .compartment_organization(compartment)
            .await?
            .flatten();
        self.remember_organization(compartment, org.clone());
        Ok(org)
    }

    pub fn remember_organization(&self, compartment: &str, organization: Option<String>) {
        if self.shared_database {
            return;
        }
        self.organizations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(compartment.to_owned(), organization);
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
            compartment: Some(String::new()),
            organization: principal.organization.clone(),
            security: Vec::new(),
        };
        self.fhir(principal, action, &attrs, false).allowed
    }

    /// Decide an administrative or monitoring action.
    pub fn system(&self, principal: &Principal, action: SystemAction) -> Decision {
        match &principal.kind {
            // Keys carry FHIR scopes only: no administration through a key.
            PrincipalKind::ApiKey { .. } => Decision::default(),
            PrincipalKind::User => self.decide(principal, action.name(), None, false),
        }
    }

    fn decide(
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

    /// The principal's entity and its roles' entities, built once per principal (the same
    /// session asks many times).
    fn principal_entities(
        &self,
        p: &Principal,
    ) -> std::result::Result<(EntityUid, Vec<Entity>), String> {
        let key = principal_cache_key(p);
        if let Some((uid, entities)) = self
            .principals
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok((uid.clone(), entities.clone()));
        }
        let (uid, entity, roles) = principal_entity(p)?;
        let mut entities = vec![entity];
        entities.extend(roles);
        let mut cache = self.principals.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PRINCIPAL_CACHE {
            cache.clear();
        }
        cache.insert(key, (uid.clone(), entities.clone()));
        Ok((uid, entities))
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

/// The entity types the server builds requests from.
const ENTITY_KINDS: [&str; 7] = [
    "User",
    "ApiKey",
    "Role",
    "Organization",
    "Resource",
    "Action",
    "System",
];

fn uid(kind: &str, id: &str) -> std::result::Result<EntityUid, String> {
    // Parsed once: `EntityTypeName::from_str` runs Cedar's full parser, and every request
    // builds several uids.
    static NAMES: std::sync::LazyLock<HashMap<&'static str, EntityTypeName>> =
        std::sync::LazyLock::new(|| {
            ENTITY_KINDS
                .iter()
                .filter_map(|k| {
                    EntityTypeName::from_str(&format!("CareVault::{k}"))
                        .ok()
                        .map(|n| (*k, n))
                })
                .collect()
        });
    let name = match NAMES.get(kind) {
        Some(name) => name.clone(),
        None => {
            EntityTypeName::from_str(&format!("CareVault::{kind}")).map_err(|e| e.to_string())?
        }
    };
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

fn organizations(
    orgs: impl IntoIterator<Item = String>,
) -> std::result::Result<RestrictedExpression, String> {
    let mut set = Vec::new();
    for org in orgs {
        set.push(RestrictedExpression::new_entity_uid(uid(
            "Organization",
            &org,
        )?));
    }
    Ok(RestrictedExpression::new_set(set))
}

fn principal_entity(
    p: &Principal,
) -> std::result::Result<(EntityUid, Entity, Vec<Entity>), String> {
    let role_uids: Vec<EntityUid> = p
        .roles
        .iter()
        .map(|r| uid("Role", r.as_str()))
        .collect::<std::result::Result<_, _>>()?;
    let role_entities: Vec<Entity> = role_uids
        .iter()
        .map(|u| Entity::new_no_attrs(u.clone(), HashSet::new()))
        .collect();
    let parents: HashSet<EntityUid> = role_uids.into_iter().collect();
    let orgs = organizations(p.organization.clone())?;
    let (principal_uid, attrs) = match &p.kind {
        PrincipalKind::User => (
            uid("User", &p.id)?,
            HashMap::from([("organizations".to_owned(), orgs)]),
        ),
        PrincipalKind::ApiKey { scopes, .. } => (
            uid("ApiKey", &p.id)?,
            HashMap::from([
                ("organizations".to_owned(), orgs),
                (
                    "scopes".to_owned(),
                    RestrictedExpression::new_set(
                        scopes
                            .iter()
                            .map(|s| RestrictedExpression::new_string(s.clone())),
                    ),
                ),
            ]),
        ),
    };
    let entity = Entity::new(principal_uid.clone(), attrs, parents).map_err(|e| e.to_string())?;
    Ok((principal_uid, entity, role_entities))
}

fn resource_entity(a: &ResourceAttrs) -> std::result::Result<(EntityUid, Entity), String> {
    let resource_uid = uid("Resource", &format!("{}/{}", a.rtype.as_str(), a.id))?;
    let org = a
        .organization
        .clone()
        .unwrap_or_else(|| NO_ORGANIZATION.to_owned());
    let attrs = HashMap::from([
        (
            "type".to_owned(),
            RestrictedExpression::new_string(a.rtype.as_str().to_owned()),
        ),
        (
            "compartment".to_owned(),
            RestrictedExpression::new_string(a.compartment.clone().unwrap_or_default()),
        ),
        (
            "in_compartment".to_owned(),
            RestrictedExpression::new_bool(a.compartment.is_some()),
        ),
        (
            "organization".to_owned(),
            RestrictedExpression::new_entity_uid(uid("Organization", &org)?),
        ),
        (
            "security".to_owned(),
            RestrictedExpression::new_set(
                a.security
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
    ]);
    let entity =
        Entity::new(resource_uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
    Ok((resource_uid, entity))
}

fn action_entities(schema: &Schema) -> Result<Entities> {
    schema
        .action_entities()
        .map_err(|e| Error::Internal(format!("Cedar schema actions: {e}")))
}

fn shipped_schema() -> Result<Schema> {
    let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
        .map_err(|e| Error::Internal(format!("shipped Cedar schema: {e}")))?;
    Ok(schema)
}

fn builtin_policies() -> Result<Vec<Policy>> {
    let set = PolicySet::from_str(BUILTIN_POLICIES)
        .map_err(|e| Error::Internal(format!("built-in policies: {e}")))?;
    let mut out = Vec::new();
    for p in set.policies() {
        let id = p
            .annotation("id")
            .map_or_else(|| p.id().to_string(), str::to_owned);
        out.push(p.new_id(PolicyId::new(id)));
    }
    Ok(out)
}

/// Parse a custom policy text (one or more Cedar policies) into policies with stable ids
/// (`custom.<name>` or `custom.<name>.<n>`). Templates are refused.
fn parse_custom(name: &str, text: &str) -> std::result::Result<Vec<Policy>, PolicyRejected> {
    let set = PolicySet::from_str(text).map_err(|e| PolicyRejected(diagnostics(&e)))?;
    if set.templates().next().is_some() {
        return Err(PolicyRejected(vec![
            "templates are not supported; write static policies".into(),
        ]));
    }
    let policies: Vec<&Policy> = set.policies().collect();
    if policies.is_empty() {
        return Err(PolicyRejected(vec!["the text holds no policy".into()]));
    }
    let many = policies.len() > 1;
    Ok(policies
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let id = if many {
                format!("custom.{name}.{i}")
            } else {
                format!("custom.{name}")
            };
            p.new_id(PolicyId::new(id))
        })
        .collect())
}

fn diagnostics(e: &cedar_policy::ParseErrors) -> Vec<String> {
    let mut out: Vec<String> = e.iter().map(|err| err.to_string()).collect();
    if out.is_empty() {
        out.push(e.to_string());
    }
    out
}

/// Policy names: 1-64 characters of `a-z 0-9 - _ .`.
pub fn validate_policy_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "policy name must be 1-64 characters of a-z, 0-9, '-', '_' or '.'".into(),
        ))
    }
}

/// Validate a policy file against the shipped schema and built-in policies, offline
/// (`carevault policy test`).
pub fn check_policy_text(text: &str) -> std::result::Result<usize, PolicyRejected> {
    let schema = shipped_schema().map_err(|e| PolicyRejected(vec![e.to_string()]))?;
    let mut set = PolicySet::new();
    for p in builtin_policies().map_err(|e| PolicyRejected(vec![e.to_string()]))? {
        set.add(p)
            .map_err(|e| PolicyRejected(vec![e.to_string()]))?;
    }
    let custom = parse_custom("file", text)?;
    let n = custom.len();
    for p in custom {
        set.add(p)
            .map_err(|e| PolicyRejected(vec![e.to_string()]))?;
    }
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        return Err(PolicyRejected(
            result.validation_errors().map(|e| e.to_string()).collect(),
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Principal, Role};

    fn authz_with(custom: &[(&str, &str)]) -> Authz {
        let schema = shipped_schema().unwrap();
        let a = Authz {
            actions: action_entities(&schema).unwrap(),
            schema,
            builtin: builtin_policies().unwrap(),
            current: RwLock::new(Arc::new(Loaded::new(
                0,
                PolicySet::new(),
                Vec::new(),
                &action_entities(&shipped_schema().unwrap()).unwrap(),
            ))),
            authorizer: Authorizer::new(),
            // Never reached by these tests; the policy set is compiled in place below.
            store: Arc::new(
                carevault_store::SqliteStore::open(
                    &Box::leak(Box::new(tempfile::tempdir().unwrap()))
                        .path()
                        .join("t.db"),
                )
                .unwrap(),
            ),
            clock: Arc::new(crate::clock::SystemClock),
            organizations: RwLock::new(HashMap::new()),
            shared_database: false,
            principals: RwLock::new(HashMap::new()),
        };
        let rows: Vec<PolicyRow> = custom
            .iter()
            .map(|(n, t)| PolicyRow {
                name: (*n).into(),
                text: (*t).into(),
                updated_at: 0,
            })
            .collect();
        let set = a.compile(&rows).unwrap_or_else(|e| panic!("{:?}", e.0));
        *a.current.write().unwrap() = Arc::new(Loaded::new(1, set, rows, &a.actions));
        a
    }

    fn user(role: Role, org: Option<&str>) -> Principal {
        Principal::test_user("u1", role, org)
    }

    fn key(scopes: &[&str]) -> Principal {
        Principal::test_key("k1", scopes.iter().map(|s| s.to_string()).collect(), None)
    }

    fn patient_in(org: &str) -> ResourceAttrs {
        ResourceAttrs {
            rtype: ResourceType::PATIENT,
            id: "p1".into(),
            compartment: Some("Patient/p1".into()),
            organization: Some(org.into()),
            security: vec![],
        }
    }

    fn obs_in(org: &str) -> ResourceAttrs {
        ResourceAttrs {
            rtype: ResourceType::OBSERVATION,
            id: "o1".into(),
            ..patient_in(org)
        }
    }

    #[test]
    fn decisions_are_cached_only_when_no_policy_can_tell_resources_apart() {
        let a = authz_with(&[]);
        assert!(
            a.loaded().decisions.is_some(),
            "the built-in policies are cacheable"
        );
        let clin = user(Role::Clinician, Some("org-a"));
        for _ in 0..2 {
            let first = a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false);
            assert!(first.allowed);
            assert_eq!(first.policies, ["builtin.clinician.own-organization"]);
            assert!(
                !a.fhir(&clin, FhirAction::Read, &patient_in("org-b"), false)
                    .allowed
            );
            assert!(
                !a.fhir(
                    &user(Role::Clinician, Some("org-b")),
                    FhirAction::Read,
                    &patient_in("org-a"),
                    false
                )
                .allowed,
                "another principal is another key"
            );
        }

        // A policy about one compartment: the same attributes otherwise, different answers.
        let a = authz_with(&[(
            "one-patient",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.compartment == "Patient/p1" };"#,
        )]);
        assert!(a.loaded().decisions.is_none());
        let other = ResourceAttrs {
            id: "p2".into(),
            compartment: Some("Patient/p2".into()),
            ..patient_in("org-a")
        };
        for _ in 0..2 {
            assert!(
                !a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
                    .allowed
            );
            assert!(a.fhir(&clin, FhirAction::Read, &other, false).allowed);
        }
        for (name, text) in [
            (
                "by-uid",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource == CareVault::Resource::"Patient/p1");"#,
            ),
            (
                "has",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource has compartment };"#,
            ),
        ] {
            assert!(
                authz_with(&[(name, text)]).loaded().decisions.is_none(),
                "{name} depends on the resource's identity"
            );
        }
        let labels = authz_with(&[(
            "labels",
            r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.security.contains("R") };"#,
        )]);
        assert!(
            labels.loaded().decisions.is_some(),
            "labels are part of the key"
        );
        let restricted = ResourceAttrs {
            security: vec!["R".into()],
            ..patient_in("org-a")
        };
        assert!(
            labels
                .fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
                .allowed
        );
        assert!(
            !labels
                .fhir(&clin, FhirAction::Read, &restricted, false)
                .allowed
        );
    }

    #[test]
    fn decisions_are_label_free_only_when_no_policy_reads_labels() {
        assert!(
            authz_with(&[]).decides_without_labels(),
            "the built-in policies never read labels"
        );
        assert!(
            authz_with(&[(
                "one-patient",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.compartment == "Patient/p1" };"#,
            )])
            .decides_without_labels(),
            "a policy about a compartment tells resources apart, not labels"
        );
        for (name, text) in [
            (
                "forbid-restricted",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource.security.contains("R") };"#,
            ),
            (
                "permit-shared",
                r#"permit (principal in CareVault::Role::"clinician", action in CareVault::Action::"fhir", resource) when { resource.security.contains("SHARED") };"#,
            ),
            (
                "unless-labelled",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource) unless { resource.security.isEmpty() };"#,
            ),
            (
                "has",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource is CareVault::Resource) when { resource has security };"#,
            ),
            (
                "whole-resource",
                r#"forbid (principal, action in CareVault::Action::"fhir", resource) when { context.scope == resource.type && resource == resource };"#,
            ),
        ] {
            let a = authz_with(&[(name, text)]);
            assert!(!a.decides_without_labels(), "{name} may read labels");
        }
        let a = authz_with(&[(
            "permit-shared",
            r#"permit (principal in CareVault::Role::"clinician", action in CareVault::Action::"fhir", resource) when { resource.security.contains("SHARED") };"#,
        )]);
        let clin = user(Role::Clinician, Some("org-a"));
        let shared = ResourceAttrs {
            security: vec!["SHARED".into()],
            ..patient_in("org-b")
        };
        assert!(
            !a.fhir(&clin, FhirAction::Search, &patient_in("org-b"), false)
                .allowed
        );
        assert!(
            a.fhir(&clin, FhirAction::Search, &shared, false).allowed,
            "the labels decide here, which is why such a set is not label-free"
        );
    }

    #[test]
    fn built_in_roles() {
        let a = authz_with(&[]);

        let clin = user(Role::Clinician, Some("org-a"));
        assert!(
            a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
                .allowed
        );
        assert!(
            a.fhir(&clin, FhirAction::Update, &obs_in("org-a"), false)
                .allowed
        );
        assert!(
            !a.fhir(&clin, FhirAction::Read, &patient_in("org-b"), false)
                .allowed
        );
        assert!(
            a.fhir(&clin, FhirAction::Read, &patient_in("org-b"), true)
                .allowed,
            "break-glass reads"
        );
        assert!(
            !a.fhir(&clin, FhirAction::Update, &patient_in("org-b"), true)
                .allowed,
            "break-glass never writes"
        );
        let practitioner = ResourceAttrs {
            rtype: ResourceType::PRACTITIONER,
            id: "pr".into(),
            compartment: None,
            organization: None,
            security: vec![],
        };
        assert!(
            a.fhir(&clin, FhirAction::Create, &practitioner, false)
                .allowed
        );
        let d = a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false);
        assert_eq!(d.policies, ["builtin.clinician.own-organization"]);
        for role in [Role::Admin, Role::Auditor, Role::Developer, Role::Service] {
            let p = user(role, Some("org-a"));
            assert!(
                !a.fhir(&p, FhirAction::Read, &patient_in("org-a"), false)
                    .allowed,
                "{role:?} reads PHI"
            );
            assert!(
                !a.fhir(&p, FhirAction::Read, &practitioner, false).allowed,
                "{role:?} reads FHIR"
            );
        }
        assert!(
            a.system(&user(Role::Admin, None), SystemAction::ManageUsers)
                .allowed
        );
        assert!(
            !a.system(&user(Role::Admin, None), SystemAction::AuditRead)
                .allowed
        );
        assert!(
            a.system(&user(Role::Auditor, None), SystemAction::AuditRead)
                .allowed
        );
        assert!(
            a.system(&user(Role::Auditor, None), SystemAction::MetricsRead)
                .allowed
        );
        assert!(
            a.system(&user(Role::Developer, None), SystemAction::MetricsRead)
                .allowed
        );
        assert!(
            !a.system(&user(Role::Developer, None), SystemAction::AuditRead)
                .allowed
        );
        assert!(!a.system(&clin, SystemAction::ManageUsers).allowed);
        assert!(a.system(&clin, SystemAction::BreakGlass).allowed);
        assert!(
            !a.system(&user(Role::Auditor, None), SystemAction::BreakGlass)
                .allowed
        );
    }

    #[test]
    fn api_key_scopes() {
        let a = authz_with(&[]);
        let k = key(&["Observation.r", "Observation.s"]);
        assert!(
            a.fhir(&k, FhirAction::Read, &obs_in("org-z"), false)
                .allowed
        );
        assert!(
            a.fhir(&k, FhirAction::Search, &obs_in("org-z"), false)
                .allowed
        );
        assert!(
            !a.fhir(&k, FhirAction::Update, &obs_in("org-z"), false)
                .allowed
        );
        assert!(
            !a.fhir(&k, FhirAction::Read, &patient_in("org-z"), false)
                .allowed
        );
        assert!(!a.system(&k, SystemAction::ManageUsers).allowed);
        let all = key(&["*.r"]);
        assert!(
            a.fhir(&all, FhirAction::Read, &patient_in("org-z"), false)
                .allowed
        );
        // A key minted by a clinician of org A reads only what they could.
        let owned = Principal::test_key(
            "k2",
            vec!["*.r".into()],
            Some(Box::new(user(Role::Clinician, Some("org-a")))),
        );
        assert!(
            a.fhir(&owned, FhirAction::Read, &patient_in("org-a"), false)
                .allowed
        );
        assert!(
            !a.fhir(&owned, FhirAction::Read, &patient_in("org-b"), false)
                .allowed
        );
        assert!(
            !a.fhir(&owned, FhirAction::Update, &patient_in("org-a"), false)
                .allowed
        );
    }

    #[test]
    fn forbid_wins_and_invalid_policies_are_refused() {
        let a = authz_with(&[(
            "no-restricted",
            r#"forbid (principal, action, resource is CareVault::Resource) when { resource.security.contains("R") };"#,
        )]);
        let clin = user(Role::Clinician, Some("org-a"));
        let mut restricted = patient_in("org-a");
        restricted.security = vec!["R".into()];
        let d = a.fhir(&clin, FhirAction::Read, &restricted, false);
        assert!(!d.allowed);
        assert_eq!(d.policies, ["custom.no-restricted"]);
        assert!(
            a.fhir(&clin, FhirAction::Read, &patient_in("org-a"), false)
                .allowed
        );

        let syntax = a
            .check_custom("bad", "permit (principal, action, resource) when {")
            .unwrap_err();
        assert!(!syntax.0.is_empty());
        let unknown_attr = a
            .check_custom(
                "bad",
                "permit (principal, action, resource) when { resource.colour == \"red\" };",
            )
            .unwrap_err();
        assert!(
            unknown_attr.0.iter().any(|d| d.contains("colour")),
            "{:?}",
            unknown_attr.0
        );
        assert!(
            a.check_custom("Bad Name", "permit (principal, action, resource);")
                .is_err()
        );
        assert!(
            a.check_custom("tpl", "permit (principal == ?principal, action, resource);")
                .is_err()
        );
        assert!(a.check_custom("ok", "permit (principal in CareVault::Role::\"auditor\", action == CareVault::Action::\"read\", resource);").is_ok());
        assert_eq!(
            check_policy_text("forbid (principal, action, resource);").unwrap(),
            1
        );
    }
}
