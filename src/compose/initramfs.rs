//! System extensions packed the way Talos's imager packs them, appended to the base initramfs.
//!
//! What Talos does (siderolabs/talos `pkg/imager/extensions/{extensions,contents,rebuild}.go`,
//! `internal/pkg/extensions/compress.go`, `pkg/machinery/extensions/{config,metadata}.go`):
//!
//! 1. Extension `j` (profile order) is unpacked into a directory named `strconv.Itoa(j)`.
//! 2. CPU microcode is taken out of the firmware tree first: `<fw>/intel-ucode/*` (all matches,
//!    sorted) is concatenated into `kernel/x86/microcode/GenuineIntel.bin`,
//!    `<fw>/amd-ucode/microcode_amd*.bin` into `kernel/x86/microcode/AuthenticAMD.bin`
//!    (appending across extensions). Paths under `kernel/` go into an *uncompressed* cpio that
//!    is *prepended* to the initramfs (the kernel's early microcode loader reads only that).
//! 3. The firmware tree (`<fw>` = `usr/lib/firmware` since Talos 1.10, `lib/firmware` before) is
//!    moved out of the rootfs into the initramfs at the same path: directories recreated with
//!    their permissions, files copied (symlinks are *followed*: `os.Stat` + copy), so the cpio
//!    holds regular files only. Its ancestors (`usr`, `usr/lib`) stay in the squashfs.
//! 4. The rest becomes `<j>.sqsh` (`mksquashfs -all-root -noappend -comp zstd
//!    -Xcompression-level 18`).
//! 5. `extensions.yaml` (Go `yaml.v3`/`go.yaml.in/yaml/v4` encoder defaults) lists
//!    `layers: [{image, metadata}]`.
//! 6. Everything but `kernel/**` goes into a newc cpio (`cpio -H newc --create --reproducible
//!    -R +0:+0`, names from a recursive sorted walk, no `./`), compressed with `zstd -18`, and
//!    appended to the unchanged base initramfs.
//!
//! edgeimage differs on purpose in: mtimes (all `epoch`, Talos keeps the build time), modes (the
//! imager's umask 022 is applied explicitly: `mode & 0o755`), both firmware roots are moved (an
//! extension validated for its Talos version has only the right one), and the layer order for
//! more than ten layers: Talos lists its unpack directories sorted *as strings*
//! (`0, 1, 10, 2, …`), so with eleven or more extensions its stacking order is not the profile
//! order. The boot side (machined's `mountRootFS`) reads only `extensions.yaml`, mounting each
//! `image` by name in the listed order (last listed on top), so names are opaque there; edgeimage
//! always lists layers in profile order, named `<i>.sqsh` without padding — byte-identical
//! naming and order to Talos for up to ten layers, and the profile's order (not Talos's
//! accidental string order) beyond.
//!
//! Kernel modules (`usr/lib/modules`, `lib/modules`) need a combined `modules.dep` layer
//! ([`crate::extension::modules`]): it is packed last, as `modules.dep.sqsh`, exactly as Talos's
//! imager names and lists it; [`extensions_archive`] refuses modules without it.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

use crate::compose::cpio::{self, Entry};
use crate::compose::squashfs;
use crate::extension::{modules, Extension, Metadata};
use crate::layout::{Layout, SharedFile};
use crate::tree::{Node, NodeKind, Tree};

/// zstd level of the appended archive. Talos uses `zstd -T0 -18`; the archive is mostly
/// squashfs layers that are compressed already (level 18 inside), so 18 here only burns time:
/// packing a 50 MiB extension takes 7.4 s at 18 and 0.8 s at 9, for the same size.
pub const ARCHIVE_ZSTD_LEVEL: i32 = 9;

/// Firmware roots moved into the initramfs (Talos ≥ 1.10, and before).
pub const FIRMWARE_ROOTS: [&str; 2] = ["usr/lib/firmware", "lib/firmware"];
const MODULE_ROOTS: [&str; 2] = ["usr/lib/modules", "lib/modules"];
const INTEL_UCODE: &str = "kernel/x86/microcode/GenuineIntel.bin";
const AMD_UCODE: &str = "kernel/x86/microcode/AuthenticAMD.bin";

/// One layer as packed, for `inspect` and reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    /// `<i>.sqsh`.
    pub image: String,
    pub name: String,
    pub version: String,
    pub squashfs_size: u64,
    pub squashfs_sha256: String,
    /// Firmware files moved into the initramfs.
    pub firmware_files: usize,
    /// Microcode files moved into the early (uncompressed) cpio.
    pub microcode_files: usize,
    /// `path: attribute` pairs squashfs could not store.
    pub xattrs_dropped: Vec<String>,
}

/// The packed extensions.
#[derive(Clone, Debug)]
pub struct ExtensionsArchive {
    /// zstd-compressed newc cpio (`<i>.sqsh`, `extensions.yaml`, firmware), zero-padded to a
    /// multiple of 4 bytes; backed by an anonymous temporary file.
    pub layout: Layout,
    /// Uncompressed newc cpio with the CPU microcode (`kernel/x86/microcode/*.bin`), to go in
    /// *front* of the base initramfs; `None` when no extension carries microcode.
    pub early: Option<Layout>,
    /// The exact `extensions.yaml` written.
    pub extensions_yaml: String,
    pub layers: Vec<LayerInfo>,
}

/// Pack `exts` (profile order; the embedded configuration, if any, last), then the combined
/// `modules.dep` layer `modules_dep` when extensions carry kernel modules.
pub fn extensions_archive(
    exts: &[Extension],
    modules_dep: Option<&Extension>,
    epoch: u64,
) -> Result<ExtensionsArchive> {
    if exts.is_empty() {
        bail!("no extensions to pack");
    }
    let named: Vec<(String, &Extension)> = exts
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("{i}.sqsh"), e))
        .chain(modules_dep.map(|m| (modules::LAYER_IMAGE.to_string(), m)))
        .collect();
    let mut layers = Vec::new();
    let mut sqsh: Vec<(String, Layout)> = Vec::new();
    let mut firmware = Moved::default();
    let mut intel: Vec<Layout> = Vec::new();
    let mut amd: Vec<Layout> = Vec::new();
    for (image, ext) in &named {
        let what = format!(
            "extension {} {} ({})",
            ext.metadata.name, ext.metadata.version, ext.origin
        );
        let image = image.clone();
        if modules_dep.is_none() {
            for m in MODULE_ROOTS {
                if has_under(&ext.rootfs, m) {
                    bail!(
                        "{what}: carries kernel modules under /{m} but no combined modules.dep \
                         layer was made for them"
                    );
                }
            }
        }
        let split = split_rootfs(&ext.rootfs, &mut firmware)
            .with_context(|| format!("{what}: moving firmware out of the squashfs"))?;
        let microcode_files = split.intel.len() + split.amd.len();
        intel.extend(split.intel);
        amd.extend(split.amd);
        let mut f = tempfile::tempfile().context("creating a temporary file for a squashfs")?;
        let info = squashfs::write_squashfs(&split.rest, epoch, &mut f)
            .with_context(|| format!("{what}: writing {image}"))?;
        let shared = SharedFile::new(f, format!("<temporary {image} of {}>", ext.metadata.name));
        let mut l = Layout::new(info.size);
        l.put_file(0, shared, 0, info.size)?;
        let sha = crate::layout::Layout::sha256_hex(&l)?;
        layers.push(LayerInfo {
            image: image.clone(),
            name: ext.metadata.name.clone(),
            version: ext.metadata.version.clone(),
            squashfs_size: info.size,
            squashfs_sha256: sha,
            firmware_files: split.firmware_files,
            microcode_files,
            xattrs_dropped: info.xattrs_dropped,
        });
        sqsh.push((image, l));
    }
    let listed: Vec<(&str, &Metadata)> = layers
        .iter()
        .zip(&named)
        .map(|(l, (_, e))| (l.image.as_str(), &e.metadata))
        .collect();
    let extensions_yaml = extensions_yaml(&listed);

    // The compressed archive.
    let mut entries: Vec<Entry> = Vec::new();
    for (name, l) in &sqsh {
        entries.push(Entry::file(name.clone(), 0o644, l.len(), l.reader()).with_mtime(epoch));
    }
    entries.push(
        Entry::file_bytes("extensions.yaml", 0o644, extensions_yaml.as_bytes()).with_mtime(epoch),
    );
    for (path, m) in &firmware.entries {
        entries.push(
            match m {
                MovedNode::Dir(mode) => Entry::dir(path.clone(), *mode),
                MovedNode::File(mode, l) => Entry::file(path.clone(), *mode, l.len(), l.reader()),
            }
            .with_mtime(epoch),
        );
    }
    cpio::sort(&mut entries);
    let layout = compressed_cpio(entries, default_workers())?;

    // The early microcode archive.
    let early = if intel.is_empty() && amd.is_empty() {
        None
    } else {
        let mut blobs = Vec::new();
        for (path, parts) in [(INTEL_UCODE, &intel), (AMD_UCODE, &amd)] {
            if !parts.is_empty() {
                blobs.push((path, concat(parts)?));
            }
        }
        let mut entries = vec![
            Entry::dir("kernel", 0o755),
            Entry::dir("kernel/x86", 0o755),
            Entry::dir("kernel/x86/microcode", 0o755),
        ];
        for (path, l) in &blobs {
            entries.push(Entry::file(*path, 0o644, l.len(), l.reader()));
        }
        let entries: Vec<Entry> = entries.into_iter().map(|e| e.with_mtime(epoch)).collect();
        let mut w = cpio::Writer::new(Vec::new());
        w.append_all(entries)?;
        Some(Layout::from_bytes(w.finish()?))
    };
    Ok(ExtensionsArchive {
        layout,
        early,
        extensions_yaml,
        layers,
    })
}

/// `l` followed by zeros up to a multiple of 4 bytes (systemd-boot concatenates initrds without
/// padding; the kernel skips zeros between archives).
pub fn pad4(l: &Layout) -> Result<Layout> {
    let len = l.len().div_ceil(4) * 4;
    let mut out = Layout::new(len);
    out.put_layout(0, l)?;
    if len > l.len() {
        out.put_zeros(l.len(), len - l.len())?;
    }
    Ok(out)
}

/// The `.initrd` of the UKI: the early microcode cpio (if any), the base initramfs padded to 4
/// bytes, the extensions archive.
pub fn compose_initrd(base: &Layout, ext: &ExtensionsArchive) -> Result<Layout> {
    let mut parts: Vec<Layout> = Vec::new();
    if let Some(e) = &ext.early {
        parts.push(pad4(e)?);
    }
    parts.push(pad4(base)?);
    parts.push(pad4(&ext.layout)?);
    concat(&parts)
}

fn concat(parts: &[Layout]) -> Result<Layout> {
    let len = parts.iter().map(Layout::len).sum();
    let mut out = Layout::new(len);
    let mut off = 0;
    for p in parts {
        out.put_layout(off, p)?;
        off += p.len();
    }
    Ok(out)
}

fn default_workers() -> u32 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u32)
        .min(16)
}

/// Compress a cpio of `entries` with zstd into an anonymous temporary file, padded to 4 bytes.
/// zstd's multi-threaded mode produces the same bytes for any number of workers ≥ 1.
fn compressed_cpio(entries: Vec<Entry<'_>>, workers: u32) -> Result<Layout> {
    let f = tempfile::tempfile().context("creating a temporary file for the extensions cpio")?;
    let mut enc = zstd::stream::Encoder::new(f, ARCHIVE_ZSTD_LEVEL)?;
    enc.multithread(workers.max(1))?;
    enc.include_checksum(true)?;
    let mut w = cpio::Writer::new(enc);
    w.append_all(entries)?;
    let mut f = w.finish()?.finish()?;
    let len = f.stream_position()?;
    let padded = len.div_ceil(4) * 4;
    f.write_all(&[0u8; 3][..(padded - len) as usize])?;
    f.flush()?;
    f.seek(SeekFrom::Start(0))?;
    let mut l = Layout::new(padded);
    l.put_file(
        0,
        SharedFile::new(f, "<temporary extensions cpio.zst>"),
        0,
        padded,
    )?;
    Ok(l)
}

fn has_under(t: &Tree, root: &str) -> bool {
    let p = format!("{root}/");
    t.entries.contains_key(root)
        || t.entries
            .range(p.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&p))
}

/// Firmware moved into the initramfs, merged over all extensions.
#[derive(Default)]
struct Moved {
    entries: BTreeMap<String, MovedNode>,
}

enum MovedNode {
    Dir(u32),
    File(u32, Layout),
}

struct Split {
    rest: Tree,
    intel: Vec<Layout>,
    amd: Vec<Layout>,
    firmware_files: usize,
}

/// Imitates Talos's umask-022 copy: permission bits only, group/other write removed.
fn umask(mode: u32) -> u32 {
    mode & 0o755
}

/// Take microcode and firmware out of `rootfs`; the rest goes into the squashfs.
fn split_rootfs(rootfs: &Tree, moved: &mut Moved) -> Result<Split> {
    let mut rest = rootfs.clone();
    let mut intel = Vec::new();
    let mut amd = Vec::new();
    let mut firmware_files = 0;
    for fw in FIRMWARE_ROOTS {
        if !has_under(rootfs, fw) {
            continue;
        }
        if let Some(n) = rootfs.entries.get(fw) {
            if !matches!(n.kind, NodeKind::Dir) {
                bail!("/{fw} is a {}, not a directory", n.kind.describe());
            }
        }
        // Keep the ancestors of the firmware root as directories of the squashfs.
        let dirs = rootfs.all_dirs();
        let mut a = fw;
        while let Some(i) = a.rfind('/') {
            a = &a[..i];
            if !rest.entries.contains_key(a) && dirs.iter().any(|d| d == a) {
                rest.insert(a, Node::dir(0o755));
            }
        }
        let fw_mode = rootfs.entries.get(fw).map_or(0o755, |n| n.mode);
        // Microcode first (Talos's handleUcode runs before the move).
        let mut ucode = std::collections::BTreeSet::new();
        for (glob_dir, pre, suf, out) in [
            ("intel-ucode", "", "", &mut intel),
            ("amd-ucode", "microcode_amd", ".bin", &mut amd),
        ] {
            let dir = format!("{fw}/{glob_dir}/");
            for (path, _) in rootfs
                .entries
                .range(dir.clone()..)
                .take_while(|(k, _)| k.starts_with(&dir))
            {
                let name = &path[dir.len()..];
                if name.contains('/') || !name.starts_with(pre) || !name.ends_with(suf) {
                    continue;
                }
                let (_, l) = resolve_file(rootfs, path)?;
                out.push(l);
                ucode.insert(path.clone());
            }
        }
        // Then the firmware tree, at its path.
        let sub = rootfs.subtree(fw);
        let mut mk_dir = |p: &str, mode: u32| {
            moved
                .entries
                .entry(p.to_string())
                .or_insert(MovedNode::Dir(umask(mode)));
        };
        let mut a = String::new();
        for c in fw.split('/') {
            if !a.is_empty() {
                a.push('/');
            }
            a.push_str(c);
            mk_dir(&a, fw_mode);
        }
        for d in sub.all_dirs() {
            let mode = sub.entries.get(&d).map_or(0o755, |n| n.mode);
            mk_dir(&format!("{fw}/{d}"), mode);
        }
        for (p, n) in &sub.entries {
            let full = format!("{fw}/{p}");
            if ucode.contains(&full) || matches!(n.kind, NodeKind::Dir) {
                continue;
            }
            let (mode, l) = resolve_file(rootfs, &full)?;
            if moved.entries.contains_key(&full) {
                bail!("/{full} is provided by more than one extension");
            }
            moved.entries.insert(full, MovedNode::File(umask(mode), l));
            firmware_files += 1;
        }
        let p = format!("{fw}/");
        rest.entries.retain(|k, _| k != fw && !k.starts_with(&p));
    }
    Ok(Split {
        rest,
        intel,
        amd,
        firmware_files,
    })
}

/// The file `path` names, following symlinks inside the tree (as `os.Stat` + copy does on the
/// unpacked tree): its mode and content.
fn resolve_file(t: &Tree, path: &str) -> Result<(u32, Layout)> {
    let mut cur = path.to_string();
    for _ in 0..40 {
        let Some(n) = t.entries.get(&cur) else {
            bail!("/{path}: symlink chain ends at /{cur}, which does not exist");
        };
        match &n.kind {
            NodeKind::File(l) => return Ok((n.mode, l.clone())),
            NodeKind::Symlink(target) => {
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    cur.rsplit_once('/')
                        .map_or(String::new(), |(d, _)| d.to_string())
                };
                let joined = format!("{base}/{target}");
                let mut parts: Vec<&str> = Vec::new();
                for c in joined.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => {
                            parts.pop();
                        }
                        c => parts.push(c),
                    }
                }
                cur = parts.join("/");
            }
            other => bail!(
                "/{path}: resolves to /{cur}, a {}; only regular files can be moved into the \
                 initramfs",
                other.describe()
            ),
        }
    }
    bail!("/{path}: too many levels of symbolic links")
}

/// `extensions.yaml` exactly as Talos writes it: `yaml.NewEncoder(f).Encode(cfg)` of
/// `Config{Layers []*Layer}` (`pkg/machinery/extensions/config.go`) with `Layer{Image,
/// Metadata}` and `Metadata{Name, Version, Author, Description, Compatibility{Talos{Version}},
/// ExtraInfo (omitempty)}` (`metadata.go`); Go yaml.v3 defaults: 4-space indent, sequence items
/// indented, mappings inside an item two further, 80-column folding, v3's quoting rules.
pub fn extensions_yaml(layers: &[(&str, &Metadata)]) -> String {
    let mut e = yaml::Emitter::default();
    e.key(0, "layers");
    for (image, m) in layers {
        e.dash(4);
        e.key_inline("image");
        e.scalar(image, 8);
        e.key(6, "metadata");
        e.key(8, "name");
        e.scalar(&m.name, 12);
        e.key(8, "version");
        e.scalar(&m.version, 12);
        e.key(8, "author");
        e.scalar(&m.author, 12);
        e.key(8, "description");
        e.scalar(&m.description, 12);
        e.key(8, "compatibility");
        e.key(12, "talos");
        e.key(16, "version");
        e.scalar(m.compatibility.as_deref().unwrap_or(""), 20);
        if let Some(x) = m.extra_info.as_deref().filter(|x| !x.is_empty()) {
            e.key(8, "extraInfo");
            e.scalar(x, 12);
        }
    }
    e.finish()
}

/// A tiny emitter reproducing Go yaml.v3's output for string scalars in block mappings.
mod yaml {
    const WIDTH: usize = 80;
    const BEST_INDENT: usize = 4;

    #[derive(Default)]
    pub struct Emitter {
        out: String,
        col: usize,
        /// Only indentation written on the current line so far.
        indention: bool,
        /// The last character written was whitespace (or nothing was written).
        whitespace: bool,
    }

    impl Emitter {
        fn put(&mut self, c: char) {
            self.out.push(c);
            if c == '\n' {
                self.col = 0;
                self.indention = true;
                self.whitespace = true;
            } else {
                self.col += 1;
                self.whitespace = c == ' ';
                if c != ' ' {
                    self.indention = false;
                }
            }
        }

        fn put_str(&mut self, s: &str) {
            s.chars().for_each(|c| self.put(c));
        }

        /// Go to column `indent` on a fresh line unless already there (yaml_emitter_write_indent).
        fn indent(&mut self, indent: usize) {
            if !self.indention || self.col > indent || (self.col == indent && !self.whitespace) {
                self.put('\n');
            }
            while self.col < indent {
                self.put(' ');
            }
            self.indention = true;
            self.whitespace = true;
        }

        pub fn key(&mut self, indent: usize, k: &str) {
            if !self.out.is_empty() {
                self.indent(indent);
            }
            self.put_str(k);
            self.put(':');
        }

        pub fn dash(&mut self, indent: usize) {
            self.indent(indent);
            self.put_str("- ");
            self.indention = true;
        }

        pub fn key_inline(&mut self, k: &str) {
            self.put_str(k);
            self.put(':');
        }

        pub fn finish(mut self) -> String {
            if !(self.indention && self.col == 0) {
                self.put('\n');
            }
            self.out
        }

        /// A string value; `indent` is the indentation of continuation lines (the value's
        /// node indent).
        pub fn scalar(&mut self, s: &str, indent: usize) {
            let a = analyze(s);
            let style = if s.contains('\n') {
                if a.block_allowed {
                    Style::Literal
                } else {
                    Style::Double
                }
            } else if resolves_to_str(s) && !is_base60_float(s) && !is_old_bool(s) {
                if a.block_plain_allowed {
                    Style::Plain
                } else if a.single_quoted_allowed {
                    Style::Single
                } else {
                    Style::Double
                }
            } else {
                Style::Double
            };
            match style {
                Style::Plain => self.plain(s, indent),
                Style::Single => self.single(s, indent),
                Style::Double => self.double(s, indent),
                Style::Literal => self.literal(s, indent),
            }
        }

        fn plain(&mut self, s: &str, indent: usize) {
            if !s.is_empty() && !self.whitespace {
                self.put(' ');
            }
            let v: Vec<char> = s.chars().collect();
            let mut spaces = false;
            for i in 0..v.len() {
                if v[i] == ' ' {
                    if !spaces && self.col > WIDTH && v.get(i + 1) != Some(&' ') {
                        self.indent(indent);
                    } else {
                        self.put(' ');
                    }
                    spaces = true;
                } else {
                    self.put(v[i]);
                    spaces = false;
                }
            }
        }

        fn single(&mut self, s: &str, indent: usize) {
            if !self.whitespace {
                self.put(' ');
            }
            self.put('\'');
            let v: Vec<char> = s.chars().collect();
            let mut spaces = false;
            for i in 0..v.len() {
                if v[i] == ' ' {
                    if !spaces
                        && self.col > WIDTH
                        && i > 0
                        && i + 1 < v.len()
                        && v.get(i + 1) != Some(&' ')
                    {
                        self.indent(indent);
                    } else {
                        self.put(' ');
                    }
                    spaces = true;
                } else {
                    if v[i] == '\'' {
                        self.put('\'');
                    }
                    self.put(v[i]);
                    spaces = false;
                }
            }
            self.put('\'');
        }

        fn double(&mut self, s: &str, indent: usize) {
            if !self.whitespace {
                self.put(' ');
            }
            self.put('"');
            let v: Vec<char> = s.chars().collect();
            let mut spaces = false;
            for i in 0..v.len() {
                let c = v[i];
                if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                    self.put('\\');
                    let esc = match c {
                        '\0' => Some('0'),
                        '\u{7}' => Some('a'),
                        '\u{8}' => Some('b'),
                        '\t' => Some('t'),
                        '\n' => Some('n'),
                        '\u{b}' => Some('v'),
                        '\u{c}' => Some('f'),
                        '\r' => Some('r'),
                        '\u{1b}' => Some('e'),
                        '"' => Some('"'),
                        '\\' => Some('\\'),
                        '\u{85}' => Some('N'),
                        '\u{a0}' => Some('_'),
                        '\u{2028}' => Some('L'),
                        '\u{2029}' => Some('P'),
                        _ => None,
                    };
                    match esc {
                        Some(e) => self.put(e),
                        None => {
                            let n = c as u32;
                            let s = if n <= 0xFF {
                                format!("x{n:02X}")
                            } else if n <= 0xFFFF {
                                format!("u{n:04X}")
                            } else {
                                format!("U{n:08X}")
                            };
                            self.put_str(&s);
                        }
                    }
                    spaces = false;
                } else if c == ' ' {
                    if !spaces && self.col > WIDTH && i > 0 && i + 1 < v.len() {
                        self.indent(indent);
                        if v.get(i + 1) == Some(&' ') {
                            self.put('\\');
                        }
                    } else {
                        self.put(' ');
                    }
                    spaces = true;
                } else {
                    self.put(c);
                    spaces = false;
                }
            }
            self.put('"');
        }

        fn literal(&mut self, s: &str, indent: usize) {
            if !self.whitespace {
                self.put(' ');
            }
            self.put('|');
            let v: Vec<char> = s.chars().collect();
            if v.first().is_some_and(|&c| c == ' ' || is_break(c)) {
                self.put(char::from(b'0' + BEST_INDENT as u8));
            }
            let n = v.len();
            if !is_break(v[n - 1]) {
                self.put('-');
            } else if n == 1 || is_break(v[n - 2]) {
                self.put('+');
            }
            let mut breaks = true;
            for &c in &v {
                if is_break(c) {
                    self.put('\n');
                    breaks = true;
                } else {
                    if breaks {
                        self.indent(indent);
                    }
                    self.put(c);
                    self.indention = false;
                    breaks = false;
                }
            }
        }
    }

    enum Style {
        Plain,
        Single,
        Double,
        Literal,
    }

    fn is_break(c: char) -> bool {
        matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
    }

    /// libyaml's `is_printable` (on UTF-8 input, characters beyond the BMP are not).
    fn is_printable(c: char) -> bool {
        let n = c as u32;
        n == 0x0A
            || (0x20..=0x7E).contains(&n)
            || (0xA0..=0xD7FF).contains(&n)
            || ((0xE000..=0xFFFD).contains(&n) && n != 0xFEFF)
    }

    #[derive(Debug)]
    struct Analysis {
        block_plain_allowed: bool,
        single_quoted_allowed: bool,
        block_allowed: bool,
    }

    /// yaml_emitter_analyze_scalar, block context.
    fn analyze(s: &str) -> Analysis {
        if s.is_empty() {
            return Analysis {
                block_plain_allowed: true,
                single_quoted_allowed: true,
                block_allowed: false,
            };
        }
        let v: Vec<char> = s.chars().collect();
        let mut block_ind = s.starts_with("---") || s.starts_with("...");
        let (mut line_breaks, mut special) = (false, false);
        let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
            (false, false, false, false);
        let (mut break_space, mut space_break) = (false, false);
        let (mut prev_space, mut prev_break) = (false, false);
        let blankz = |i: usize| {
            v.get(i)
                .is_none_or(|&c| c == ' ' || c == '\t' || is_break(c))
        };
        let mut preceded_ws = true;
        for i in 0..v.len() {
            let c = v[i];
            let followed_ws = blankz(i + 1);
            if i == 0 {
                match c {
                    '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\''
                    | '"' | '%' | '@' | '`' => block_ind = true,
                    '?' | ':' if followed_ws => block_ind = true,
                    '-' if followed_ws => block_ind = true,
                    _ => {}
                }
            } else {
                match c {
                    ':' if followed_ws => block_ind = true,
                    '#' if preceded_ws => block_ind = true,
                    _ => {}
                }
            }
            if !is_printable(c) || c == '\u{FEFF}' {
                special = true;
            }
            if is_break(c) {
                line_breaks = true;
            }
            if c == ' ' {
                if i == 0 {
                    leading_space = true;
                }
                if i + 1 == v.len() {
                    trailing_space = true;
                }
                if prev_break {
                    break_space = true;
                }
                prev_space = true;
                prev_break = false;
            } else if is_break(c) {
                if i == 0 {
                    leading_break = true;
                }
                if i + 1 == v.len() {
                    trailing_break = true;
                }
                if prev_space {
                    space_break = true;
                }
                prev_break = true;
                prev_space = false;
            } else {
                prev_space = false;
                prev_break = false;
            }
            preceded_ws = blankz(i);
        }
        let mut a = Analysis {
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: true,
        };
        if leading_space || leading_break || trailing_space || trailing_break {
            a.block_plain_allowed = false;
        }
        if trailing_space {
            a.block_allowed = false;
        }
        if break_space {
            a.block_plain_allowed = false;
            a.single_quoted_allowed = false;
        }
        if space_break || special {
            a.block_plain_allowed = false;
            a.single_quoted_allowed = false;
            a.block_allowed = false;
        }
        if line_breaks || block_ind {
            a.block_plain_allowed = false;
        }
        a
    }

    fn is_old_bool(s: &str) -> bool {
        matches!(
            s,
            "y" | "Y"
                | "yes"
                | "Yes"
                | "YES"
                | "on"
                | "On"
                | "ON"
                | "n"
                | "N"
                | "no"
                | "No"
                | "NO"
                | "off"
                | "Off"
                | "OFF"
        )
    }

    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }

    /// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`
    fn is_base60_float(s: &str) -> bool {
        let s = s.strip_prefix(['-', '+']).unwrap_or(s);
        let (s, _frac) = match s.split_once('.') {
            Some((a, f)) if f.bytes().all(|b| b.is_ascii_digit() || b == b'_') => (a, f),
            Some(_) => return false,
            None => (s, ""),
        };
        let mut parts = s.split(':');
        let head = parts.next().unwrap_or("");
        if !head.starts_with(|c: char| c.is_ascii_digit())
            || !head.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        {
            return false;
        }
        let mut n = 0;
        for p in parts {
            n += 1;
            let ok = match p.len() {
                1 => digits(p),
                2 => digits(p) && p.as_bytes()[0] <= b'5',
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        n > 0
    }

    /// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$` and finite.
    fn is_yaml_float(s: &str) -> bool {
        let t = s.strip_prefix(['-', '+']).unwrap_or(s);
        let (mant, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], Some(&t[i + 1..])),
            None => (t, None),
        };
        let mant_ok = match mant.split_once('.') {
            Some(("", f)) => digits(f),
            Some((a, f)) => digits(a) && (f.is_empty() || digits(f)),
            None => digits(mant),
        };
        let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
        mant_ok && exp_ok && s.parse::<f64>().is_ok_and(f64::is_finite)
    }

    /// Go's `strconv.ParseInt(s, 0, 64)` / `ParseUint` succeed.
    fn is_go_int(s: &str) -> bool {
        let (neg, t) = match s.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (radix, body) = if let Some(b) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
            (16, b)
        } else if let Some(b) = t.strip_prefix("0o").or(t.strip_prefix("0O")) {
            (8, b)
        } else if let Some(b) = t.strip_prefix("0b").or(t.strip_prefix("0B")) {
            (2, b)
        } else if t.len() > 1 && t.starts_with('0') {
            (8, &t[1..])
        } else {
            (10, t)
        };
        if body.is_empty() {
            return false;
        }
        match u64::from_str_radix(body, radix) {
            Ok(v) => !neg || v <= 1 << 63,
            Err(_) => false,
        }
    }

    /// yaml.v3's timestamp check: `YYYY-M-D` optionally followed by a time part.
    fn is_timestamp(s: &str) -> bool {
        let b = s.as_bytes();
        if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
            return false;
        }
        let rest = &s[5..];
        let mut it = rest.splitn(2, '-');
        let m = it.next().unwrap_or("");
        let Some(tail) = it.next() else { return false };
        let d_len = tail.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=2).contains(&m.len()) || !digits(m) || !(1..=2).contains(&d_len) {
            return false;
        }
        let after = &tail[d_len..];
        after.is_empty() || after.starts_with(['T', 't', ' '])
    }

    /// Would the plain scalar resolve to `!!str` (yaml.v3 `resolve("", s)`)?
    fn resolves_to_str(s: &str) -> bool {
        let Some(first) = s.bytes().next() else {
            return false;
        };
        if matches!(
            s,
            "~" | "null"
                | "Null"
                | "NULL"
                | "true"
                | "True"
                | "TRUE"
                | "false"
                | "False"
                | "FALSE"
                | ".nan"
                | ".NaN"
                | ".NAN"
                | ".inf"
                | ".Inf"
                | ".INF"
                | "+.inf"
                | "+.Inf"
                | "+.INF"
                | "-.inf"
                | "-.Inf"
                | "-.INF"
        ) {
            return false;
        }
        match first {
            b'.' => !is_yaml_float(s),
            b'+' | b'-' | b'0'..=b'9' => {
                if is_timestamp(s) {
                    return false;
                }
                let plain = s.replace('_', "");
                !(is_go_int(&plain) || is_yaml_float(&plain))
            }
            _ => true,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn one(s: &str) -> String {
            let mut e = Emitter::default();
            e.key(0, "k");
            e.scalar(s, 4);
            e.finish()
        }

        #[test]
        fn quoting_follows_yaml_v3() {
            assert_eq!(one("1.7.1"), "k: 1.7.1\n");
            assert_eq!(one("20260622"), "k: \"20260622\"\n");
            assert_eq!(one("1.0"), "k: \"1.0\"\n");
            assert_eq!(one(""), "k: \"\"\n");
            assert_eq!(one(">= v1.10.0"), "k: '>= v1.10.0'\n");
            assert_eq!(one("yes"), "k: \"yes\"\n");
            assert_eq!(one("true"), "k: \"true\"\n");
            assert_eq!(one("it's: odd"), "k: 'it''s: odd'\n");
            assert_eq!(one("a\tb"), "k: \"a\\tb\"\n");
            assert_eq!(one("2024-01-02"), "k: \"2024-01-02\"\n");
            assert_eq!(one("0x1F"), "k: \"0x1F\"\n");
            assert_eq!(one("v1.2"), "k: v1.2\n");
            assert_eq!(one("12e999"), "k: 12e999\n");
            assert_eq!(one("- x"), "k: '- x'\n");
            assert_eq!(one("a #b"), "k: 'a #b'\n");
            assert_eq!(one("a#b"), "k: a#b\n");
            assert_eq!(one("STACKIT"), "k: STACKIT\n");
            assert_eq!(
                one("line one\nline two\n"),
                "k: |\n    line one\n    line two\n"
            );
            assert_eq!(
                one("no newline\nat end"),
                "k: |-\n    no newline\n    at end\n"
            );
            assert_eq!(one("a\n\nb\n\n"), "k: |+\n    a\n\n    b\n\n");
            assert_eq!(one(" lead\n"), "k: |4\n     lead\n");
        }

        #[test]
        fn long_plain_strings_fold_at_80_columns() {
            let s = "This system extension provides the edge host agent that registers the node with the control plane.";
            let out = one(s);
            assert_eq!(
                out,
                "k: This system extension provides the edge host agent that registers the node with\n    the control plane.\n"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::squashfs::tests::{file_region, filler, have, EPOCH, SELINUX};
    use std::process::{Command, Stdio};

    fn meta(name: &str, version: &str, desc: &str, compat: Option<&str>) -> Metadata {
        Metadata {
            name: name.into(),
            version: version.into(),
            author: "STACKIT".into(),
            description: desc.into(),
            compatibility: compat.map(str::to_string),
            extra_info: None,
        }
    }

    fn ext(m: Metadata, rootfs: Tree) -> Extension {
        Extension {
            metadata: m,
            origin: "test".into(),
            sha256: String::new(),
            rootfs,
        }
    }

    fn fixtures() -> Vec<Extension> {
        let mut a = Tree::new();
        a.insert(
            "usr/local/bin/edgehostlet",
            Node::file(Layout::from_bytes(b"bin".to_vec()), 0o755),
        );
        a.insert(
            "usr/lib/firmware/vendor/fw.bin",
            Node::file(file_region(&filler(70_000, 3)), 0o664),
        );
        a.insert("usr/lib/firmware/vendor/alias.bin", Node::symlink("fw.bin"));
        a.insert(
            "usr/lib/firmware/intel-ucode/06-8e-09",
            Node::file(Layout::from_bytes(b"UCODE-A".to_vec()), 0o644),
        );
        a.insert(
            "usr/lib/firmware/intel-ucode/06-9e-0a",
            Node::file(Layout::from_bytes(b"UCODE-B".to_vec()), 0o644),
        );
        let mut b = Tree::new();
        let mut cfg = Node::file(Layout::from_bytes(b"version: v1alpha1\n".to_vec()), 0o400);
        cfg.xattrs
            .insert("security.selinux".into(), SELINUX.to_vec());
        b.insert("usr/local/etc/talos/config.yaml", cfg);
        let mut m = meta(
            "edgehostlet",
            "1.7.1",
            "Edge host agent that registers this machine with the STACKIT edge control plane, and keeps it there.",
            Some(">= v1.10.0"),
        );
        m.extra_info = Some("see https://example.invalid/edge".into());
        vec![
            ext(m, a),
            ext(
                Metadata {
                    name: "embedded-config".into(),
                    version: "0123456789abcdef".into(),
                    author: "Imager".into(),
                    description: "Embedded machine configuration".into(),
                    compatibility: Some(">= 1.0.0".into()),
                    extra_info: None,
                },
                b,
            ),
        ]
    }

    #[test]
    fn extensions_yaml_is_byte_exact() {
        let exts = fixtures();
        let l: Vec<(&str, &Metadata)> =
            vec![("0.sqsh", &exts[0].metadata), ("1.sqsh", &exts[1].metadata)];
        let plain = meta("x", "20260622", "", None);
        let mut all = l.clone();
        all.push(("2.sqsh", &plain));
        let want = "\
layers:
    - image: 0.sqsh
      metadata:
        name: edgehostlet
        version: 1.7.1
        author: STACKIT
        description: Edge host agent that registers this machine with the STACKIT
            edge control plane, and keeps it there.
        compatibility:
            talos:
                version: '>= v1.10.0'
        extraInfo: see https://example.invalid/edge
    - image: 1.sqsh
      metadata:
        name: embedded-config
        version: 0123456789abcdef
        author: Imager
        description: Embedded machine configuration
        compatibility:
            talos:
                version: '>= 1.0.0'
    - image: 2.sqsh
      metadata:
        name: x
        version: \"20260622\"
        author: STACKIT
        description: \"\"
        compatibility:
            talos:
                version: \"\"
";
        assert_eq!(extensions_yaml(&all), want);
    }

    fn pipe(cmd: &str, args: &[&str], dir: &std::path::Path, input: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut c = Command::new(cmd)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let data = input.to_vec();
        let t = std::thread::spawn(move || stdin.write_all(&data));
        let out = c.wait_with_output().unwrap();
        t.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn archive_as_talos_packs_it() {
        let exts = fixtures();
        let a = extensions_archive(&exts, None, EPOCH).unwrap();
        let b = extensions_archive(&exts, None, EPOCH).unwrap();
        let bytes = a.layout.to_vec().unwrap();
        assert_eq!(bytes, b.layout.to_vec().unwrap(), "deterministic");
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(a.layers.len(), 2);
        assert_eq!(a.layers[0].firmware_files, 2);
        assert_eq!(a.layers[0].microcode_files, 2);
        assert!(a.layers[1].xattrs_dropped.is_empty());
        let early = a.early.as_ref().expect("microcode cpio").to_vec().unwrap();
        assert_eq!(early.len() % 4, 0);

        if !(have("zstd") && have("cpio") && have("unsquashfs")) {
            eprintln!("zstd/cpio/unsquashfs missing; skipping the tool checks");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let frame = zstd::zstd_safe::find_frame_compressed_size(&bytes).unwrap();
        assert!(bytes.len() - frame < 4 && bytes[frame..].iter().all(|&b| b == 0));
        let cpio_bytes = pipe("zstd", &["-d", "-c"], d, &bytes[..frame]);
        let list = String::from_utf8(pipe("cpio", &["-itvn", "--quiet"], d, &cpio_bytes)).unwrap();
        let names: Vec<String> = list
            .lines()
            .map(|l| l.split_whitespace().nth(8).unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "0.sqsh",
                "1.sqsh",
                "extensions.yaml",
                "usr",
                "usr/lib",
                "usr/lib/firmware",
                "usr/lib/firmware/intel-ucode",
                "usr/lib/firmware/vendor",
                "usr/lib/firmware/vendor/alias.bin",
                "usr/lib/firmware/vendor/fw.bin",
            ],
            "{list}"
        );
        for l in list.lines() {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((c[2], c[3]), ("0", "0"), "{l}");
            assert!(l.contains("Nov 14  2023"), "{l}");
        }
        assert!(
            list.lines().nth(8).unwrap().starts_with("-rw-r--r--"),
            "symlink dereferenced, 0664 & 0755: {list}"
        );
        assert!(
            list.lines().nth(9).unwrap().starts_with("-rw-r--r--"),
            "{list}"
        );
        pipe("cpio", &["-idm", "--quiet"], d, &cpio_bytes);
        assert_eq!(
            std::fs::read_to_string(d.join("extensions.yaml")).unwrap(),
            a.extensions_yaml
        );
        assert_eq!(
            std::fs::read(d.join("usr/lib/firmware/vendor/alias.bin")).unwrap(),
            filler(70_000, 3)
        );
        for (i, layer) in a.layers.iter().enumerate() {
            let p = d.join(format!("{i}.sqsh"));
            let data = std::fs::read(&p).unwrap();
            assert_eq!(data.len() as u64, layer.squashfs_size);
            use sha2::Digest;
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&data)),
                layer.squashfs_sha256
            );
            let out = Command::new("unsquashfs")
                .args(["-l", "-d", ""])
                .arg(&p)
                .output()
                .unwrap();
            assert!(out.status.success());
            let l = String::from_utf8_lossy(&out.stdout).into_owned();
            if i == 0 {
                assert!(l.contains("/usr/local/bin/edgehostlet"), "{l}");
                assert!(l.contains("/usr/lib\n"), "firmware ancestors stay: {l}");
                assert!(!l.contains("firmware"), "firmware moved out: {l}");
            } else {
                assert!(l.contains("/usr/local/etc/talos/config.yaml"), "{l}");
            }
        }
        // The early cpio: microcode concatenated in glob order.
        let e = tempfile::tempdir().unwrap();
        pipe("cpio", &["-idm", "--quiet"], e.path(), &early);
        assert_eq!(
            std::fs::read(e.path().join(INTEL_UCODE)).unwrap(),
            b"UCODE-AUCODE-B"
        );
    }

    #[test]
    fn zstd_workers_do_not_change_bytes() {
        let data = filler(3 << 20, 9);
        let mk = |w| {
            let entries = vec![Entry::file_bytes("x", 0o644, &data[..]).with_mtime(EPOCH)];
            compressed_cpio(entries, w).unwrap().to_vec().unwrap()
        };
        let one = mk(1);
        assert_eq!(one, mk(3));
        assert_eq!(one, mk(8));
    }

    #[test]
    fn pad_and_compose() {
        let base = Layout::from_bytes(b"BASE!".to_vec());
        let p = pad4(&base).unwrap();
        assert_eq!(p.to_vec().unwrap(), b"BASE!\0\0\0");
        assert_eq!(pad4(&p).unwrap().len(), 8);
        let exts = fixtures();
        let a = extensions_archive(&exts[1..], None, EPOCH).unwrap();
        assert!(a.early.is_none());
        let initrd = compose_initrd(&base, &a).unwrap();
        let v = initrd.to_vec().unwrap();
        assert_eq!(&v[..8], b"BASE!\0\0\0");
        assert_eq!(&v[8..], &a.layout.to_vec().unwrap()[..]);
        assert_eq!(
            &v[8..12],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "zstd frame right after the padding"
        );
    }

    #[test]
    fn modules_without_their_layer_are_refused() {
        let mut t = Tree::new();
        t.insert(
            "usr/lib/modules/6.12/extra/x.ko",
            Node::file(Layout::from_bytes(b"ko".to_vec()), 0o644),
        );
        let e = extensions_archive(&[ext(meta("m", "1", "d", None), t)], None, EPOCH).unwrap_err();
        assert!(
            format!("{e:#}").contains("no combined modules.dep"),
            "{e:#}"
        );
    }
}
