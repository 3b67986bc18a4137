//! The policy store: the shipped built-in policies, custom policies validated against the schema
//! before they take effect, versioned in the database and swapped atomically.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use carevault_store::{PolicyRow, Store, WriteOp};
use cedar_policy::{Authorizer, Policy, PolicyId, PolicySet, ValidationMode, Validator};

use super::entities::{action_entities, shipped_schema};
use super::policy_index::Loaded;
use super::{Authz, BUILTIN_POLICIES};
use crate::audit::AuditScope;
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::names::PolicyName;

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

    pub(super) fn loaded(&self) -> Arc<Loaded> {
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
    pub(super) fn compile(
        &self,
        custom: &[PolicyRow],
    ) -> std::result::Result<PolicySet, PolicyRejected> {
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
    pub fn check_custom(
        &self,
        name: &PolicyName,
        text: &str,
    ) -> std::result::Result<(), PolicyRejected> {
        let mut rows: Vec<PolicyRow> = self
            .loaded()
            .custom
            .iter()
            .filter(|r| r.name != name.as_str())
            .cloned()
            .collect();
        rows.push(PolicyRow {
            name: name.to_string(),
            text: text.to_owned(),
            updated_at: 0,
        });
        self.compile(&rows).map(|_| ())
    }

    /// Add or replace a custom policy; it applies to every request after this returns.
    pub async fn put_policy(
        &self,
        audit: &AuditScope,
        name: &PolicyName,
        text: &str,
    ) -> Result<std::result::Result<i64, PolicyRejected>> {
        if let Err(rejected) = self.check_custom(name, text) {
            return Ok(Err(rejected));
        }
        audit.set_resource("Policy", Some(name.as_str()), None);
        audit
            .commit_with(
                &*self.store,
                vec![WriteOp::PutPolicy {
                    name: name.to_string(),
                    text: text.to_owned(),
                    at: self.clock.now_secs(),
                }],
                201,
            )
            .await?;
        Ok(Ok(self.reload().await?))
    }

    pub async fn delete_policy(&self, audit: &AuditScope, name: &PolicyName) -> Result<i64> {
        audit.set_resource("Policy", Some(name.as_str()), None);
        audit
            .commit_with(
                &*self.store,
                vec![WriteOp::DeletePolicy {
                    name: name.to_string(),
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
}

pub(super) fn builtin_policies() -> Result<Vec<Policy>> {
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

pub(super) fn diagnostics(e: &cedar_policy::ParseErrors) -> Vec<String> {
    let mut out: Vec<String> = e.iter().map(|err| err.to_string()).collect();
    if out.is_empty() {
        out.push(e.to_string());
    }
    out
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
