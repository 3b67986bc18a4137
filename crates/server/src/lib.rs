//! CareVault's core: configuration, the environment on disk (database, keyring, TLS
//! certificate), identity (accounts, mandatory password + TOTP login, sessions), authorization
//! (Cedar), the records service (FHIR resources sealed at rest), Bundles, and the audit trail.
//! It knows no HTTP: `carevault-http` serves it; errors are typed ([`Error`]) and
//! [`Error::describe`] is the one map to a status and an OperationOutcome.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authz;
pub mod bundle;
pub mod certificate;
pub mod client_certificate;
pub mod clock;
pub mod compartment;
pub mod compartment_upgrade;
pub mod config;
pub mod detection;
pub mod environment;
mod error;
pub mod export;
mod filing;
pub mod identity;
pub mod index_upgrade;
pub mod keyring;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod paging;
pub mod posture;

pub mod records;
pub mod search;
pub mod shred;
#[cfg(test)]
mod test_postgres;
#[cfg(test)]
mod test_support;

pub use clock::{Clock, SharedClock, SystemClock};
pub use config::{Config, ConfigError, FileConfig};
pub use error::{Described, Error, ErrorDetail, Result};
pub use names::{ApiKeyName, NameError, NodeId, OrganizationId, PolicyName};
