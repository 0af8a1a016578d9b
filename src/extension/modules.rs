//! Extensions that carry kernel modules, and the combined `modules.dep` layer they need.
//!
//! Talos's imager (`pkg/imager/extensions/extensions.go`, `Build`, and
//! `internal/pkg/extensions/kernel_modules.go`, `GenerateKernelModuleDependencyTreeExtension`,
//! the same from v1.10 to v1.14; `lib/modules` instead of `usr/lib/modules` before v1.10):
//!
//! 1. an extension carries modules when its rootfs has the module directory
//!    (`ProvidesKernelModules`: `usr/lib/modules`, even empty);
//! 2. the base initramfs's `rootfs.sqsh` gives the module tree, whose one directory names the
//!    kernel release; each such extension's `usr/lib/modules/<kver>/` is copied over it, a
//!    later extension replacing a file of an earlier one;
//! 3. `depmod --all` runs over the merged tree with `search extras built-in`
//!    ([`crate::kmod::depmod`]);
//! 4. every `modules.*` file of `<kver>/` (not the modules) becomes a layer of its own,
//!    `modules.dep.sqsh`, listed last in `extensions.yaml` as name `modules.dep`, version the
//!    kernel release, author `Talos Machinery`, description `Combined modules.dep for all
//!    extensions`, no compatibility range. Stacked on top at boot, it hides the base's files.
//!
//! Stricter than Talos, on purpose: an extension's modules for another kernel release than the
//! base's are refused (Talos fails only when the base's release is missing and ignores the
//! others), symlinks in the module tree are refused, and when the command line enforces module
//! signatures (`module.sig_enforce=1`, a Talos default from v1.12) an unsigned module is
//! refused: the kernel would not load it.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::{modules_root, Extension, Metadata};
use crate::assets::rootfs::BaseModules;
use crate::kmod::{self, depmod::Depmod};
use crate::layout::Layout;
use crate::talos::TalosVersion;
use crate::tree::{Node, NodeKind, Tree};

/// `metadata.name` of the layer.
pub const LAYER_NAME: &str = "modules.dep";
/// Its squashfs image in the initramfs.
pub const LAYER_IMAGE: &str = "modules.dep.sqsh";
/// Its `metadata.author`.
pub const LAYER_AUTHOR: &str = "Talos Machinery";
/// Its `metadata.description`.
pub const LAYER_DESCRIPTION: &str = "Combined modules.dep for all extensions";

/// Whether `ext` carries kernel modules for `talos` (its rootfs has the module directory).
pub fn carries_modules(ext: &Extension, talos: &TalosVersion) -> bool {
    let root = modules_root(talos);
    ext.rootfs
        .entries
        .keys()
        .any(|p| p == root || p.starts_with(&format!("{root}/")))
}

/// Where a file of the merged tree comes from.
enum Source {
    Base,
    Ext(usize, Layout),
}

/// The `modules.dep` layer for `exts` over the base module tree `base`, or `None` when no
/// extension carries modules. `sig_enforce`: the kernel refuses unsigned modules.
pub fn modules_layer(
    base: &BaseModules,
    exts: &[Extension],
    talos: &TalosVersion,
    sig_enforce: bool,
) -> Result<Option<Extension>> {
    let root = modules_root(talos);
    let with: Vec<usize> = (0..exts.len())
        .filter(|&i| carries_modules(&exts[i], talos))
        .collect();
    if with.is_empty() {
        return Ok(None);
    }
    let kver = &base.kver;
    let mut merged: BTreeMap<String, Source> = base
        .files
        .iter()
        .map(|f| (f.relpath.clone(), Source::Base))
        .collect();
    for &i in &with {
        let ext = &exts[i];
        let what = format!(
            "extension {} {} ({})",
            ext.metadata.name, ext.metadata.version, ext.origin
        );
        let prefix = format!("{root}/{kver}/");
        let mut own = 0;
        for (path, node) in &ext.rootfs.entries {
            let Some(rest) = path.strip_prefix(&format!("{root}/")) else {
                continue;
            };
            let release = rest.split('/').next().unwrap_or(rest);
            if release != kver.as_str() {
                bail!(
                    "{what}: carries modules for kernel {release} (rootfs/{root}/{release}), but \
                     the base initramfs's kernel is {kver}: use the extension built for Talos \
                     {talos}"
                );
            }
            let Some(rel) = path.strip_prefix(&prefix) else {
                continue;
            };
            match &node.kind {
                NodeKind::Dir => {}
                NodeKind::File(l) => {
                    if sig_enforce
                        && kmod::module_name(rel.rsplit('/').next().unwrap_or(rel)).is_some()
                    {
                        let elf = kmod::decompress(rel, l.reader())
                            .with_context(|| format!("{what}: rootfs/{path}"))?;
                        if !kmod::is_signed(&elf) {
                            bail!(
                                "{what}: rootfs/{path} is not signed, and Talos {talos} boots \
                                 with module.sig_enforce=1: the kernel would refuse to load it; \
                                 use a module signed with the Talos kernel's key (as Talos's \
                                 extension builds sign them), or drop the enforcement with \
                                 kernel_args.extra = [\"-module.sig_enforce\"]"
                            );
                        }
                    }
                    merged.insert(rel.to_string(), Source::Ext(i, l.clone()));
                    own += 1;
                }
                other => bail!(
                    "{what}: rootfs/{path} is a {} in the module tree; only regular files \
                     are copied into the combined tree",
                    other.describe()
                ),
            }
        }
        if own == 0 && !ext.rootfs.entries.contains_key(&format!("{root}/{kver}")) {
            bail!(
                "{what}: has rootfs/{root} but no rootfs/{root}/{kver} for the base initramfs's \
                 kernel {kver}; Talos's imager fails on it too"
            );
        }
    }

    let read = |rel: &str, src: &Source| -> Result<Vec<u8>> {
        match src {
            Source::Base => base.read(rel, kmod::MAX_MODULE_SIZE),
            Source::Ext(i, l) => {
                if l.len() > kmod::MAX_MODULE_SIZE {
                    bail!(
                        "extension {}: {rel} is {} bytes, more than {}",
                        exts[*i].metadata.name,
                        l.len(),
                        kmod::MAX_MODULE_SIZE
                    );
                }
                l.to_vec()
                    .with_context(|| format!("extension {}: {rel}", exts[*i].metadata.name))
            }
        }
    };
    let mut depmod = Depmod::default();
    for (rel, src) in &merged {
        let file = rel.rsplit('/').next().unwrap_or(rel);
        if kmod::module_name(file).is_none() {
            continue;
        }
        let whose = match src {
            Source::Base => format!("the base initramfs's {root}/{kver}/{rel}"),
            Source::Ext(i, _) => format!(
                "extension {}'s rootfs/{root}/{kver}/{rel}",
                exts[*i].metadata.name
            ),
        };
        let data = read(rel, src).with_context(|| whose.clone())?;
        let elf = kmod::decompress(rel, &data[..]).with_context(|| whose.clone())?;
        depmod.add(rel, &elf).with_context(|| whose.clone())?;
    }
    let text = |name: &str| -> Result<Vec<u8>> {
        match merged.get(name) {
            Some(src) => read(name, src),
            None => Ok(Vec::new()),
        }
    };
    let order = String::from_utf8_lossy(&text("modules.order")?).into_owned();
    let builtin = String::from_utf8_lossy(&text("modules.builtin")?).into_owned();
    let builtin_modinfo = text("modules.builtin.modinfo")?;
    let mut files: BTreeMap<String, Vec<u8>> = depmod
        .outputs(&order, &builtin, &builtin_modinfo)
        .context("computing the combined modules.dep")?
        .into_iter()
        .collect();
    // Every other `modules.*` file directly in <kver>/ goes along (Talos moves them all:
    // `findAndMoveKernelModulesDepFiles`).
    for (rel, src) in &merged {
        if rel.starts_with("modules.") && !rel.contains('/') && !files.contains_key(rel) {
            files.insert(rel.clone(), read(rel, src)?);
        }
    }

    let mut rootfs = Tree::new();
    let mut dir = String::new();
    for part in root.split('/').chain(std::iter::once(kver.as_str())) {
        if !dir.is_empty() {
            dir.push('/');
        }
        dir.push_str(part);
        rootfs.insert(dir.clone(), Node::dir(0o755));
    }
    for (name, data) in files {
        rootfs.insert(
            format!("{dir}/{name}"),
            Node::file(Layout::from_bytes(data), 0o644),
        );
    }
    let sha256 = super::tree_sha256(&rootfs).context("hashing the modules.dep layer")?;
    Ok(Some(Extension {
        metadata: Metadata {
            name: LAYER_NAME.to_string(),
            version: kver.clone(),
            author: LAYER_AUTHOR.to_string(),
            description: LAYER_DESCRIPTION.to_string(),
            compatibility: None,
            extra_info: None,
        },
        origin: "virtual".to_string(),
        sha256,
        rootfs,
    }))
}
