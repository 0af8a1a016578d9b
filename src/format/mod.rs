//! Binary formats at the bottom of the crate: each reads (and some write) bytes of one format
//! and imports nothing above [`crate::layout`].

pub mod cpio;
pub mod elf;
pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod meta;
pub mod reference;
pub mod squashfs;
pub mod yaml;

/// Little-endian integers at byte offsets of a buffer the caller has bounds-checked (they
/// panic past the end, as slice indexing does).
pub(crate) mod le {
    pub fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    pub fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    pub fn u64_at(b: &[u8], o: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    }
}
