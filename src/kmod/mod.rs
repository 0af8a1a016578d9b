//! Kernel modules: their names and files, and the dependency files `depmod` writes
//! ([`depmod`]), with kmod's binary index format ([`index`]). Reading a module's ELF is
//! [`crate::format::elf`].

use std::io::Read;

use anyhow::{bail, Result};

pub mod depmod;
pub mod index;

/// Largest module accepted, decompressed (the largest in-tree modules are about 30 MiB;
/// NVIDIA's is about 100 MiB).
pub const MAX_MODULE_SIZE: u64 = 256 << 20;

/// File name endings of modules, plain first (kmod's `kmod_exts`).
pub const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// The module name of a file name (`virtio-blk.ko.zst` → `virtio_blk`), if it is a module.
pub fn module_name(file_name: &str) -> Option<String> {
    SUFFIXES
        .iter()
        .rev()
        .find_map(|s| file_name.strip_suffix(s))
        .filter(|stem| !stem.is_empty())
        .map(|stem| stem.replace('-', "_"))
}

/// kmod's `modname_normalize`: up to the first `.`, `-` written `_` (`modules.builtin` lines,
/// `kernel/fs/ext4/ext4.ko` → `ext4`).
pub fn normalize(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.split('.').next().unwrap_or("").replace('-', "_")
}

/// A module file's plain ELF bytes: decompressed by its name's ending, at most
/// [`MAX_MODULE_SIZE`].
pub fn decompress(file_name: &str, r: impl Read) -> Result<Vec<u8>> {
    let reader: Box<dyn Read + '_> = if file_name.ends_with(".ko.xz") {
        Box::new(xz2::read::XzDecoder::new(r))
    } else if file_name.ends_with(".ko.zst") {
        Box::new(zstd::stream::read::Decoder::new(r)?)
    } else if file_name.ends_with(".ko.gz") {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let mut data = Vec::new();
    reader
        .take(MAX_MODULE_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| anyhow::anyhow!("cannot read or decompress it: {e}"))?;
    if data.len() as u64 > MAX_MODULE_SIZE {
        bail!("it is larger than {} MiB", MAX_MODULE_SIZE >> 20);
    }
    if !data.starts_with(b"\x7fELF") {
        bail!("it is not a kernel module (an ELF object)");
    }
    Ok(data)
}

/// The marker the kernel's `sign-file` appends to a signed module.
pub const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// Whether a module carries an appended signature (Talos enforces signatures from v1.12 with
/// `module.sig_enforce=1`).
pub fn is_signed(elf: &[u8]) -> bool {
    elf.ends_with(SIGNATURE_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            module_name("virtio-blk.ko.zst").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(module_name("a.ko").as_deref(), Some("a"));
        assert_eq!(module_name(".ko"), None);
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(normalize("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(normalize("kernel/lib/crc-t10dif.ko\n"), "crc_t10dif");
    }

    #[test]
    fn decompresses_by_name() {
        let elf = b"\x7fELF module bytes".to_vec();
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            std::io::Write::write_all(&mut e, &elf).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(decompress("a.ko.xz", &xz[..]).unwrap(), elf);
        let zst = zstd::encode_all(&elf[..], 3).unwrap();
        assert_eq!(decompress("a.ko.zst", &zst[..]).unwrap(), elf);
        assert_eq!(decompress("a.ko", &elf[..]).unwrap(), elf);
        let e = decompress("a.ko.zst", &elf[..]).unwrap_err().to_string();
        assert!(e.contains("cannot read or decompress"), "{e}");
        let e = decompress("a.ko", &b"MZ"[..]).unwrap_err().to_string();
        assert!(e.contains("not a kernel module"), "{e}");
    }
}
