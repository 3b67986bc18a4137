//! Identity: accounts, enrollment, multi-factor login (password + TOTP, always both), sessions,
//! throttling. Only an admin creates accounts; a new account gets a one-time enrollment token.

pub mod keys;
pub mod password;
pub mod session_cache;
pub mod throttle;
pub mod totp;

use std::net::IpAddr;
use std::sync::Arc;

use carevault_store::{CredentialRow, EnrollmentRow, PrincipalRow, SessionRow, Store, WriteOp};
use serde::Serialize;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::audit::AuditScope;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::keyring::{Keyring, SECRETS_COMPARTMENT};
use password::PasswordHasherConfig;
use session_cache::SessionCache;
use throttle::{IpRateLimit, LoginThrottle};

pub const SESSION_PREFIX: &str = "cvs_";
pub const API_KEY_PREFIX: &str = "cvk_";
/// API keys live at most this long.
pub const MAX_KEY_DAYS: i64 = 90;
pub const ENROLLMENT_PREFIX: &str = "cve_";
const RECOVERY_CODES: usize = 10;
/// A session's `last_seen` is written at most this often (it is a write on the request path).
const TOUCH_EVERY_SECS: i64 = 30;

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
    pub organization: Option<String>,
    pub kind: PrincipalKind,
    session_hash: Option<String>,
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

    pub fn auth_method(&self) -> &'static str {
        match self.kind {
            PrincipalKind::User => "session",
            PrincipalKind::ApiKey { .. } => "api-key",
        }
    }

    pub fn role_names(&self) -> Vec<&'static str> {
        self.roles.iter().map(|r| r.as_str()).collect()
    }

    /// A user principal as a session would produce it, for benchmarks.
    pub fn user_for_bench(username: &str, role: Role, organization: &str) -> Self {
        Self {
            id: format!("bench-{username}"),
            username: username.into(),
            roles: vec![role],
            organization: Some(organization.into()),
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
            organization: organization.map(str::to_owned),
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

#[derive(Debug, Serialize)]
pub struct EnrollStart {
    pub username: String,
    pub totp_secret: String,
    pub otpauth_uri: String,
}

#[derive(Debug, Serialize)]
pub struct LoginGranted {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

pub struct Identity {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: SharedClock,
    hasher: PasswordHasherConfig,
    /// Bounds concurrent Argon2 work so a login flood cannot starve request handling.
    hash_permits: Semaphore,
    /// Verified against when the username is unknown, so every failure costs the same.
    dummy_hash: String,
    throttle: LoginThrottle,
    ip_limit: IpRateLimit,
    session_idle_secs: i64,
    session_lifetime_secs: i64,
    enrollment_ttl_secs: i64,
    lock_after: u32,
    /// None when other nodes share the database: a logout or a disabled account there must
    /// hold here from the next request on.
    sessions: Option<SessionCache>,
}

impl Identity {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        clock: SharedClock,
    ) -> Result<Self> {
        let hasher = PasswordHasherConfig::new(config.argon2)?;
        let dummy_password: [u8; 16] = carevault_crypto::random_bytes()?;
        let dummy_hash = hasher.hash(&hex::encode(dummy_password))?;
        Ok(Self {
            store,
            keyring,
            clock,
            hasher,
            hash_permits: Semaphore::new(2),
            dummy_hash,
            throttle: LoginThrottle::new(
                config.throttle_after_failures,
                config.throttle_base_ms,
                config.throttle_max_ms,
            ),
            ip_limit: IpRateLimit::new(config.ip_rate_per_minute),
            session_idle_secs: config.session_idle_secs,
            session_lifetime_secs: config.session_lifetime_secs,
            enrollment_ttl_secs: config.enrollment_ttl_secs,
            lock_after: config.lock_after_failures,
            sessions: (!config.database.is_shared()).then(SessionCache::default),
        })
    }

    /// Commit an identity change with its audit event; a change to whether some session
    /// authenticates empties the session cache once it is durable.
    async fn commit(
        &self,
        audit: &AuditScope,
        ops: Vec<WriteOp>,
        status: u16,
    ) -> std::result::Result<(), carevault_store::StoreError> {
        let invalidates = SessionCache::invalidated_by(&ops);
        let committed = audit.commit_with(&*self.store, ops, status).await;
        if invalidates && let Some(cache) = &self.sessions {
            cache.invalidate();
        }
        committed
    }

    /// Per-IP limit for the `/auth/*` endpoints.
    pub fn check_ip(&self, ip: IpAddr) -> Result<()> {
        self.ip_limit
            .check(ip, self.clock.now_us())
            .map_err(|retry_after_secs| Error::TooManyRequests { retry_after_secs })
    }

    // ----- accounts -----

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
        if let Some(org) = &organization {
            validate_organization(org)?;
        }
        let principal = PrincipalRow {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.as_str().to_owned(),
            roles: parsed.iter().map(|r| r.as_str().to_owned()).collect(),
            organization,
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
            username: username.0,
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
        let p = self.principal_named(username).await?;
        audit.set_resource("Principal", Some(&p.id), None);
        self.commit(
            audit,
            vec![WriteOp::UpdatePrincipal {
                principal_id: p.id,
                disabled: Some(false),
                locked: Some(false),
                failed_logins: Some(0),
            }],
            204,
        )
        .await?;
        self.throttle.reset(username);
        Ok(())
    }

    pub async fn unlock(&self, audit: &AuditScope, username: &str) -> Result<()> {
        let p = self.principal_named(username).await?;
        audit.set_resource("Principal", Some(&p.id), None);
        self.commit(
            audit,
            vec![WriteOp::UpdatePrincipal {
                principal_id: p.id,
                disabled: None,
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

    fn new_enrollment(&self, principal_id: &str) -> Result<(String, EnrollmentRow)> {
        let token = carevault_crypto::random_token(ENROLLMENT_PREFIX)?;
        let row = EnrollmentRow {
            token_hash: carevault_crypto::sha256_hex(token.as_bytes()),
            principal_id: principal_id.to_owned(),
            expires_at: self.clock.now_secs() + self.enrollment_ttl_secs,
            pending_totp_sealed: None,
        };
        Ok((token, row))
    }

    // ----- enrollment -----

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
        let secret = Zeroizing::new(totp::generate_secret()?);
        let (sealed_dek, sealed) = self
            .keyring
            .seal(
                SECRETS_COMPARTMENT,
                &totp_aad(&principal.id),
                secret.as_ref(),
            )
            .await?;
        let _ = sealed_dek;
        self.commit(
            audit,
            vec![WriteOp::SetEnrollmentPendingTotp {
                token_hash: row.token_hash,
                sealed,
            }],
            200,
        )
        .await
        .map_err(|_| Error::BadRequest("enrollment token is invalid or expired".into()))?;
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

    async fn hash_password(&self, password: &str) -> Result<String> {
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        // Argon2 is deliberately slow; keep it off the async workers.
        let hasher = self.hasher.clone();
        let password = Zeroizing::new(password.to_owned());
        tokio::task::spawn_blocking(move || hasher.hash(&password))
            .await
            .map_err(|e| Error::Internal(format!("hash task: {e}")))?
    }

    async fn verify_password(&self, password: &str, phc: &str) -> Result<bool> {
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        let hasher = self.hasher.clone();
        let password = Zeroizing::new(password.to_owned());
        let phc = phc.to_owned();
        tokio::task::spawn_blocking(move || hasher.verify(&password, &phc))
            .await
            .map_err(|e| Error::Internal(format!("hash task: {e}")))
    }

    // ----- login and sessions -----

    /// Password and second factor (a TOTP code, or once each, a recovery code). Every failure
    /// is the same `Unauthorized` after the same Argon2 work, whatever was wrong.
    pub async fn login(
        &self,
        audit: &AuditScope,
        username: &str,
        password: &str,
        second_factor: &str,
    ) -> Result<LoginGranted> {
        let now_us = self.clock.now_us();
        let throttle_key = username.to_ascii_lowercase();
        if let Err(retry_after_secs) = self.throttle.check(&throttle_key, now_us) {
            return Err(Error::TooManyRequests { retry_after_secs });
        }
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

        let factor = match (&principal, &credential) {
            (Some(p), Some(c)) if password_ok && !p.disabled && !p.locked => {
                self.second_factor(p, c, second_factor).await?
            }
            _ => None,
        };
        if let (Some(p), Some((factor_op, method))) = (&principal, factor) {
            audit.set_principal(&p.id, &role_names(p), method);
            match self.open_session(audit, p, factor_op).await {
                Ok(granted) => {
                    self.throttle.reset(&throttle_key);
                    return Ok(granted);
                }
                // The code or recovery code was used by a concurrent login: a failure.
                Err(Error::Conflict(_)) => audit.set_principal("anonymous", &[], "none"),
                Err(e) => return Err(e),
            }
        }
        self.throttle.record_failure(&throttle_key, now_us);
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
        Err(Error::Unauthorized)
    }

    /// The write that consumes the second factor (a TOTP step or a recovery code), if the
    /// factor is valid, and the authentication method it makes.
    async fn second_factor(
        &self,
        p: &PrincipalRow,
        c: &CredentialRow,
        code: &str,
    ) -> Result<Option<(WriteOp, &'static str)>> {
        let now = self.clock.now_secs();
        if code.len() == 6 {
            let secret = Zeroizing::new(
                self.keyring
                    .open(&totp_aad(&p.id), &c.totp_secret_sealed)
                    .await?,
            );
            let step = totp::verify(&secret, &p.username, code, now, c.totp_last_step)?;
            // Committed with the session: of two concurrent logins with one code, one wins.
            return Ok(step.map(|step| {
                (
                    WriteOp::AdvanceTotpStep {
                        principal_id: p.id.clone(),
                        step,
                    },
                    "password+totp",
                )
            }));
        }
        let normalized = normalize_recovery_code(code);
        let hash = carevault_crypto::sha256_hex(normalized.as_bytes());
        if normalized.is_empty() || !c.recovery_code_hashes.contains(&hash) {
            return Ok(None);
        }
        Ok(Some((
            WriteOp::ConsumeRecoveryCode {
                principal_id: p.id.clone(),
                code_hash: hash,
            },
            "password+recovery-code",
        )))
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

    /// Resolve a bearer token (a session token or an API key) to its principal.
    pub async fn authenticate(&self, token: &str, client_ip: Option<IpAddr>) -> Result<Principal> {
        if token.starts_with(API_KEY_PREFIX) {
            self.authenticate_key(token, client_ip).await
        } else {
            self.authenticate_session(token).await
        }
    }

    async fn authenticate_key(&self, key: &str, client_ip: Option<IpAddr>) -> Result<Principal> {
        if key.len() != API_KEY_PREFIX.len() + 43 {
            return Err(Error::Unauthorized);
        }
        let row = self
            .store
            .api_key_by_hash(&carevault_crypto::sha256_hex(key.as_bytes()))
            .await?
            .ok_or(Error::Unauthorized)?;
        if row.revoked || row.expires_at <= self.clock.now_secs() {
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
                return Err(Error::Unauthorized);
            }
        }
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
                let owner_principal = Principal {
                    id: owner.id,
                    username: owner.username,
                    roles: owner
                        .roles
                        .iter()
                        .filter_map(|r| Role::parse(r).ok())
                        .collect(),
                    organization: owner.organization.clone(),
                    kind: PrincipalKind::User,
                    session_hash: None,
                };
                (
                    Vec::new(),
                    owner.organization,
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

    /// Resolve a bearer token to its principal, enforcing idle and absolute timeouts.
    async fn authenticate_session(&self, token: &str) -> Result<Principal> {
        if !token.starts_with(SESSION_PREFIX) || token.len() != SESSION_PREFIX.len() + 43 {
            return Err(Error::Unauthorized);
        }
        let hash = carevault_crypto::sha256_hex(token.as_bytes());
        let cache = self.sessions.as_ref();
        let (session, p) = match cache.and_then(|c| c.get(&hash)) {
            Some(cached) => cached,
            None => {
                let generation = cache.map(SessionCache::generation);
                let (session, principal) = self
                    .store
                    .session_principal(&hash)
                    .await?
                    .ok_or(Error::Unauthorized)?;
                let p = principal.ok_or(Error::Unauthorized)?;
                if let (Some(cache), Some(generation)) = (cache, generation) {
                    cache.put(generation, session.clone(), p.clone());
                }
                (session, p)
            }
        };
        let now = self.clock.now_secs();
        if session.revoked
            || now - session.created_at >= self.session_lifetime_secs
            || now - session.last_seen >= self.session_idle_secs
        {
            return Err(Error::Unauthorized);
        }
        if p.disabled {
            return Err(Error::Unauthorized);
        }
        if now - session.last_seen >= TOUCH_EVERY_SECS {
            self.store
                .write(vec![WriteOp::TouchSession {
                    token_hash: hash.clone(),
                    last_seen: now,
                }])
                .await?;
            // The cached row's last_seen is now stale: the next request reads it afresh.
            if let Some(cache) = cache {
                cache.invalidate_one(&hash);
            }
        }
        let roles = p.roles.iter().filter_map(|r| Role::parse(r).ok()).collect();
        Ok(Principal {
            id: p.id,
            username: p.username,
            roles,
            organization: p.organization,
            kind: PrincipalKind::User,
            session_hash: Some(hash),
        })
    }

    pub async fn logout(&self, audit: &AuditScope, principal: &Principal) -> Result<()> {
        self.commit(
            audit,
            match &principal.session_hash {
                Some(hash) => vec![WriteOp::RevokeSession {
                    token_hash: hash.clone(),
                }],
                // An API key has no session: revoke the key instead.
                None => {
                    return Err(Error::BadRequest(
                        "an API key has no session to end; revoke the key".into(),
                    ));
                }
            },
            204,
        )
        .await?;
        Ok(())
    }

    // ----- API keys -----

    /// Mint an API key. `owner` is the user minting a key for themselves (its grants are then
    /// the intersection of its scopes and the user's rights); None makes a service key (admin).
    pub async fn create_api_key(
        &self,
        audit: &AuditScope,
        owner: Option<&Principal>,
        req: &NewApiKey,
    ) -> Result<CreatedApiKey> {
        validate_key_name(&req.name)?;
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
        audit.set_resource("ApiKey", Some(&req.name), None);
        self.commit(
            audit,
            vec![WriteOp::InsertApiKey(carevault_store::ApiKeyRow {
                name: req.name.clone(),
                key_hash: carevault_crypto::sha256_hex(key.as_bytes()),
                owner_id,
                scopes,
                allowed_cidrs: cidrs,
                expires_at,
                revoked: false,
                created_at: now,
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
            name: req.name.clone(),
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
                expires_at: crate::clock::fhir_instant(k.expires_at * 1_000_000),
            })
            .collect())
    }

    /// Revoke a key; `owner` limits it to the caller's own keys.
    pub async fn revoke_api_key(
        &self,
        audit: &AuditScope,
        owner: Option<&str>,
        name: &str,
    ) -> Result<()> {
        let exists = self
            .store
            .api_keys()
            .await?
            .into_iter()
            .any(|k| k.name == name && owner.is_none_or(|o| k.owner_id.as_deref() == Some(o)));
        if !exists {
            return Err(Error::NotFound);
        }
        audit.set_resource("ApiKey", Some(name), None);
        self.commit(
            audit,
            vec![WriteOp::RevokeApiKey {
                name: name.to_owned(),
            }],
            204,
        )
        .await?;
        Ok(())
    }

    // ----- break-glass -----

    /// Grant `principal` emergency read access beyond their organizations for `minutes`,
    /// optionally limited to one patient.
    pub async fn break_glass(
        &self,
        audit: &AuditScope,
        principal: &Principal,
        reason: &str,
        patient: Option<&str>,
        minutes: i64,
    ) -> Result<String> {
        if reason.trim().chars().count() < 20 {
            return Err(Error::BadRequest(
                "a break-glass reason of at least 20 characters is required".into(),
            ));
        }
        if reason.chars().count() > 1000 {
            return Err(Error::BadRequest(
                "the break-glass reason is limited to 1000 characters".into(),
            ));
        }
        let patient = match patient {
            Some(p) => {
                let id = p.strip_prefix("Patient/").unwrap_or(p);
                carevault_fhir::ResourceId::parse(id)
                    .map_err(|_| Error::BadRequest("patient must be a Patient id".into()))?;
                Some(format!("Patient/{id}"))
            }
            None => None,
        };
        let now = self.clock.now_secs();
        let until = now + minutes * 60;
        audit.set_break_glass(reason);
        if let Some(p) = &patient {
            audit.add_patient(p);
        }
        self.commit(
            audit,
            vec![WriteOp::InsertBreakGlass(carevault_store::BreakGlassRow {
                principal_id: principal.id.clone(),
                until,
                patient,
                reason: reason.to_owned(),
                created_at: now,
            })],
            201,
        )
        .await?;
        tracing::warn!(
            event = "security_alert",
            kind = "break_glass_granted",
            principal = %principal.id,
            minutes,
            "break-glass access granted"
        );
        Ok(crate::clock::fhir_instant(until * 1_000_000))
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_in_days: Option<i64>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
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
    pub expires_at: String,
    pub state: &'static str,
}

fn validate_key_name(name: &str) -> Result<()> {
    let ok = (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "key name must be 2-64 characters of a-z, 0-9, '-', '_' or '.'".into(),
        ))
    }
}

fn role_names(p: &PrincipalRow) -> Vec<&str> {
    p.roles.iter().map(String::as_str).collect()
}

fn totp_aad(principal_id: &str) -> Vec<u8> {
    format!("carevault-totp\0{principal_id}").into_bytes()
}

fn validate_organization(org: &str) -> Result<()> {
    let ok = (1..=64).contains(&org.len())
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "organization must be 1-64 characters of letters, digits, '.', '_' or '-' (a FHIR Organization id)".into(),
        ))
    }
}

/// Recovery codes: 80 random bits as four groups of four base32 characters.
fn new_recovery_code() -> Result<String> {
    let bytes: [u8; 10] = carevault_crypto::random_bytes()?;
    let b32 = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}",
        &b32[0..4],
        &b32[4..8],
        &b32[8..12],
        &b32[12..16]
    ))
}

/// Accept recovery codes with or without dashes, in either case.
fn normalize_recovery_code(code: &str) -> String {
    let compact: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if compact.len() != 16
        || !compact
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        return String::new();
    }
    format!(
        "{}-{}-{}-{}",
        &compact[0..4],
        &compact[4..8],
        &compact[8..12],
        &compact[12..16]
    )
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

    #[test]
    fn recovery_codes_normalize() {
        let code = new_recovery_code().unwrap();
        assert_eq!(code.len(), 19);
        assert_eq!(normalize_recovery_code(&code), code);
        assert_eq!(
            normalize_recovery_code(&code.to_uppercase().replace('-', "")),
            code
        );
        assert_eq!(normalize_recovery_code("123456"), "");
    }
}

#[cfg(test)]
mod session_tests {
    //! Expiry rules, driven by a manual clock (the end-to-end tests cover the HTTP paths).
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use carevault_crypto::FileKeyProvider;
    use carevault_store::SqliteStore;

    const PASSWORD: &str = "lantern-quarry-velvet-omnibus-42";

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        identity: Identity,
        audit: Arc<crate::audit::Audit>,
    }

    impl Fixture {
        fn scope(&self) -> AuditScope {
            AuditScope::local(self.audit.clone(), crate::audit::AuditAction::UserCreate)
        }
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path());
        config.argon2 = crate::config::Argon2Params {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
        };
        config.session_idle_secs = 900;
        config.session_lifetime_secs = 3600;
        let clock = Arc::new(ManualClock::at_secs(1_800_000_000));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let provider = FileKeyProvider::create(&dir.path().join("keys")).unwrap();
        let keyring = Arc::new(Keyring::new(
            "env-test".into(),
            Box::new(provider),
            store.clone(),
            clock.clone(),
        ));
        let audit = Arc::new(
            crate::audit::Audit::open(store.clone(), &keyring, "node-test", clock.clone())
                .await
                .unwrap(),
        );
        let identity = Identity::new(&config, store, keyring, clock.clone()).unwrap();
        Fixture {
            _dir: dir,
            clock,
            identity,
            audit,
        }
    }

    fn code(secret_b32: &str, now: i64, offset_steps: i64) -> String {
        let secret = data_encoding::BASE32_NOPAD
            .decode(secret_b32.as_bytes())
            .unwrap();
        let totp = totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_secret(secret)
            .build()
            .unwrap();
        totp.generate((now + offset_steps * 30) as u64).to_string()
    }

    async fn enrolled(f: &Fixture) -> String {
        let user = f
            .identity
            .create_user(&f.scope(), "alice", &["clinician".into()], None)
            .await
            .unwrap();
        let started = f
            .identity
            .enroll_start(&f.scope(), &user.enrollment_token)
            .await
            .unwrap();
        let now = f.clock.now_secs();
        f.identity
            .enroll_finish(
                &f.scope(),
                &user.enrollment_token,
                PASSWORD,
                &code(&started.totp_secret, now, -1),
            )
            .await
            .unwrap();
        started.totp_secret
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_timeout_and_absolute_lifetime() {
        let f = fixture().await;
        let secret = enrolled(&f).await;
        let now = f.clock.now_secs();
        let granted = f
            .identity
            .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 0))
            .await
            .unwrap();
        assert_eq!(granted.expires_in, 900);
        let token = granted.access_token;

        // Activity keeps the session alive past the idle timeout...
        for _ in 0..4 {
            f.clock.advance_secs(800);
            assert!(f.identity.authenticate(&token, None).await.is_ok());
        }
        // ...but not past the absolute lifetime (3,200 s used, 3,600 s allowed).
        f.clock.advance_secs(400);
        assert!(matches!(
            f.identity.authenticate(&token, None).await,
            Err(Error::Unauthorized)
        ));

        // A fresh session left idle expires.
        let now = f.clock.now_secs();
        let token = f
            .identity
            .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 0))
            .await
            .unwrap()
            .access_token;
        f.clock.advance_secs(899);
        assert!(f.identity.authenticate(&token, None).await.is_ok());
        f.clock.advance_secs(900);
        assert!(matches!(
            f.identity.authenticate(&token, None).await,
            Err(Error::Unauthorized)
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn enrollment_tokens_expire_and_codes_do_not_replay_across_steps() {
        let f = fixture().await;
        let user = f
            .identity
            .create_user(&f.scope(), "bob", &["clinician".into()], None)
            .await
            .unwrap();
        f.clock.advance_secs(24 * 3600);
        assert!(matches!(
            f.identity
                .enroll_start(&f.scope(), &user.enrollment_token)
                .await,
            Err(Error::BadRequest(_))
        ));
        let secret = enrolled(&f).await;
        let now = f.clock.now_secs();
        // The enrollment used the previous step; the current and next steps work once each.
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, -1))
                .await
                .is_err()
        );
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 1))
                .await
                .is_ok()
        );
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 0))
                .await
                .is_err(),
            "a code older than the last one used is refused"
        );
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 2))
                .await
                .is_err(),
            "outside the window"
        );
    }
}
