//! Enrollment: a one-time token lets a new (or reset) account choose its password and bind an
//! authenticator; finishing it hands out the recovery codes.

use carevault_store::{CredentialRow, EnrollmentRow, PrincipalRow, StoreError, WriteOp};
use serde::Serialize;
use zeroize::Zeroizing;

use super::recovery::new_recovery_code;
use super::{ENROLLMENT_PREFIX, Identity, password, role_names, totp, totp_aad};
use crate::audit::AuditScope;
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::keyring::NewDataKeys;

const RECOVERY_CODES: usize = 10;

#[derive(Debug, Serialize)]
pub struct EnrollStart {
    pub username: String,
    pub totp_secret: String,
    pub otpauth_uri: String,
}

impl Identity {
    pub(super) fn new_enrollment(&self, principal_id: &str) -> Result<(String, EnrollmentRow)> {
        let token = carevault_crypto::random_token(ENROLLMENT_PREFIX)?;
        let row = EnrollmentRow {
            token_hash: carevault_crypto::sha256_hex(token.as_bytes()),
            principal_id: principal_id.to_owned(),
            expires_at: self.clock.now_secs() + self.enrollment_ttl_secs,
            pending_totp_sealed: None,
        };
        Ok((token, row))
    }

    async fn valid_enrollment(&self, token: &str) -> Result<(EnrollmentRow, PrincipalRow)> {
        let invalid = || Error::BadRequest("enrollment token is invalid or expired".into());
        if !token.starts_with(ENROLLMENT_PREFIX) || token.len() > 128 {
            return Err(invalid());
        }
        let row = self
            .store
            .enrollment(&carevault_crypto::sha256_hex(token.as_bytes()))
            .await?
            .ok_or_else(invalid)?;
        if row.expires_at <= self.clock.now_secs() {
            return Err(invalid());
        }
        let principal = self
            .store
            .principal_by_id(&row.principal_id)
            .await?
            .ok_or_else(invalid)?;
        if principal.disabled {
            return Err(invalid());
        }
        Ok((row, principal))
    }

    pub async fn enroll_start(&self, audit: &AuditScope, token: &str) -> Result<EnrollStart> {
        let (row, principal) = self.valid_enrollment(token).await?;
        audit.set_principal(&principal.id, &role_names(&principal), "enrollment-token");
        // Starting again (a person who ran `enroll` twice) hands out the same secret: the one
        // already scanned into their authenticator keeps working.
        let secret = match row.pending_totp_sealed.as_deref() {
            Some(sealed) if !sealed.is_empty() => {
                Zeroizing::new(self.keyring.open(&totp_aad(&principal.id), sealed).await?)
            }
            _ => {
                let fresh = Zeroizing::new(totp::generate_secret()?);
                Zeroizing::new(fresh.to_vec())
            }
        };
        // The first enrollment makes the secrets' data key: it commits with this write or not.
        let new_keys = NewDataKeys::default();
        for attempt in 1.. {
            let (_, sealed) = self
                .keyring
                .seal_in(
                    &new_keys,
                    &Compartment::secrets(),
                    &totp_aad(&principal.id),
                    secret.as_ref(),
                )
                .await?;
            let ops = new_keys.before(vec![WriteOp::SetEnrollmentPendingTotp {
                token_hash: row.token_hash.clone(),
                sealed,
            }]);
            let written = self.commit(audit, ops, 200).await;
            self.keyring.settle(&new_keys, &written);
            match written {
                Ok(()) => break,
                // Another enrollment made the key first: seal again under it.
                Err(StoreError::StaleKey) if attempt < 3 => {}
                Err(_) => {
                    return Err(Error::BadRequest(
                        "enrollment token is invalid or expired".into(),
                    ));
                }
            }
        }
        let (totp_secret, otpauth_uri) = totp::provisioning(secret.as_ref(), &principal.username)?;
        Ok(EnrollStart {
            username: principal.username,
            totp_secret,
            otpauth_uri,
        })
    }

    pub async fn enroll_finish(
        &self,
        audit: &AuditScope,
        token: &str,
        password: &str,
        totp_code: &str,
    ) -> Result<Vec<String>> {
        let (row, principal) = self.valid_enrollment(token).await?;
        audit.set_principal(&principal.id, &role_names(&principal), "enrollment-token");
        let sealed = row
            .pending_totp_sealed
            .ok_or_else(|| Error::BadRequest("call /auth/enroll/start first".into()))?;
        let secret = Zeroizing::new(self.keyring.open(&totp_aad(&principal.id), &sealed).await?);
        let step = totp::verify(
            &secret,
            &principal.username,
            totp_code,
            self.clock.now_secs(),
            0,
        )?
        .ok_or_else(|| {
            Error::BadRequest("the authenticator code is not valid for the new secret".into())
        })?;
        password::check_policy(password, &principal.username)?;
        let password_hash = self.hash_password(password).await?;

        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut hashes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let code = new_recovery_code()?;
            hashes.push(carevault_crypto::sha256_hex(code.as_bytes()));
            codes.push(code);
        }
        self.commit(
            audit,
            vec![
                // Re-check that the token still exists inside the transaction: it is spent once.
                WriteOp::SetEnrollmentPendingTotp {
                    token_hash: row.token_hash,
                    sealed: Vec::new(),
                },
                WriteOp::SetCredential(CredentialRow {
                    principal_id: principal.id.clone(),
                    password_hash,
                    totp_secret_sealed: sealed,
                    totp_last_step: step,
                    recovery_code_hashes: hashes,
                }),
                WriteOp::DeleteEnrollments {
                    principal_id: principal.id.clone(),
                },
                WriteOp::RevokeSessions {
                    principal_id: principal.id.clone(),
                },
                WriteOp::UpdatePrincipal {
                    principal_id: principal.id,
                    disabled: None,
                    locked: Some(false),
                    failed_logins: Some(0),
                },
            ],
            200,
        )
        .await
        .map_err(|e| match e {
            carevault_store::StoreError::Conflict => {
                Error::BadRequest("enrollment token is invalid or expired".into())
            }
            other => other.into(),
        })?;
        self.throttle.reset(&principal.username);
        Ok(codes)
    }
}
