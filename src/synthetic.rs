//! A deterministic synthetic Talos asset set for the demo, the tests and the benchmarks.
//!
//! NOT BOOTABLE. The files have the right shapes (PE/COFF EFI applications for the stub and
//! systemd-boot, an EFI-stub kernel with an x86 setup header carrying a version string, a zstd
//! initramfs) so every step of a build runs on them, but they contain no code. Every byte is a
//! function of the architecture and the requested sizes, so their digests can be pinned.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::talos::Arch;

/// The release string the synthetic kernel reports.
pub const KERNEL_RELEASE: &str = "6.12.0-synthetic-not-bootable";

/// Sizes of the synthetic payloads.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub kernel: usize,
    pub initramfs: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            kernel: 4 << 20,
            initramfs: 8 << 20,
        }
    }
}

/// Deterministic filler (SplitMix64), incompressible like real compressed payloads.
pub fn filler(seed: &str, len: usize) -> Vec<u8> {
    let mut state = u64::from_le_bytes(
        Sha256::digest(seed.as_bytes())[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A minimal PE32+ EFI application with the given sections. When `kernel_release` is set, an
/// x86 boot-protocol setup header (`HdrS` at 0x202, `kernel_version` at 0x20e) is added.
pub fn pe_image(
    machine: u16,
    sections: &[(&str, Vec<u8>)],
    kernel_release: Option<&str>,
) -> Vec<u8> {
    const FILE_ALIGN: usize = 0x200;
    const SECT_ALIGN: u32 = 0x1000;
    const HEADERS: usize = 0x400;
    let align = |v: usize, a: usize| v.div_ceil(a) * a;
    let mut raw_ptr = HEADERS;
    let mut va = SECT_ALIGN;
    let mut table = Vec::new();
    for (name, data) in sections {
        let raw_size = align(data.len(), FILE_ALIGN);
        table.push((name, data, raw_ptr, raw_size, va));
        raw_ptr += raw_size;
        va += align(data.len().max(1), SECT_ALIGN as usize) as u32;
    }
    let mut b = vec![0u8; raw_ptr];
    b[..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    b[coff..coff + 2].copy_from_slice(&machine.to_le_bytes());
    b[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
    b[coff + 18..coff + 20].copy_from_slice(&0x0206u16.to_le_bytes());
    let opt = coff + 20;
    let w32 =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    let code: usize = table.iter().filter(|t| *t.0 == ".text").map(|t| t.3).sum();
    let data: usize = table.iter().filter(|t| *t.0 != ".text").map(|t| t.3).sum();
    w32(&mut b, opt + 4, code as u32);
    w32(&mut b, opt + 8, data as u32);
    w32(&mut b, opt + 16, SECT_ALIGN); // entry point: start of the first section
    w32(&mut b, opt + 20, SECT_ALIGN);
    w32(&mut b, opt + 32, SECT_ALIGN);
    w32(&mut b, opt + 36, FILE_ALIGN as u32);
    w32(&mut b, opt + 56, va);
    w32(&mut b, opt + 60, HEADERS as u32);
    b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes());
    w32(&mut b, opt + 108, 16);
    let st = opt + 240;
    for (i, (name, d, ptr, raw_size, vaddr)) in table.iter().enumerate() {
        let h = st + i * 40;
        let n = name.as_bytes();
        b[h..h + n.len().min(8)].copy_from_slice(&n[..n.len().min(8)]);
        w32(&mut b, h + 8, d.len() as u32);
        w32(&mut b, h + 12, *vaddr);
        w32(&mut b, h + 16, *raw_size as u32);
        w32(&mut b, h + 20, *ptr as u32);
        let ch = if **name == ".text" {
            0x6000_0020
        } else {
            0x4000_0040
        };
        w32(&mut b, h + 36, ch);
        b[*ptr..*ptr + d.len()].copy_from_slice(d);
    }
    if let Some(rel) = kernel_release {
        // x86 boot protocol: setup header magic and the kernel_version pointer (+0x200).
        b[0x1f1] = 1;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let s = format!("{rel} (synthetic@edgeimage) #1 NOT BOOTABLE\0");
        let at = 0x300;
        b[at..at + s.len()].copy_from_slice(s.as_bytes());
        b[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
    }
    b
}

/// The four asset files of a synthetic set, by file name.
pub fn asset_set(arch: Arch, sizes: Sizes) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let m = arch.pe_machine();
    let note = b"edgeimage synthetic asset: NOT BOOTABLE\n".to_vec();
    let stub = pe_image(
        m,
        &[
            (".text", filler(&format!("stub-{arch}"), 0x3000)),
            (".sbat", note.clone()),
        ],
        None,
    );
    let boot = pe_image(
        m,
        &[
            (".text", filler(&format!("boot-{arch}"), 0x5000)),
            (".sbat", note.clone()),
        ],
        None,
    );
    let kernel = pe_image(
        m,
        &[(".text", filler(&format!("kernel-{arch}"), sizes.kernel))],
        (arch == Arch::Amd64).then_some(KERNEL_RELEASE),
    );
    // A zstd-compressed newc cpio (the format Talos >= 1.8 uses) holding an `init` that only
    // says it is synthetic and a `rootfs.sqsh` of incompressible filler.
    let mut cpio_bytes = Vec::new();
    {
        use crate::compose::cpio::{Entry, Writer};
        let init = b"#!/bin/sh\necho 'edgeimage synthetic initramfs: NOT BOOTABLE'\n";
        let rootfs = filler(&format!("initramfs-{arch}"), sizes.initramfs);
        let mut w = Writer::new(&mut cpio_bytes);
        w.append(Entry::file_bytes("init", 0o755, init))?;
        w.append(Entry::file_bytes("rootfs.sqsh", 0o644, &rootfs))?;
        w.finish()?;
    }
    let initramfs =
        zstd::bulk::compress(&cpio_bytes, 1).context("compressing the synthetic initramfs")?;
    Ok(vec![
        ("vmlinuz", kernel),
        ("initramfs.xz", initramfs),
        ("systemd-boot.efi", boot),
        ("systemd-stub.efi", stub),
        ("NOT-BOOTABLE.txt", note),
    ])
}

/// A synthetic base initramfs whose `rootfs.sqsh` is a real squashfs holding the kernel
/// module tree `<modules_root>/<kver>/` with `files` (path relative to it, bytes): what an
/// extension's kernel modules are combined with. zstd-compressed newc cpio, as Talos's.
pub fn initramfs_with_modules(
    modules_root: &str,
    kver: &str,
    files: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>> {
    use crate::compose::cpio::{Entry, Writer};
    use crate::layout::Layout;
    use crate::tree::{Node, Tree};
    use std::io::{Read, Seek, SeekFrom};
    let mut t = Tree::new();
    let base = format!("{modules_root}/{kver}");
    let mut dirs: Vec<String> = Vec::new();
    let mut add_dirs = |path: &str, t: &mut Tree| {
        let mut d = String::new();
        for part in path.split('/') {
            if !d.is_empty() {
                d.push('/');
            }
            d.push_str(part);
            if !dirs.contains(&d) {
                dirs.push(d.clone());
                t.insert(d.clone(), Node::dir(0o755));
            }
        }
    };
    add_dirs(&base, &mut t);
    for (rel, data) in files {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            add_dirs(&format!("{base}/{parent}"), &mut t);
        }
        t.insert(
            format!("{base}/{rel}"),
            Node::file(Layout::from_bytes(data.clone()), 0o644),
        );
    }
    let mut f = tempfile::tempfile().context("creating a temporary squashfs")?;
    crate::compose::squashfs::write_squashfs(&t, 0, &mut f)?;
    let mut sqsh = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut sqsh)?;
    let mut cpio_bytes = Vec::new();
    let mut w = Writer::new(&mut cpio_bytes);
    w.append(Entry::file_bytes("init", 0o755, b"#!/bin/sh\n"))?;
    w.append(Entry::file_bytes("rootfs.sqsh", 0o644, &sqsh))?;
    w.finish()?;
    zstd::bulk::compress(&cpio_bytes, 1).context("compressing the synthetic initramfs")
}

/// Write a synthetic set into `dir`; returns `(file name, sha256)` of each file.
pub fn write_asset_set(dir: &Path, arch: Arch, sizes: Sizes) -> Result<Vec<(String, String)>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (name, data) in asset_set(arch, sizes)? {
        let p = dir.join(name);
        fs::write(&p, &data).with_context(|| format!("writing {}", p.display()))?;
        out.push((name.to_string(), hex::encode(Sha256::digest(&data))));
    }
    Ok(out)
}
