//! Identity: accounts, enrollment, multi-factor login (password + TOTP, always both), sessions,
//! throttling. Only an admin creates accounts; a new account gets a one-time enrollment token.

mod api_keys;
mod break_glass;
mod enrollment;
pub mod keys;
mod login;
mod metrics;
pub mod password;
mod principal;
mod recovery;
pub mod session_cache;
mod sessions;
pub mod throttle;
pub mod totp;
mod users;

use std::net::IpAddr;
use std::sync::Arc;

use carevault_store::{PrincipalRow, Store, WriteOp};
use tokio::sync::Semaphore;

use crate::audit::AuditScope;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::keyring::Keyring;
use password::PasswordHasherConfig;
use session_cache::SessionCache;
use throttle::{IpRateLimit, KnownAddresses, LoginThrottle};

pub use api_keys::{ApiKeyView, CreatedApiKey, NewApiKey};
pub use enrollment::EnrollStart;
pub use login::LoginGranted;
pub use principal::{Principal, PrincipalKind, Role, Username};
pub use users::{NewUser, UserView};

pub const SESSION_PREFIX: &str = "cvs_";
pub const API_KEY_PREFIX: &str = "cvk_";
/// API keys live at most this long.
pub const MAX_KEY_DAYS: i64 = 90;
pub const ENROLLMENT_PREFIX: &str = "cve_";

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
    /// Addresses each account has logged in from: spared the account-wide delay and the lock.
    known_addresses: KnownAddresses,
    ip_limit: IpRateLimit,
    session_idle_secs: i64,
    session_lifetime_secs: i64,
    enrollment_ttl_secs: i64,
    lock_after: u32,
    /// None when other nodes share the database: a logout or a disabled account there must
    /// hold here from the next request on.
    sessions: Option<SessionCache>,
    login_outcomes: metrics::LoginOutcomes,
    /// `tls.client_ca` is set: connections may present client certificates, so a key may be
    /// bound to one.
    client_certificates: bool,
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
            known_addresses: KnownAddresses::new(carevault_crypto::random_bytes()?),
            ip_limit: IpRateLimit::new(config.ip_rate_per_minute),
            session_idle_secs: config.session_idle_secs,
            session_lifetime_secs: config.session_lifetime_secs,
            enrollment_ttl_secs: config.enrollment_ttl_secs,
            lock_after: config.lock_after_failures,
            sessions: (!config.database.is_shared()).then(SessionCache::default),
            login_outcomes: metrics::LoginOutcomes::default(),
            client_certificates: config.tls_client_ca.is_some(),
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
}

fn role_names(p: &PrincipalRow) -> Vec<&str> {
    p.roles.iter().map(String::as_str).collect()
}

fn totp_aad(principal_id: &str) -> Vec<u8> {
    format!("carevault-totp\0{principal_id}").into_bytes()
}
