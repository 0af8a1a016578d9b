//! The profile's `[upgrade_image]` section: the Talos installer image `build` makes for this
//! profile, so `talosctl upgrade --image <reference>` keeps its extensions, configuration
//! delivery and kernel arguments.
//!
//! ```toml
//! [upgrade_image]
//! reference = "registry.edge.local/edge/installer:v1.12.5-edge-amd64"  # what upgrades name
//! base = { archive = "../images/installer-base-v1.12.5.tar", digest = "sha256:…" }
//! ```

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::format::reference::Reference;

/// `[upgrade_image]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpgradeImage {
    reference: String,
    base: RawBase,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBase {
    archive: PathBuf,
    digest: String,
}

/// The checked `[upgrade_image]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeImageSpec {
    /// The reference upgrades name (with a tag, without a digest).
    pub reference: Reference,
    /// Talos's `installer-base` image for this version, as an OCI archive or layout.
    pub base_archive: PathBuf,
    /// `sha256:<hex>` of its manifest or index.
    pub base_digest: String,
}

pub(super) fn parse(
    raw: Option<RawUpgradeImage>,
    base: &Path,
    field_err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Option<UpgradeImageSpec>> {
    let Some(raw) = raw else { return Ok(None) };
    let reference = Reference::parse(&raw.reference)
        .map_err(|e| field_err("upgrade_image.reference", e.to_string()))?;
    if reference.digest.is_some() || reference.tag.is_none() {
        return Err(field_err(
            "upgrade_image.reference",
            format!(
                "{reference} must name a tag and no digest: the image is made by this build, \
                 its digest is not known before"
            ),
        ));
    }
    let digest = raw.base.digest.to_ascii_lowercase();
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(field_err(
            "upgrade_image.base.digest",
            "not a manifest digest: \"sha256:\" and 64 hex digits expected".into(),
        ));
    }
    Ok(Some(UpgradeImageSpec {
        reference,
        base_archive: base.join(raw.base.archive),
        base_digest: digest,
    }))
}
