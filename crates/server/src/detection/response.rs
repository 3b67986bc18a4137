//! Automatic responses, off by default, each an audit event (`security.response`, details
//! `rule` and `response`):
//! - an address that credential stuffing was detected from is refused (429 with `Retry-After`)
//!   for `detection.block_stuffing_minutes` (detail `minutes`; the event is written by the alert
//!   queue). The list is bounded; when it is full the block that ends soonest makes room.
//! - an API key that `bulk.distinct-patients` fired for is revoked when
//!   `detection.revoke_key_on_bulk` is on: revoked rather than paused, because a key that read
//!   more patients than its job needs must be assumed leaked; its owner mints a new one after the
//!   alert is reviewed. The revocation and its event commit together.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use carevault_audit::AuditAction;
use tokio::sync::mpsc;

use super::Rule;
use crate::audit::{Audit, AuditScope};
use crate::identity::Identity;
use crate::names::ApiKeyName;

/// Revocations waiting for the responder; more are dropped (the alert stands either way).
const REVOCATION_QUEUE: usize = 64;

/// Addresses blocked at once, at most.
const MAX_BLOCKED: usize = 10_000;

#[derive(Default)]
pub struct Blocklist {
    /// Address -> blocked until (µs since the epoch).
    until: Mutex<HashMap<String, i64>>,
    /// Entries in `until`, read without the lock on every request.
    len: AtomicUsize,
}

impl Blocklist {
    /// Block `ip` until `until_us`; false if it already was (for at least as long).
    pub fn block(&self, ip: &str, until_us: i64, now_us: i64) -> bool {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(ip).is_some_and(|&u| u >= until_us) {
            return false;
        }
        if map.len() >= MAX_BLOCKED && !map.contains_key(ip) {
            map.retain(|_, u| *u > now_us);
            if map.len() >= MAX_BLOCKED
                && let Some(soonest) = map.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
            {
                map.remove(&soonest);
            }
        }
        map.insert(ip.to_owned(), until_us);
        self.len.store(map.len(), Ordering::Relaxed);
        true
    }

    /// Seconds `ip` stays blocked, or None. Lock-free while nothing is blocked.
    pub fn blocked_for(&self, ip: &str, now_us: i64) -> Option<u64> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(ip) {
            Some(&until) if until > now_us => {
                Some(u64::try_from((until - now_us).div_euclid(1_000_000) + 1).unwrap_or(1))
            }
            Some(_) => {
                map.remove(ip);
                self.len.store(map.len(), Ordering::Relaxed);
                None
            }
            None => None,
        }
    }
}

/// API keys (`apikey:NAME` principals) waiting to be revoked.
pub struct Revocations {
    queue: mpsc::Sender<ApiKeyName>,
    receiver: Mutex<Option<mpsc::Receiver<ApiKeyName>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        let (queue, receiver) = mpsc::channel(REVOCATION_QUEUE);
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Revocations {
    /// Ask for `principal` to be revoked if it is an API key (users are not: an account is
    /// disabled by a person, after a look at the alert). Never waits.
    pub fn request(&self, principal: &str) {
        if let Some(Ok(name)) = principal.strip_prefix("apikey:").map(ApiKeyName::parse) {
            let _ = self.queue.try_send(name);
        }
    }

    pub fn take(&self) -> Option<mpsc::Receiver<ApiKeyName>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Revoke API key `name` as the automatic response to bulk access, audited as
/// `security.response` by `system`.
pub async fn revoke_api_key(identity: &Identity, audit: Arc<Audit>, name: &ApiKeyName) {
    let scope = AuditScope::local(audit, AuditAction::SecurityResponse);
    scope.set_principal("system", &[], "none");
    scope.add_detail("rule", Rule::BulkPatients.id().to_owned());
    scope.add_detail("response", "revoke-api-key".to_owned());
    match identity.revoke_api_key(&scope, None, name).await {
        Ok(()) => tracing::warn!(
            event = "security_response",
            rule = Rule::BulkPatients.id(),
            response = "revoke-api-key",
            key = name.as_str(),
            "API key revoked after bulk access"
        ),
        Err(e) => {
            tracing::error!(event = "security_response_failed", response = "revoke-api-key", key = name.as_str(), error = %e);
            if let Err(e) = scope.finish(e.status()).await {
                tracing::error!(event = "audit_write_failed", error = %e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_ends_on_time_and_the_list_stays_bounded() {
        let list = Blocklist::default();
        assert_eq!(list.blocked_for("203.0.113.7", 0), None);
        assert!(list.block("203.0.113.7", 60_000_000, 0));
        assert!(!list.block("203.0.113.7", 30_000_000, 0));
        assert_eq!(list.blocked_for("203.0.113.7", 0), Some(61));
        assert_eq!(list.blocked_for("203.0.113.8", 0), None);
        assert_eq!(list.blocked_for("203.0.113.7", 60_000_000), None);
        assert_eq!(list.len.load(Ordering::Relaxed), 0);

        for i in 0..MAX_BLOCKED + 5 {
            let until = 1_000_000 + i64::try_from(i).unwrap();
            list.block(&format!("10.0.{}.{}", i / 256, i % 256), until, 0);
        }
        assert_eq!(list.len.load(Ordering::Relaxed), MAX_BLOCKED);
        // The ones ending soonest made room; the newest are there.
        assert_eq!(list.blocked_for("10.0.0.0", 0), None);
        let last = MAX_BLOCKED + 4;
        assert!(
            list.blocked_for(&format!("10.0.{}.{}", last / 256, last % 256), 0)
                .is_some()
        );
    }
}
