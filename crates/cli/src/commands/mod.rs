//! One module per command or command group; `main.rs` parses the command line and dispatches
//! here.

pub(crate) mod admin;
pub(crate) mod advisories;
pub(crate) mod alerts;
pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod break_glass;
pub(crate) mod config;
pub(crate) mod doctor;
pub(crate) mod enroll;
pub(crate) mod export;
pub(crate) mod import;
pub(crate) mod key;
pub(crate) mod migrate;
pub(crate) mod patient;
pub(crate) mod policy;
pub(crate) mod seed;
pub(crate) mod serve;
pub(crate) mod session;
pub(crate) mod user;
pub(crate) mod version;
