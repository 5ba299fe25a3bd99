//! The hash chain: each record's hash is SHA-256 over a leaf prefix (0x00, domain separation
//! as in RFC 6962), the previous record's hash, and the record's canonical bytes (every field
//! in a fixed order, each length-prefixed), so changing, removing, inserting or swapping any
//! record breaks every hash after it.

use sha2::{Digest, Sha256};

/// One audit record (without its sequence until stored): what the chain hashes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub sequence: i64,
    pub event_id: String,
    pub time: i64,
    pub source: String,
    pub action: String,
    pub actor_id: String,
    pub actor_name: String,
    pub target_id: String,
    pub target_name: String,
    pub role_id: String,
    pub role_name: String,
    pub scope: String,
    pub justification: String,
    pub ticket: String,
    pub outcome: String,
    pub trace_id: String,
    pub payload_json: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Record {
    /// The event it records, in the catalogue (by its action's short name); None for a type
    /// no service publishes.
    pub fn event_type(&self) -> Option<pim_runtime::events::EventType> {
        pim_runtime::events::EventType::parse(self.action.rsplit('.').next().unwrap_or_default())
    }
}

pub const GENESIS: [u8; 32] = [0u8; 32];
const LEAF: u8 = 0x00;

/// The record's canonical bytes (without its hashes).
pub fn canonical(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&r.sequence.to_be_bytes());
    out.extend_from_slice(&r.time.to_be_bytes());
    for field in [
        &r.event_id,
        &r.source,
        &r.action,
        &r.actor_id,
        &r.actor_name,
        &r.target_id,
        &r.target_name,
        &r.role_id,
        &r.role_name,
        &r.scope,
        &r.justification,
        &r.ticket,
        &r.outcome,
        &r.trace_id,
        &r.payload_json,
    ] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

pub fn hash(prev: &[u8], r: &Record) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([LEAF]);
    h.update(prev);
    h.update(canonical(r));
    h.finalize().to_vec()
}

/// Checks records given in sequence order, starting after `prev` (the hash of the record
/// before the first, or the genesis); returns the sequence of the first record that breaks.
pub fn first_broken<'a>(
    mut prev: Vec<u8>,
    mut expected_sequence: i64,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<Vec<u8>, i64> {
    for r in records {
        if r.sequence != expected_sequence || r.prev_hash != prev || r.hash != hash(&prev, r) {
            return Err(expected_sequence.min(r.sequence));
        }
        prev = r.hash.clone();
        expected_sequence += 1;
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Record> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|sequence| {
                let mut r = Record {
                    sequence,
                    event_id: format!("e{sequence}"),
                    action: "a".into(),
                    ..Record::default()
                };
                r.prev_hash = prev.clone();
                r.hash = hash(&prev, &r);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_any_change_names_the_first_broken_record() {
        let records = chain(5);
        assert!(first_broken(GENESIS.to_vec(), 1, &records).is_ok());

        let mut changed = records.clone();
        changed[2].justification = "edited".into();
        assert_eq!(first_broken(GENESIS.to_vec(), 1, &changed), Err(3));

        let mut removed = records.clone();
        removed.remove(1);
        assert_eq!(first_broken(GENESIS.to_vec(), 1, &removed), Err(2));

        let mut swapped = records.clone();
        let (a, b) = (swapped[1].event_id.clone(), swapped[3].event_id.clone());
        swapped[1].event_id = b;
        swapped[3].event_id = a;
        assert_eq!(first_broken(GENESIS.to_vec(), 1, &swapped), Err(2));

        // The last record renumbered (a gap that would pass for pruning) and re-hashed by
        // someone who can write the table: its links are whole, its sequence is not.
        let mut renumbered = records.clone();
        let last = renumbered.last_mut().expect("five records");
        last.sequence = 9;
        last.hash = hash(&last.prev_hash, last);
        assert_eq!(first_broken(GENESIS.to_vec(), 1, &renumbered), Err(5));
    }

    #[test]
    fn fields_cannot_shift_into_each_other() {
        let a = Record {
            actor_id: "ab".into(),
            actor_name: "c".into(),
            ..Record::default()
        };
        let b = Record {
            actor_id: "a".into(),
            actor_name: "bc".into(),
            ..Record::default()
        };
        assert_ne!(hash(&GENESIS, &a), hash(&GENESIS, &b));
    }
}
