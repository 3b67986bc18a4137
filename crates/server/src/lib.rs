//! CareVault's core: configuration, the environment on disk (database, keyring, TLS), identity
//! (accounts, mandatory password + TOTP login, sessions), the records service (FHIR resources
//! sealed at rest), and the HTTPS API (`http`, the only module that knows HTTP).
//!
//! ```no_run
//! # async fn demo() -> Result<(), carevault_server::Error> {
//! use std::sync::Arc;
//! use carevault_server::{Application, Config, SystemClock, environment};
//!
//! let config = Config::for_data_dir(std::path::Path::new("./carevault-data"));
//! let clock = Arc::new(SystemClock);
//! if !environment::is_initialized(&config) {
//!     let report = environment::init(&config, clock.clone()).await?;
//!     println!("enrollment token for admin: {}", report.admin.enrollment_token);
//! }
//! let app = Application::build(config, clock).await?;
//! println!("listening on {}", app.url());
//! app.run_until_stopped(async { let _ = tokio::signal::ctrl_c().await; }).await.ok();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod app;
pub mod audit;
pub mod authz;
pub mod bundle;
pub mod clock;
pub mod compartment;
pub mod compartment_upgrade;
pub mod config;
pub mod environment;
mod error;
mod filing;
pub mod http;
pub mod identity;
pub mod keyring;
pub mod memory;
pub mod metrics;
pub mod records;
pub mod search;
pub mod shred;

pub use app::Application;
pub use clock::{Clock, SharedClock, SystemClock};
pub use config::{Config, ConfigError, FileConfig};
pub use error::{Error, Result};
