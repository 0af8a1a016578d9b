//! The partition table: a protective MBR and primary/backup GPT, written with the `gpt` crate
//! into a sparse in-memory device (only the sectors it writes are kept), then placed into the
//! disk layout, for 512-byte or 4096-byte logical blocks. Reading is [`crate::format::gpt`].
//!
//! GUIDs are deterministic, like Talos's imager: UUID version 8 made from SHA-256 over a 16-byte
//! namespace followed by the label text (`talos-image-disk` for the disk, the partition label
//! for a partition). Talos uses the all-zero namespace, so every Talos image has the same GUIDs;
//! edgeimage uses the first 16 bytes of SHA-256 over `edgeimage:<profile name>`, so disks built
//! from different profiles differ while rebuilds of one profile stay identical.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use anyhow::{anyhow, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;

/// The usual logical block size (4096 when a profile asks for it).
pub const SECTOR: u64 = 512;

/// A partition to create.
#[derive(Clone, Debug)]
pub struct PartSpec {
    pub label: String,
    pub type_guid: uuid::Uuid,
    pub first_lba: u64,
    pub sectors: u64,
}

pub const TYPE_EFI: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const TYPE_LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// UUIDv8 over SHA-256(namespace ‖ label).
pub fn guid_v8(namespace: &[u8; 16], label: &str) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(namespace);
    h.update(label.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b)
}

/// The GUID namespace of a profile.
pub fn namespace(profile_name: &str) -> [u8; 16] {
    let d = Sha256::digest(format!("edgeimage:{profile_name}").as_bytes());
    let mut n = [0u8; 16];
    n.copy_from_slice(&d[..16]);
    n
}

pub const DISK_LABEL: &str = "talos-image-disk";

/// A device of a given size that keeps only the sectors written to it.
#[derive(Debug)]
struct SparseDisk {
    len: u64,
    pos: u64,
    sectors: BTreeMap<u64, [u8; SECTOR as usize]>,
}

impl Read for SparseDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() && self.pos < self.len {
            let lba = self.pos / SECTOR;
            let within = (self.pos % SECTOR) as usize;
            let n = (buf.len() - done).min(SECTOR as usize - within);
            match self.sectors.get(&lba) {
                Some(s) => buf[done..done + n].copy_from_slice(&s[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
            self.pos += n as u64;
        }
        Ok(done)
    }
}

impl Write for SparseDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            if self.pos >= self.len {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "past the end of the disk",
                ));
            }
            let lba = self.pos / SECTOR;
            let within = (self.pos % SECTOR) as usize;
            let n = (buf.len() - done).min(SECTOR as usize - within);
            let s = self.sectors.entry(lba).or_insert([0u8; SECTOR as usize]);
            s[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
            self.pos += n as u64;
        }
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDisk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = crate::layout::seek_target(self.pos, self.len, to)?;
        Ok(self.pos)
    }
}

/// The written sectors of the partition table (protective MBR, primary and backup GPT) as a
/// layout of the whole disk, for `block`-byte logical blocks (512 or 4096; `parts` in those
/// blocks). GUIDs derive from the namespace `ns` (see the module docs).
pub fn table(disk_size: u64, ns: &[u8; 16], parts: &[PartSpec], block: u64) -> Result<Layout> {
    let disk_guid = guid_v8(ns, DISK_LABEL);
    let err = |e: &dyn std::fmt::Display| anyhow!("writing the partition table: {e}");
    let lb = match block {
        512 => gpt::disk::LogicalBlockSize::Lb512,
        4096 => gpt::disk::LogicalBlockSize::Lb4096,
        other => {
            anyhow::bail!("a logical block size of {other} bytes is not supported: use 512 or 4096")
        }
    };
    let sectors = disk_size / block;
    let mut dev = SparseDisk {
        len: disk_size,
        pos: 0,
        sectors: BTreeMap::new(),
    };
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(0xffff_ffff));
    mbr.overwrite_lba0(&mut dev).map_err(|e| err(&e))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(dev, Some(disk_guid))
        .map_err(|e| err(&e))?;
    let mut map = BTreeMap::new();
    for (i, p) in parts.iter().enumerate() {
        let part = gpt::partition::Partition {
            part_type_guid: gpt::partition_types::Type {
                guid: p.type_guid,
                os: gpt::partition_types::OperatingSystem::None,
            },
            part_guid: guid_v8(ns, &p.label),
            first_lba: p.first_lba,
            last_lba: p.first_lba + p.sectors - 1,
            flags: 0,
            name: p.label.clone(),
        };
        map.insert(i as u32 + 1, part);
    }
    disk.update_partitions(map).map_err(|e| err(&e))?;
    let dev = disk.write().map_err(|e| err(&e))?;
    let mut l = Layout::new(disk_size);
    // Coalesce runs of consecutive written sectors.
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    let mut next = u64::MAX;
    for (lba, s) in &dev.sectors {
        if *lba != next && !run.is_empty() {
            l.put_bytes(run_start * SECTOR, std::mem::take(&mut run))?;
        }
        if run.is_empty() {
            run_start = *lba;
        }
        run.extend_from_slice(s);
        next = lba + 1;
    }
    if !run.is_empty() {
        l.put_bytes(run_start * SECTOR, run)?;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talos_guid_scheme() {
        // With the all-zero namespace this is Talos's scheme: stable, version 8, RFC variant.
        let g = guid_v8(&[0u8; 16], DISK_LABEL);
        assert_eq!(g.get_version_num(), 8);
        assert_eq!(g.as_bytes()[8] & 0xc0, 0x80);
        let d = Sha256::digest([&[0u8; 16][..], DISK_LABEL.as_bytes()].concat());
        assert_eq!(&g.as_bytes()[..6], &d[..6]);
        assert_ne!(
            guid_v8(&namespace("a"), "EFI"),
            guid_v8(&namespace("b"), "EFI")
        );
    }
}
