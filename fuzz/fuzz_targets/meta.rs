//! META (Talos's ADV): `format::meta::parse` of the input as the partition's bytes, and, since
//! a block is only read when its SHA-256 matches, of a partition whose ADV copy (the first or
//! the second, by bit 0 of the first byte) holds the input's remaining bytes as its records
//! with magics and checksum completed. Bit 1 of the first byte also has
//! `personalize::meta_partition` re-encode that partition with a slot value added.
#![no_main]

use edgeimage::format::meta::{self, BLOCK_LEN, MAGIC1, MAGIC2, META_SIZE};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// SHA-256, then the second magic: the block's trailer.
const TRAILER: usize = 32 + 4;

fn block(records: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_LEN];
    b[..4].copy_from_slice(&MAGIC1.to_be_bytes());
    let n = records.len().min(BLOCK_LEN - 4 - TRAILER);
    b[4..4 + n].copy_from_slice(&records[..n]);
    b[BLOCK_LEN - 4..].copy_from_slice(&MAGIC2.to_be_bytes());
    let sum = Sha256::digest(&b);
    b[BLOCK_LEN - TRAILER..BLOCK_LEN - 4].copy_from_slice(&sum);
    b
}

fuzz_target!(|data: &[u8]| {
    let _ = meta::parse(data);
    let Some((&mode, records)) = data.split_first() else {
        return;
    };
    let mut part = vec![0u8; 2 * BLOCK_LEN];
    let at = if mode & 1 == 0 { 0 } else { BLOCK_LEN };
    part[at..at + BLOCK_LEN].copy_from_slice(&block(records));
    let parsed = meta::parse(&part);
    if mode & 2 != 0 && parsed.copy.is_some() {
        part.resize(META_SIZE as usize, 0);
        let _ = edgeimage::personalize::meta_partition(&part, &[(0x0c, b"site-1".to_vec())]);
    }
});
