//! Sessions resolved a moment ago, so that an authenticated request does not wait on the
//! database to learn who sent it.
//!
//! Every change this node makes to a session or to an account's standing empties the cache (see
//! [`SessionCache::invalidated_by`]). A change made by another process on the same data
//! directory is seen within [`SESSION_CACHE_TTL`]; nodes sharing a database do not use the
//! cache at all. Keys are the SHA-256 of the bearer token, never the token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carevault_store::{PrincipalRow, SessionRow, WriteOp};

/// How long a resolved session is trusted without asking the database again: the bound on how
/// late a revocation made by another process takes effect here.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(1);
/// More entries than this empties the cache (a flood of distinct tokens cannot grow it).
const MAX_ENTRIES: usize = 10_000;

type Entry = (Instant, SessionRow, PrincipalRow);

#[derive(Default)]
pub struct SessionCache {
    /// Bumped by every invalidation; a lookup started before one does not store its answer.
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Entry>>,
}

impl SessionCache {
    /// The generation to pass to [`SessionCache::put`] for a lookup that starts now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, token_hash: &str) -> Option<(SessionRow, PrincipalRow)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, session, principal) = entries.get(token_hash)?;
        (at.elapsed() < SESSION_CACHE_TTL).then(|| (session.clone(), principal.clone()))
    }

    /// Remember a session read from the database, unless something was invalidated since the
    /// read began (`generation`): the row may predate that change.
    pub fn put(&self, generation: u64, session: SessionRow, principal: PrincipalRow) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _, _)| at.elapsed() < SESSION_CACHE_TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            session.token_hash.clone(),
            (Instant::now(), session, principal),
        );
    }

    pub fn invalidate(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    /// Forget one session (its row changed in a way that does not affect others).
    pub fn invalidate_one(&self, token_hash: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token_hash);
    }

    /// Does committing `ops` change whether some session authenticates?
    pub fn invalidated_by(ops: &[WriteOp]) -> bool {
        ops.iter().any(|op| {
            matches!(
                op,
                WriteOp::RevokeSession { .. }
                    | WriteOp::RevokeSessions { .. }
                    | WriteOp::DeleteCredential { .. }
                    | WriteOp::UpdatePrincipal {
                        disabled: Some(_),
                        ..
                    }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(hash: &str) -> (SessionRow, PrincipalRow) {
        (
            SessionRow {
                token_hash: hash.into(),
                principal_id: "p1".into(),
                created_at: 0,
                last_seen: 0,
                revoked: false,
            },
            PrincipalRow {
                id: "p1".into(),
                username: "u".into(),
                roles: vec!["clinician".into()],
                organization: None,
                disabled: false,
                locked: false,
                failed_logins: 0,
                created_at: 0,
            },
        )
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_kept() {
        let cache = SessionCache::default();
        let (s, p) = rows("h1");
        let before = cache.generation();
        cache.invalidate();
        cache.put(before, s.clone(), p.clone());
        assert!(cache.get("h1").is_none());
        cache.put(cache.generation(), s, p);
        assert_eq!(
            cache.get("h1").map(|(s, _)| s.token_hash),
            Some("h1".into())
        );
        cache.invalidate();
        assert!(cache.get("h1").is_none());
    }

    #[test]
    fn only_changes_to_standing_invalidate() {
        assert!(SessionCache::invalidated_by(&[WriteOp::RevokeSessions {
            principal_id: "p".into()
        }]));
        assert!(SessionCache::invalidated_by(&[WriteOp::UpdatePrincipal {
            principal_id: "p".into(),
            disabled: Some(true),
            locked: None,
            failed_logins: None,
        }]));
        assert!(!SessionCache::invalidated_by(&[WriteOp::UpdatePrincipal {
            principal_id: "p".into(),
            disabled: None,
            locked: None,
            failed_logins: Some(0),
        }]));
        assert!(!SessionCache::invalidated_by(&[WriteOp::TouchSession {
            token_hash: "h".into(),
            last_seen: 1,
        }]));
    }
}
