//! Reading a FAT12, FAT16 or FAT32 volume that edgeimage did not write itself: an ESP
//! (`inspect`), the installer stick's payload and records partitions, a `metal-iso`
//! configuration partition (`inspect`, `verify`). Read-only, written from the specification
//! (Microsoft "FAT: General Overview of On-Disk Format" 1.03, and its VFAT long-name rules),
//! the same description [`crate::compose::fat`] writes from.
//!
//! Why not the `fatfs` crate: its release 0.3.6 panics on crafted volumes (an integer
//! subtraction overflow in `sector_from_cluster` when a directory entry names cluster 0 or 1,
//! or a cluster past the end), follows a FAT chain that loops forever, and never ends a
//! directory walk whose subdirectory points back at the root or a parent (memory grows until
//! the process dies). `fatfs` stays a dependency only to *write* the installer stick's records
//! partition (and, in tests, as a second reader of what [`crate::compose::fat`] writes).
//!
//! For hostile volumes:
//! - the boot sector is checked with checked arithmetic (sector and cluster sizes, reserved
//!   sectors, FAT count and size, every region inside the volume and the volume inside the
//!   partition) before anything else is read;
//! - every cluster number is checked to be a data cluster (`2..clusters + 2`) before use;
//! - a file's FAT chain must end exactly after the clusters its size needs (a loop never
//!   ends, so it is caught there), a directory's chain within [`MAX_DIR_BYTES`];
//! - within one walk or lookup no directory cluster is read twice: a subdirectory whose
//!   cluster is the root's, a parent's or any other directory's is a cycle, refused;
//! - a walk stops at [`MAX_ENTRIES`] entries, [`MAX_DEPTH`] levels and paths of [`MAX_PATH`]
//!   bytes, and refuses files whose sizes add up to more than the data region (clusters
//!   shared between files), so a caller that reads every file reads at most the volume.
//!
//! So the work of any call is linear in the volume's size. Errors name the cluster, the byte
//! offset in the volume and the path of the entry, never bytes of a file.
//!
//! The FAT type follows from the cluster count, as the specification defines it (fewer than
//! 4085 clusters: FAT12, fewer than 65525: FAT16, else FAT32), with one exception Linux and
//! `mkfs.fat` make too: a boot sector in the FAT32 form (16-bit FAT size 0) is FAT32 whatever
//! its cluster count (`mkfs.fat -F 32` writes such volumes below 65525 clusters).
//!
//! Names: a long name is used when its entries are complete and their checksum matches the
//! short entry; otherwise the 8.3 name (lowercased as the NT case flags say; bytes past ASCII
//! read as Latin-1). Lookups compare names case-insensitively and also match the 8.3 alias.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;

use anyhow::{anyhow, bail, Context, Result};

use super::le::{u16_at as le16, u32_at as le32};

/// Entries a walk returns at most.
pub const MAX_ENTRIES: usize = 65_536;
/// Directory levels a walk descends at most.
pub const MAX_DEPTH: usize = 32;
/// The largest directory read (65536 entries of 32 bytes, the specification's limit).
pub const MAX_DIR_BYTES: u64 = 2 << 20;
/// The longest path (bytes) a walk builds.
pub const MAX_PATH: usize = 4096;
/// The largest cluster accepted (128 sectors of 2048 bytes; what Windows writes on 4 KiB
/// sector disks stays below).
pub const MAX_CLUSTER_BYTES: u64 = 256 << 10;

/// The largest FAT32 cluster count whose numbers stay below the reserved FAT values.
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;
const ENTRY: usize = 32;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_LONG_NAME_MASK: u8 = 0x3F;
const LFN_LAST: u8 = 0x40;
/// A long name has at most 20 entries of 13 UTF-16 units (255 units used).
const LFN_MAX_ENTRIES: usize = 20;
const LFN_UNITS: usize = 13;
const LFN_OFFSETS: [usize; LFN_UNITS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// FAT bytes read and kept per cache block, and blocks kept.
const FAT_BLOCK: u64 = 64 << 10;
const FAT_BLOCKS_KEPT: usize = 4;

/// The FAT variant of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// "FAT12", "FAT16" or "FAT32".
    pub fn as_str(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }

    fn bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// The bad-cluster mark; values above it end a chain.
    fn bad(self) -> u32 {
        match self {
            FatType::Fat12 => 0x0FF7,
            FatType::Fat16 => 0xFFF7,
            FatType::Fat32 => 0x0FFF_FFF7,
        }
    }
}

/// Bounds of a walk; [`Limits::default`] is [`MAX_ENTRIES`] and [`MAX_DEPTH`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: MAX_ENTRIES,
            max_depth: MAX_DEPTH,
        }
    }
}

/// A file or directory of the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `/`-separated path from the root (`""` for the root itself).
    pub path: String,
    /// Bytes (0 for a directory).
    pub size: u64,
    pub is_dir: bool,
    /// The first data cluster (0 for an empty file and for a FAT12/FAT16 root directory).
    pub first_cluster: u32,
    /// Byte offset of the entry's 32-byte short directory entry in the volume (0 for the root).
    pub entry_offset: u64,
}

impl Entry {
    /// The last component of the path (`""` for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// The path for messages: `/` for the root.
    fn shown(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }
}

/// Where the root directory is.
#[derive(Clone, Copy, Debug)]
enum Root {
    /// FAT12/FAT16: a fixed region of `bytes` at `offset`.
    Fixed { offset: u64, bytes: u64 },
    /// FAT32: a cluster chain.
    Cluster(u32),
}

type ReadAt<'a> = Box<dyn Fn(u64, &mut [u8]) -> io::Result<()> + 'a>;

/// An open volume. Reads go through the caller's `read_at(offset, buf)` over the partition.
pub struct Volume<'a> {
    read_at: ReadAt<'a>,
    fat_type: FatType,
    cluster_size: u64,
    clusters: u32,
    /// Byte offset of the FAT that is read (the active one of a FAT32 volume not mirrored).
    fat_offset: u64,
    /// Bytes of that FAT holding the entries of clusters 0 to `clusters + 1`.
    fat_bytes: u64,
    root: Root,
    data_offset: u64,
    /// The label in the boot sector (when its extended boot signature says there is one).
    bpb_label: Option<String>,
    /// FAT blocks recently read: (block number, bytes), most recent last.
    cache: RefCell<Vec<(u64, Vec<u8>)>>,
}

/// One link of a FAT chain.
enum Link {
    Next(u32),
    End,
    Free,
    Bad,
    /// A value that is neither a data cluster nor a mark (0x0001, or past the last cluster).
    Invalid(u32),
}

/// What the directories read so far in one walk or lookup hold: cluster → index of the
/// directory (in `paths`) whose chain holds it.
#[derive(Default)]
struct Seen {
    clusters: HashMap<u32, usize>,
    paths: Vec<String>,
}

impl<'a> Volume<'a> {
    /// Open the volume on a partition of `len` bytes read with `read_at` (which must fill the
    /// whole buffer or fail): checks the boot sector; nothing else is read yet.
    pub fn open(
        len: u64,
        read_at: impl Fn(u64, &mut [u8]) -> io::Result<()> + 'a,
    ) -> Result<Volume<'a>> {
        if len < 512 {
            bail!("the partition is {len} bytes, too small for a FAT boot sector (512 bytes)");
        }
        let mut b = [0u8; 512];
        read_at(0, &mut b).context("reading the boot sector (bytes 0..512)")?;
        let not_fat = "not a FAT volume:";
        let bps = u64::from(le16(&b, 11));
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
            bail!(
                "{not_fat} the boot sector's bytes per sector (byte 11) is {bps}, not 512, \
                 1024, 2048 or 4096"
            );
        }
        let spc = u64::from(b[13]);
        if spc == 0 || !spc.is_power_of_two() {
            bail!(
                "{not_fat} the boot sector's sectors per cluster (byte 13) is {spc}, not a \
                 power of two from 1 to 128"
            );
        }
        let cluster_size = bps * spc;
        if cluster_size > MAX_CLUSTER_BYTES {
            bail!(
                "the boot sector gives clusters of {cluster_size} bytes ({spc} sectors of \
                 {bps}), more than the {MAX_CLUSTER_BYTES} this reader accepts"
            );
        }
        let reserved = u64::from(le16(&b, 14));
        if reserved == 0 {
            bail!("{not_fat} the boot sector's reserved sector count (byte 14) is 0");
        }
        let fats = u64::from(b[16]);
        if fats == 0 {
            bail!("{not_fat} the boot sector's FAT count (byte 16) is 0");
        }
        let root_entries = u64::from(le16(&b, 17));
        let total = match le16(&b, 19) {
            0 => u64::from(le32(&b, 32)),
            n => u64::from(n),
        };
        if total == 0 {
            bail!("{not_fat} the boot sector's total sector count (bytes 19 and 32) is 0");
        }
        let fat16_size = u64::from(le16(&b, 22));
        let fat_sectors = match fat16_size {
            0 => u64::from(le32(&b, 36)),
            n => n,
        };
        if fat_sectors == 0 {
            bail!("{not_fat} the boot sector's FAT size (bytes 22 and 36) is 0");
        }
        // All below fit u64 easily: sectors < 2^32, sizes < 2^13, counts < 2^16.
        let volume_bytes = total * bps;
        if volume_bytes > len {
            bail!(
                "the boot sector says the volume is {volume_bytes} bytes ({total} sectors of \
                 {bps}), but the partition holds {len}"
            );
        }
        let root_sectors = (root_entries * ENTRY as u64).div_ceil(bps);
        let meta_sectors = reserved + fats * fat_sectors + root_sectors;
        let Some(data_sectors) = total.checked_sub(meta_sectors) else {
            bail!(
                "the FAT region ({reserved} reserved sectors, {fats} FATs of {fat_sectors} \
                 sectors, {root_sectors} root directory sectors) ends at byte {}, past the \
                 volume's end at byte {volume_bytes}",
                meta_sectors * bps
            );
        };
        let clusters = data_sectors / spc;
        if clusters == 0 {
            bail!(
                "the volume has no data cluster ({data_sectors} data sectors, {spc} per cluster)"
            );
        }
        let fat_type = if fat16_size == 0 {
            FatType::Fat32
        } else if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            bail!(
                "the boot sector is a FAT12/FAT16 one (16-bit FAT size at byte 22) but the \
                 volume has {clusters} clusters, more than FAT16 allows (65524)"
            );
        };
        if clusters > MAX_FAT32_CLUSTERS {
            bail!(
                "the volume has {clusters} clusters, more than FAT32 allows ({MAX_FAT32_CLUSTERS})"
            );
        }
        let clusters32 = clusters as u32;
        let fat_bytes = ((clusters + 2) * fat_type.bits()).div_ceil(8);
        if fat_sectors * bps < fat_bytes {
            bail!(
                "the FAT ({fat_sectors} sectors of {bps} bytes) is too small for the volume's \
                 {clusters} clusters ({fat_bytes} bytes needed)"
            );
        }
        let active = if fat_type == FatType::Fat32 && le16(&b, 40) & 0x80 != 0 {
            u64::from(le16(&b, 40) & 0x0F)
        } else {
            0
        };
        if active >= fats {
            bail!(
                "the boot sector names FAT {active} as the active one (byte 40), but the \
                 volume has {fats}"
            );
        }
        let fat_offset = (reserved + active * fat_sectors) * bps;
        let root_offset = (reserved + fats * fat_sectors) * bps;
        let data_offset = root_offset + root_sectors * bps;
        let (root, bpb_label) = match fat_type {
            FatType::Fat32 => {
                if root_entries != 0 {
                    bail!(
                        "the boot sector is a FAT32 one but gives {root_entries} fixed root \
                         directory entries (byte 17), which FAT32 does not have"
                    );
                }
                let c = le32(&b, 44);
                if c < 2 || u64::from(c) >= clusters + 2 {
                    bail!(
                        "the boot sector names cluster {c} as the root directory (byte 44), \
                         not a data cluster of this volume (2 to {})",
                        clusters + 1
                    );
                }
                (Root::Cluster(c), label_at(&b, 66, 71))
            }
            FatType::Fat12 | FatType::Fat16 => {
                if root_entries == 0 {
                    bail!(
                        "the boot sector gives no root directory entries (byte 17) for a {} \
                         volume",
                        fat_type.as_str()
                    );
                }
                (
                    Root::Fixed {
                        offset: root_offset,
                        bytes: root_entries * ENTRY as u64,
                    },
                    label_at(&b, 38, 43),
                )
            }
        };
        Ok(Volume {
            read_at: Box::new(read_at),
            fat_type,
            cluster_size,
            clusters: clusters32,
            fat_offset,
            fat_bytes,
            root,
            data_offset,
            bpb_label,
            cache: RefCell::new(Vec::new()),
        })
    }

    /// Open a volume held in memory.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Volume<'a>> {
        Volume::open(bytes.len() as u64, move |off, buf| {
            let src = usize::try_from(off)
                .ok()
                .and_then(|s| bytes.get(s..s.checked_add(buf.len())?))
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// Number of data clusters (numbered 2 to `clusters + 1`).
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// The root directory.
    pub fn root(&self) -> Entry {
        Entry {
            path: String::new(),
            size: 0,
            is_dir: true,
            first_cluster: match self.root {
                Root::Cluster(c) => c,
                Root::Fixed { .. } => 0,
            },
            entry_offset: 0,
        }
    }

    /// The volume label: the root directory's label entry, else the boot sector's label;
    /// trailing spaces removed, `""` when there is none (or it is `NO NAME`).
    pub fn label(&self) -> Result<String> {
        let mut seen = Seen::default();
        let mut label = None;
        self.scan_dir(&self.root(), &mut seen, &mut |item| {
            if let Item::Label(l) = item {
                label.get_or_insert(l);
            }
            Ok(())
        })?;
        let l = label.or_else(|| self.bpb_label.clone()).unwrap_or_default();
        Ok(if l == "NO NAME" { String::new() } else { l })
    }

    /// The entries of directory `dir` (not below it), in directory order.
    pub fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let mut seen = Seen::default();
        self.list_in(dir, &mut seen)
            .map(|v| v.into_iter().map(|(e, _)| e).collect())
    }

    /// Every file and directory below `dir` (use [`Volume::root`] for the whole volume), each
    /// directory's entries in directory order, subdirectories after their parent.
    pub fn walk(&self, dir: &Entry, limits: &Limits) -> Result<Vec<Entry>> {
        let mut seen = Seen::default();
        let mut out = Vec::new();
        let mut file_bytes: u64 = 0;
        let data_bytes = u64::from(self.clusters) * self.cluster_size;
        let mut stack = vec![(dir.clone(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            for (e, _) in self.list_in(&d, &mut seen)? {
                if out.len() >= limits.max_entries {
                    bail!(
                        "more than {} files and directories below {:?}: refused as corrupt or \
                         hostile",
                        limits.max_entries,
                        dir.shown()
                    );
                }
                if e.is_dir {
                    if depth + 1 > limits.max_depth {
                        bail!(
                            "directory {:?} (entry at byte {}) is nested more than {} levels \
                             deep: refused as corrupt or hostile",
                            e.path,
                            e.entry_offset,
                            limits.max_depth
                        );
                    }
                    stack.push((e.clone(), depth + 1));
                } else {
                    file_bytes = file_bytes.saturating_add(e.size);
                    if file_bytes > data_bytes {
                        bail!(
                            "the files below {:?} add up to more than the volume's data region \
                             of {data_bytes} bytes (at {:?}, entry at byte {}): their clusters \
                             are shared (cross-linked); run fsck.fat on the volume",
                            dir.shown(),
                            e.path,
                            e.entry_offset
                        );
                    }
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Look up a `/`-separated path from the root, comparing names case-insensitively (long
    /// names and 8.3 aliases). `Ok(None)` when a component is missing or a file stands where a
    /// directory is needed.
    pub fn find(&self, path: &str) -> Result<Option<Entry>> {
        let mut seen = Seen::default();
        let mut cur = self.root();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_dir {
                return Ok(None);
            }
            let found = self
                .list_in(&cur, &mut seen)?
                .into_iter()
                .find(|(e, short)| same_name(e.name(), part) || same_name(short, part));
            match found {
                Some((e, _)) => cur = e,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Open a file for reading: follows and checks its whole FAT chain once.
    pub fn open_file(&self, e: &Entry) -> Result<File<'_, 'a>> {
        if e.is_dir {
            bail!("{:?} is a directory, not a file", e.shown());
        }
        let chain = self.file_chain(e)?;
        Ok(File {
            vol: self,
            path: e.path.clone(),
            size: e.size,
            chain,
            pos: 0,
        })
    }

    /// All bytes of a file of at most `max` bytes.
    pub fn read_to_end(&self, e: &Entry, max: u64) -> Result<Vec<u8>> {
        if e.size > max {
            bail!(
                "{:?} is {} bytes, more than the {max} read here",
                e.shown(),
                e.size
            );
        }
        let f = self.open_file(e)?;
        let mut buf = vec![0u8; usize::try_from(e.size).context("file too large")?];
        f.read_at(0, &mut buf)?;
        Ok(buf)
    }

    // -----------------------------------------------------------------------------------
    // Reading

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (self.read_at)(offset, buf).with_context(|| {
            format!(
                "reading bytes {offset}..{} of the FAT volume",
                offset.saturating_add(buf.len() as u64)
            )
        })
    }

    /// Bytes `at..at + out.len()` of the FAT, through the block cache.
    fn fat_read(&self, at: u64, out: &mut [u8]) -> Result<()> {
        let mut cache = self.cache.borrow_mut();
        for (k, o) in out.iter_mut().enumerate() {
            let pos = at + k as u64;
            if pos >= self.fat_bytes {
                bail!("FAT byte {pos} is past the FAT's {} bytes", self.fat_bytes);
            }
            let block = pos / FAT_BLOCK;
            let index = match cache.iter().position(|(n, _)| *n == block) {
                Some(i) => i,
                None => {
                    let start = block * FAT_BLOCK;
                    let len = FAT_BLOCK.min(self.fat_bytes - start) as usize;
                    let mut data = vec![0u8; len];
                    self.read(self.fat_offset + start, &mut data)
                        .context("reading the FAT")?;
                    if cache.len() >= FAT_BLOCKS_KEPT {
                        cache.remove(0);
                    }
                    cache.push((block, data));
                    cache.len() - 1
                }
            };
            let (_, data) = &cache[index];
            *o = data
                .get((pos % FAT_BLOCK) as usize)
                .copied()
                .ok_or_else(|| anyhow!("FAT byte {pos} is outside its cache block"))?;
        }
        Ok(())
    }

    /// The FAT entry of data cluster `c` (already checked to be one).
    fn link(&self, c: u32) -> Result<Link> {
        let n = u64::from(c);
        let v = match self.fat_type {
            FatType::Fat12 => {
                let mut b = [0u8; 2];
                self.fat_read(n + n / 2, &mut b)?;
                let v = u16::from_le_bytes(b);
                u32::from(if c & 1 == 1 { v >> 4 } else { v & 0x0FFF })
            }
            FatType::Fat16 => {
                let mut b = [0u8; 2];
                self.fat_read(n * 2, &mut b)?;
                u32::from(u16::from_le_bytes(b))
            }
            FatType::Fat32 => {
                let mut b = [0u8; 4];
                self.fat_read(n * 4, &mut b)?;
                u32::from_le_bytes(b) & 0x0FFF_FFFF
            }
        };
        let bad = self.fat_type.bad();
        Ok(if v > bad {
            Link::End
        } else if v == bad {
            Link::Bad
        } else if v == 0 {
            Link::Free
        } else if self.is_data_cluster(v) {
            Link::Next(v)
        } else {
            Link::Invalid(v)
        })
    }

    fn is_data_cluster(&self, c: u32) -> bool {
        c >= 2 && u64::from(c) < u64::from(self.clusters) + 2
    }

    fn check_cluster(&self, c: u32, e: &Entry, what: &str) -> Result<()> {
        if !self.is_data_cluster(c) {
            bail!(
                "{what} {:?} (entry at byte {}) names cluster {c}, not a data cluster of this \
                 volume (2 to {}): the directory entry is corrupt",
                e.shown(),
                e.entry_offset,
                u64::from(self.clusters) + 1
            );
        }
        Ok(())
    }

    /// Byte offset of data cluster `c` (checked to be one).
    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c - 2) * self.cluster_size
    }

    /// Why a chain stops at cluster `c` with a link that is neither the next cluster nor its
    /// end.
    fn broken(&self, link: &Link, c: u32, what: &str, e: &Entry) -> anyhow::Error {
        let why = match link {
            Link::Free => "is marked free in the FAT".to_string(),
            Link::Bad => "is marked bad in the FAT".to_string(),
            Link::Invalid(v) => format!(
                "links to {v}, not a data cluster of this volume (2 to {})",
                u64::from(self.clusters) + 1
            ),
            Link::Next(_) | Link::End => "is fine".to_string(),
        };
        anyhow!(
            "the FAT chain of {what} {:?} (from cluster {}) is broken: cluster {c} {why}; run \
             fsck.fat on the volume",
            e.shown(),
            e.first_cluster
        )
    }

    /// The clusters of a file: exactly as many as its size needs, the last one ending the
    /// chain.
    fn file_chain(&self, e: &Entry) -> Result<Vec<u32>> {
        let need = e.size.div_ceil(self.cluster_size);
        if need == 0 {
            return Ok(Vec::new());
        }
        if need > u64::from(self.clusters) {
            bail!(
                "file {:?} (entry at byte {}) is {} bytes, more than the volume's {} clusters \
                 of {} bytes hold",
                e.shown(),
                e.entry_offset,
                e.size,
                self.clusters,
                self.cluster_size
            );
        }
        self.check_cluster(e.first_cluster, e, "file")?;
        let need = need as usize; // at most the cluster count, a u32
        let mut chain = Vec::with_capacity(need);
        let mut c = e.first_cluster;
        loop {
            chain.push(c);
            let link = self.link(c)?;
            if chain.len() == need {
                return match link {
                    Link::End => Ok(chain),
                    Link::Next(n) if chain.contains(&n) => bail!(
                        "the FAT chain of file {:?} (from cluster {}) loops: cluster {c} links \
                         back to cluster {n}; run fsck.fat on the volume",
                        e.shown(),
                        e.first_cluster
                    ),
                    Link::Next(n) => bail!(
                        "the FAT chain of file {:?} (from cluster {}) goes on past the {need} \
                         clusters its {} bytes need: cluster {c} links to {n}; run fsck.fat on \
                         the volume",
                        e.shown(),
                        e.first_cluster,
                        e.size
                    ),
                    other => Err(self.broken(&other, c, "file", e)),
                };
            }
            match link {
                Link::Next(n) => c = n,
                Link::End => bail!(
                    "the FAT chain of file {:?} (from cluster {}) ends at cluster {c} after {} \
                     clusters, but its {} bytes need {need}; run fsck.fat on the volume",
                    e.shown(),
                    e.first_cluster,
                    chain.len(),
                    e.size
                ),
                other => return Err(self.broken(&other, c, "file", e)),
            }
        }
    }

    /// The clusters of directory `dir`, each recorded in `seen` (a cluster already there is
    /// a loop or a cycle).
    fn dir_chain(&self, dir: &Entry, seen: &mut Seen) -> Result<Vec<u32>> {
        self.check_cluster(dir.first_cluster, dir, "directory")?;
        let max = (MAX_DIR_BYTES / self.cluster_size).max(1) as usize;
        let me = seen.paths.len();
        seen.paths.push(dir.path.clone());
        let mut chain = Vec::new();
        let mut c = dir.first_cluster;
        loop {
            if let Some(&owner) = seen.clusters.get(&c) {
                if owner == me {
                    bail!(
                        "the FAT chain of directory {:?} (from cluster {}) loops back to \
                         cluster {c}; run fsck.fat on the volume",
                        dir.shown(),
                        dir.first_cluster
                    );
                }
                let other = seen
                    .paths
                    .get(owner)
                    .map(String::as_str)
                    .unwrap_or_default();
                bail!(
                    "directory cycle at cluster {c} (path {:?}, entry at byte {}): the cluster \
                     already belongs to directory {:?}; refused as corrupt or hostile",
                    dir.shown(),
                    dir.entry_offset,
                    if other.is_empty() { "/" } else { other }
                );
            }
            seen.clusters.insert(c, me);
            chain.push(c);
            match self.link(c)? {
                Link::End => return Ok(chain),
                Link::Next(n) if chain.len() < max => c = n,
                Link::Next(_) => bail!(
                    "directory {:?} (from cluster {}) is larger than {MAX_DIR_BYTES} bytes, the \
                     most a FAT directory holds: its FAT chain is corrupt",
                    dir.shown(),
                    dir.first_cluster
                ),
                other => return Err(self.broken(&other, c, "directory", dir)),
            }
        }
    }

    /// The (offset, length) byte runs of directory `dir`.
    fn dir_runs(&self, dir: &Entry, seen: &mut Seen) -> Result<Vec<(u64, u64)>> {
        if dir.path.is_empty() {
            if let Root::Fixed { offset, bytes } = self.root {
                return Ok(vec![(offset, bytes)]);
            }
        }
        Ok(self
            .dir_chain(dir, seen)?
            .into_iter()
            .map(|c| (self.cluster_offset(c), self.cluster_size))
            .collect())
    }

    /// Call `visit` with each item of directory `dir` up to its end marker.
    fn scan_dir(
        &self,
        dir: &Entry,
        seen: &mut Seen,
        visit: &mut dyn FnMut(Item) -> Result<()>,
    ) -> Result<()> {
        let runs = self.dir_runs(dir, seen)?;
        let mut parser = DirParser::new(self.fat_type == FatType::Fat32);
        let mut buf = Vec::new();
        for (offset, len) in runs {
            buf.resize(len as usize, 0); // a cluster or the fixed root: at most 2 MiB
            self.read(offset, &mut buf)
                .with_context(|| format!("reading directory {:?}", dir.shown()))?;
            for (k, raw) in buf.chunks_exact(ENTRY).enumerate() {
                let at = offset + (k * ENTRY) as u64;
                let Ok(raw) = <&[u8; ENTRY]>::try_from(raw) else {
                    continue;
                };
                match parser.push(raw, at) {
                    Parsed::End => return Ok(()),
                    Parsed::Nothing => {}
                    Parsed::Item(item) => visit(item)?,
                }
            }
        }
        Ok(())
    }

    /// The entries of directory `dir` with their 8.3 names.
    fn list_in(&self, dir: &Entry, seen: &mut Seen) -> Result<Vec<(Entry, String)>> {
        if !dir.is_dir {
            bail!("{:?} is a file, not a directory", dir.shown());
        }
        let mut out = Vec::new();
        self.scan_dir(dir, seen, &mut |item| {
            let Item::Entry(r) = item else {
                return Ok(());
            };
            let path = if dir.path.is_empty() {
                r.name
            } else {
                format!("{}/{}", dir.path, r.name)
            };
            if path.len() > MAX_PATH {
                bail!(
                    "a path below {:?} (entry at byte {}) is longer than {MAX_PATH} bytes: \
                     refused as corrupt or hostile",
                    dir.shown(),
                    r.offset
                );
            }
            let is_dir = r.attr & ATTR_DIRECTORY != 0;
            out.push((
                Entry {
                    path,
                    size: if is_dir { 0 } else { u64::from(r.size) },
                    is_dir,
                    first_cluster: r.cluster,
                    entry_offset: r.offset,
                },
                r.short,
            ));
            Ok(())
        })?;
        Ok(out)
    }
}

/// The boot sector's label when the extended boot signature at `sig` says it is there.
fn label_at(b: &[u8; 512], sig: usize, at: usize) -> Option<String> {
    if b.get(sig) != Some(&0x29) {
        return None;
    }
    b.get(at..at + 11).map(|l| latin1(l).trim_end().to_string())
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// FAT's name comparison: case-insensitive.
fn same_name(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// A short entry as the directory parser found it.
struct RawEntry {
    name: String,
    short: String,
    attr: u8,
    cluster: u32,
    size: u32,
    offset: u64,
}

enum Item {
    Entry(RawEntry),
    Label(String),
}

enum Parsed {
    End,
    Nothing,
    Item(Item),
}

/// Long-name entries collected so far.
struct LongName {
    units: Vec<u16>,
    /// The ordinal the next entry must have (the set ends at 1).
    expect: u8,
    checksum: u8,
}

/// Turns 32-byte directory entries into items, pairing long-name entries with their short
/// entry.
struct DirParser {
    fat32: bool,
    long: Option<LongName>,
}

impl DirParser {
    fn new(fat32: bool) -> Self {
        DirParser { fat32, long: None }
    }

    fn push(&mut self, e: &[u8; ENTRY], offset: u64) -> Parsed {
        let first = e[0];
        if first == 0x00 {
            return Parsed::End;
        }
        if first == 0xE5 {
            self.long = None;
            return Parsed::Nothing;
        }
        let attr = e[11];
        if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME {
            self.long_part(e);
            return Parsed::Nothing;
        }
        let long = self.long.take();
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        if attr & ATTR_VOLUME_ID != 0 {
            return Parsed::Item(Item::Label(latin1(&short).trim_end().to_string()));
        }
        if &short == b".          " || &short == b"..         " {
            return Parsed::Nothing;
        }
        let short_name = short_name(&short, e[12]);
        let long_name = long.and_then(|l| {
            (l.expect == 1 && l.checksum == checksum(&short))
                .then(|| decode_long(&l.units))
                .flatten()
        });
        let name = match long_name {
            Some(n) if valid_name(&n) => n,
            _ if valid_name(&short_name) => short_name.clone(),
            // Unusable as a path component either way (a slash, a control character,
            // nothing): skipped, as no name of it could be looked up or shown.
            _ => return Parsed::Nothing,
        };
        let lo = u32::from(le16(e, 26));
        let hi = if self.fat32 {
            u32::from(le16(e, 20))
        } else {
            0
        };
        Parsed::Item(Item::Entry(RawEntry {
            name,
            short: short_name,
            attr,
            cluster: (hi << 16) | lo,
            size: le32(e, 28),
            offset,
        }))
    }

    fn long_part(&mut self, e: &[u8; ENTRY]) {
        let ord = e[0];
        let seq = usize::from(ord & 0x1F);
        if ord & LFN_LAST != 0 {
            self.long = (1..=LFN_MAX_ENTRIES).contains(&seq).then(|| LongName {
                units: vec![0xFFFF; seq * LFN_UNITS],
                expect: seq as u8,
                checksum: e[13],
            });
        } else {
            let continues = self.long.as_ref().is_some_and(|l| {
                l.expect > 1 && usize::from(l.expect) - 1 == seq && l.checksum == e[13]
            });
            if !continues || ord & 0xE0 != 0 {
                self.long = None;
                return;
            }
        }
        let Some(l) = self.long.as_mut() else {
            return;
        };
        l.expect = seq as u8;
        let start = (seq - 1) * LFN_UNITS;
        for (k, &off) in LFN_OFFSETS.iter().enumerate() {
            if let Some(u) = l.units.get_mut(start + k) {
                *u = le16(e, off);
            }
        }
    }
}

/// The VFAT checksum of a short name.
fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// A long name's units: up to the first NUL (or all of them), UTF-16; `None` when it is not
/// valid UTF-16.
fn decode_long(units: &[u16]) -> Option<String> {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    let used = units.get(..end)?;
    // Past a full last entry the padding is 0xFFFF; within the name it is no character.
    let used = match used.iter().position(|&u| u == 0xFFFF) {
        Some(p) if used.get(p..)?.iter().all(|&u| u == 0xFFFF) => used.get(..p)?,
        Some(_) => return None,
        None => used,
    };
    char::decode_utf16(used.iter().copied())
        .collect::<Result<String, _>>()
        .ok()
}

/// The 8.3 name, lowercased where the NT flags (byte 12) say so.
fn short_name(short: &[u8; 11], flags: u8) -> String {
    let part = |b: &[u8], lower: bool| -> String {
        let mut s: String = b
            .iter()
            .map(|&c| {
                let c = char::from(c);
                if lower {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect();
        s.truncate(s.trim_end_matches(' ').len());
        s
    };
    let mut base_bytes = [0u8; 8];
    base_bytes.copy_from_slice(&short[..8]);
    if base_bytes[0] == 0x05 {
        base_bytes[0] = 0xE5;
    }
    let base = part(&base_bytes, flags & 0x08 != 0);
    let ext = part(&short[8..], flags & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Whether a name can be a path component.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.chars().any(|c| c == '/' || c.is_control())
}

/// An open file of a [`Volume`]: random access with [`File::read_at`], or sequential through
/// `Read` and `Seek`.
pub struct File<'v, 'a> {
    vol: &'v Volume<'a>,
    path: String,
    size: u64,
    chain: Vec<u32>,
    pos: u64,
}

impl File<'_, '_> {
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Fill `buf` with the file's bytes from `offset`; an error past its end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let want = buf.len() as u64;
        if offset.checked_add(want).is_none_or(|end| end > self.size) {
            bail!(
                "{:?}: bytes {offset}..{} are past the end of the {}-byte file",
                self.path,
                offset.saturating_add(want),
                self.size
            );
        }
        let cs = self.vol.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = (pos / cs) as usize;
            let within = pos % cs;
            let first = *self
                .chain
                .get(index)
                .ok_or_else(|| anyhow!("{:?}: byte {pos} has no cluster", self.path))?;
            let left = (buf.len() - done) as u64;
            // Read consecutive clusters at once.
            let mut run = 1usize;
            while (run as u64 * cs - within) < left
                && self
                    .chain
                    .get(index + run)
                    .is_some_and(|&c| u64::from(c) == u64::from(first) + run as u64)
            {
                run += 1;
            }
            let n = (run as u64 * cs - within).min(left) as usize;
            let at = self.vol.cluster_offset(first) + within;
            let out = buf
                .get_mut(done..done + n)
                .ok_or_else(|| anyhow!("{:?}: read out of bounds", self.path))?;
            self.vol
                .read(at, out)
                .with_context(|| format!("reading {:?} at byte {pos}", self.path))?;
            done += n;
        }
        Ok(())
    }
}

impl io::Read for File<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.read_at(self.pos, &mut buf[..n])
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for File<'_, '_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::fat::tests::{file, find_tool, pattern};
    use crate::compose::fat::{
        build_fat, build_fat32, build_fat_dirs, min_size, FatFile, FatParams, Geometry, LabelRule,
    };
    use crate::layout::Layout;
    use std::collections::BTreeMap;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn params(size: u64, label: &str, sector: u64) -> FatParams {
        FatParams {
            size,
            label: label.into(),
            volume_id: 0x1234_ABCD,
            hidden_sectors: 2048,
            mtime: 1_767_225_600,
            sector_size: sector,
        }
    }

    /// A tree with nested directories, long and Unicode names, an empty file and files of
    /// many clusters.
    fn tree() -> Vec<FatFile> {
        let mut files = vec![
            file("EFI/Linux/Talos-v1.12.5.efi", &pattern(300_000, 1)),
            file("EFI/boot/BOOTX64.efi", &pattern(70_001, 2)),
            file("loader/loader.conf", b"timeout 10\ndefault talos\n"),
            file("deep/er/tree/file with a long name.txt", b"leaf"),
            file("unicode/caf\u{e9} \u{20ac} \u{1f600}.txt", b"utf16"),
            file("empty.txt", b""),
            file("UPPER.TXT", b"short name"),
            file("exactly-26-chars-long-name", b"two lfn entries"),
        ];
        for i in 0..40 {
            files.push(file(
                &format!("many/entry {i:03} with a long name.conf"),
                format!("{i}").as_bytes(),
            ));
        }
        files
    }

    fn fat32_volume(files: &[FatFile]) -> Vec<u8> {
        build_fat32(&params(min_size(), "EFI", 512), files)
            .unwrap()
            .to_vec()
            .unwrap()
    }

    fn small_volume(size: u64, sector: u64, files: &[FatFile]) -> Vec<u8> {
        build_fat(
            &params(size, "metal-iso", sector),
            files,
            LabelRule::AllowLowercase,
        )
        .unwrap()
        .to_vec()
        .unwrap()
    }

    /// The files (path → content) of a volume read with this reader.
    fn read_all(v: &Volume) -> BTreeMap<String, Vec<u8>> {
        v.walk(&v.root(), &Limits::default())
            .unwrap()
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| {
                let data = v.read_to_end(&e, 1 << 30).unwrap();
                assert_eq!(data.len() as u64, e.size);
                (e.path, data)
            })
            .collect()
    }

    /// The files (path → content) of a volume read with `fatfs`.
    fn fatfs_all(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        fn walk<T: fatfs::ReadWriteSeek>(
            dir: fatfs::Dir<'_, T>,
            prefix: &str,
            out: &mut BTreeMap<String, Vec<u8>>,
        ) {
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{prefix}{name}");
                if e.is_dir() {
                    walk(e.to_dir(), &format!("{path}/"), out);
                } else {
                    let mut data = Vec::new();
                    e.to_file().read_to_end(&mut data).unwrap();
                    out.insert(path, data);
                }
            }
        }
        let fs = fatfs::FileSystem::new(
            std::io::Cursor::new(bytes.to_vec()),
            fatfs::FsOptions::new(),
        )
        .unwrap();
        let mut out = BTreeMap::new();
        walk(fs.root_dir(), "", &mut out);
        out
    }

    /// Read a volume written from `files`: type, label, tree, contents (also as `fatfs` reads
    /// them), lookups.
    fn check_round_trip(bytes: &[u8], files: &[FatFile], label: &str, want: FatType) {
        let v = Volume::from_bytes(bytes).unwrap();
        assert_eq!(v.fat_type(), want);
        assert_eq!(v.label().unwrap(), label);
        let expected: BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|f| (f.path.clone(), f.content.to_vec().unwrap()))
            .collect();
        let ours = read_all(&v);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        assert!(ours == expected, "contents differ");
        assert!(fatfs_all(bytes) == ours, "fatfs reads otherwise");
        // Directories are listed too, after their parent.
        let all = v.walk(&v.root(), &Limits::default()).unwrap();
        for d in ["EFI", "EFI/Linux", "deep/er/tree", "many"] {
            assert!(all.iter().any(|e| e.is_dir && e.path == d), "{d}");
        }
        // Lookups: case-insensitive, by long name or 8.3 alias.
        let conf = v.find("LOADER/Loader.CONF").unwrap().unwrap();
        assert_eq!(conf.path, "loader/loader.conf");
        assert_eq!(
            v.read_to_end(&conf, 100).unwrap(),
            b"timeout 10\ndefault talos\n"
        );
        let uki = v.find("efi/linux/talos-v1.12.5.efi").unwrap().unwrap();
        assert_eq!(uki.size, 300_000);
        let alias = v.find("deep/er/tree/FILEWI~1.TXT").unwrap().unwrap();
        assert_eq!(alias.path, "deep/er/tree/file with a long name.txt");
        assert!(v.find("loader/missing").unwrap().is_none());
        assert!(v.find("loader/loader.conf/x").unwrap().is_none());
        assert!(v.find("").unwrap().unwrap().is_dir);
        assert_eq!(v.list(&v.find("EFI").unwrap().unwrap()).unwrap().len(), 2);
        // Random access and the Read/Seek adapter.
        let want = &expected["EFI/Linux/Talos-v1.12.5.efi"];
        let mut f = v.open_file(&uki).unwrap();
        for (off, len) in [(0usize, 10usize), (511, 2), (4095, 9000), (299_990, 10)] {
            let mut buf = vec![0u8; len];
            f.read_at(off as u64, &mut buf).unwrap();
            assert_eq!(buf, want[off..off + len], "{off}+{len}");
        }
        let e = f.read_at(299_999, &mut [0u8; 2]).unwrap_err().to_string();
        assert!(e.contains("past the end of the 300000-byte file"), "{e}");
        f.seek(SeekFrom::Start(1000)).unwrap();
        let mut rest = Vec::new();
        (&mut f).take(5000).read_to_end(&mut rest).unwrap();
        assert_eq!(rest, want[1000..6000]);
        f.seek(SeekFrom::End(-3)).unwrap();
        rest.clear();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, want[want.len() - 3..]);
        let e = v.read_to_end(&uki, 1000).unwrap_err().to_string();
        assert!(
            e.contains("is 300000 bytes, more than the 1000 read here"),
            "{e}"
        );
    }

    #[test]
    fn reads_fat32_written_by_compose() {
        let files = tree();
        check_round_trip(&fat32_volume(&files), &files, "EFI", FatType::Fat32);
    }

    #[test]
    fn reads_fat16_and_fat12_written_by_compose() {
        let files = tree();
        for (size, sector, want) in [
            (4 * MIB, 512, FatType::Fat16),
            (3 * MIB, 512, FatType::Fat16),
            (2 * MIB, 512, FatType::Fat12),
            (MIB, 512, FatType::Fat12),
            (2 * MIB, 4096, FatType::Fat12),
        ] {
            assert_eq!(
                Geometry::any(size, sector).unwrap().fat_type.as_str(),
                want.as_str()
            );
            let bytes = small_volume(size, sector, &files);
            check_round_trip(&bytes, &files, "metal-iso", want);
        }
    }

    #[test]
    fn empty_directories_and_the_boot_sector_label() {
        let files = vec![file("loader/loader.conf", b"x")];
        let l = build_fat_dirs(
            &params(MIB, "RECORDS", 512),
            &files,
            &["records", "a/b/c"],
            LabelRule::Uppercase,
        )
        .unwrap();
        let mut bytes = l.to_vec().unwrap();
        let v = Volume::from_bytes(&bytes).unwrap();
        let all = v.walk(&v.root(), &Limits::default()).unwrap();
        let dirs: Vec<&str> = all
            .iter()
            .filter(|e| e.is_dir)
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(dirs.len(), 5, "{dirs:?}");
        assert!(v
            .list(&v.find("records").unwrap().unwrap())
            .unwrap()
            .is_empty());
        let records = v.find("records").unwrap().unwrap();
        assert!(v.walk(&records, &Limits::default()).unwrap().is_empty());
        let e = v.open_file(&records).err().unwrap().to_string();
        assert!(e.contains("\"records\" is a directory"), "{e}");
        drop(v);
        // Without the root's label entry, the boot sector's label; "NO NAME" is none.
        let root = Geometry::any(MIB, 512).unwrap().root_dir_offset() as usize;
        assert_eq!(bytes[root + 11], ATTR_VOLUME_ID);
        bytes[root] = 0xE5;
        assert_eq!(
            Volume::from_bytes(&bytes).unwrap().label().unwrap(),
            "RECORDS"
        );
        bytes[43..54].copy_from_slice(b"NO NAME    ");
        assert_eq!(Volume::from_bytes(&bytes).unwrap().label().unwrap(), "");
    }

    // -----------------------------------------------------------------------------------
    // Volumes written by mkfs.fat and mtools

    fn tool(name: &str, args: &[&str]) {
        let out = Command::new(find_tool(name).unwrap())
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn reads_volumes_made_by_mkfs_fat_and_mtools() {
        let missing: Vec<&str> = ["mkfs.fat", "mcopy", "mmd", "mdel"]
            .into_iter()
            .filter(|t| find_tool(t).is_none())
            .collect();
        if !missing.is_empty() {
            if std::env::var_os("CI").is_some() {
                panic!("{missing:?} not installed (required when CI is set)");
            }
            println!("SKIPPED: {missing:?} not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = |name: &str, data: &[u8]| -> PathBuf {
            let p = tmp.path().join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let big = pattern(1_000_003, 9);
        let inputs = [
            ("big.bin", big.clone()),
            ("small.txt", b"small".to_vec()),
            ("gone.txt", b"deleted later".to_vec()),
        ];
        for p in inputs.iter().map(|(n, d)| src(n, d)) {
            assert!(p.is_file());
        }
        let s = |p: &Path| p.to_str().unwrap().to_string();
        for (flags, kib, want, label) in [
            (&["-F", "12"][..], 1024, FatType::Fat12, "TWELVE"),
            (
                &["-F", "16", "-s", "1"][..],
                8192,
                FatType::Fat16,
                "SIXTEEN",
            ),
            (&["-F", "32"][..], 40960, FatType::Fat32, "THIRTYTWO"),
            // FAT32 below 65525 clusters, as mkfs.fat writes it (with a warning).
            (&["-F", "32"][..], 16384, FatType::Fat32, "SMALL32"),
            (
                &["-F", "16", "-S", "4096", "-s", "1"][..],
                32768,
                FatType::Fat16,
                "BIGSECTOR",
            ),
            (
                &["-F", "12", "-s", "8"][..],
                2048,
                FatType::Fat12,
                "CLUSTERS",
            ),
        ] {
            let img = tmp.path().join(format!("{label}.img"));
            let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            args.extend([
                "-n".into(),
                label.into(),
                "-C".into(),
                s(&img),
                kib.to_string(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tool("mkfs.fat", &args);
            let i = s(&img);
            if label == "SMALL32" {
                // mtools reads the cluster count as FAT16's and cannot write here.
                let bytes = std::fs::read(&img).unwrap();
                let v = Volume::from_bytes(&bytes).unwrap();
                assert_eq!(v.fat_type(), want);
                assert_eq!(v.label().unwrap(), label);
                assert!(v.walk(&v.root(), &Limits::default()).unwrap().is_empty());
                continue;
            }
            tool(
                "mmd",
                &[
                    "-i",
                    &i,
                    "::/EFI",
                    "::/EFI/Linux",
                    "::/A Long Directory Name",
                ],
            );
            tool(
                "mcopy",
                &[
                    "-i",
                    &i,
                    &s(&tmp.path().join("big.bin")),
                    "::/EFI/Linux/Talos Kernel Image.efi",
                ],
            );
            tool(
                "mcopy",
                &[
                    "-i",
                    &i,
                    &s(&tmp.path().join("small.txt")),
                    "::/A Long Directory Name/small.txt",
                ],
            );
            tool(
                "mcopy",
                &["-i", &i, &s(&tmp.path().join("small.txt")), "::/README"],
            );
            tool(
                "mcopy",
                &[
                    "-i",
                    &i,
                    &s(&tmp.path().join("gone.txt")),
                    "::/EFI/gone with a long name.txt",
                ],
            );
            tool("mdel", &["-i", &i, "::/EFI/gone with a long name.txt"]);
            let bytes = std::fs::read(&img).unwrap();
            let v = Volume::from_bytes(&bytes).unwrap();
            assert_eq!(v.fat_type(), want, "{label}");
            assert_eq!(v.label().unwrap(), label);
            let got = read_all(&v);
            let mut want_files = BTreeMap::new();
            want_files.insert("EFI/Linux/Talos Kernel Image.efi".to_string(), big.clone());
            want_files.insert(
                "A Long Directory Name/small.txt".to_string(),
                b"small".to_vec(),
            );
            // mtools writes an all-uppercase 8.3 name without a long name.
            want_files.insert("README".to_string(), b"small".to_vec());
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want_files.keys().collect::<Vec<_>>(),
                "{label}"
            );
            assert!(got == want_files, "{label}: contents differ");
            assert!(fatfs_all(&bytes) == got, "{label}: fatfs reads otherwise");
        }
    }

    // -----------------------------------------------------------------------------------
    // Hostile volumes: a good volume, then bytes patched.

    /// Set FAT entry `n` to `value` in every FAT of the volume.
    fn set_fat(bytes: &mut [u8], n: u32, value: u32) {
        let bps = u64::from(le16(bytes, 11));
        let reserved = u64::from(le16(bytes, 14));
        let fats = u64::from(bytes[16]);
        let fat16 = u64::from(le16(bytes, 22));
        let fat_sectors = if fat16 == 0 {
            u64::from(le32(bytes, 36))
        } else {
            fat16
        };
        let t = Volume::from_bytes(bytes).unwrap().fat_type();
        for k in 0..fats {
            let base = ((reserved + k * fat_sectors) * bps) as usize;
            let n = n as usize;
            match t {
                FatType::Fat32 => {
                    bytes[base + 4 * n..base + 4 * n + 4].copy_from_slice(&value.to_le_bytes())
                }
                FatType::Fat16 => bytes[base + 2 * n..base + 2 * n + 2]
                    .copy_from_slice(&(value as u16).to_le_bytes()),
                FatType::Fat12 => {
                    let at = base + n * 3 / 2;
                    let v = value & 0x0FFF;
                    if n % 2 == 0 {
                        bytes[at] = v as u8;
                        bytes[at + 1] = (bytes[at + 1] & 0xF0) | (v >> 8) as u8;
                    } else {
                        bytes[at] = (bytes[at] & 0x0F) | ((v & 0x0F) << 4) as u8;
                        bytes[at + 1] = (v >> 4) as u8;
                    }
                }
            }
        }
    }

    fn set_cluster(bytes: &mut [u8], e: &Entry, cluster: u32) {
        let at = e.entry_offset as usize;
        bytes[at + 26..at + 28].copy_from_slice(&(cluster as u16).to_le_bytes());
        bytes[at + 20..at + 22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    }

    fn set_size(bytes: &mut [u8], e: &Entry, size: u32) {
        let at = e.entry_offset as usize;
        bytes[at + 28..at + 32].copy_from_slice(&size.to_le_bytes());
    }

    fn entry(bytes: &[u8], path: &str) -> Entry {
        Volume::from_bytes(bytes)
            .unwrap()
            .find(path)
            .unwrap()
            .unwrap()
    }

    fn walk_err(bytes: &[u8]) -> String {
        let v = Volume::from_bytes(bytes).unwrap();
        format!("{:#}", v.walk(&v.root(), &Limits::default()).unwrap_err())
    }

    fn open_err(bytes: &[u8], path: &str) -> String {
        let v = Volume::from_bytes(bytes).unwrap();
        let e = v.find(path).unwrap().unwrap();
        format!("{:#}", v.open_file(&e).err().unwrap())
    }

    fn open_bytes_err(bytes: &[u8]) -> String {
        match Volume::from_bytes(bytes) {
            Ok(v) => panic!("opened: {:?} {} clusters", v.fat_type(), v.clusters()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_subdirectory_pointing_at_the_root_or_a_parent_is_a_cycle() {
        let good = fat32_volume(&tree());
        let root = Volume::from_bytes(&good).unwrap().root().first_cluster;
        // EFI/boot → the root (FAT32: the root is cluster 2).
        let mut b = good.clone();
        set_cluster(&mut b, &entry(&good, "EFI/boot"), root);
        let e = walk_err(&b);
        assert!(
            e.contains(&format!("directory cycle at cluster {root}")),
            "{e}"
        );
        assert!(
            e.contains("\"EFI/boot\"") && e.contains("directory \"/\""),
            "{e}"
        );
        // A lookup through it is refused the same way.
        let v = Volume::from_bytes(&b).unwrap();
        let e = format!("{:#}", v.find("EFI/boot/EFI/boot/x").unwrap_err());
        assert!(e.contains("directory cycle"), "{e}");
        // EFI/Linux → EFI, its parent.
        let efi = entry(&good, "EFI").first_cluster;
        let mut b = good.clone();
        set_cluster(&mut b, &entry(&good, "EFI/Linux"), efi);
        let e = walk_err(&b);
        assert!(
            e.contains(&format!("directory cycle at cluster {efi}")),
            "{e}"
        );
        assert!(
            e.contains("\"EFI/Linux\"") && e.contains("directory \"EFI\""),
            "{e}"
        );
        // A directory naming another directory's cluster (cross-linked) is refused too.
        let mut b = good.clone();
        set_cluster(
            &mut b,
            &entry(&good, "many"),
            entry(&good, "deep/er").first_cluster,
        );
        assert!(walk_err(&b).contains("directory cycle at cluster"));
    }

    #[test]
    fn looping_and_broken_fat_chains_are_refused() {
        let good = fat32_volume(&tree());
        let v = Volume::from_bytes(&good).unwrap();
        let cs = v.cluster_size();
        let uki = entry(&good, "EFI/Linux/Talos-v1.12.5.efi");
        let n = uki.size.div_ceil(cs) as u32;
        assert!(n > 3);
        let (first, last) = (uki.first_cluster, uki.first_cluster + n - 1);
        let path = "EFI/Linux/Talos-v1.12.5.efi";
        // The last cluster links back to the first.
        let mut b = good.clone();
        set_fat(&mut b, last, first);
        let e = open_err(&b, path);
        assert!(
            e.contains(&format!(
                "loops: cluster {last} links back to cluster {first}"
            )),
            "{e}"
        );
        // A cluster links to itself.
        let mut b = good.clone();
        set_fat(&mut b, first + 1, first + 1);
        let e = open_err(&b, path);
        assert!(e.contains("goes on past") || e.contains("loops"), "{e}");
        assert!(e.contains(&format!("from cluster {first}")), "{e}");
        // The chain goes on past what the size needs (into a free cluster's neighbour).
        let mut b = good.clone();
        set_fat(&mut b, last, v.clusters());
        let e = open_err(&b, path);
        assert!(e.contains(&format!("goes on past the {n} clusters")), "{e}");
        // Ends early.
        let mut b = good.clone();
        set_fat(&mut b, first + 1, 0x0FFF_FFFF);
        let e = open_err(&b, path);
        assert!(
            e.contains(&format!("ends at cluster {} after 2 clusters", first + 1)),
            "{e}"
        );
        assert!(e.contains(&format!("need {n}")), "{e}");
        // Runs into a free cluster, a bad one, a reserved value, a cluster past the end.
        for (value, want) in [
            (0, "is marked free".to_string()),
            (0x0FFF_FFF7, "is marked bad".to_string()),
            (1, "links to 1, not a data cluster".to_string()),
            (
                v.clusters() + 2,
                format!("links to {}, not a data cluster", v.clusters() + 2),
            ),
        ] {
            let mut b = good.clone();
            set_fat(&mut b, first, value);
            let e = open_err(&b, path);
            assert!(e.contains(&format!("cluster {first} {want}")), "{e}");
        }
        // A directory's chain looping on itself, or back to its start.
        let efi = entry(&good, "EFI").first_cluster;
        let mut b = good.clone();
        set_fat(&mut b, efi, efi);
        let e = walk_err(&b);
        assert!(
            e.contains(&format!(
                "directory \"EFI\" (from cluster {efi}) loops back to cluster {efi}"
            )),
            "{e}"
        );
        // The root's chain (FAT32) looping.
        let mut b = good.clone();
        set_fat(&mut b, 2, 2);
        let v2 = Volume::from_bytes(&b).unwrap();
        let e = format!("{:#}", v2.label().unwrap_err());
        assert!(
            e.contains("directory \"/\" (from cluster 2) loops back to cluster 2"),
            "{e}"
        );
        // A directory whose chain is longer than a directory may be: through a big file.
        let big = vec![0u8; 3 * MIB as usize];
        let files = vec![file("EFI/big.bin", &big), file("loader/loader.conf", b"x")];
        let good = fat32_volume(&files);
        let mut b = good.clone();
        let big_first = entry(&good, "EFI/big.bin").first_cluster;
        set_fat(&mut b, entry(&good, "loader").first_cluster, big_first);
        let e = walk_err(&b);
        assert!(
            e.contains("directory \"loader\"") && e.contains("larger than 2097152 bytes"),
            "{e}"
        );
    }

    #[test]
    fn entries_naming_no_data_cluster_are_refused() {
        let good = fat32_volume(&tree());
        let clusters = Volume::from_bytes(&good).unwrap().clusters();
        for c in [0, 1, clusters + 2, 0xFFFF_FFFF] {
            let mut b = good.clone();
            let uki = entry(&good, "EFI/Linux/Talos-v1.12.5.efi");
            set_cluster(&mut b, &uki, c);
            let e = open_err(&b, "EFI/Linux/Talos-v1.12.5.efi");
            assert!(
                e.contains(&format!("file \"EFI/Linux/Talos-v1.12.5.efi\" (entry at byte {}) names cluster {c}, not a data cluster", uki.entry_offset)),
                "{e}"
            );
            let mut b = good.clone();
            set_cluster(&mut b, &entry(&good, "EFI/Linux"), c);
            let e = walk_err(&b);
            assert!(e.contains("directory \"EFI/Linux\" (entry at byte"), "{e}");
            assert!(
                e.contains(&format!("names cluster {c}, not a data cluster")),
                "{e}"
            );
        }
        // FAT16: the same for a subdirectory (0 is the root only in "..").
        let good = small_volume(4 * MIB, 512, &tree());
        let mut b = good.clone();
        set_cluster(&mut b, &entry(&good, "EFI"), 0);
        assert!(walk_err(&b).contains("directory \"EFI\""));
        // FAT12: a file past the end.
        let good = small_volume(MIB, 512, &tree());
        let clusters = Volume::from_bytes(&good).unwrap().clusters();
        let mut b = good.clone();
        set_cluster(&mut b, &entry(&good, "loader/loader.conf"), clusters + 2);
        assert!(
            open_err(&b, "loader/loader.conf").contains(&format!("names cluster {}", clusters + 2))
        );
        // A size the volume cannot hold.
        let mut b = good.clone();
        set_size(&mut b, &entry(&good, "loader/loader.conf"), u32::MAX);
        let e = open_err(&b, "loader/loader.conf");
        assert!(
            e.contains("is 4294967295 bytes, more than the volume's"),
            "{e}"
        );
    }

    #[test]
    fn fat12_chains_across_odd_and_even_entries_break_cleanly() {
        let good = small_volume(2 * MIB, 512, &tree());
        let uki = entry(&good, "EFI/Linux/Talos-v1.12.5.efi");
        let n = uki.size.div_ceil(512) as u32;
        for k in [1, 2] {
            let c = uki.first_cluster + k;
            let mut b = good.clone();
            set_fat(&mut b, c, uki.first_cluster);
            let e = open_err(&b, "EFI/Linux/Talos-v1.12.5.efi");
            assert!(
                e.contains(&format!("goes on past the {n} clusters")) || e.contains("loops"),
                "{e}"
            );
            let mut b = good.clone();
            set_fat(&mut b, c, 0xFFF);
            assert!(open_err(&b, "EFI/Linux/Talos-v1.12.5.efi")
                .contains(&format!("ends at cluster {c}")));
        }
    }

    #[test]
    fn bad_boot_sectors_are_refused() {
        let good = small_volume(MIB, 512, &tree());
        let patch = |at: usize, data: &[u8]| {
            let mut b = good.clone();
            b[at..at + data.len()].copy_from_slice(data);
            open_bytes_err(&b)
        };
        for bps in [0u16, 3, 256, 513, 8192] {
            let e = patch(11, &bps.to_le_bytes());
            assert!(
                e.contains(&format!("bytes per sector (byte 11) is {bps}")),
                "{e}"
            );
        }
        for spc in [0u8, 3, 6] {
            let e = patch(13, &[spc]);
            assert!(
                e.contains(&format!("sectors per cluster (byte 13) is {spc}")),
                "{e}"
            );
        }
        let e = patch(14, &[0, 0]);
        assert!(e.contains("reserved sector count (byte 14) is 0"), "{e}");
        let e = patch(16, &[0]);
        assert!(e.contains("FAT count (byte 16) is 0"), "{e}");
        let e = patch(19, &[0, 0]);
        assert!(
            e.contains("total sector count (bytes 19 and 32) is 0"),
            "{e}"
        );
        let e = patch(19, &4096u16.to_le_bytes());
        assert!(e.contains("the volume is 2097152 bytes (4096 sectors of 512), but the partition holds 1048576"), "{e}");
        // The FAT region past the end.
        let e = patch(22, &0x4000u16.to_le_bytes());
        assert!(e.contains("past the volume's end at byte 1048576"), "{e}");
        // A FAT too small for the clusters.
        let e = patch(22, &1u16.to_le_bytes());
        assert!(e.contains("is too small for the volume's"), "{e}");
        let e = patch(17, &[0, 0]);
        assert!(e.contains("no root directory entries"), "{e}");
        let g = Geometry::any(MIB, 512).unwrap();
        let meta = (g.data_offset() / 512) as u16;
        let e = patch(19, &meta.to_le_bytes());
        assert!(e.contains("the volume has no data cluster"), "{e}");
        let e = open_bytes_err(&good[..100]);
        assert!(e.contains("too small for a FAT boot sector"), "{e}");
        let zeros = vec![0u8; 4096];
        assert!(open_bytes_err(&zeros).contains("not a FAT volume"));
        // FAT32 fields.
        let good = fat32_volume(&[file("a", b"1")]);
        let patch = |at: usize, data: &[u8]| {
            let mut b = good.clone();
            b[at..at + data.len()].copy_from_slice(data);
            open_bytes_err(&b)
        };
        for c in [0u32, 1, 0x0FFF_FFFF] {
            let e = patch(44, &c.to_le_bytes());
            assert!(
                e.contains(&format!("names cluster {c} as the root directory")),
                "{e}"
            );
        }
        let e = patch(40, &[0x83, 0]);
        assert!(e.contains("names FAT 3 as the active one"), "{e}");
        let e = patch(17, &[16, 0]);
        assert!(
            e.contains("FAT32 one but gives 16 fixed root directory entries"),
            "{e}"
        );
        let e = patch(11, &[0x00, 0x10, 128]);
        assert!(
            e.contains("clusters of 524288 bytes (128 sectors of 4096)"),
            "{e}"
        );
        // The second FAT is used when the flags say so.
        let mut b = good.clone();
        b[40] = 0x81;
        assert_eq!(read_all(&Volume::from_bytes(&b).unwrap())["a"], b"1");
    }

    #[test]
    fn walks_are_bounded() {
        let good = fat32_volume(&tree());
        let v = Volume::from_bytes(&good).unwrap();
        let few = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let e = format!("{:#}", v.walk(&v.root(), &few).unwrap_err());
        assert!(
            e.contains("more than 10 files and directories below \"/\""),
            "{e}"
        );
        let shallow = Limits {
            max_depth: 2,
            ..Limits::default()
        };
        let e = format!("{:#}", v.walk(&v.root(), &shallow).unwrap_err());
        assert!(
            e.contains("directory \"deep/er/tree\"") && e.contains("nested more than 2 levels"),
            "{e}"
        );
        // The default depth: 40 levels are refused.
        let deep: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
        let deep = deep.join("/");
        let l = build_fat_dirs(
            &params(MIB, "X", 512),
            &[],
            &[deep.as_str()],
            LabelRule::Uppercase,
        )
        .unwrap()
        .to_vec()
        .unwrap();
        let e = walk_err(&l);
        assert!(
            e.contains(&format!("nested more than {MAX_DEPTH} levels")),
            "{e}"
        );
        // Paths longer than 4096 bytes.
        let long: Vec<String> = (0..17).map(|i| format!("{i:0>250}")).collect();
        let long = long.join("/");
        let l = build_fat_dirs(
            &params(2 * MIB, "X", 512),
            &[],
            &[long.as_str()],
            LabelRule::Uppercase,
        )
        .unwrap()
        .to_vec()
        .unwrap();
        let e = walk_err(&l);
        assert!(e.contains("longer than 4096 bytes"), "{e}");
        // Sizes adding up to more than the data region (cross-linked files).
        let mut b = good.clone();
        for p in ["EFI/boot/BOOTX64.efi", "loader/loader.conf"] {
            set_size(&mut b, &entry(&good, p), 30 << 20);
        }
        let e = walk_err(&b);
        assert!(
            e.contains("add up to more than the volume's data region"),
            "{e}"
        );
    }

    #[test]
    fn more_entries_than_a_walk_returns_are_refused() {
        // Three directories of 22000 entries each: past the default 65536.
        let files: Vec<FatFile> = (0..66_000)
            .map(|i| FatFile {
                path: format!("D{}/F{i:05}", i % 3),
                content: Layout::new(0),
            })
            .collect();
        let b = fat32_volume(&files);
        let e = walk_err(&b);
        assert!(e.contains("more than 65536 files and directories"), "{e}");
        let v = Volume::from_bytes(&b).unwrap();
        assert_eq!(
            v.list(&v.find("d1").unwrap().unwrap()).unwrap().len(),
            22_000
        );
    }

    #[test]
    fn broken_long_names_fall_back_to_the_short_name_and_deleted_entries_are_skipped() {
        let good = fat32_volume(&tree());
        let e = entry(&good, "deep/er/tree/file with a long name.txt");
        // The long-name entry before the short one: its checksum byte.
        let mut b = good.clone();
        b[e.entry_offset as usize - 32 + 13] ^= 0x55;
        let v = Volume::from_bytes(&b).unwrap();
        let names: Vec<String> = v
            .list(&v.find("deep/er/tree").unwrap().unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(names, ["deep/er/tree/FILEWI~1.TXT"]);
        // An ordinal out of sequence.
        let mut b = good.clone();
        b[e.entry_offset as usize - 32] = 0x47;
        let v = Volume::from_bytes(&b).unwrap();
        assert!(v
            .find("deep/er/tree/FILEWI~1.TXT")
            .unwrap()
            .unwrap()
            .path
            .ends_with("FILEWI~1.TXT"));
        // Deleted: neither the short entry nor its long name is listed.
        let mut b = good.clone();
        b[e.entry_offset as usize] = 0xE5;
        let v = Volume::from_bytes(&b).unwrap();
        assert!(v
            .list(&v.find("deep/er/tree").unwrap().unwrap())
            .unwrap()
            .is_empty());
        assert!(v
            .find("deep/er/tree/file with a long name.txt")
            .unwrap()
            .is_none());
        // A name with a slash is skipped rather than split into a path.
        let mut b = good.clone();
        let at = e.entry_offset as usize - 32 + 1;
        b[at..at + 2].copy_from_slice(&u16::from(b'/').to_le_bytes());
        b[e.entry_offset as usize - 32 + 13] ^= 0; // checksum still matches
        let v = Volume::from_bytes(&b).unwrap();
        let names: Vec<String> = v
            .list(&v.find("deep/er/tree").unwrap().unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(names, ["deep/er/tree/FILEWI~1.TXT"]);
    }

    #[test]
    fn io_errors_name_the_byte_range() {
        let good = small_volume(MIB, 512, &tree());
        let v = Volume::open(good.len() as u64, |off, buf| {
            if off >= 20_000 {
                return Err(io::Error::other("device gone"));
            }
            let at = off as usize;
            buf.copy_from_slice(&good[at..at + buf.len()]);
            Ok(())
        })
        .unwrap();
        let e = format!("{:#}", v.walk(&v.root(), &Limits::default()).unwrap_err());
        assert!(
            e.contains("reading bytes") && e.contains("device gone"),
            "{e}"
        );
    }
}
