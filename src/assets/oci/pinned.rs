//! One container image taken from an archive for an image cache: found by the digest of its
//! manifest or index (the pin), with the blobs one architecture needs, every one checked
//! against its digest, none decompressed.
//!
//! What a node's registry serves must be the registry's own bytes: a manifest is addressed by
//! its digest, so it is kept exactly as stored, and a multi-platform index is kept whole
//! (its digest is the pin) while only the manifest and blobs of the profile's architecture
//! are taken, as Talos's `talosctl images cache-create` does (`processImage` in
//! `pkg/imager/cache/cache.go`, v1.12.5, pulls with `remote.WithPlatform`).
//!
//! Layer blobs stay where they are: each is a [`Layout`] over its region of the archive (or
//! its file of a layout directory), hashed here once in a streaming pass.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::{
    Arch, Archive, BlobDigest, Platform, Source, MAX_LAYERS, MT_DOCKER_CONFIG, MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::layout::{Layout, SharedFile};

/// A JSON document of the image (index, manifest, config), as stored.
#[derive(Clone, Debug)]
pub struct JsonBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The document's own `mediaType` (for the config: its descriptor's).
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// A layer blob, as stored (compressed or not): a region of the archive.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub media_type: String,
    pub content: Layout,
}

/// An image pinned by digest (see the module documentation).
#[derive(Clone, Debug)]
pub struct PinnedImage {
    pub archive: PathBuf,
    /// The pinned manifest or index.
    pub top: JsonBlob,
    /// When `top` is an index: the manifest for the architecture.
    pub platform_manifest: Option<JsonBlob>,
    pub config: JsonBlob,
    pub layers: Vec<LayerBlob>,
    /// "linux/amd64" etc., from the config.
    pub platform: String,
}

impl PinnedImage {
    /// The image manifest (the platform manifest of an index, or the pinned manifest).
    pub fn manifest(&self) -> &JsonBlob {
        self.platform_manifest.as_ref().unwrap_or(&self.top)
    }

    /// Bytes of all blobs (manifests, config, layers).
    pub fn size(&self) -> u64 {
        let json = self.top.bytes.len()
            + self.platform_manifest.as_ref().map_or(0, |m| m.bytes.len())
            + self.config.bytes.len();
        json as u64 + self.layers.iter().map(|l| l.content.len()).sum::<u64>()
    }
}

/// A manifest or an index: the reader's descriptor type, either list.
#[derive(Deserialize)]
struct Doc {
    manifests: Option<Vec<Desc>>,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
}

type Desc = super::DescriptorJson;

/// Open the archive at `path` and take the image whose manifest or index has `digest`, for
/// `arch`.
pub fn open_pinned(path: &Path, digest: &str, arch: Arch) -> Result<PinnedImage> {
    let archive = Archive::open(path)?;
    let name = archive.name.clone();
    let pin = BlobDigest::parse(digest)?;
    if !archive.contains("index.json")? {
        if archive.contains("manifest.json")? {
            bail!(
                "{name}: a `docker save` archive without an OCI layout (Docker before 25): it \
                 keeps no registry manifest, so no digest can pin it; save the image with \
                 `skopeo copy docker://REFERENCE oci-archive:FILE` or Docker 25 or later"
            );
        }
        bail!("{name}: not an OCI image layout (no index.json)");
    }
    if !archive.contains(&pin.blob_path())? {
        bail!(
            "{name}: holds no manifest or index {pin}; it holds {}",
            listed(&archive).unwrap_or_else(|e| format!("nothing readable ({e:#})"))
        );
    }
    let top = json_blob(&archive, &pin, None, "manifest")?;
    let doc: Doc = parse(&name, &top.bytes, &format!("manifest {pin}"))?;
    let wanted = format!("linux/{arch}");
    let (platform_manifest, manifest) = if is_index(&top.media_type) || doc.manifests.is_some() {
        let list = doc.manifests.unwrap_or_default();
        // Linear in the list: platforms seen in a set, a second matching manifest refused
        // at once.
        let mut matching: Option<&Desc> = None;
        let mut held: std::collections::BTreeSet<String> = Default::default();
        for d in &list {
            let Some(p) = &d.platform else { continue };
            let p = Platform::from(p);
            if p.is_unknown() {
                continue; // attestations
            }
            if held.len() < 64 {
                held.insert(p.to_string());
            }
            if p.matches(arch) {
                match matching {
                    Some(m) if m.digest != d.digest => {
                        bail!("{name}: index {pin} lists more than one {wanted} image")
                    }
                    _ => matching = Some(d),
                }
            }
        }
        let d = match matching {
            Some(d) => d,
            None => bail!(
                "{name}: index {pin} has no {wanted} image (it lists {}): the image is for \
                 another architecture than the profile's",
                if held.is_empty() {
                    "no platforms".to_string()
                } else {
                    held.into_iter().collect::<Vec<_>>().join(", ")
                }
            ),
        };
        let dd = BlobDigest::parse(&d.digest)
            .with_context(|| format!("{name}: a manifest descriptor in index {pin}"))?;
        if matches!(d.media_type.as_deref(), Some(MT_OCI_INDEX | MT_DOCKER_LIST)) {
            bail!(
                "{name}: index {pin} nests another index for {wanted}; edgeimage reads one level"
            );
        }
        if !archive.contains(&dd.blob_path())? {
            bail!(
                "{name}: index {pin} lists the {wanted} manifest {dd}, but the archive does not \
                 hold it: copy the image with its {wanted} manifest (for example `skopeo copy \
                 --override-arch {arch} …` keeps only that one, `--all` keeps every one)"
            );
        }
        let m = json_blob(&archive, &dd, Some(d.size), "manifest")?;
        let doc: Doc = parse(&name, &m.bytes, &format!("manifest {dd}"))?;
        (Some(m), doc)
    } else {
        (None, doc)
    };
    let what = format!(
        "manifest {}",
        platform_manifest
            .as_ref()
            .map_or(&top.digest, |m| &m.digest)
    );
    let manifest_type = platform_manifest
        .as_ref()
        .map_or(top.media_type.as_str(), |m| m.media_type.as_str());
    if !matches!(manifest_type, MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) {
        bail!("{name}: {what} is not an image manifest (by its mediaType)");
    }
    let c = manifest
        .config
        .as_ref()
        .ok_or_else(|| anyhow!("{name}: {what} names no config"))?;
    let cd = BlobDigest::parse(&c.digest).with_context(|| format!("{name}: config of {what}"))?;
    if !matches!(
        c.media_type.as_deref(),
        None | Some(MT_OCI_CONFIG | MT_DOCKER_CONFIG)
    ) {
        bail!("{name}: {what} is not a container image (its config is not an image config)");
    }
    let mut config = json_blob(&archive, &cd, Some(c.size), "config")?;
    config.media_type = c.media_type.clone().unwrap_or_default();
    let cfg: super::ConfigJson = parse(&name, &config.bytes, &format!("config {cd}"))?;
    let platform = Platform::from_config(&cfg);
    if !platform.matches(arch) {
        bail!(
            "{name}: {pin} is an image for {platform}, not {wanted}: the image is for another \
             architecture than the profile's"
        );
    }
    if manifest.layers.len() > MAX_LAYERS {
        bail!(
            "{name}: {what} has {} layers, more than the {MAX_LAYERS} edgeimage reads",
            manifest.layers.len()
        );
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, l) in manifest.layers.iter().enumerate() {
        let ld = BlobDigest::parse(&l.digest)
            .with_context(|| format!("{name}: layer {} of {what}", i + 1))?;
        let content = blob_layout(&archive, &ld.blob_path())?.ok_or_else(|| {
            anyhow!(
                "{name}: layer {} ({ld}) of {what} is not in the archive (a foreign or \
                 non-distributable layer cannot be cached)",
                i + 1
            )
        })?;
        if content.len() != l.size {
            bail!(
                "{name}: layer {} ({ld}) of {what} is {} bytes but its descriptor says {}",
                i + 1,
                content.len(),
                l.size
            );
        }
        let got = content
            .sha256_hex()
            .with_context(|| format!("{name}: reading layer {} ({ld})", i + 1))?;
        if got != ld.hex {
            bail!(
                "{name}: layer {} of {what}: blob {} has digest sha256:{got}, not {ld}: the \
                 archive is damaged or was altered",
                i + 1,
                ld.blob_path()
            );
        }
        layers.push(LayerBlob {
            digest: ld.to_string(),
            media_type: l.media_type.clone().unwrap_or_default(),
            content,
        });
    }
    Ok(PinnedImage {
        archive: path.to_path_buf(),
        top,
        platform_manifest,
        config,
        layers,
        platform: platform.to_string(),
    })
}

fn is_index(media_type: &str) -> bool {
    matches!(media_type, MT_OCI_INDEX | MT_DOCKER_LIST)
}

fn parse<'a, T: Deserialize<'a>>(name: &str, data: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| anyhow!("{name}: {what}: bad JSON: {e}"))
}

/// Read a manifest, index or config blob and check its digest; a manifest or index must name
/// its `mediaType`, as Talos's registry serves only those (`getManifestData` in
/// `internal/app/machined/pkg/system/services/registry/registry.go`: "media type is empty").
fn json_blob(archive: &Archive, d: &BlobDigest, size: Option<u64>, what: &str) -> Result<JsonBlob> {
    let bytes = archive.read_json(&d.blob_path(), what, Some(d), size)?;
    #[derive(Deserialize)]
    struct Mt {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let media_type = if what == "config" {
        String::new()
    } else {
        let m: Mt = parse(&archive.name, &bytes, &format!("{what} {d}"))?;
        match m.media_type.filter(|m| !m.is_empty()) {
            Some(mt) => mt,
            None => bail!(
                "{}: {what} {d} does not name its mediaType, and a node's image cache serves \
                 only manifests that do: copy the image with a tool that keeps registry \
                 manifests (skopeo copy)",
                archive.name
            ),
        }
    };
    Ok(JsonBlob {
        digest: d.to_string(),
        media_type,
        bytes,
    })
}

/// A blob of the archive as a layout over its bytes; `None` when absent.
fn blob_layout(archive: &Archive, member: &str) -> Result<Option<Layout>> {
    match &archive.source {
        Source::Tar { file, members } => Ok(members.get(member).map(|m| {
            let mut l = Layout::new(m.size);
            // In range by construction: the member lies inside the archive.
            let _ = l.put_file(0, file.clone(), m.offset, m.size);
            l
        })),
        Source::Dir(root) => {
            let Some(input) =
                crate::input::open_beneath(root, Path::new(member), crate::input::Kind::ImageBlob)?
            else {
                return Ok(None);
            };
            let len = input.len();
            let shared = SharedFile::new(input.into_file(), root.join(member));
            let mut l = Layout::new(len);
            l.put_file(0, shared, 0, len)?;
            Ok(Some(l))
        }
    }
}

/// What index.json lists, for the message when the pin is not there.
fn listed(archive: &Archive) -> Result<String> {
    let data = archive.read_json("index.json", "index", None, None)?;
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        digest: String,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let index: Index = parse(&archive.name, &data, "index.json")?;
    if index.manifests.is_empty() {
        return Ok("no images".into());
    }
    let shown: Vec<String> = index
        .manifests
        .iter()
        .take(8)
        .map(|e| {
            // Only digests are shown as they are; a name annotation only when it looks like a
            // reference (never arbitrary text from the file).
            let d = BlobDigest::parse(&e.digest)
                .map(|d| d.to_string())
                .unwrap_or_else(|_| "a malformed digest".into());
            let name = [
                "org.opencontainers.image.ref.name",
                "io.containerd.image.name",
            ]
            .iter()
            .filter_map(|k| e.annotations.get(*k))
            .find(|n| {
                n.len() <= 255
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"./:-_@".contains(&b))
            });
            match name {
                Some(n) => format!("{d} ({n})"),
                None => d,
            }
        })
        .collect();
    let more = index.manifests.len().saturating_sub(8);
    Ok(if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    })
}
