//! CareVault's tamper-evident audit trail: the event record, the hash chain that links events,
//! Ed25519-signed checkpoints, the JSON Lines export, and the offline verifier.
//!
//! Each node keeps its own chain. Event `n` of a node stores the SHA-256 of
//! (`previous hash`, node, `n`, time, the event's canonical bytes); a checkpoint signs the head
//! hash of a range of events and the previous checkpoint's signature. Anyone with the public
//! key can then check, offline, that no event was altered, removed, reordered or appended out of
//! band, and that no signed range was cut off.
//!
//! ```
//! use carevault_audit::{Checkpoint, EventRecord, GENESIS, StoredEvent, chain_hash, verify};
//! use ed25519_dalek::SigningKey;
//!
//! let key = SigningKey::from_bytes(&[7u8; 32]);
//! let mut events = Vec::new();
//! let mut prev = GENESIS;
//! for seq in 1..=3u64 {
//!     let body = EventRecord { action: "read".into(), status: 200, ..EventRecord::default() }.canonical();
//!     let hash = chain_hash(&prev, "node-1", seq, 1_000 + seq as i64, &body);
//!     events.push(StoredEvent { node: "node-1".into(), seq, time_us: 1_000 + seq as i64, body, hash });
//!     prev = hash;
//! }
//! let checkpoint = Checkpoint::sign(&key, "node-1", 1, 3, prev, 2_000, None);
//! let report = verify(&events, &[checkpoint], &key.verifying_key()).unwrap();
//! assert_eq!(report.nodes[0].events, 3);
//! ```
#![forbid(unsafe_code)]

mod action;
mod verify;

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use action::AuditAction;
pub use verify::{Breach, NodeReport, Report, TrailVerifier, verify};

/// The hash that precedes a node's first event.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What one audit event says. No PHI content: free text (search values, attempted usernames)
/// is carried only as keyed HMAC digests. Field order is fixed, so the JSON encoding is
/// canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub request_id: String,
    /// The principal's id, or `anonymous`.
    pub principal: String,
    pub roles: Vec<String>,
    /// `session`, `api-key`, `enrollment-token`, `password+totp`, `password+recovery-code`,
    /// `local` (CLI on the server machine) or `none`.
    pub auth_method: String,
    pub client_ip: String,
    /// A FHIR interaction (`read`, `create`, ...) or an admin/identity action (`auth.login`, ...).
    pub action: String,
    pub method: String,
    /// The route template, e.g. `/fhir/{rtype}/{id}`.
    pub route: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub resource_version: Option<u32>,
    /// Patient compartments touched (`Patient/123`).
    pub patients: Vec<String>,
    pub patient_count: u32,
    /// `success`, `failure` (client error) or `error` (server error).
    pub outcome: String,
    pub status: u16,
    /// The policies that decided the request.
    pub policy_ids: Vec<String>,
    pub break_glass_reason: Option<String>,
    /// Query parameters: name and HMAC-SHA-256 digest of the value.
    pub query: Vec<(String, String)>,
    /// Other details, as (key, value) pairs; values are digests where they could carry PHI.
    pub detail: Vec<(String, String)>,
    /// The environment's tier (`production`, `staging`, `development`). Absent from events
    /// written before tiers existed, whose encoding is therefore unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_tier: Option<String>,
}

impl EventRecord {
    /// The canonical bytes that the chain hashes and the store keeps.
    pub fn canonical(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn outcome_for(status: u16) -> &'static str {
        match status {
            0..=399 => "success",
            400..=499 => "failure",
            _ => "error",
        }
    }
}

/// One event as stored: its place in the node's chain and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub node: String,
    pub seq: u64,
    pub time_us: i64,
    pub body: Vec<u8>,
    pub hash: [u8; 32],
}

/// The chain link: binds the event to everything before it on its node.
pub fn chain_hash(prev: &[u8; 32], node: &str, seq: u64, time_us: i64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"carevault-audit-v1\0");
    h.update(prev);
    h.update((node.len() as u64).to_be_bytes());
    h.update(node.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(time_us.to_be_bytes());
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    h.finalize().into()
}

/// A signed statement: on `node`, events `first_seq..=last_seq` end in `head_hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub node: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_hash: [u8; 32],
    pub time_us: i64,
    /// The signature of the node's previous checkpoint (None for its first).
    pub prev_signature: Option<Vec<u8>>,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    fn signed_bytes(
        node: &str,
        first_seq: u64,
        last_seq: u64,
        head_hash: &[u8; 32],
        time_us: i64,
        prev_signature: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut m = b"carevault-audit-checkpoint-v1\0".to_vec();
        m.extend_from_slice(&(node.len() as u64).to_be_bytes());
        m.extend_from_slice(node.as_bytes());
        m.extend_from_slice(&first_seq.to_be_bytes());
        m.extend_from_slice(&last_seq.to_be_bytes());
        m.extend_from_slice(head_hash);
        m.extend_from_slice(&time_us.to_be_bytes());
        match prev_signature {
            Some(sig) => {
                m.push(1);
                m.extend_from_slice(&(sig.len() as u64).to_be_bytes());
                m.extend_from_slice(sig);
            }
            None => m.push(0),
        }
        m
    }

    pub fn sign(
        key: &SigningKey,
        node: &str,
        first_seq: u64,
        last_seq: u64,
        head_hash: [u8; 32],
        time_us: i64,
        prev_signature: Option<Vec<u8>>,
    ) -> Self {
        let msg = Self::signed_bytes(
            node,
            first_seq,
            last_seq,
            &head_hash,
            time_us,
            prev_signature.as_deref(),
        );
        let signature = key.sign(&msg).to_bytes().to_vec();
        Self {
            node: node.to_owned(),
            first_seq,
            last_seq,
            head_hash,
            time_us,
            prev_signature,
            signature,
        }
    }

    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        let Ok(sig) = Signature::from_slice(&self.signature) else {
            return false;
        };
        let msg = Self::signed_bytes(
            &self.node,
            self.first_seq,
            self.last_seq,
            &self.head_hash,
            self.time_us,
            self.prev_signature.as_deref(),
        );
        key.verify(&msg, &sig).is_ok()
    }
}

/// The public key as operators handle it: lowercase hex of the 32 bytes.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuditError> {
    let bytes = hex::decode(text.trim()).map_err(|_| AuditError::BadPublicKey)?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| AuditError::BadPublicKey)?;
    VerifyingKey::from_bytes(&arr).map_err(|_| AuditError::BadPublicKey)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the public key must be 64 hexadecimal characters (an Ed25519 key)")]
    BadPublicKey,
    #[error("export line {line}: {problem}")]
    BadExport { line: usize, problem: String },
}

/// One line of a JSON Lines export: an event (its stored bytes verbatim under `body`) or a
/// checkpoint, told apart by `kind`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum ExportLine {
    Event(EventLine),
    Checkpoint(CheckpointLine),
}

#[derive(Serialize, Deserialize)]
pub struct EventLine {
    pub kind: String,
    pub node: String,
    pub seq: u64,
    pub time_us: i64,
    pub hash: String,
    /// The stored canonical bytes, verbatim.
    pub body: Box<serde_json::value::RawValue>,
}

#[derive(Serialize, Deserialize)]
pub struct CheckpointLine {
    pub kind: String,
    pub node: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_hash: String,
    pub time_us: i64,
    pub prev_signature: Option<String>,
    pub signature: String,
}

#[derive(Deserialize)]
struct LineKind {
    kind: String,
}

impl ExportLine {
    pub fn event(e: &StoredEvent) -> Option<Self> {
        let text = String::from_utf8(e.body.clone()).ok()?;
        Some(ExportLine::Event(EventLine {
            kind: "event".into(),
            node: e.node.clone(),
            seq: e.seq,
            time_us: e.time_us,
            hash: hex::encode(e.hash),
            body: serde_json::value::RawValue::from_string(text).ok()?,
        }))
    }

    pub fn checkpoint(c: &Checkpoint) -> Self {
        ExportLine::Checkpoint(CheckpointLine {
            kind: "checkpoint".into(),
            node: c.node.clone(),
            first_seq: c.first_seq,
            last_seq: c.last_seq,
            head_hash: hex::encode(c.head_hash),
            time_us: c.time_us,
            prev_signature: c.prev_signature.as_ref().map(hex::encode),
            signature: hex::encode(&c.signature),
        })
    }
}

/// Read an export back into events (in file order) and checkpoints.
pub fn parse_export(text: &str) -> Result<(Vec<StoredEvent>, Vec<Checkpoint>), AuditError> {
    let mut events = Vec::new();
    let mut checkpoints = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: &str| AuditError::BadExport {
            line: i + 1,
            problem: problem.to_owned(),
        };
        let kind: LineKind =
            serde_json::from_str(line).map_err(|_| bad("not an audit export line"))?;
        let hash32 = |h: &str| -> Result<[u8; 32], AuditError> {
            hex::decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("a hash is not 32 bytes of hex"))
        };
        match kind.kind.as_str() {
            "event" => {
                let e: EventLine =
                    serde_json::from_str(line).map_err(|_| bad("malformed event line"))?;
                events.push(StoredEvent {
                    node: e.node,
                    seq: e.seq,
                    time_us: e.time_us,
                    body: e.body.get().as_bytes().to_vec(),
                    hash: hash32(&e.hash)?,
                });
            }
            "checkpoint" => {
                let c: CheckpointLine =
                    serde_json::from_str(line).map_err(|_| bad("malformed checkpoint line"))?;
                checkpoints.push(Checkpoint {
                    node: c.node,
                    first_seq: c.first_seq,
                    last_seq: c.last_seq,
                    head_hash: hash32(&c.head_hash)?,
                    time_us: c.time_us,
                    prev_signature: match c.prev_signature {
                        Some(s) => {
                            Some(hex::decode(s).map_err(|_| bad("prev_signature is not hex"))?)
                        }
                        None => None,
                    },
                    signature: hex::decode(c.signature).map_err(|_| bad("signature is not hex"))?,
                });
            }
            _ => return Err(bad("unknown kind")),
        }
    }
    Ok((events, checkpoints))
}
