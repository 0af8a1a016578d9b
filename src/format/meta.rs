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
//!
//! Capacity: Talos refuses to set a tag when `SetTagBytes` (same file) counts more than
//! `DataLength` (256 KiB − 40) bytes: it starts from 20 bytes ("magic + checksum"), adds
//! `len + 8` for every tag already set and the new value's length. A META that edgeimage
//! fills must leave Talos room for the tags it writes itself later (the upgrade fallback
//! label at every `talosctl upgrade`, a staged upgrade's image and options), so
//! [`check_capacity`] counts as Talos does and keeps [`TALOS_RESERVE`] bytes free.

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;

/// Size of the META partition (Talos finds it by label *and* this size).
pub const META_SIZE: u64 = 1 << 20;

/// One META value: a key (tag) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaValue {
    pub key: u8,
    pub value: Vec<u8>,
}

/// The keys Talos defines (`pkg/machinery/meta/constants.go`, the same in v1.8 to v1.14), and
/// why a build may not set them (`None`: it may). Talos writes 0x06-0x09 during upgrades and
/// disk encryption and 0x11 when its imager makes a dual-boot image; 0x0f (`UUIDOverride`)
/// and 0x10 (`UniqueMachineToken`) identify one machine, so one image written to many must not
/// carry them.
pub const TALOS_KEYS: [(u8, &str, Option<&str>); 12] = [
    (0x06, "Upgrade", Some("written by Talos during upgrades")),
    (
        0x07,
        "StagedUpgradeImageRef",
        Some("written by Talos during upgrades"),
    ),
    (
        0x08,
        "StagedUpgradeInstallOptions",
        Some("written by Talos during upgrades"),
    ),
    (
        0x09,
        "StateEncryptionConfig",
        Some("written by Talos for disk encryption"),
    ),
    (0x0a, "MetalNetworkPlatformConfig", None),
    (0x0b, "DownloadURLCode", None),
    (0x0c, "UserReserved1", None),
    (0x0d, "UserReserved2", None),
    (0x0e, "UserReserved3", None),
    (
        0x0f,
        "UUIDOverride",
        Some("one machine's identity, which an image written to many disks would give them all"),
    ),
    (
        0x10,
        "UniqueMachineToken",
        Some("one machine's identity, which an image written to many disks would give them all"),
    ),
    (
        0x11,
        "DiskImageBootloader",
        Some("written by Talos's imager for dual-boot images"),
    ),
];

/// Talos's name of `key`, if it names it.
pub fn key_name(key: u8) -> Option<&'static str> {
    TALOS_KEYS.iter().find(|k| k.0 == key).map(|k| k.1)
}

/// Why a build may not set `key`, if it may not: Talos's own keys, and the ADV's end marker
/// and reserved tags (0-5, `internal/pkg/meta/internal/adv`).
pub fn refuse_key(key: u8) -> Option<String> {
    const USE: &str = "use 0x0a (network), 0x0b or 0x0c-0x0e (user keys)";
    if key <= 5 {
        return Some(format!(
            "key 0x{key:02x} is reserved by Talos's META format (0x00 ends the records, \
             0x01-0x05 are reserved); {USE}"
        ));
    }
    TALOS_KEYS
        .iter()
        .find(|k| k.0 == key)
        .and_then(|(_, name, why)| {
            why.map(|why| format!("key 0x{key:02x} is reserved for Talos ({name}: {why}); {USE}"))
        })
}

/// GPT name of the META partition (Talos finds it by this label and its size).
pub const META_LABEL: &str = "META";
/// Length of one ADV copy.
pub const BLOCK_LEN: usize = 256 * 1024;
/// Magic at the start of an ADV copy.
pub const MAGIC1: u32 = 0x5a4b_3c2d;
/// Magic at the end of an ADV copy.
pub const MAGIC2: u32 = 0xa5b4_c3d2;
const TRAILER: usize = 36;

/// Bytes available for records in one block: Talos's `DataLength` (`Length - 40`).
pub const DATA_LENGTH: usize = BLOCK_LEN - 4 - TRAILER;

/// What `SetTagBytes` counts before any tag: "magic + checksum".
pub const SET_TAG_BASE: usize = 20;

/// Room left for the tags Talos writes itself (0x06 the upgrade fallback label, 0x07 a staged
/// upgrade's image reference, 0x08 its install options: short strings and a small JSON).
pub const TALOS_RESERVE: usize = 4096;

/// The most record bytes (`len + 8` per value) a build may use: what `SetTagBytes` allows,
/// less [`TALOS_RESERVE`].
pub const CAPACITY: usize = DATA_LENGTH - SET_TAG_BASE - TALOS_RESERVE;

/// What Talos's `SetTagBytes` counts for a META holding `values`: 20, plus `len + 8` per tag.
pub fn talos_used(values: &[MetaValue]) -> usize {
    SET_TAG_BASE + values.iter().map(|v| 8 + v.value.len()).sum::<usize>()
}

/// Refuse values that would leave Talos less than [`TALOS_RESERVE`] bytes to set its own tags
/// (`SetTagBytes` fails above `DataLength`, and an upgrade then cannot record its fallback).
pub fn check_capacity(values: &[MetaValue]) -> Result<()> {
    let used = talos_used(values);
    if used + TALOS_RESERVE > DATA_LENGTH {
        bail!(
            "META values take {used} of META's {DATA_LENGTH} bytes as Talos counts them \
             (SetTagBytes: 20 + value length + 8 per key), leaving less than the {TALOS_RESERVE} \
             bytes Talos needs to record an upgrade; shorten the values by at least {} bytes",
            used + TALOS_RESERVE - DATA_LENGTH
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

    /// Counted as Talos's `SetTagBytes` counts (`internal/pkg/meta/internal/adv/talos/
    /// talos.go`): 20 bytes to start, `len + 8` per tag, at most `DataLength` = 262104; a
    /// full META keeps 4096 bytes for Talos's own upgrade tags.
    #[test]
    fn capacity_is_counted_as_talos_counts_it() {
        assert_eq!(DATA_LENGTH, 256 * 1024 - 40);
        assert_eq!(CAPACITY, 262104 - 20 - 4096);
        let big = mv(0x0c, &vec![b'x'; CAPACITY - 8]);
        assert_eq!(talos_used(std::slice::from_ref(&big)), 262104 - 4096);
        block(std::slice::from_ref(&big)).unwrap();
        // Talos can still set its upgrade tag on that META: simulate SetTagBytes.
        let label = b"Talos-v1.12.5-stackit.v1.7.1.efi";
        assert!(talos_used(std::slice::from_ref(&big)) + label.len() <= DATA_LENGTH);
        // One byte more is refused, with the numbers and what to do.
        let e = block(&[mv(0x0c, &vec![b'x'; CAPACITY - 7])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("262104") && e.contains("SetTagBytes") && e.contains("by at least 1 bytes"),
            "{e}"
        );
        let e = block(&[big, mv(0x0d, b"")]).unwrap_err().to_string();
        assert!(e.contains("shorten"), "{e}");
    }

    #[test]
    fn talos_keys_are_refused_user_keys_are_not() {
        for k in [0u8, 1, 5, 6, 7, 8, 9, 0x0f, 0x10, 0x11] {
            assert!(refuse_key(k).is_some(), "0x{k:02x}");
        }
        for k in [0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x12, 0xff] {
            assert!(refuse_key(k).is_none(), "0x{k:02x}");
        }
        let e = refuse_key(0x10).unwrap();
        assert!(
            e.contains("UniqueMachineToken") && e.contains("0x0c-0x0e"),
            "{e}"
        );
        assert_eq!(key_name(0x06), Some("Upgrade"));
    }
}
