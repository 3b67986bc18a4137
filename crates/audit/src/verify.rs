//! The offline verifier: recomputes every chain and checks every checkpoint, stopping at the
//! first breach and naming it precisely.

use std::collections::{BTreeMap, HashMap, VecDeque};

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
    /// The node's last event (its chain's length).
    pub events: u64,
    /// The first event whose hash was recomputed (1 unless verification started after a
    /// checkpoint).
    pub first_verified: u64,
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
    // The whole trail is in memory already: look ahead over all of it, so an event moved
    // anywhere is named as a reorder rather than a gap.
    let mut verifier = TrailVerifier::new(checkpoints, *key).with_lookahead(usize::MAX);
    for e in events {
        verifier.push(e.clone())?;
    }
    verifier.finish()
}

/// A verifier fed one event at a time, in storage order: it holds per node its chain's head,
/// the recomputed heads where its checkpoints end, and a short lookahead (to tell a moved event
/// from a missing one), so a trail of any length verifies in constant memory.
pub struct TrailVerifier {
    key: VerifyingKey,
    lookahead: usize,
    nodes: BTreeMap<String, NodeState>,
}

struct NodeState {
    /// Sorted by `last_seq`.
    checkpoints: Vec<Checkpoint>,
    /// The recomputed chain head at each checkpoint's `last_seq` (filled as events pass).
    heads: HashMap<u64, [u8; 32]>,
    /// The head after event `next - 1`.
    prev: [u8; 32],
    next: u64,
    /// The first event this verification recomputes (1 unless it starts after a checkpoint).
    first: u64,
    pending: VecDeque<StoredEvent>,
}

impl TrailVerifier {
    /// Verify whole trails: every node's chain from its first event.
    pub fn new(checkpoints: &[Checkpoint], key: VerifyingKey) -> Self {
        let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
        for c in checkpoints {
            nodes
                .entry(c.node.clone())
                .or_insert_with(NodeState::new)
                .checkpoints
                .push(c.clone());
        }
        for state in nodes.values_mut() {
            state.checkpoints.sort_by_key(|c| c.last_seq);
        }
        Self {
            key,
            lookahead: REORDER_SEARCH,
            nodes,
        }
    }

    /// How many events of a node are held back to tell a moved event from a missing one.
    pub fn with_lookahead(mut self, events: usize) -> Self {
        self.lookahead = events.max(REORDER_SEARCH);
        self
    }

    /// Verify only what follows each node's last checkpoint made before `time_us`: the
    /// checkpoints themselves are all checked (signatures and chain), and that checkpoint's
    /// signed head stands in for the events before it. Returns, per node with checkpoints, the
    /// sequence number after which its events are to be pushed (0: all of them).
    pub fn start_after_checkpoint_before(&mut self, time_us: i64) -> Vec<(String, u64)> {
        let mut starts = Vec::new();
        for (node, state) in &mut self.nodes {
            let start = state
                .checkpoints
                .iter()
                .rfind(|c| c.time_us < time_us)
                .map(|c| (c.last_seq, c.head_hash));
            if let Some((last_seq, head)) = start {
                state.prev = head;
                state.next = last_seq + 1;
                state.first = last_seq + 1;
            }
            starts.push((node.clone(), state.first - 1));
        }
        starts
    }

    /// The next event in storage order.
    pub fn push(&mut self, event: StoredEvent) -> Result<(), Breach> {
        let lookahead = self.lookahead;
        let state = self
            .nodes
            .entry(event.node.clone())
            .or_insert_with(NodeState::new);
        state.pending.push_back(event);
        while state.pending.len() > lookahead {
            state.step()?;
        }
        Ok(())
    }

    /// Everything pushed: check the rest of each chain and every checkpoint.
    pub fn finish(mut self) -> Result<Report, Breach> {
        let mut nodes = Vec::new();
        for (node, state) in &mut self.nodes {
            while !state.pending.is_empty() {
                state.step()?;
            }
            nodes.push(state.check_checkpoints(node, &self.key)?);
        }
        Ok(Report { nodes })
    }
}

impl NodeState {
    fn new() -> Self {
        Self {
            checkpoints: Vec::new(),
            heads: HashMap::new(),
            prev: GENESIS,
            next: 1,
            first: 1,
            pending: VecDeque::new(),
        }
    }

    /// Recompute the chain over the first pending event, the rest being its lookahead.
    fn step(&mut self) -> Result<(), Breach> {
        let Some(e) = self.pending.pop_front() else {
            return Ok(());
        };
        let node = e.node.as_str();
        let expected = self.next;
        if e.seq != expected {
            let present = self.pending.iter().any(|o| o.seq == expected);
            let breach = if e.seq > expected && !present {
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
        let prev = self.prev;
        let hash = chain_hash(&prev, node, e.seq, e.time_us, &e.body);
        if hash != e.hash {
            // Rows whose contents were swapped: the event that belongs here sits further on.
            let belongs_here = |other: &&StoredEvent| {
                chain_hash(&prev, node, e.seq, other.time_us, &other.body) == other.hash
            };
            if let Some(moved) = self.pending.iter().take(REORDER_SEARCH).find(belongs_here) {
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
        if self
            .checkpoints
            .binary_search_by_key(&e.seq, |c| c.last_seq)
            .is_ok()
        {
            self.heads.insert(e.seq, hash);
        }
        self.prev = hash;
        self.next += 1;
        Ok(())
    }

    fn check_checkpoints(&self, node: &str, key: &VerifyingKey) -> Result<NodeReport, Breach> {
        let trail_ends_at = self.next - 1;
        let mut prev_cp: Option<&Checkpoint> = None;
        let mut signed_up_to = 0;
        for cp in &self.checkpoints {
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
            // A checkpoint before where this verification started is vouched for by its
            // signature and the signed chain of checkpoints after it.
            if cp.last_seq >= self.first && self.heads.get(&cp.last_seq) != Some(&cp.head_hash) {
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
            first_verified: self.first,
            checkpoints: self.checkpoints.len() as u64,
            signed_up_to,
            unsigned_tail: trail_ends_at - signed_up_to,
        })
    }
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

    /// The same trail fed one event at a time through the constant-memory verifier.
    fn stream(events: &[StoredEvent], cps: &[Checkpoint]) -> Result<Report, Breach> {
        let mut v = TrailVerifier::new(cps, key().verifying_key());
        for e in events {
            v.push(e.clone())?;
        }
        v.finish()
    }

    #[test]
    fn streaming_gives_the_whole_trail_verdict() {
        let (events, cps) = trail("a", 300, 40);
        assert_eq!(stream(&events, &cps), check(&events, &cps));
        assert_eq!(stream(&events, &cps).unwrap().nodes[0].signed_up_to, 280);
        let tampered: Vec<Vec<StoredEvent>> = vec![
            {
                let mut e = events.clone();
                e[150].body = b"{}".to_vec();
                e
            },
            {
                let mut e = events.clone();
                e.remove(200);
                e
            },
            {
                let mut e = events.clone();
                e.swap(10, 11);
                e
            },
            {
                let mut e = events.clone();
                let (a, b) = (e[20].clone(), e[21].clone());
                (e[20].body, e[20].hash, e[20].time_us) = (b.body, b.hash, b.time_us);
                (e[21].body, e[21].hash, e[21].time_us) = (a.body, a.hash, a.time_us);
                e
            },
            events[..250].to_vec(),
        ];
        for t in &tampered {
            let verdict = stream(t, &cps);
            assert!(verdict.is_err(), "{verdict:?}");
            assert_eq!(verdict, check(t, &cps));
        }
    }

    #[test]
    fn a_recent_verification_starts_at_the_signed_head_and_still_sees_later_edits() {
        let (mut events, cps) = trail("a", 95, 10);
        // Checkpoints are signed at time_us = their last seq: start after the one ending at 60.
        let recent = |events: &[StoredEvent]| {
            let mut v = TrailVerifier::new(&cps, key().verifying_key());
            let starts = v.start_after_checkpoint_before(61);
            assert_eq!(starts, vec![("a".to_owned(), 60)]);
            for e in events.iter().filter(|e| e.seq > 60) {
                v.push(e.clone())?;
            }
            v.finish()
        };
        let report = recent(&events).unwrap();
        assert_eq!(report.nodes[0].first_verified, 61);
        assert_eq!(report.nodes[0].events, 95);
        assert_eq!(report.nodes[0].signed_up_to, 90);
        // An edit before the start is the full verification's to find, not this one's.
        events[5].body = b"{}".to_vec();
        assert!(recent(&events).is_ok());
        assert!(check(&events, &cps).is_err());
        // One after it is found.
        events[70].body = b"{}".to_vec();
        assert_eq!(
            recent(&events),
            Err(Breach::Altered {
                node: "a".into(),
                seq: 71
            })
        );
        // So is a forged checkpoint anywhere in the chain, and a cut tail.
        let mut forged = cps.clone();
        forged[2].head_hash = [7; 32];
        let mut v = TrailVerifier::new(&forged, key().verifying_key());
        v.start_after_checkpoint_before(61);
        assert!(matches!(v.finish(), Err(Breach::BadSignature { .. })));
        let mut v = TrailVerifier::new(&cps, key().verifying_key());
        v.start_after_checkpoint_before(61);
        assert!(matches!(v.finish(), Err(Breach::Truncated { .. })));
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
