//! The core's one error type. Each variant is something a client can be told or an internal
//! failure whose detail goes to the log and never to the client. [`Error::describe`] is the one
//! map from an error to its status, OperationOutcome issue code and message: the REST API, Bundle
//! entry responses and audit events all use it (`carevault-http` turns it into responses).

use carevault_fhir::Issue;
use carevault_fhir::outcome::{self, Severity};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed input; the message is ours, never an echo of the input.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The resource does not conform to the FHIR R4 schema.
    #[error("resource failed validation")]
    Unprocessable(Vec<Issue>),
    #[error("authentication required")]
    Unauthorized,
    /// The right password with a TOTP code already used (by enrollment or an earlier login).
    #[error("authenticator code already used")]
    CodeAlreadyUsed,
    #[error("forbidden")]
    Forbidden,
    /// Refused for a reason the caller can fix in their own request (never one that tells
    /// anything of other records).
    #[error("forbidden: {0}")]
    ForbiddenBecause(String),
    #[error("not found")]
    NotFound,
    /// The resource was deleted (at this version).
    #[error("gone")]
    Gone,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Over a size limit (a Bundle with too many entries).
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// A dependency (database, key provider) is unavailable; retrying later may succeed.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed authentication on decryption: tampering or corruption.
    #[error("integrity failure: {0}")]
    Integrity(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Detail of an internal failure, for the log only: never sent to a client.
#[derive(Clone, Debug)]
pub struct ErrorDetail {
    pub kind: &'static str,
    pub detail: String,
}

/// How an error is told to a client: status, OperationOutcome issue code, a message that never
/// echoes input, and (for internal failures) the detail for the log.
#[derive(Debug)]
pub struct Described {
    /// The HTTP status, which FHIR also uses for a Bundle entry's `response.status`.
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<ErrorDetail>,
}

impl Error {
    /// The one map from an error to what a client is told.
    pub fn describe(&self) -> Described {
        let plain = |status, code, message: &str| Described {
            status,
            code,
            message: message.to_owned(),
            detail: None,
        };
        let logged = |status, code, message: &str, kind, detail: &String| Described {
            status,
            code,
            message: message.to_owned(),
            detail: Some(ErrorDetail {
                kind,
                detail: detail.clone(),
            }),
        };
        match self {
            Error::BadRequest(msg) => plain(400, "invalid", msg),
            Error::Unprocessable(_) => plain(422, "invalid", "the resource failed validation"),
            Error::Unauthorized => plain(401, "login", "authentication failed or required"),
            Error::CodeAlreadyUsed => plain(
                401,
                "login",
                "this code was already used; wait for the next one",
            ),
            Error::Forbidden => plain(403, "forbidden", "you are not allowed to do this"),
            Error::ForbiddenBecause(msg) => plain(403, "forbidden", msg),
            Error::NotFound => plain(404, "not-found", "not found"),
            Error::Gone => plain(410, "deleted", "the resource has been deleted"),
            Error::Conflict(msg) => plain(409, "conflict", msg),
            Error::PreconditionFailed(msg) => plain(412, "conflict", msg),
            Error::TooLarge(msg) => plain(413, "too-long", msg),
            Error::TooManyRequests { .. } => {
                plain(429, "throttled", "too many requests; retry later")
            }
            Error::Unavailable(detail) => logged(
                503,
                "transient",
                "the service is temporarily unavailable; nothing was changed",
                "unavailable",
                detail,
            ),
            Error::Integrity(detail) => logged(
                500,
                "exception",
                "stored data failed an integrity check",
                "integrity_failure",
                detail,
            ),
            Error::Internal(detail) => {
                logged(500, "exception", "internal error", "internal_error", detail)
            }
        }
    }

    /// The status this error answers (REST responses, Bundle entries and audit events).
    pub fn status(&self) -> u16 {
        self.describe().status
    }

    /// The OperationOutcome that tells this error (validation errors list every issue).
    pub fn outcome(&self) -> serde_json::Value {
        match self {
            Error::Unprocessable(issues) => outcome::from_issues(issues),
            other => {
                let d = other.describe();
                outcome::single(Severity::Error, d.code, &d.message)
            }
        }
    }
}

impl From<carevault_store::StoreError> for Error {
    fn from(e: carevault_store::StoreError) -> Self {
        use carevault_store::StoreError as S;
        match e {
            S::Conflict => Error::Conflict("the record changed concurrently".into()),
            S::AlreadyExists => Error::Conflict("already exists".into()),
            S::Unavailable(detail) => Error::Unavailable(format!("database: {detail}")),
            // A data key rotated between sealing and committing (in a transaction Bundle,
            // which is not re-sealed): retrying succeeds.
            S::StaleKey => Error::Unavailable("a data key was rotated concurrently".into()),
            other => Error::Internal(format!("database: {other}")),
        }
    }
}

impl From<carevault_crypto::CryptoError> for Error {
    fn from(e: carevault_crypto::CryptoError) -> Self {
        use carevault_crypto::CryptoError as C;
        match e {
            C::Unauthentic | C::MalformedHeader => Error::Integrity(e.to_string()),
            C::KeyStore(_) | C::UnknownKekVersion(_) => {
                Error::Unavailable(format!("key provider: {e}"))
            }
            other => Error::Internal(other.to_string()),
        }
    }
}
