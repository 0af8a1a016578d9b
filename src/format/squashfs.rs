//! Reading a squashfs 4.0 image (Talos's `rootfs.sqsh`, edgeimage's own layers): directories,
//! regular files and symlinks, through basic and extended inodes, with data blocks, fragments
//! and sparse blocks; gzip, xz and zstd compression. Written from the on-disk format (the
//! kernel's `fs/squashfs` and squashfs-tools' `squashfs_fs.h`), the same description
//! [`crate::compose::squashfs`] writes from.
//!
//! For hostile images: every metadata read is bounded (a metadata block decompresses to at
//! most 8 KiB, a data block to at most the block size), directory walks are bounded in depth
//! and entries, file reads take a size limit, and errors name the structure and byte offset,
//! never the bytes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use anyhow::{anyhow, bail, Context, Result};

use super::le::{u16_at as le16, u32_at as le32, u64_at as le64};

const MAGIC: u32 = 0x7371_7368;
const METADATA_SIZE: usize = 8192;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
/// Directory levels walked at most.
pub const MAX_DEPTH: usize = 64;
/// Entries of one directory listed at most.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A device, fifo or socket.
    Special,
}

/// A parsed inode.
#[derive(Clone, Debug)]
pub struct Inode {
    pub kind: Kind,
    pub mode: u16,
    pub size: u64,
    /// Regular files: where the first data block is, the fragment (index, offset) and the
    /// on-disk size word of each full block.
    blocks_start: u64,
    fragment: Option<(u32, u32)>,
    block_sizes: Vec<u32>,
    /// Directories: the listing's place in the directory table.
    dir_block: u32,
    dir_offset: u16,
    /// Symlinks: the target.
    pub target: Option<String>,
}

/// One directory entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    /// Reference of the entry's inode: metadata block (relative to the inode table) << 16 |
    /// offset within it.
    pub inode: u64,
}

/// An open image.
pub struct Squashfs<'a> {
    file: &'a File,
    len: u64,
    compressor: u16,
    block_size: u32,
    fragments: u32,
    root: u64,
    inode_table: u64,
    dir_table: u64,
    frag_table: u64,
}

/// Reads bytes across consecutive metadata blocks from a start position.
struct Meta<'s, 'a> {
    fs: &'s Squashfs<'a>,
    /// Absolute position of the next metadata block.
    next: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Meta<'_, '_> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.at == self.buf.len() {
                let (data, next) = self.fs.metadata_block(self.next)?;
                self.buf = data;
                self.next = next;
                self.at = 0;
                if self.buf.is_empty() {
                    bail!("squashfs: an empty metadata block at byte {}", self.next);
                }
            }
            let k = (n - out.len()).min(self.buf.len() - self.at);
            out.extend_from_slice(&self.buf[self.at..self.at + k]);
            self.at += k;
        }
        Ok(out)
    }
}

impl<'a> Squashfs<'a> {
    /// Open the image in `file`.
    pub fn open(file: &'a File) -> Result<Squashfs<'a>> {
        let len = file.metadata().context("squashfs: reading its size")?.len();
        let mut sb = [0u8; 96];
        if len < 96 {
            bail!("squashfs: {len} bytes is too short for a superblock");
        }
        file.read_exact_at(&mut sb, 0)
            .context("squashfs: reading the superblock")?;
        if le32(&sb, 0) != MAGIC {
            bail!("not a squashfs image (no \"hsqs\" magic at byte 0)");
        }
        if (le16(&sb, 28), le16(&sb, 30)) != (4, 0) {
            bail!(
                "squashfs: version {}.{}, only 4.0 is read",
                le16(&sb, 28),
                le16(&sb, 30)
            );
        }
        let block_size = le32(&sb, 12);
        let block_log = le16(&sb, 22);
        if !(12..=20).contains(&block_log) || block_size != 1 << block_log {
            bail!("squashfs superblock: block size {block_size} (log {block_log}) is not 4 KiB to 1 MiB");
        }
        let compressor = le16(&sb, 20);
        if ![1, 4, 6].contains(&compressor) {
            bail!(
                "squashfs: compressor {compressor} ({}) is not read; gzip, xz and zstd are",
                match compressor {
                    2 => "lzma",
                    3 => "lzo",
                    5 => "lz4",
                    _ => "unknown",
                }
            );
        }
        let fs = Squashfs {
            file,
            len,
            compressor,
            block_size,
            fragments: le32(&sb, 16),
            root: le64(&sb, 32),
            inode_table: le64(&sb, 64),
            dir_table: le64(&sb, 72),
            frag_table: le64(&sb, 80),
        };
        for (what, at) in [
            ("inode table", fs.inode_table),
            ("directory table", fs.dir_table),
        ] {
            if at >= len {
                bail!(
                    "squashfs superblock: the {what} at byte {at} lies past the {len}-byte image"
                );
            }
        }
        Ok(fs)
    }

    fn read_exact(&self, at: u64, n: usize, what: &str) -> Result<Vec<u8>> {
        if at.checked_add(n as u64).is_none_or(|e| e > self.len) {
            bail!(
                "squashfs: {what} (bytes {at}..+{n}) lies past the {}-byte image",
                self.len
            );
        }
        let mut b = vec![0u8; n];
        self.file
            .read_exact_at(&mut b, at)
            .with_context(|| format!("squashfs: reading {what} at byte {at}"))?;
        Ok(b)
    }

    fn decompress(&self, data: &[u8], max: usize, what: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let limit = max as u64 + 1;
        let r = match self.compressor {
            1 => flate2::read::ZlibDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out),
            4 => xz2::read::XzDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out),
            _ => zstd::stream::read::Decoder::new(data)
                .and_then(|d| d.take(limit).read_to_end(&mut out)),
        };
        r.map_err(|e| anyhow!("squashfs: {what}: cannot decompress it: {e}"))?;
        if out.len() > max {
            bail!("squashfs: {what} decompresses to more than {max} bytes");
        }
        Ok(out)
    }

    /// The metadata block at `at`: its bytes and the position of the next one.
    fn metadata_block(&self, at: u64) -> Result<(Vec<u8>, u64)> {
        let h = self.read_exact(at, 2, "a metadata block header")?;
        let word = le16(&h, 0);
        let size = usize::from(word & 0x7fff);
        if size == 0 || size > METADATA_SIZE {
            bail!("squashfs: a metadata block at byte {at} claims {size} bytes");
        }
        let raw = self.read_exact(at.saturating_add(2), size, "a metadata block")?;
        let data = if word & 0x8000 != 0 {
            raw
        } else {
            self.decompress(
                &raw,
                METADATA_SIZE,
                &format!("the metadata block at byte {at}"),
            )?
        };
        // `read_exact` proved `at + 2 + size` lies on the image.
        Ok((data, at + 2 + size as u64))
    }

    fn meta(&self, table: u64, block: u64, offset: usize) -> Result<Meta<'_, 'a>> {
        let start = table
            .checked_add(block)
            .ok_or_else(|| anyhow!("squashfs: a metadata reference overflows"))?;
        let (buf, next) = self.metadata_block(start)?;
        if offset > buf.len() {
            bail!(
                "squashfs: offset {offset} lies past the {}-byte metadata block at byte {start}",
                buf.len()
            );
        }
        Ok(Meta {
            fs: self,
            next,
            buf,
            at: offset,
        })
    }

    /// The root directory's inode reference.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Read the inode `reference` points at.
    pub fn inode(&self, reference: u64) -> Result<Inode> {
        let block = reference >> 16;
        let offset = (reference & 0xffff) as usize;
        let mut m = self.meta(self.inode_table, block, offset)?;
        let h = m.take(16)?;
        let kind = le16(&h, 0);
        let mode = le16(&h, 2);
        let mut inode = Inode {
            kind: Kind::Special,
            mode,
            size: 0,
            blocks_start: 0,
            fragment: None,
            block_sizes: Vec::new(),
            dir_block: 0,
            dir_offset: 0,
            target: None,
        };
        match kind {
            1 => {
                let b = m.take(16)?;
                inode.kind = Kind::Dir;
                inode.dir_block = le32(&b, 0);
                inode.size = u64::from(le16(&b, 8));
                inode.dir_offset = le16(&b, 10);
            }
            8 => {
                let b = m.take(24)?;
                inode.kind = Kind::Dir;
                inode.size = u64::from(le32(&b, 4));
                inode.dir_block = le32(&b, 8);
                inode.dir_offset = le16(&b, 18);
            }
            2 | 9 => {
                let (start, size, frag, frag_off) = if kind == 2 {
                    let b = m.take(16)?;
                    (
                        u64::from(le32(&b, 0)),
                        u64::from(le32(&b, 12)),
                        le32(&b, 4),
                        le32(&b, 8),
                    )
                } else {
                    let b = m.take(40)?;
                    (le64(&b, 0), le64(&b, 8), le32(&b, 28), le32(&b, 32))
                };
                let bs = u64::from(self.block_size);
                let full = if frag == NO_FRAGMENT {
                    size.div_ceil(bs)
                } else {
                    size / bs
                };
                // Each block word is 4 bytes of metadata: a count beyond the image is a lie.
                if full.saturating_mul(4) > self.len {
                    bail!(
                        "squashfs: a file inode claims {size} bytes, more than the image can hold"
                    );
                }
                let words = m.take(full as usize * 4)?;
                inode.kind = Kind::File;
                inode.size = size;
                inode.blocks_start = start;
                inode.fragment = (frag != NO_FRAGMENT).then_some((frag, frag_off));
                inode.block_sizes = words.chunks_exact(4).map(|w| le32(w, 0)).collect();
            }
            3 | 10 => {
                let b = m.take(8)?;
                let n = le32(&b, 4) as usize;
                if n > 4096 {
                    bail!("squashfs: a symlink target of {n} bytes (at most 4096)");
                }
                inode.kind = Kind::Symlink;
                inode.size = n as u64;
                inode.target = Some(String::from_utf8_lossy(&m.take(n)?).into_owned());
            }
            4..=7 | 11..=14 => {}
            other => bail!("squashfs: an inode of unknown type {other}"),
        }
        Ok(inode)
    }

    /// The entries of directory `dir`.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        if dir.kind != Kind::Dir {
            bail!("squashfs: not a directory");
        }
        let mut left = dir.size.saturating_sub(3) as usize;
        let mut m = self.meta(
            self.dir_table,
            u64::from(dir.dir_block),
            usize::from(dir.dir_offset),
        )?;
        let mut out = Vec::new();
        while left >= 12 {
            let h = m.take(12)?;
            left -= 12;
            let count = le32(&h, 0) as usize + 1;
            let start = u64::from(le32(&h, 4));
            if count > 256 {
                bail!("squashfs: a directory header lists {count} entries (at most 256)");
            }
            for _ in 0..count {
                if left < 8 {
                    bail!("squashfs: a directory listing ends inside an entry");
                }
                let e = m.take(8)?;
                let name_len = usize::from(le16(&e, 6)) + 1;
                if name_len > 256 || left < 8 + name_len {
                    bail!("squashfs: a directory entry name of {name_len} bytes");
                }
                let name = m.take(name_len)?;
                left -= 8 + name_len;
                let name = String::from_utf8_lossy(&name).into_owned();
                if name.contains('/') || name == "." || name == ".." {
                    bail!("squashfs: a directory entry named {name:?}");
                }
                out.push(DirEntry {
                    name,
                    inode: (start << 16) | u64::from(le16(&e, 0)),
                });
                if out.len() > MAX_DIR_ENTRIES {
                    bail!("squashfs: a directory of more than {MAX_DIR_ENTRIES} entries");
                }
            }
        }
        Ok(out)
    }

    /// The inode at `path` (`/`-separated, relative to the root), if there is one. Symlinks
    /// on the way are not followed.
    pub fn lookup(&self, path: &str) -> Result<Option<Inode>> {
        let mut node = self.inode(self.root)?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if node.kind != Kind::Dir {
                return Ok(None);
            }
            match self.read_dir(&node)?.into_iter().find(|e| e.name == part) {
                Some(e) => node = self.inode(e.inode)?,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// A fragment's block: (position, on-disk size word).
    fn fragment(&self, index: u32) -> Result<(u64, u32)> {
        if index >= self.fragments {
            bail!("squashfs: fragment {index} of {}", self.fragments);
        }
        // Saturating: a table placed at the end of the address space is refused by `read_exact`.
        let slot = self.frag_table.saturating_add(u64::from(index / 512) * 8);
        let ptr = le64(&self.read_exact(slot, 8, "the fragment table")?, 0);
        let mut m = Meta {
            fs: self,
            next: ptr,
            buf: Vec::new(),
            at: 0,
        };
        m.take((index % 512) as usize * 16)?;
        let e = m.take(16)?;
        Ok((le64(&e, 0), le32(&e, 8)))
    }

    /// A data block whose on-disk size word is `word`, `want` bytes long once read.
    fn block(&self, at: u64, word: u32, want: usize) -> Result<Vec<u8>> {
        let size = (word & 0x00ff_ffff) as usize;
        if size == 0 {
            return Ok(vec![0; want]);
        }
        if size > self.block_size as usize {
            bail!(
                "squashfs: a data block at byte {at} of {size} bytes (blocks are {})",
                self.block_size
            );
        }
        let raw = self.read_exact(at, size, "a data block")?;
        let data = if word & 0x0100_0000 != 0 {
            raw
        } else {
            self.decompress(
                &raw,
                self.block_size as usize,
                &format!("the data block at byte {at}"),
            )?
        };
        if data.len() < want {
            bail!(
                "squashfs: the data block at byte {at} holds {} bytes, {want} expected",
                data.len()
            );
        }
        Ok(data)
    }

    /// The whole content of the regular file `f`, refused when larger than `limit`.
    pub fn read_file(&self, f: &Inode, limit: u64) -> Result<Vec<u8>> {
        if f.kind != Kind::File {
            bail!("squashfs: not a regular file");
        }
        if f.size > limit {
            bail!(
                "squashfs: a file of {} bytes (at most {limit} are read)",
                f.size
            );
        }
        let bs = self.block_size as usize;
        let mut out = Vec::with_capacity(f.size as usize);
        let mut at = f.blocks_start;
        for &w in &f.block_sizes {
            let want = bs.min(f.size as usize - out.len());
            let b = self.block(at, w, want)?;
            out.extend_from_slice(&b[..want]);
            at = at.saturating_add(u64::from(w & 0x00ff_ffff));
        }
        if let Some((index, offset)) = f.fragment {
            let want = f.size as usize - out.len();
            let (pos, word) = self.fragment(index)?;
            let b = self.block(pos, word, 0)?;
            let tail = b
                .get(offset as usize..(offset as usize).saturating_add(want))
                .ok_or_else(|| {
                    anyhow!("squashfs: fragment {index} is shorter than its file's tail")
                })?;
            out.extend_from_slice(tail);
        }
        if out.len() as u64 != f.size {
            bail!(
                "squashfs: a file of {} bytes has {} bytes of blocks",
                f.size,
                out.len()
            );
        }
        Ok(out)
    }

    /// Every entry below directory `dir` (depth first, pre-order, names in listing order) as
    /// (path relative to `dir`, inode).
    pub fn walk(&self, dir: &Inode) -> Result<Vec<(String, Inode)>> {
        let mut out = Vec::new();
        self.walk_into(dir, "", 0, &mut out)?;
        Ok(out)
    }

    fn walk_into(
        &self,
        dir: &Inode,
        prefix: &str,
        depth: usize,
        out: &mut Vec<(String, Inode)>,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            bail!("squashfs: directories nested deeper than {MAX_DEPTH} levels at {prefix}");
        }
        for e in self.read_dir(dir)? {
            let path = if prefix.is_empty() {
                e.name.clone()
            } else {
                format!("{prefix}/{}", e.name)
            };
            let inode = self.inode(e.inode)?;
            out.push((path.clone(), inode.clone()));
            if out.len() > MAX_DIR_ENTRIES {
                bail!("squashfs: more than {MAX_DIR_ENTRIES} entries under one directory");
            }
            if inode.kind == Kind::Dir {
                self.walk_into(&inode, &path, depth + 1, out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::tree::{Node, Tree};
    use std::process::Command;

    fn tree() -> Tree {
        let mut t = Tree::new();
        t.insert("usr", Node::dir(0o755));
        t.insert("usr/lib", Node::dir(0o755));
        t.insert(
            "usr/lib/a.txt",
            Node::file(Layout::from_bytes(b"hello".to_vec()), 0o644),
        );
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        t.insert("usr/lib/big", Node::file(Layout::from_bytes(big), 0o644));
        t.insert(
            "usr/lib/empty",
            Node::file(Layout::from_bytes(Vec::new()), 0o600),
        );
        t.insert("usr/link", Node::symlink("lib/a.txt"));
        t
    }

    fn check(f: &File) {
        let fs = Squashfs::open(f).unwrap();
        let a = fs.lookup("usr/lib/a.txt").unwrap().unwrap();
        assert_eq!(fs.read_file(&a, 1 << 20).unwrap(), b"hello");
        let big = fs.lookup("/usr/lib/big").unwrap().unwrap();
        let data = fs.read_file(&big, 4 << 20).unwrap();
        assert_eq!(data.len(), 1_200_000);
        assert_eq!(&data[4..8], &1u32.to_le_bytes());
        assert_eq!(&data[1_199_996..], &299_999u32.to_le_bytes());
        assert!(fs
            .read_file(&big, 1000)
            .unwrap_err()
            .to_string()
            .contains("at most 1000"));
        let empty = fs.lookup("usr/lib/empty").unwrap().unwrap();
        assert!(fs.read_file(&empty, 10).unwrap().is_empty());
        let link = fs.lookup("usr/link").unwrap().unwrap();
        assert_eq!(link.kind, Kind::Symlink);
        assert_eq!(link.target.as_deref(), Some("lib/a.txt"));
        assert!(fs.lookup("usr/nothing").unwrap().is_none());
        let root = fs.inode(fs.root()).unwrap();
        let names: Vec<String> = fs.walk(&root).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/lib",
                "usr/lib/a.txt",
                "usr/lib/big",
                "usr/lib/empty",
                "usr/link"
            ]
        );
    }

    #[test]
    fn reads_what_edgeimage_writes() {
        let mut f = tempfile::tempfile().unwrap();
        crate::compose::squashfs::write_squashfs(&tree(), 0, &mut f).unwrap();
        check(&f);
    }

    /// mksquashfs output (fragments, xz and gzip, extended inodes with xattrs), when
    /// squashfs-tools is installed.
    #[test]
    fn reads_what_mksquashfs_writes() {
        let Ok(o) = Command::new("mksquashfs").arg("-version").output() else {
            eprintln!("SKIPPED: mksquashfs is not installed");
            return;
        };
        assert!(o.status.success());
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("usr/lib")).unwrap();
        std::fs::write(src.join("usr/lib/a.txt"), b"hello").unwrap();
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(src.join("usr/lib/big"), big).unwrap();
        std::fs::write(src.join("usr/lib/empty"), b"").unwrap();
        std::os::unix::fs::symlink("lib/a.txt", src.join("usr/link")).unwrap();
        for comp in ["zstd", "xz", "gzip"] {
            let img = dir.path().join(format!("{comp}.sqsh"));
            let o = Command::new("mksquashfs")
                .arg(&src)
                .arg(&img)
                .args(["-noappend", "-no-progress", "-all-root", "-comp", comp])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            check(&File::open(&img).unwrap());
        }
    }

    #[test]
    fn hostile_images_are_refused_with_places() {
        let mut f = tempfile::tempfile().unwrap();
        crate::compose::squashfs::write_squashfs(&tree(), 0, &mut f).unwrap();
        let mut good = Vec::new();
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut good).unwrap();
        let open = |b: &[u8]| -> Result<()> {
            let t = tempfile::tempfile().unwrap();
            t.write_all_at(b, 0).unwrap();
            let fs = Squashfs::open(&t)?;
            let root = fs.inode(fs.root())?;
            fs.walk(&root)?;
            Ok(())
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hsqs".to_vec(), "too short"),
            (
                {
                    let mut b = good.clone();
                    b[0] = b'x';
                    b
                },
                "no \"hsqs\"",
            ),
            (
                {
                    let mut b = good.clone();
                    b[20] = 2;
                    b
                },
                "lzma",
            ),
            (
                {
                    let mut b = good.clone();
                    b[22] = 30;
                    b
                },
                "block size",
            ),
            (
                {
                    let mut b = good.clone();
                    b[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
                    b
                },
                "inode table",
            ),
            (
                {
                    let mut b = good.clone();
                    b[32..40].copy_from_slice(&(0xffffu64 << 16).to_le_bytes());
                    b
                },
                "past the",
            ),
        ];
        for (bytes, want) in cases {
            let e = format!("{:#}", open(&bytes).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
        }
        // A fragment table at the end of the address space (found by the squashfs fuzz
        // target: an addition overflowed): refused, no panic.
        let mut b = good.clone();
        b[16..20].copy_from_slice(&600u32.to_le_bytes());
        b[80..88].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        let t = tempfile::tempfile().unwrap();
        t.write_all_at(&b, 0).unwrap();
        let fs = Squashfs::open(&t).unwrap();
        for index in [0, 599] {
            let e = format!("{:#}", fs.fragment(index).unwrap_err());
            assert!(
                e.contains("the fragment table") && e.contains("past the"),
                "{e}"
            );
        }
    }
}
