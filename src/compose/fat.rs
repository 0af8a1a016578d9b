//! A deterministic FAT writer: FAT32 for the EFI system partition, FAT16/FAT12 for small
//! volumes (the ~1–4 MiB `metal-iso` configuration partition).
//!
//! Why not write with the `fatfs` crate: its published release (0.3.6) writes `.`/`..`
//! directory entries that `fsck.fat` rejects (long-name records on them, a wrong `..`
//! cluster), and the fixes are unreleased. So the volume is written here, from the FAT
//! specification (Microsoft "FAT: General Overview of On-Disk Format" 1.03, and its VFAT
//! long-name rules); `fatfs` is only used in the tests, to read volumes back.
//!
//! The output is a [`Layout`]: boot sectors, FATs and directories are in-memory bytes, file
//! data is placed with [`Layout::put_layout`] (nothing is copied), free FAT entries are
//! mapped zeros, and unused data clusters (and the slack after a file's last byte) stay
//! unmapped.
//!
//! On-disk arrangement, fixed so the same input always gives the same bytes:
//! - 512-byte sectors, 32 reserved sectors (boot sector 0, FSInfo 1, boot sector tail 2,
//!   their backups at 6, 7 and 8), two FATs, then the data region. The FAT is the smallest
//!   that covers every cluster, grown just enough that the data region starts on a cluster
//!   boundary (relative to the partition start).
//! - Sectors per cluster: 8 (4 KiB) if that still gives at least 65525 clusters, else 4, 2
//!   or 1; only volumes too big for 4 KiB clusters (over about 1 TiB) get 16 or more.
//! - Within a directory, entries are sorted by their case-folded name. Clusters are
//!   allocated contiguously from cluster 2: first every directory (root first, then a
//!   depth-first pre-order walk), then the data of every file in the same walk order.
//! - Every timestamp (created, written, accessed) is `FatParams::mtime`.
//!
//! Small volumes ([`build_fat`] below the FAT32 minimum of about 33 MiB): the FAT type follows
//! from the cluster count, as the specification defines it (fewer than 4085 clusters: FAT12,
//! fewer than 65525: FAT16). FAT16 is tried first, with 1, 2, 4, … sectors per cluster, the
//! smallest cluster that gives a FAT16 cluster count; volumes too small for any FAT16 count
//! (below about 2.1 MiB) get FAT12 with 1-sector clusters. One reserved sector (the boot
//! sector), grown just enough that the data region starts on a cluster boundary; two FATs; a
//! fixed root directory of 512 entries (16 KiB); no FSInfo sector, no backup boot sector.
//!
//! Directories may also be given by themselves, and stay empty ([`build_fat_dirs`]: the
//! installer stick's `records/`); [`build_smallest`] picks the smallest whole number of MiB
//! that holds the files (the installer stick's ESP and payload partition).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};

use crate::layout::Layout;

/// One file to put on the volume.
#[derive(Clone, Debug)]
pub struct FatFile {
    /// `/`-separated path from the root, e.g. `EFI/boot/BOOTX64.efi`. Parent directories
    /// are implied.
    pub path: String,
    pub content: Layout,
}

/// The volume-wide parameters.
#[derive(Clone, Debug)]
pub struct FatParams {
    /// Partition size in bytes (a multiple of 512).
    pub size: u64,
    /// Volume label: 1 to 11 characters out of `A-Z 0-9 space _ -`, not starting with a space.
    pub label: String,
    /// Volume serial number.
    pub volume_id: u32,
    /// Partition start LBA (`BPB_HiddSec`).
    pub hidden_sectors: u32,
    /// Unix seconds used for every timestamp; clamped into 1980..=2107.
    pub mtime: u64,
    /// Bytes per sector: 512, or 4096 for a disk with 4 KiB logical blocks (Linux mounts a
    /// FAT only if its sectors are at least the device's logical block size).
    pub sector_size: u64,
}

impl FatParams {
    /// Parameters with 512-byte sectors.
    pub fn new(size: u64, label: &str, volume_id: u32, hidden_sectors: u32, mtime: u64) -> Self {
        FatParams {
            size,
            label: label.to_string(),
            volume_id,
            hidden_sectors,
            mtime,
            sector_size: SECTOR_SIZE,
        }
    }
}

/// The usual sector size; [`SECTOR_SIZES`] are all that are written.
pub const SECTOR_SIZE: u64 = 512;
/// Sector sizes the writer supports.
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];
pub const RESERVED_SECTORS: u32 = 32;
pub const NUM_FATS: u32 = 2;
/// Fewer clusters than this makes a FAT16 volume by definition.
pub const MIN_CLUSTERS: u32 = 65_525;
/// The largest cluster count whose cluster numbers stay below the reserved FAT values.
pub const MAX_CLUSTERS: u32 = 0x0FFF_FFF5;

const MIB: u64 = 1024 * 1024;
const FSINFO_SECTOR: u16 = 1;
const BACKUP_BOOT_SECTOR: u16 = 6;
const ROOT_CLUSTER: u32 = 2;
const MEDIA: u8 = 0xF8;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const DIR_ENTRY_SIZE: usize = 32;
/// A directory may hold at most 65536 entries (2 MiB).
const MAX_DIR_ENTRIES: usize = 65_536;
const MAX_NAME_UNITS: usize = 255;
const LFN_CHARS_PER_ENTRY: usize = 13;

const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;

/// FAT32 cluster sizes in bytes, in order of preference (4 KiB first; with 512-byte sectors
/// 8, 4, 2, 1, 16, … sectors per cluster); those smaller than a sector are skipped.
const CLUSTER_CHOICES: [u64; 8] = [4096, 2048, 1024, 512, 8192, 16384, 32768, 65536];

/// Largest cluster count of a FAT12 volume (the specification's "fewer than 4085").
pub const FAT12_MAX_CLUSTERS: u32 = 4084;
/// Root directory entries of a FAT12/FAT16 volume (a fixed region of 16 KiB).
pub const SMALL_ROOT_ENTRIES: u32 = 512;
/// Sectors-per-cluster candidates of FAT12/FAT16 volumes, smallest first (at most 32 KiB with
/// 512-byte sectors; clusters above 32 KiB are skipped).
const SMALL_CLUSTER_CHOICES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
/// The largest cluster FAT readers agree on.
const MAX_CLUSTER_BYTES: u64 = 32 * 1024;

/// The FAT variant of a volume: it follows from the cluster count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// Bits of one FAT entry.
    pub fn bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// "FAT12", "FAT16" or "FAT32".
    pub fn as_str(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }

    /// The end-of-chain marker.
    fn end_of_chain(self) -> u32 {
        match self {
            FatType::Fat12 => 0x0FFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => END_OF_CHAIN,
        }
    }

    /// FAT entry 0: the media byte, the other bits set.
    fn media_entry(self) -> u32 {
        match self {
            FatType::Fat12 => 0x0F00 | u32::from(MEDIA),
            FatType::Fat16 => 0xFF00 | u32::from(MEDIA),
            FatType::Fat32 => 0x0FFF_FF00 | u32::from(MEDIA),
        }
    }
}

/// Which volume labels are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelRule {
    /// `A-Z 0-9 space _ -` (what DOS and Windows write).
    Uppercase,
    /// Also `a-z`, stored as given: for readers that compare labels case-sensitively (Talos
    /// looks for a filesystem labelled exactly `metal-iso`).
    AllowLowercase,
}

/// Where everything of a volume of a given size lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub total_sectors: u32,
    pub sectors_per_cluster: u32,
    /// Sectors of one FAT.
    pub fat_sectors: u32,
    /// Number of data clusters (numbered 2..clusters+2).
    pub clusters: u32,
    pub fat_type: FatType,
    /// Sectors before the first FAT (32 for FAT32; 1, plus alignment, for FAT12/16).
    pub reserved_sectors: u32,
    /// Sectors of the fixed root directory region (0 for FAT32: its root is a cluster chain).
    pub root_dir_sectors: u32,
    /// Bytes per sector.
    pub sector_size: u64,
}

impl Geometry {
    /// The FAT32 geometry for a partition of `size` bytes with 512-byte sectors.
    pub fn for_size(size: u64) -> Result<Self> {
        Self::fat32(size, SECTOR_SIZE)
    }

    /// The FAT32 geometry for a partition of `size` bytes with `sector`-byte sectors: see the
    /// module documentation.
    pub fn fat32(size: u64, sector: u64) -> Result<Self> {
        check_sector_size(sector)?;
        if size % sector != 0 {
            bail!("ESP size {size} is not a multiple of {sector} bytes");
        }
        let Ok(total) = u32::try_from(size / sector) else {
            bail!(
                "ESP of {} MiB is too large for FAT32 with {sector}-byte sectors: at most {} MiB",
                size / MIB,
                (u64::from(u32::MAX) * sector) / MIB
            );
        };
        if let Some(g) = CLUSTER_CHOICES
            .iter()
            .filter(|&&b| b >= sector)
            .find_map(|&b| Self::try_with(total, (b / sector) as u32, sector))
        {
            return Ok(g);
        }
        let min = min_size_for(sector);
        if size < min {
            let with = if sector == SECTOR_SIZE {
                String::new()
            } else {
                format!(" with {sector}-byte sectors")
            };
            bail!(
                "ESP of {} MiB is too small for FAT32{with}: at least {} MiB",
                format_mib(size),
                min.div_ceil(MIB)
            );
        }
        bail!("no FAT32 geometry fits an ESP of {size} bytes")
    }

    /// The geometry with `spc` sectors per cluster, if it gives a valid FAT32 cluster count.
    fn try_with(total: u32, spc: u32, sector: u64) -> Option<Self> {
        let spc = u64::from(spc);
        let avail = u64::from(total).checked_sub(u64::from(RESERVED_SECTORS))?;
        let fats = u64::from(NUM_FATS);
        let mut fat = fat_sectors(avail, spc, FatType::Fat32.bits(), sector);
        // Grow the FAT so the data region starts on a cluster boundary.
        while (u64::from(RESERVED_SECTORS) + fats * fat) % spc != 0 {
            fat += 1;
        }
        let data = avail.checked_sub(fats * fat)?;
        let clusters = data / spc;
        if clusters < u64::from(MIN_CLUSTERS) || clusters > u64::from(MAX_CLUSTERS) {
            return None;
        }
        if fat * sector / 4 < clusters + 2 {
            return None; // cannot happen: the FAT only grew
        }
        Some(Self {
            total_sectors: total,
            sectors_per_cluster: spc as u32,
            fat_sectors: u32::try_from(fat).ok()?,
            clusters: clusters as u32,
            fat_type: FatType::Fat32,
            reserved_sectors: RESERVED_SECTORS,
            root_dir_sectors: 0,
            sector_size: sector,
        })
    }

    /// [`Geometry::any`] with 512-byte sectors.
    pub fn for_any_size(size: u64) -> Result<Self> {
        Self::any(size, SECTOR_SIZE)
    }

    /// The geometry of a volume of `size` bytes of any FAT type: FAT32 from [`min_size_for`]
    /// on (exactly [`Geometry::fat32`]), FAT16 or FAT12 below (see the module documentation).
    pub fn any(size: u64, sector: u64) -> Result<Self> {
        check_sector_size(sector)?;
        if size >= min_size_for(sector) {
            return Self::fat32(size, sector);
        }
        if size % sector != 0 {
            bail!("FAT volume size {size} is not a multiple of {sector} bytes");
        }
        let total = (size / sector) as u32; // below the FAT32 minimum
        [FatType::Fat16, FatType::Fat12]
            .iter()
            .flat_map(|&t| SMALL_CLUSTER_CHOICES.iter().map(move |&spc| (t, spc)))
            .filter(|&(_, spc)| u64::from(spc) * sector <= MAX_CLUSTER_BYTES)
            .find_map(|(t, spc)| Self::try_small(total, spc, t, sector))
            .ok_or_else(|| {
                anyhow!(
                    "a FAT volume of {size} bytes is too small: at least {} bytes",
                    (1 + 2 + small_root_sectors(sector) + 1) * sector
                )
            })
    }

    /// The FAT12/FAT16 geometry with `spc` sectors per cluster, if its cluster count is one
    /// of type `t`.
    fn try_small(total: u32, spc: u32, t: FatType, sector: u64) -> Option<Self> {
        let spc64 = u64::from(spc);
        let root = small_root_sectors(sector);
        let mut reserved = 1u64;
        let fats = u64::from(NUM_FATS);
        let avail = u64::from(total).checked_sub(reserved + root)?;
        let fat = fat_sectors(avail, spc64, t.bits(), sector);
        // Grow the reserved region so the data region starts on a cluster boundary.
        while (reserved + fats * fat + root) % spc64 != 0 {
            reserved += 1;
        }
        let data = u64::from(total).checked_sub(reserved + fats * fat + root)?;
        let clusters = data / spc64;
        let range = match t {
            FatType::Fat12 => 1..=u64::from(FAT12_MAX_CLUSTERS),
            FatType::Fat16 => u64::from(FAT12_MAX_CLUSTERS) + 1..=u64::from(MIN_CLUSTERS) - 1,
            FatType::Fat32 => return None,
        };
        if !range.contains(&clusters) || fat * sector * 8 / t.bits() < clusters + 2 {
            return None;
        }
        Some(Self {
            total_sectors: total,
            sectors_per_cluster: spc,
            fat_sectors: u32::try_from(fat).ok()?,
            clusters: clusters as u32,
            fat_type: t,
            reserved_sectors: u32::try_from(reserved).ok()?,
            root_dir_sectors: root as u32,
            sector_size: sector,
        })
    }

    pub fn cluster_size(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * self.sector_size
    }

    /// Byte offset of FAT number `n` (0 or 1).
    pub fn fat_offset(&self, n: u32) -> u64 {
        (u64::from(self.reserved_sectors) + u64::from(n) * u64::from(self.fat_sectors))
            * self.sector_size
    }

    /// Byte size of one FAT.
    pub fn fat_size(&self) -> u64 {
        u64::from(self.fat_sectors) * self.sector_size
    }

    /// Byte offset of the fixed root directory region (FAT12/16; the data region on FAT32).
    pub fn root_dir_offset(&self) -> u64 {
        self.fat_offset(NUM_FATS)
    }

    /// Byte offset of the data region (cluster 2).
    pub fn data_offset(&self) -> u64 {
        self.root_dir_offset() + u64::from(self.root_dir_sectors) * self.sector_size
    }

    /// Byte offset of data cluster `cluster` (≥ 2).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset() + u64::from(cluster.saturating_sub(2)) * self.cluster_size()
    }
}

/// The smallest partition size (bytes) that holds a FAT32 volume with 512-byte sectors.
pub fn min_size() -> u64 {
    min_size_for(SECTOR_SIZE)
}

/// The smallest partition size (bytes) that holds a FAT32 volume (1-sector clusters).
pub fn min_size_for(sector: u64) -> u64 {
    // Lower bound: the reserved sectors, the minimum cluster count, two 1-sector FATs.
    let mut total = RESERVED_SECTORS + MIN_CLUSTERS + NUM_FATS;
    while Geometry::try_with(total, 1, sector).is_none() {
        total += 1;
    }
    u64::from(total) * sector
}

/// Sectors of the fixed FAT12/FAT16 root directory ([`SMALL_ROOT_ENTRIES`] entries).
fn small_root_sectors(sector: u64) -> u64 {
    (u64::from(SMALL_ROOT_ENTRIES) * DIR_ENTRY_SIZE as u64).div_ceil(sector)
}

fn check_sector_size(sector: u64) -> Result<()> {
    if !SECTOR_SIZES.contains(&sector) {
        bail!("a FAT sector of {sector} bytes is not supported: use 512 or 4096");
    }
    Ok(())
}

fn format_mib(size: u64) -> String {
    if size % MIB == 0 {
        format!("{}", size / MIB)
    } else {
        format!("{:.2}", size as f64 / MIB as f64)
    }
}

// ---------------------------------------------------------------------------------------
// Names

/// Characters allowed in a short name besides `A-Z` and `0-9`.
const SHORT_SPECIALS: &str = "$%'-_@~`!(){}^#&";

fn is_short_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || SHORT_SPECIALS.contains(c)
}

/// The key two names collide under (FAT compares names case-insensitively).
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Check one path component; the error names the path.
fn check_name(name: &str, path: &str) -> Result<()> {
    if name.is_empty() {
        bail!("invalid path {path:?}: empty path component");
    }
    if name == "." || name == ".." {
        bail!("invalid path {path:?}: component {name:?} is not allowed");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c < ' ' || c == '\x7f' || "\"*/:<>?\\|".contains(c))
    {
        bail!("invalid path {path:?}: character {c:?} is not allowed in a FAT name");
    }
    if name.ends_with('.') || name.ends_with(' ') {
        bail!("invalid path {path:?}: name {name:?} ends with a dot or a space");
    }
    let units = name.encode_utf16().count();
    if units > MAX_NAME_UNITS {
        bail!("invalid path {path:?}: name is {units} UTF-16 units long, at most {MAX_NAME_UNITS}");
    }
    Ok(())
}

/// The 11-byte short name if `name` already is a valid uppercase 8.3 name.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => (b, Some(e)),
        None => (name, None),
    };
    let ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.chars().all(is_short_char);
    if !ok(base, 8) || !ext.is_none_or(|e| ok(e, 3)) {
        return None;
    }
    Some(short_bytes(base, ext.unwrap_or("")))
}

fn short_bytes(base: &str, ext: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (o, b) in out[..8].iter_mut().zip(base.bytes()) {
        *o = b;
    }
    for (o, b) in out[8..].iter_mut().zip(ext.bytes()) {
        *o = b;
    }
    out
}

/// The basis of a generated short name (specification's "basis-name generation").
struct Basis {
    primary: String,
    ext: String,
    /// The long name does not survive as this 8.3 name: a numeric tail is required.
    needs_tail: bool,
}

fn basis_name(name: &str) -> Basis {
    let mut lossy = false;
    // Uppercase, replace what a short name cannot hold, drop spaces.
    let mut chars: Vec<char> = Vec::new();
    for c in name.chars() {
        let u = c.to_ascii_uppercase();
        if u == ' ' {
            lossy = true;
        } else if u == '.' || is_short_char(u) {
            chars.push(u);
        } else {
            chars.push('_');
            lossy = true;
        }
    }
    let start = chars.iter().position(|&c| c != '.').unwrap_or(chars.len());
    if start > 0 {
        lossy = true;
    }
    let chars = &chars[start..];
    let primary_end = chars.iter().position(|&c| c == '.').unwrap_or(chars.len());
    let primary_all: String = chars[..primary_end].iter().collect();
    let ext_all: String = match chars.iter().rposition(|&c| c == '.') {
        Some(i) => chars[i + 1..].iter().collect(),
        None => String::new(),
    };
    let mut primary: String = primary_all.chars().take(8).collect();
    let ext: String = ext_all.chars().take(3).collect();
    let rebuilt = if ext.is_empty() {
        primary.clone()
    } else {
        format!("{primary}.{ext}")
    };
    let upper: String = name.chars().map(|c| c.to_ascii_uppercase()).collect();
    let mut needs_tail = lossy || rebuilt != upper;
    if primary.is_empty() {
        primary.push('_');
        needs_tail = true;
    }
    Basis {
        primary,
        ext,
        needs_tail,
    }
}

/// `basis` with the numeric tail `~n`.
fn tailed(basis: &Basis, n: u32) -> [u8; 11] {
    let tail = format!("~{n}");
    let keep = 8usize.saturating_sub(tail.len());
    let base: String = basis
        .primary
        .chars()
        .take(keep)
        .chain(tail.chars())
        .collect();
    short_bytes(&base, &basis.ext)
}

/// Checksum of a short name, stored in each of its long-name entries.
fn short_name_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

// ---------------------------------------------------------------------------------------
// Timestamps

/// (date, time, tenths of 10 ms) of a unix time, clamped to what FAT can store.
fn fat_timestamp(unix: u64) -> (u16, u16, u8) {
    const FAT_EPOCH: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    const FAT_LAST: u64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let c = crate::civil::from_unix(unix.clamp(FAT_EPOCH, FAT_LAST));
    let (year, month, day) = (c.year, c.month, c.day);
    let (h, m, s) = (c.hour, c.minute, c.second);
    let date = (((year - 1980) << 9) | (month << 5) | day) as u16;
    let time = ((h << 11) | (m << 5) | (s / 2)) as u16;
    (date, time, ((s % 2) * 100) as u8)
}

// ---------------------------------------------------------------------------------------
// The directory tree

enum TreeNode {
    Dir(TreeDir),
    File(usize),
}

#[derive(Default)]
struct TreeDir {
    /// Folded name → (name as given, node).
    entries: BTreeMap<String, (String, TreeNode)>,
}

fn build_tree(files: &[FatFile], dirs: &[&str]) -> Result<TreeDir> {
    let mut root = TreeDir::default();
    // Who created each directory / file, for error messages.
    let mut owners: BTreeMap<String, &str> = BTreeMap::new();
    for (index, file) in files.iter().enumerate() {
        let path = file.path.as_str();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts {
            check_name(part, path)?;
        }
        let Some((last, parents)) = parts.split_last() else {
            bail!("invalid path {path:?}: empty");
        };
        let dir = walk_dirs(&mut root, parents, path, &mut owners)?;
        let full = fold(path);
        if let Some((_, node)) = dir.entries.get(&fold(last)) {
            let other = owners.get(&full).copied().unwrap_or("?");
            match node {
                TreeNode::Dir(_) => bail!(
                    "file {path:?} is also a directory (implied by {other:?})"
                ),
                TreeNode::File(_) => bail!(
                    "duplicate path {path:?} (FAT names are case-insensitive; clashes with {other:?})"
                ),
            }
        }
        dir.entries
            .insert(fold(last), (last.to_string(), TreeNode::File(index)));
        owners.insert(full, path);
    }
    for &path in dirs {
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts {
            check_name(part, path)?;
        }
        walk_dirs(&mut root, &parts, path, &mut owners)?;
    }
    Ok(root)
}

/// The directory `parts` below `root`, created as needed; `path` (the file or directory that
/// needs it) names it in errors and in `owners`.
fn walk_dirs<'t, 'p>(
    root: &'t mut TreeDir,
    parts: &[&str],
    path: &'p str,
    owners: &mut BTreeMap<String, &'p str>,
) -> Result<&'t mut TreeDir> {
    let mut dir = root;
    let mut prefix = String::new();
    for part in parts {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let (name, node) = dir
            .entries
            .entry(fold(part))
            .or_insert_with(|| (part.to_string(), TreeNode::Dir(TreeDir::default())));
        let owner = *owners.entry(fold(&prefix)).or_insert(path);
        let TreeNode::Dir(sub) = node else {
            bail!("path {path:?} needs {prefix:?} as a directory, but {owner:?} is a file");
        };
        if name != part {
            bail!(
                "path {path:?} spells directory {name:?} as {part:?} (from {owner:?}); \
                 FAT names are case-insensitive, use one spelling"
            );
        }
        dir = sub;
    }
    Ok(dir)
}

enum ChildKind {
    Dir(usize),
    File(usize),
}

struct Child {
    name: String,
    short: [u8; 11],
    /// Number of long-name entries (0: the short name is the name).
    lfn_entries: usize,
    kind: ChildKind,
    first_cluster: u32,
    size: u32,
}

struct DirPlan {
    path: String,
    parent: Option<usize>,
    children: Vec<Child>,
    first_cluster: u32,
    clusters: u32,
}

/// Flatten `dir` into `out` in depth-first pre-order; returns its index.
fn flatten(dir: TreeDir, path: String, parent: Option<usize>, out: &mut Vec<DirPlan>) -> usize {
    let index = out.len();
    out.push(DirPlan {
        path: path.clone(),
        parent,
        children: Vec::new(),
        first_cluster: 0,
        clusters: 0,
    });
    let mut children = Vec::new();
    for (_, (name, node)) in dir.entries {
        let kind = match node {
            TreeNode::Dir(d) => {
                let sub = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                ChildKind::Dir(flatten(d, sub, Some(index), out))
            }
            TreeNode::File(i) => ChildKind::File(i),
        };
        children.push(Child {
            name,
            short: [0; 11],
            lfn_entries: 0,
            kind,
            first_cluster: 0,
            size: 0,
        });
    }
    out[index].children = children;
    index
}

/// Give every child of a directory its short name (and long-name entry count).
fn assign_short_names(dir: &mut DirPlan) -> Result<()> {
    let mut taken: BTreeSet<[u8; 11]> = BTreeSet::new();
    let mut pending = Vec::new();
    // Pass 1: names that are their own short name, or fit 8.3 apart from case.
    for (i, child) in dir.children.iter_mut().enumerate() {
        if let Some(short) = exact_short_name(&child.name) {
            child.short = short;
            taken.insert(short);
            continue;
        }
        let units = child.name.encode_utf16().count();
        child.lfn_entries = units.div_ceil(LFN_CHARS_PER_ENTRY);
        let basis = basis_name(&child.name);
        let plain = short_bytes(&basis.primary, &basis.ext);
        if !basis.needs_tail && taken.insert(plain) {
            child.short = plain;
        } else {
            pending.push((i, basis));
        }
    }
    // Pass 2: numeric tails, in directory order.
    for (i, basis) in pending {
        let short = (1..=999_999u32)
            .map(|n| tailed(&basis, n))
            .find(|s| !taken.contains(s))
            .ok_or_else(|| {
                anyhow!(
                    "no free short name for {:?} in directory {:?}",
                    dir.children[i].name,
                    dir.path
                )
            })?;
        taken.insert(short);
        dir.children[i].short = short;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Writing

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn validate_label(label: &str, rule: LabelRule) -> Result<[u8; 11]> {
    let lower = rule == LabelRule::AllowLowercase;
    if let Some(c) = label.chars().find(|&c| {
        !(c.is_ascii_uppercase()
            || c.is_ascii_digit()
            || " _-".contains(c)
            || (lower && c.is_ascii_lowercase()))
    }) {
        let allowed = if lower {
            "A-Z a-z 0-9 space _ -"
        } else {
            "A-Z 0-9 space _ -"
        };
        bail!("invalid volume label {label:?}: character {c:?} is not one of {allowed}");
    }
    // Only ASCII is left, so bytes are characters.
    if label.is_empty() || label.len() > 11 {
        bail!(
            "invalid volume label {label:?}: must be 1 to 11 characters, is {}",
            label.len()
        );
    }
    if label.starts_with(' ') {
        bail!("invalid volume label {label:?}: must not start with a space");
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

struct Stamp {
    date: u16,
    time: u16,
    tenths: u8,
}

/// A short directory entry.
fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, stamp: &Stamp) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[13] = stamp.tenths;
    put_u16(&mut e, 14, stamp.time);
    put_u16(&mut e, 16, stamp.date);
    put_u16(&mut e, 18, stamp.date);
    put_u16(&mut e, 20, (cluster >> 16) as u16);
    put_u16(&mut e, 22, stamp.time);
    put_u16(&mut e, 24, stamp.date);
    put_u16(&mut e, 26, cluster as u16);
    put_u32(&mut e, 28, size);
    e
}

/// The long-name entries of `name`, in on-disk order (last part first).
fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    const OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    let units: Vec<u16> = name.encode_utf16().collect();
    let count = units.len().div_ceil(LFN_CHARS_PER_ENTRY);
    let checksum = short_name_checksum(short);
    let mut out = Vec::with_capacity(count);
    for ordinal in (1..=count).rev() {
        let mut e = [0u8; 32];
        e[0] = ordinal as u8 | if ordinal == count { 0x40 } else { 0 };
        e[11] = ATTR_LONG_NAME;
        e[13] = checksum;
        let start = (ordinal - 1) * LFN_CHARS_PER_ENTRY;
        for (k, &off) in OFFSETS.iter().enumerate() {
            let unit = match (start + k).cmp(&units.len()) {
                std::cmp::Ordering::Less => units[start + k],
                std::cmp::Ordering::Equal => 0x0000,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            put_u16(&mut e, off, unit);
        }
        out.push(e);
    }
    out
}

/// The FAT32 boot sector's first 512 bytes (the rest of a larger sector is zeros; the
/// signature stays at offset 510 whatever the sector size, as the specification says).
fn boot_sector32(params: &FatParams, g: &Geometry, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..3].copy_from_slice(&[0xEB, 0x58, 0x90]); // jmp short 0x5A; nop
    b[3..11].copy_from_slice(b"EDGEIMG ");
    put_u16(&mut b, 11, g.sector_size as u16);
    b[13] = g.sectors_per_cluster as u8;
    put_u16(&mut b, 14, RESERVED_SECTORS as u16);
    b[16] = NUM_FATS as u8;
    // 17: root entries 0, 19: 16-bit total sectors 0.
    b[21] = MEDIA;
    // 22: 16-bit FAT size 0.
    put_u16(&mut b, 24, 63);
    put_u16(&mut b, 26, 255);
    put_u32(&mut b, 28, params.hidden_sectors);
    put_u32(&mut b, 32, g.total_sectors);
    put_u32(&mut b, 36, g.fat_sectors);
    // 40: flags 0 (FATs mirrored), 42: version 0.0.
    put_u32(&mut b, 44, ROOT_CLUSTER);
    put_u16(&mut b, 48, FSINFO_SECTOR);
    put_u16(&mut b, 50, BACKUP_BOOT_SECTOR);
    b[64] = 0x80; // drive number
    b[66] = 0x29; // extended boot signature
    put_u32(&mut b, 67, params.volume_id);
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    // Boot code at 0x5A: not bootable; ask the BIOS for the next device, then halt.
    b[0x5A..0x5F].copy_from_slice(&[0xCD, 0x18, 0xF4, 0xEB, 0xFD]); // int 18h; hlt; jmp $-1
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    put_u32(&mut b, 0, 0x4161_5252);
    put_u32(&mut b, 484, 0x6141_7272);
    put_u32(&mut b, 488, free);
    put_u32(&mut b, 492, next_free);
    put_u32(&mut b, 508, 0xAA55_0000);
    b
}

/// The boot sector of a FAT12/FAT16 volume.
fn boot_sector_small(params: &FatParams, g: &Geometry, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]); // jmp short 0x3E; nop
    b[3..11].copy_from_slice(b"EDGEIMG ");
    put_u16(&mut b, 11, g.sector_size as u16);
    b[13] = g.sectors_per_cluster as u8;
    put_u16(&mut b, 14, g.reserved_sectors as u16);
    b[16] = NUM_FATS as u8;
    put_u16(&mut b, 17, SMALL_ROOT_ENTRIES as u16);
    if let Ok(total16) = u16::try_from(g.total_sectors) {
        put_u16(&mut b, 19, total16);
    } else {
        put_u32(&mut b, 32, g.total_sectors);
    }
    b[21] = MEDIA;
    put_u16(&mut b, 22, g.fat_sectors as u16);
    put_u16(&mut b, 24, 63);
    put_u16(&mut b, 26, 255);
    put_u32(&mut b, 28, params.hidden_sectors);
    b[36] = 0x80; // drive number
    b[38] = 0x29; // extended boot signature
    put_u32(&mut b, 39, params.volume_id);
    b[43..54].copy_from_slice(label);
    let fs_type: &[u8; 8] = match g.fat_type {
        FatType::Fat12 => b"FAT12   ",
        _ => b"FAT16   ",
    };
    b[54..62].copy_from_slice(fs_type);
    // Boot code at 0x3E: not bootable; ask the BIOS for the next device, then halt.
    b[0x3E..0x43].copy_from_slice(&[0xCD, 0x18, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// Store FAT entry `n` of a FAT of type `t`.
fn set_fat_entry(fat: &mut [u8], t: FatType, n: usize, value: u32) {
    match t {
        FatType::Fat32 => put_u32(fat, n * 4, value),
        FatType::Fat16 => put_u16(fat, n * 2, value as u16),
        FatType::Fat12 => {
            let at = n * 3 / 2;
            let v = value & 0x0FFF;
            if n % 2 == 0 {
                fat[at] = v as u8;
                fat[at + 1] = (fat[at + 1] & 0xF0) | (v >> 8) as u8;
            } else {
                fat[at] = (fat[at] & 0x0F) | ((v & 0x0F) << 4) as u8;
                fat[at + 1] = (v >> 4) as u8;
            }
        }
    }
}

/// Build the FAT32 volume holding `files`. The result is exactly `params.size` bytes.
pub fn build_fat32(params: &FatParams, files: &[FatFile]) -> Result<Layout> {
    let label = validate_label(&params.label, LabelRule::Uppercase)?;
    let g = Geometry::fat32(params.size, params.sector_size)?;
    build_with(params, files, &[], &g, &label, "ESP")
}

/// Build a FAT volume of any size holding `files`: FAT32 from [`min_size`] on (the same bytes
/// as [`build_fat32`]), FAT16 or FAT12 below. The result is exactly `params.size` bytes.
pub fn build_fat(params: &FatParams, files: &[FatFile], rule: LabelRule) -> Result<Layout> {
    build_fat_dirs(params, files, &[], rule)
}

/// [`build_fat`] that also creates the directories `dirs` (`/`-separated paths from the root,
/// parents implied), which may stay empty.
pub fn build_fat_dirs(
    params: &FatParams,
    files: &[FatFile],
    dirs: &[&str],
    rule: LabelRule,
) -> Result<Layout> {
    let label = validate_label(&params.label, rule)?;
    let g = Geometry::any(params.size, params.sector_size)?;
    let noun = format!("{} volume", g.fat_type.as_str());
    build_with(params, files, dirs, &g, &label, &noun)
}

/// The smallest volume holding `files` and the directories `dirs`: a whole number of MiB and
/// at least `at_least` bytes (`params.size` is not used). It is FAT32 from [`min_size`] on,
/// FAT16 or FAT12 below, as [`build_fat_dirs`] makes it; the layout's length is the size
/// chosen.
///
/// The search starts at the files' bytes (a lower bound: no volume holds less) and grows by
/// 1 MiB until everything fits; the FATs, directories and cluster slack of real volumes take
/// a few MiB at most, so it ends after a few steps.
pub fn build_smallest(
    params: &FatParams,
    files: &[FatFile],
    dirs: &[&str],
    rule: LabelRule,
    at_least: u64,
) -> Result<Layout> {
    // Names and labels fail the same at every size: report them once.
    validate_label(&params.label, rule)?;
    build_tree(files, dirs)?;
    let data: u64 = files
        .iter()
        .map(|f| f.content.len().div_ceil(params.sector_size) * params.sector_size)
        .sum();
    let mut size = data.max(at_least).max(1).div_ceil(MIB) * MIB;
    let limit = size.saturating_mul(2).saturating_add(64 * MIB);
    loop {
        let p = FatParams {
            size,
            ..params.clone()
        };
        match build_fat_dirs(&p, files, dirs, rule) {
            Ok(l) => return Ok(l),
            Err(e) if size >= limit => return Err(e),
            Err(_) => size += MIB,
        }
    }
}

fn build_with(
    params: &FatParams,
    files: &[FatFile],
    dirs: &[&str],
    g: &Geometry,
    label: &[u8; 11],
    noun: &str,
) -> Result<Layout> {
    let t = g.fat_type;
    let fat32 = t == FatType::Fat32;
    let cluster_size = g.cluster_size();
    let ts = fat_timestamp(params.mtime);
    let stamp = Stamp {
        date: ts.0,
        time: ts.1,
        tenths: ts.2,
    };

    // The tree, flattened in depth-first pre-order (root first).
    let tree = build_tree(files, dirs)?;
    let mut dirs = Vec::new();
    flatten(tree, String::new(), None, &mut dirs);

    // Short names, sizes and clusters of the directories.
    let mut next_cluster: u64 = u64::from(ROOT_CLUSTER);
    for (index, dir) in dirs.iter_mut().enumerate() {
        assign_short_names(dir)?;
        let fixed = if index == 0 { 1 } else { 2 }; // label, or "." and ".."
        let entries: usize = fixed
            + dir
                .children
                .iter()
                .map(|c| c.lfn_entries + 1)
                .sum::<usize>();
        if entries > MAX_DIR_ENTRIES {
            bail!(
                "directory {:?} needs {entries} directory entries, FAT allows at most {MAX_DIR_ENTRIES}",
                if dir.path.is_empty() { "/" } else { &dir.path }
            );
        }
        if index == 0 && !fat32 {
            // The fixed root directory region.
            if entries > SMALL_ROOT_ENTRIES as usize {
                bail!(
                    "the root directory needs {entries} directory entries, a {} root directory \
                     holds at most {SMALL_ROOT_ENTRIES}",
                    t.as_str()
                );
            }
            continue;
        }
        let clusters = ((entries * DIR_ENTRY_SIZE) as u64).div_ceil(cluster_size);
        dir.first_cluster = next_cluster as u32;
        dir.clusters = clusters as u32;
        next_cluster += clusters;
        if next_cluster - 2 > u64::from(g.clusters) {
            bail!(
                "the directories alone do not fit in the {}-byte {noun}",
                params.size
            );
        }
    }
    // File data, in the same order.
    for dir in &mut dirs {
        for child in &mut dir.children {
            let ChildKind::File(i) = child.kind else {
                continue;
            };
            let file = &files[i];
            let len = file.content.len();
            child.size = u32::try_from(len).map_err(|_| {
                anyhow!(
                    "file {:?} is {len} bytes; FAT32 files are at most {} bytes",
                    file.path,
                    u32::MAX
                )
            })?;
            let clusters = len.div_ceil(cluster_size);
            if clusters > 0 {
                child.first_cluster = next_cluster as u32;
                next_cluster += clusters;
                if next_cluster - 2 > u64::from(g.clusters) {
                    let data_bytes: u64 = files.iter().map(|f| f.content.len()).sum();
                    bail!(
                        "the files ({data_bytes} bytes, first failing at {:?}) do not fit in the \
                         {}-byte {noun} ({} clusters of {cluster_size} bytes)",
                        file.path,
                        params.size,
                        g.clusters
                    );
                }
            }
        }
    }
    let used_clusters = (next_cluster - 2) as u32;
    // The first-cluster numbers of the subdirectories, for their parents' entries.
    let dir_clusters: Vec<u32> = dirs.iter().map(|d| d.first_cluster).collect();

    let mut layout = Layout::new(params.size);

    // Reserved region: boot sector, FSInfo, boot sector tail, and their backups (FAT32), or
    // the boot sector alone (FAT12/16).
    let sector = g.sector_size as usize;
    let mut reserved = vec![0u8; g.reserved_sectors as usize * sector];
    if fat32 {
        let free = g.clusters - used_clusters;
        let next_free = if free == 0 {
            0xFFFF_FFFF
        } else {
            next_cluster as u32
        };
        let boot = boot_sector32(params, g, label);
        let info = fsinfo_sector(free, next_free);
        for base in [0usize, usize::from(BACKUP_BOOT_SECTOR)] {
            let at = |s: usize| (base + s) * sector;
            reserved[at(0)..at(0) + 512].copy_from_slice(&boot);
            reserved[at(1)..at(1) + 512].copy_from_slice(&info);
            reserved[at(3) - 2] = 0x55;
            reserved[at(3) - 1] = 0xAA;
        }
    } else {
        reserved[..512].copy_from_slice(&boot_sector_small(params, g, label));
    }
    layout.put_bytes(0, reserved)?;

    // The FATs: the used prefix as bytes, the free rest as mapped zeros.
    let entries = next_cluster;
    let fat_len = ((entries * t.bits()).div_ceil(8) as usize).div_ceil(sector) * sector;
    let mut fat = vec![0u8; fat_len];
    set_fat_entry(&mut fat, t, 0, t.media_entry());
    set_fat_entry(&mut fat, t, 1, t.end_of_chain());
    let mut chain = |first: u32, clusters: u64| {
        for k in 0..clusters {
            let c = first as usize + k as usize;
            let next = if k + 1 == clusters {
                t.end_of_chain()
            } else {
                c as u32 + 1
            };
            set_fat_entry(&mut fat, t, c, next);
        }
    };
    for dir in &dirs {
        chain(dir.first_cluster, u64::from(dir.clusters));
        for child in &dir.children {
            if let ChildKind::File(_) = child.kind {
                if child.first_cluster != 0 {
                    chain(
                        child.first_cluster,
                        u64::from(child.size).div_ceil(cluster_size),
                    );
                }
            }
        }
    }
    let fat: std::sync::Arc<[u8]> = fat.into();
    for n in 0..NUM_FATS {
        let off = g.fat_offset(n);
        layout.put_bytes(off, fat.clone())?;
        layout.put_zeros(off + fat.len() as u64, g.fat_size() - fat.len() as u64)?;
    }

    // Directories.
    for dir in &dirs {
        let region = if dir.parent.is_none() && !fat32 {
            u64::from(g.root_dir_sectors) * g.sector_size
        } else {
            u64::from(dir.clusters) * cluster_size
        };
        let mut buf = Vec::with_capacity(region as usize);
        match dir.parent {
            None => buf.extend_from_slice(&short_entry(label, ATTR_VOLUME_ID, 0, 0, &stamp)),
            Some(parent) => {
                let parent_cluster = if parent == 0 { 0 } else { dir_clusters[parent] };
                let dot = short_bytes(".", "");
                let dotdot = short_bytes("..", "");
                buf.extend_from_slice(&short_entry(
                    &dot,
                    ATTR_DIRECTORY,
                    dir.first_cluster,
                    0,
                    &stamp,
                ));
                buf.extend_from_slice(&short_entry(
                    &dotdot,
                    ATTR_DIRECTORY,
                    parent_cluster,
                    0,
                    &stamp,
                ));
            }
        }
        for child in &dir.children {
            if child.lfn_entries > 0 {
                for e in long_entries(&child.name, &child.short) {
                    buf.extend_from_slice(&e);
                }
            }
            let (attr, cluster, size) = match child.kind {
                ChildKind::Dir(d) => (ATTR_DIRECTORY, dir_clusters[d], 0),
                ChildKind::File(_) => (ATTR_ARCHIVE, child.first_cluster, child.size),
            };
            buf.extend_from_slice(&short_entry(&child.short, attr, cluster, size, &stamp));
        }
        buf.resize(region as usize, 0);
        let at = if dir.parent.is_none() && !fat32 {
            g.root_dir_offset()
        } else {
            g.cluster_offset(dir.first_cluster)
        };
        layout
            .put_bytes(at, buf)
            .with_context(|| format!("placing directory {:?}", dir.path))?;
    }

    // File data.
    for dir in &dirs {
        for child in &dir.children {
            if let ChildKind::File(i) = child.kind {
                if child.first_cluster != 0 {
                    layout
                        .put_layout(g.cluster_offset(child.first_cluster), &files[i].content)
                        .with_context(|| format!("placing file {:?}", files[i].path))?;
                }
            }
        }
    }
    Ok(layout)
}

/// The smallest FAT size in sectors (each of [`NUM_FATS`] copies) that holds an entry of
/// `bits` bits for every cluster of the `avail` sectors left besides the FATs, plus the two
/// reserved entries. The sectors needed do not grow with the FAT's own size, so
/// "fat >= needed(fat)" is monotone and the smallest such size is a binary search.
fn fat_sectors(avail: u64, spc: u64, bits: u64, sector: u64) -> u64 {
    let fats = u64::from(NUM_FATS);
    let needed = |fat: u64| {
        let clusters = avail.saturating_sub(fats * fat) / spc;
        ((clusters + 2) * bits).div_ceil(8).div_ceil(sector)
    };
    let (mut lo, mut hi) = (1u64, needed(0).max(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if mid >= needed(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout::{Fill, SharedFile};
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const MTIME: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn params(size: u64) -> FatParams {
        FatParams {
            size,
            label: "EFI".into(),
            volume_id: 0x1234_ABCD,
            hidden_sectors: 2048,
            mtime: MTIME,
            sector_size: 512,
        }
    }

    pub(crate) fn file(path: &str, content: &[u8]) -> FatFile {
        FatFile {
            path: path.into(),
            content: Layout::from_bytes(content.to_vec()),
        }
    }

    /// Deterministic pseudo-random bytes.
    pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// A backing file for `Fill::File` extents (kept alive by the returned handle).
    fn shared_file(data: &[u8]) -> (tempfile::NamedTempFile, SharedFile) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(data).unwrap();
        t.flush().unwrap();
        let f = std::fs::File::open(t.path()).unwrap();
        let sf = SharedFile::new(f, t.path());
        (t, sf)
    }

    /// The real ESP tree. The UKI is a layout of file regions, BOOTX64 mixes bytes, a file
    /// region, mapped zeros and an unmapped gap.
    fn esp_tree(backing: &SharedFile, uki_len: u64) -> Vec<FatFile> {
        let mut uki = Layout::new(uki_len);
        let half = uki_len / 2;
        uki.put_file(0, backing.clone(), 0, half).unwrap();
        uki.put_file(half, backing.clone(), 7, uki_len - half)
            .unwrap();
        let mut boot = Layout::new(150_000);
        boot.put_bytes(0, pattern(4096 + 17, 1)).unwrap();
        boot.put_file(5000, backing.clone(), 123, 60_000).unwrap();
        boot.put_zeros(70_000, 1000).unwrap();
        boot.put_bytes(149_000, pattern(1000, 2)).unwrap();
        vec![
            FatFile {
                path: "EFI/Linux/Talos-v1.12.5.efi".into(),
                content: uki,
            },
            FatFile {
                path: "EFI/boot/BOOTX64.efi".into(),
                content: boot,
            },
            file(
                "loader/loader.conf",
                b"# systemd-boot configuration\n\ntimeout 10\n",
            ),
        ]
    }

    /// Write the layout into a sparse temporary file (only the non-zero extents).
    fn write_sparse(layout: &Layout) -> tempfile::NamedTempFile {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = t.as_file();
        f.set_len(layout.len()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for e in layout.extents() {
            if matches!(e.fill, Fill::Zero) {
                continue;
            }
            let mut done = 0;
            while done < e.len {
                let n = (e.len - done).min(buf.len() as u64) as usize;
                layout.read_at(e.offset + done, &mut buf[..n]).unwrap();
                f.write_all_at(&buf[..n], e.offset + done).unwrap();
                done += n as u64;
            }
        }
        f.sync_all().unwrap();
        t
    }

    pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Run a tool; `None` (after printing SKIPPED) when it is not installed and CI is unset.
    fn run(tool: &str, args: &[&str]) -> Option<(bool, String)> {
        let Some(exe) = find_tool(tool) else {
            if std::env::var_os("CI").is_some() {
                panic!("{tool} is not installed (required when CI is set)");
            }
            println!("SKIPPED: {tool} not installed");
            return None;
        };
        let out = Command::new(exe)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("$ {tool} {}\n{text}", args.join(" "));
        Some((out.status.success(), text))
    }

    /// `fsck.fat -n` must be clean: its version header and the summary line, nothing else.
    fn fsck_clean(path: &Path) {
        let p = path.to_str().unwrap();
        let Some((ok, text)) = run("fsck.fat", &["-n", p]) else {
            return;
        };
        assert!(ok, "fsck.fat failed:\n{text}");
        for bad in [
            "Warning", "Error", "corrupt", "wrong", "differ", "Dirty", "bad",
        ] {
            assert!(!text.contains(bad), "fsck.fat complained ({bad}):\n{text}");
        }
        for line in text.lines() {
            assert!(
                line.starts_with("fsck.fat ") || line.contains(" files, "),
                "unexpected fsck.fat output line {line:?}:\n{text}"
            );
        }
        assert!(text.contains(" files, "), "{text}");
    }

    /// mtools and dosfslabel see the files, the content of loader.conf and the label.
    fn mtools_check(path: &Path, files: &[FatFile]) {
        let p = path.to_str().unwrap();
        if let Some((ok, text)) = run("mdir", &["-i", p, "-/", "::"]) {
            assert!(ok, "mdir failed:\n{text}");
            assert!(text.contains("Volume in drive : is EFI"), "{text}");
            for f in files {
                let name = f.path.rsplit('/').next().unwrap();
                assert!(text.contains(name), "mdir does not list {name}:\n{text}");
            }
        }
        if let Some(conf) = files.iter().find(|f| f.path == "loader/loader.conf") {
            if let Some((ok, text)) = run("mtype", &["-i", p, "::/loader/loader.conf"]) {
                assert!(ok, "mtype failed:\n{text}");
                assert_eq!(text.as_bytes(), conf.content.to_vec().unwrap());
            }
        }
        if let Some((ok, text)) = run("minfo", &["-i", p, "::"]) {
            assert!(ok, "minfo failed:\n{text}");
            assert!(text.contains("disk label=\"EFI        \""), "{text}");
            assert!(text.contains("disk type=\"FAT32   \""), "{text}");
        }
        if let Some((ok, text)) = run("dosfslabel", &[p]) {
            assert!(ok, "dosfslabel failed:\n{text}");
            assert_eq!(text.trim(), "EFI");
        }
    }

    /// A writer (mtools) can use the volume: add a file and a directory, remove a file,
    /// and the volume is still clean and holds what was written.
    fn mtools_write_then_fsck(img: &Path) {
        let p = img.to_str().unwrap();
        let data = pattern(300_000, 11);
        let (_keep, _) = shared_file(&data);
        let src = _keep.path().to_str().unwrap();
        let Some((ok, text)) = run("mcopy", &["-i", p, src, "::/EFI/Linux/Talos-v1.13.0.efi"])
        else {
            return;
        };
        assert!(ok, "{text}");
        let Some((ok, text)) = run("mmd", &["-i", p, "::/EFI/new dir"]) else {
            return;
        };
        assert!(ok, "{text}");
        let Some((ok, text)) = run("mdel", &["-i", p, "::/loader/loader.conf"]) else {
            return;
        };
        assert!(ok, "{text}");
        fsck_clean(img);
        let out = Command::new(find_tool("mtype").unwrap())
            .args(["-i", p, "::/EFI/Linux/Talos-v1.13.0.efi"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout == data, "mtype returned other bytes");
    }

    /// Read the volume back with `fatfs`: the tree and contents equal the input.
    fn fatfs_check(path: &Path, files: &[FatFile], label: &str) {
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_label(), label);
        assert_eq!(
            fs.read_volume_label_from_root_dir().unwrap().as_deref(),
            Some(label)
        );
        let mut found_files = BTreeMap::new();
        let mut found_dirs = BTreeSet::new();
        fn walk<T: fatfs::ReadWriteSeek>(
            dir: fatfs::Dir<'_, T>,
            prefix: &str,
            files: &mut BTreeMap<String, Vec<u8>>,
            dirs: &mut BTreeSet<String>,
        ) {
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{prefix}{name}");
                if e.is_dir() {
                    assert!(dirs.insert(path.clone()));
                    walk(e.to_dir(), &format!("{path}/"), files, dirs);
                } else {
                    let mut data = Vec::new();
                    e.to_file().read_to_end(&mut data).unwrap();
                    assert_eq!(data.len() as u64, e.len());
                    assert!(files.insert(path, data).is_none());
                }
            }
        }
        walk(fs.root_dir(), "", &mut found_files, &mut found_dirs);
        let mut want_files = BTreeMap::new();
        let mut want_dirs = BTreeSet::new();
        for f in files {
            want_files.insert(f.path.clone(), f.content.to_vec().unwrap());
            let mut p = f.path.as_str();
            while let Some((d, _)) = p.rsplit_once('/') {
                want_dirs.insert(d.to_string());
                p = d;
            }
        }
        assert_eq!(found_dirs, want_dirs);
        assert_eq!(
            found_files.keys().collect::<Vec<_>>(),
            want_files.keys().collect::<Vec<_>>()
        );
        for (k, v) in &want_files {
            assert!(found_files[k] == *v, "content of {k} differs");
        }
    }

    /// Build, check the size, and run every checker.
    fn build_and_check(p: &FatParams, files: &[FatFile]) -> (Layout, tempfile::NamedTempFile) {
        let layout = build_fat32(p, files).unwrap();
        assert_eq!(layout.len(), p.size);
        let img = write_sparse(&layout);
        fsck_clean(img.path());
        fatfs_check(img.path(), files, &p.label);
        (layout, img)
    }

    /// Short names of the entries of a directory, read back with fatfs.
    fn short_names(img: &Path, dir: &str) -> BTreeMap<String, String> {
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        let d = if dir.is_empty() {
            fs.root_dir()
        } else {
            fs.root_dir().open_dir(dir).unwrap()
        };
        let v = d
            .iter()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), e.short_file_name()))
            .collect();
        v
    }

    #[test]
    fn real_esp_2101_mib() {
        let data = pattern(3 << 20, 7);
        let (_keep, backing) = shared_file(&data);
        let files = esp_tree(&backing, 5 << 20);
        let p = params(2101 * MIB);
        let (layout, img) = build_and_check(&p, &files);
        let g = Geometry::for_size(p.size).unwrap();
        assert_eq!(g.sectors_per_cluster, 8);
        assert_eq!(g.data_offset() % g.cluster_size(), 0);
        mtools_check(img.path(), &files);
        mtools_write_then_fsck(img.path());
        // Only metadata and file data are mapped; the free data clusters are not.
        let content: u64 = files.iter().map(|f| f.content.mapped_len()).sum();
        let meta = u64::from(RESERVED_SECTORS) * 512 + 2 * g.fat_size() + 5 * g.cluster_size();
        assert!(
            layout.mapped_len() <= content + meta,
            "{}",
            layout.mapped_len()
        );
        // The UKI's extents are file regions, not copies.
        assert!(layout
            .extents()
            .iter()
            .any(|e| matches!(e.fill, Fill::File(_, 7)) && e.len > 1 << 20));
        let shorts = short_names(img.path(), "EFI/boot");
        assert_eq!(shorts["BOOTX64.efi"], "BOOTX64.EFI");
        let shorts = short_names(img.path(), "");
        assert_eq!(shorts["EFI"], "EFI");
        assert_eq!(shorts["loader"], "LOADER");
    }

    #[test]
    fn esp_64_mib() {
        let data = pattern(2 << 20, 8);
        let (_keep, backing) = shared_file(&data);
        let files = esp_tree(&backing, 3 << 20);
        let p = params(64 * MIB);
        let (_, img) = build_and_check(&p, &files);
        assert_eq!(Geometry::for_size(p.size).unwrap().sectors_per_cluster, 1);
        mtools_check(img.path(), &files);
    }

    #[test]
    fn smallest_volume() {
        let min = min_size();
        let g = Geometry::for_size(min).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert_eq!(g.clusters, MIN_CLUSTERS);
        let data = pattern(2 << 20, 9);
        let (_keep, backing) = shared_file(&data);
        let files = esp_tree(&backing, 2 << 20);
        let (_, img) = build_and_check(&params(min), &files);
        mtools_check(img.path(), &files);
        let e = build_fat32(&params(min - 512), &files)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small for FAT32: at least 33 MiB"), "{e}");
    }

    #[test]
    fn too_small_is_an_error() {
        let e = build_fat32(&params(32 * MIB), &[]).unwrap_err().to_string();
        assert_eq!(e, "ESP of 32 MiB is too small for FAT32: at least 33 MiB");
        let e = build_fat32(&params(1024 * 1024 + 512), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ESP of 1.00 MiB is too small"), "{e}");
    }

    #[test]
    fn cluster_size_rule() {
        for (mib, spc) in [
            (33, 1),
            (64, 1),
            (100, 2),
            (128, 2),
            (200, 4),
            (256, 4),
            (300, 8),
            (2101, 8),
        ] {
            let g = Geometry::for_size(mib * MIB).unwrap();
            assert_eq!(g.sectors_per_cluster, spc, "{mib} MiB");
            assert!(g.clusters >= MIN_CLUSTERS);
            assert!(u64::from(g.fat_sectors) * 128 >= u64::from(g.clusters) + 2);
            // Minimal FAT, up to the alignment of the data region.
            assert!(u64::from(g.fat_sectors - spc) * 128 < u64::from(g.clusters) + 2 + 128);
            assert_eq!(g.data_offset() % g.cluster_size(), 0);
        }
        // Beyond 4 KiB clusters' range, larger clusters.
        let g = Geometry::for_size(2 * 1024 * 1024 * MIB - 512).unwrap();
        assert_eq!(g.sectors_per_cluster, 16);
        assert!(g.clusters <= MAX_CLUSTERS);
        let e = Geometry::for_size(2 * 1024 * 1024 * MIB).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn big_directories_long_names_and_collisions() {
        let mut files = vec![
            file("EFI/Linux/Talos-v1.12.5.efi", b"five"),
            file("EFI/Linux/Talos-v1.12.6.efi", b"six"),
            file("EFI/Linux/TALOS-~1.EFI", b"exact short name, claimed first"),
            file("empty", b""),
            file(
                "A very long name that needs several long-name entries, more than two.txt",
                b"x",
            ),
            file("exactly-13-ch", b"13 units: no terminator"),
            file("ünïcödé näme.txt", b"utf16"),
            file(".hidden", b"leading dot"),
            file("a+b,c;d=e[f]g.txt", b"lossy"),
            file("deep/er/and/deeper/leaf.txt", b"leaf"),
        ];
        // 300 long names in one directory: several clusters even at 4 KiB.
        for i in 0..300 {
            files.push(file(
                &format!("many/Entry number {i:04} with a long name.conf"),
                format!("entry {i}\n").as_bytes(),
            ));
        }
        // A subdirectory of the multi-cluster directory: its ".." points there.
        files.push(file("many/zz-sub/inner.txt", b"inner"));
        for size in [64 * MIB, 2101 * MIB] {
            let (_, img) = build_and_check(&params(size), &files);
            let shorts = short_names(img.path(), "EFI/Linux");
            assert_eq!(shorts["TALOS-~1.EFI"], "TALOS-~1.EFI");
            assert_eq!(shorts["Talos-v1.12.5.efi"], "TALOS-~2.EFI");
            assert_eq!(shorts["Talos-v1.12.6.efi"], "TALOS-~3.EFI");
            let shorts = short_names(img.path(), "many");
            assert_eq!(
                shorts["Entry number 0000 with a long name.conf"],
                "ENTRYN~1.CON"
            );
            assert_eq!(
                shorts["Entry number 0009 with a long name.conf"],
                "ENTRY~10.CON"
            );
            assert_eq!(
                shorts["Entry number 0099 with a long name.conf"],
                "ENTR~100.CON"
            );
            let shorts = short_names(img.path(), "");
            assert_eq!(shorts[".hidden"], "HIDDEN~1");
            assert_eq!(shorts["a+b,c;d=e[f]g.txt"], "A_B_C_~1.TXT");
            assert_eq!(shorts["empty"], "EMPTY");
            let p = img.path().to_str().unwrap();
            if let Some((ok, text)) = run("mdir", &["-i", p, "-/", "::"]) {
                assert!(ok, "{text}");
                assert!(text.contains("Entry number 0299 with a long name.conf"));
            }
        }
        // "many" holds 1 + 300 * 4 + 2 entries: 10 clusters of 4 KiB, in one extent.
        let layout = build_fat32(&params(2101 * MIB), &files).unwrap();
        let g = Geometry::for_size(2101 * MIB).unwrap();
        let dir_extents: Vec<u64> = layout
            .extents()
            .iter()
            .filter(|e| e.offset >= g.data_offset() && matches!(e.fill, Fill::Bytes(_)))
            .filter(|e| e.len > g.cluster_size())
            .map(|e| e.len)
            .collect();
        assert_eq!(dir_extents, [10 * 4096]);
    }

    #[test]
    fn empty_file_and_mixed_multi_cluster_file() {
        let data = pattern(100_000, 3);
        let (_keep, backing) = shared_file(&data);
        let mut big = Layout::new(20_000);
        big.put_bytes(0, pattern(3000, 4)).unwrap();
        big.put_file(3000, backing.clone(), 10, 9000).unwrap();
        big.put_zeros(12_000, 100).unwrap();
        big.put_file(15_000, backing, 50_000, 4999).unwrap();
        let files = vec![
            FatFile {
                path: "big.bin".into(),
                content: big,
            },
            file("EMPTY.TXT", b""),
            file("dir/empty too", b""),
        ];
        for size in [min_size(), 2101 * MIB] {
            let (layout, img) = build_and_check(&params(size), &files);
            let g = Geometry::for_size(size).unwrap();
            // The root's entries: label, big.bin and dir (LFN + short each), EMPTY.TXT, end.
            let mut root = vec![0u8; 32 * 7];
            layout.read_at(g.cluster_offset(2), &mut root).unwrap();
            assert_eq!(&root[..11], b"EFI        ");
            assert_eq!(root[11], ATTR_VOLUME_ID);
            assert_eq!(root[32], 0x41);
            assert_eq!(&root[64..75], b"BIG     BIN");
            let empty = &root[32 * 5..32 * 6];
            assert_eq!(&empty[..11], b"EMPTY   TXT");
            assert_eq!(&empty[20..22], &[0, 0]);
            assert_eq!(&empty[26..32], &[0u8; 6]);
            assert_eq!(&root[32 * 6..], &[0u8; 32]);
            let dir = &root[32 * 4..32 * 5];
            assert_eq!(&dir[..11], b"DIR        ");
            // "dir": its "." is its own cluster and ".." is 0 (the root).
            let first = u32::from(u16::from_le_bytes([dir[26], dir[27]]));
            let mut dots = [0u8; 64];
            layout.read_at(g.cluster_offset(first), &mut dots).unwrap();
            assert_eq!(&dots[..11], b".          ");
            assert_eq!(u16::from_le_bytes([dots[26], dots[27]]), first as u16);
            assert_eq!(&dots[32..43], b"..         ");
            assert_eq!(&dots[32 + 20..32 + 22], &[0, 0]);
            assert_eq!(&dots[32 + 26..32 + 28], &[0, 0]);
            // No long-name entries precede or follow the dot entries.
            assert_ne!(dots[11], ATTR_LONG_NAME);
            assert_eq!(dots[32 + 11], ATTR_DIRECTORY);
            if let Some((ok, text)) = run("mdir", &["-i", img.path().to_str().unwrap(), "-/", "::"])
            {
                assert!(ok, "{text}");
                assert!(text.contains("big.bin"), "{text}");
            }
        }
    }

    fn describe(layout: &Layout) -> Vec<(u64, u64, String)> {
        layout
            .extents()
            .iter()
            .map(|e| {
                let what = match &e.fill {
                    Fill::Bytes(b) => format!(
                        "bytes {}",
                        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
                    ),
                    Fill::File(f, off) => format!("file {} @{off}", f.path().display()),
                    Fill::Zero => "zero".into(),
                };
                (e.offset, e.len, what)
            })
            .collect()
    }

    #[test]
    fn output_is_deterministic_and_independent_of_input_order() {
        let data = pattern(2 << 20, 5);
        let (_keep, backing) = shared_file(&data);
        let mut files = esp_tree(&backing, 2 << 20);
        files.push(file("EFI/Linux/Talos-v1.12.6.efi", b"six"));
        files.push(file("EFI/Linux/Talos-v1.12.4.efi", b"four"));
        let p = params(2101 * MIB);
        let a = build_fat32(&p, &files).unwrap();
        files.reverse();
        let b = build_fat32(&p, &files).unwrap();
        assert_eq!(describe(&a), describe(&b));
        let mut head_a = vec![0u8; 8 << 20];
        let mut head_b = vec![0u8; 8 << 20];
        a.read_at(0, &mut head_a).unwrap();
        b.read_at(0, &mut head_b).unwrap();
        assert!(head_a == head_b);
        // The boot sector is as specified.
        assert_eq!(&head_a[510..512], &[0x55, 0xAA]);
        assert_eq!(&head_a[82..90], b"FAT32   ");
        assert_eq!(&head_a[71..82], b"EFI        ");
        assert_eq!(head_a[66], 0x29);
        assert_eq!(
            u32::from_le_bytes(head_a[67..71].try_into().unwrap()),
            0x1234_ABCD
        );
        assert_eq!(u32::from_le_bytes(head_a[28..32].try_into().unwrap()), 2048);
        assert_eq!(&head_a[..512], &head_a[6 * 512..7 * 512]);
        assert_eq!(&head_a[512..1024], &head_a[7 * 512..8 * 512]);
        assert_eq!(&head_a[3 * 512 - 2..3 * 512], &[0x55, 0xAA]);
        let g = Geometry::for_size(p.size).unwrap();
        let fat = g.fat_offset(0) as usize;
        assert_eq!(
            &head_a[fat..fat + 8],
            &[0xF8, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0x0F]
        );
        // FSInfo: free count and next free cluster.
        let info = &head_a[512..1024];
        let free = u32::from_le_bytes(info[488..492].try_into().unwrap());
        let next = u32::from_le_bytes(info[492..496].try_into().unwrap());
        let used = g.clusters - free;
        assert_eq!(next, used + 2);
    }

    #[test]
    fn timestamps_are_clamped() {
        assert_eq!(fat_timestamp(0), (1 << 5 | 1, 0, 0));
        // 2026-01-01T00:00:01Z
        assert_eq!(fat_timestamp(MTIME + 1), (46 << 9 | 1 << 5 | 1, 0, 100));
        // 2024-02-29T13:45:30Z
        assert_eq!(
            fat_timestamp(1_709_214_330),
            (44 << 9 | 2 << 5 | 29, 13 << 11 | 45 << 5 | 15, 0)
        );
        assert_eq!(
            fat_timestamp(u64::MAX),
            (127 << 9 | 12 << 5 | 31, 23 << 11 | 59 << 5 | 29, 100)
        );
        // Readers agree.
        let mut p = params(min_size());
        p.mtime = 1_709_214_330;
        let img = write_sparse(&build_fat32(&p, &[file("a.txt", b"a")]).unwrap());
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img.path())
            .unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        let e = fs.root_dir().iter().next().unwrap().unwrap();
        let m = e.modified();
        assert_eq!((m.date.year, m.date.month, m.date.day), (2024, 2, 29));
        assert_eq!((m.time.hour, m.time.min, m.time.sec), (13, 45, 30));
    }

    #[test]
    fn checksum_and_long_entries() {
        let short = *b"TALOS-~1EFI";
        let mut sum = 0u8;
        for b in short {
            sum = (if sum & 1 == 1 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(b);
        }
        assert_eq!(short_name_checksum(&short), sum);
        let e = long_entries("Talos-v1.12.5.efi", &short);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0], 0x42);
        assert_eq!(e[1][0], 0x01);
        assert!(e
            .iter()
            .all(|x| x[11] == 0x0F && x[13] == sum && x[26..28] == [0, 0]));
        // 17 units: the second entry holds 4 units, the terminator, then 0xFFFF padding.
        assert_eq!(&e[0][1..11], &[b'.', 0, b'e', 0, b'f', 0, b'i', 0, 0, 0]);
        assert_eq!(&e[0][14..26], &[0xFF; 12]);
        assert_eq!(&e[1][1..5], &[b'T', 0, b'a', 0]);
        assert_eq!(&e[1][30..32], &[b'5', 0]);
        assert_eq!(&e[0][28..32], &[0xFF; 4]);
    }

    fn err(files: &[FatFile]) -> String {
        build_fat32(&params(64 * MIB), files)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn invalid_params_are_errors() {
        for (label, want) in [
            ("efi", "character 'e'"),
            ("", "1 to 11"),
            ("TWELVE_CHARS", "1 to 11"),
            (" EFI", "must not start with a space"),
            ("E.FI", "character '.'"),
        ] {
            let mut p = params(64 * MIB);
            p.label = label.into();
            let e = build_fat32(&p, &[]).unwrap_err().to_string();
            assert!(
                e.contains("invalid volume label") && e.contains(want),
                "{label:?}: {e}"
            );
        }
        let e = build_fat32(&params(64 * MIB + 100), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple of 512"), "{e}");
    }

    #[test]
    fn invalid_paths_are_errors() {
        let long = "n".repeat(256);
        for (path, want) in [
            ("", "empty path component"),
            ("/EFI/a", "empty path component"),
            ("EFI//a", "empty path component"),
            ("EFI/", "empty path component"),
            ("EFI/./a", "component \".\" is not allowed"),
            ("EFI/../a", "component \"..\" is not allowed"),
            ("EFI/a:b", "character ':'"),
            ("a*", "character '*'"),
            ("a?", "character '?'"),
            ("a\\b", "character '\\\\'"),
            ("a\u{1}", "character '\\u{1}'"),
            ("dot.", "ends with a dot or a space"),
            ("space ", "ends with a dot or a space"),
            (long.as_str(), "256 UTF-16 units"),
        ] {
            let e = err(&[file(path, b"x")]);
            assert!(e.contains(&format!("{path:?}")), "{path:?}: {e}");
            assert!(e.contains(want), "{path:?}: {e}");
        }
        // 255 units is fine.
        build_fat32(&params(64 * MIB), &[file(&"n".repeat(255), b"x")]).unwrap();
    }

    #[test]
    fn empty_directories_are_created_and_read_back() {
        let files = vec![file("logs/a.txt", b"one"), file("README.txt", b"two")];
        let mut p = params(16 * MIB);
        p.label = "RECORDS".into();
        let l = build_fat_dirs(
            &p,
            &files,
            &["records", "logs/old/deep"],
            LabelRule::Uppercase,
        )
        .unwrap();
        assert_eq!(l.len(), 16 * MIB);
        let img = write_sparse(&l);
        fsck_clean(img.path());
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img.path())
            .unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat16);
        let names = |d: fatfs::Dir<'_, std::fs::File>| -> Vec<String> {
            d.iter()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n != "." && n != "..")
                .collect()
        };
        let root = fs.root_dir();
        assert_eq!(names(root.clone()), ["logs", "README.txt", "records"]);
        assert!(names(root.open_dir("records").unwrap()).is_empty());
        assert!(names(root.open_dir("logs/old/deep").unwrap()).is_empty());
        assert_eq!(names(root.open_dir("logs").unwrap()), ["a.txt", "old"]);
        // A writer can use the empty directory.
        if let Some((ok, text)) = run(
            "mcopy",
            &[
                "-i",
                img.path().to_str().unwrap(),
                "/etc/hostname",
                "::/records/r.json",
            ],
        ) {
            assert!(ok, "{text}");
            fsck_clean(img.path());
        }
        let e = build_fat_dirs(&p, &files, &["README.txt/x"], LabelRule::Uppercase)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"README.txt\" is a file"), "{e}");
        let e = build_fat_dirs(&p, &files, &["bad:name"], LabelRule::Uppercase)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not allowed in a FAT name"), "{e}");
    }

    #[test]
    fn smallest_volume_search() {
        let data = pattern(3 << 20, 12);
        let (_keep, backing) = shared_file(&data);
        let mut big = Layout::new(3 << 20);
        big.put_file(0, backing, 0, 3 << 20).unwrap();
        let files = vec![
            FatFile {
                path: "t.raw.zst".into(),
                content: big,
            },
            file("trust/trusted/k.pub", b"key"),
        ];
        let p = params(0);
        let l = build_smallest(&p, &files, &[], LabelRule::Uppercase, MIB).unwrap();
        // 3 MiB of data do not fit 3 MiB of volume; 4 MiB hold them (FAT16).
        assert_eq!(l.len(), 4 * MIB);
        assert!(build_fat(
            &FatParams {
                size: 3 * MIB,
                ..p.clone()
            },
            &files,
            LabelRule::Uppercase
        )
        .is_err());
        let img = write_sparse(&l);
        fsck_clean(img.path());
        // At least the FAT32 minimum: the smallest FAT32 volume, a whole number of MiB.
        let l = build_smallest(&p, &files, &[], LabelRule::Uppercase, min_size()).unwrap();
        assert_eq!(l.len(), min_size().div_ceil(MIB) * MIB);
        let img = write_sparse(&l);
        fsck_clean(img.path());
        fatfs_check(img.path(), &files, "EFI");
        // Names are checked once, not at every size.
        let e = build_smallest(&p, &[file("a*b", b"x")], &[], LabelRule::Uppercase, MIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not allowed in a FAT name"), "{e}");
    }

    #[test]
    fn conflicting_paths_are_errors() {
        let e = err(&[file("EFI/a.txt", b"1"), file("efi/A.TXT", b"2")]);
        assert!(e.contains("spells directory \"EFI\" as \"efi\""), "{e}");
        let e = err(&[file("EFI/a.txt", b"1"), file("EFI/A.TXT", b"2")]);
        assert!(e.contains("duplicate path \"EFI/A.TXT\""), "{e}");
        assert!(e.contains("\"EFI/a.txt\""), "{e}");
        let e = err(&[file("a", b"1"), file("a", b"2")]);
        assert!(e.contains("duplicate path \"a\""), "{e}");
        let e = err(&[file("EFI/boot", b"1"), file("EFI/boot/x", b"2")]);
        assert!(
            e.contains(
                "path \"EFI/boot/x\" needs \"EFI/boot\" as a directory, but \"EFI/boot\" is a file"
            ),
            "{e}"
        );
        let e = err(&[file("EFI/Boot", b"1"), file("EFI/boot/x", b"2")]);
        assert!(e.contains("needs \"EFI/boot\" as a directory"), "{e}");
        let e = err(&[file("EFI/boot/x", b"2"), file("EFI/boot", b"1")]);
        assert!(e.contains("file \"EFI/boot\" is also a directory"), "{e}");
        assert!(e.contains("\"EFI/boot/x\""), "{e}");
    }

    #[test]
    fn oversized_inputs_are_errors() {
        let huge = FatFile {
            path: "EFI/huge.bin".into(),
            content: Layout::new(4 << 30),
        };
        let e = err(&[huge]);
        assert!(e.contains("\"EFI/huge.bin\" is 4294967296 bytes"), "{e}");
        let big = FatFile {
            path: "big.bin".into(),
            content: Layout::new(65 * MIB),
        };
        let e = err(&[big]);
        assert!(e.contains("do not fit") && e.contains("\"big.bin\""), "{e}");
        // 65536 entries at most per directory ("." and ".." count).
        let files: Vec<FatFile> = (0..65_535)
            .map(|i| FatFile {
                path: format!("d/F{i:05}"),
                content: Layout::new(0),
            })
            .collect();
        let e = err(&files);
        assert!(
            e.contains("directory \"d\" needs 65537 directory entries"),
            "{e}"
        );
    }

    #[test]
    fn random_names_never_panic_and_read_back() {
        const ALPHABET: [&str; 14] = [
            "a", "B", ".", "~", " ", "é", "+", "/", "1", "€", "😀", "z", "-", "Ab",
        ];
        let rnd = pattern(200 * 6 * 21, 12);
        let mut r = rnd.iter().map(|&b| usize::from(b));
        let mut ok = 0;
        for batch in 0..200 {
            let n = 1 + r.next().unwrap() % 6;
            let files: Vec<FatFile> = (0..n)
                .map(|i| {
                    let len = 1 + r.next().unwrap() % 20;
                    let path: String = (0..len)
                        .map(|_| ALPHABET[r.next().unwrap() % ALPHABET.len()])
                        .collect();
                    file(&path, format!("{batch}/{i}").as_bytes())
                })
                .collect();
            match build_fat32(&params(min_size()), &files) {
                Ok(layout) if ok % 3 == 0 => {
                    ok += 1;
                    let img = write_sparse(&layout);
                    fsck_clean(img.path());
                    fatfs_check(img.path(), &files, "EFI");
                }
                Ok(_) => ok += 1,
                Err(e) => assert!(e.to_string().contains('"'), "{e}"),
            }
        }
        assert!(ok > 30, "only {ok} batches were valid");
    }

    // -----------------------------------------------------------------------------------
    // FAT16 and FAT12

    fn small_params(size: u64, label: &str) -> FatParams {
        FatParams {
            size,
            label: label.into(),
            volume_id: 0x0BAD_CAFE,
            hidden_sectors: 4096,
            mtime: MTIME,
            sector_size: 512,
        }
    }

    /// Build a small volume, then check it with fsck.fat, fatfs, mtools and dosfslabel.
    fn small_build_and_check(size: u64, label: &str, files: &[FatFile], want: FatType) -> Layout {
        let p = small_params(size, label);
        let layout = build_fat(&p, files, LabelRule::AllowLowercase).unwrap();
        assert_eq!(layout.len(), size);
        let g = Geometry::for_any_size(size).unwrap();
        assert_eq!(g.fat_type, want, "{size}");
        assert_eq!(g.data_offset() % g.cluster_size(), 0);
        let img = write_sparse(&layout);
        fsck_clean(img.path());
        // fatfs reads it back.
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img.path())
            .unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        let ft = match want {
            FatType::Fat12 => fatfs::FatType::Fat12,
            FatType::Fat16 => fatfs::FatType::Fat16,
            FatType::Fat32 => fatfs::FatType::Fat32,
        };
        assert_eq!(fs.fat_type(), ft);
        assert_eq!(fs.volume_label(), label);
        for f in files {
            let mut data = Vec::new();
            fs.root_dir()
                .open_file(&f.path)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            assert!(data == f.content.to_vec().unwrap(), "{}", f.path);
        }
        drop(fs);
        let path = img.path().to_str().unwrap();
        if let Some((ok, text)) = run("minfo", &["-i", path, "::"]) {
            assert!(ok, "{text}");
            assert!(
                text.contains(&format!("disk type=\"{}   \"", want.as_str())),
                "{text}"
            );
            assert!(
                text.contains(&format!("disk label=\"{label:<11}\"")),
                "{text}"
            );
        }
        // Text files through mtype (fatfs compared every file's bytes above).
        for f in files.iter().filter(|f| f.content.len() < 4096) {
            if let Some((ok, text)) = run("mtype", &["-i", path, &format!("::/{}", f.path)]) {
                assert!(ok, "{text}");
                assert_eq!(text.as_bytes(), f.content.to_vec().unwrap());
            }
        }
        if let Some((ok, text)) = run("dosfslabel", &[path]) {
            assert!(ok, "{text}");
            assert_eq!(text.trim(), label);
        }
        // A writer can use it: add a file and a directory; still clean.
        let data = pattern(50_000, 21);
        let (keep, _) = shared_file(&data);
        if let Some((ok, text)) = run(
            "mcopy",
            &["-i", path, keep.path().to_str().unwrap(), "::/added.bin"],
        ) {
            assert!(ok, "{text}");
            let (ok, text) = run("mmd", &["-i", path, "::/new dir"]).unwrap();
            assert!(ok, "{text}");
            fsck_clean(img.path());
        }
        layout
    }

    fn metal_iso_files() -> Vec<FatFile> {
        vec![file(
            "config.yaml",
            b"version: v1alpha1\nmachine:\n  type: worker\n",
        )]
    }

    #[test]
    fn small_volumes_pick_fat12_or_fat16_by_cluster_count() {
        for (size, t, spc) in [
            (64 * 1024, FatType::Fat12, 1),
            (MIB, FatType::Fat12, 1),
            (2 * MIB, FatType::Fat12, 1),
            (3 * MIB, FatType::Fat16, 1),
            (4 * MIB, FatType::Fat16, 1),
            (32 * MIB, FatType::Fat16, 1),
            (min_size() - 512, FatType::Fat16, 2),
        ] {
            let g = Geometry::for_any_size(size).unwrap();
            assert_eq!((g.fat_type, g.sectors_per_cluster), (t, spc), "{size}");
            match t {
                FatType::Fat12 => assert!(g.clusters <= FAT12_MAX_CLUSTERS),
                _ => assert!(g.clusters > FAT12_MAX_CLUSTERS && g.clusters < MIN_CLUSTERS),
            }
            assert!(u64::from(g.fat_sectors) * 512 * 8 / t.bits() >= u64::from(g.clusters) + 2);
            assert_eq!(g.data_offset() % g.cluster_size(), 0);
            assert_eq!(g.root_dir_sectors, 32);
        }
        // From the FAT32 minimum on, exactly the FAT32 geometry.
        assert_eq!(
            Geometry::for_any_size(min_size()).unwrap(),
            Geometry::for_size(min_size()).unwrap()
        );
        let e = Geometry::for_any_size(8 * 1024).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        let e = Geometry::for_any_size(MIB + 100).unwrap_err().to_string();
        assert!(e.contains("not a multiple of 512"), "{e}");
    }

    #[test]
    fn fat12_metal_iso_volume() {
        let layout = small_build_and_check(MIB, "metal-iso", &metal_iso_files(), FatType::Fat12);
        let boot = layout.to_vec().unwrap();
        assert_eq!(&boot[43..54], b"metal-iso  ");
        assert_eq!(&boot[54..62], b"FAT12   ");
        assert_eq!(u16::from_le_bytes([boot[19], boot[20]]), 2048);
        // Both FATs start with F8 FF FF, then the file's one-cluster chain.
        let g = Geometry::for_any_size(MIB).unwrap();
        let fat = g.fat_offset(0) as usize;
        assert_eq!(&boot[fat..fat + 6], &[0xF8, 0xFF, 0xFF, 0xFF, 0x0F, 0x00]);
        let fat2 = g.fat_offset(1) as usize;
        assert_eq!(&boot[fat..fat + 512], &boot[fat2..fat2 + 512]);
        // The root directory region holds the label, then config.yaml.
        let root = g.root_dir_offset() as usize;
        assert_eq!(&boot[root..root + 11], b"metal-iso  ");
        assert_eq!(boot[root + 11], ATTR_VOLUME_ID);
    }

    #[test]
    fn fat16_volumes_with_trees() {
        let mut files = metal_iso_files();
        files.push(file("deep/er/tree/file with a long name.txt", b"leaf"));
        for i in 0..40 {
            files.push(file(
                &format!("many/entry {i:03} with a long name.conf"),
                b"x",
            ));
        }
        let data = pattern(700_000, 3);
        files.push(file("big.bin", &data));
        small_build_and_check(4 * MIB, "metal-iso", &files, FatType::Fat16);
        small_build_and_check(3 * MIB, "CONFIG", &files, FatType::Fat16);
        // FAT12 with a multi-cluster FAT chain crossing odd/even entries.
        small_build_and_check(2 * MIB, "metal-iso", &files, FatType::Fat12);
    }

    #[test]
    fn small_volume_limits_are_errors() {
        let big = file("big.bin", &pattern(2 * MIB as usize, 4));
        let e = build_fat(
            &small_params(MIB, "metal-iso"),
            &[big],
            LabelRule::AllowLowercase,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("do not fit in the 1048576-byte FAT12 volume"),
            "{e}"
        );
        let files: Vec<FatFile> = (0..300)
            .map(|i| file(&format!("root entry {i:03} with a long name"), b""))
            .collect();
        let e = build_fat(
            &small_params(4 * MIB, "X"),
            &files,
            LabelRule::AllowLowercase,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a FAT16 root directory holds at most 512"),
            "{e}"
        );
        // Lowercase labels only when asked for; the FAT32 writer stays strict.
        let e = build_fat(&small_params(MIB, "metal-iso"), &[], LabelRule::Uppercase)
            .unwrap_err()
            .to_string();
        assert!(e.contains("character 'm' is not one of A-Z 0-9"), "{e}");
        let e = build_fat(
            &small_params(MIB, "metal.iso"),
            &[],
            LabelRule::AllowLowercase,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not one of A-Z a-z 0-9 space _ -"), "{e}");
    }

    #[test]
    fn build_fat_is_build_fat32_from_the_minimum_on() {
        let files = metal_iso_files();
        let p = params(min_size());
        let a = build_fat(&p, &files, LabelRule::Uppercase).unwrap();
        let b = build_fat32(&p, &files).unwrap();
        assert_eq!(describe(&a), describe(&b));
    }
}
