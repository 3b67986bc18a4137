//! Accounts: an admin creates, lists, disables, enables, unlocks and resets them.

use carevault_store::{PrincipalRow, WriteOp};
use serde::Serialize;

use super::{Identity, Principal, Role, Username};
use crate::audit::AuditScope;
use crate::error::{Error, Result};
use crate::names::OrganizationId;

#[derive(Debug, Serialize)]
pub struct NewUser {
    pub username: String,
    pub enrollment_token: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub username: String,
    pub roles: Vec<String>,
    pub organization: Option<String>,
    pub disabled: bool,
    pub locked: bool,
    pub enrolled: bool,
    pub created_at: String,
}

impl Identity {
    /// Create an account with a one-time enrollment token. `created_by` is the admin (None for
    /// the bootstrap admin created at init).
    pub async fn create_user(
        &self,
        audit: &AuditScope,
        username: &str,
        roles: &[String],
        organization: Option<String>,
    ) -> Result<NewUser> {
        let username = Username::parse(username)?;
        if roles.is_empty() {
            return Err(Error::BadRequest("at least one role is required".into()));
        }
        let mut parsed = Vec::new();
        for r in roles {
            let role = Role::parse(r)?;
            if !parsed.contains(&role) {
                parsed.push(role);
            }
        }
        let organization = organization
            .as_deref()
            .map(OrganizationId::parse)
            .transpose()?;
        let principal = PrincipalRow {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.as_str().to_owned(),
            roles: parsed.iter().map(|r| r.as_str().to_owned()).collect(),
            organization: organization.map(OrganizationId::into_string),
            disabled: false,
            locked: false,
            failed_logins: 0,
            created_at: self.clock.now_secs(),
        };
        let (token, enrollment) = self.new_enrollment(&principal.id)?;
        let expires = enrollment.expires_at;
        audit.set_resource("Principal", Some(&principal.id), None);
        self.commit(
            audit,
            vec![
                WriteOp::InsertPrincipal(principal),
                WriteOp::InsertEnrollment(enrollment),
            ],
            201,
        )
        .await
        .map_err(|e| match e {
            carevault_store::StoreError::AlreadyExists => {
                Error::Conflict("username is taken".into())
            }
            other => other.into(),
        })?;
        Ok(NewUser {
            username: username.as_str().to_owned(),
            enrollment_token: token,
            expires_at: crate::clock::fhir_instant(expires * 1_000_000),
        })
    }

    pub async fn list_users(&self) -> Result<Vec<UserView>> {
        let mut out = Vec::new();
        for p in self.store.principals().await? {
            let enrolled = self.store.credential(&p.id).await?.is_some();
            out.push(UserView {
                username: p.username,
                roles: p.roles,
                organization: p.organization,
                disabled: p.disabled,
                locked: p.locked,
                enrolled,
                created_at: crate::clock::fhir_instant(p.created_at * 1_000_000),
            });
        }
        Ok(out)
    }

    async fn principal_named(&self, username: &str) -> Result<PrincipalRow> {
        let username = Username::parse(username).map_err(|_| Error::NotFound)?;
        self.store
            .principal_by_username(username.as_str())
            .await?
            .ok_or(Error::NotFound)
    }

    fn refuse_self(actor: &Principal, target: &PrincipalRow) -> Result<()> {
        if actor.id == target.id {
            return Err(Error::Conflict(
                "an admin cannot do this to their own account".into(),
            ));
        }
        Ok(())
    }

    pub async fn disable(
        &self,
        audit: &AuditScope,
        actor: &Principal,
        username: &str,
    ) -> Result<()> {
        let p = self.principal_named(username).await?;
        audit.set_resource("Principal", Some(&p.id), None);
        Self::refuse_self(actor, &p)?;
        self.commit(
            audit,
            vec![
                WriteOp::UpdatePrincipal {
                    principal_id: p.id.clone(),
                    disabled: Some(true),
                    locked: None,
                    failed_logins: None,
                },
                WriteOp::RevokeSessions { principal_id: p.id },
            ],
            204,
        )
        .await?;
        Ok(())
    }

    /// Enable (and unlock) an account.
    pub async fn enable(&self, audit: &AuditScope, username: &str) -> Result<()> {
        self.unlock_setting_disabled(audit, username, Some(false))
            .await
    }

    pub async fn unlock(&self, audit: &AuditScope, username: &str) -> Result<()> {
        self.unlock_setting_disabled(audit, username, None).await
    }

    /// Unlock an account (clearing its failed logins and throttle), and set `disabled` when given.
    async fn unlock_setting_disabled(
        &self,
        audit: &AuditScope,
        username: &str,
        disabled: Option<bool>,
    ) -> Result<()> {
        let p = self.principal_named(username).await?;
        audit.set_resource("Principal", Some(&p.id), None);
        self.commit(
            audit,
            vec![WriteOp::UpdatePrincipal {
                principal_id: p.id,
                disabled,
                locked: Some(false),
                failed_logins: Some(0),
            }],
            204,
        )
        .await?;
        self.throttle.reset(username);
        Ok(())
    }

    /// Revoke the account's credentials and sessions and issue a new enrollment token.
    pub async fn reset(
        &self,
        audit: &AuditScope,
        actor: Option<&Principal>,
        username: &str,
    ) -> Result<NewUser> {
        let p = self.principal_named(username).await?;
        audit.set_resource("Principal", Some(&p.id), None);
        if let Some(actor) = actor {
            Self::refuse_self(actor, &p)?;
        }
        let (token, enrollment) = self.new_enrollment(&p.id)?;
        let expires = enrollment.expires_at;
        self.commit(
            audit,
            vec![
                WriteOp::DeleteCredential {
                    principal_id: p.id.clone(),
                },
                WriteOp::RevokeSessions {
                    principal_id: p.id.clone(),
                },
                WriteOp::DeleteEnrollments {
                    principal_id: p.id.clone(),
                },
                WriteOp::InsertEnrollment(enrollment),
                WriteOp::UpdatePrincipal {
                    principal_id: p.id,
                    disabled: None,
                    locked: Some(false),
                    failed_logins: Some(0),
                },
            ],
            200,
        )
        .await?;
        self.throttle.reset(username);
        // Whoever logged in with the old credentials may have been someone else.
        self.known_addresses.forget(username);
        Ok(NewUser {
            username: p.username,
            enrollment_token: token,
            expires_at: crate::clock::fhir_instant(expires * 1_000_000),
        })
    }

    /// A fresh enrollment token for an account, replacing any earlier one, leaving its current
    /// credentials in place until the enrollment finishes (`carevault admin recover`).
    pub async fn reissue_enrollment(&self, audit: &AuditScope, username: &str) -> Result<NewUser> {
        let p = self.principal_named(username).await?;
        audit.set_resource("Principal", Some(&p.id), None);
        let (token, enrollment) = self.new_enrollment(&p.id)?;
        let expires = enrollment.expires_at;
        self.commit(
            audit,
            vec![
                WriteOp::DeleteEnrollments {
                    principal_id: p.id.clone(),
                },
                WriteOp::InsertEnrollment(enrollment),
            ],
            200,
        )
        .await?;
        Ok(NewUser {
            username: p.username,
            enrollment_token: token,
            expires_at: crate::clock::fhir_instant(expires * 1_000_000),
        })
    }
}
