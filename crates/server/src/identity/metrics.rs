//! What identity reports to `/metrics`: logins by outcome, locked accounts, live sessions.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Identity, LoginGranted};
use crate::error::{Error, Result};

/// The outcomes a login is counted under (a fixed set: never a username or an address).
const OUTCOMES: [&str; 4] = ["success", "failure", "throttled", "error"];

/// Logins by outcome, since start.
#[derive(Debug, Default)]
pub(super) struct LoginOutcomes([AtomicU64; 4]);

impl LoginOutcomes {
    pub(super) fn count(&self, result: &Result<LoginGranted>) {
        let i = match result {
            Ok(_) => 0,
            // A replayed code is a failed login like any other, told apart only to its user.
            Err(Error::Unauthorized | Error::CodeAlreadyUsed) => 1,
            Err(Error::TooManyRequests { .. }) => 2,
            Err(_) => 3,
        };
        if let Some(n) = self.0.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Identity {
    /// Prometheus text: logins by outcome, and (read from the store) locked accounts and the
    /// sessions that would still authenticate.
    pub async fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        crate::metrics::family(
            &mut out,
            "carevault_logins_total",
            "counter",
            "Password logins by outcome (failure: wrong credentials or a locked or disabled account; throttled: refused before checking).",
        );
        for (name, n) in OUTCOMES.iter().zip(&self.login_outcomes.0) {
            let _ = writeln!(
                out,
                "carevault_logins_total{{outcome=\"{name}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let now = self.clock.now_secs();
        let counts = self
            .store
            .identity_counts(
                now - self.session_lifetime_secs,
                now - self.session_idle_secs,
            )
            .await;
        if let Ok(counts) = counts {
            crate::metrics::single(
                &mut out,
                "carevault_accounts_locked",
                "gauge",
                "Accounts locked after repeated failed logins.",
                counts.locked_accounts,
            );
            crate::metrics::single(
                &mut out,
                "carevault_sessions_active",
                "gauge",
                "Sessions not revoked and inside their idle and absolute timeouts.",
                counts.active_sessions,
            );
        }
        out
    }
}
