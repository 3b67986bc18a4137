//! The posture check (`carevault doctor` and the server's periodic run): one finding per check,
//! each with what was found, the fix, and the checklist item and HIPAA Security Rule section it
//! evidences.
//!
//! - [`local`]: the configuration, files and their modes, the process (root, memory locking,
//!   core dumps), the TLS certificate and key.
//! - [`process`]: the running server's process as `/proc` shows it (for `process.memory`).
//! - [`data`]: what the environment's database and keyring say (KEK versions, accounts, API
//!   keys, custom policies, the audit trail, PostgreSQL's TLS and role).
//! - [`fix`]: the safe repairs of `doctor --fix` (modes tightened, never widened; a stale generated
//!   certificate renewed; inactive accounts disabled); each audited.
//! - [`report`]: text, JSON and SARIF 2.1.0.
//!
//! Every check is in [`CHECKS`]; `docs/posture.md` lists them all (a unit test checks it).

pub mod data;
pub mod fix;
pub mod local;
pub mod periodic;
pub mod process;
pub mod report;
#[cfg(test)]
mod tests;

use serde::Serialize;

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Pass, Status::Warn, Status::Fail];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// A check: its id, what it looks at, and what it evidences.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    pub id: &'static str,
    pub title: &'static str,
    /// The item of the security checklist it evidences.
    pub checklist: &'static str,
    /// The HIPAA Security Rule section (45 CFR 164.308 / 164.312 paragraph).
    pub hipaa: &'static str,
}

impl Check {
    pub fn pass(&self, found: impl Into<String>) -> Finding {
        self.finding(Status::Pass, found.into(), String::new())
    }

    pub fn warn(&self, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        self.finding(Status::Warn, found.into(), fix.into())
    }

    pub fn fail(&self, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        self.finding(Status::Fail, found.into(), fix.into())
    }

    /// `Fail` in production, `Warn` elsewhere.
    pub fn fail_in(
        &self,
        tier: crate::config::Tier,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        if tier == crate::config::Tier::Production {
            self.fail(found, fix)
        } else {
            self.warn(found, fix)
        }
    }

    fn finding(&self, status: Status, found: String, fix: String) -> Finding {
        Finding {
            id: self.id,
            title: self.title,
            status,
            found,
            fix,
            checklist: self.checklist,
            hipaa: self.hipaa,
        }
    }
}

/// One check's result. `found` and `fix` name paths, counts and account names, never secrets.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub title: &'static str,
    pub status: Status,
    pub found: String,
    /// Empty when the check passed.
    pub fix: String,
    pub checklist: &'static str,
    pub hipaa: &'static str,
}

macro_rules! checks {
    ($($name:ident = $id:literal, $title:literal, $checklist:literal, $hipaa:literal;)*) => {
        $(pub const $name: Check = Check {
            id: $id,
            title: $title,
            checklist: $checklist,
            hipaa: $hipaa,
        };)*
        /// Every check, in report order.
        pub const CHECKS: &[Check] = &[$($name),*];
    };
}

checks! {
    CONFIG_VALID = "config.valid", "configuration validates",
        "hardened systems", "164.308(a)(1)(ii)(B)";
    ENVIRONMENT = "environment.open", "the data directory holds an environment that opens",
        "hardened systems", "164.308(a)(7)(ii)(B)";
    FILES_DATA_DIR = "files.data_dir", "data directory mode and owner",
        "least privilege", "164.312(a)(1)";
    FILES_KEYS = "files.keys", "key directory and KEK files: modes and owner",
        "encryption at rest, managed keys", "164.312(a)(2)(iv)";
    FILES_TLS_KEY = "files.tls_key", "TLS private key mode and owner",
        "TLS in transit", "164.312(e)(1)";
    FILES_CONFIG = "files.config", "configuration file mode",
        "hardened systems", "164.308(a)(4)(ii)(B)";
    PROCESS_ROOT = "process.root", "the server does not run as root",
        "least privilege", "164.308(a)(3)(ii)(A)";
    PROCESS_MEMORY = "process.memory", "memory locking and core dumps",
        "encryption at rest, managed keys", "164.312(a)(2)(iv)";
    TLS_PLAIN_HTTP = "tls.plain_http", "TLS is on",
        "TLS in transit", "164.312(e)(2)(ii)";
    TLS_CERTIFICATE = "tls.certificate", "TLS certificate validity",
        "TLS in transit", "164.312(e)(1)";
    TLS_KEY = "tls.key", "TLS key type and size",
        "TLS in transit", "164.312(e)(2)(ii)";
    KEYS_PROTECTION = "keys.protection", "KEKs under a passphrase or in an HSM",
        "encryption at rest, managed keys", "164.312(a)(2)(iv)";
    KEYS_KEK_AGE = "keys.kek_age", "the active KEK's age against the rotation period",
        "key rotation", "164.312(a)(2)(iv)";
    KEYS_VERSIONS = "keys.versions", "old KEK versions retired and destroyed",
        "key rotation", "164.312(a)(2)(iv)";
    ACCOUNTS_INACTIVE = "accounts.inactive", "no account unused past the inactivity limit",
        "secure accounts", "164.308(a)(3)(ii)(C)";
    ACCOUNTS_ADMINS = "accounts.admins", "administrators: at least two, not too many",
        "admin-only accounts", "164.308(a)(4)(ii)(B)";
    API_KEYS_EXPIRY = "api_keys.expiry", "API keys expire within a year",
        "secure accounts", "164.308(a)(4)(ii)(C)";
    API_KEYS_CIDRS = "api_keys.cidrs", "service API keys bound to networks or a client certificate",
        "least privilege", "164.312(a)(1)";
    POLICIES_BREADTH = "policies.breadth", "custom policies validate and permit narrowly",
        "least privilege", "164.308(a)(4)(ii)(B)";
    BACKUP_FRESHNESS = "backup.freshness", "a recent backup exists",
        "encrypted backups", "164.308(a)(7)(ii)(A)";
    AUDIT_CHAIN = "audit.chain", "the audit trail verifies",
        "tamper-evident audit", "164.312(b)";
    AUDIT_CHECKPOINT = "audit.checkpoint", "the latest signed checkpoint is recent",
        "tamper-evident audit", "164.312(c)(1)";
    DATABASE_TLS = "database.tls", "PostgreSQL connection encrypted and verified",
        "TLS in transit", "164.312(e)(1)";
    DATABASE_ROLE = "database.role", "the database role has no administrative rights",
        "least privilege", "164.308(a)(4)(ii)(A)";
    SERVER_REACHABLE = "server.reachable", "the server answers over TLS",
        "hardened systems", "164.308(a)(7)(ii)(B)";
}

/// The findings of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tier: &'static str,
    /// RFC 3339.
    pub generated_at: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(tier: &'static str, now_us: i64, mut findings: Vec<Finding>) -> Self {
        let order = |id: &str| CHECKS.iter().position(|c| c.id == id).unwrap_or(usize::MAX);
        findings.sort_by_key(|f| order(f.id));
        Self {
            tier,
            generated_at: crate::clock::fhir_instant(now_us),
            findings,
        }
    }

    /// How many findings have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// True when any check failed (the command's exit status).
    pub fn failed(&self) -> bool {
        self.count(Status::Fail) > 0
    }
}
