//! The core's one error type. Each variant is something a client can be told (mapped to a status
//! and an OperationOutcome in `http::error`, the only place that knows HTTP) or an internal
//! failure whose detail goes to the log and never to the client.

use carevault_fhir::Issue;

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
    #[error("forbidden")]
    Forbidden,
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
