//! Binary formats at the bottom of the crate: each reads (and some write) bytes of one format
//! and imports nothing above [`crate::layout`].

pub mod cpio;
pub mod elf;
pub mod gpt;
pub mod meta;
pub mod squashfs;
