//! The fixed set of rules an alert can name, with their severities. Metric labels come from
//! here only, so no label ever holds a value from a request.

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Self::Critical, Self::High, Self::Medium, Self::Low];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

macro_rules! rules {
    ($($(#[$doc:meta])* $variant:ident => ($id:literal, $severity:ident),)*) => {
        /// A detection rule.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Rule {
            $($(#[$doc])* $variant,)*
        }

        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];

            /// The rule's id: in alerts, the audit trail and the metric label.
            pub const fn id(self) -> &'static str {
                match self {
                    $(Rule::$variant => $id,)*
                }
            }

            /// The severity an alert of this rule has unless its raiser says otherwise.
            pub const fn severity(self) -> Severity {
                match self {
                    $(Rule::$variant => Severity::$severity,)*
                }
            }
        }
    };
}

rules! {
    /// SQL injection in a query value, the path or a JSON body.
    SqlInjection => ("injection.sql", High),
    /// Script (XSS) injection.
    ScriptInjection => ("injection.script", Medium),
    /// `../`, `/etc/passwd` and the like.
    PathTraversal => ("injection.path-traversal", High),
    /// A URL aimed at an internal host or a non-web scheme.
    Ssrf => ("injection.ssrf", High),
    /// Many failed logins for one account.
    FailedLogins => ("credential.failed-logins", Medium),
    /// One address failing logins across many accounts.
    CredentialStuffing => ("credential.stuffing", High),
    /// Many failed enrollment attempts from one address (token guessing).
    EnrollmentGuessing => ("credential.enrollment-guessing", High),
    /// The right password with wrong second-factor codes, again and again, for one account:
    /// someone who knows the password is guessing the code.
    TotpGuessing => ("credential.totp-guessing", High),
    /// One principal reading more distinct patients than the threshold in a window.
    BulkPatients => ("bulk.distinct-patients", High),
    /// One principal running more searches (`$everything` included) than the threshold.
    SearchStorm => ("bulk.search-storm", Medium),
    /// A burst of 404/403 answers to one principal or address.
    Enumeration => ("enumeration.not-found", Medium),
    /// Emergency (break-glass) access was granted.
    BreakGlass => ("access.break-glass", High),
    /// An API key presented from an address outside its `allowed_cidrs`: a leaked key.
    KeyOutsideCidrs => ("access.outside-cidrs", High),
    /// An API key bound to a client certificate presented without it: a copied key.
    KeyWithoutItsCertificate => ("access.client-certificate", High),
    /// A principal active at an hour of the day it is not usually active at (learned baseline).
    UnusualHours => ("access.unusual-hours", Low),
    /// A KEK version was destroyed.
    KeyDestroyed => ("integrity.key-destroyed", Critical),
    /// The OCSP responder says the served TLS certificate is revoked (its key may be in other
    /// hands).
    TlsCertificateRevoked => ("integrity.tls-certificate-revoked", Critical),
    /// A stored ciphertext failed to open, or the audit trail failed verification.
    IntegrityFailure => ("integrity.failure", Critical),
    /// A scheduled backup (or its pruning) failed.
    BackupFailed => ("operational.backup-failed", High),
    /// The server's periodic posture run found failed checks (`carevault doctor` names them).
    PostureFailed => ("operational.posture-failed", Medium),
    /// A scheduled backup could not be copied to an off-site target (after retries).
    OffsiteFailed => ("operational.offsite-failed", High),
    /// The scheduled verification of the newest backup failed.
    BackupVerifyFailed => ("operational.backup-verify-failed", High),
}

impl Rule {
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.id() == id)
    }

    /// Index into fixed per-rule arrays.
    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_read_back() {
        let mut seen = std::collections::HashSet::new();
        for rule in Rule::ALL {
            assert!(seen.insert(rule.id()), "{rule:?}");
            assert_eq!(Rule::from_id(rule.id()), Some(*rule));
            assert!(
                rule.id()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-')
            );
        }
        for s in Severity::ALL {
            assert_eq!(Severity::from_name(s.as_str()), Some(s));
        }
    }
}
