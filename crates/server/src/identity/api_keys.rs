//! API keys: minting, listing and revoking them, and authenticating a request that bears one.

use std::net::IpAddr;

use carevault_store::{ApiKeyRow, WriteOp};
use serde::Serialize;

use super::{API_KEY_PREFIX, Identity, MAX_KEY_DAYS, Principal, PrincipalKind, Role, keys};
use crate::audit::AuditScope;
use crate::client_certificate::CertFingerprint;
use crate::error::{Error, Result};
use crate::names::ApiKeyName;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_in_days: Option<i64>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Accept the key only on a connection that presented this client certificate (its SHA-256
    /// fingerprint); needs `tls.client_ca`.
    #[serde(default)]
    pub client_cert_sha256: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedApiKey {
    pub name: String,
    pub key: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize)]
pub struct ApiKeyView {
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    /// The client certificate the key is bound to (a fingerprint, not a secret).
    pub client_cert_sha256: Option<String>,
    pub expires_at: String,
    pub state: &'static str,
}

impl Identity {
    pub(super) async fn authenticate_key(
        &self,
        key: &str,
        client_ip: Option<IpAddr>,
        client_cert: Option<&str>,
        audit: Option<&AuditScope>,
    ) -> Result<Principal> {
        if key.len() != API_KEY_PREFIX.len() + 43 {
            return Err(Error::Unauthorized);
        }
        let row = self
            .store
            .api_key_by_hash(&carevault_crypto::sha256_hex(key.as_bytes()))
            .await?
            .ok_or(Error::Unauthorized)?;
        if !self.key_is_live(&row) {
            return Err(Error::Unauthorized);
        }
        if !row.allowed_cidrs.is_empty() {
            let inside = client_ip.is_some_and(|ip| {
                row.allowed_cidrs
                    .iter()
                    .filter_map(|c| keys::Cidr::parse(c).ok())
                    .any(|c| c.contains(ip))
            });
            if !inside {
                // The caller learns nothing; the auditor and detection (`access.outside-cidrs`)
                // learn which key was presented from where.
                if let Some(audit) = audit {
                    audit.add_detail("target_principal", format!("apikey:{}", row.name));
                    audit.add_detail("refused", "outside-cidrs".to_owned());
                }
                return Err(Error::Unauthorized);
            }
        }
        if let Some(bound) = &row.client_cert_sha256
            && client_cert != Some(bound.as_str())
        {
            // As for CIDRs: a 401 like any wrong key; the auditor learns which key came without
            // (or with another) certificate.
            if let Some(audit) = audit {
                audit.add_detail("target_principal", format!("apikey:{}", row.name));
                audit.add_detail("refused", "client-certificate".to_owned());
            }
            return Err(Error::Unauthorized);
        }
        self.key_principal(row).await
    }

    /// The principal of API key `id` (`apikey:<name>`), for work a key started that outlives
    /// its request (an export resumed after a restart): None once the key is revoked or
    /// expired, or its owner disabled or locked. Its CIDRs and client certificate are not
    /// checked: no client is connected (they were checked when the work was started).
    pub async fn api_key_principal(&self, id: &str) -> Result<Option<Principal>> {
        let Some(name) = id.strip_prefix("apikey:") else {
            return Ok(None);
        };
        let Some(row) = self
            .store
            .api_keys()
            .await?
            .into_iter()
            .find(|k| k.name == name)
        else {
            return Ok(None);
        };
        if !self.key_is_live(&row) {
            return Ok(None);
        }
        match self.key_principal(row).await {
            Ok(p) => Ok(Some(p)),
            Err(Error::Unauthorized) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Neither revoked nor expired.
    fn key_is_live(&self, row: &ApiKeyRow) -> bool {
        !row.revoked && row.expires_at > self.clock.now_secs()
    }

    /// A valid key's principal: a service (its scopes), or its owner's sub-account.
    async fn key_principal(&self, row: ApiKeyRow) -> Result<Principal> {
        let (roles, organization, owner) = match &row.owner_id {
            Some(owner_id) => {
                let owner = self
                    .store
                    .principal_by_id(owner_id)
                    .await?
                    .ok_or(Error::Unauthorized)?;
                if owner.disabled || owner.locked {
                    return Err(Error::Unauthorized);
                }
                let owner_principal = Principal::user_from_row(owner, None);
                (
                    Vec::new(),
                    owner_principal.organization.clone(),
                    Some(Box::new(owner_principal)),
                )
            }
            None => (vec![Role::Service], None, None),
        };
        Ok(Principal {
            id: format!("apikey:{}", row.name),
            username: row.name,
            roles,
            organization,
            kind: PrincipalKind::ApiKey {
                scopes: row.scopes,
                owner,
            },
            session_hash: None,
        })
    }

    /// Mint an API key. `owner` is the user minting a key for themselves (its grants are then
    /// the intersection of its scopes and the user's rights); None makes a service key (admin).
    pub async fn create_api_key(
        &self,
        audit: &AuditScope,
        owner: Option<&Principal>,
        req: &NewApiKey,
    ) -> Result<CreatedApiKey> {
        let name = ApiKeyName::parse(&req.name)?;
        let scopes = keys::parse_scopes(&req.scopes)?;
        let days = req.expires_in_days.unwrap_or(MAX_KEY_DAYS);
        if !(1..=MAX_KEY_DAYS).contains(&days) {
            return Err(Error::BadRequest(format!(
                "expires_in_days must be between 1 and {MAX_KEY_DAYS}"
            )));
        }
        let mut cidrs = Vec::new();
        for c in req.allowed_cidrs.iter().flatten() {
            cidrs.push(keys::Cidr::parse(c)?.to_string());
        }
        let client_cert = match &req.client_cert_sha256 {
            Some(fp) => {
                let fp = CertFingerprint::parse(fp)?;
                if !self.client_certificates {
                    return Err(Error::BadRequest(
                        "client_cert_sha256 needs tls.client_ca set on the server: without it no \
                         client certificate is asked for, and the key could never be used"
                            .into(),
                    ));
                }
                Some(fp.as_str().to_owned())
            }
            None => None,
        };
        let owner_id = match owner {
            Some(p) => match p.kind {
                PrincipalKind::User => Some(p.id.clone()),
                PrincipalKind::ApiKey { .. } => {
                    return Err(Error::Forbidden);
                }
            },
            None => None,
        };
        let key = carevault_crypto::random_token(API_KEY_PREFIX)?;
        let now = self.clock.now_secs();
        let expires_at = now + days * 86_400;
        audit.set_resource("ApiKey", Some(name.as_str()), None);
        self.commit(
            audit,
            vec![WriteOp::InsertApiKey(carevault_store::ApiKeyRow {
                name: name.to_string(),
                key_hash: carevault_crypto::sha256_hex(key.as_bytes()),
                owner_id,
                scopes,
                allowed_cidrs: cidrs,
                expires_at,
                revoked: false,
                created_at: now,
                client_cert_sha256: client_cert,
            })],
            201,
        )
        .await
        .map_err(|e| match e {
            carevault_store::StoreError::AlreadyExists => {
                Error::Conflict("an API key with this name exists".into())
            }
            other => other.into(),
        })?;
        Ok(CreatedApiKey {
            name: name.into_string(),
            key,
            expires_at: crate::clock::fhir_instant(expires_at * 1_000_000),
        })
    }

    pub async fn list_api_keys(&self, owner: Option<&str>) -> Result<Vec<ApiKeyView>> {
        let now = self.clock.now_secs();
        Ok(self
            .store
            .api_keys()
            .await?
            .into_iter()
            .filter(|k| owner.is_none_or(|o| k.owner_id.as_deref() == Some(o)))
            .map(|k| ApiKeyView {
                state: if k.revoked {
                    "revoked"
                } else if k.expires_at <= now {
                    "expired"
                } else {
                    "active"
                },
                name: k.name,
                owner: k.owner_id,
                scopes: k.scopes,
                allowed_cidrs: k.allowed_cidrs,
                client_cert_sha256: k.client_cert_sha256,
                expires_at: crate::clock::fhir_instant(k.expires_at * 1_000_000),
            })
            .collect())
    }

    /// Revoke a key; `owner` limits it to the caller's own keys.
    pub async fn revoke_api_key(
        &self,
        audit: &AuditScope,
        owner: Option<&str>,
        name: &ApiKeyName,
    ) -> Result<()> {
        let exists =
            self.store.api_keys().await?.into_iter().any(|k| {
                *name == *k.name && owner.is_none_or(|o| k.owner_id.as_deref() == Some(o))
            });
        if !exists {
            return Err(Error::NotFound);
        }
        audit.set_resource("ApiKey", Some(name.as_str()), None);
        self.commit(
            audit,
            vec![WriteOp::RevokeApiKey {
                name: name.to_string(),
            }],
            204,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        for good in ["ci", "etl-nightly", "a.b_c-9", &"k".repeat(64)] {
            assert!(ApiKeyName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "x", "Upper", "with space", "slash/y", &"k".repeat(65)] {
            assert!(ApiKeyName::parse(bad).is_err(), "{bad}");
        }
    }
}
