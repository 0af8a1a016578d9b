//! The Talos META partition: exactly 1 MiB holding Talos's ADV ("authenticated data vault").
//!
//! Format (Talos `internal/pkg/meta/internal/adv/talos`): two copies of a 256 KiB block, at
//! offsets 0 and 262144. All integers are big-endian. A block is
//!
//! | offset          | content                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | 0               | u32 magic `0x5a4b3c2d`                                         |
//! | 4 …             | records `{u32 tag, u32 length, value}`; tag 0 ends the list    |
//! | block_len − 36  | SHA-256 of the whole block computed with these 32 bytes zeroed |
//! | block_len − 4   | u32 magic `0xa5b4c3d2`                                         |
//!
//! A reader takes copy 1 if it is valid, else copy 2, else treats META as empty. Records are
//! written in ascending tag order, so the bytes are reproducible. The rest of the partition
//! (the second half, where a legacy syslinux ADV may live in the last 1 KiB) is zeros.

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::profile::{MetaValue, META_SIZE};

/// GPT name of the META partition (Talos finds it by this label and its size).
pub const META_LABEL: &str = "META";
/// Length of one ADV copy.
pub const BLOCK_LEN: usize = 256 * 1024;
/// Magic at the start of an ADV copy.
pub const MAGIC1: u32 = 0x5a4b_3c2d;
/// Magic at the end of an ADV copy.
pub const MAGIC2: u32 = 0xa5b4_c3d2;
const TRAILER: usize = 36;

/// Bytes available for records in one block.
pub const CAPACITY: usize = BLOCK_LEN - 4 - TRAILER;

/// Refuse values that do not fit one ADV block.
pub fn check_capacity(values: &[MetaValue]) -> Result<()> {
    let used: usize = values.iter().map(|v| 8 + v.value.len()).sum();
    if used > CAPACITY {
        bail!(
            "META values need {used} bytes but one META copy holds {CAPACITY}; shorten the values"
        );
    }
    Ok(())
}

/// One ADV block with these values.
pub fn block(values: &[MetaValue]) -> Result<Vec<u8>> {
    check_capacity(values)?;
    let mut b = vec![0u8; BLOCK_LEN];
    b[..4].copy_from_slice(&MAGIC1.to_be_bytes());
    let mut sorted: Vec<&MetaValue> = values.iter().collect();
    sorted.sort_by_key(|v| v.key);
    let mut off = 4;
    for v in sorted {
        b[off..off + 4].copy_from_slice(&u32::from(v.key).to_be_bytes());
        b[off + 4..off + 8].copy_from_slice(&(v.value.len() as u32).to_be_bytes());
        b[off + 8..off + 8 + v.value.len()].copy_from_slice(&v.value);
        off += 8 + v.value.len();
    }
    b[BLOCK_LEN - 4..].copy_from_slice(&MAGIC2.to_be_bytes());
    let sum = Sha256::digest(&b);
    b[BLOCK_LEN - TRAILER..BLOCK_LEN - 4].copy_from_slice(&sum);
    Ok(b)
}

/// The META partition: both copies, then mapped zeros to 1 MiB (stale bytes from a previous
/// use of the disk must not survive there).
pub fn partition(values: &[MetaValue]) -> Result<Layout> {
    let blk: std::sync::Arc<[u8]> = block(values)?.into();
    let mut l = Layout::new(META_SIZE);
    l.put_bytes(0, blk.clone())?;
    l.put_bytes(BLOCK_LEN as u64, blk)?;
    l.put_zeros(2 * BLOCK_LEN as u64, META_SIZE - 2 * BLOCK_LEN as u64)?;
    Ok(l)
}

/// Parse one block; `None` if its magics or checksum are wrong.
pub fn parse_block(b: &[u8]) -> Option<Vec<(u32, Vec<u8>)>> {
    if b.len() != BLOCK_LEN
        || b[..4] != MAGIC1.to_be_bytes()
        || b[BLOCK_LEN - 4..] != MAGIC2.to_be_bytes()
    {
        return None;
    }
    let mut copy = b.to_vec();
    copy[BLOCK_LEN - TRAILER..BLOCK_LEN - 4].fill(0);
    if Sha256::digest(&copy)[..] != b[BLOCK_LEN - TRAILER..BLOCK_LEN - 4] {
        return None;
    }
    let data = &b[..BLOCK_LEN - TRAILER];
    let mut out = Vec::new();
    let mut off = 4;
    while data.len() - off >= 8 {
        let tag = u32::from_be_bytes(data[off..off + 4].try_into().ok()?);
        let len = u32::from_be_bytes(data[off + 4..off + 8].try_into().ok()?) as usize;
        if tag == 0 {
            break;
        }
        let start = off + 8;
        let end = start.checked_add(len).filter(|&e| e <= data.len())?;
        out.push((tag, data[start..end].to_vec()));
        off = end;
    }
    Some(out)
}

/// What a META partition holds, the way Talos reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaContents {
    /// Which copy was used (1 or 2), or `None` when both are invalid (Talos: empty META).
    pub copy: Option<u8>,
    /// `(tag, value)` records in the order they are stored.
    pub values: Vec<(u32, Vec<u8>)>,
}

/// Read META from the partition's bytes (at least the first 512 KiB).
pub fn parse(part: &[u8]) -> MetaContents {
    for (i, range) in [(1u8, 0..BLOCK_LEN), (2u8, BLOCK_LEN..2 * BLOCK_LEN)] {
        if let Some(values) = part.get(range).and_then(parse_block) {
            return MetaContents {
                copy: Some(i),
                values,
            };
        }
    }
    MetaContents {
        copy: None,
        values: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(key: u8, v: &[u8]) -> MetaValue {
        MetaValue {
            key,
            value: v.to_vec(),
        }
    }

    #[test]
    fn round_trip_both_copies() {
        let vals = [mv(0x0c, b"two"), mv(0x0a, b"one")];
        let part = partition(&vals).unwrap();
        assert_eq!(part.len(), 1 << 20);
        let bytes = part.to_vec().unwrap();
        // Layout of copy 1, byte by byte: magic, then tag 0x0a first (sorted).
        assert_eq!(&bytes[..4], &[0x5a, 0x4b, 0x3c, 0x2d]);
        assert_eq!(
            &bytes[4..15],
            &[0, 0, 0, 0x0a, 0, 0, 0, 3, b'o', b'n', b'e']
        );
        assert_eq!(&bytes[BLOCK_LEN - 4..BLOCK_LEN], &[0xa5, 0xb4, 0xc3, 0xd2]);
        assert_eq!(bytes[..BLOCK_LEN], bytes[BLOCK_LEN..2 * BLOCK_LEN]);
        assert!(bytes[2 * BLOCK_LEN..].iter().all(|&b| b == 0));
        let m = parse(&bytes);
        assert_eq!(m.copy, Some(1));
        assert_eq!(
            m.values,
            vec![(0x0a, b"one".to_vec()), (0x0c, b"two".to_vec())]
        );
        // Whole partition mapped: stale data must be overwritten.
        assert_eq!(part.mapped_len(), 1 << 20);
    }

    #[test]
    fn empty_meta_is_valid_and_empty() {
        let bytes = partition(&[]).unwrap().to_vec().unwrap();
        let m = parse(&bytes);
        assert_eq!(m.copy, Some(1));
        assert!(m.values.is_empty());
    }

    #[test]
    fn corrupt_copy_falls_back_then_empties() {
        let mut bytes = partition(&[mv(0x0c, b"v")]).unwrap().to_vec().unwrap();
        bytes[10] ^= 1;
        assert_eq!(parse(&bytes).copy, Some(2));
        bytes[BLOCK_LEN + 10] ^= 1;
        assert_eq!(
            parse(&bytes),
            MetaContents {
                copy: None,
                values: vec![]
            }
        );
    }

    #[test]
    fn capacity_is_enforced() {
        let big = mv(0x0c, &vec![b'x'; CAPACITY - 8]);
        block(std::slice::from_ref(&big)).unwrap();
        let e = block(&[big, mv(0x0d, b"")]).unwrap_err().to_string();
        assert!(e.contains("shorten"), "{e}");
    }
}
