//! OCSP stapling: when the served certificate names an OCSP responder, its signed status is
//! fetched at start, after every reload, and again half-way to the response's `nextUpdate`, and
//! sent in the handshake to clients that ask (RFC 6066 section 8), so that they need not ask
//! the CA themselves (which tells the CA who talks to this server, and fails when it is down).
//!
//! A fetch that fails keeps the current staple while it is valid and retries with a growing
//! pause; a stale one is withdrawn. A revocation is never stapled: it is logged as an error and
//! raised as a critical alert (`integrity.tls-certificate-revoked`) for the operator, who must
//! replace the certificate.

use std::sync::Arc;
use std::time::Duration;

use carevault_server::certificate::ocsp::{self, Refusal};
use carevault_server::clock::SharedClock;
use carevault_server::detection::{AlertInput, Alerts, Rule};

use crate::tls::ServedCertificate;

/// The first pause after a failed fetch; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);

enum Fetched {
    /// The certificate names no responder (or one that cannot be asked): wait for a reload.
    NothingToStaple,
    Stapled {
        refresh_after: Duration,
    },
    Failed,
}

/// Keep the served certificate's OCSP status stapled, for as long as the future runs.
pub(crate) async fn keep_stapled(
    served: Arc<ServedCertificate>,
    alerts: Arc<Alerts>,
    clock: SharedClock,
) {
    let mut retry = FIRST_RETRY;
    loop {
        let pause = match staple_once(&served, &alerts, &clock).await {
            Fetched::NothingToStaple => None,
            Fetched::Stapled { refresh_after } => {
                retry = FIRST_RETRY;
                Some(refresh_after)
            }
            Fetched::Failed => {
                let pause = retry;
                retry = (retry * 2).min(MAX_RETRY);
                Some(pause)
            }
        };
        match pause {
            Some(pause) => tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = served.reloaded() => retry = FIRST_RETRY,
            },
            None => served.reloaded().await,
        }
    }
}

async fn staple_once(served: &ServedCertificate, alerts: &Alerts, clock: &SharedClock) -> Fetched {
    let (chain, fingerprint) = served.chain();
    let target = match ocsp::target(&chain) {
        Ok(Some(target)) => target,
        Ok(None) => return Fetched::NothingToStaple,
        Err(refusal) => {
            tracing::warn!(event = "ocsp_staple_failed", error = %refusal,
                "the certificate's status cannot be stapled");
            return Fetched::NothingToStaple;
        }
    };
    let responder = target.url.clone();
    let now = clock.now_secs();
    // ureq blocks: the fetch runs on the blocking pool.
    let fetched = tokio::task::spawn_blocking(move || ocsp::fetch(&target, now))
        .await
        .unwrap_or_else(|_| Err(Refusal::Unusable("the OCSP fetch did not finish".into())));
    match fetched {
        Ok(staple) => {
            let refresh_after = staple.refresh_after(now);
            tracing::info!(event = "ocsp_stapled", responder = %responder,
                next_update = staple.next_update_secs, refresh_in_secs = refresh_after.as_secs());
            served.staple(&fingerprint, Some((staple.der, staple.next_update_secs)));
            Fetched::Stapled { refresh_after }
        }
        Err(Refusal::Revoked) => {
            served.staple(&fingerprint, None);
            tracing::error!(event = "tls_certificate_revoked", responder = %responder,
                fingerprint = %fingerprint,
                "the OCSP responder says the served TLS certificate is revoked; replace it");
            alerts.raise(AlertInput::new(
                Rule::TlsCertificateRevoked,
                "system",
                "local",
                1,
            ));
            Fetched::Failed
        }
        Err(refusal) => {
            let withdrawn = served.drop_stale_staple(clock.now_secs());
            tracing::warn!(event = "ocsp_staple_failed", responder = %responder,
                error = %refusal, stale_staple_withdrawn = withdrawn);
            Fetched::Failed
        }
    }
}
