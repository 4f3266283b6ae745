//! The audit chain verifier (`ward::payments::audit::verify_chain`).
//!
//! A chain built from records of the input's choosing (any text in any field) verifies with its
//! head. Then one change of the input's choosing (edit a hashed field, drop a record, swap two,
//! cut the tail, move the head) must be detected, unless it changed nothing that is hashed.
//! Arbitrary record lists never panic.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ward::payments::audit::{chain_hash, verify_chain, AuditRecord, GENESIS_HASH};

#[derive(Debug, Arbitrary, Clone)]
struct Fields {
    id: String,
    actor: String,
    action: String,
    resource_type: String,
    resource_id: String,
    client_ip: String,
    request_id: String,
    details: String,
    created_at: i64,
}

#[derive(Debug, Arbitrary)]
enum Change {
    Field { at: u8, field: u8, text: String, number: i64 },
    Drop { at: u8 },
    Swap { a: u8, b: u8 },
    CutTail { n: u8 },
    HeadSeq { seq: i64 },
    HeadHash { hash: String },
    Rehash { at: u8, text: String },
}

#[derive(Debug, Arbitrary)]
struct Input {
    tenant: String,
    lane: u8,
    records: Vec<Fields>,
    change: Change,
}

fn build(tenant: &str, lane: i64, fields: &[Fields]) -> Vec<AuditRecord> {
    let mut prev = GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let mut r = AuditRecord {
            pos: i as i64,
            id: f.id.clone(),
            tenant_id: tenant.to_owned(),
            lane,
            seq: i as i64 + 1,
            created_at: f.created_at,
            actor: f.actor.clone(),
            action: f.action.clone(),
            resource_type: f.resource_type.clone(),
            resource_id: f.resource_id.clone(),
            client_ip: f.client_ip.clone(),
            request_id: f.request_id.clone(),
            details: f.details.clone(),
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        r.hash = chain_hash(&prev, &r);
        prev = r.hash.clone();
        out.push(r);
    }
    out
}

fn hashed(r: &AuditRecord) -> impl PartialEq + std::fmt::Debug {
    (
        (r.id.clone(), r.tenant_id.clone(), r.lane, r.seq, r.created_at, r.actor.clone()),
        (r.action.clone(), r.resource_type.clone(), r.resource_id.clone(), r.client_ip.clone()),
        (r.request_id.clone(), r.details.clone(), r.prev_hash.clone(), r.hash.clone()),
    )
}

fuzz_target!(|i: Input| {
    let lane = i64::from(i.lane % 8);
    let mut records = build(&i.tenant, lane, &i.records);
    let (head_seq, head_hash) = (
        records.len() as i64,
        records.last().map_or(GENESIS_HASH.to_owned(), |r| r.hash.clone()),
    );
    assert_eq!(verify_chain(&i.tenant, lane, &records, head_seq, &head_hash), Ok(()));
    let original: Vec<_> = records.iter().map(hashed).collect();
    let (mut seq, mut hash) = (head_seq, head_hash.clone());
    let n = records.len();
    match i.change {
        Change::Field { at, field, text, number } if n > 0 => {
            let r = &mut records[usize::from(at) % n];
            match field % 14 {
                0 => r.id = text,
                1 => r.tenant_id = text,
                2 => r.lane = number,
                3 => r.seq = number,
                4 => r.created_at = number,
                5 => r.actor = text,
                6 => r.action = text,
                7 => r.resource_type = text,
                8 => r.resource_id = text,
                9 => r.client_ip = text,
                10 => r.request_id = text,
                11 => r.details = text,
                12 => r.prev_hash = text,
                _ => r.hash = text,
            }
        }
        Change::Drop { at } if n > 0 => {
            records.remove(usize::from(at) % n);
        }
        Change::Swap { a, b } if n > 0 => records.swap(usize::from(a) % n, usize::from(b) % n),
        Change::CutTail { n: k } => records.truncate(n.saturating_sub(usize::from(k))),
        Change::HeadSeq { seq: s } => seq = s,
        Change::HeadHash { hash: h } => hash = h,
        // An edit whose author also recomputes the record's own hash: the next record's link,
        // or the head, must still give it away.
        Change::Rehash { at, text } if n > 0 => {
            let r = &mut records[usize::from(at) % n];
            r.details = text;
            r.hash = chain_hash(&r.prev_hash, r);
        }
        _ => {}
    }
    let verdict = verify_chain(&i.tenant, lane, &records, seq, &hash);
    let unchanged = seq == head_seq
        && hash == head_hash
        && records.iter().map(hashed).collect::<Vec<_>>() == original;
    if unchanged {
        assert_eq!(verdict, Ok(()), "an untouched chain failed");
    } else {
        assert!(verdict.is_err(), "a changed chain verified");
    }
});
