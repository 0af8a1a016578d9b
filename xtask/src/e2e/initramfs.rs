//! The stand-in initramfs: busybox, `/dev/console`, the kernel modules the boot needs (disk,
//! FAT, and loop + squashfs + overlay for system extensions), a `rootfs.sqsh` standing in for
//! Talos's (a squashfs made by edgeimage's writer, the bottom of the extensions' overlay, with
//! a marker file, a service definition the extension must hide, and a kernel module tree at
//! `usr/lib/modules/<kver>/` holding [`BASE_MODULES`] with Debian's `modules.order`,
//! `modules.builtin` and `modules.builtin.modinfo`: what edgeimage combines an extension's
//! modules with), and a busybox `/init` that prints what it finds, packed with edgeimage's
//! own cpio writer and compressed with zstd (as Talos's `initramfs.xz` is since 1.8).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeimage::compose::cpio::{self, Entry};

use super::fetch::Root;

/// Modules the stand-in init loads, before their dependencies are added. `efivarfs` is
/// optional (built in on some kernels); the rest must exist.
const WANTED: &[(&str, bool)] = &[
    ("virtio_pci", true),
    ("virtio_blk", true),
    ("vfat", true),
    ("nls_cp437", true),
    ("nls_ascii", true),
    ("loop", true),
    ("squashfs", true),
    ("overlay", true),
    ("efivarfs", false),
    // The image cache partition (built in on some kernels); Linux 6.1's ext4 loads the crc32c
    // hash at every mount, through the crypto API, which cannot load modules here.
    ("ext4", false),
    ("crc32c_generic", false),
];

const INIT: &str = include_str!("init.sh");

/// In `rootfs.sqsh`, under the overlay: read back through it to show the base is the bottom
/// layer.
pub const BASE_MARK: &str = "rootfs.sqsh stand-in";
/// The base module tree: what [`EXT_MODULE`] needs, directly or not.
pub const BASE_MODULES: &[&str] = &["llc", "stp", "garp", "mrp"];
/// The module only an extension carries (`extras/8021q.ko`), loaded with busybox `modprobe`.
pub const EXT_MODULE: &str = "8021q";
/// `/base`'s own `edgehostlet.yaml`, which the extension's must hide (it is on top).
pub const BASE_SERVICE: &str = "name: base-placeholder\n";

/// Writes the zstd-compressed newc initramfs to `out`; returns the modules in load order.
pub fn build(root: &Root, out: &Path) -> Result<Vec<String>> {
    let index = index_modules(&root.modules())?;
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for (name, required) in WANTED {
        if !index.contains_key(*name) {
            if *required {
                bail!(
                    "kernel module {name}.ko not found under {}",
                    root.modules().display()
                );
            }
            continue;
        }
        resolve(name, &index, &mut seen, &mut Vec::new(), &mut order)?;
    }

    let busybox = root.busybox();
    let bb = fs::File::open(&busybox).with_context(|| format!("opening {}", busybox.display()))?;
    let bb_len = bb.metadata()?.len();
    let modules_list: String = order.iter().map(|m| format!("{m}\n")).collect();

    let mut entries = vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, bb_len, bb),
        Entry::symlink("bin/sh", "busybox"),
        Entry::dir("dev", 0o755),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::dir("etc", 0o755),
        Entry::file_bytes("etc/e2e-modules", 0o644, modules_list.as_bytes()),
        Entry::file_bytes("init", 0o755, INIT.as_bytes()),
        Entry::dir("lib", 0o755),
        Entry::dir("lib/modules", 0o755),
        Entry::dir("mnt", 0o755),
        Entry::dir("proc", 0o755),
        Entry::dir("sys", 0o755),
        Entry::dir("tmp", 0o1777),
        Entry::dir("layers", 0o755),
        Entry::dir("sysroot", 0o755),
        Entry::dir("usr", 0o755),
        Entry::dir("usr/local", 0o755),
    ];
    entries.push(Entry::dir("base", 0o755));
    let rootfs = rootfs_sqsh(root)?;
    let rootfs_len = rootfs.metadata()?.len();
    entries.push(Entry::file("rootfs.sqsh", 0o644, rootfs_len, rootfs));
    for m in &order {
        let p = &index[m.as_str()];
        let f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let len = f.metadata()?.len();
        entries.push(Entry::file(format!("lib/modules/{m}.ko"), 0o644, len, f));
    }
    cpio::sort(&mut entries);

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let enc = zstd::stream::Encoder::new(BufWriter::new(file), 19)
        .context("starting the zstd encoder")?;
    let mut w = cpio::Writer::new(enc);
    w.append_all(entries)
        .with_context(|| format!("writing {}", out.display()))?;
    let enc = w
        .finish()
        .with_context(|| format!("writing {}", out.display()))?;
    let mut inner = enc
        .finish()
        .with_context(|| format!("compressing {}", out.display()))?;
    inner
        .flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(order)
}

/// The stand-in `rootfs.sqsh` (see the module documentation), in a temporary file.
fn rootfs_sqsh(root: &Root) -> Result<fs::File> {
    use edgeimage::layout::Layout;
    use edgeimage::tree::{Node, Tree};
    let mut t = Tree::new();
    let dir = |t: &mut Tree, path: &str| {
        let mut d = String::new();
        for part in path.split('/') {
            if !d.is_empty() {
                d.push('/');
            }
            d.push_str(part);
            t.insert(d.clone(), Node::dir(0o755));
        }
    };
    dir(&mut t, "usr/local/etc/containers");
    t.insert(
        "usr/local/etc/e2e-base",
        Node::file(Layout::from_bytes(BASE_MARK.as_bytes().to_vec()), 0o644),
    );
    t.insert(
        "usr/local/etc/containers/edgehostlet.yaml",
        Node::file(Layout::from_bytes(BASE_SERVICE.as_bytes().to_vec()), 0o644),
    );
    let kdir = format!("usr/lib/modules/{}", root.kver);
    dir(&mut t, &kdir);
    let modules = root.modules();
    let mut order = String::new();
    for m in base_module_paths(root)? {
        let rel = m
            .strip_prefix(&modules)
            .with_context(|| format!("{} is not under {}", m.display(), modules.display()))?
            .to_string_lossy()
            .into_owned();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            dir(&mut t, &format!("{kdir}/{parent}"));
        }
        let data = fs::read(&m).with_context(|| format!("reading {}", m.display()))?;
        t.insert(
            format!("{kdir}/{rel}"),
            Node::file(Layout::from_bytes(data), 0o644),
        );
        order.push_str(&rel);
        order.push('\n');
    }
    t.insert(
        format!("{kdir}/modules.order"),
        Node::file(Layout::from_bytes(order.into_bytes()), 0o644),
    );
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        let p = modules.join(f);
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        t.insert(
            format!("{kdir}/{f}"),
            Node::file(Layout::from_bytes(data), 0o644),
        );
    }
    let mut f = tempfile::tempfile().context("creating a temporary rootfs.sqsh")?;
    edgeimage::compose::squashfs::write_squashfs(&t, 0, &mut f)?;
    use std::io::Seek;
    f.rewind()?;
    Ok(f)
}

/// The files of [`BASE_MODULES`] in the kernel's tree, in Debian's `modules.order` order.
pub fn base_module_paths(root: &Root) -> Result<Vec<PathBuf>> {
    let index = index_modules(&root.modules())?;
    let mut out = Vec::new();
    for m in BASE_MODULES {
        out.push(
            index
                .get(*m)
                .with_context(|| {
                    format!(
                        "kernel module {m}.ko not found under {}",
                        root.modules().display()
                    )
                })?
                .clone(),
        );
    }
    Ok(out)
}

/// The file of [`EXT_MODULE`].
pub fn ext_module_path(root: &Root) -> Result<PathBuf> {
    let index = index_modules(&root.modules())?;
    index.get(EXT_MODULE).cloned().with_context(|| {
        format!(
            "kernel module {EXT_MODULE}.ko not found under {}",
            root.modules().display()
        )
    })
}

/// `wanted` modules and their dependencies (read from each module's `.modinfo`), in load
/// order, as kernel module names.
pub fn load_order(root: &Root, wanted: &[&str]) -> Result<Vec<String>> {
    let index = index_modules(&root.modules())?;
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        resolve(name, &index, &mut seen, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// Module name (with `_`, as the kernel names it) → `.ko` file.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(stem.replace('-', "_"), p);
            }
        }
    }
    if index.is_empty() {
        bail!("no uncompressed .ko modules under {}/kernel", dir.display());
    }
    Ok(index)
}

/// Depth-first: dependencies before the module.
fn resolve(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    done: &mut HashSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    if done.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        bail!(
            "kernel module dependency cycle: {} -> {name}",
            path.join(" -> ")
        );
    }
    let file = index.get(name).with_context(|| {
        format!(
            "kernel module {name} (needed by {}) not found",
            path.last().map(String::as_str).unwrap_or("the e2e init")
        )
    })?;
    let data = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let deps = modinfo_depends(&data)
        .with_context(|| format!("reading the .modinfo section of {}", file.display()))?;
    path.push(name.to_string());
    for d in deps {
        resolve(&d, index, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(name.to_string());
    Ok(())
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The `depends=` list of an ELF64 little-endian kernel module.
fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("not an ELF64 little-endian file");
    }
    let bad = || anyhow::anyhow!("truncated ELF section headers");
    let shoff = le_u64(elf, 0x28).ok_or_else(bad)? as usize;
    let shentsize = le_u16(elf, 0x3a).ok_or_else(bad)? as usize;
    let shnum = le_u16(elf, 0x3c).ok_or_else(bad)? as usize;
    let shstrndx = le_u16(elf, 0x3e).ok_or_else(bad)? as usize;
    let section = |i: usize| -> Option<(u32, &[u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = le_u32(elf, h)?;
        let off = le_u64(elf, h + 0x18)? as usize;
        let size = le_u64(elf, h + 0x20)? as usize;
        Some((name, elf.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx).ok_or_else(bad)?;
    for i in 0..shnum {
        let (name_off, data) = section(i).ok_or_else(bad)?;
        let name = names
            .get(name_off as usize..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        for s in data.split(|&c| c == 0) {
            if let Some(list) = s.strip_prefix(b"depends=") {
                return Ok(String::from_utf8_lossy(list)
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_"))
                    .collect());
            }
        }
        return Ok(Vec::new());
    }
    bail!("no .modinfo section")
}
