//! System extensions: read from their input forms, validated as strictly as Talos's own
//! validators, and handed to the initramfs packer.

use crate::tree::Tree;

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
