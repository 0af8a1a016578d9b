//! Just enough PE/COFF to check EFI binaries and to turn `systemd-stub.efi` into a UKI.
//!
//! Offsets from the PE/COFF specification: DOS header `e_lfanew` at 0x3c, `PE\0\0`, the
//! 20-byte COFF header, the optional header (PE32 `0x10b` or PE32+ `0x20b`), then the section
//! table (40 bytes per section).

use anyhow::{bail, Result};

pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
pub const SCN_MEM_READ: u32 = 0x4000_0000;
pub const SECTION_HEADER_LEN: usize = 40;

/// One section header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_ptr: u32,
    pub characteristics: u32,
}

impl Section {
    /// End of the section in memory (the larger of its virtual and raw size).
    pub fn virtual_end(&self) -> u64 {
        u64::from(self.virtual_address) + u64::from(self.virtual_size.max(self.raw_size))
    }

    /// End of its data in the file.
    pub fn raw_end(&self) -> u64 {
        u64::from(self.raw_ptr) + u64::from(self.raw_size)
    }

    /// The 40-byte header.
    pub fn to_bytes(&self) -> [u8; SECTION_HEADER_LEN] {
        let mut b = [0u8; SECTION_HEADER_LEN];
        let n = self.name.as_bytes();
        b[..n.len().min(8)].copy_from_slice(&n[..n.len().min(8)]);
        b[8..12].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.virtual_address.to_le_bytes());
        b[16..20].copy_from_slice(&self.raw_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.raw_ptr.to_le_bytes());
        b[36..40].copy_from_slice(&self.characteristics.to_le_bytes());
        b
    }
}

/// Parsed headers of a PE image, with the offsets needed to patch them.
#[derive(Clone, Debug)]
pub struct PeHeaders {
    pub machine: u16,
    /// Offset of the COFF header (just after `PE\0\0`).
    pub coff: usize,
    /// Offset of the optional header.
    pub opt: usize,
    pub pe32_plus: bool,
    pub subsystem: u16,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_headers: u32,
    pub size_of_image: u32,
    /// Offset of the section table.
    pub section_table: usize,
    pub sections: Vec<Section>,
    /// Offset of the data directory array and its length.
    pub data_dirs: usize,
    pub data_dir_count: u32,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// EFI application subsystem.
pub const SUBSYSTEM_EFI_APPLICATION: u16 = 10;

impl PeHeaders {
    /// Parse the headers from the start of a file (`b` must hold at least the headers).
    /// Errors say what is wrong, for messages like "<asset>: not a PE file: …".
    pub fn parse(b: &[u8]) -> Result<PeHeaders> {
        if b.get(..2) != Some(b"MZ") {
            bail!("not a PE file (no \"MZ\" signature at offset 0)");
        }
        let Some(lfanew) = u32_at(b, 0x3c) else {
            bail!("not a PE file (truncated DOS header: {} bytes)", b.len());
        };
        let pe = lfanew as usize;
        if b.get(pe..pe + 4) != Some(b"PE\0\0") {
            bail!("not a PE file (no \"PE\\0\\0\" signature at offset {pe:#x})");
        }
        let coff = pe + 4;
        let trunc = |what: &str| anyhow::anyhow!("truncated PE file: the {what} is cut off");
        let machine = u16_at(b, coff).ok_or_else(|| trunc("COFF header"))?;
        let nsec = u16_at(b, coff + 2).ok_or_else(|| trunc("COFF header"))? as usize;
        let opt_size = u16_at(b, coff + 16).ok_or_else(|| trunc("COFF header"))? as usize;
        let opt = coff + 20;
        let magic = u16_at(b, opt).ok_or_else(|| trunc("optional header"))?;
        let pe32_plus = match magic {
            0x20b => true,
            0x10b => false,
            m => bail!("not a PE image: optional header magic {m:#x} (expected 0x10b or 0x20b)"),
        };
        let (dirs_count_off, dirs_off) = if pe32_plus { (108, 112) } else { (92, 96) };
        if opt_size < dirs_off {
            bail!("PE optional header is only {opt_size} bytes");
        }
        let get = |off: usize| u32_at(b, opt + off).ok_or_else(|| trunc("optional header"));
        let section_alignment = get(32)?;
        let file_alignment = get(36)?;
        let size_of_image = get(56)?;
        let size_of_headers = get(60)?;
        let subsystem = u16_at(b, opt + 68).ok_or_else(|| trunc("optional header"))?;
        let data_dir_count = get(dirs_count_off)?;
        if !file_alignment.is_power_of_two()
            || !section_alignment.is_power_of_two()
            || file_alignment < 512
            || section_alignment < file_alignment
        {
            bail!(
                "PE alignments are invalid (SectionAlignment {section_alignment:#x}, FileAlignment {file_alignment:#x})"
            );
        }
        let section_table = opt + opt_size;
        let mut sections = Vec::with_capacity(nsec.min(96));
        for i in 0..nsec {
            let s = section_table + i * SECTION_HEADER_LEN;
            let h = b
                .get(s..s + SECTION_HEADER_LEN)
                .ok_or_else(|| trunc("section table"))?;
            let name_bytes = &h[..8];
            let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(8);
            sections.push(Section {
                name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                virtual_size: u32_at(h, 8).unwrap_or(0),
                virtual_address: u32_at(h, 12).unwrap_or(0),
                raw_size: u32_at(h, 16).unwrap_or(0),
                raw_ptr: u32_at(h, 20).unwrap_or(0),
                characteristics: u32_at(h, 36).unwrap_or(0),
            });
        }
        Ok(PeHeaders {
            machine,
            coff,
            opt,
            pe32_plus,
            subsystem,
            section_alignment,
            file_alignment,
            size_of_headers,
            size_of_image,
            section_table,
            sections,
            data_dirs: opt + dirs_off,
            data_dir_count,
        })
    }

    /// Offset of the CheckSum field.
    pub fn checksum_offset(&self) -> usize {
        self.opt + 64
    }

    /// Find a section by name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Incremental PE checksum (the algorithm of `CheckSumMappedFile`): the one's-complement sum
/// of the file's 16-bit little-endian words, with the CheckSum field read as zero, plus the
/// file length. Feed the bytes in order; chunks may have any length.
#[derive(Default)]
pub struct Checksum {
    sum: u64,
    len: u64,
    /// A dangling first byte of a word split across chunks.
    odd: Option<u8>,
}

impl Checksum {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if let Some(lo) = self.odd.take() {
            match data.split_first() {
                Some((&hi, rest)) => {
                    self.sum += u64::from(u16::from_le_bytes([lo, hi]));
                    data = rest;
                }
                None => {
                    self.odd = Some(lo);
                    return;
                }
            }
        }
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.sum += u64::from(u16::from_le_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.odd = Some(*last);
        }
        // Fold early so the sum never overflows, whatever the input size.
        if self.sum > (1 << 48) {
            self.sum = (self.sum & 0xffff_ffff) + (self.sum >> 32);
        }
    }

    pub fn finish(mut self) -> u32 {
        if let Some(lo) = self.odd.take() {
            self.sum += u64::from(lo);
        }
        let mut s = self.sum;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        (s as u32).wrapping_add(self.len as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_reference_algorithm_for_any_chunking() {
        let data: Vec<u8> = (0..10_007u32).map(|i| (i * 7919 % 251) as u8).collect();
        // Reference: word by word with a fold after every add.
        let mut s: u32 = 0;
        for w in data.chunks(2) {
            let v = u32::from(w[0]) | u32::from(*w.get(1).unwrap_or(&0)) << 8;
            s += v;
            s = (s & 0xffff) + (s >> 16);
        }
        let expected = ((s & 0xffff) + (s >> 16)) + data.len() as u32;
        for chunk in [1, 2, 3, 7, 4096, 20_000] {
            let mut c = Checksum::default();
            data.chunks(chunk).for_each(|d| c.update(d));
            assert_eq!(c.finish(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn rejects_non_pe() {
        assert!(PeHeaders::parse(b"hello")
            .unwrap_err()
            .to_string()
            .contains("MZ"));
        let mut b = vec![0u8; 128];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c] = 0x40;
        assert!(PeHeaders::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("PE\\0\\0"));
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        let e = PeHeaders::parse(&b[..0x48]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
