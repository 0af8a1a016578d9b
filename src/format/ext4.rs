//! Reading an ext4 filesystem that may come from anywhere (the image cache partition of an
//! image handed to `inspect`): read-only, written from the kernel's description of the format
//! (`Documentation/filesystems/ext4/`), apart from the writer in [`crate::compose::ext4`].
//!
//! What it reads: the superblock, group descriptors (32 or 64 bytes), inodes, extent trees
//! and linear directories (a hashed directory reads linearly too: its index blocks look like
//! empty entries). Files mapped by indirect blocks (ext2/3 style), inline data, encryption
//! and `meta_bg` are refused by name. For hostile input:
//! - the superblock is checked with checked arithmetic before anything else is read: block
//!   size 1–64 KiB, group geometry, inode size, the filesystem inside the partition;
//! - every block number is checked to be inside the filesystem before it is read, every
//!   inode number to be in range;
//! - an extent tree is at most [`MAX_DEPTH`] levels, each node's entry count within what its
//!   block holds; a file reads at most [`MAX_TREE_BLOCKS`] tree blocks;
//! - directories are at most [`MAX_DIR_BYTES`], entries at most [`MAX_ENTRIES`] per listing;
//!   lookups at most [`MAX_PATH_DEPTH`] components;
//! - files are read only up to the caller's cap.
//!
//! So the work of any call is bounded by its caps, and errors name the inode, block or path,
//! never bytes of a file.

use std::io;

use anyhow::{bail, Context, Result};

use super::le::{u16_at as le16, u32_at as le32};

/// Extent tree levels followed at most (the kernel allows 5).
pub const MAX_DEPTH: u16 = 5;
/// Extent tree blocks one file may make us read.
pub const MAX_TREE_BLOCKS: usize = 4096;
/// The largest directory read.
pub const MAX_DIR_BYTES: u64 = 16 << 20;
/// Entries one listing returns at most.
pub const MAX_ENTRIES: usize = 65_536;
/// Components of a path looked up.
pub const MAX_PATH_DEPTH: usize = 64;

const MAGIC: u16 = 0xEF53;
const EXTENT_MAGIC: u16 = 0xF30A;
const EXTENTS_FL: u32 = 0x80000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const ENCRYPT_FL: u32 = 0x800;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_META_BG: u32 = 0x10;
/// Incompatible features this reader understands: compression (0x1, never used), filetype,
/// recover (journal replay pending: read as is), journal_dev (refused below), meta_bg
/// (refused), extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir,
/// inline_data (per inode), encrypt (per inode), casefold (names compared bytewise).
const INCOMPAT_KNOWN: u32 =
    0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;

type ReadAt<'a> = Box<dyn Fn(u64, &mut [u8]) -> io::Result<()> + 'a>;

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
}

/// A directory entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Raw name bytes (shown lossily).
    pub name: Vec<u8>,
    pub ino: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// An inode as read.
#[derive(Clone, Debug)]
pub struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub size: u64,
    flags: u32,
    i_block: [u8; 60],
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.mode & 0xF000 == 0x4000
    }

    pub fn is_file(&self) -> bool {
        self.mode & 0xF000 == 0x8000
    }
}

/// An open filesystem.
pub struct Volume<'a> {
    read_at: ReadAt<'a>,
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    inodes_per_group: u64,
    inodes: u64,
    inode_size: u64,
    groups: u64,
    desc_size: u64,
    label: String,
}

impl<'a> Volume<'a> {
    /// Open the filesystem on a partition of `len` bytes read with `read_at` (which must fill
    /// the buffer or fail): checks the superblock.
    pub fn open(len: u64, read_at: impl Fn(u64, &mut [u8]) -> io::Result<()> + 'a) -> Result<Self> {
        if len < 2048 {
            bail!("the partition is {len} bytes, too small for an ext4 superblock");
        }
        let mut s = [0u8; 1024];
        read_at(1024, &mut s).context("reading the superblock (bytes 1024..2048)")?;
        if le16(&s, 0x38) != MAGIC {
            bail!("not an ext2/3/4 filesystem: no superblock magic at byte 1080");
        }
        let log = le32(&s, 0x18);
        if log > 6 {
            bail!(
                "the superblock's block size (2^{} bytes) is not 1 to 64 KiB",
                10 + u64::from(log)
            );
        }
        let block_size = 1024u64 << log;
        let blocks_lo = u64::from(le32(&s, 0x4));
        let incompat = le32(&s, 0x60);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let blocks = if is64 {
            blocks_lo | u64::from(le32(&s, 0x150)) << 32
        } else {
            blocks_lo
        };
        if incompat & !INCOMPAT_KNOWN != 0 {
            bail!(
                "the filesystem has incompatible features this reader does not know (0x{:x})",
                incompat & !INCOMPAT_KNOWN
            );
        }
        if incompat & 0x8 != 0 {
            bail!("this is an external journal device, not a filesystem");
        }
        if incompat & INCOMPAT_META_BG != 0 {
            bail!("the filesystem uses meta_bg group descriptors, which this reader does not read");
        }
        if blocks == 0 || blocks.checked_mul(block_size).is_none_or(|b| b > len) {
            bail!(
                "the superblock gives {blocks} blocks of {block_size} bytes: not a size the \
                 {len}-byte partition holds"
            );
        }
        let first_data_block = u64::from(le32(&s, 0x14));
        let blocks_per_group = u64::from(le32(&s, 0x20));
        let inodes_per_group = u64::from(le32(&s, 0x28));
        if blocks_per_group == 0 || blocks_per_group > 8 * block_size {
            bail!("the superblock's blocks per group ({blocks_per_group}) is 0 or more than a bitmap block maps");
        }
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            bail!("the superblock's inodes per group ({inodes_per_group}) is 0 or more than a bitmap block maps");
        }
        if first_data_block >= blocks {
            bail!("the superblock's first data block ({first_data_block}) lies past the end");
        }
        let inode_size = if le32(&s, 0x4C) == 0 {
            128
        } else {
            u64::from(le16(&s, 0x58))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            bail!("the superblock's inode size ({inode_size}) is not a power of two from 128 to the block size");
        }
        let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
        let inodes = groups
            .checked_mul(inodes_per_group)
            .filter(|&n| n < 1 << 32)
            .context("the superblock gives more than 2^32 inodes")?;
        let desc_size = if is64 {
            let d = u64::from(le16(&s, 0xFE));
            if !(64..=1024).contains(&d) || !d.is_power_of_two() {
                bail!("the superblock's group descriptor size ({d}) is not a power of two from 64 to 1024");
            }
            d
        } else {
            32
        };
        let label_raw = &s[0x78..0x88];
        let end = label_raw.iter().position(|&b| b == 0).unwrap_or(16);
        let label = String::from_utf8_lossy(&label_raw[..end]).into_owned();
        Ok(Volume {
            read_at: Box::new(read_at),
            block_size,
            blocks,
            first_data_block,
            inodes_per_group,
            inodes,
            inode_size,
            groups,
            desc_size,
            label,
        })
    }

    /// An in-memory filesystem (tests, fuzzing).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Volume<'a>> {
        Volume::open(bytes.len() as u64, move |o, buf| {
            let s = usize::try_from(o).ok().filter(|&s| s <= bytes.len());
            match s.and_then(|s| bytes.get(s..s + buf.len())) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end")),
            }
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    fn read_block(&self, block: u64, what: &str) -> Result<Vec<u8>> {
        if block >= self.blocks {
            bail!(
                "{what}: block {block} lies past the end ({} blocks)",
                self.blocks
            );
        }
        let mut b = vec![0u8; self.block_size as usize];
        (self.read_at)(block * self.block_size, &mut b)
            .with_context(|| format!("{what}: reading block {block}"))?;
        Ok(b)
    }

    /// Read an inode.
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        let n = u64::from(ino);
        if n == 0 || n > self.inodes {
            bail!(
                "inode {ino} does not exist (the filesystem has {})",
                self.inodes
            );
        }
        let group = (n - 1) / self.inodes_per_group;
        let index = (n - 1) % self.inodes_per_group;
        // The descriptor table starts in the block after the superblock's.
        let gdt = self.first_data_block + 1;
        let at = group * self.desc_size;
        let desc = self.read_block(gdt + at / self.block_size, "group descriptors")?;
        let o = (at % self.block_size) as usize;
        let mut table = u64::from(le32(&desc, o + 0x8));
        if self.desc_size >= 64 {
            table |= u64::from(le32(&desc, o + 0x28)) << 32;
        }
        let byte = index * self.inode_size;
        let block = table
            .checked_add(byte / self.block_size)
            .filter(|&b| b < self.blocks && b > 0)
            .with_context(|| {
                format!("inode {ino}: group {group}'s inode table (block {table}) lies outside the filesystem")
            })?;
        let b = self.read_block(block, &format!("inode {ino}"))?;
        let o = (byte % self.block_size) as usize;
        let raw = &b[o..o + 128];
        let mut i_block = [0u8; 60];
        i_block.copy_from_slice(&raw[0x28..0x64]);
        Ok(Inode {
            ino,
            mode: le16(raw, 0),
            size: u64::from(le32(raw, 0x4)) | u64::from(le32(raw, 0x6C)) << 32,
            flags: le32(raw, 0x20),
            i_block,
        })
    }

    /// The physical runs of a file: (logical block, physical block, length, initialized).
    fn runs(&self, inode: &Inode) -> Result<Vec<(u64, u64, u64, bool)>> {
        let ino = inode.ino;
        if inode.flags & INLINE_DATA_FL != 0 {
            bail!("inode {ino} keeps its data inline, which this reader does not read");
        }
        if inode.flags & ENCRYPT_FL != 0 {
            bail!("inode {ino} is encrypted");
        }
        if inode.flags & EXTENTS_FL == 0 {
            if inode.size == 0 {
                return Ok(Vec::new());
            }
            bail!("inode {ino} maps its blocks indirectly (ext2/3 style), which this reader does not read");
        }
        let mut out = Vec::new();
        let mut budget = MAX_TREE_BLOCKS;
        self.node(ino, &inode.i_block, MAX_DEPTH + 1, &mut out, &mut budget)?;
        Ok(out)
    }

    fn node(
        &self,
        ino: u32,
        b: &[u8],
        max_depth: u16,
        out: &mut Vec<(u64, u64, u64, bool)>,
        budget: &mut usize,
    ) -> Result<()> {
        if b.len() < 12 || le16(b, 0) != EXTENT_MAGIC {
            bail!("inode {ino}: an extent tree node without its magic");
        }
        let entries = usize::from(le16(b, 2));
        let depth = le16(b, 6);
        if entries > (b.len() - 12) / 12 {
            bail!("inode {ino}: an extent node claims {entries} entries, more than it holds");
        }
        if depth >= max_depth {
            bail!("inode {ino}: the extent tree is deeper than its parent allows (at most {MAX_DEPTH} levels)");
        }
        for i in 0..entries {
            let e = &b[12 + 12 * i..24 + 12 * i];
            if depth == 0 {
                let logical = u64::from(le32(e, 0));
                let mut len = u64::from(le16(e, 4));
                let init = len <= 32768;
                if !init {
                    len -= 32768;
                }
                let start = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                if start.checked_add(len).is_none_or(|end| end > self.blocks) {
                    bail!("inode {ino}: an extent at block {start} (+{len}) lies outside the filesystem");
                }
                out.push((logical, start, len, init));
            } else {
                if *budget == 0 {
                    bail!("inode {ino}: its extent tree has more than {MAX_TREE_BLOCKS} blocks");
                }
                *budget -= 1;
                let leaf = u64::from(le16(e, 8)) << 32 | u64::from(le32(e, 4));
                let blk = self.read_block(leaf, &format!("inode {ino}'s extent tree"))?;
                self.node(ino, &blk, depth, out, budget)?;
            }
        }
        Ok(())
    }

    /// Read a file (or directory) completely; more than `max` bytes is an error.
    pub fn read(&self, inode: &Inode, max: u64) -> Result<Vec<u8>> {
        if inode.size > max {
            bail!(
                "inode {}: {} bytes, more than the {max} read",
                inode.ino,
                inode.size
            );
        }
        let mut data = vec![0u8; inode.size as usize];
        let bs = self.block_size;
        // Extents must be in order and must not overlap (as ext4 keeps them): so a file's
        // reads add up to at most its size, however many extents claim the same blocks.
        let mut next = 0u64;
        for (logical, start, len, init) in self.runs(inode)? {
            if logical < next {
                bail!(
                    "inode {}: an extent at logical block {logical} overlaps the one before",
                    inode.ino
                );
            }
            next = logical + len;
            if !init {
                continue; // reads as zeros
            }
            let from = logical.saturating_mul(bs);
            if from >= inode.size {
                continue;
            }
            let n = (len * bs).min(inode.size - from);
            (self.read_at)(start * bs, &mut data[from as usize..(from + n) as usize])
                .with_context(|| format!("inode {}: reading block {start}", inode.ino))?;
        }
        Ok(data)
    }

    /// The entries of a directory (without `.` and `..`).
    pub fn list(&self, dir: &Inode) -> Result<Vec<Entry>> {
        if !dir.is_dir() {
            bail!("inode {} is not a directory", dir.ino);
        }
        let data = self.read(dir, MAX_DIR_BYTES)?;
        let bs = self.block_size as usize;
        let mut out = Vec::new();
        for (bi, block) in data.chunks(bs).enumerate() {
            let mut pos = 0usize;
            while pos + 8 <= block.len() {
                let ino = le32(block, pos);
                let rec = usize::from(le16(block, pos + 4));
                let name_len = usize::from(block[pos + 6]);
                if rec < 8 || pos + rec > block.len() || 8 + name_len > rec {
                    bail!(
                        "directory inode {}: a broken entry at byte {} of block {bi}",
                        dir.ino,
                        pos
                    );
                }
                let name = &block[pos + 8..pos + 8 + name_len];
                if ino != 0 && name != b"." && name != b".." {
                    if out.len() >= MAX_ENTRIES {
                        bail!(
                            "directory inode {} has more than {MAX_ENTRIES} entries",
                            dir.ino
                        );
                    }
                    let kind = match block[pos + 7] {
                        1 => Kind::File,
                        2 => Kind::Dir,
                        _ => Kind::Other,
                    };
                    out.push(Entry {
                        name: name.to_vec(),
                        ino,
                        kind,
                    });
                }
                pos += rec;
            }
        }
        Ok(out)
    }

    /// The root directory's inode.
    pub fn root(&self) -> Result<Inode> {
        self.inode(2)
    }

    /// Look a `/`-separated path up from the root; `None` when a component is absent.
    pub fn find(&self, path: &str) -> Result<Option<Inode>> {
        let mut cur = self.root()?;
        for (depth, c) in path.split('/').filter(|c| !c.is_empty()).enumerate() {
            if depth >= MAX_PATH_DEPTH {
                bail!("a path of more than {MAX_PATH_DEPTH} components");
            }
            let Some(e) = self
                .list(&cur)?
                .into_iter()
                .find(|e| e.name == c.as_bytes())
            else {
                return Ok(None);
            };
            cur = self.inode(e.ino)?;
        }
        Ok(Some(cur))
    }

    /// Groups, for messages.
    pub fn groups(&self) -> u64 {
        self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::ext4::{build, Ext4Input, Size};
    use crate::layout::Layout;
    use crate::tree::{Node, Tree};

    fn image(files: &[(&str, usize)]) -> Vec<u8> {
        let mut t = Tree::new();
        for (p, n) in files {
            t.insert(*p, Node::file(Layout::from_bytes(vec![7u8; *n]), 0o644));
        }
        build(&Ext4Input {
            tree: &t,
            label: "T",
            uuid: [3; 16],
            epoch: 0,
            size: Size::Fit { free: 0 },
            spare_inodes: 0,
        })
        .unwrap()
        .layout
        .to_vec()
        .unwrap()
    }

    fn err(b: &[u8], f: impl Fn(&Volume) -> Result<()>) -> String {
        match Volume::from_bytes(b).and_then(|v| f(&v)) {
            Ok(()) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// The inode bytes of `ino` in an image the writer made (group 0, table after the
    /// bitmaps).
    fn inode_at(b: &[u8], ino: usize) -> usize {
        let table = le32(b, 4096 + 8) as usize;
        table * 4096 + (ino - 1) * 256
    }

    #[test]
    fn reads_the_writers_output() {
        let b = image(&[("a/b", 5000), ("c", 0)]);
        let v = Volume::from_bytes(&b).unwrap();
        assert_eq!(v.label(), "T");
        let f = v.find("a/b").unwrap().unwrap();
        assert_eq!(v.read(&f, 1 << 20).unwrap(), vec![7u8; 5000]);
        assert!(v.find("a/x").unwrap().is_none());
        let e = format!("{:#}", v.read(&f, 100).unwrap_err());
        assert!(e.contains("more than the 100 read"), "{e}");
    }

    #[test]
    fn hostile_superblocks_are_refused() {
        let b = image(&[("a", 10)]);
        let mut x = b.clone();
        x[1024 + 0x38] = 0;
        assert!(err(&x, |_| Ok(())).contains("no superblock magic"));
        let mut x = b.clone();
        x[1024 + 0x18] = 9;
        assert!(err(&x, |_| Ok(())).contains("not 1 to 64 KiB"));
        // Found by the ext4 fuzz target: the message's arithmetic overflowed.
        let mut x = b.clone();
        x[1024 + 0x18..1024 + 0x1C].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&x, |_| Ok(())).contains("(2^4294967305 bytes) is not 1 to 64 KiB"));
        let mut x = b.clone();
        x[1024 + 0x4..1024 + 0x8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&x, |_| Ok(())).contains("not a size the"));
        let mut x = b.clone();
        x[1024 + 0x62] |= 0x80; // an unknown incompatible feature (bit 23)
        assert!(err(&x, |_| Ok(())).contains("incompatible features"));
        let mut x = b;
        x[1024 + 0x28..1024 + 0x2C].copy_from_slice(&0u32.to_le_bytes());
        assert!(err(&x, |_| Ok(())).contains("inodes per group"));
    }

    #[test]
    fn a_looping_extent_tree_and_broken_directories_are_refused() {
        let b = image(&[("a", 10)]);
        // The root's extent header claims depth 1 with an index pointing at the inode table
        // block: the node there has no magic (or, made to have one, the same depth).
        let mut x = b.clone();
        let root = inode_at(&x, 2) + 0x28;
        x[root + 6] = 1; // depth 1
        let table = le32(&x, 4096 + 8);
        x[root + 12 + 4..root + 12 + 8].copy_from_slice(&table.to_le_bytes());
        x[root + 12 + 8..root + 12 + 10].copy_from_slice(&[0, 0]);
        let e = err(&x, |v| v.list(&v.root()?).map(|_| ()));
        assert!(
            e.contains("without its magic") || e.contains("deeper"),
            "{e}"
        );
        // Depth 5 claimed at the root is beyond what any parent allows... at 6.
        let mut x = b.clone();
        let root = inode_at(&x, 2) + 0x28;
        x[root + 6] = 6;
        let e = err(&x, |v| v.list(&v.root()?).map(|_| ()));
        assert!(e.contains("deeper"), "{e}");
        // An extent past the end.
        let mut x = b.clone();
        let root = inode_at(&x, 2) + 0x28;
        x[root + 12 + 8..root + 12 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = err(&x, |v| v.list(&v.root()?).map(|_| ()));
        assert!(e.contains("lies outside the filesystem"), "{e}");
        // A directory entry whose length is 0.
        let mut x = b.clone();
        let root = inode_at(&x, 2) + 0x28;
        let blk = le32(&x, root + 12 + 8) as usize;
        x[blk * 4096 + 4] = 0;
        x[blk * 4096 + 5] = 0;
        let e = err(&x, |v| v.list(&v.root()?).map(|_| ()));
        assert!(e.contains("a broken entry at byte 0 of block 0"), "{e}");
        // Two extents claiming the same logical blocks (each read would cover the file again).
        let mut x = b.clone();
        let root = inode_at(&x, 2) + 0x28;
        let first: Vec<u8> = x[root + 12..root + 24].to_vec();
        x[root + 24..root + 36].copy_from_slice(&first);
        x[root + 2] = 2; // two entries
        let e = err(&x, |v| v.list(&v.root()?).map(|_| ()));
        assert!(e.contains("overlaps the one before"), "{e}");
        // An inode number past the end.
        let e = err(&b, |v| v.inode(u32::MAX).map(|_| ()));
        assert!(e.contains("does not exist"), "{e}");
    }
}
