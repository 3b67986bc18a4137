//! Cedar entities: the shipped schema, the action hierarchy, and the entities built for a
//! principal and a resource.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema,
};

use super::{Authz, NO_ORGANIZATION, ResourceAttrs, SCHEMA};
use crate::error::{Error, Result};
use crate::identity::{Principal, PrincipalKind};
use crate::names::OrganizationId;

/// Principals whose entities stay built (the cache is cleared when full).
const PRINCIPAL_CACHE: usize = 10_000;

pub(super) fn principal_cache_key(p: &Principal) -> String {
    let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
    let scopes = match &p.kind {
        PrincipalKind::User => String::from("user"),
        PrincipalKind::ApiKey { scopes, .. } => scopes.join(" "),
    };
    format!(
        "{}\0{}\0{}\0{}",
        p.id,
        roles.join(","),
        p.organization.as_ref().map_or("", OrganizationId::as_str),
        scopes
    )
}

impl Authz {
    /// The principal's entity and its roles' entities, built once per principal (the same
    /// session asks many times).
    pub(super) fn principal_entities(
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

pub(super) fn uid(kind: &str, id: &str) -> std::result::Result<EntityUid, String> {
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

pub(super) fn organizations(
    orgs: impl IntoIterator<Item = OrganizationId>,
) -> std::result::Result<RestrictedExpression, String> {
    let mut set = Vec::new();
    for org in orgs {
        set.push(RestrictedExpression::new_entity_uid(uid(
            "Organization",
            org.as_str(),
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

pub(super) fn resource_entity(
    a: &ResourceAttrs,
) -> std::result::Result<(EntityUid, Entity), String> {
    let resource_uid = uid("Resource", &format!("{}/{}", a.rtype.as_str(), a.id))?;
    let org = a
        .organization
        .as_ref()
        .map_or(NO_ORGANIZATION, OrganizationId::as_str);
    let attrs = HashMap::from([
        (
            "type".to_owned(),
            RestrictedExpression::new_string(a.rtype.as_str().to_owned()),
        ),
        (
            "compartment".to_owned(),
            RestrictedExpression::new_string(
                a.compartment
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        ),
        (
            "in_compartment".to_owned(),
            RestrictedExpression::new_bool(a.compartment.is_some()),
        ),
        (
            "organization".to_owned(),
            RestrictedExpression::new_entity_uid(uid("Organization", org)?),
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

pub(super) fn action_entities(schema: &Schema) -> Result<Entities> {
    schema
        .action_entities()
        .map_err(|e| Error::Internal(format!("Cedar schema actions: {e}")))
}

pub(super) fn shipped_schema() -> Result<Schema> {
    let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
        .map_err(|e| Error::Internal(format!("shipped Cedar schema: {e}")))?;
    Ok(schema)
}
