//! Who is making a request: roles, validated usernames and the authenticated principal.

use serde::Serialize;

use carevault_store::PrincipalRow;

use crate::error::{Error, Result};
use crate::names::OrganizationId;

/// A built-in role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Clinician,
    Auditor,
    Developer,
    Service,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "admin" => Role::Admin,
            "clinician" => Role::Clinician,
            "auditor" => Role::Auditor,
            "developer" => Role::Developer,
            "service" => Role::Service,
            _ => {
                return Err(Error::BadRequest(
                    "unknown role; expected admin, clinician, auditor, developer or service".into(),
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
            Role::Developer => "developer",
            Role::Service => "service",
        }
    }
}

/// A validated username: 2-64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self> {
        let ok = (2..=64).contains(&s.len())
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::BadRequest(
                "username must be 2-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who is making a request, once authenticated.
#[derive(Clone, Debug)]
pub struct Principal {
    /// A user's id, or `apikey:<name>` for a key.
    pub id: String,
    pub username: String,
    pub roles: Vec<Role>,
    pub organization: Option<OrganizationId>,
    pub kind: PrincipalKind,
    pub(super) session_hash: Option<String>,
}

#[derive(Clone, Debug)]
pub enum PrincipalKind {
    User,
    ApiKey {
        /// Normalized scopes (`Observation.r`).
        scopes: Vec<String>,
        /// The user who minted the key for themselves: the key never exceeds their rights.
        owner: Option<Box<Principal>>,
    },
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether FHIR data reaches this principal only de-identified: a developer, or an API key
    /// a developer minted.
    pub fn sees_deidentified(&self) -> bool {
        self.has_role(Role::Developer)
            || matches!(&self.kind, PrincipalKind::ApiKey { owner: Some(owner), .. } if owner.sees_deidentified())
    }

    pub fn auth_method(&self) -> &'static str {
        match self.kind {
            PrincipalKind::User => "session",
            PrincipalKind::ApiKey { .. } => "api-key",
        }
    }

    pub fn role_names(&self) -> Vec<&'static str> {
        self.roles.iter().map(|r| r.as_str()).collect()
    }

    /// A user as their stored row makes them: roles the binary does not know are dropped, and so
    /// is an organization that is not a valid id (see [`OrganizationId::stored`]).
    #[must_use]
    pub fn user_from_row(row: PrincipalRow, session_hash: Option<String>) -> Self {
        Self {
            organization: OrganizationId::stored(row.organization.as_deref()),
            id: row.id,
            username: row.username,
            roles: row
                .roles
                .iter()
                .filter_map(|r| Role::parse(r).ok())
                .collect(),
            kind: PrincipalKind::User,
            session_hash,
        }
    }

    /// A user principal as a session would produce it, for benchmarks.
    pub fn user_for_bench(username: &str, role: Role, organization: OrganizationId) -> Self {
        Self {
            id: format!("bench-{username}"),
            username: username.into(),
            roles: vec![role],
            organization: Some(organization),
            kind: PrincipalKind::User,
            session_hash: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn test_user(id: &str, role: Role, organization: Option<&str>) -> Self {
        Self {
            id: id.into(),
            username: id.into(),
            roles: vec![role],
            organization: organization
                .map(|o| OrganizationId::parse(o).expect("a test organization")),
            kind: PrincipalKind::User,
            session_hash: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn test_key(name: &str, scopes: Vec<String>, owner: Option<Box<Principal>>) -> Self {
        Self {
            id: format!("apikey:{name}"),
            username: name.into(),
            roles: if owner.is_some() {
                vec![]
            } else {
                vec![Role::Service]
            },
            organization: None,
            kind: PrincipalKind::ApiKey { scopes, owner },
            session_hash: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("dr.smith-2").is_ok());
        for bad in [
            "",
            "a",
            "Alice",
            "-x",
            "x y",
            "ü",
            &"a".repeat(65),
            "a'; DROP TABLE",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }
}
