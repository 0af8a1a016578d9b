//! Talos's root filesystem inside the base initramfs: `rootfs.sqsh` of the (zstd, xz or gzip
//! compressed, or plain) newc cpio, copied to an anonymous temporary file as the initramfs
//! streams past, then read as squashfs. What edgeimage takes from it is the kernel's module
//! tree (`usr/lib/modules/<kver>/`, `lib/modules` before Talos 1.10): the kernel release and
//! the modules a combined `modules.dep` must cover, as Talos's imager does
//! (`internal/pkg/extensions/kernel_modules.go`, `extractRootfsFromInitramfs` and `unsquash`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};

use anyhow::{anyhow, bail, Context, Result};

use crate::format::cpio;
use crate::format::squashfs::{Kind, Squashfs};
use crate::layout::Layout;

/// The name of the root filesystem in the initramfs (`constants.RootfsAsset`).
pub const ROOTFS: &str = "rootfs.sqsh";
/// The largest `rootfs.sqsh` copied out (Talos's is about 100 MiB).
pub const MAX_ROOTFS: u64 = 4 << 30;
/// The most archives looked through (an early microcode cpio, then the compressed one).
const MAX_ARCHIVES: usize = 8;
/// The largest `modules.*` text file read from the tree.
const MAX_TEXT: u64 = 64 << 20;

/// The base root filesystem, as a squashfs image in a temporary file.
pub struct BaseRootfs {
    file: File,
    /// The initramfs it came from, for messages.
    pub origin: String,
}

/// One file of the kernel's module tree.
#[derive(Clone, Debug)]
pub struct TreeFile {
    /// Path relative to `<modules root>/<kver>/`.
    pub relpath: String,
}

/// The kernel's module tree in the base root filesystem.
pub struct BaseModules<'a> {
    rootfs: &'a BaseRootfs,
    /// The kernel release: the one directory under the module root.
    pub kver: String,
    /// `usr/lib/modules` or `lib/modules`.
    pub root: String,
    /// Every regular file under `<root>/<kver>/`, in path order.
    pub files: Vec<TreeFile>,
}

impl BaseRootfs {
    /// Copy `rootfs.sqsh` out of the initramfs `initramfs` (named `origin` in messages).
    pub fn extract(initramfs: &Layout, origin: &str) -> Result<BaseRootfs> {
        let mut out = tempfile::tempfile().context("creating a temporary file for rootfs.sqsh")?;
        let mut r = BufReader::with_capacity(1 << 20, initramfs.reader());
        for _ in 0..MAX_ARCHIVES {
            // Zero padding between concatenated archives.
            let head = loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    bail!("{origin}: the initramfs holds no {ROOTFS}; it is not a Talos initramfs");
                }
                let zeros = buf.iter().take_while(|&&b| b == 0).count();
                if zeros == 0 {
                    break buf[..buf.len().min(6)].to_vec();
                }
                r.consume(zeros);
            };
            let mut found = false;
            let mut visit = |h: &cpio::Header, body: &mut dyn Read| -> Result<()> {
                if h.name.trim_start_matches("./") == ROOTFS && h.is_file() {
                    if h.size > MAX_ROOTFS {
                        bail!(
                            "{origin}: {ROOTFS} is {} bytes, more than {MAX_ROOTFS}",
                            h.size
                        );
                    }
                    let n = io::copy(body, &mut out).context("copying rootfs.sqsh")?;
                    if n != h.size {
                        bail!("{origin}: {ROOTFS} is truncated");
                    }
                    found = true;
                }
                Ok(())
            };
            let what = || format!("{origin}: reading the initramfs");
            if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                let mut d = zstd::stream::read::Decoder::with_buffer(&mut r)?.single_frame();
                cpio::read(&mut d, &mut visit).with_context(what)?;
                io::copy(&mut d, &mut io::sink())?;
            } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
                let mut d = xz2::bufread::XzDecoder::new(&mut r);
                cpio::read(&mut d, &mut visit).with_context(what)?;
            } else if head.starts_with(&[0x1f, 0x8b]) {
                let mut d = flate2::bufread::GzDecoder::new(&mut r);
                cpio::read(&mut d, &mut visit).with_context(what)?;
            } else if head.starts_with(b"07070") {
                cpio::read(&mut r, &mut visit).with_context(what)?;
            } else {
                bail!(
                    "{origin}: an initramfs archive in a format edgeimage does not read (zstd, xz, \
                     gzip and plain cpio are read)"
                );
            }
            if found {
                out.flush()?;
                return Ok(BaseRootfs {
                    file: out,
                    origin: origin.to_string(),
                });
            }
        }
        bail!("{origin}: no {ROOTFS} in the first {MAX_ARCHIVES} archives of the initramfs")
    }

    fn squashfs(&self) -> Result<Squashfs<'_>> {
        Squashfs::open(&self.file).with_context(|| format!("{}: {ROOTFS}", self.origin))
    }

    /// The kernel's module tree under `root` (`usr/lib/modules` or `lib/modules`).
    pub fn modules(&self, root: &str) -> Result<BaseModules<'_>> {
        let fs = self.squashfs()?;
        let dir = fs
            .lookup(root)?
            .filter(|i| i.kind == Kind::Dir)
            .ok_or_else(|| anyhow!("{}: {ROOTFS} has no /{root} directory", self.origin))?;
        let entries = fs.read_dir(&dir)?;
        let [only] = entries.as_slice() else {
            bail!(
                "{}: {ROOTFS} has {} entries under /{root}, Talos's imager needs exactly one \
                 (the kernel release)",
                self.origin,
                entries.len()
            );
        };
        let kdir = fs.inode(only.inode)?;
        if kdir.kind != Kind::Dir {
            bail!(
                "{}: /{root}/{} in {ROOTFS} is not a directory",
                self.origin,
                only.name
            );
        }
        let mut files: Vec<TreeFile> = fs
            .walk(&kdir)?
            .into_iter()
            .filter(|(_, i)| i.kind == Kind::File)
            .map(|(p, _)| TreeFile { relpath: p })
            .collect();
        files.sort_by(|a, b| a.relpath.cmp(&b.relpath));
        Ok(BaseModules {
            rootfs: self,
            kver: only.name.clone(),
            root: root.to_string(),
            files,
        })
    }
}

impl BaseModules<'_> {
    /// The bytes of `relpath` (relative to `<root>/<kver>/`), at most `limit`.
    pub fn read(&self, relpath: &str, limit: u64) -> Result<Vec<u8>> {
        let fs = self.rootfs.squashfs()?;
        let path = format!("{}/{}/{relpath}", self.root, self.kver);
        let inode = fs
            .lookup(&path)?
            .filter(|i| i.kind == Kind::File)
            .ok_or_else(|| anyhow!("{}: no /{path} in {ROOTFS}", self.rootfs.origin))?;
        fs.read_file(&inode, limit)
            .with_context(|| format!("{}: /{path} in {ROOTFS}", self.rootfs.origin))
    }

    /// A `modules.*` text file of the tree, empty when absent.
    pub fn text(&self, name: &str) -> Result<Vec<u8>> {
        if self.files.iter().any(|f| f.relpath == name) {
            self.read(name, MAX_TEXT)
        } else {
            Ok(Vec::new())
        }
    }
}
