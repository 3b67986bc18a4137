//! Sessions: resolving a bearer token to its principal (idle and absolute timeouts, the session
//! cache) and ending a session.

use std::net::IpAddr;

use carevault_store::WriteOp;

use super::session_cache::SessionCache;
use super::{API_KEY_PREFIX, Identity, Principal, SESSION_PREFIX};
use crate::audit::AuditScope;
use crate::error::{Error, Result};

/// A session's `last_seen` is written at most this often (it is a write on the request path).
const TOUCH_AT_MOST_EVERY_SECS: i64 = 30;

/// How stale a session's `last_seen` may get before a request writes it again: a tenth of the
/// idle timeout, at most 30 s, at least 1 s. `last_seen` never runs ahead of the last use, so
/// a session ends at the latest `idle` after its last use, and at the earliest `idle` less
/// this (900 s idle: 870 s; 20 s idle: 18 s).
fn touch_every_secs(idle_secs: i64) -> i64 {
    (idle_secs / 10).clamp(1, TOUCH_AT_MOST_EVERY_SECS)
}

impl Identity {
    /// Resolve a bearer token (a session token or an API key) to its principal. `client_cert`
    /// is the fingerprint of the client certificate the connection presented, if any. A refusal
    /// the auditor should know more of (an API key from outside its CIDRs, or without its
    /// client certificate) is told to `audit`.
    pub async fn authenticate(
        &self,
        token: &str,
        client_ip: Option<IpAddr>,
        client_cert: Option<&str>,
        audit: Option<&AuditScope>,
    ) -> Result<Principal> {
        if token.starts_with(API_KEY_PREFIX) {
            self.authenticate_key(token, client_ip, client_cert, audit)
                .await
        } else {
            self.authenticate_session(token).await
        }
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
        if now - session.last_seen >= touch_every_secs(self.session_idle_secs) {
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
        Ok(Principal::user_from_row(p, Some(hash)))
    }

    /// A user as they are now, by id, for work that outlives the request that started it (a
    /// bulk export resumed after a restart): None when the user is gone or disabled. Roles and
    /// organization are read afresh, so the work continues with the user's current rights.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<Principal>> {
        let Some(p) = self.store.principal_by_id(id).await? else {
            return Ok(None);
        };
        if p.disabled {
            return Ok(None);
        }
        Ok(Some(Principal::user_from_row(p, None)))
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
}

#[cfg(test)]
mod tests {
    //! Expiry rules, driven by a manual clock (the end-to-end tests cover the HTTP paths).
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::Config;

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
        fixture_with_idle(900).await
    }

    async fn fixture_with_idle(idle_secs: i64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path());
        config.argon2 = crate::config::Argon2Params {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
        };
        config.session_idle_secs = idle_secs;
        config.session_lifetime_secs = 3600;
        let crate::test_support::Services {
            clock,
            store,
            keyring,
            audit,
        } = crate::test_support::services(dir.path()).await;
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

    /// A new session for alice, with the current step's code.
    async fn session(f: &Fixture, secret: &str) -> String {
        let now = f.clock.now_secs();
        f.identity
            .login(&f.scope(), "alice", PASSWORD, &code(secret, now, 0), None)
            .await
            .unwrap()
            .access_token
    }

    async fn refused(f: &Fixture, token: &str) -> bool {
        matches!(
            f.identity.authenticate(token, None, None, None).await,
            Err(Error::Unauthorized)
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_timeout_and_absolute_lifetime() {
        let f = fixture().await;
        let secret = enrolled(&f).await;
        let now = f.clock.now_secs();
        let granted = f
            .identity
            .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 0), None)
            .await
            .unwrap();
        assert_eq!(granted.expires_in, 900);
        let token = granted.access_token;

        // Activity keeps the session alive past the idle timeout...
        for _ in 0..4 {
            f.clock.advance_secs(800);
            assert!(
                f.identity
                    .authenticate(&token, None, None, None)
                    .await
                    .is_ok()
            );
        }
        // ...but not past the absolute lifetime (3,200 s used, 3,600 s allowed).
        f.clock.advance_secs(400);
        assert!(refused(&f, &token).await);

        // A fresh session left idle expires.
        let token = session(&f, &secret).await;
        f.clock.advance_secs(899);
        assert!(
            f.identity
                .authenticate(&token, None, None, None)
                .await
                .is_ok()
        );
        f.clock.advance_secs(900);
        assert!(refused(&f, &token).await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_short_idle_timeout_holds_for_a_session_in_use() {
        let f = fixture_with_idle(20).await;
        let secret = enrolled(&f).await;
        let token = session(&f, &secret).await;
        // Used every 2 s for a minute: three times the idle timeout.
        for i in 0..30 {
            f.clock.advance_secs(2);
            assert!(
                f.identity
                    .authenticate(&token, None, None, None)
                    .await
                    .is_ok(),
                "refused after {} s in use",
                2 * (i + 1)
            );
        }
        // Left alone, it ends within the idle timeout of its last use.
        f.clock.advance_secs(20);
        assert!(refused(&f, &token).await);
        // Refreshes are a tenth of the idle timeout apart, at most 30 s.
        assert_eq!(touch_every_secs(10), 1);
        assert_eq!(touch_every_secs(20), 2);
        assert_eq!(touch_every_secs(900), 30);
        assert_eq!(touch_every_secs(86_400), 30);
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
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, -1), None)
                .await
                .is_err()
        );
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 1), None)
                .await
                .is_ok()
        );
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 0), None)
                .await
                .is_err(),
            "a code older than the last one used is refused"
        );
        assert!(
            f.identity
                .login(&f.scope(), "alice", PASSWORD, &code(&secret, now, 2), None)
                .await
                .is_err(),
            "outside the window"
        );
    }
}
