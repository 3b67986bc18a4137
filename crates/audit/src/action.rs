//! Every action an audit event can record, typed once. The strings are the trail's vocabulary
//! (stored in every event, searched with `GET /audit/events?action=`), so they never change.

macro_rules! audit_actions {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What an audited request or CLI action did.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AuditAction {
            $($(#[$doc])* $variant,)*
        }

        impl AuditAction {
            /// Every action, in declaration order.
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$variant,)*];

            /// The name the trail records.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => $name,)*
                }
            }

            /// The action a recorded name stands for.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(AuditAction::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

audit_actions! {
    // Identity: enrollment, login, sessions.
    EnrollStart => "auth.enroll.start",
    EnrollFinish => "auth.enroll.finish",
    Login => "auth.login",
    Logout => "auth.logout",
    Whoami => "auth.whoami",
    // Accounts (administrators).
    UserList => "admin.user.list",
    UserCreate => "admin.user.create",
    UserDisable => "admin.user.disable",
    UserEnable => "admin.user.enable",
    UserUnlock => "admin.user.unlock",
    UserReset => "admin.user.reset",
    /// An account recovered on the server machine with the CLI.
    UserRecover => "admin.recover",
    /// A repair by `carevault doctor --fix` (a file mode tightened, a certificate renewed).
    PostureRepair => "admin.posture.repair",
    // Policies.
    PolicyList => "admin.policy.list",
    PolicyPut => "admin.policy.put",
    PolicyRead => "admin.policy.read",
    PolicyDelete => "admin.policy.delete",
    // API keys: service keys (administrators) and a user's own sub-accounts.
    ServiceKeyList => "admin.key.list",
    ServiceKeyCreate => "admin.key.create",
    ServiceKeyRevoke => "admin.key.revoke",
    OwnKeyList => "auth.key.list",
    OwnKeyCreate => "auth.key.create",
    OwnKeyRevoke => "auth.key.revoke",
    BreakGlass => "auth.break-glass",
    // Keys: KEK versions, data-key rotation, crypto-shredding.
    KekStatus => "admin.kek.status",
    KekRotate => "admin.kek.rotate",
    KekMinVersion => "admin.kek.min-version",
    KekDestroy => "admin.kek.destroy",
    /// The background re-wrap after a KEK rotation finished.
    KekRewrapFinished => "key.rewrap.finished",
    DataKeyRotate => "admin.dek.rotate",
    /// The background data-key rotation finished.
    DataKeyRotateFinished => "key.rotate-data.finished",
    ShredApprove => "admin.patient.approve-shred",
    Shred => "admin.patient.shred",
    // Monitoring and the trail itself.
    MetricsRead => "metrics.read",
    AuditRead => "audit.read",
    /// A security alert raised by detection (written by the alert queue, not a request).
    SecurityAlert => "security.alert",
    /// An automatic response to an alert (an address blocked), written by the alert queue.
    SecurityResponse => "security.response",
    /// `GET /alerts`.
    AlertList => "alerts.list",
    /// `GET /alerts/{id}`.
    AlertRead => "alerts.read",
    /// `POST /alerts/{id}/ack`: its event is the acknowledgement.
    AlertAck => "alerts.ack",
    // FHIR interactions.
    Capabilities => "capabilities",
    Transaction => "transaction",
    Batch => "batch",
    /// A Bundle POSTed before its type is known.
    Bundle => "bundle",
    /// `GET [base]?_type=...`: one search across several types.
    SearchSystem => "search-system",
    SearchType => "search-type",
    SearchTypePost => "search-type-post",
    SearchCompartment => "search-compartment",
    Everything => "everything",
    /// `GET [base]/$export`: a system-level bulk export started.
    ExportStart => "export.start",
    /// `GET [base]/Patient/$export`: a Patient-level bulk export started.
    ExportStartPatient => "export.start.patient",
    /// `GET [base]/Group/{id}/$export`: a Group-level bulk export started.
    ExportStartGroup => "export.start.group",
    /// `POST [base]/$export` (parameters in the query or a `Parameters` body): a system-level
    /// bulk export started.
    ExportStartPost => "export.start.post",
    /// `POST [base]/Patient/$export`: a Patient-level bulk export started.
    ExportStartPatientPost => "export.start.patient.post",
    /// `POST [base]/Group/{id}/$export`: a Group-level bulk export started.
    ExportStartGroupPost => "export.start.group.post",
    /// A bulk export's status polled (`GET /export/{job}`).
    ExportStatus => "export.status",
    /// A bulk export cancelled or its files deleted (`DELETE /export/{job}`).
    ExportCancel => "export.cancel",
    /// One of a bulk export's files downloaded.
    ExportDownload => "export.download",
    /// A bulk export finished in the background: names every patient it holds.
    ExportComplete => "export.complete",
    /// A bulk export failed or was interrupted in the background.
    ExportFailed => "export.failed",
    Create => "create",
    Read => "read",
    Vread => "vread",
    Update => "update",
    /// `PUT [type]?criteria`.
    ConditionalUpdate => "update-conditional",
    /// `PATCH [type]/[id]` (JSON Patch).
    Patch => "patch",
    Delete => "delete",
    /// `DELETE [type]?criteria`.
    ConditionalDelete => "delete-conditional",
    /// `POST [type]/$validate`: nothing is stored.
    Validate => "validate",
    /// `GET [base]/_history`: every type's history the caller may read.
    HistorySystem => "history-system",
    HistoryType => "history-type",
    HistoryInstance => "history-instance",
    // The environment.
    EnvironmentInit => "environment.init",
    /// The server renewed its generated TLS certificate (close to expiry).
    TlsCertificateRenewed => "environment.tls.renewed",
    /// The server loaded a changed TLS certificate and key without a restart.
    TlsCertificateReloaded => "environment.tls.reloaded",
    // Requests that reached no handler.
    UnknownEndpoint => "unknown-endpoint",
    UnsupportedMethod => "unsupported-method",
    /// A browser's CORS preflight (`OPTIONS`), answered before routing.
    CorsPreflight => "cors-preflight",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_one_distinct_name_that_reads_back() {
        let mut names = std::collections::HashSet::new();
        for action in AuditAction::ALL {
            assert!(names.insert(action.as_str()), "{action:?} repeats a name");
            assert_eq!(AuditAction::from_name(action.as_str()), Some(*action));
        }
        assert_eq!(AuditAction::from_name("no.such.action"), None);
    }
}
