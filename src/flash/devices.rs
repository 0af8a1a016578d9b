//! Disks that could be targets, from sysfs and mountinfo (no udev).
//!
//! Everything is read from `sys/`, `proc/` and `dev/` under a [`System`] root, so the same code
//! runs on a host, inside an initramfs without udev, and against a fake tree. Paths inside the
//! system ("/sys/block/sda", "/dev/disk/by-id/...") are resolved symlink by symlink within the
//! root and never leave it; [`System::real`] turns such a path into the file to open.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::progress::human_bytes;

/// Where the system's files are: "/" normally; a fake tree holding `sys/`, `proc/` and `dev/`
/// otherwise.
#[derive(Clone, Debug)]
pub struct System {
    /// The directory that stands for "/".
    pub root: PathBuf,
}

/// What a target argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A path: a disk (`/dev/sdb`, `/dev/disk/by-id/...`), a partition, or an image file.
    Path(PathBuf),
    /// The serial number of exactly one disk (`--serial S`).
    Serial(String),
}

/// What a target argument turned out to be.
#[derive(Clone, Debug)]
pub enum Resolved {
    /// A whole disk.
    Disk(Disk),
    /// A partition (refused unless `--force partition`).
    Partition {
        /// `/dev/<name>`.
        path: PathBuf,
        /// The kernel's name, e.g. `sdb1`.
        name: String,
        /// The disk holding it, when that disk is one that could be a target.
        parent: Option<Disk>,
    },
    /// A regular file, existing or to be created (symlinks followed).
    File(PathBuf),
}

/// How a disk is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// USB mass storage (sticks, card readers, USB enclosures).
    Usb,
    /// SATA/PATA through libata.
    Sata,
    /// NVMe.
    Nvme,
    /// SD/eMMC on an MMC host.
    Mmc,
    /// A virtio disk of a virtual machine.
    Virtio,
    /// Any other SCSI disk (SAS, iSCSI, virtio-scsi).
    Scsi,
    /// A loop device backed by a file.
    Loop,
    /// Anything else.
    Unknown,
}

impl Transport {
    /// The lowercase name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Usb => "usb",
            Transport::Sata => "sata",
            Transport::Nvme => "nvme",
            Transport::Mmc => "mmc",
            Transport::Virtio => "virtio",
            Transport::Scsi => "scsi",
            Transport::Loop => "loop",
            Transport::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A filesystem mounted from a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The disk's own device under the mount: the disk or one of its partitions (e.g. `sda1`).
    pub device: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// The device actually mounted when it is a holder on top of `device`, e.g. `dm-0 (vg0-root)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
}

/// A whole disk that could be a target, and what is using it.
#[derive(Clone, Debug, Serialize)]
pub struct Disk {
    /// `/dev/<name>` as the system names it (open it through [`System::real`]).
    pub path: PathBuf,
    /// The kernel's name: sda, nvme0n1, mmcblk0, vda, loop3.
    pub name: String,
    /// The device number, "MAJ:MIN".
    pub dev: String,
    /// The `/dev/disk/by-id/*` links pointing at it (empty without that directory).
    pub by_id: Vec<PathBuf>,
    /// The model, as the device reports it.
    pub model: Option<String>,
    /// The serial number (NVMe, MMC, virtio, SCSI VPD page 0x80, or the USB device's).
    pub serial: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// The logical block size in bytes.
    pub logical_block_size: u32,
    /// How it is attached.
    pub transport: Transport,
    /// The kernel flags the medium as removable.
    pub removable: bool,
    /// The kernel refuses writes (write-protect switch, `blockdev --setro`).
    pub read_only: bool,
    /// Its partitions' names, in partition-number order.
    pub partitions: Vec<String>,
    /// Filesystems mounted from it or its partitions, directly or through holders.
    pub mounted: Vec<Mount>,
    /// Swap on it: the device named in /proc/swaps, e.g. `sdb3`, or `dm-1 (vg0-swap) over sdb3`.
    pub swap: Vec<String>,
    /// Devices stacked on it or its partitions: `dm-0 (vg0-root)`, `md0`.
    pub holders: Vec<String>,
    /// It holds the running system's root filesystem.
    pub system: bool,
    /// Loop devices: the file behind it.
    pub backing_file: Option<PathBuf>,
}

/// A safety check that can refuse a target (each can be overridden with `--force <name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// The target is a partition, not a whole disk.
    Partition,
    /// A filesystem on it is mounted.
    Mounted,
    /// It is in use as swap.
    Swap,
    /// Device-mapper, RAID or other devices are stacked on it.
    Held,
    /// It holds the running system's root filesystem.
    System,
    /// It holds the image being written.
    Source,
    /// It is smaller than the image.
    TooSmall,
    /// The kernel refuses writes to it.
    ReadOnly,
    /// Its logical block size is not the one the image's partition table was written for.
    BlockSize,
}

impl Check {
    /// Every check, in the order they are reported.
    pub const ALL: [Check; 9] = [
        Check::Partition,
        Check::Mounted,
        Check::Swap,
        Check::Held,
        Check::System,
        Check::Source,
        Check::TooSmall,
        Check::ReadOnly,
        Check::BlockSize,
    ];

    /// The name used by `--force` and in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Check::Partition => "partition",
            Check::Mounted => "mounted",
            Check::Swap => "swap",
            Check::Held => "held",
            Check::System => "system",
            Check::Source => "source",
            Check::TooSmall => "too-small",
            Check::ReadOnly => "read-only",
            Check::BlockSize => "block-size",
        }
    }

    /// The check a `--force` name stands for.
    pub fn parse(s: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a target is refused: the check, and a sentence saying what is wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The check that refused.
    pub check: Check,
    /// What is wrong and the way out.
    pub reason: String,
}

/// A block device as sysfs shows it.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    /// Its sysfs directory, symlinks resolved (e.g. `/sys/devices/.../block/sda/sda1`).
    dir: PathBuf,
    dev: Option<(u32, u32)>,
    /// The disk's name when this is a partition.
    parent: Option<String>,
}

/// A device at the bottom of a stack: a disk or partition, and what sits on top of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leaf {
    name: String,
    disk: String,
    /// The top of the stack when it is not the leaf itself, labelled (`dm-0 (vg0-root)`).
    through: Option<String>,
}

impl Leaf {
    fn on(&self, node: &str) -> bool {
        self.name == node || self.disk == node
    }
}

/// Mounts and swap of the running system, mapped down to disks and partitions.
struct Usage {
    mounts: Vec<(Leaf, String)>,
    swaps: Vec<(Leaf, String)>,
}

/// One line of mountinfo.
struct MountLine {
    dev: Option<(u32, u32)>,
    mountpoint: String,
    source: String,
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

impl System {
    /// The running system.
    pub fn host() -> System {
        System {
            root: PathBuf::from("/"),
        }
    }

    /// A system whose "/" is `root`.
    pub fn at(root: &Path) -> System {
        System {
            root: root.to_path_buf(),
        }
    }

    /// The file a path inside the system names (what to open): `/dev/sda` under the root.
    pub fn real(&self, path: &Path) -> PathBuf {
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        let mut out = self.root.clone();
        out.extend(parts);
        out
    }

    /// Whole disks that could be targets, sorted by name.
    pub fn disks(&self) -> Result<Vec<Disk>> {
        let names = self.list_dir(Path::new("/sys/block")).with_context(|| {
            format!(
                "listing the kernel's block devices in {}: is sysfs mounted? (mount -t sysfs sysfs /sys)",
                self.real(Path::new("/sys/block")).display()
            )
        })?;
        let usage = self.usage()?;
        let by_id = self.by_id_links();
        let mut disks: Vec<Disk> = names
            .iter()
            .filter(|name| candidate_name(name))
            .filter_map(|name| {
                let dir = self.walk(&Path::new("/sys/block").join(name), true)?;
                let node = self.node_at(dir)?;
                let disk = self.describe(&node, &usage, &by_id)?;
                let wanted = disk.size > 0
                    && (disk.transport != Transport::Loop || disk.backing_file.is_some());
                wanted.then_some(disk)
            })
            .collect();
        disks.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        Ok(disks)
    }

    /// The disk a target argument names: a path (symlinks such as `/dev/disk/by-id/...`
    /// followed), or a serial that exactly one disk has.
    pub fn resolve(&self, spec: &TargetSpec) -> Result<Resolved> {
        match spec {
            TargetSpec::Path(path) => self.resolve_path(path),
            TargetSpec::Serial(serial) => self.resolve_serial(serial),
        }
    }

    /// The whole disks (names) holding a device number: a partition → its disk; a
    /// device-mapper or RAID device → the disks under it (recursively). An anonymous device
    /// number (major 0, e.g. btrfs) goes through the mount's source in mountinfo.
    pub fn disks_under(&self, dev: (u32, u32)) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for leaf in self.leaves_of_dev(dev) {
            if !out.contains(&leaf.disk) {
                out.push(leaf.disk);
            }
        }
        out.sort_by(|a, b| natural_cmp(a, b));
        out
    }

    // ---- paths within the root ----

    /// Resolves `path` (inside the system) symlink by symlink, never leaving the root. With
    /// `must_exist` false, missing components are kept as they are.
    fn walk(&self, path: &Path, must_exist: bool) -> Option<PathBuf> {
        let mut out = PathBuf::from("/");
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, path);
        let mut hops = 0u32;
        while let Some(part) = todo.pop() {
            if part == ".." {
                out.pop();
                continue;
            }
            let next = out.join(&part);
            let real = self.real(&next);
            match fs::symlink_metadata(&real) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    let target = fs::read_link(&real).ok()?;
                    if target.is_absolute() {
                        out = PathBuf::from("/");
                    }
                    push_components(&mut todo, &target);
                }
                Ok(_) => out = next,
                Err(_) if must_exist => return None,
                Err(_) => out = next,
            }
        }
        Some(out)
    }

    fn meta(&self, path: &Path) -> Option<fs::Metadata> {
        fs::metadata(self.real(&self.walk(path, true)?)).ok()
    }

    fn is_file(&self, path: &Path) -> bool {
        self.meta(path).is_some_and(|m| m.is_file())
    }

    fn read_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let real = self.real(&self.walk(path, true)?);
        let file = fs::File::open(&real).ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut buf = Vec::new();
        file.take(1 << 20).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    /// A small text file, trimmed; `None` when missing, unreadable or blank.
    fn read_text(&self, path: &Path) -> Option<String> {
        let bytes = self.read_bytes(path)?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    /// The names in a directory (symlinks to it followed), sorted.
    fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let resolved = self
            .walk(dir, true)
            .ok_or_else(|| anyhow!("{} does not exist", dir.display()))?;
        let mut names: Vec<String> = fs::read_dir(self.real(&resolved))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        Ok(names)
    }

    fn list(&self, dir: &Path) -> Vec<String> {
        self.list_dir(dir).unwrap_or_default()
    }

    // ---- block devices ----

    fn node_at(&self, dir: PathBuf) -> Option<Node> {
        let name = dir.file_name()?.to_str()?.to_string();
        let dev = self.read_text(&dir.join("dev")).and_then(|s| parse_dev(&s));
        let parent = if self.is_file(&dir.join("partition")) {
            dir.parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .map(String::from)
        } else {
            None
        };
        Some(Node {
            name,
            dir,
            dev,
            parent,
        })
    }

    /// Every disk, partition and stacked device in `/sys/block`.
    fn scan(&self) -> Vec<Node> {
        let mut out = Vec::new();
        for name in self.list(Path::new("/sys/block")) {
            let Some(dir) = self.walk(&Path::new("/sys/block").join(&name), true) else {
                continue;
            };
            for sub in self.list(&dir) {
                if self.is_file(&dir.join(&sub).join("partition")) {
                    if let Some(part) = self.node_at(dir.join(&sub)) {
                        out.push(part);
                    }
                }
            }
            if let Some(node) = self.node_at(dir) {
                out.push(node);
            }
        }
        out
    }

    fn node_by_dev(&self, dev: (u32, u32)) -> Option<Node> {
        let link = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
        if let Some(node) = self.walk(&link, true).and_then(|d| self.node_at(d)) {
            return Some(node);
        }
        self.scan().into_iter().find(|n| n.dev == Some(dev))
    }

    fn node_by_name(&self, name: &str) -> Option<Node> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return None;
        }
        for base in ["/sys/class/block", "/sys/block"] {
            let found = self
                .walk(&Path::new(base).join(name), true)
                .and_then(|d| self.node_at(d));
            if found.is_some() {
                return found;
            }
        }
        self.scan().into_iter().find(|n| n.name == name)
    }

    /// The block device a path in /dev names (symlinks followed), if any.
    fn node_of_dev_path(&self, path: &str) -> Option<Node> {
        if !path.starts_with("/dev/") {
            return None;
        }
        let resolved = self.walk(Path::new(path), false)?;
        if let Ok(meta) = fs::metadata(self.real(&resolved)) {
            if meta.file_type().is_block_device() {
                let rdev = meta.rdev();
                return self.node_by_dev((libc::major(rdev), libc::minor(rdev)));
            }
        }
        if resolved.parent() != Some(Path::new("/dev")) {
            return None;
        }
        self.node_by_name(resolved.file_name()?.to_str()?)
    }

    /// `dm-0 (vg0-root)` for device-mapper devices, the name otherwise.
    fn label(&self, node: &Node) -> String {
        match self.read_text(&node.dir.join("dm/name")) {
            Some(dm) => format!("{} ({dm})", node.name),
            None => node.name.clone(),
        }
    }

    fn leaves(&self, top: &Node) -> Vec<Leaf> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        self.leaves_into(top, None, 0, &mut seen, &mut out);
        out
    }

    fn leaves_into(
        &self,
        node: &Node,
        through: Option<&str>,
        depth: u32,
        seen: &mut BTreeSet<PathBuf>,
        out: &mut Vec<Leaf>,
    ) {
        if depth > 16 || !seen.insert(node.dir.clone()) {
            return;
        }
        let slaves = node.dir.join("slaves");
        let below: Vec<Node> = self
            .list(&slaves)
            .iter()
            .filter_map(|s| {
                self.walk(&slaves.join(s), true)
                    .and_then(|d| self.node_at(d))
                    .or_else(|| self.node_by_name(s))
            })
            .collect();
        if below.is_empty() {
            let leaf = Leaf {
                name: node.name.clone(),
                disk: node.parent.clone().unwrap_or_else(|| node.name.clone()),
                through: through.map(String::from),
            };
            if !out.contains(&leaf) {
                out.push(leaf);
            }
            return;
        }
        let through = through
            .map(String::from)
            .unwrap_or_else(|| self.label(node));
        for n in &below {
            self.leaves_into(n, Some(&through), depth + 1, seen, out);
        }
    }

    /// The disks and partitions under a device number (see [`System::disks_under`]).
    fn leaves_of_dev(&self, dev: (u32, u32)) -> Vec<Leaf> {
        if dev.0 != 0 {
            if let Some(node) = self.node_by_dev(dev) {
                return self.leaves(&node);
            }
        }
        let mut out = Vec::new();
        let Some(text) = self.read_text(Path::new(MOUNTINFO)) else {
            return out;
        };
        for m in text.lines().filter_map(parse_mountinfo) {
            if m.dev == Some(dev) {
                for leaf in self.mount_leaves(None, &m.source) {
                    if !out.contains(&leaf) {
                        out.push(leaf);
                    }
                }
            }
        }
        out
    }

    fn mount_leaves(&self, dev: Option<(u32, u32)>, source: &str) -> Vec<Leaf> {
        let mut nodes: Vec<Node> = Vec::new();
        if let Some(node) = dev.filter(|d| d.0 != 0).and_then(|d| self.node_by_dev(d)) {
            nodes.push(node);
        }
        if let Some(node) = self.node_of_dev_path(source) {
            if !nodes.iter().any(|n| n.dir == node.dir) {
                nodes.push(node);
            }
        }
        let mut out = Vec::new();
        for node in &nodes {
            for leaf in self.leaves(node) {
                if !out.contains(&leaf) {
                    out.push(leaf);
                }
            }
        }
        out
    }

    fn usage(&self) -> Result<Usage> {
        let path = Path::new(MOUNTINFO);
        let bytes = self.read_bytes(path).with_context(|| {
            format!(
                "reading {} to see what is mounted: is /proc mounted? (mount -t proc proc /proc)",
                self.real(path).display()
            )
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let mut mounts = Vec::new();
        for m in text.lines().filter_map(parse_mountinfo) {
            for leaf in self.mount_leaves(m.dev, &m.source) {
                mounts.push((leaf, m.mountpoint.clone()));
            }
        }
        let mut swaps = Vec::new();
        // Without swap support in the kernel there is no /proc/swaps, and no swap.
        let text = self.read_text(Path::new("/proc/swaps")).unwrap_or_default();
        for line in text.lines().filter(|l| !l.starts_with("Filename")) {
            let Some(first) = line.split_whitespace().next() else {
                continue;
            };
            let device = unescape(first);
            if let Some(node) = self.node_of_dev_path(&device) {
                for leaf in self.leaves(&node) {
                    let entry = match &leaf.through {
                        Some(top) => format!("{top} over {}", leaf.name),
                        None => leaf.name.clone(),
                    };
                    swaps.push((leaf, entry));
                }
            }
        }
        Ok(Usage { mounts, swaps })
    }

    /// `/dev/disk/by-id` links and what they resolve to.
    fn by_id_links(&self) -> Vec<(PathBuf, PathBuf)> {
        let dir = Path::new("/dev/disk/by-id");
        self.list(dir)
            .into_iter()
            .filter_map(|name| {
                let link = dir.join(name);
                let target = self.walk(&link, false)?;
                Some((link, target))
            })
            .collect()
    }

    fn describe(&self, node: &Node, usage: &Usage, by_id: &[(PathBuf, PathBuf)]) -> Option<Disk> {
        let name = node.name.clone();
        let path = Path::new("/dev").join(&name);
        let dir = &node.dir;
        let sectors: u64 = self.read_text(&dir.join("size"))?.parse().ok()?;
        let size = sectors.checked_mul(512)?;
        let dev = node.dev?;
        let logical_block_size = self
            .read_text(&dir.join("queue/logical_block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(512);
        let flag = |file: &str| self.read_text(&dir.join(file)).as_deref() == Some("1");
        let transport = transport(&name, dir);
        let mut partitions: Vec<(u64, String)> = self
            .list(dir)
            .into_iter()
            .filter(|sub| self.is_file(&dir.join(sub).join("partition")))
            .map(|sub| {
                let number = self
                    .read_text(&dir.join(&sub).join("partition"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                (number, sub)
            })
            .collect();
        partitions.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| natural_cmp(&a.1, &b.1)));
        let partitions: Vec<String> = partitions.into_iter().map(|p| p.1).collect();

        let mut mounted: Vec<Mount> = Vec::new();
        for (leaf, mountpoint) in &usage.mounts {
            let m = Mount {
                device: leaf.name.clone(),
                mountpoint: mountpoint.clone(),
                through: leaf.through.clone(),
            };
            if leaf.on(&name) && !mounted.contains(&m) {
                mounted.push(m);
            }
        }
        let mut swap: Vec<String> = Vec::new();
        for (leaf, entry) in &usage.swaps {
            if leaf.on(&name) && !swap.contains(entry) {
                swap.push(entry.clone());
            }
        }
        let system = usage
            .mounts
            .iter()
            .any(|(leaf, mountpoint)| mountpoint == "/" && leaf.on(&name));
        let mut holders: Vec<String> = Vec::new();
        let dirs = std::iter::once(dir.clone()).chain(partitions.iter().map(|p| dir.join(p)));
        for d in dirs {
            let held = d.join("holders");
            for h in self.list(&held) {
                let label = match self
                    .walk(&held.join(&h), true)
                    .and_then(|d| self.node_at(d))
                {
                    Some(n) => self.label(&n),
                    None => h,
                };
                if !holders.contains(&label) {
                    holders.push(label);
                }
            }
        }
        let by_id = by_id
            .iter()
            .filter(|(_, target)| *target == path)
            .map(|(link, _)| link.clone())
            .collect();
        let backing_file = self
            .read_text(&dir.join("loop/backing_file"))
            .map(PathBuf::from);
        Some(Disk {
            model: self.read_text(&dir.join("device/model")),
            serial: self.serial(transport, dir),
            path,
            name,
            dev: format!("{}:{}", dev.0, dev.1),
            by_id,
            size,
            logical_block_size,
            transport,
            removable: flag("removable"),
            read_only: flag("ro"),
            partitions,
            mounted,
            swap,
            holders,
            system,
            backing_file,
        })
    }

    fn serial(&self, transport: Transport, dir: &Path) -> Option<String> {
        let device = || self.read_text(&dir.join("device/serial"));
        let own = || self.read_text(&dir.join("serial"));
        let vpd = || {
            let page = self.read_bytes(&dir.join("device/vpd_pg80"))?;
            let len = usize::from(*page.get(3)?);
            let body = page.get(4..)?;
            let body = body.get(..len.min(body.len()))?;
            let text: String = body
                .iter()
                .filter(|b| b.is_ascii_graphic() || **b == b' ')
                .map(|b| char::from(*b))
                .collect();
            let text = text.trim().to_string();
            (!text.is_empty()).then_some(text)
        };
        let usb = || {
            let mut at = dir.to_path_buf();
            while at.pop() && at.starts_with("/sys/devices") {
                if self.is_file(&at.join("idVendor")) {
                    if let Some(serial) = self.read_text(&at.join("serial")) {
                        return Some(serial);
                    }
                }
            }
            None
        };
        match transport {
            Transport::Usb => usb().or_else(vpd),
            Transport::Nvme | Transport::Mmc => device().or_else(own),
            Transport::Virtio => own().or_else(device),
            Transport::Sata | Transport::Scsi => vpd().or_else(device),
            Transport::Loop | Transport::Unknown => device().or_else(own).or_else(vpd),
        }
    }

    // ---- resolving targets ----

    fn resolve_path(&self, given: &Path) -> Result<Resolved> {
        if given.as_os_str().is_empty() {
            bail!("the target path is empty: name a disk (/dev/sdX, /dev/disk/by-id/...) or an image file");
        }
        let absolute = if given.is_absolute() {
            given.to_path_buf()
        } else {
            std::env::current_dir()
                .context("finding the current directory to resolve a relative target path: give an absolute path")?
                .join(given)
        };
        let path = self.walk(&absolute, false).ok_or_else(|| {
            anyhow!(
                "{}: too many levels of symbolic links: name the disk or file directly",
                given.display()
            )
        })?;
        let meta = fs::metadata(self.real(&path)).ok();
        if let Some(meta) = meta.as_ref().filter(|m| m.file_type().is_block_device()) {
            let dev = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            let node = self.node_by_dev(dev).ok_or_else(|| {
                anyhow!(
                    "{} is block device {}:{} but sysfs does not know it: is sysfs mounted? (mount -t sysfs sysfs /sys)",
                    given.display(),
                    dev.0,
                    dev.1
                )
            })?;
            return self.classify(node, given);
        }
        // Files in /dev are mistakes (a disk that was not there), except in its tmpfs.
        if path.starts_with("/dev") && !path.starts_with("/dev/shm") {
            let node = (path.parent() == Some(Path::new("/dev")))
                .then(|| path.file_name().and_then(|n| n.to_str()))
                .flatten()
                .and_then(|name| self.node_by_name(name));
            return match node {
                Some(node) => self.classify(node, given),
                None if meta.as_ref().is_some_and(|m| m.file_type().is_char_device()) => bail!(
                    "{} is a character device, not a disk: name a disk (`edgeimage devices` lists them)",
                    describe_given(given, &path)
                ),
                None if meta.as_ref().is_some_and(|m| m.is_file()) => bail!(
                    "{} is a regular file in /dev, not a disk (perhaps left by an earlier write to a disk that was not there): remove it, and name a disk `edgeimage devices` lists",
                    path.display()
                ),
                None => bail!(
                    "{} is not a disk the kernel knows: check the name (`edgeimage devices` lists the disks), or plug the disk in",
                    describe_given(given, &path)
                ),
            };
        }
        match meta {
            Some(m) if m.is_file() => Ok(Resolved::File(path)),
            Some(m) if m.is_dir() => bail!(
                "{} is a directory: name a disk (/dev/sdX, /dev/disk/by-id/...) or an image file to write",
                describe_given(given, &path)
            ),
            Some(_) => bail!(
                "{} is neither a disk nor a regular file: name a disk (/dev/sdX, /dev/disk/by-id/...) or an image file to write",
                describe_given(given, &path)
            ),
            None => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                if !fs::metadata(self.real(parent)).is_ok_and(|m| m.is_dir()) {
                    bail!(
                        "{}: the directory {} does not exist: create it first, or name a disk (/dev/sdX)",
                        given.display(),
                        parent.display()
                    );
                }
                Ok(Resolved::File(path))
            }
        }
    }

    fn classify(&self, node: Node, given: &Path) -> Result<Resolved> {
        let disks = self.disks()?;
        match node.parent {
            Some(parent) => Ok(Resolved::Partition {
                path: Path::new("/dev").join(&node.name),
                parent: disks.into_iter().find(|d| d.name == parent),
                name: node.name,
            }),
            None => match disks.into_iter().find(|d| d.name == node.name) {
                Some(disk) => Ok(Resolved::Disk(disk)),
                None => bail!("{}", self.not_a_target(&node, given)),
            },
        }
    }

    /// Why a whole block device is not among the disks that could be targets.
    fn not_a_target(&self, node: &Node, given: &Path) -> String {
        let name = node.name.as_str();
        let what = describe_given(given, &Path::new("/dev").join(name));
        let size = self
            .read_text(&node.dir.join("size"))
            .and_then(|s| s.parse::<u64>().ok());
        let under = || {
            let disks: Vec<String> = self
                .leaves(node)
                .into_iter()
                .map(|l| format!("/dev/{}", l.disk))
                .collect();
            if disks.is_empty() || disks.iter().any(|d| d.ends_with(name)) {
                String::new()
            } else {
                format!(" (it sits on {})", disks.join(", "))
            }
        };
        let why = if name.starts_with("dm-") {
            format!(
                "is a device-mapper device{}, not a disk: name the disk itself, after removing the mapping",
                under()
            )
        } else if name.starts_with("md") {
            format!(
                "is a software RAID array{}, not a disk: name the disk itself, after stopping the array",
                under()
            )
        } else if name.starts_with("zram") || name.starts_with("ram") {
            "is a RAM disk, not a disk: name a disk".to_string()
        } else if name.starts_with("sr") {
            "is an optical drive: name a disk".to_string()
        } else if name.starts_with("loop")
            && self
                .read_text(&node.dir.join("loop/backing_file"))
                .is_none()
        {
            "is a loop device with no file attached: attach one first (losetup), or name a disk"
                .to_string()
        } else if name.starts_with("nvme") && name.contains('c') {
            "is one path to a multipath NVMe namespace: name the namespace (/dev/nvmeXnY)"
                .to_string()
        } else if name.starts_with("mmcblk") && (name.contains("boot") || name.contains("rpmb")) {
            "is an eMMC boot or RPMB area: name the eMMC itself (/dev/mmcblkN)".to_string()
        } else if size == Some(0) {
            "has no medium (size 0): insert the card or disk".to_string()
        } else if candidate_name(name) {
            "could not be read from sysfs (size or device number missing): check the device"
                .to_string()
        } else {
            "is not a kind of disk edgeimage writes: name a disk".to_string()
        };
        format!("{what} {why} (`edgeimage devices` lists the disks that can be targets)")
    }

    fn resolve_serial(&self, serial: &str) -> Result<Resolved> {
        let disks = self.disks()?;
        let hits: Vec<&Disk> = disks
            .iter()
            .filter(|d| d.serial.as_deref() == Some(serial))
            .collect();
        let list = |disks: &[&Disk]| -> String {
            if disks.is_empty() {
                return "there are no disks".to_string();
            }
            disks
                .iter()
                .map(|d| {
                    let serial = d
                        .serial
                        .as_deref()
                        .map(|s| format!("serial {s:?}"))
                        .unwrap_or_else(|| "no serial".to_string());
                    match &d.model {
                        Some(model) => format!("{} ({serial}, {model})", d.path.display()),
                        None => format!("{} ({serial})", d.path.display()),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match hits.as_slice() {
            [one] => Ok(Resolved::Disk((*one).clone())),
            [] => {
                let all: Vec<&Disk> = disks.iter().collect();
                bail!(
                    "no disk has serial {serial:?}: give one of these exactly, or the disk's path: {}",
                    list(&all)
                )
            }
            several => bail!(
                "{} disks have serial {serial:?}: {}: name the disk by path instead (/dev/disk/by-path/... or /dev/sdX)",
                several.len(),
                list(several)
            ),
        }
    }

    /// The whole block device or partition `name`, described like a disk (for partition
    /// targets).
    fn describe_name(&self, name: &str) -> Result<Option<Disk>> {
        let usage = self.usage()?;
        Ok(self
            .node_by_name(name)
            .and_then(|node| self.describe(&node, &usage, &[])))
    }
}

impl Disk {
    /// Why writing `image_size` bytes of the image at `source` (refused: the disk holding it,
    /// and a loop device backed by it) to this disk would be refused, except the checks in
    /// `force`.
    pub fn refusals(
        &self,
        sys: &System,
        image_size: u64,
        source: Option<&Path>,
        force: &[Check],
    ) -> Vec<Refusal> {
        let mut out = Vec::new();
        let mut add = |check: Check, reason: String| {
            if !force.contains(&check) {
                out.push(Refusal { check, reason });
            }
        };
        let path = self.path.display();
        if self.system {
            add(
                Check::System,
                format!(
                    "{path} holds the running system's root filesystem (/): pick another disk (or --force system)"
                ),
            );
        }
        if let Some(source) = source {
            if let Ok(meta) = fs::metadata(source) {
                let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
                if sys.leaves_of_dev(dev).iter().any(|l| l.on(&self.name)) {
                    add(
                        Check::Source,
                        format!(
                            "{path} holds the image being written ({}): copy the image to another disk first (or --force source)",
                            source.display()
                        ),
                    );
                }
            }
            if let Some(backing) = &self.backing_file {
                if same_file(sys, backing, source) {
                    add(
                        Check::Source,
                        format!(
                            "{path} is a loop device backed by the image being written ({}): detach it (losetup -d {path}) or pick another target (or --force source)",
                            source.display()
                        ),
                    );
                }
            }
        }
        let mut mounts: Vec<(&str, Option<&str>, Vec<&str>)> = Vec::new();
        for m in &self.mounted {
            let key = (m.device.as_str(), m.through.as_deref());
            match mounts.iter_mut().find(|(d, t, _)| (*d, *t) == key) {
                Some(entry) => entry.2.push(&m.mountpoint),
                None => mounts.push((key.0, key.1, vec![&m.mountpoint])),
            }
        }
        for (device, through, points) in mounts {
            let what = self.part_of(device);
            let points = list_some(&points, 4);
            let reason = match through {
                Some(top) => format!(
                    "{what} is mounted on {points} through {top}: unmount it and remove {top} first (or --force mounted)"
                ),
                None => format!("{what} is mounted on {points}: unmount it first (or --force mounted)"),
            };
            add(Check::Mounted, reason);
        }
        for entry in &self.swap {
            let (swapdev, what) = match entry.split_once(" over ") {
                Some((top, leaf)) => {
                    let top_name = top.split_whitespace().next().unwrap_or(top);
                    (
                        format!("/dev/{top_name}"),
                        format!("{} (through {top})", self.part_of(leaf)),
                    )
                }
                None => (format!("/dev/{entry}"), self.part_of(entry)),
            };
            add(
                Check::Swap,
                format!("{what} is in use as swap: swapoff {swapdev} first (or --force swap)"),
            );
        }
        if !self.holders.is_empty() {
            let dm = self.holders.iter().any(|h| h.starts_with("dm-"));
            let md = self
                .holders
                .iter()
                .filter(|h| h.starts_with("md"))
                .collect::<Vec<_>>();
            let mut ways = Vec::new();
            if dm {
                ways.push(
                    "remove the mapping (dmsetup remove / vgchange -an / cryptsetup close)"
                        .to_string(),
                );
            }
            for array in &md {
                ways.push(format!("stop the array (mdadm --stop /dev/{array})"));
            }
            if ways.is_empty() {
                ways.push("release it".to_string());
            }
            add(
                Check::Held,
                format!(
                    "{path} is held by {}: {} first (or --force held)",
                    self.holders.join(", "),
                    ways.join(", ")
                ),
            );
        }
        if self.read_only {
            add(
                Check::ReadOnly,
                format!(
                    "{path} is read-only: slide the card's write-protect switch, or run `blockdev --setrw {path}` (or --force read-only)"
                ),
            );
        }
        if self.size < image_size {
            add(
                Check::TooSmall,
                format!(
                    "{path} is {}, the image needs {} ({image_size} bytes): use a larger disk (or --force too-small)",
                    human_bytes(self.size),
                    human_bytes(image_size)
                ),
            );
        }
        out
    }

    /// Why an image whose partition table was written for `image_block`-byte logical blocks
    /// must not go to this disk: the firmware and the kernel look for the GPT header at LBA 1
    /// of the disk's own block size, so the written disk would have no partition table at
    /// all (nothing boots, Talos finds no META).
    pub fn block_size_refusal(&self, image_block: u64, force: &[Check]) -> Option<Refusal> {
        let disk = u64::from(self.logical_block_size);
        if force.contains(&Check::BlockSize) || disk == 0 || disk == image_block {
            return None;
        }
        Some(Refusal {
            check: Check::BlockSize,
            reason: format!(
                "{} has {disk}-byte logical blocks but the image's partition table is written for \
                 {image_block}-byte blocks: nothing on it would be found; build the image with \
                 `sector_size = {disk}` (or --force block-size)",
                self.path.display()
            ),
        })
    }

    /// "/dev/sdb1 (a partition of /dev/sdb)" or "/dev/sdb".
    fn part_of(&self, device: &str) -> String {
        if device == self.name {
            self.path.display().to_string()
        } else {
            format!("/dev/{device} (a partition of {})", self.path.display())
        }
    }
}

impl Resolved {
    /// Why writing the image to this target would be refused, except the checks in `force`:
    /// a disk's refusals; for a partition, [`Check::Partition`] and the partition's own
    /// checks; for a file, [`Check::Source`] when it is the image itself.
    pub fn refusals(
        &self,
        sys: &System,
        image_size: u64,
        source: Option<&Path>,
        force: &[Check],
    ) -> Result<Vec<Refusal>> {
        match self {
            Resolved::Disk(disk) => Ok(disk.refusals(sys, image_size, source, force)),
            Resolved::Partition { path, name, parent } => {
                let mut out = Vec::new();
                if !force.contains(&Check::Partition) {
                    let disk = match parent {
                        Some(d) => format!(
                            "name the disk ({}) to write the whole disk",
                            d.path.display()
                        ),
                        None => "name a whole disk".to_string(),
                    };
                    out.push(Refusal {
                        check: Check::Partition,
                        reason: format!(
                            "{} is a partition, not a whole disk: {disk} (or --force partition)",
                            path.display()
                        ),
                    });
                }
                let part = sys.describe_name(name)?.ok_or_else(|| {
                    anyhow!(
                        "{} vanished from sysfs while checking it: check the disk is still plugged in",
                        path.display()
                    )
                })?;
                out.extend(part.refusals(sys, image_size, source, force));
                Ok(out)
            }
            Resolved::File(path) => {
                let mut out = Vec::new();
                if let Some(source) = source {
                    if !force.contains(&Check::Source) && same_file(sys, path, source) {
                        out.push(Refusal {
                            check: Check::Source,
                            reason: format!(
                                "{} is the image being written: name another file (or --force source)",
                                path.display()
                            ),
                        });
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A human table of disks (device, size, transport, model, serial, removable, state) for
/// `edgeimage devices`.
pub fn render_table(disks: &[Disk], sys: &System) -> String {
    if disks.is_empty() {
        return "no disks found\n".to_string();
    }
    let header = [
        "DEVICE",
        "SIZE",
        "TRANSPORT",
        "MODEL",
        "SERIAL",
        "RM",
        "STATE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for disk in disks {
        let mut state: Vec<String> = Vec::new();
        for refusal in disk.refusals(sys, 0, None, &[]) {
            let text = match refusal.check {
                Check::System => "system".to_string(),
                Check::Mounted => {
                    let points: Vec<&str> =
                        disk.mounted.iter().map(|m| m.mountpoint.as_str()).collect();
                    format!("mounted {}", list_some(&points, 3))
                }
                Check::Swap => "swap".to_string(),
                Check::Held => format!("held by {}", disk.holders.join(", ")),
                other => other.name().to_string(),
            };
            if !state.contains(&text) {
                state.push(text);
            }
        }
        if let Some(backing) = &disk.backing_file {
            state.push(format!("file {}", backing.display()));
        }
        if state.is_empty() {
            state.push("free".to_string());
        }
        rows.push(vec![
            disk.path.display().to_string(),
            human_bytes(disk.size),
            disk.transport.name().to_string(),
            disk.model.clone().unwrap_or_else(|| "-".to_string()),
            disk.serial.clone().unwrap_or_else(|| "-".to_string()),
            if disk.removable { "yes" } else { "no" }.to_string(),
            state.join("; "),
        ]);
    }
    let mut widths = vec![0usize; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = w.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The kinds of whole disk that can be targets (loop devices further need a backing file).
fn candidate_name(name: &str) -> bool {
    let letters = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()))
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let nvme = name.strip_prefix("nvme").is_some_and(|rest| {
        rest.split_once('n')
            .is_some_and(|(ctrl, ns)| digits(ctrl) && digits(ns))
    });
    letters("sd")
        || letters("vd")
        || letters("xvd")
        || letters("hd")
        || nvme
        || name.strip_prefix("mmcblk").is_some_and(digits)
        || name.strip_prefix("loop").is_some_and(digits)
}

fn transport(name: &str, dir: &Path) -> Transport {
    let path = dir.to_string_lossy();
    if name.starts_with("loop") {
        Transport::Loop
    } else if path.contains("/usb") {
        Transport::Usb
    } else if name.starts_with("nvme") {
        Transport::Nvme
    } else if name.starts_with("mmcblk") {
        Transport::Mmc
    } else if path.contains("/virtio") {
        Transport::Virtio
    } else if path.contains("/ata") {
        Transport::Sata
    } else if name.starts_with("sd") || path.contains("/host") {
        Transport::Scsi
    } else {
        Transport::Unknown
    }
}

/// "MAJ:MIN".
fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn parse_mountinfo(line: &str) -> Option<MountLine> {
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let dev = fields.get(2).and_then(|d| parse_dev(d));
    let mountpoint = unescape(fields.get(4)?);
    let source = unescape(right.split(' ').nth(1).unwrap_or(""));
    Some(MountLine {
        dev,
        mountpoint,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo and /proc/swaps.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// Whether `inside` (a path inside the system) and `outside` (a path of this process) are the
/// same file.
fn same_file(sys: &System, inside: &Path, outside: &Path) -> bool {
    let Ok(theirs) = fs::metadata(outside) else {
        return false;
    };
    [sys.real(inside), inside.to_path_buf()]
        .iter()
        .any(|p| fs::metadata(p).is_ok_and(|m| m.dev() == theirs.dev() && m.ino() == theirs.ino()))
}

/// "/dev/disk/by-id/x (/dev/sdb)" when the given path differs from what it resolved to.
fn describe_given(given: &Path, resolved: &Path) -> String {
    if given == resolved {
        given.display().to_string()
    } else {
        format!("{} ({})", given.display(), resolved.display())
    }
}

/// "a, b, c and 2 more".
fn list_some(items: &[&str], max: usize) -> String {
    let mut unique: Vec<&str> = Vec::new();
    for item in items {
        if !unique.contains(item) {
            unique.push(item);
        }
    }
    if unique.len() > max {
        let rest = unique.len() - max;
        format!("{} and {rest} more", unique[..max].join(", "))
    } else {
        unique.join(", ")
    }
}

/// Names compared with their digit runs as numbers: loop2 before loop10.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            let boundary = match (bytes.get(i - 1), bytes.get(i)) {
                (Some(x), Some(y)) => x.is_ascii_digit() != y.is_ascii_digit(),
                _ => true,
            };
            if boundary {
                if let (Some(chunk), Some(first)) = (s.get(start..i), bytes.get(start)) {
                    out.push((first.is_ascii_digit(), chunk));
                }
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = if x.0 && y.0 {
            let (tx, ty) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
            tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty))
        } else {
            x.1.cmp(y.1)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const USB: &str =
        "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block";
    const ATA: &str = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block";
    const ATA2: &str = "devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block";
    const NVME: &str = "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0";
    const VIRT: &str = "devices/virtual/block";

    /// A fake system: files and relative symlinks under a temporary root.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let tree = Tree {
                dir: tempfile::tempdir().expect("temporary directory"),
            };
            tree.file("proc/self/mountinfo", "");
            tree.file("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
            tree
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn sys(&self) -> System {
            System::at(self.dir.path())
        }

        fn file(&self, rel: &str, content: impl AsRef<[u8]>) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }

        /// A symlink at `link` to `target` (both relative to the root), written relative.
        fn link(&self, link: &str, target: &str) {
            let up = Path::new(link).components().count().saturating_sub(1);
            let relative = format!("{}{target}", "../".repeat(up));
            self.raw_link(link, &relative);
        }

        fn raw_link(&self, link: &str, target: &str) {
            let path = self.path(link);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            symlink(target, path).expect("symlink");
        }

        /// A whole disk `name` at `sys/<parent>/<name>`; returns its sysfs path (from the root).
        fn disk(&self, parent: &str, name: &str, dev: &str, sectors: u64) -> String {
            let dir = format!("sys/{parent}/{name}");
            self.file(&format!("{dir}/dev"), format!("{dev}\n"));
            self.file(&format!("{dir}/size"), format!("{sectors}\n"));
            self.file(&format!("{dir}/ro"), "0\n");
            self.file(&format!("{dir}/removable"), "0\n");
            self.file(&format!("{dir}/queue/logical_block_size"), "512\n");
            fs::create_dir_all(self.path(&format!("{dir}/holders"))).expect("mkdir");
            fs::create_dir_all(self.path(&format!("{dir}/slaves"))).expect("mkdir");
            self.link(&format!("sys/block/{name}"), &dir);
            self.link(&format!("sys/dev/block/{dev}"), &dir);
            if !parent.starts_with("devices/virtual") {
                let device = parent.strip_suffix("/block").unwrap_or(parent);
                self.link(&format!("{dir}/device"), &format!("sys/{device}"));
            }
            self.file(&format!("dev/{name}"), "");
            dir
        }

        fn part(&self, disk: &str, name: &str, number: u32, dev: &str, sectors: u64) -> String {
            let dir = format!("{disk}/{name}");
            self.file(&format!("{dir}/dev"), format!("{dev}\n"));
            self.file(&format!("{dir}/size"), format!("{sectors}\n"));
            self.file(&format!("{dir}/partition"), format!("{number}\n"));
            self.file(&format!("{dir}/ro"), "0\n");
            fs::create_dir_all(self.path(&format!("{dir}/holders"))).expect("mkdir");
            self.link(&format!("sys/dev/block/{dev}"), &dir);
            self.file(&format!("dev/{name}"), "");
            dir
        }

        /// Mounts as (MAJ:MIN, mountpoint, source).
        fn mounts(&self, mounts: &[(&str, &str, &str)]) {
            let mut text = String::from("22 1 0:21 / /proc rw,relatime shared:2 - proc proc rw\n");
            for (i, (dev, point, source)) in mounts.iter().enumerate() {
                text.push_str(&format!(
                    "{} 1 {dev} / {point} rw,relatime shared:{i} - ext4 {source} rw\n",
                    30 + i
                ));
            }
            self.file("proc/self/mountinfo", text);
        }
    }

    fn find<'a>(disks: &'a [Disk], name: &str) -> &'a Disk {
        disks
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no {name} in {disks:?}"))
    }

    fn checks(refusals: &[Refusal]) -> Vec<Check> {
        refusals.iter().map(|r| r.check).collect()
    }

    fn error(result: Result<Resolved>) -> String {
        match result {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn usb_stick_serial_comes_from_the_usb_device_and_by_id_links_resolve() {
        let t = Tree::new();
        let dir = t.disk(USB, "sdc", "8:32", 60_063_744);
        t.file(&format!("{dir}/removable"), "1\n");
        t.file(&format!("{dir}/device/model"), "Ultra Fit       \n");
        t.part(&dir, "sdc1", 1, "8:33", 60_000_000);
        // The interface has neither file; the device has both; the hub above must not win.
        t.file(
            "sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/idVendor",
            "0781\n",
        );
        t.file(
            "sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/serial",
            "4C530001230101117450\n",
        );
        t.file(
            "sys/devices/pci0000:00/0000:00:14.0/usb2/idVendor",
            "1d6b\n",
        );
        t.file(
            "sys/devices/pci0000:00/0000:00:14.0/usb2/serial",
            "0000:00:14.0\n",
        );
        t.raw_link("dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0", "../../sdc");
        t.raw_link(
            "dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0-part1",
            "../../sdc1",
        );
        let sys = t.sys();

        let disks = sys.disks().expect("disks");
        assert_eq!(disks.len(), 1);
        let sdc = find(&disks, "sdc");
        assert_eq!(sdc.path, Path::new("/dev/sdc"));
        assert_eq!(sdc.dev, "8:32");
        assert_eq!(sdc.transport, Transport::Usb);
        assert_eq!(sdc.serial.as_deref(), Some("4C530001230101117450"));
        assert_eq!(sdc.model.as_deref(), Some("Ultra Fit"));
        assert_eq!(sdc.size, 60_063_744 * 512);
        assert_eq!(sdc.logical_block_size, 512);
        assert!(sdc.removable && !sdc.read_only && !sdc.system);
        assert_eq!(sdc.partitions, ["sdc1"]);
        assert_eq!(
            sdc.by_id,
            [PathBuf::from(
                "/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0"
            )]
        );
        assert!(sdc.refusals(&sys, 2 * GIB, None, &[]).is_empty());
        // An image for 4 KiB blocks on a 512-byte disk: its GPT would not be found.
        assert!(sdc.block_size_refusal(512, &[]).is_none());
        let r = sdc.block_size_refusal(4096, &[]).expect("refused");
        assert_eq!(r.check, Check::BlockSize);
        assert!(
            r.reason.contains("/dev/sdc has 512-byte logical blocks")
                && r.reason.contains("written for 4096-byte blocks")
                && r.reason.contains("sector_size = 512")
                && r.reason.contains("--force block-size"),
            "{}",
            r.reason
        );
        assert!(sdc.block_size_refusal(4096, &[Check::BlockSize]).is_none());
        assert_eq!(Check::parse("block-size"), Some(Check::BlockSize));
        assert_eq!(sys.real(&sdc.path), t.path("dev/sdc"));

        let by_id = TargetSpec::Path("/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0".into());
        match sys.resolve(&by_id).expect("resolve by-id") {
            Resolved::Disk(d) => assert_eq!(d.name, "sdc"),
            other => panic!("{other:?}"),
        }
        let part = TargetSpec::Path("/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0-part1".into());
        match sys.resolve(&part).expect("resolve by-id partition") {
            Resolved::Partition { path, name, .. } => {
                assert_eq!(path, Path::new("/dev/sdc1"));
                assert_eq!(name, "sdc1");
            }
            other => panic!("{other:?}"),
        }
        let json = serde_json::to_value(sdc).expect("json");
        assert_eq!(json["transport"], "usb");
        assert_eq!(json["path"], "/dev/sdc");
    }

    #[test]
    fn nvme_with_a_mounted_partition_is_refused_and_lists_the_mountpoint() {
        let t = Tree::new();
        let dir = t.disk(NVME, "nvme0n1", "259:0", 1_000_215_216);
        t.part(&dir, "nvme0n1p1", 1, "259:1", 1_000_000);
        t.part(&dir, "nvme0n1p2", 2, "259:2", 999_000_000);
        t.file(&format!("sys/{NVME}/serial"), "S4EWNX0R123456      \n");
        t.file(&format!("sys/{NVME}/model"), "Samsung SSD 980 1TB\n");
        // A multipath path of the same namespace is not a disk of its own.
        t.disk(NVME, "nvme0c0n1", "259:9", 1_000_215_216);
        t.mounts(&[("259:2", "/data", "/dev/nvme0n1p2")]);
        let sys = t.sys();

        let disks = sys.disks().expect("disks");
        assert_eq!(
            disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["nvme0n1"]
        );
        let nvme = find(&disks, "nvme0n1");
        assert_eq!(nvme.transport, Transport::Nvme);
        assert_eq!(nvme.serial.as_deref(), Some("S4EWNX0R123456"));
        assert_eq!(nvme.model.as_deref(), Some("Samsung SSD 980 1TB"));
        assert_eq!(nvme.partitions, ["nvme0n1p1", "nvme0n1p2"]);
        assert_eq!(
            nvme.mounted,
            [Mount {
                device: "nvme0n1p2".into(),
                mountpoint: "/data".into(),
                through: None
            }]
        );
        let refusals = nvme.refusals(&sys, GIB, None, &[]);
        assert_eq!(checks(&refusals), [Check::Mounted]);
        assert_eq!(
            refusals[0].reason,
            "/dev/nvme0n1p2 (a partition of /dev/nvme0n1) is mounted on /data: unmount it first (or --force mounted)"
        );
        let table = render_table(&disks, &sys);
        assert!(table.contains("mounted /data"), "{table}");
        assert!(table.starts_with("DEVICE"), "{table}");

        let err = error(sys.resolve(&TargetSpec::Path("/dev/nvme0c0n1".into())));
        assert!(err.contains("multipath"), "{err}");
    }

    #[test]
    fn the_disk_holding_root_is_the_system_disk() {
        let t = Tree::new();
        let sda = t.disk(ATA, "sda", "8:0", 500_118_192);
        t.part(&sda, "sda1", 1, "8:1", 1_000_000);
        t.part(&sda, "sda2", 2, "8:2", 499_000_000);
        let mut page = vec![0u8, 0x80, 0, 20];
        page.extend_from_slice(b"  WD-WCC4N1234567   \0");
        t.file(&format!("{sda}/device/vpd_pg80"), page);
        t.disk(ATA2, "sdb", "8:16", 500_118_192);
        t.mounts(&[("8:2", "/", "/dev/sda2"), ("8:1", "/boot/efi", "/dev/sda1")]);
        let sys = t.sys();

        let disks = sys.disks().expect("disks");
        let sda = find(&disks, "sda");
        assert!(sda.system);
        assert_eq!(sda.transport, Transport::Sata);
        assert_eq!(sda.serial.as_deref(), Some("WD-WCC4N1234567"));
        assert_eq!(sda.mounted.len(), 2);
        let refusals = sda.refusals(&sys, GIB, None, &[]);
        assert_eq!(
            checks(&refusals),
            [Check::System, Check::Mounted, Check::Mounted]
        );
        assert!(refusals[0]
            .reason
            .starts_with("/dev/sda holds the running system's root filesystem"));
        let sdb = find(&disks, "sdb");
        assert!(!sdb.system && sdb.refusals(&sys, GIB, None, &[]).is_empty());
        assert_eq!(sys.disks_under((8, 2)), ["sda"]);
        assert_eq!(sys.disks_under((8, 0)), ["sda"]);
        assert!(sys.disks_under((8, 99)).is_empty());
        // Without /sys/dev/block, device numbers are found by scanning /sys/block.
        fs::remove_dir_all(t.path("sys/dev")).expect("rm");
        assert_eq!(sys.disks_under((8, 2)), ["sda"]);
        assert!(find(&sys.disks().expect("disks"), "sda").system);
    }

    #[test]
    fn root_on_device_mapper_marks_the_disk_under_it_system_and_held() {
        let t = Tree::new();
        let sdb = t.disk(ATA, "sdb", "8:16", 500_118_192);
        t.part(&sdb, "sdb1", 1, "8:17", 1_000_000);
        let sdb2 = t.part(&sdb, "sdb2", 2, "8:18", 499_000_000);
        let dm = t.disk(VIRT, "dm-0", "254:0", 499_000_000);
        t.file(&format!("{dm}/dm/name"), "vg0-root\n");
        t.link(&format!("{dm}/slaves/sdb2"), &sdb2);
        t.link(&format!("{sdb2}/holders/dm-0"), &dm);
        t.raw_link("dev/mapper/vg0-root", "../dm-0");
        t.mounts(&[
            ("254:0", "/", "/dev/mapper/vg0-root"),
            // btrfs-style anonymous device number: found through the source.
            ("0:45", "/home", "/dev/mapper/vg0-root"),
            ("8:17", "/boot", "/dev/sdb1"),
        ]);
        let sys = t.sys();

        let disks = sys.disks().expect("disks");
        assert_eq!(
            disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["sdb"]
        );
        let sdb = find(&disks, "sdb");
        assert!(sdb.system);
        assert_eq!(sdb.holders, ["dm-0 (vg0-root)"]);
        let through = Some("dm-0 (vg0-root)".to_string());
        assert!(sdb.mounted.contains(&Mount {
            device: "sdb2".into(),
            mountpoint: "/home".into(),
            through: through.clone()
        }));
        let refusals = sdb.refusals(&sys, GIB, None, &[]);
        assert_eq!(
            checks(&refusals),
            [Check::System, Check::Mounted, Check::Mounted, Check::Held]
        );
        let held = &refusals[3].reason;
        assert_eq!(
            held,
            "/dev/sdb is held by dm-0 (vg0-root): remove the mapping (dmsetup remove / vgchange -an / cryptsetup close) first (or --force held)"
        );
        assert!(
            refusals[1]
                .reason
                .contains("/, /home through dm-0 (vg0-root)"),
            "{}",
            refusals[1].reason
        );
        assert_eq!(sys.disks_under((254, 0)), ["sdb"]);
        assert_eq!(sys.disks_under((0, 45)), ["sdb"]);

        let err = error(sys.resolve(&TargetSpec::Path("/dev/mapper/vg0-root".into())));
        assert!(
            err.contains("device-mapper") && err.contains("/dev/sdb"),
            "{err}"
        );
    }

    #[test]
    fn swap_partitions_are_refused() {
        let t = Tree::new();
        let sdc = t.disk(ATA, "sdc", "8:32", 100_000_000);
        t.part(&sdc, "sdc1", 1, "8:33", 50_000_000);
        t.part(&sdc, "sdc2", 2, "8:34", 50_000_000);
        t.raw_link("dev/disk/by-uuid/1234", "../../sdc2");
        t.file(
            "proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
             /dev/disk/by-uuid/1234                  partition\t8388604\t\t0\t\t-2\n\
             /swap\\040file                          file\t\t1048572\t\t0\t\t-3\n",
        );
        let sys = t.sys();
        let disks = sys.disks().expect("disks");
        let sdc = find(&disks, "sdc");
        assert_eq!(sdc.swap, ["sdc2"]);
        let refusals = sdc.refusals(&sys, GIB, None, &[]);
        assert_eq!(checks(&refusals), [Check::Swap]);
        assert_eq!(
            refusals[0].reason,
            "/dev/sdc2 (a partition of /dev/sdc) is in use as swap: swapoff /dev/sdc2 first (or --force swap)"
        );
    }

    #[test]
    fn read_only_and_too_small_disks_are_refused() {
        let t = Tree::new();
        let sdb = t.disk(USB, "sdb", "8:16", 4_000_000);
        t.file(&format!("{sdb}/ro"), "1\n");
        let sys = t.sys();
        let disks = sys.disks().expect("disks");
        let sdb = find(&disks, "sdb");
        assert!(sdb.read_only);
        let refusals = sdb.refusals(&sys, 2_214_592_512, None, &[]);
        assert_eq!(checks(&refusals), [Check::ReadOnly, Check::TooSmall]);
        assert_eq!(
            refusals[1].reason,
            "/dev/sdb is 1.9 GiB, the image needs 2.1 GiB (2214592512 bytes): use a larger disk (or --force too-small)"
        );
        assert!(refusals[0].reason.contains("blockdev --setrw /dev/sdb"));
        // Exactly the image's size fits.
        assert_eq!(
            checks(&sdb.refusals(&sys, 4_000_000 * 512, None, &[])),
            [Check::ReadOnly]
        );
    }

    #[test]
    fn a_partition_target_resolves_with_its_parent_and_is_refused_as_a_partition() {
        let t = Tree::new();
        let sdb = t.disk(USB, "sdb", "8:16", 60_000_000);
        t.part(&sdb, "sdb1", 1, "8:17", 30_000_000);
        t.part(&sdb, "sdb2", 2, "8:18", 30_000_000);
        t.mounts(&[("8:18", "/media/usb", "/dev/sdb2")]);
        let sys = t.sys();
        let resolved = sys
            .resolve(&TargetSpec::Path("/dev/sdb1".into()))
            .expect("resolve");
        match &resolved {
            Resolved::Partition { path, name, parent } => {
                assert_eq!(path, Path::new("/dev/sdb1"));
                assert_eq!(name, "sdb1");
                assert_eq!(parent.as_ref().map(|d| d.name.as_str()), Some("sdb"));
            }
            other => panic!("{other:?}"),
        }
        let refusals = resolved.refusals(&sys, GIB, None, &[]).expect("refusals");
        assert_eq!(checks(&refusals), [Check::Partition]);
        assert_eq!(
            refusals[0].reason,
            "/dev/sdb1 is a partition, not a whole disk: name the disk (/dev/sdb) to write the whole disk (or --force partition)"
        );
        // Forced, the partition's own checks still apply: sdb2 is mounted, sdb1 is not.
        let forced = resolved
            .refusals(&sys, GIB, None, &[Check::Partition])
            .expect("refusals");
        assert!(forced.is_empty(), "{forced:?}");
        let sdb2 = sys
            .resolve(&TargetSpec::Path("/dev/sdb2".into()))
            .expect("resolve");
        let refusals = sdb2
            .refusals(&sys, 20 * GIB, None, &[Check::Partition])
            .expect("refusals");
        assert_eq!(checks(&refusals), [Check::Mounted, Check::TooSmall]);
        assert!(refusals[0]
            .reason
            .starts_with("/dev/sdb2 is mounted on /media/usb"));
    }

    #[test]
    fn paths_that_are_not_disks() {
        let t = Tree::new();
        t.disk(ATA, "sda", "8:0", 1_000_000);
        t.file("dev/sdq", "leftover");
        t.file("images/out.img", "x");
        fs::create_dir_all(t.path("images/dir")).expect("mkdir");
        let sys = t.sys();
        let resolve = |p: &str| sys.resolve(&TargetSpec::Path(p.into()));

        assert!(error(resolve("/dev/sdz")).contains("not a disk the kernel knows"));
        assert!(error(resolve("/dev/sdq")).contains("regular file in /dev"));
        assert!(error(resolve("/images/dir")).contains("is a directory"));
        assert!(
            error(resolve("/nowhere/out.img")).contains("the directory /nowhere does not exist")
        );
        assert!(error(resolve("")).contains("empty"));
        match resolve("/images/out.img").expect("existing file") {
            Resolved::File(p) => assert_eq!(p, Path::new("/images/out.img")),
            other => panic!("{other:?}"),
        }
        match resolve("/images/new.img").expect("new file") {
            Resolved::File(p) => assert_eq!(p, Path::new("/images/new.img")),
            other => panic!("{other:?}"),
        }
        // `..` never leaves the root.
        match resolve("/../../../images/new.img").expect("new file") {
            Resolved::File(p) => assert_eq!(p, Path::new("/images/new.img")),
            other => panic!("{other:?}"),
        }
        let file = Resolved::File("/images/out.img".into());
        let refusals = file
            .refusals(&sys, 1, Some(&t.path("images/out.img")), &[])
            .expect("refusals");
        assert_eq!(checks(&refusals), [Check::Source]);
    }

    #[test]
    fn serial_must_match_exactly_one_disk() {
        let t = Tree::new();
        for (name, dev, serial) in [
            ("vda", "252:0", "SAME"),
            ("vdb", "252:16", "SAME"),
            ("vdc", "252:32", "OTHER"),
        ] {
            let dir = t.disk(
                &format!(
                    "devices/pci0000:00/0000:00:0{}.0/virtio{}/block",
                    &dev[4..5],
                    &dev[4..5]
                ),
                name,
                dev,
                1_000_000,
            );
            t.file(&format!("{dir}/serial"), format!("{serial}\n"));
        }
        let sys = t.sys();
        match sys
            .resolve(&TargetSpec::Serial("OTHER".into()))
            .expect("one match")
        {
            Resolved::Disk(d) => {
                assert_eq!(d.name, "vdc");
                assert_eq!(d.transport, Transport::Virtio);
            }
            other => panic!("{other:?}"),
        }
        let two = error(sys.resolve(&TargetSpec::Serial("SAME".into())));
        assert!(two.starts_with("2 disks have serial \"SAME\""), "{two}");
        assert!(
            two.contains("/dev/vda") && two.contains("/dev/vdb") && !two.contains("/dev/vdc"),
            "{two}"
        );
        let none = error(sys.resolve(&TargetSpec::Serial("OTH".into())));
        assert!(none.starts_with("no disk has serial \"OTH\""), "{none}");
        for d in [
            "/dev/vda (serial \"SAME\")",
            "/dev/vdb (serial \"SAME\")",
            "/dev/vdc (serial \"OTHER\")",
        ] {
            assert!(none.contains(d), "{none}");
        }
    }

    #[test]
    fn the_image_source_is_refused_as_a_loop_backing_file_and_as_the_disk_holding_it() {
        let t = Tree::new();
        t.file("images/talos.raw", vec![0u8; 4096]);
        let image = t.path("images/talos.raw");
        let loop3 = t.disk(VIRT, "loop3", "7:3", 8);
        t.file(&format!("{loop3}/loop/backing_file"), "/images/talos.raw\n");
        let loop4 = t.disk(VIRT, "loop4", "7:4", 8);
        t.file(&format!("{loop4}/loop/backing_file"), "/images/other.raw\n");
        t.disk(VIRT, "loop0", "7:0", 0);
        let loop1 = t.disk(VIRT, "loop1", "7:1", 0);
        t.file(
            &format!("{loop1}/loop/backing_file"),
            "/images/gone.raw (deleted)\n",
        );
        t.disk(VIRT, "loop2", "7:2", 8);
        // The disk the image is on: its device number is the image's st_dev.
        let st_dev = fs::metadata(&image).expect("stat").dev();
        let dev = format!("{}:{}", libc::major(st_dev), libc::minor(st_dev));
        t.disk(ATA, "sdz", &dev, 1_000_000);
        t.mounts(&[(dev.as_str(), "/images", "/dev/sdz")]);
        let sys = t.sys();

        let disks = sys.disks().expect("disks");
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop3", "loop4", "sdz"]);
        let loop3 = find(&disks, "loop3");
        assert_eq!(loop3.transport, Transport::Loop);
        assert_eq!(
            loop3.backing_file.as_deref(),
            Some(Path::new("/images/talos.raw"))
        );
        let refusals = loop3.refusals(&sys, 4096, Some(&image), &[]);
        assert_eq!(checks(&refusals), [Check::Source]);
        assert!(
            refusals[0].reason.contains("losetup -d /dev/loop3"),
            "{refusals:?}"
        );
        assert!(find(&disks, "loop4")
            .refusals(&sys, 4096, Some(&image), &[])
            .is_empty());

        let sdz = find(&disks, "sdz");
        let refusals = sdz.refusals(&sys, 4096, Some(&image), &[]);
        assert!(checks(&refusals).contains(&Check::Source), "{refusals:?}");
        assert!(refusals.iter().any(|r| r
            .reason
            .starts_with("/dev/sdz holds the image being written")));

        let err = error(sys.resolve(&TargetSpec::Path("/dev/loop2".into())));
        assert!(err.contains("no file attached"), "{err}");
    }

    #[test]
    fn force_removes_exactly_the_checks_it_names() {
        let t = Tree::new();
        let sda = t.disk(ATA, "sda", "8:0", 1_000_000);
        let sda1 = t.part(&sda, "sda1", 1, "8:1", 900_000);
        t.file(&format!("{sda}/ro"), "1\n");
        let md = t.disk(VIRT, "md0", "9:0", 900_000);
        t.link(&format!("{md}/slaves/sda1"), &sda1);
        t.link(&format!("{sda1}/holders/md0"), &md);
        t.mounts(&[("9:0", "/", "/dev/md0"), ("8:1", "/mnt", "/dev/sda1")]);
        t.file("proc/swaps", "Filename Type\n/dev/sda1 partition 1 0 -2\n");
        t.file("images/i.raw", "x");
        let image = t.path("images/i.raw");
        let st_dev = fs::metadata(&image).expect("stat").dev();
        t.mounts(&[
            ("9:0", "/", "/dev/md0"),
            ("8:1", "/mnt", "/dev/sda1"),
            (
                &format!("{}:{}", libc::major(st_dev), libc::minor(st_dev)),
                "/images",
                "/dev/sda1",
            ),
        ]);
        let sys = t.sys();
        let disks = sys.disks().expect("disks");
        let sda = find(&disks, "sda");
        let all = sda.refusals(&sys, GIB, Some(&image), &[]);
        let mut seen = checks(&all);
        seen.dedup();
        assert_eq!(
            seen,
            [
                Check::System,
                Check::Source,
                Check::Mounted,
                Check::Swap,
                Check::Held,
                Check::ReadOnly,
                Check::TooSmall
            ]
        );
        assert!(all
            .iter()
            .any(|r| r.reason.contains("mdadm --stop /dev/md0")));
        for check in Check::ALL {
            let left = checks(&sda.refusals(&sys, GIB, Some(&image), &[check]));
            let expected: Vec<Check> = checks(&all).into_iter().filter(|c| *c != check).collect();
            assert_eq!(left, expected, "forcing {check}");
        }
        let left = sda.refusals(&sys, GIB, Some(&image), &[Check::Mounted, Check::ReadOnly]);
        assert!(
            !checks(&left).contains(&Check::Mounted) && !checks(&left).contains(&Check::ReadOnly)
        );
        assert!(sda
            .refusals(&sys, GIB, Some(&image), &Check::ALL)
            .is_empty());
    }

    #[test]
    fn check_names_round_trip() {
        for check in Check::ALL {
            assert_eq!(Check::parse(check.name()), Some(check));
            let json = serde_json::to_string(&check).expect("json");
            assert_eq!(json, format!("\"{}\"", check.name()));
        }
        assert_eq!(Check::parse("too_small"), None);
        assert_eq!(Check::parse("TooSmall"), None);
    }

    #[test]
    fn hostile_sysfs_and_proc_contents_do_not_panic() {
        let t = Tree::new();
        let a = t.disk(ATA, "sda", "8:0", 1000);
        t.file(&format!("{a}/size"), "garbage");
        let b = t.disk(ATA, "sdb", "8:16", 1000);
        t.file(&format!("{b}/dev"), "x:y\n");
        let c = t.disk(ATA, "sdc", "8:32", 1000);
        fs::remove_file(t.path(&format!("{c}/size"))).expect("rm");
        let d = t.disk(ATA, "sdd", "8:48", 1000);
        t.file(&format!("{d}/size"), "99999999999999999999999");
        let e = t.disk(ATA, "sde", "8:64", 1000);
        t.file(&format!("{e}/size"), format!("{}", u64::MAX / 2));
        t.file(&format!("{e}/device/vpd_pg80"), [0u8]);
        t.file(&format!("{e}/queue/logical_block_size"), "\u{0}\u{ff}");
        let f = t.disk(ATA, "sdf", "8:80", 1000);
        t.file(
            &format!("{f}/device/vpd_pg80"),
            [0u8, 0x80, 0, 200, b'A', 0xff, b'B'],
        );
        t.file(&format!("{f}/queue/logical_block_size"), "-1");
        t.part(&f, "sdf1", 1, "8:81", 10);
        t.file(&format!("{f}/sdf1/partition"), "not a number");
        t.file(&format!("{f}/holders/ghost"), "not a link");
        let dm = t.disk(VIRT, "dm-1", "254:1", 10);
        t.raw_link(&format!("{dm}/slaves/self"), ".");
        t.raw_link(&format!("{dm}/slaves/up"), "../../../../../../../../..");
        t.raw_link("sys/block/sdg", "sdg");
        t.raw_link("sys/block/sdh", "/../../../../../../../../etc");
        t.raw_link("sys/block/sdi", "../../../../../../../../../../../../etc");
        t.raw_link("sys/dev/block/8:96", "../../../../../../../../../../../");
        t.raw_link("dev/disk/by-id/loop-a", "loop-b");
        t.raw_link("dev/disk/by-id/loop-b", "loop-a");
        t.file("dev/disk/by-id/plain", "");
        t.file(
            "proc/self/mountinfo",
            "garbage\n - \n1 2 3\n\n1 2 8:80 / / rw - ext4\n9 9 8:80 / /a\\04 rw - x /dev/sdf\\777 rw\n1 1 99999999999:1 / /x - y /dev/../../../etc rw\n1 1 254:1 / /y - y /dev/dm-1 rw\n",
        );
        t.file("proc/swaps", "Filename\n\n/dev/sdf1\n\\\n/dev/../dev/sdf\n");
        let sys = t.sys();
        let disks = sys.disks().expect("disks");
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sdf"]);
        let sdf = find(&disks, "sdf");
        assert_eq!(sdf.serial.as_deref(), Some("AB"));
        assert_eq!(sdf.logical_block_size, 512);
        assert!(sdf.system);
        let _ = render_table(&disks, &sys);
        let _ = sdf.refusals(&sys, u64::MAX, Some(Path::new("/nonexistent")), &[]);
        for p in [
            "/dev/sda",
            "/dev/sdb",
            "/dev/sdg",
            "/dev/sdh",
            "/dev/disk/by-id/loop-a",
            "/dev/disk/by-id/plain",
            "/sys/block/sdg/x",
        ] {
            let _ = sys.resolve(&TargetSpec::Path(p.into()));
        }
        let _ = sys.resolve(&TargetSpec::Serial(String::new()));
        let _ = sys.disks_under((8, 96));
        let _ = sys.disks_under((0, 0));
        let _ = sys.disks_under((u32::MAX, u32::MAX));

        // No /proc, no sysfs: errors that say what to mount.
        fs::remove_dir_all(t.path("proc")).expect("rm");
        let err = format!("{:#}", sys.disks().expect_err("no proc"));
        assert!(err.contains("mount -t proc"), "{err}");
        fs::remove_dir_all(t.path("sys")).expect("rm");
        let err = format!("{:#}", sys.disks().expect_err("no sys"));
        assert!(err.contains("mount -t sysfs"), "{err}");
        let empty = System::at(Path::new("/nonexistent/root"));
        assert!(empty.disks().is_err());
        assert_eq!(render_table(&[], &empty), "no disks found\n");
    }

    #[test]
    fn natural_order() {
        let mut names = vec![
            "loop10", "loop2", "sdb", "sda", "nvme10n1", "nvme1n1", "sdaa", "loop02",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["loop02", "loop2", "loop10", "nvme1n1", "nvme10n1", "sda", "sdaa", "sdb"]
        );
    }

    #[test]
    fn host_disks_can_be_listed() {
        let sys = System::host();
        let disks = sys.disks().expect("listing the host's disks");
        println!("{}", render_table(&disks, &sys));
        for disk in &disks {
            assert!(disk.path.starts_with("/dev"));
            assert!(disk.size > 0);
        }
    }
}
