//! An ext4 filesystem written directly, without `mkfs`: the `IMAGECACHE` partition Talos
//! mounts as its local image cache.
//!
//! Talos provisions that volume as ext4 (`createVolumeConfigDisk` in
//! `internal/app/machined/pkg/controllers/cri/image_cache_config.go`, v1.12.5:
//! `FilesystemSpec.Type = block.FilesystemTypeEXT4`) and mounts it read-only unless it has to
//! copy a cache from an ISO into it. So the filesystem only has to be a valid ext4 that the
//! kernel mounts and `e2fsck -fn` passes; it need not be a good one to write to later.
//!
//! What is written (all little-endian, field offsets from the kernel's
//! `Documentation/filesystems/ext4/` layout):
//! - 4 KiB blocks, 32768 blocks per group, 256-byte inodes with 32 bytes of extra fields;
//! - features: `filetype` and `extents` (incompatible), `sparse_super`, `large_file` and
//!   `extra_isize` (read-only compatible); no journal (the volume is read-only in use and is
//!   rewritten whole, never repaired), no `flex_bg`, `64bit`, `metadata_csum` or `dir_index`
//!   (linear directories: a cache directory holds a few hundred entries), no resize inode;
//! - every group starts with its metadata: a superblock and group descriptor copy where
//!   `sparse_super` puts one (groups 0, 1 and powers of 3, 5 and 7), the block bitmap, the
//!   inode bitmap and the inode table; data follows;
//! - files and directories are placed one after another in path order, each as few extents
//!   as the group metadata allows (a run stops only at the next group's metadata), four in
//!   the inode, more in one level of extent leaf blocks;
//! - inode 2 is `/`, 11 `/lost+found` (four blocks, as `mke2fs` makes it, so `e2fsck` never
//!   has to), the reserved inodes 1–10 are zero and marked used.
//!
//! Everything is a function of the tree, the label, the UUID and the time, so the same input
//! gives the same bytes. File contents stay [`Layout`]s (regions of input files): nothing big
//! is read or held here.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::layout::Layout;
use crate::tree::{NodeKind, Tree};

/// Block size.
pub const BLOCK: u64 = 4096;
const BLOCKS_PER_GROUP: u64 = 8 * BLOCK;
const INODE_SIZE: u64 = 256;
/// Bytes of the inode past the 128-byte base (`i_extra_isize`): up to `i_projid`.
const EXTRA_ISIZE: u16 = 32;
const DESC_SIZE: u64 = 32;
const ROOT_INO: u32 = 2;
const LOST_FOUND_INO: u32 = 11;
const FIRST_INO: u32 = 11;
const LOST_FOUND_BLOCKS: u64 = 4;
const EXTENTS_IN_INODE: usize = 4;
const EXTENTS_PER_LEAF: usize = ((BLOCK - 12) / 12) as usize;
/// The longest initialized extent.
const MAX_EXTENT_BLOCKS: u64 = 32768;
/// Without the `64bit` feature, block numbers are 32 bits.
const MAX_BLOCKS: u64 = 1 << 32;
/// Without `huge_file`, a file's block count (in 512-byte units) is 32 bits.
const MAX_FILE: u64 = 1 << 41;

const EXT4_MAGIC: u16 = 0xEF53;
const EXTENT_MAGIC: u16 = 0xF30A;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const EXTENTS_FL: u32 = 0x80000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;

/// How big the filesystem is.
#[derive(Clone, Copy, Debug)]
pub enum Size {
    /// Exactly this many bytes (a whole number of blocks is used; a tail too short for its
    /// group's metadata is left outside the filesystem).
    Exact(u64),
    /// The smallest size that holds the tree with at least this many bytes free, rounded up
    /// to a MiB.
    Fit { free: u64 },
}

/// What to write.
pub struct Ext4Input<'a> {
    /// Directories and regular files (nothing else is accepted).
    pub tree: &'a Tree,
    /// Filesystem label (at most 16 bytes).
    pub label: &'a str,
    pub uuid: [u8; 16],
    /// Every timestamp.
    pub epoch: u64,
    pub size: Size,
    /// Inodes to leave free beyond those the tree uses.
    pub spare_inodes: u32,
}

/// The written filesystem.
pub struct Ext4 {
    pub layout: Layout,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
}

/// Build the filesystem.
pub fn build(input: &Ext4Input) -> Result<Ext4> {
    if input.label.len() > 16 {
        bail!(
            "ext4 label {:?} is longer than 16 bytes",
            input.label.chars().take(40).collect::<String>()
        );
    }
    if input.epoch >= (1 << 34) {
        bail!(
            "time {} is past what ext4 timestamps hold (year 2446)",
            input.epoch
        );
    }
    let nodes = collect(input.tree)?;
    let inodes_needed =
        u64::from(FIRST_INO) + nodes.len() as u64 - 1 + u64::from(input.spare_inodes);
    let data_blocks: u64 = nodes.iter().map(|n| n.blocks).sum::<u64>() + LOST_FOUND_BLOCKS;
    let mut shrunk = false;
    let mut blocks = match input.size {
        Size::Exact(bytes) => bytes / BLOCK,
        // A first guess: data, a little metadata per group; grown below until it fits.
        Size::Fit { free } => {
            let d = data_blocks + free.div_ceil(BLOCK);
            (d + d / 64 + 64).next_multiple_of(256)
        }
    };
    loop {
        let geo = match Geometry::new(blocks, inodes_needed) {
            Ok(g) => g,
            Err(Short::Blocks(more)) => {
                if matches!(input.size, Size::Exact(_)) {
                    bail!(
                        "an ext4 filesystem of {} bytes has no room for its own metadata",
                        blocks * BLOCK
                    );
                }
                blocks = (blocks + more).next_multiple_of(256);
                continue;
            }
            Err(Short::TailGroup) => {
                blocks = match input.size {
                    Size::Exact(_) => blocks - blocks % BLOCKS_PER_GROUP,
                    Size::Fit { .. } => (blocks + 2048).next_multiple_of(256),
                };
                continue;
            }
            Err(Short::TooBig(what)) => bail!("{what}"),
        };
        match place(&geo, &nodes) {
            Ok(placed) => {
                if let Size::Fit { free } = input.size {
                    let want = free.div_ceil(BLOCK);
                    let have = geo.data_blocks() - placed.used_data;
                    if have < want {
                        blocks = (blocks + want - have).next_multiple_of(256);
                        continue;
                    }
                    // The first guess is generous: try the tightest size once (it grows
                    // again from there if the metadata of fewer groups moved things).
                    let tight = (placed.last_used + want).next_multiple_of(256);
                    if !shrunk && tight < blocks {
                        shrunk = true;
                        blocks = tight;
                        continue;
                    }
                }
                return write(input, &geo, &nodes, &placed);
            }
            Err(short) => {
                if matches!(input.size, Size::Exact(_)) {
                    bail!(
                        "the files need {} more bytes than the {}-byte ext4 filesystem holds",
                        short * BLOCK,
                        blocks * BLOCK
                    );
                }
                blocks = (blocks + short + short / 32 + 1).next_multiple_of(256);
            }
        }
    }
}

/// One inode to write (besides the reserved ones and lost+found).
struct NodeInfo<'a> {
    path: String,
    ino: u32,
    parent: u32,
    dir: bool,
    mode: u16,
    content: Option<&'a Layout>,
    size: u64,
    blocks: u64,
    /// Directories: the packed entry blocks.
    dir_blocks: Vec<Vec<u8>>,
    links: u16,
}

/// The tree as inodes: index 0 is the root; the rest in path order.
fn collect(tree: &Tree) -> Result<Vec<NodeInfo<'_>>> {
    let mut dirs: BTreeMap<String, u16> = BTreeMap::new();
    for d in tree.all_dirs() {
        let mode = tree
            .entries
            .get(&d)
            .map_or(0o755, |n| n.mode as u16 & 0o7777);
        dirs.insert(d, mode);
    }
    let mut paths: BTreeMap<&str, Option<&Layout>> = BTreeMap::new();
    for d in dirs.keys() {
        paths.insert(d.as_str(), None);
    }
    for (p, n) in &tree.entries {
        match &n.kind {
            NodeKind::Dir => {}
            NodeKind::File(l) => {
                if dirs.contains_key(p) {
                    bail!("{p} is both a file and a directory");
                }
                paths.insert(p.as_str(), Some(l));
            }
            other => bail!(
                "{p} is a {}: this filesystem holds only directories and regular files",
                other.describe()
            ),
        }
    }
    if paths.contains_key("lost+found") {
        bail!("lost+found is the filesystem's own directory and cannot be given");
    }
    let mut nodes = vec![NodeInfo {
        path: String::new(),
        ino: ROOT_INO,
        parent: ROOT_INO,
        dir: true,
        mode: 0o755,
        content: None,
        size: 0,
        blocks: 0,
        dir_blocks: Vec::new(),
        links: 3,
    }];
    let mut ino_of: BTreeMap<&str, u32> = BTreeMap::new();
    ino_of.insert("", ROOT_INO);
    let mut next = FIRST_INO + 1;
    for (&p, content) in &paths {
        for c in p.split('/') {
            if c.is_empty() || c.len() > 255 || c == "." || c == ".." {
                bail!("{p}: a name must be 1 to 255 bytes and not . or ..");
            }
        }
        let parent = *ino_of
            .get(crate::tree::parent_of(p))
            .with_context(|| format!("{p}: its directory was not placed"))?;
        let (dir, mode, size) = match content {
            None => (true, dirs[p], 0),
            Some(l) => (false, tree.entries[p].mode as u16 & 0o7777, l.len()),
        };
        if size >= MAX_FILE {
            bail!("{p}: {size} bytes is more than a file here may hold (2 TiB)");
        }
        ino_of.insert(p, next);
        nodes.push(NodeInfo {
            path: p.to_string(),
            ino: next,
            parent,
            dir,
            mode,
            content: *content,
            size,
            blocks: size.div_ceil(BLOCK),
            dir_blocks: Vec::new(),
            links: if dir { 2 } else { 1 },
        });
        next = next
            .checked_add(1)
            .context("more files than ext4 has inodes for")?;
    }
    // Directory entries: children in name order (the paths are sorted, so a directory's
    // children come in name order as long as no name sorts below '/': compare names).
    let mut children: BTreeMap<u32, Vec<(String, u32, u8)>> = BTreeMap::new();
    children
        .entry(ROOT_INO)
        .or_default()
        .push(("lost+found".into(), LOST_FOUND_INO, FT_DIR));
    for n in &nodes[1..] {
        let name = n.path.rsplit('/').next().unwrap_or(&n.path).to_string();
        let ft = if n.dir { FT_DIR } else { FT_REG };
        children
            .entry(n.parent)
            .or_default()
            .push((name, n.ino, ft));
    }
    let subdirs: BTreeMap<u32, u16> =
        nodes[1..]
            .iter()
            .filter(|n| n.dir)
            .fold(BTreeMap::new(), |mut m, n| {
                *m.entry(n.parent).or_insert(0) += 1;
                m
            });
    for n in nodes.iter_mut().filter(|n| n.dir) {
        let mut list = children.remove(&n.ino).unwrap_or_default();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let extra = subdirs.get(&n.ino).copied().unwrap_or(0) + u16::from(n.ino == ROOT_INO);
        n.links = 2u16
            .checked_add(extra)
            .context("a directory with more than 65000 subdirectories")?;
        n.dir_blocks = dir_blocks(n.ino, n.parent, &list);
        n.blocks = n.dir_blocks.len() as u64;
        n.size = n.blocks * BLOCK;
    }
    Ok(nodes)
}

/// Pack `.`, `..` and the entries into directory blocks (linear format: every block's last
/// entry reaches the block's end).
fn dir_blocks(ino: u32, parent: u32, list: &[(String, u32, u8)]) -> Vec<Vec<u8>> {
    let mut all: Vec<(&str, u32, u8)> = vec![(".", ino, FT_DIR), ("..", parent, FT_DIR)];
    all.extend(list.iter().map(|(n, i, t)| (n.as_str(), *i, *t)));
    let mut blocks = Vec::new();
    let mut cur = vec![0u8; BLOCK as usize];
    let mut pos = 0usize;
    let mut last = 0usize;
    for (name, ino, ft) in all {
        let need = (8 + name.len()).next_multiple_of(4);
        if pos + need > BLOCK as usize {
            let rec = (BLOCK as usize - last) as u16;
            cur[last + 4..last + 6].copy_from_slice(&rec.to_le_bytes());
            blocks.push(std::mem::replace(&mut cur, vec![0u8; BLOCK as usize]));
            pos = 0;
        }
        cur[pos..pos + 4].copy_from_slice(&ino.to_le_bytes());
        cur[pos + 4..pos + 6].copy_from_slice(&(need as u16).to_le_bytes());
        cur[pos + 6] = name.len() as u8;
        cur[pos + 7] = ft;
        cur[pos + 8..pos + 8 + name.len()].copy_from_slice(name.as_bytes());
        last = pos;
        pos += need;
    }
    let rec = (BLOCK as usize - last) as u16;
    cur[last + 4..last + 6].copy_from_slice(&rec.to_le_bytes());
    blocks.push(cur);
    blocks
}

/// Why a geometry does not work.
enum Short {
    /// This many more blocks are needed for metadata alone.
    Blocks(u64),
    /// The last group is too short for its own metadata.
    TailGroup,
    TooBig(String),
}

/// Where the groups and their metadata are.
struct Geometry {
    blocks: u64,
    groups: u64,
    inodes_per_group: u64,
    gdt_blocks: u64,
    itable_blocks: u64,
}

fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut p = b;
        while p < g {
            p *= b;
        }
        p == g
    })
}

impl Geometry {
    fn new(blocks: u64, inodes: u64) -> std::result::Result<Geometry, Short> {
        if blocks >= MAX_BLOCKS {
            return Err(Short::TooBig(format!(
                "{} bytes is more than this ext4 layout holds (16 TiB)",
                blocks * BLOCK
            )));
        }
        if blocks < 64 {
            return Err(Short::Blocks(64 - blocks));
        }
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let per_group = inodes.div_ceil(groups).max(16).next_multiple_of(16);
        if per_group > 8 * BLOCK {
            return Err(Short::Blocks(
                (inodes.div_ceil(8 * BLOCK) - groups) * BLOCKS_PER_GROUP,
            ));
        }
        if per_group * groups >= 1 << 32 {
            return Err(Short::TooBig("more than 2^32 inodes".into()));
        }
        let geo = Geometry {
            blocks,
            groups,
            inodes_per_group: per_group,
            gdt_blocks: (groups * DESC_SIZE).div_ceil(BLOCK),
            itable_blocks: per_group * INODE_SIZE / BLOCK,
        };
        let last = groups - 1;
        let last_len = blocks - last * BLOCKS_PER_GROUP;
        if last_len <= geo.overhead(last) {
            return Err(if groups == 1 {
                Short::Blocks(geo.overhead(0) + 1 - last_len)
            } else {
                Short::TailGroup
            });
        }
        Ok(geo)
    }

    fn overhead(&self, g: u64) -> u64 {
        let sb = if has_super(g) { 1 + self.gdt_blocks } else { 0 };
        sb + 2 + self.itable_blocks
    }

    fn start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    fn end(&self, g: u64) -> u64 {
        ((g + 1) * BLOCKS_PER_GROUP).min(self.blocks)
    }

    fn data_blocks(&self) -> u64 {
        (0..self.groups)
            .map(|g| self.end(g) - self.start(g) - self.overhead(g))
            .sum()
    }
}

/// A run of blocks: (first block, count).
type Run = (u64, u64);

/// Hands out data blocks in order, skipping each group's metadata.
struct Cursor<'a> {
    geo: &'a Geometry,
    group: u64,
    next: u64,
}

impl Cursor<'_> {
    /// `n` blocks as runs; `Err(missing)` when the filesystem is full.
    fn take(&mut self, mut n: u64) -> std::result::Result<Vec<Run>, u64> {
        let mut runs: Vec<Run> = Vec::new();
        while n > 0 {
            if self.group >= self.geo.groups {
                return Err(n);
            }
            let end = self.geo.end(self.group);
            if self.next >= end {
                self.group += 1;
                if self.group < self.geo.groups {
                    self.next = self.geo.start(self.group) + self.geo.overhead(self.group);
                }
                continue;
            }
            let len = n.min(end - self.next).min(MAX_EXTENT_BLOCKS);
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == self.next && r.1 + len <= MAX_EXTENT_BLOCKS => r.1 += len,
                _ => runs.push((self.next, len)),
            }
            self.next += len;
            n -= len;
        }
        Ok(runs)
    }
}

/// Where each inode's blocks went.
struct Placed {
    /// Per node (same order as the nodes): data runs and extent leaf blocks.
    runs: Vec<Vec<Run>>,
    leaves: Vec<Vec<u64>>,
    lost_found: Vec<Run>,
    used_data: u64,
    last_used: u64,
}

/// Place every inode's data; `Err(blocks missing)` when it does not fit.
fn place(geo: &Geometry, nodes: &[NodeInfo]) -> std::result::Result<Placed, u64> {
    let mut c = Cursor {
        geo,
        group: 0,
        next: geo.overhead(0),
    };
    let mut missing = 0u64;
    let mut take = |c: &mut Cursor, n: u64| -> Vec<Run> {
        c.take(n).unwrap_or_else(|m| {
            missing += m;
            Vec::new()
        })
    };
    let mut runs = Vec::with_capacity(nodes.len());
    let mut leaves = Vec::with_capacity(nodes.len());
    let mut used = 0u64;
    // The root directory first, then lost+found, then the rest in path order.
    let mut lost_found = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let r = take(&mut c, n.blocks);
        let l = if r.len() > EXTENTS_IN_INODE {
            let count = r.len().div_ceil(EXTENTS_PER_LEAF) as u64;
            take(&mut c, count)
                .into_iter()
                .flat_map(|(s, n)| s..s + n)
                .collect()
        } else {
            Vec::new()
        };
        used += n.blocks + l.len() as u64;
        runs.push(r);
        leaves.push(l);
        if i == 0 {
            lost_found = take(&mut c, LOST_FOUND_BLOCKS);
            used += LOST_FOUND_BLOCKS;
        }
    }
    if missing > 0 {
        return Err(missing);
    }
    Ok(Placed {
        runs,
        leaves,
        lost_found,
        used_data: used,
        last_used: c.next,
    })
}

fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// An inode timestamp: the low 32 bits (signed seconds) and the `_extra` field's epoch bits.
fn inode_time(t: u64) -> (u32, u32) {
    let lo = t as u32;
    let extra = ((t as i64 - i64::from(lo as i32)) >> 32) as u32 & 3;
    (lo, extra)
}

/// Extent leaf blocks: (block number, content).
type LeafBlocks = Vec<(u64, Vec<u8>)>;

/// Extent tree root (60 bytes of `i_block`) and its leaf blocks.
fn extent_tree(runs: &[Run], leaves: &[u64]) -> Result<([u8; 60], LeafBlocks)> {
    let mut root = [0u8; 60];
    let header = |b: &mut [u8], entries: usize, max: usize, depth: u16| {
        put16(b, 0, EXTENT_MAGIC);
        put16(b, 2, entries as u16);
        put16(b, 4, max as u16);
        put16(b, 6, depth);
    };
    let extent = |b: &mut [u8], logical: u64, (start, len): Run| {
        put32(b, 0, logical as u32);
        put16(b, 4, len as u16);
        put16(b, 6, (start >> 32) as u16);
        put32(b, 8, start as u32);
    };
    let logicals: Vec<u64> = runs
        .iter()
        .scan(0u64, |l, r| {
            let at = *l;
            *l += r.1;
            Some(at)
        })
        .collect();
    if runs.len() <= EXTENTS_IN_INODE {
        header(&mut root, runs.len(), EXTENTS_IN_INODE, 0);
        for (i, (r, l)) in runs.iter().zip(&logicals).enumerate() {
            extent(&mut root[12 + 12 * i..], *l, *r);
        }
        return Ok((root, Vec::new()));
    }
    let chunks: Vec<_> = runs.chunks(EXTENTS_PER_LEAF).collect();
    if chunks.len() > EXTENTS_IN_INODE || chunks.len() != leaves.len() {
        bail!(
            "a file in {} pieces needs a deeper extent tree than this writer makes",
            runs.len()
        );
    }
    header(&mut root, chunks.len(), EXTENTS_IN_INODE, 1);
    let mut out = Vec::new();
    for (i, (chunk, &leaf)) in chunks.iter().zip(leaves).enumerate() {
        let first = i * EXTENTS_PER_LEAF;
        let idx = &mut root[12 + 12 * i..24 + 12 * i];
        put32(idx, 0, logicals[first] as u32);
        put32(idx, 4, leaf as u32);
        put16(idx, 8, (leaf >> 32) as u16);
        let mut b = vec![0u8; BLOCK as usize];
        header(&mut b, chunk.len(), EXTENTS_PER_LEAF, 0);
        for (j, r) in chunk.iter().enumerate() {
            extent(&mut b[12 + 12 * j..], logicals[first + j], *r);
        }
        out.push((leaf, b));
    }
    Ok((root, out))
}

struct InodeSpec {
    mode: u16,
    size: u64,
    links: u16,
    /// Blocks used, extent leaves included.
    blocks: u64,
    i_block: [u8; 60],
}

fn inode_bytes(spec: &InodeSpec, epoch: u64) -> [u8; INODE_SIZE as usize] {
    let mut b = [0u8; INODE_SIZE as usize];
    let (t, extra) = inode_time(epoch);
    put16(&mut b, 0x0, spec.mode);
    put32(&mut b, 0x4, spec.size as u32);
    put32(&mut b, 0x8, t);
    put32(&mut b, 0xC, t);
    put32(&mut b, 0x10, t);
    put16(&mut b, 0x1A, spec.links);
    put32(&mut b, 0x1C, (spec.blocks * (BLOCK / 512)) as u32);
    put32(&mut b, 0x20, EXTENTS_FL);
    b[0x28..0x64].copy_from_slice(&spec.i_block);
    put32(&mut b, 0x6C, (spec.size >> 32) as u32);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    for o in [0x84, 0x88, 0x8C, 0x94] {
        put32(&mut b, o, extra);
    }
    put32(&mut b, 0x90, t);
    b
}

fn write(input: &Ext4Input, geo: &Geometry, nodes: &[NodeInfo], placed: &Placed) -> Result<Ext4> {
    let mut layout = Layout::new(geo.blocks * BLOCK);
    let at = |block: u64| block * BLOCK;
    let mut used_blocks: Vec<Run> = Vec::new();
    let mut inodes: BTreeMap<u32, [u8; INODE_SIZE as usize]> = BTreeMap::new();
    let mut dirs_per_group = vec![0u16; geo.groups as usize];
    let group_of = |ino: u32| u64::from(ino - 1) / geo.inodes_per_group;

    // lost+found: an empty directory of four blocks.
    let mut lf = dir_blocks(LOST_FOUND_INO, ROOT_INO, &[]);
    while (lf.len() as u64) < LOST_FOUND_BLOCKS {
        let mut b = vec![0u8; BLOCK as usize];
        put16(&mut b, 4, BLOCK as u16);
        lf.push(b);
    }
    let lf_runs = &placed.lost_found;
    put_blocks(&mut layout, lf_runs, &lf)?;
    used_blocks.extend(lf_runs);
    let (i_block, _) = extent_tree(lf_runs, &[])?;
    inodes.insert(
        LOST_FOUND_INO,
        inode_bytes(
            &InodeSpec {
                mode: S_IFDIR | 0o700,
                size: LOST_FOUND_BLOCKS * BLOCK,
                links: 2,
                blocks: LOST_FOUND_BLOCKS,
                i_block,
            },
            input.epoch,
        ),
    );
    dirs_per_group[group_of(LOST_FOUND_INO) as usize] += 1;

    for ((n, runs), leaves) in nodes.iter().zip(&placed.runs).zip(&placed.leaves) {
        if n.dir {
            put_blocks(&mut layout, runs, &n.dir_blocks)?;
            dirs_per_group[group_of(n.ino) as usize] += 1;
        } else if let Some(content) = n.content {
            let mut logical = 0u64;
            for &(start, len) in runs {
                let bytes = (len * BLOCK).min(n.size - logical * BLOCK);
                layout
                    .put_layout_range(at(start), content, logical * BLOCK, bytes, true)
                    .with_context(|| format!("placing {}", n.path))?;
                let tail = len * BLOCK - bytes;
                if tail > 0 {
                    layout.put_zeros(at(start) + bytes, tail)?;
                }
                logical += len;
            }
        }
        used_blocks.extend(runs);
        let (i_block, leaf_blocks) = extent_tree(runs, leaves)?;
        for (b, bytes) in leaf_blocks {
            layout.put_bytes(at(b), bytes)?;
            used_blocks.push((b, 1));
        }
        let mode = if n.dir { S_IFDIR } else { S_IFREG } | n.mode;
        inodes.insert(
            n.ino,
            inode_bytes(
                &InodeSpec {
                    mode,
                    size: n.size,
                    links: n.links,
                    blocks: n.blocks + leaves.len() as u64,
                    i_block,
                },
                input.epoch,
            ),
        );
    }

    // Per-group metadata, bitmaps and counts.
    let mut descs = vec![0u8; (geo.gdt_blocks * BLOCK) as usize];
    let mut block_bitmaps: Vec<Vec<u8>> =
        (0..geo.groups).map(|_| vec![0u8; BLOCK as usize]).collect();
    let set = |bm: &mut [u8], bit: u64| bm[(bit / 8) as usize] |= 1 << (bit % 8);
    for g in 0..geo.groups {
        for b in geo.start(g)..geo.start(g) + geo.overhead(g) {
            set(&mut block_bitmaps[g as usize], b - geo.start(g));
        }
    }
    for &(start, len) in &used_blocks {
        for b in start..start + len {
            let g = b / BLOCKS_PER_GROUP;
            set(&mut block_bitmaps[g as usize], b - geo.start(g));
        }
    }
    // Padding past the end of the filesystem in the last group's bitmap is set.
    let last = geo.groups - 1;
    for bit in geo.end(last) - geo.start(last)..BLOCKS_PER_GROUP {
        set(&mut block_bitmaps[last as usize], bit);
    }
    let used_inodes = u64::from(FIRST_INO) + nodes.len() as u64 - 1;
    let inodes_count = geo.inodes_per_group * geo.groups;
    let mut free_blocks_total = 0u64;
    for g in 0..geo.groups {
        let gs = geo.start(g);
        let meta = gs + if has_super(g) { 1 + geo.gdt_blocks } else { 0 };
        let (bb, ib, it) = (meta, meta + 1, meta + 2);
        let bm = &block_bitmaps[g as usize];
        let len = geo.end(g) - gs;
        let used = (0..len)
            .filter(|&i| bm[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .count() as u64;
        let free_blocks = len - used;
        free_blocks_total += free_blocks;
        // Inodes 1..=used_inodes are in use; those of this group:
        let first = g * geo.inodes_per_group + 1;
        let in_group = used_inodes
            .saturating_sub(first - 1)
            .min(geo.inodes_per_group);
        let mut ibm = vec![0xFFu8; BLOCK as usize];
        for i in in_group..geo.inodes_per_group {
            ibm[(i / 8) as usize] &= !(1 << (i % 8));
        }
        layout.put_bytes(at(bb), bm.clone())?;
        layout.put_bytes(at(ib), ibm)?;
        // The inode table: written inodes as bytes, the rest zeros (which must be written:
        // e2fsck reads every inode of the table).
        let table_len = geo.itable_blocks * BLOCK;
        let written = (in_group * INODE_SIZE).next_multiple_of(BLOCK);
        if written > 0 {
            let mut t = vec![0u8; written as usize];
            for i in 0..in_group {
                let ino = (first + i) as u32;
                if let Some(b) = inodes.get(&ino) {
                    let o = (i * INODE_SIZE) as usize;
                    t[o..o + INODE_SIZE as usize].copy_from_slice(b);
                }
            }
            layout.put_bytes(at(it), t)?;
        }
        if table_len > written {
            layout.put_zeros(at(it) + written, table_len - written)?;
        }
        let d = &mut descs[(g * DESC_SIZE) as usize..((g + 1) * DESC_SIZE) as usize];
        put32(d, 0x0, bb as u32);
        put32(d, 0x4, ib as u32);
        put32(d, 0x8, it as u32);
        put16(d, 0xC, free_blocks as u16);
        put16(d, 0xE, (geo.inodes_per_group - in_group) as u16);
        put16(d, 0x10, dirs_per_group[g as usize]);
    }
    let free_inodes = inodes_count - used_inodes;
    let sb = superblock(input, geo, free_blocks_total, free_inodes);
    for g in (0..geo.groups).filter(|&g| has_super(g)) {
        let mut block = vec![0u8; BLOCK as usize];
        let o = if g == 0 { 1024 } else { 0 };
        block[o..o + 1024].copy_from_slice(&sb);
        put16(&mut block, o + 0x5A, g as u16);
        layout.put_bytes(at(geo.start(g)), block)?;
        layout.put_bytes(at(geo.start(g) + 1), descs.clone())?;
    }
    Ok(Ext4 {
        layout,
        blocks: geo.blocks,
        free_blocks: free_blocks_total,
        inodes: inodes_count as u32,
        free_inodes: free_inodes as u32,
    })
}

fn put_blocks(layout: &mut Layout, runs: &[Run], blocks: &[Vec<u8>]) -> Result<()> {
    let mut i = 0;
    for &(start, len) in runs {
        for b in start..start + len {
            layout.put_bytes(b * BLOCK, blocks[i].clone())?;
            i += 1;
        }
    }
    Ok(())
}

fn superblock(input: &Ext4Input, geo: &Geometry, free_blocks: u64, free_inodes: u64) -> Vec<u8> {
    let mut s = vec![0u8; 1024];
    let t = input.epoch;
    put32(&mut s, 0x0, (geo.inodes_per_group * geo.groups) as u32);
    put32(&mut s, 0x4, geo.blocks as u32);
    put32(&mut s, 0xC, free_blocks as u32);
    put32(&mut s, 0x10, free_inodes as u32);
    put32(&mut s, 0x18, 2); // 1024 << 2 = 4096
    put32(&mut s, 0x1C, 2);
    put32(&mut s, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 0x28, geo.inodes_per_group as u32);
    put32(&mut s, 0x30, t as u32); // s_wtime
    put16(&mut s, 0x36, 0xFFFF); // s_max_mnt_count: no forced checks
    put16(&mut s, 0x38, EXT4_MAGIC);
    put16(&mut s, 0x3A, 1); // clean
    put16(&mut s, 0x3C, 1); // errors: continue
    put32(&mut s, 0x40, t as u32); // s_lastcheck
    put32(&mut s, 0x4C, 1); // dynamic revision
    put32(&mut s, 0x54, FIRST_INO);
    put16(&mut s, 0x58, INODE_SIZE as u16);
    put32(&mut s, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
    put32(
        &mut s,
        0x64,
        RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_EXTRA_ISIZE,
    );
    s[0x68..0x78].copy_from_slice(&input.uuid);
    s[0x78..0x78 + input.label.len()].copy_from_slice(input.label.as_bytes());
    let seed = Sha256::new()
        .chain_update(b"edgeimage ext4 directory hash seed")
        .chain_update(input.uuid)
        .finalize();
    s[0xEC..0xFC].copy_from_slice(&seed[..16]);
    s[0xFC] = 1; // s_def_hash_version: half MD4 (unused without dir_index)
    put32(&mut s, 0x108, t as u32); // s_mkfs_time
    put16(&mut s, 0x15C, EXTRA_ISIZE);
    put16(&mut s, 0x15E, EXTRA_ISIZE);
    put32(&mut s, 0x160, 0x1); // s_flags: signed directory hash
                               // The high bytes of the times (s_wtime_hi, s_mtime_hi, s_mkfs_time_hi, s_lastcheck_hi).
    let hi = (t >> 32) as u8;
    s[0x274] = hi;
    s[0x276] = hi;
    s[0x277] = hi;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    fn tree(files: &[(&str, Vec<u8>)]) -> Tree {
        let mut t = Tree::new();
        for (p, c) in files {
            t.insert(*p, Node::file(Layout::from_bytes(c.clone()), 0o644));
        }
        t
    }

    fn build_fit(t: &Tree) -> Ext4 {
        build(&Ext4Input {
            tree: t,
            label: "IMAGECACHE",
            uuid: [7; 16],
            epoch: 1_700_000_000,
            size: Size::Fit { free: 0 },
            spare_inodes: 16,
        })
        .unwrap()
    }

    #[test]
    fn superblock_fields() {
        let e = build_fit(&tree(&[("a/b", b"hello".to_vec())]));
        let bytes = e.layout.to_vec().unwrap();
        let sb = &bytes[1024..2048];
        assert_eq!(u16::from_le_bytes([sb[0x38], sb[0x39]]), EXT4_MAGIC);
        assert_eq!(&sb[0x78..0x82], b"IMAGECACHE");
        assert_eq!(e.blocks % 256, 0);
        // Same input, same bytes.
        let again = build_fit(&tree(&[("a/b", b"hello".to_vec())]));
        assert_eq!(again.layout.to_vec().unwrap(), bytes);
    }

    #[test]
    fn sparse_super_groups() {
        let g: Vec<u64> = (0..60).filter(|&g| has_super(g)).collect();
        assert_eq!(g, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn directory_blocks_fill_their_block() {
        let list: Vec<(String, u32, u8)> = (0..200)
            .map(|i| (format!("sha256-{i:064x}"), 100 + i, FT_REG))
            .collect();
        let blocks = dir_blocks(12, 2, &list);
        assert!(blocks.len() > 1);
        for b in &blocks {
            let mut pos = 0usize;
            while pos < BLOCK as usize {
                let rec = u16::from_le_bytes([b[pos + 4], b[pos + 5]]) as usize;
                assert!(rec >= 8 && rec % 4 == 0);
                pos += rec;
            }
            assert_eq!(pos, BLOCK as usize);
        }
    }

    #[test]
    fn refuses_what_it_cannot_hold() {
        let mut t = Tree::new();
        t.insert("link", Node::symlink("x"));
        let err = build(&Ext4Input {
            tree: &t,
            label: "X",
            uuid: [0; 16],
            epoch: 0,
            size: Size::Fit { free: 0 },
            spare_inodes: 0,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("link is a symlink"), "{err}");
        let t = tree(&[("big", vec![1u8; 3 << 20])]);
        let err = build(&Ext4Input {
            tree: &t,
            label: "X",
            uuid: [0; 16],
            epoch: 0,
            size: Size::Exact(2 << 20),
            spare_inodes: 0,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("more bytes than"), "{err}");
    }
}
