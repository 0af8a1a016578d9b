//! The profile's `[image_cache]` section: the container images the node's local image cache
//! holds, each an archive on disk pinned by the digest of its manifest or index, and the
//! references the node needs besides those its machine configuration implies.
//!
//! ```toml
//! [image_cache]
//! free = "64MiB"                                   # free space kept in the cache filesystem
//! require = ["docker.io/library/nginx:1.27.3"]      # needed besides the configuration's
//!
//! [[image_cache.images]]
//! reference = "registry.k8s.io/kube-apiserver:v1.35.2"
//! digest = "sha256:…"                              # of its manifest or index
//! archive = "../images/kube-apiserver.tar"          # OCI archive, OCI layout dir, docker save (25+)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use super::{parse_size, Size};
use crate::format::reference::Reference;

/// The most images one cache lists.
pub const MAX_IMAGES: usize = 512;

/// `[image_cache]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImageCache {
    free: Option<Size>,
    #[serde(default)]
    require: Vec<String>,
    #[serde(default)]
    images: Vec<RawImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    reference: String,
    digest: String,
    archive: PathBuf,
}

/// One image of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheImage {
    /// The reference the node asks for (normalized; without the digest).
    pub reference: Reference,
    /// `sha256:<hex>` of its manifest or index.
    pub digest: String,
    pub archive: PathBuf,
}

/// The checked `[image_cache]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCacheSpec {
    pub images: Vec<CacheImage>,
    pub require: Vec<Reference>,
    /// Bytes kept free in the cache filesystem.
    pub free: u64,
}

pub(super) fn parse(
    raw: Option<RawImageCache>,
    base: &Path,
    field_err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Option<ImageCacheSpec>> {
    let Some(raw) = raw else { return Ok(None) };
    let free = match &raw.free {
        Some(s) => parse_size(s).map_err(|e| field_err("image_cache.free", e))?,
        None => 0,
    };
    if free > 1 << 40 {
        return Err(field_err(
            "image_cache.free",
            "more than 1 TiB of free space is not an image cache".into(),
        ));
    }
    if raw.images.len() > MAX_IMAGES {
        return Err(field_err(
            "image_cache.images",
            format!(
                "{} images; a cache holds at most {MAX_IMAGES}",
                raw.images.len()
            ),
        ));
    }
    let mut require = Vec::with_capacity(raw.require.len());
    for (i, r) in raw.require.iter().enumerate() {
        let f = format!("image_cache.require[{i}]");
        let r = Reference::parse(r).map_err(|e| field_err(&f, e.to_string()))?;
        require.push(r);
    }
    let mut images = Vec::with_capacity(raw.images.len());
    let mut by_name: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, im) in raw.images.into_iter().enumerate() {
        let f = |k: &str| format!("image_cache.images[{i}].{k}");
        let reference = Reference::parse(&im.reference)
            .map_err(|e| field_err(&f("reference"), e.to_string()))?;
        let digest = im.digest.to_ascii_lowercase();
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(field_err(
                &f("digest"),
                format!(
                    "{:?} is not a manifest digest: \"sha256:\" and 64 hex digits expected",
                    im.digest.chars().take(80).collect::<String>()
                ),
            ));
        }
        if let Some(d) = &reference.digest {
            if *d != digest {
                return Err(field_err(
                    &f("reference"),
                    format!("the reference carries digest {d} but `digest` is {digest}"),
                ));
            }
        }
        if reference.tag.is_none() {
            return Err(field_err(
                &f("reference"),
                format!(
                    "{reference} has no tag: give the tag the node asks for (the digest goes \
                     in `digest`)"
                ),
            ));
        }
        let reference = reference.without_digest();
        let key = reference.to_string();
        if let Some((j, other)) = by_name.get(&key) {
            let why = if *other == digest {
                "listed twice".to_string()
            } else {
                format!("also given with digest {other} (image_cache.images[{j}]); one reference names one image")
            };
            return Err(field_err(&f("reference"), format!("{key} is {why}")));
        }
        by_name.insert(key, (i, digest.clone()));
        images.push(CacheImage {
            reference,
            digest,
            archive: base.join(im.archive),
        });
    }
    Ok(Some(ImageCacheSpec {
        images,
        require,
        free,
    }))
}
