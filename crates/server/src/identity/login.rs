//! Login: password (Argon2, off the async workers) and second factor, throttled per account
//! and per (account, client address), opening a session on success.

use std::net::IpAddr;

use carevault_store::{CredentialRow, PrincipalRow, SessionRow, WriteOp};
use serde::Serialize;
use zeroize::Zeroizing;

use super::password::PasswordHasherConfig;
use super::recovery::normalize_recovery_code;
use super::{Identity, SESSION_PREFIX, Username, role_names, totp, totp_aad};
use crate::audit::AuditScope;
use crate::error::{Error, Result};

#[derive(Debug, Serialize)]
pub struct LoginGranted {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

/// What a second factor is worth.
enum Factor {
    /// The write that consumes it, and the authentication method it makes.
    Valid(WriteOp, &'static str),
    /// A TOTP code already used.
    Replayed,
    Invalid,
}

impl Identity {
    pub(super) async fn hash_password(&self, password: &str) -> Result<String> {
        let password = Zeroizing::new(password.to_owned());
        self.off_workers(move |hasher| hasher.hash(&password))
            .await?
    }

    async fn verify_password(&self, password: &str, phc: &str) -> Result<bool> {
        let password = Zeroizing::new(password.to_owned());
        let phc = phc.to_owned();
        self.off_workers(move |hasher| hasher.verify(&password, &phc))
            .await
    }

    /// Run Argon2 work on the blocking pool, at most `hash_permits` at a time.
    async fn off_workers<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasherConfig) -> T + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        // Argon2 is deliberately slow; keep it off the async workers.
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || work(&hasher))
            .await
            .map_err(|e| Error::Internal(format!("hash task: {e}")))
    }

    /// Password and second factor (a TOTP code, or once each, a recovery code). Every failure
    /// is the same `Unauthorized` after the same Argon2 work, whatever was wrong, except one: the
    /// right password with a TOTP code already used is `CodeAlreadyUsed` (telling it reveals
    /// nothing to someone without the password).
    ///
    /// A failure slot is taken before the password is verified (see
    /// [`super::throttle::LoginThrottle::reserve`]): concurrent attempts get no further than
    /// consecutive ones would. A locked account still opens to the right password and second
    /// factor from an address it has logged in from before; from any other address, never.
    pub async fn login(
        &self,
        audit: &AuditScope,
        username: &str,
        password: &str,
        second_factor: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<LoginGranted> {
        let result = self
            .attempt_login(audit, username, password, second_factor, client_ip)
            .await;
        self.login_outcomes.count(&result);
        result
    }

    async fn attempt_login(
        &self,
        audit: &AuditScope,
        username: &str,
        password: &str,
        second_factor: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<LoginGranted> {
        let account = username.to_ascii_lowercase();
        let known = self
            .known_addresses
            .is_known(&account, client_ip, self.clock.now_us());
        let attempt = self
            .throttle
            .reserve(&account, client_ip, known, self.clock.now_us())
            .map_err(|retry_after_secs| Error::TooManyRequests { retry_after_secs })?;
        let principal = match Username::parse(username) {
            Ok(u) => self.store.principal_by_username(u.as_str()).await?,
            Err(_) => None,
        };
        let credential = match &principal {
            Some(p) => self.store.credential(&p.id).await?,
            None => None,
        };
        let phc = credential
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |c| c.password_hash.as_str());
        let password_ok = password.len() <= 1024 && self.verify_password(password, phc).await?;

        let mut replayed = false;
        let factor = match (&principal, &credential) {
            (Some(p), Some(c)) if password_ok && !p.disabled && (!p.locked || known) => {
                match self.second_factor(p, c, second_factor).await? {
                    Factor::Valid(op, method) => Some((op, method)),
                    Factor::Replayed => {
                        replayed = true;
                        None
                    }
                    Factor::Invalid => {
                        // For the auditor and detection only (`credential.totp-guessing`): the
                        // caller is told nothing about which factor failed.
                        audit.add_detail("second_factor", "invalid".to_owned());
                        None
                    }
                }
            }
            _ => None,
        };
        if let (Some(p), Some((factor_op, method))) = (&principal, factor) {
            audit.set_principal(&p.id, &role_names(p), method);
            match self.open_session(audit, p, factor_op).await {
                Ok(granted) => {
                    attempt.succeeded();
                    self.known_addresses
                        .remember(&account, client_ip, self.clock.now_us());
                    return Ok(granted);
                }
                // The code or recovery code was used by a concurrent login: a failure.
                Err(Error::Conflict(_)) => audit.set_principal("anonymous", &[], "none"),
                Err(e) => return Err(e),
            }
        }
        // Charged before the failure is written: an error writing it still counts.
        attempt.failed(self.clock.now_us());
        if let Some(p) = principal {
            audit.add_detail("target_principal", p.id.clone());
            self.commit(
                audit,
                vec![WriteOp::RecordLoginFailure {
                    principal_id: p.id,
                    lock_after: self.lock_after,
                }],
                401,
            )
            .await?;
        }
        // Only with the right password: a person who typed the code enrollment or their last
        // login used learns to wait for the next one; a guesser learns nothing.
        Err(if replayed {
            Error::CodeAlreadyUsed
        } else {
            Error::Unauthorized
        })
    }

    /// The write that consumes the second factor (a TOTP step or a recovery code), if the
    /// factor is valid, and the authentication method it makes.
    async fn second_factor(
        &self,
        p: &PrincipalRow,
        c: &CredentialRow,
        code: &str,
    ) -> Result<Factor> {
        let now = self.clock.now_secs();
        if code.len() == 6 {
            let secret = Zeroizing::new(
                self.keyring
                    .open(&totp_aad(&p.id), &c.totp_secret_sealed)
                    .await?,
            );
            // Committed with the session: of two concurrent logins with one code, one wins.
            return Ok(
                match totp::check(&secret, &p.username, code, now, c.totp_last_step)? {
                    totp::Checked::Fresh(step) => Factor::Valid(
                        WriteOp::AdvanceTotpStep {
                            principal_id: p.id.clone(),
                            step,
                        },
                        "password+totp",
                    ),
                    totp::Checked::Replayed => Factor::Replayed,
                    totp::Checked::Invalid => Factor::Invalid,
                },
            );
        }
        let normalized = normalize_recovery_code(code);
        let hash = carevault_crypto::sha256_hex(normalized.as_bytes());
        if normalized.is_empty() || !c.recovery_code_hashes.contains(&hash) {
            return Ok(Factor::Invalid);
        }
        Ok(Factor::Valid(
            WriteOp::ConsumeRecoveryCode {
                principal_id: p.id.clone(),
                code_hash: hash,
            },
            "password+recovery-code",
        ))
    }

    async fn open_session(
        &self,
        audit: &AuditScope,
        p: &PrincipalRow,
        factor_op: WriteOp,
    ) -> Result<LoginGranted> {
        let token = carevault_crypto::random_token(SESSION_PREFIX)?;
        let now = self.clock.now_secs();
        self.commit(
            audit,
            vec![
                factor_op,
                WriteOp::InsertSession(SessionRow {
                    token_hash: carevault_crypto::sha256_hex(token.as_bytes()),
                    principal_id: p.id.clone(),
                    created_at: now,
                    last_seen: now,
                    revoked: false,
                }),
                WriteOp::UpdatePrincipal {
                    principal_id: p.id.clone(),
                    disabled: None,
                    locked: None,
                    failed_logins: Some(0),
                },
            ],
            200,
        )
        .await?;
        Ok(LoginGranted {
            access_token: token,
            token_type: "Bearer",
            expires_in: self.session_idle_secs,
        })
    }
}
