//! Verifying a store's audit trail a page at a time: memory stays flat however long the trail
//! (the verifier holds each node's chain head, not its events).

use std::collections::HashMap;

use carevault_audit::{Breach, Report, TrailVerifier, VerifyingKey};

use crate::{Store, StoreError};

/// Events read per query.
const PAGE: u32 = 10_000;

/// How much of the trail a verification recomputes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailScope {
    /// Every node's chain from its first event.
    Whole,
    /// What follows each node's last checkpoint signed before this instant (unix µs): the
    /// checkpoints are all checked, and that one's signed head vouches for what precedes it.
    Since(i64),
}

/// Verify the audit trail of `store` against the environment's audit key. The outer error is
/// the store's; the inner one, the first breach found.
pub async fn verify_audit_trail(
    store: &dyn Store,
    key: VerifyingKey,
    scope: TrailScope,
) -> Result<Result<Report, Breach>, StoreError> {
    verify_in_pages(store, key, scope, PAGE).await
}

/// [`verify_audit_trail`], reading `page` events per query.
pub(crate) async fn verify_in_pages(
    store: &dyn Store,
    key: VerifyingKey,
    scope: TrailScope,
    page_size: u32,
) -> Result<Result<Report, Breach>, StoreError> {
    let mut verifier = TrailVerifier::new(&store.audit_checkpoints().await?, key);
    let starts: HashMap<String, u64> = match scope {
        TrailScope::Whole => HashMap::new(),
        TrailScope::Since(time_us) => verifier
            .start_after_checkpoint_before(time_us)
            .into_iter()
            .collect(),
    };
    let mut after: Option<(String, u64)> = None;
    loop {
        let page = store.audit_events(after.clone(), page_size).await?;
        let full = page.len() == page_size as usize;
        let mut skipped_ahead = false;
        for event in page {
            if let Some(&start) = starts.get(&event.node)
                && event.seq <= start
            {
                // Before where this node's verification starts: read on from there.
                after = Some((event.node.clone(), start));
                skipped_ahead = true;
                break;
            }
            after = Some((event.node.clone(), event.seq));
            if let Err(breach) = verifier.push(event) {
                return Ok(Err(breach));
            }
        }
        if !full && !skipped_ahead {
            break;
        }
    }
    Ok(verifier.finish())
}
