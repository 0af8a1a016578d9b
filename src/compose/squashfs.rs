//! A deterministic squashfs 4.0 writer (zstd), written from the on-disk format description.
//!
//! What it produces for a [`Tree`]:
//!
//! - every inode owned by 0:0 (one id, `0`), every mtime and the superblock time = `epoch`;
//! - directories implied by deeper paths are created with mode 0755; entries of a directory are
//!   sorted by name (bytes), as the kernel's lookup requires;
//! - regular files are stored in 128 KiB blocks, each zstd-compressed on its own (stored raw when
//!   that is not smaller); no fragment table (tails are short blocks, flag `NO_FRAGMENTS`), no
//!   duplicate detection, no export table, no sparse blocks;
//! - extended attributes of [`Node::xattrs`] with the prefixes `user.`, `trusted.` and
//!   `security.` are stored (an xattr table, identical sets shared); others cannot be expressed
//!   in squashfs and are reported in [`SquashfsInfo::xattrs_dropped`];
//! - the image is padded with zeros to a multiple of 4096 bytes (as mksquashfs does).
//!
//! Determinism: inode numbers follow a fixed post-order walk (children by name, a directory
//! after its contents, the root last), data is written in path order, and each block is
//! compressed independently at a fixed level, so the bytes depend only on the tree and the epoch;
//! the number of compression threads changes nothing.
//!
//! Layout written: superblock (96 bytes), file data, inode table, directory table, id table
//! (one metadata block and its index), xattr table (key/value metadata, id metadata, header).
//! File contents are streamed from their [`Layout`]s one batch of blocks at a time.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

use crate::layout::Layout;
use crate::tree::{NodeKind, Tree};

/// Data block size (2^17), the mksquashfs default.
pub const BLOCK_SIZE: u32 = 1 << 17;
const BLOCK_LOG: u16 = 17;
const METADATA_SIZE: usize = 8192;
/// zstd level for data and metadata blocks (Talos's imager runs `mksquashfs -Xcompression-level 18`;
/// squashfs records no level, readers need none).
pub const ZSTD_LEVEL: i32 = 18;
const COMPRESSOR_ZSTD: u16 = 6;
const MAGIC: u32 = 0x7371_7368;
const NONE: u64 = u64::MAX;
const FLAG_NO_FRAGMENTS: u16 = 0x0010;
const FLAG_NO_XATTRS: u16 = 0x0200;
const DATA_UNCOMPRESSED: u32 = 1 << 24;
const META_UNCOMPRESSED: u16 = 0x8000;

// Basic inode types; extended = basic + 7.
const T_DIR: u16 = 1;
const T_FILE: u16 = 2;
const T_SYMLINK: u16 = 3;
const T_BLKDEV: u16 = 4;
const T_CHRDEV: u16 = 5;
const T_FIFO: u16 = 6;
const T_SOCKET: u16 = 7;
const EXT: u16 = 7;

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct SquashfsInfo {
    /// Bytes written, including the padding to 4 KiB.
    pub size: u64,
    /// `bytes_used` of the superblock (without the padding).
    pub bytes_used: u64,
    pub inodes: u32,
    /// `path: attribute` for every extended attribute squashfs cannot store (a name outside the
    /// `user.`, `trusted.`, `security.` namespaces).
    pub xattrs_dropped: Vec<String>,
}

/// Write `tree` as a squashfs image to `out` (from its current position 0; the superblock is
/// written last, by seeking back).
pub fn write_squashfs<W: Write + Seek>(
    tree: &Tree,
    epoch: u64,
    out: &mut W,
) -> Result<SquashfsInfo> {
    write_squashfs_threads(tree, epoch, out, default_threads())
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16)
}

/// One node of the directory hierarchy being built.
struct Item<'a> {
    path: String,
    kind: Kind<'a>,
    mode: u32,
    xattr: Option<u32>,
    ino: u32,
}

enum Kind<'a> {
    Dir(Vec<usize>),
    File(&'a Layout),
    Symlink(&'a str),
    Dev { block: bool, major: u32, minor: u32 },
    Fifo,
    Socket,
}

impl Kind<'_> {
    /// The basic inode type (what directory entries name, too).
    fn basic_type(&self) -> u16 {
        match self {
            Kind::Dir(_) => T_DIR,
            Kind::File(_) => T_FILE,
            Kind::Symlink(_) => T_SYMLINK,
            Kind::Dev { block: true, .. } => T_BLKDEV,
            Kind::Dev { block: false, .. } => T_CHRDEV,
            Kind::Fifo => T_FIFO,
            Kind::Socket => T_SOCKET,
        }
    }
}

/// One inode's extended attributes: (namespace type, name without prefix, value).
type XattrSet = Vec<(u16, Vec<u8>, Vec<u8>)>;

/// Where a file's blocks went.
#[derive(Clone, Default)]
struct FileData {
    start: u64,
    sizes: Vec<u32>,
}

/// As [`write_squashfs`] with an explicit number of compression threads (the output does not
/// depend on it).
pub fn write_squashfs_threads<W: Write + Seek>(
    tree: &Tree,
    epoch: u64,
    out: &mut W,
    threads: usize,
) -> Result<SquashfsInfo> {
    let mtime = u32::try_from(epoch)
        .with_context(|| format!("epoch {epoch} does not fit the 32-bit squashfs time"))?;
    let mut info = SquashfsInfo::default();

    // Build the hierarchy: index 0 is the root.
    let mut items: Vec<Item> = vec![Item {
        path: String::new(),
        kind: Kind::Dir(Vec::new()),
        mode: 0o755,
        xattr: None,
        ino: 0,
    }];
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    index.insert(String::new(), 0);
    let mut xattr_sets: Vec<XattrSet> = Vec::new();
    for dir in tree.all_dirs() {
        add_item(&mut items, &mut index, &dir, Kind::Dir(Vec::new()), 0o755)?;
    }
    for (path, node) in &tree.entries {
        let kind = match &node.kind {
            NodeKind::Dir => None,
            NodeKind::File(l) => Some(Kind::File(l)),
            NodeKind::Symlink(t) => Some(Kind::Symlink(t)),
            NodeKind::Hardlink(t) => {
                bail!("{path}: hard link to {t} cannot be written to squashfs (resolve it first)")
            }
            NodeKind::CharDevice { major, minor } => Some(Kind::Dev {
                block: false,
                major: *major,
                minor: *minor,
            }),
            NodeKind::BlockDevice { major, minor } => Some(Kind::Dev {
                block: true,
                major: *major,
                minor: *minor,
            }),
            NodeKind::Fifo => Some(Kind::Fifo),
            NodeKind::Socket => Some(Kind::Socket),
        };
        let i = match kind {
            Some(k) => add_item(&mut items, &mut index, path, k, node.mode)?,
            None => {
                let i = index[path.as_str()];
                items[i].mode = node.mode;
                i
            }
        };
        if matches!(node.kind, NodeKind::Symlink(_)) {
            items[i].mode = 0o777;
        }
        let mut set = Vec::new();
        for (name, value) in &node.xattrs {
            match split_xattr(name) {
                Some((ty, short)) => set.push((ty, short.as_bytes().to_vec(), value.clone())),
                None => info.xattrs_dropped.push(format!("{path}: {name}")),
            }
        }
        if !set.is_empty() {
            let id = match xattr_sets.iter().position(|s| *s == set) {
                Some(id) => id,
                None => {
                    xattr_sets.push(set);
                    xattr_sets.len() - 1
                }
            };
            items[i].xattr = Some(id as u32);
        }
    }

    // Inode numbers: post-order, children by name, root last.
    let mut order = Vec::with_capacity(items.len());
    post_order(&items, 0, &mut order);
    for (n, &i) in order.iter().enumerate() {
        items[i].ino = n as u32 + 1;
    }
    let inode_count = u32::try_from(order.len()).context("too many inodes")?;

    // Superblock placeholder, then data in path order.
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&[0u8; 96])?;
    let mut pos = 96u64;
    let mut data: Vec<FileData> = vec![FileData::default(); items.len()];
    for (path, &i) in &index {
        if let Kind::File(l) = items[i].kind {
            data[i] = write_file_data(l, out, &mut pos, threads)
                .with_context(|| format!("writing the data of {path}"))?;
        }
    }

    // Inode and directory tables.
    let mut inodes = MetaWriter::new();
    let mut dirs = MetaWriter::new();
    let mut refs = vec![0u64; items.len()];
    let mut parent = vec![0u32; items.len()];
    parent[0] = inode_count + 1;
    for &i in &order {
        if let Kind::Dir(children) = &items[i].kind {
            for &c in children {
                parent[c] = items[i].ino;
            }
        }
    }
    for &i in &order {
        let item = &items[i];
        let mut b = Vec::with_capacity(64);
        let xattr = item.xattr;
        let ty = item.kind.basic_type();
        // Directory listing first: the inode points at it.
        let mut body = Vec::new();
        let mut ext = xattr.is_some();
        match &item.kind {
            Kind::Dir(children) => {
                let (block, offset) = dirs.position();
                let listing = dir_listing(&items, children, &refs)?;
                dirs.write(&listing);
                let file_size = listing.len() as u64 + 3;
                let subdirs = children
                    .iter()
                    .filter(|&&c| matches!(items[c].kind, Kind::Dir(_)))
                    .count() as u32;
                let nlink = 2 + subdirs;
                if file_size > 0xFFFF {
                    ext = true;
                }
                if ext {
                    body.extend_from_slice(&nlink.to_le_bytes());
                    body.extend_from_slice(&(file_size as u32).to_le_bytes());
                    body.extend_from_slice(&(block as u32).to_le_bytes());
                    body.extend_from_slice(&parent[i].to_le_bytes());
                    body.extend_from_slice(&0u16.to_le_bytes()); // index count
                    body.extend_from_slice(&offset.to_le_bytes());
                    body.extend_from_slice(&xattr.unwrap_or(u32::MAX).to_le_bytes());
                } else {
                    body.extend_from_slice(&(block as u32).to_le_bytes());
                    body.extend_from_slice(&nlink.to_le_bytes());
                    body.extend_from_slice(&(file_size as u16).to_le_bytes());
                    body.extend_from_slice(&offset.to_le_bytes());
                    body.extend_from_slice(&parent[i].to_le_bytes());
                }
            }
            Kind::File(l) => {
                let d = &data[i];
                let size = l.len();
                if size > u64::from(u32::MAX) || d.start > u64::from(u32::MAX) {
                    ext = true;
                }
                if ext {
                    body.extend_from_slice(&d.start.to_le_bytes());
                    body.extend_from_slice(&size.to_le_bytes());
                    body.extend_from_slice(&0u64.to_le_bytes()); // sparse
                    body.extend_from_slice(&1u32.to_le_bytes()); // nlink
                    body.extend_from_slice(&u32::MAX.to_le_bytes()); // no fragment
                    body.extend_from_slice(&0u32.to_le_bytes());
                    body.extend_from_slice(&xattr.unwrap_or(u32::MAX).to_le_bytes());
                } else {
                    body.extend_from_slice(&(d.start as u32).to_le_bytes());
                    body.extend_from_slice(&u32::MAX.to_le_bytes());
                    body.extend_from_slice(&0u32.to_le_bytes());
                    body.extend_from_slice(&(size as u32).to_le_bytes());
                }
                for s in &d.sizes {
                    body.extend_from_slice(&s.to_le_bytes());
                }
            }
            Kind::Symlink(t) => {
                body.extend_from_slice(&1u32.to_le_bytes());
                body.extend_from_slice(&(t.len() as u32).to_le_bytes());
                body.extend_from_slice(t.as_bytes());
                if ext {
                    body.extend_from_slice(&xattr.unwrap_or(u32::MAX).to_le_bytes());
                }
            }
            Kind::Dev { major, minor, .. } => {
                let rdev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                body.extend_from_slice(&1u32.to_le_bytes());
                body.extend_from_slice(&rdev.to_le_bytes());
                if ext {
                    body.extend_from_slice(&xattr.unwrap_or(u32::MAX).to_le_bytes());
                }
            }
            Kind::Fifo | Kind::Socket => {
                body.extend_from_slice(&1u32.to_le_bytes());
                if ext {
                    body.extend_from_slice(&xattr.unwrap_or(u32::MAX).to_le_bytes());
                }
            }
        }
        let ty = if ext { ty + EXT } else { ty };
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&((item.mode & 0o7777) as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // uid index -> id 0
        b.extend_from_slice(&0u16.to_le_bytes()); // gid index -> id 0
        b.extend_from_slice(&mtime.to_le_bytes());
        b.extend_from_slice(&item.ino.to_le_bytes());
        b.extend_from_slice(&body);
        let (block, offset) = inodes.position();
        refs[i] = (block << 16) | u64::from(offset);
        inodes.write(&b);
    }
    let root_ref = refs[0];

    // Tables.
    let inode_table = pos;
    let t = inodes.finish();
    out.write_all(&t)?;
    pos += t.len() as u64;
    let dir_table = pos;
    let t = dirs.finish();
    out.write_all(&t)?;
    pos += t.len() as u64;
    // Id table: one id (0) in one metadata block, then its index.
    let mut ids = MetaWriter::new();
    ids.write(&0u32.to_le_bytes());
    let t = ids.finish();
    let id_block = pos;
    out.write_all(&t)?;
    pos += t.len() as u64;
    let id_table = pos;
    out.write_all(&id_block.to_le_bytes())?;
    pos += 8;
    let mut flags = FLAG_NO_FRAGMENTS;
    let xattr_table = if xattr_sets.is_empty() {
        flags |= FLAG_NO_XATTRS;
        NONE
    } else {
        let kv_start = pos;
        let mut kv = MetaWriter::new();
        let mut ids = MetaWriter::new();
        for set in &xattr_sets {
            let (block, offset) = kv.position();
            let mut size = 0u32;
            for (ty, name, value) in set {
                let mut e = Vec::new();
                e.extend_from_slice(&ty.to_le_bytes());
                e.extend_from_slice(&(name.len() as u16).to_le_bytes());
                e.extend_from_slice(name);
                e.extend_from_slice(&(value.len() as u32).to_le_bytes());
                e.extend_from_slice(value);
                kv.write(&e);
                size += (prefix(*ty).len() + name.len() + 1 + value.len()) as u32;
            }
            let mut e = Vec::new();
            e.extend_from_slice(&((block << 16) | u64::from(offset)).to_le_bytes());
            e.extend_from_slice(&(set.len() as u32).to_le_bytes());
            e.extend_from_slice(&size.to_le_bytes());
            ids.write(&e);
        }
        let t = kv.finish();
        out.write_all(&t)?;
        pos += t.len() as u64;
        let ids_start = pos;
        let (t, starts) = ids.finish_with_starts();
        out.write_all(&t)?;
        pos += t.len() as u64;
        let header = pos;
        let mut h = Vec::new();
        h.extend_from_slice(&kv_start.to_le_bytes());
        h.extend_from_slice(&(xattr_sets.len() as u32).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        for s in starts {
            h.extend_from_slice(&(ids_start + s).to_le_bytes());
        }
        out.write_all(&h)?;
        pos += h.len() as u64;
        header
    };
    let bytes_used = pos;
    let padded = bytes_used.div_ceil(4096) * 4096;
    out.write_all(&vec![0u8; (padded - bytes_used) as usize])?;

    let mut sb = Vec::with_capacity(96);
    sb.extend_from_slice(&MAGIC.to_le_bytes());
    sb.extend_from_slice(&inode_count.to_le_bytes());
    sb.extend_from_slice(&mtime.to_le_bytes());
    sb.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // fragments
    sb.extend_from_slice(&COMPRESSOR_ZSTD.to_le_bytes());
    sb.extend_from_slice(&BLOCK_LOG.to_le_bytes());
    sb.extend_from_slice(&flags.to_le_bytes());
    sb.extend_from_slice(&1u16.to_le_bytes()); // ids
    sb.extend_from_slice(&4u16.to_le_bytes());
    sb.extend_from_slice(&0u16.to_le_bytes());
    sb.extend_from_slice(&root_ref.to_le_bytes());
    sb.extend_from_slice(&bytes_used.to_le_bytes());
    sb.extend_from_slice(&id_table.to_le_bytes());
    sb.extend_from_slice(&xattr_table.to_le_bytes());
    sb.extend_from_slice(&inode_table.to_le_bytes());
    sb.extend_from_slice(&dir_table.to_le_bytes());
    sb.extend_from_slice(&NONE.to_le_bytes()); // fragment table
    sb.extend_from_slice(&NONE.to_le_bytes()); // export table
    debug_assert_eq!(sb.len(), 96);
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&sb)?;
    out.seek(SeekFrom::Start(padded))?;
    out.flush()?;

    info.size = padded;
    info.bytes_used = bytes_used;
    info.inodes = inode_count;
    Ok(info)
}

fn prefix(ty: u16) -> &'static str {
    match ty {
        0 => "user.",
        1 => "trusted.",
        _ => "security.",
    }
}

fn split_xattr(name: &str) -> Option<(u16, &str)> {
    for (ty, p) in [(0u16, "user."), (1, "trusted."), (2, "security.")] {
        if let Some(rest) = name.strip_prefix(p) {
            if !rest.is_empty() {
                return Some((ty, rest));
            }
        }
    }
    None
}

fn add_item<'a>(
    items: &mut Vec<Item<'a>>,
    index: &mut BTreeMap<String, usize>,
    path: &str,
    kind: Kind<'a>,
    mode: u32,
) -> Result<usize> {
    if let Some(&i) = index.get(path) {
        if matches!(kind, Kind::Dir(_)) && matches!(items[i].kind, Kind::Dir(_)) {
            return Ok(i);
        }
        bail!("{path}: listed twice");
    }
    let (parent, name) = match path.rfind('/') {
        Some(p) => (&path[..p], &path[p + 1..]),
        None => ("", path),
    };
    if name.is_empty() || name.len() > 256 || name == "." || name == ".." {
        bail!("{path:?}: not a valid squashfs entry name");
    }
    let Some(&pi) = index.get(parent) else {
        bail!("{path}: parent directory {parent:?} is missing");
    };
    let i = items.len();
    items.push(Item {
        path: path.to_string(),
        kind,
        mode,
        xattr: None,
        ino: 0,
    });
    match &mut items[pi].kind {
        Kind::Dir(children) => children.push(i),
        _ => bail!("{path}: parent {parent:?} is not a directory"),
    }
    index.insert(path.to_string(), i);
    Ok(i)
}

fn name_of<'b>(item: &'b Item<'_>) -> &'b str {
    item.path.rsplit('/').next().unwrap_or("")
}

fn post_order(items: &[Item], i: usize, order: &mut Vec<usize>) {
    if let Kind::Dir(children) = &items[i].kind {
        let mut sorted = children.clone();
        sorted.sort_by(|&a, &b| name_of(&items[a]).cmp(name_of(&items[b])));
        for c in sorted {
            post_order(items, c, order);
        }
    }
    order.push(i);
}

/// The directory listing of `children` (headers and entries), sorted by name.
fn dir_listing(items: &[Item], children: &[usize], refs: &[u64]) -> Result<Vec<u8>> {
    let mut sorted = children.to_vec();
    sorted.sort_by(|&a, &b| {
        name_of(&items[a])
            .as_bytes()
            .cmp(name_of(&items[b]).as_bytes())
    });
    let mut out = Vec::new();
    let mut k = 0;
    while k < sorted.len() {
        let first = &items[sorted[k]];
        let block = refs[sorted[k]] >> 16;
        let base = first.ino;
        let mut n = 0;
        while k + n < sorted.len()
            && n < 256
            && refs[sorted[k + n]] >> 16 == block
            && i16::try_from(i64::from(items[sorted[k + n]].ino) - i64::from(base)).is_ok()
        {
            n += 1;
        }
        out.extend_from_slice(&(n as u32 - 1).to_le_bytes());
        out.extend_from_slice(&(block as u32).to_le_bytes());
        out.extend_from_slice(&base.to_le_bytes());
        for &c in &sorted[k..k + n] {
            let it = &items[c];
            let name = name_of(it);
            let ty = it.kind.basic_type();
            out.extend_from_slice(&((refs[c] & 0xFFFF) as u16).to_le_bytes());
            out.extend_from_slice(&((i64::from(it.ino) - i64::from(base)) as i16).to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16 - 1).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        k += n;
    }
    Ok(out)
}

/// Stream a file's content as compressed blocks; `threads` blocks are compressed at once.
fn write_file_data<W: Write>(
    l: &Layout,
    out: &mut W,
    pos: &mut u64,
    threads: usize,
) -> Result<FileData> {
    let mut fd = FileData {
        start: *pos,
        sizes: Vec::new(),
    };
    let mut reader = l.reader();
    let mut remaining = l.len();
    let batch = threads.max(1) * 2;
    while remaining > 0 {
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(batch);
        while blocks.len() < batch && remaining > 0 {
            let n = remaining.min(u64::from(BLOCK_SIZE)) as usize;
            let mut buf = vec![0u8; n];
            reader.read_exact(&mut buf)?;
            remaining -= n as u64;
            blocks.push(buf);
        }
        let compressed = compress_all(&blocks, threads)?;
        for (raw, c) in blocks.iter().zip(compressed) {
            let (bytes, size) = match c {
                Some(c) if c.len() < raw.len() => {
                    let s = c.len() as u32;
                    (c, s)
                }
                _ => (raw.clone(), raw.len() as u32 | DATA_UNCOMPRESSED),
            };
            out.write_all(&bytes)?;
            *pos += bytes.len() as u64;
            fd.sizes.push(size);
        }
    }
    Ok(fd)
}

fn compress_all(blocks: &[Vec<u8>], threads: usize) -> io::Result<Vec<Option<Vec<u8>>>> {
    if threads <= 1 || blocks.len() <= 1 {
        return blocks.iter().map(|b| compress(b).map(Some)).collect();
    }
    let chunk = blocks.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = blocks
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|b| compress(b).map(Some))
                        .collect::<io::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(blocks.len());
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| io::Error::other("compression thread panicked"))??,
            );
        }
        Ok(all)
    })
}

fn compress(b: &[u8]) -> io::Result<Vec<u8>> {
    zstd::bulk::compress(b, ZSTD_LEVEL)
}

/// Accumulates a metadata area: 8 KiB blocks, each behind a 2-byte header (length, bit 15 set
/// when stored uncompressed).
struct MetaWriter {
    done: Vec<u8>,
    starts: Vec<u64>,
    cur: Vec<u8>,
}

impl MetaWriter {
    fn new() -> Self {
        Self {
            done: Vec::new(),
            starts: Vec::new(),
            cur: Vec::with_capacity(METADATA_SIZE),
        }
    }

    /// (offset of the current block from the area start, offset inside it).
    fn position(&self) -> (u64, u16) {
        (self.done.len() as u64, self.cur.len() as u16)
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (METADATA_SIZE - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.cur.len() == METADATA_SIZE {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.cur.is_empty() {
            return;
        }
        self.starts.push(self.done.len() as u64);
        match zstd::bulk::compress(&self.cur, ZSTD_LEVEL) {
            Ok(c) if c.len() < self.cur.len() => {
                self.done.extend_from_slice(&(c.len() as u16).to_le_bytes());
                self.done.extend_from_slice(&c);
            }
            _ => {
                self.done
                    .extend_from_slice(&(self.cur.len() as u16 | META_UNCOMPRESSED).to_le_bytes());
                self.done.extend_from_slice(&self.cur);
            }
        }
        self.cur.clear();
    }

    fn finish(self) -> Vec<u8> {
        self.finish_with_starts().0
    }

    fn finish_with_starts(mut self) -> (Vec<u8>, Vec<u64>) {
        self.flush();
        (self.done, self.starts)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout::SharedFile;
    use crate::tree::Node;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::process::Command;

    pub(crate) const EPOCH: u64 = 1_700_000_000;
    pub(crate) const SELINUX: &[u8] = b"system_u:object_r:system_state_t:s0\0";

    pub(crate) fn filler(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    /// A layout that is `len` bytes of an anonymous temporary file starting at offset 1000.
    pub(crate) fn file_region(data: &[u8]) -> Layout {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 1000]).unwrap();
        f.write_all(data).unwrap();
        f.write_all(&[9u8; 77]).unwrap();
        let mut l = Layout::new(data.len() as u64);
        l.put_file(
            0,
            SharedFile::new(f, "<test region>"),
            1000,
            data.len() as u64,
        )
        .unwrap();
        l
    }

    pub(crate) fn have(tool: &str) -> bool {
        Command::new(tool).arg("-version").output().is_ok()
    }

    fn sample() -> (Tree, Vec<u8>) {
        let big = filler(3 * 1024 * 1024 + 12345, 1);
        let mut t = Tree::new();
        t.insert(
            "usr/local/bin/agent",
            Node::file(Layout::from_bytes(b"#!/bin/sh\necho hi\n".to_vec()), 0o755),
        );
        t.insert("usr/local/bin/link", Node::symlink("agent"));
        t.insert(
            "usr/local/lib/big.bin",
            Node::file(file_region(&big), 0o644),
        );
        t.insert(
            "usr/local/lib/zeros",
            Node::file(Layout::from_bytes(vec![0u8; 300_000]), 0o644),
        );
        t.insert("usr/local/share/empty", Node::file(Layout::new(0), 0o600));
        t.insert("usr/local/share/private", Node::dir(0o700));
        t.insert("usr/local/abs", Node::symlink("/usr/local/bin/agent"));
        let mut cfg = Node::file(Layout::from_bytes(b"version: v1alpha1\n".to_vec()), 0o400);
        cfg.uid = 1000;
        cfg.mtime = 5;
        cfg.xattrs
            .insert("security.selinux".into(), SELINUX.to_vec());
        cfg.xattrs.insert("user.test".into(), b"hello".to_vec());
        cfg.xattrs
            .insert("system.posix_acl_access".into(), b"x".to_vec());
        t.insert("usr/local/etc/talos/config.yaml", cfg);
        for i in 0..300 {
            t.insert(
                format!("usr/local/many/f{i:03}"),
                Node::file(Layout::from_bytes(format!("{i}\n").into_bytes()), 0o644),
            );
        }
        (t, big)
    }

    fn build(t: &Tree, threads: usize) -> (tempfile::NamedTempFile, SquashfsInfo) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let info = write_squashfs_threads(t, EPOCH, f.as_file_mut(), threads).unwrap();
        (f, info)
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new("unsquashfs")
            .args(args)
            .env("TZ", "UTC")
            .output()
            .expect("unsquashfs");
        assert!(
            out.status.success(),
            "unsquashfs {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (t, _) = sample();
        let (a, ia) = build(&t, 1);
        let (b, _) = build(&t, 4);
        let (c, _) = build(&t, 4);
        let a = std::fs::read(a.path()).unwrap();
        assert_eq!(a, std::fs::read(b.path()).unwrap());
        assert_eq!(a, std::fs::read(c.path()).unwrap());
        assert_eq!(a.len() as u64, ia.size);
        assert_eq!(ia.size % 4096, 0);
        assert_eq!(
            ia.xattrs_dropped,
            ["usr/local/etc/talos/config.yaml: system.posix_acl_access"]
        );
    }

    #[test]
    fn unsquashfs_reads_it() {
        if !have("unsquashfs") {
            eprintln!("unsquashfs not installed; skipping");
            return;
        }
        let (t, big) = sample();
        let (f, info) = build(&t, 3);
        let p = f.path().to_str().unwrap();
        let s = run(&["-s", p]);
        assert!(s.contains("Compression zstd"), "{s}");
        assert!(s.contains("Block size 131072"), "{s}");
        assert!(
            s.contains(&format!("Number of inodes {}", info.inodes)),
            "{s}"
        );
        assert!(s.contains("Number of ids 1"), "{s}");
        assert!(s.contains("Number of xattr ids 1"), "{s}");
        assert!(s.contains("Tue Nov 14 22:13:20 2023"), "{s}");

        let l = run(&["-lln", "-d", "", p]);
        let lines: Vec<&str> = l
            .lines()
            .filter(|l| l.contains(" 0/0 ") || l.contains('/'))
            .collect();
        let entries: Vec<&str> = l
            .lines()
            .filter(|l| l.len() > 10 && l.as_bytes()[0] != b'P')
            .collect();
        assert!(!lines.is_empty());
        // root + 7 dirs + 307 files/links
        assert_eq!(entries.len() as u32, info.inodes, "{l}");
        for e in &entries {
            let cols: Vec<&str> = e.split_whitespace().collect();
            assert_eq!(cols[1], "0/0", "{e}");
            assert_eq!(cols[3], "2023-11-14", "{e}");
            assert_eq!(cols[4], "22:13", "{e}");
        }
        let find = |name: &str| -> &str {
            entries
                .iter()
                .find(|e| e.split_whitespace().nth(5) == Some(name))
                .unwrap_or_else(|| panic!("{name} not listed:\n{l}"))
        };
        assert!(find("/usr/local/bin/link").starts_with("lrwxrwxrwx"));
        assert!(find("/usr/local/bin/link").ends_with("-> agent"));
        assert!(find("/usr/local/abs").ends_with("-> /usr/local/bin/agent"));
        assert!(find("/usr/local/etc/talos/config.yaml").starts_with("-r-------- 0/0"));
        assert!(find("/usr/local/share/private").starts_with("drwx------"));
        assert!(find("/usr").starts_with("drwxr-xr-x"));
        assert!(find("/usr/local/lib/big.bin").contains(&format!(" {} ", big.len())));

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        run(&["-d", dest.to_str().unwrap(), p]);
        for (path, node) in &t.entries {
            let on_disk = dest.join(path);
            match &node.kind {
                NodeKind::File(lay) => {
                    assert_eq!(
                        std::fs::read(&on_disk).unwrap(),
                        lay.to_vec().unwrap(),
                        "{path}"
                    );
                    let m = std::fs::metadata(&on_disk).unwrap();
                    assert_eq!(m.permissions().mode() & 0o7777, node.mode, "{path}");
                    assert_eq!(m.mtime() as u64, EPOCH, "{path}");
                }
                NodeKind::Symlink(target) => {
                    assert_eq!(std::fs::read_link(&on_disk).unwrap(), Path::new(target));
                }
                NodeKind::Dir => assert!(on_disk.is_dir()),
                _ => unreachable!(),
            }
        }
        let xa = |name: &str| -> Option<Vec<u8>> {
            let p = std::ffi::CString::new(
                dest.join("usr/local/etc/talos/config.yaml")
                    .to_str()
                    .unwrap(),
            )
            .unwrap();
            let n = std::ffi::CString::new(name).unwrap();
            let mut buf = vec![0u8; 256];
            // SAFETY: valid NUL-terminated strings and a buffer of the given length.
            let r = unsafe {
                libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            (r >= 0).then(|| buf[..r as usize].to_vec())
        };
        assert_eq!(
            xa("user.test").as_deref(),
            Some(&b"hello"[..]),
            "user xattr extracted"
        );
        match xa("security.selinux") {
            Some(v) => assert_eq!(v, SELINUX),
            None => eprintln!("security.selinux could not be set on the extracted file here"),
        }
    }
}
