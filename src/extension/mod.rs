//! System extensions: read from their input forms, validated as strictly as Talos's own
//! validators, and handed to the initramfs packer.

use crate::talos::TalosVersion;
use crate::tree::Tree;

pub mod fixtures;
mod load;
pub mod modules;
pub mod semver;
mod validate;

#[cfg(test)]
mod tests;

pub use load::{input_sha256, load, tree_sha256, ExtensionInput};
pub use validate::{allowed_paths, modules_root, FORBIDDEN};

/// `metadata` of an extension's `manifest.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub author: String,
    pub description: String,
    /// `compatibility.talos.version`: a semver range, or `None` when absent/empty.
    pub compatibility: Option<String>,
    /// `extraInfo`, when present.
    pub extra_info: Option<String>,
}

/// A validated extension.
#[derive(Clone, Debug)]
pub struct Extension {
    pub metadata: Metadata,
    /// Where it came from (a path, or "virtual" for the embedded configuration).
    pub origin: String,
    /// SHA-256 of the input as pinned in the profile (hex).
    pub sha256: String,
    /// The contents of `rootfs/`, paths relative to it.
    pub rootfs: Tree,
}

/// Validate an extension tree made in memory (`manifest.yaml` plus `rootfs/…`, e.g. the
/// virtual `embedded-config` extension) with the same rules [`load`] applies; `sha256` is
/// recorded as is.
pub fn from_tree(
    origin: &str,
    sha256: &str,
    tree: Tree,
    talos: &TalosVersion,
) -> anyhow::Result<Extension> {
    validate::validate(origin, sha256, tree, Vec::new(), talos)
}
