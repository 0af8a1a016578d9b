//! Reading a GUID partition table (UEFI specification 2.10, section 5.3): the primary header
//! at LBA 1 and its entry array, for disks and images with 512-byte or 4096-byte logical
//! blocks (the block size is found from where the header is: byte 512 or byte 4096).
//!
//! Written for hostile input: every size is bounded before anything is allocated (at most
//! [`MAX_ENTRIES`] entries, entry sizes 128 × 2^n up to 4096 bytes, at most [`MAX_TABLE`]
//! bytes of entries), both CRC32s are checked, and errors name byte ranges, never bytes of the
//! disk. Writing stays with the `gpt` crate ([`crate::compose::gpt`]).

use std::io;

use anyhow::{anyhow, bail, Context, Result};

use super::le::{u32_at, u64_at};

/// Logical block sizes looked for, in this order.
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];
/// The most entries read (the specification's minimum array holds 128; Linux reads any).
pub const MAX_ENTRIES: u32 = 4096;
/// The most bytes of entry array read.
pub const MAX_TABLE: u64 = 1 << 20;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER: usize = 92;

/// A partition table as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// The logical block size the table was written for.
    pub sector_size: u64,
    pub disk_guid: uuid::Uuid,
    pub first_usable: u64,
    pub last_usable: u64,
    /// Where the backup header says it is (the disk's last LBA when the table fits the disk).
    pub backup_lba: u64,
    /// The used entries (type GUID not zero), in table order.
    pub entries: Vec<Entry>,
}

/// One used partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 1-based position in the entry array.
    pub number: u32,
    pub type_guid: uuid::Uuid,
    pub guid: uuid::Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    /// The partition name (UTF-16LE, up to the first NUL).
    pub name: String,
}

impl Entry {
    /// Byte offset of the partition on a disk with `sector_size`-byte blocks.
    pub fn offset(&self, sector_size: u64) -> u64 {
        self.first_lba.saturating_mul(sector_size)
    }

    /// Byte length of the partition.
    pub fn size(&self, sector_size: u64) -> u64 {
        // `read` refuses first > last, but an entry may end at LBA 2^64-1: no `+ 1` overflow.
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
            .saturating_mul(sector_size)
    }
}

impl Gpt {
    /// The first used entry named `label`.
    pub fn by_name(&self, label: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == label)
    }
}

/// Read the primary GPT of a disk of `len` bytes through `read_at(offset, buf)` (which fills
/// `buf` or fails), checking both CRC32s.
pub fn read(len: u64, read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>) -> Result<Gpt> {
    read_with(len, read_at, true)
}

/// [`read`] without the CRC32 checks, for a reader that proves the table's bytes another way
/// (`verify` checks them against the signed manifest's digests, and wants to report a
/// changed GPT byte as a content mismatch at its byte range, not as "no table"). Every bound
/// still holds.
pub fn read_unchecked(
    len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<Gpt> {
    read_with(len, read_at, false)
}

fn read_with(
    len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    check_crc: bool,
) -> Result<Gpt> {
    let mut found = None;
    for sector in SECTOR_SIZES {
        if len < 2 * sector {
            continue;
        }
        let mut sig = [0u8; 8];
        read_at(sector, &mut sig)
            .with_context(|| format!("reading bytes {sector}..{}", sector + 8))?;
        if &sig == SIGNATURE {
            found = Some(sector);
            break;
        }
    }
    let Some(sector) = found else {
        bail!(
            "no GPT: no \"EFI PART\" header at byte 512 (512-byte blocks) or byte 4096 \
             (4096-byte blocks)"
        );
    };
    let mut hdr = vec![0u8; sector as usize];
    read_at(sector, &mut hdr)
        .with_context(|| format!("reading the GPT header at bytes {sector}..{}", 2 * sector))?;
    let at = |o: usize| format!("GPT header (bytes {sector}..{}) field at +{o}", 2 * sector);
    let header_size = u32_at(&hdr, 12) as usize;
    if !(MIN_HEADER..=sector as usize).contains(&header_size) {
        bail!(
            "{}: header size {header_size} is outside {MIN_HEADER}..={sector}",
            at(12)
        );
    }
    let stored = u32_at(&hdr, 16);
    let mut copy = hdr[..header_size].to_vec();
    copy[16..20].fill(0);
    let crc = crc32fast::hash(&copy);
    if check_crc && crc != stored {
        bail!(
            "{}: the header's CRC32 is {stored:08x} but its bytes give {crc:08x}: the header is \
             damaged",
            at(16)
        );
    }
    let my_lba = u64_at(&hdr, 24);
    if my_lba != 1 {
        bail!(
            "{}: the primary header says it is at LBA {my_lba}, not 1",
            at(24)
        );
    }
    let backup_lba = u64_at(&hdr, 32);
    let first_usable = u64_at(&hdr, 40);
    let last_usable = u64_at(&hdr, 48);
    let disk_guid = uuid::Uuid::from_bytes_le(hdr[56..72].try_into().unwrap_or([0; 16]));
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80);
    let entry_size = u32_at(&hdr, 84);
    let entries_crc = u32_at(&hdr, 88);
    if first_usable > last_usable {
        bail!(
            "{}: first usable LBA {first_usable} is after the last, {last_usable}",
            at(40)
        );
    }
    if !(128..=4096).contains(&entry_size) || !entry_size.is_power_of_two() {
        bail!(
            "{}: entries of {entry_size} bytes; the specification allows 128 × 2^n",
            at(84)
        );
    }
    if count > MAX_ENTRIES {
        bail!(
            "{}: {count} entries, more than the {MAX_ENTRIES} read",
            at(80)
        );
    }
    let table = u64::from(count) * u64::from(entry_size);
    if table > MAX_TABLE {
        bail!(
            "{}: {table} bytes of entries, more than {MAX_TABLE}",
            at(80)
        );
    }
    let table_at = entries_lba
        .checked_mul(sector)
        .filter(|&o| entries_lba >= 2 && o.checked_add(table).is_some_and(|e| e <= len))
        .ok_or_else(|| {
            anyhow!(
                "{}: the entry array at LBA {entries_lba} ({table} bytes) does not lie on the \
                 {len}-byte disk after the header",
                at(72)
            )
        })?;
    let mut arr = vec![0u8; table as usize];
    read_at(table_at, &mut arr).with_context(|| {
        format!(
            "reading the GPT entries at bytes {table_at}..{}",
            table_at + table
        )
    })?;
    let crc = crc32fast::hash(&arr);
    if check_crc && crc != entries_crc {
        bail!(
            "GPT entry array (bytes {table_at}..{}): CRC32 {crc:08x}, the header says \
             {entries_crc:08x}: the entries are damaged",
            table_at + table
        );
    }
    let mut entries = Vec::new();
    for (i, e) in arr.chunks_exact(entry_size as usize).enumerate() {
        let ty: [u8; 16] = e[..16].try_into().unwrap_or([0; 16]);
        if ty == [0; 16] {
            continue;
        }
        let first_lba = u64_at(e, 32);
        let last_lba = u64_at(e, 40);
        let number = i as u32 + 1;
        if first_lba > last_lba || first_lba < first_usable || last_lba > last_usable {
            bail!(
                "GPT entry {number} (bytes {}..{}): LBAs {first_lba}..={last_lba} lie outside \
                 the usable {first_usable}..={last_usable}",
                table_at + i as u64 * u64::from(entry_size),
                table_at + (i as u64 + 1) * u64::from(entry_size)
            );
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        entries.push(Entry {
            number,
            type_guid: uuid::Uuid::from_bytes_le(ty),
            guid: uuid::Uuid::from_bytes_le(e[16..32].try_into().unwrap_or([0; 16])),
            first_lba,
            last_lba,
            attributes: u64_at(e, 48),
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(Gpt {
        sector_size: sector,
        disk_guid,
        first_usable,
        last_usable,
        backup_lba,
        entries,
    })
}

/// [`read`] from a file (an image or a disk opened as a file).
pub fn read_file(f: &std::fs::File) -> Result<Gpt> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().context("reading the disk's size")?.len();
    read(len, &mut |off, buf| f.read_exact_at(buf, off))
}

impl Gpt {
    /// `(offset, size)` in bytes of the first used entry named `label`.
    pub fn place_of(&self, label: &str) -> Option<(u64, u64)> {
        self.by_name(label)
            .map(|e| (e.offset(self.sector_size), e.size(self.sector_size)))
    }
}

/// [`read`] (or, without `check_crc`, [`read_unchecked`]) from the first bytes of a disk
/// (`head`); the entry array must lie within them.
pub fn read_head(head: &[u8], check_crc: bool) -> Result<Gpt> {
    read_with(
        head.len() as u64,
        &mut |off, buf| {
            let end = (off as usize)
                .checked_add(buf.len())
                .filter(|&e| e <= head.len())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "past the bytes read")
                })?;
            buf.copy_from_slice(&head[off as usize..end]);
            Ok(())
        },
        check_crc,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::gpt::{table, PartSpec, TYPE_EFI};

    fn image(sector: u64) -> Vec<u8> {
        let size = 64 << 20;
        let parts = [
            PartSpec {
                label: "EFI".into(),
                type_guid: TYPE_EFI.parse().unwrap(),
                first_lba: (1 << 20) / sector,
                sectors: (8 << 20) / sector,
            },
            PartSpec {
                label: "META".into(),
                type_guid: crate::compose::gpt::TYPE_LINUX_FS.parse().unwrap(),
                first_lba: (9 << 20) / sector,
                sectors: (1 << 20) / sector,
            },
        ];
        let l = table(size, &[7u8; 16], &parts, sector).unwrap();
        let mut b = vec![0u8; (2 << 20) as usize];
        let mut r = l.reader();
        std::io::Read::read_exact(&mut r, &mut b).unwrap();
        b
    }

    #[test]
    fn reads_what_the_writer_wrote_with_either_block_size() {
        for sector in [512u64, 4096] {
            let b = image(sector);
            let g = read_head(&b, true).unwrap();
            assert_eq!(g.sector_size, sector);
            assert_eq!(g.entries.len(), 2);
            let esp = g.by_name("EFI").unwrap();
            assert_eq!(esp.offset(sector), 1 << 20);
            assert_eq!(esp.size(sector), 8 << 20);
            assert_eq!(g.by_name("META").unwrap().offset(sector), 9 << 20);
            assert_eq!(g.backup_lba, (64 << 20) / sector - 1);
        }
    }

    /// Entries of 256 bytes (128 × 2^1, legal) with valid CRCs read like 128-byte ones: the
    /// table is read by edgeimage's own reader, never by a crate that only knows 128.
    #[test]
    fn wider_entries_are_read() {
        let good = image(512);
        let count = 128usize;
        let mut b = good.clone();
        let entries_at = 1024;
        let mut wide = vec![0u8; count * 256];
        for i in 0..count {
            wide[i * 256..i * 256 + 128]
                .copy_from_slice(&good[entries_at + i * 128..entries_at + (i + 1) * 128]);
        }
        b.resize(b.len().max(entries_at + wide.len()), 0);
        b[entries_at..entries_at + wide.len()].copy_from_slice(&wide);
        b[512 + 84..512 + 88].copy_from_slice(&256u32.to_le_bytes());
        b[512 + 88..512 + 92].copy_from_slice(&crc32fast::hash(&wide).to_le_bytes());
        b[512 + 16..512 + 20].fill(0);
        let c = crc32fast::hash(&b[512..512 + 92]);
        b[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
        let g = read_head(&b, true).unwrap();
        assert_eq!(g.entries.len(), 2);
        assert_eq!(g.by_name("META").unwrap().offset(512), 9 << 20);
        assert_eq!(g.entries[1].number, 2);
    }

    /// Every field a hostile table can lie in is bounded, and the message names bytes, never
    /// their content.
    #[test]
    fn damaged_and_hostile_tables_are_refused() {
        let fix_crc = |b: &mut Vec<u8>| {
            b[512 + 16..512 + 20].fill(0);
            let c = crc32fast::hash(&b[512..512 + 92]);
            b[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
        };
        let good = image(512);
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Damage, &str)> = vec![
            (Box::new(|b| b[512 + 30] ^= 1), "CRC32"),
            (Box::new(|b| b[2 * 512 + 70] ^= 1), "entries are damaged"),
            (
                Box::new(move |b| {
                    b[512 + 84..512 + 88].copy_from_slice(&256u32.to_le_bytes());
                    fix_crc(b);
                }),
                "entries are damaged",
            ),
            (
                Box::new(move |b| {
                    b[512 + 84..512 + 88].copy_from_slice(&200u32.to_le_bytes());
                    fix_crc(b);
                }),
                "128 × 2^n",
            ),
            (
                Box::new(move |b| {
                    b[512 + 80..512 + 84].copy_from_slice(&20_000_000u32.to_le_bytes());
                    fix_crc(b);
                }),
                "more than the 4096 read",
            ),
            (
                Box::new(move |b| {
                    b[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
                    fix_crc(b);
                }),
                "does not lie on the",
            ),
            (
                Box::new(move |b| {
                    b[512 + 12..512 + 16].copy_from_slice(&9999u32.to_le_bytes());
                }),
                "header size 9999",
            ),
            (Box::new(|b| b[512] = b'X'), "no GPT"),
        ];
        for (damage, want) in cases {
            let mut b = good.clone();
            damage(&mut b);
            let e = format!("{:#}", read_head(&b, true).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
        }
        // Without the CRC checks a changed byte still reads, every bound still holds.
        let mut b = good.clone();
        b[2 * 512 + 70] ^= 1;
        assert_eq!(read_head(&b, false).unwrap().entries.len(), 2);
        // An entry ending at the last LBA there is (the header allows it) has a size, and
        // no arithmetic overflows on it.
        let mut b = good.clone();
        b[512 + 48..512 + 56].copy_from_slice(&u64::MAX.to_le_bytes());
        b[2 * 512 + 40..2 * 512 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        let c = crc32fast::hash(&b[1024..1024 + 128 * 128]);
        b[512 + 88..512 + 92].copy_from_slice(&c.to_le_bytes());
        fix_crc(&mut b);
        let g = read_head(&b, true).unwrap();
        assert_eq!(g.entries[0].size(512), u64::MAX);
        // Truncated: the entry array is past the bytes given.
        let e = format!("{:#}", read_head(&good[..1024], true).unwrap_err());
        assert!(e.contains("does not lie on the 1024-byte disk"), "{e}");
    }
}
