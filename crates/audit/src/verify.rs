//! The offline verifier: recomputes every chain and checks every checkpoint, stopping at the
//! first breach and naming it precisely.

use std::collections::{BTreeMap, HashSet};

use ed25519_dalek::VerifyingKey;

use crate::{Checkpoint, GENESIS, StoredEvent, chain_hash};

/// How far ahead the verifier looks for an event moved out of its place.
const REORDER_SEARCH: usize = 64;

/// The first thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Breach {
    #[error("node {node}: event {seq} was altered (its content does not match its hash)")]
    Altered { node: String, seq: u64 },
    #[error("node {node}: event {missing} is missing (gap before event {found})")]
    Gap {
        node: String,
        missing: u64,
        found: u64,
    },
    #[error("node {node}: events are out of order: expected event {expected}, found event {found}")]
    Reorder {
        node: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "node {node}: the trail was truncated: a checkpoint covers events up to {signed_up_to} but the trail ends at {trail_ends_at}"
    )]
    Truncated {
        node: String,
        signed_up_to: u64,
        trail_ends_at: u64,
    },
    #[error("node {node}: the checkpoint for events {first_seq}..={last_seq} has a bad signature")]
    BadSignature {
        node: String,
        first_seq: u64,
        last_seq: u64,
    },
    #[error(
        "node {node}: events {first_seq}..={last_seq} do not match their signed checkpoint (altered and re-hashed)"
    )]
    CheckpointMismatch {
        node: String,
        first_seq: u64,
        last_seq: u64,
    },
    #[error(
        "node {node}: the checkpoint for events {first_seq}..={last_seq} does not follow the previous checkpoint (one was removed or forged)"
    )]
    BrokenCheckpointChain {
        node: String,
        first_seq: u64,
        last_seq: u64,
    },
}

/// What was verified, per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport {
    pub node: String,
    pub events: u64,
    pub checkpoints: u64,
    /// The last event covered by a valid signature.
    pub signed_up_to: u64,
    /// Events after the last checkpoint: chained, but not yet signed.
    pub unsigned_tail: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub nodes: Vec<NodeReport>,
}

/// Verify `events` (in storage order) and `checkpoints` against the audit public key.
pub fn verify(
    events: &[StoredEvent],
    checkpoints: &[Checkpoint],
    key: &VerifyingKey,
) -> Result<Report, Breach> {
    let mut by_node: BTreeMap<&str, Vec<&StoredEvent>> = BTreeMap::new();
    for e in events {
        by_node.entry(e.node.as_str()).or_default().push(e);
    }
    let mut cps_by_node: BTreeMap<&str, Vec<&Checkpoint>> = BTreeMap::new();
    for c in checkpoints {
        by_node.entry(c.node.as_str()).or_default();
        cps_by_node.entry(c.node.as_str()).or_default().push(c);
    }
    let mut nodes = Vec::new();
    for (node, events) in by_node {
        let mut cps = cps_by_node.remove(node).unwrap_or_default();
        cps.sort_by_key(|c| c.last_seq);
        nodes.push(verify_node(node, &events, &cps, key)?);
    }
    Ok(Report { nodes })
}

fn verify_node(
    node: &str,
    events: &[&StoredEvent],
    cps: &[&Checkpoint],
    key: &VerifyingKey,
) -> Result<NodeReport, Breach> {
    let present: HashSet<u64> = events.iter().map(|e| e.seq).collect();
    // heads[i] = the recomputed hash after event i+1.
    let mut heads: Vec<[u8; 32]> = Vec::with_capacity(events.len());
    let mut prev = GENESIS;
    for (i, e) in events.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.seq != expected {
            let breach = if e.seq > expected && !present.contains(&expected) {
                Breach::Gap {
                    node: node.to_owned(),
                    missing: expected,
                    found: e.seq,
                }
            } else {
                Breach::Reorder {
                    node: node.to_owned(),
                    expected,
                    found: e.seq,
                }
            };
            return Err(breach);
        }
        let hash = chain_hash(&prev, node, e.seq, e.time_us, &e.body);
        if hash != e.hash {
            // Rows whose contents were swapped: the event that belongs here sits further on.
            let belongs_here = |other: &&&StoredEvent| {
                chain_hash(&prev, node, e.seq, other.time_us, &other.body) == other.hash
            };
            if let Some(moved) = events
                .iter()
                .skip(i + 1)
                .take(REORDER_SEARCH)
                .find(belongs_here)
            {
                return Err(Breach::Reorder {
                    node: node.to_owned(),
                    expected: e.seq,
                    found: moved.seq,
                });
            }
            return Err(Breach::Altered {
                node: node.to_owned(),
                seq: e.seq,
            });
        }
        heads.push(hash);
        prev = hash;
    }
    let trail_ends_at = events.len() as u64;

    let mut prev_cp: Option<&Checkpoint> = None;
    let mut signed_up_to = 0;
    for cp in cps {
        let range =
            |b: fn(String, u64, u64) -> Breach| b(node.to_owned(), cp.first_seq, cp.last_seq);
        if !cp.verify_signature(key) {
            return Err(range(|node, first_seq, last_seq| Breach::BadSignature {
                node,
                first_seq,
                last_seq,
            }));
        }
        let follows = match prev_cp {
            Some(p) => {
                cp.prev_signature.as_deref() == Some(p.signature.as_slice())
                    && cp.first_seq == p.last_seq + 1
            }
            None => cp.prev_signature.is_none() && cp.first_seq == 1,
        };
        if !follows || cp.last_seq < cp.first_seq {
            return Err(range(|node, first_seq, last_seq| {
                Breach::BrokenCheckpointChain {
                    node,
                    first_seq,
                    last_seq,
                }
            }));
        }
        if cp.last_seq > trail_ends_at {
            return Err(Breach::Truncated {
                node: node.to_owned(),
                signed_up_to: cp.last_seq,
                trail_ends_at,
            });
        }
        let head = usize::try_from(cp.last_seq - 1)
            .ok()
            .and_then(|i| heads.get(i));
        if head != Some(&cp.head_hash) {
            return Err(range(|node, first_seq, last_seq| {
                Breach::CheckpointMismatch {
                    node,
                    first_seq,
                    last_seq,
                }
            }));
        }
        signed_up_to = cp.last_seq;
        prev_cp = Some(cp);
    }
    Ok(NodeReport {
        node: node.to_owned(),
        events: trail_ends_at,
        checkpoints: cps.len() as u64,
        signed_up_to,
        unsigned_tail: trail_ends_at - signed_up_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventRecord;
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42u8; 32])
    }

    /// A trail of `n` events on `node` with a checkpoint every `every` events.
    fn trail(node: &str, n: u64, every: u64) -> (Vec<StoredEvent>, Vec<Checkpoint>) {
        let mut events = Vec::new();
        let mut cps: Vec<Checkpoint> = Vec::new();
        let mut prev = GENESIS;
        let mut first = 1;
        for seq in 1..=n {
            let body = EventRecord {
                request_id: format!("r{seq}"),
                action: "read".into(),
                status: 200,
                ..EventRecord::default()
            }
            .canonical();
            let hash = chain_hash(&prev, node, seq, seq as i64 * 10, &body);
            events.push(StoredEvent {
                node: node.into(),
                seq,
                time_us: seq as i64 * 10,
                body,
                hash,
            });
            prev = hash;
            if seq % every == 0 {
                let prev_sig = cps.last().map(|c| c.signature.clone());
                cps.push(Checkpoint::sign(
                    &key(),
                    node,
                    first,
                    seq,
                    hash,
                    seq as i64,
                    prev_sig,
                ));
                first = seq + 1;
            }
        }
        (events, cps)
    }

    fn check(events: &[StoredEvent], cps: &[Checkpoint]) -> Result<Report, Breach> {
        verify(events, cps, &key().verifying_key())
    }

    #[test]
    fn an_intact_trail_verifies() {
        let (mut events, mut cps) = trail("a", 25, 10);
        let (eb, cb) = trail("b", 5, 5);
        events.extend(eb);
        cps.extend(cb);
        let report = check(&events, &cps).unwrap();
        assert_eq!(report.nodes.len(), 2);
        assert_eq!(report.nodes[0].events, 25);
        assert_eq!(report.nodes[0].signed_up_to, 20);
        assert_eq!(report.nodes[0].unsigned_tail, 5);
        assert_eq!(report.nodes[1].signed_up_to, 5);
    }

    #[test]
    fn an_edited_field_is_named() {
        let (mut events, cps) = trail("a", 25, 10);
        let text = String::from_utf8(events[6].body.clone())
            .unwrap()
            .replace("\"status\":200", "\"status\":201");
        events[6].body = text.into_bytes();
        assert_eq!(
            check(&events, &cps),
            Err(Breach::Altered {
                node: "a".into(),
                seq: 7
            })
        );
    }

    #[test]
    fn an_edit_with_rehashed_chain_breaks_the_checkpoint() {
        let (mut events, cps) = trail("a", 25, 10);
        events[6].body = b"{}".to_vec();
        let mut prev = events[5].hash;
        for e in events.iter_mut().skip(6) {
            e.hash = chain_hash(&prev, "a", e.seq, e.time_us, &e.body);
            prev = e.hash;
        }
        assert_eq!(
            check(&events, &cps),
            Err(Breach::CheckpointMismatch {
                node: "a".into(),
                first_seq: 1,
                last_seq: 10
            })
        );
    }

    #[test]
    fn a_deleted_event_is_a_gap() {
        let (mut events, cps) = trail("a", 25, 10);
        events.remove(11);
        assert_eq!(
            check(&events, &cps),
            Err(Breach::Gap {
                node: "a".into(),
                missing: 12,
                found: 13
            })
        );
    }

    #[test]
    fn swapped_events_are_a_reorder() {
        let (mut events, cps) = trail("a", 25, 10);
        events.swap(3, 4);
        assert_eq!(
            check(&events, &cps),
            Err(Breach::Reorder {
                node: "a".into(),
                expected: 4,
                found: 5
            })
        );
    }

    #[test]
    fn swapped_row_contents_are_a_reorder() {
        let (mut events, cps) = trail("a", 25, 10);
        // Keep the sequence numbers in place (they are the rows' keys); swap what the rows hold.
        let (a, b) = (events[3].clone(), events[4].clone());
        events[3] = StoredEvent { seq: 4, ..b };
        events[4] = StoredEvent { seq: 5, ..a };
        assert_eq!(
            check(&events, &cps),
            Err(Breach::Reorder {
                node: "a".into(),
                expected: 4,
                found: 5
            })
        );
    }

    #[test]
    fn a_cut_tail_is_truncation() {
        let (mut events, cps) = trail("a", 25, 10);
        events.truncate(15);
        assert_eq!(
            check(&events, &cps),
            Err(Breach::Truncated {
                node: "a".into(),
                signed_up_to: 20,
                trail_ends_at: 15
            })
        );
    }

    #[test]
    fn forged_or_removed_checkpoints_are_named() {
        let (events, cps) = trail("a", 25, 10);
        let mut forged = cps.clone();
        forged[1] = Checkpoint::sign(
            &SigningKey::from_bytes(&[1u8; 32]),
            "a",
            11,
            20,
            forged[1].head_hash,
            20,
            Some(forged[0].signature.clone()),
        );
        assert_eq!(
            check(&events, &forged),
            Err(Breach::BadSignature {
                node: "a".into(),
                first_seq: 11,
                last_seq: 20
            })
        );
        let mut tampered = cps.clone();
        tampered[0].last_seq = 9;
        assert!(matches!(
            check(&events, &tampered),
            Err(Breach::BadSignature { .. })
        ));
        let removed = vec![cps[1].clone()];
        assert!(matches!(
            check(&events, &removed),
            Err(Breach::BrokenCheckpointChain { .. })
        ));
    }

    #[test]
    fn export_round_trips_byte_for_byte() {
        let (events, cps) = trail("a", 12, 5);
        let mut text = String::new();
        for e in &events {
            text.push_str(&serde_json::to_string(&crate::ExportLine::event(e).unwrap()).unwrap());
            text.push('\n');
        }
        for c in &cps {
            text.push_str(&serde_json::to_string(&crate::ExportLine::checkpoint(c)).unwrap());
            text.push('\n');
        }
        let (e2, c2) = crate::parse_export(&text).unwrap();
        assert_eq!(e2, events);
        assert_eq!(c2, cps);
        assert!(check(&e2, &c2).is_ok());
        assert!(crate::parse_export("{\"kind\":\"nope\"}").is_err());
    }
}
