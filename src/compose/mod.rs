//! Composition of the disk image from its parts.

pub mod cpio;
pub mod fat;
