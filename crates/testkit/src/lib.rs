//! Starts a real CareVault server (the `carevault` binary) in a temp dir for tests and
//! benchmarks, and speaks HTTPS to it, trusting exactly the server's self-signed certificate.
//!
//! It also carries its own TOTP implementation (RFC 4226/6238 over RustCrypto's HMAC-SHA-1),
//! separate from the server's, checked against the RFC 6238 test vectors, so tests compute codes
//! the way an authenticator app would.
#![forbid(unsafe_code)]

mod api;
mod database;
pub mod examples;
mod hsm;
mod server;
pub mod totp;
mod wait;

pub use api::{Account, Api, Reply, TEST_PASSWORD};
pub use database::{Backend, PgInstance, PgTls, TestDatabase, backend, postgres_admin_url, psql};
pub use hsm::{SOFTHSM_MODULE, key_provider, softhsm_token};
pub use server::{TestServer, copy_dir, files_under, output_text};
pub use totp::Authenticator;
pub use wait::wait_for;
