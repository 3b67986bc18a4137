//! Starting the server: `Application::build` opens the environment and binds the listener
//! (remembering the port it actually got); `run_until_stopped` serves until told to stop.
//! Tests and `carevault serve` start the server the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use carevault_fhir::Validator;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{AppState, Services};
use carevault_server::audit::{Audit, AuditAction, AuditScope};
use carevault_server::authz::Authz;
use carevault_server::clock::SharedClock;
use carevault_server::config::Config;
use carevault_server::environment;
use carevault_server::identity::Identity;
use carevault_server::records::Records;
use carevault_server::search::SearchIndex;
use carevault_server::{Error, Result};

#[cfg(test)]
#[path = "app_restart_tests.rs"]
mod restart_tests;

pub struct Application {
    listener: TcpListener,
    /// None for plain HTTP.
    tls: Option<TlsAcceptor>,
    http_limits: carevault_server::config::HttpLimits,
    local_addr: SocketAddr,
    state: AppState,
    tls_fingerprint: Option<String>,
    /// The served certificate, its reloader's handle and what the reloader needs.
    tls_reload: Option<(Arc<crate::tls::ServedCertificate>, Config)>,
    /// Delivers alerts to `detection.webhook_url`, when set.
    alert_deliverer: Option<carevault_server::detection::webhook::Deliverer>,
    /// Delivers alerts to `detection.syslog_address`, when set.
    syslog_deliverer: Option<carevault_server::detection::syslog::SyslogDeliverer>,
    environment_id: String,
    audit: Arc<Audit>,
    keyring: Arc<carevault_server::keyring::Keyring>,
    rewrap_batch: u32,
    rewrap_pause: std::time::Duration,
    /// What the periodic posture run needs (it runs from `run_until_stopped`).
    posture: (Config, Arc<dyn carevault_store::Store>, SharedClock),
}

impl Application {
    pub async fn build(config: Config, clock: SharedClock) -> Result<Self> {
        let env = environment::open(&config, clock.clone()).await?;
        let validator =
            Arc::new(Validator::new().map_err(|e| Error::Internal(format!("FHIR schema: {e}")))?);
        {
            // Compile the common types' validators off the start-up path.
            let validator = validator.clone();
            std::thread::Builder::new()
                .name("schema-warm-up".into())
                .spawn(move || validator.warm_up())
                .map_err(|e| Error::Internal(format!("cannot start warm-up thread: {e}")))?;
        }
        let audit = Arc::new(
            Audit::open(
                env.store.clone(),
                &env.keyring,
                &config.node_id,
                clock.clone(),
            )
            .await?,
        );
        let identity = Identity::new(
            &config,
            env.store.clone(),
            env.keyring.clone(),
            clock.clone(),
        )?;
        let authz = Arc::new(
            Authz::load(env.store.clone(), clock.clone())
                .await?
                .with_shared_database(config.database.is_shared()),
        );
        let records = Arc::new(
            Records::new(
                env.store.clone(),
                env.keyring.clone(),
                validator,
                authz.clone(),
                Arc::new(SearchIndex::open(&env.keyring).await?),
                clock.clone(),
                config.search_limits,
            )
            .with_deidentification_secret(env.keyring.secret("deidentify").await?),
        );
        let exports = Arc::new(carevault_server::export::Exports::new(
            records.clone(),
            env.store.clone(),
            env.keyring.clone(),
            audit.clone(),
            clock.clone(),
            config.export,
            &config.data_dir,
            &config.node_id,
        ));

        let tcp = TcpListener::bind(config.listen).await.map_err(|e| {
            Error::Unavailable(format!("cannot listen on {}: {}", config.listen, e.kind()))
        })?;
        let local_addr = tcp
            .local_addr()
            .map_err(|e| Error::Unavailable(format!("listener address: {}", e.kind())))?;
        let (tls, tls_reload) = if config.plain_http {
            (None, None)
        } else {
            crate::tls::renew_at_start(&config, &audit, &clock).await;
            let (server_config, served) = crate::tls::server_config(&config)?;
            (
                Some(TlsAcceptor::from(server_config)),
                Some((served, config.clone())),
            )
        };
        let tls_fingerprint = tls_reload.as_ref().map(|(served, _)| served.fingerprint());
        let http_limits = config.http;
        let capability = crate::capability_statement(clock.now_us());
        let rewrap_batch = config.rewrap_batch_size;
        let rewrap_pause = std::time::Duration::from_millis(config.rewrap_pause_ms);
        let public_base = crate::public_base::PublicBase::new(&config, local_addr);
        let posture = (config.clone(), env.store.clone(), clock.clone());
        let detection = Arc::new(carevault_server::detection::Detection::new(
            config.detection.clone(),
            audit.clone(),
            clock.clone(),
        ));
        // A webhook secret or CA file that cannot be used stops the start, naming its key.
        let alert_deliverer = match &config.detection.webhook {
            Some(target) => {
                let (webhook, deliverer) =
                    carevault_server::detection::webhook::Webhook::open(target, clock.clone())?;
                detection.alerts.set_webhook(webhook);
                Some(deliverer)
            }
            None => None,
        };
        let syslog_deliverer = match &config.detection.syslog {
            Some(target) => {
                let (syslog, deliverer) = carevault_server::detection::syslog::Syslog::open(
                    target,
                    config.node_id.as_str(),
                )?;
                detection.alerts.set_syslog(syslog);
                Some(deliverer)
            }
            None => None,
        };
        let state = AppState::new(Services {
            detection,
            config,
            public_base,
            readiness: crate::health::Readiness::default(),
            identity,
            records,
            exports,
            authz: authz.clone(),
            metrics: carevault_server::metrics::Metrics::default(),
            audit: audit.clone(),
            store: env.store.clone(),
            keyring: env.keyring.clone(),
            clock,
            capability,
            posture: Arc::default(),
        });
        Ok(Self {
            listener: tcp,
            tls,
            http_limits,
            local_addr,
            state,
            tls_fingerprint,
            tls_reload,
            alert_deliverer,
            syslog_deliverer,
            environment_id: env.id,
            audit,
            keyring: env.keyring,
            rewrap_batch,
            rewrap_pause,
            posture,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The SHA-256 fingerprint of the served certificate (None for plain HTTP).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls_fingerprint.as_deref()
    }

    /// The figures the backup schedule reports in `/metrics`.
    /// Where other parts of the server raise alerts (scheduled backups).
    pub fn alerts(&self) -> std::sync::Arc<carevault_server::detection::Alerts> {
        self.state.inner.detection.alerts.clone()
    }

    pub fn backup_stats(&self) -> std::sync::Arc<carevault_server::metrics::BackupStats> {
        self.state.inner.metrics.backup.clone()
    }

    pub fn environment_id(&self) -> &str {
        &self.environment_id
    }

    /// The environment's tier, fixed at init.
    pub fn environment_tier(&self) -> carevault_server::config::Tier {
        self.audit.tier()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_fingerprint.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The key that verifies this environment's audit checkpoints (hex).
    pub fn audit_public_key(&self) -> String {
        self.audit.public_key()
    }

    /// Serve until `shutdown` completes, then finish in-flight requests and sign the rest of
    /// the audit trail.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let checkpointer = self.audit.spawn_checkpointer();
        // Alerts are written to the audit trail off the request path.
        let alert_writer = self.state.inner.detection.alerts.spawn_writer();
        // Revokes API keys after bulk access (`detection.revoke_key_on_bulk`).
        let responder = self
            .state
            .inner
            .detection
            .take_revocations()
            .map(|mut keys| {
                let state = self.state.clone();
                tokio::spawn(async move {
                    while let Some(name) = keys.recv().await {
                        carevault_server::detection::response::revoke_api_key(
                            &state.inner.identity,
                            state.inner.audit.clone(),
                            &name,
                        )
                        .await;
                    }
                })
            });
        let alert_delivery = self.alert_deliverer.map(|d| d.spawn());
        let syslog_delivery = self.syslog_deliverer.map(|d| d.spawn());
        // Re-wraps data keys under the active KEK: at start (resuming an interrupted re-wrap)
        // and after every rotation. Its completion is an audit event.
        let audit = self.audit.clone();
        let rewrapper =
            self.keyring
                .spawn_rewrapper(self.rewrap_batch, self.rewrap_pause, move |n| {
                    let audit = audit.clone();
                    async move {
                        let scope = AuditScope::local(audit, AuditAction::KekRewrapFinished);
                        scope.add_detail("data_keys", n.to_string());
                        if let Err(e) = scope.finish(200).await {
                            tracing::error!(event = "audit_write_failed", error = %e);
                        }
                    }
                });
        // Rotates patients' data keys after `key rotate-data` (and resumes an interrupted
        // rotation at start). Its completion is an audit event.
        let audit = self.audit.clone();
        let data_rotator = self.keyring.spawn_data_rotator(
            self.rewrap_batch.min(64),
            self.rewrap_pause,
            move |n| {
                let audit = audit.clone();
                async move {
                    let scope = AuditScope::local(audit, AuditAction::DataKeyRotateFinished);
                    scope.add_detail("versions", n.to_string());
                    if let Err(e) = scope.finish(200).await {
                        tracing::error!(event = "audit_write_failed", error = %e);
                    }
                }
            },
        );
        let tls_reloader = self.tls_reload.map(|(served, config)| {
            served.spawn_reloader(
                config,
                self.audit.clone(),
                self.state.inner.detection.alerts.clone(),
                self.state.inner.clock.clone(),
            )
        });
        let (posture_config, store, clock) = self.posture;
        let posture_runs = carevault_server::posture::periodic::spawn(
            self.state.inner.posture.clone(),
            posture_config,
            environment::Environment {
                id: self.environment_id.clone(),
                tier: self.audit.tier(),
                store,
                keyring: self.keyring.clone(),
            },
            self.audit.clone(),
            self.state.inner.detection.alerts.clone(),
            clock,
        );
        // Bulk exports a restart interrupted begin again; expired ones are deleted.
        if let Err(e) = self
            .state
            .inner
            .exports
            .resume(&self.state.inner.identity)
            .await
        {
            tracing::error!(event = "export_resume_failed", error = %e);
        }
        let export_sweeper = self.state.inner.exports.spawn_sweeper();
        let connection_metrics = self.state.inner.metrics.connections.clone();
        let app = crate::router(self.state);
        let served = crate::serve::serve(
            self.listener,
            self.tls,
            app,
            self.http_limits,
            connection_metrics,
            shutdown,
        )
        .await;
        checkpointer.abort();
        export_sweeper.abort();
        rewrapper.abort();
        data_rotator.abort();
        if let Some(reloader) = tls_reloader {
            reloader.abort();
        }
        if let Some(runs) = posture_runs {
            runs.abort();
        }
        for delivery in [alert_delivery, syslog_delivery].into_iter().flatten() {
            delivery.abort();
        }
        if let Some(responder) = responder {
            responder.abort();
        }
        // After the last request: its alerts are written before the final checkpoint signs
        // the trail.
        if let Some(writer) = alert_writer {
            writer.finish(std::time::Duration::from_secs(5)).await;
        }
        if let Err(e) = self.audit.checkpoint(true, None).await {
            tracing::error!(event = "audit_checkpoint_failed", error = %e, "final checkpoint failed");
        }
        served
    }
}
