//! Container images read offline: a `docker save` archive, or an OCI image layout (as a tar,
//! e.g. from `skopeo copy … oci-archive:`, or as an unpacked directory).
//!
//! [`OciImage::open`] picks the image manifest for one platform and checks the JSON chain
//! (index → manifest → config) against its digests. [`OciImage::merged_tree`] streams the
//! layers in order, applies OCI whiteouts and returns the resulting filesystem tree, restricted
//! to the paths a filter accepts.
//!
//! Safety properties, relied on by the callers:
//! - A tar archive is indexed once (member name → data offset and size) and read in place
//!   through [`SharedFile`]; it is never unpacked to disk and never held in memory.
//! - Every layer blob is hashed as stored and checked against its descriptor (size and
//!   sha256) in a pass over all layers before any of them is decompressed; a plain (not
//!   compressed) layer is checked against its `rootfs.diff_ids` entry in that pass too. A
//!   layer's changes are applied only after its uncompressed tar matched its diff_id.
//! - Decompression is bounded: a layer expands to at most [`expansion_limit`] of its stored
//!   size, all layers together to [`MAX_IMAGE_UNCOMPRESSED`]; an entry whose header claims
//!   data past that bound is refused at its header, and decompression stops at the bound.
//! - Layer compression is detected from magic bytes (gzip, zstd, or a plain tar header), never
//!   from media types or names.
//! - Nothing from an image is written to a host path: only the files the caller keeps go to
//!   anonymous temporary files, each at most [`MAX_KEPT_FILE`], together at most
//!   [`MAX_KEPT_TOTAL`], checked at the entry's header before anything is written. Links are
//!   never followed on the host: symlinks are kept verbatim, hard links name an entry of the
//!   image. Paths are normalized ("./" and "/" prefixes stripped, empty and "." components
//!   dropped); a ".." component is an error.
//! - Every tar stream is read through [`walk`]: paths, PAX headers, entry counts and path
//!   bytes are bounded there.
//! - JSON blobs are capped at [`MAX_JSON_BLOB`] bytes (serde_json nests at most 128 levels);
//!   nested indexes, manifests, layers and link chains are bounded too.
//! - All collections are ordered, so results do not depend on hashing or timing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::layout::{RegionReader, SharedFile};

pub mod fixtures;
pub mod pinned;
pub mod walk;

/// The largest JSON blob (index, manifest, config, manifest.json) that is read.
pub const MAX_JSON_BLOB: u64 = 4 << 20;
/// A compressed layer may always expand to this much (see [`expansion_limit`]). The Talos
/// imager image is one squashed layer (`imager-image-squashed` in Talos's Dockerfile) of a
/// few hundred MiB, much of it compressed already (`initramfs.xz` and the kernels of both
/// architectures), so its stored size is close to its size; its limit comes from the ratio.
pub const MIN_EXPANSION: u64 = 256 << 20;
/// … and to this many times its stored size, when that is more: layers of binaries and text
/// compress some 2–10×, gzip's best case is about 1000×, zstd's far more.
pub const MAX_EXPANSION_RATIO: u64 = 64;
/// … but never to more than this.
pub const MAX_EXPANSION: u64 = 4 << 30;
/// All layers of one image together decompress to at most this much.
pub const MAX_IMAGE_UNCOMPRESSED: u64 = 8 << 30;
/// The most layers an image may have (Docker's overlay2 storage stacks at most 128; Talos's
/// imager image has one).
pub const MAX_LAYERS: usize = 128;
/// The largest file kept from an image (written to a temporary file): the limit for a boot
/// asset (`input::Kind::Asset`).
pub const MAX_KEPT_FILE: u64 = 1 << 30;
/// The most bytes of files kept from one image, all layers together.
pub const MAX_KEPT_TOTAL: u64 = 4 << 30;
/// How deep image indexes may nest (index.json counts as level 0).
const MAX_INDEX_DEPTH: usize = 8;
/// How many distinct index/manifest blobs one archive may make us read.
const MAX_MANIFEST_BLOBS: usize = 1024;
/// How many symlink/hardlink hops are followed when resolving a member of the outer tar.
const MAX_LINK_HOPS: usize = 16;
/// Read buffer for blobs.
const BUF_SIZE: usize = 64 * 1024;

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

pub use crate::talos::Arch;

/// Whether an OCI platform `variant` is acceptable for this architecture.
fn accepts_variant(arch: Arch, variant: Option<&str>) -> bool {
    matches!(
        (arch, variant),
        (_, None) | (_, Some("")) | (Arch::Arm64, Some("v8")) | (Arch::Amd64, Some("v1"))
    )
}

/// One image selected from an archive: its config and its ordered layers, all digest-checked
/// when read.
pub struct OciImage {
    archive: Archive,
    platform: String,
    manifest_digest: Option<String>,
    config: Vec<u8>,
    layers: Vec<LayerRef>,
}

impl fmt::Debug for OciImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciImage")
            .field("archive", &self.archive.name)
            .field("platform", &self.platform)
            .field("manifest_digest", &self.manifest_digest)
            .field("layers", &self.layers.len())
            .finish()
    }
}

/// The merged filesystem of an image (see [`OciImage::merged_tree`]).
#[derive(Debug, Default)]
pub struct MergedTree {
    /// Normalized relative paths ("usr/bin/x", no leading "/" or "./", no trailing "/").
    /// Parent directories are present only if some layer listed them (and the filter kept
    /// them); none are synthesized.
    pub entries: BTreeMap<String, TreeEntry>,
}

impl MergedTree {
    pub fn get(&self, path: &str) -> Option<&TreeEntry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One path of a [`MergedTree`], with the metadata of the layer entry that produced it.
#[derive(Clone, Debug)]
pub struct TreeEntry {
    pub kind: EntryKind,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (a PAX `mtime` overrides the header; fractions dropped).
    pub mtime: u64,
}

#[derive(Clone, Debug)]
pub enum EntryKind {
    Dir,
    /// A regular file; `content` is an anonymous temporary file holding exactly `size` bytes.
    /// A hard link whose target was kept is reported as the target's entry (same content file,
    /// and the target's metadata, since both name one inode).
    File {
        size: u64,
        content: SharedFile,
    },
    /// A symbolic link and its target, verbatim (never resolved).
    Symlink(String),
    /// A hard link whose target (a normalized path) was not kept because the filter rejected
    /// it, so its content is not available.
    Hardlink(String),
    /// "character device", "block device" or "fifo": kept so validators can refuse them.
    Other(&'static str),
}

impl OciImage {
    /// Open a docker-save tar, an OCI layout tar, or an OCI layout directory and pick the image
    /// for `arch` ("amd64" or "arm64", os "linux").
    ///
    /// An OCI layout (`index.json` present) is walked from `index.json` through nested image
    /// indexes / manifest lists; a manifest whose descriptor carries no platform is matched by
    /// its config's `os`/`architecture`. A docker-save archive (`manifest.json` only) is
    /// matched by each image's config. Exactly one distinct image must match.
    pub fn open(path: &Path, arch: &str) -> Result<OciImage> {
        let arch = Arch::from_str(arch)
            .with_context(|| format!("opening image archive {}", path.display()))?;
        Self::open_arch(path, arch)
    }

    /// [`OciImage::open`] with a parsed [`Arch`].
    pub fn open_arch(path: &Path, arch: Arch) -> Result<OciImage> {
        let archive = Archive::open(path)?;
        let selected = if archive.contains("index.json")? {
            select_oci(&archive, arch)?
        } else if archive.contains("manifest.json")? {
            select_docker(&archive, arch)?
        } else {
            bail!(
                "{}: neither an OCI image layout (no index.json) nor a docker-save archive \
                 (no manifest.json)",
                archive.name
            );
        };
        Ok(OciImage {
            archive,
            platform: selected.platform,
            manifest_digest: selected.manifest_digest,
            config: selected.config,
            layers: selected.layers,
        })
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The archive this image was read from.
    pub fn archive_path(&self) -> &Path {
        &self.archive.path
    }

    /// The selected platform, as "os/architecture[/variant]".
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The digest of the selected manifest ("sha256:…"); `None` for a docker-save archive
    /// read through its `manifest.json`.
    pub fn manifest_digest(&self) -> Option<&str> {
        self.manifest_digest.as_deref()
    }

    /// The image config JSON, as stored (digest-checked).
    pub fn config_json(&self) -> &[u8] {
        &self.config
    }

    /// Apply all layers in order and return the merged tree restricted to the paths `filter`
    /// accepts. `filter` sees normalized relative paths of every kind of entry, directories
    /// included ("usr", "usr/install/amd64/vmlinuz"). Whiteouts apply regardless of the filter:
    /// a kept path deleted or replaced by a later layer is gone.
    ///
    /// Every layer blob is checked first (size, digest, compression; see the module
    /// documentation), before any layer is decompressed; then each layer is read within the
    /// bounds of [`expansion_limit`], [`MAX_IMAGE_UNCOMPRESSED`], [`MAX_KEPT_FILE`],
    /// [`MAX_KEPT_TOTAL`] and [`walk`].
    pub fn merged_tree(&self, filter: &dyn Fn(&str) -> bool) -> Result<MergedTree> {
        let checked = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| self.check_blob(i, layer))
            .collect::<Result<Vec<_>>>()?;
        let mut budget = Budget::default();
        let mut tree = BTreeMap::new();
        for (i, (layer, c)) in self.layers.iter().zip(checked).enumerate() {
            let changes = self.read_layer(i, layer, c, filter, &tree, &mut budget)?;
            changes.apply(&mut tree);
        }
        Ok(MergedTree { entries: tree })
    }
}

// ---------------------------------------------------------------------------------------------
// Digests
// ---------------------------------------------------------------------------------------------

/// A validated "sha256:<64 lowercase hex>" digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BlobDigest {
    hex: String,
}

impl BlobDigest {
    fn parse(s: &str) -> Result<BlobDigest> {
        let Some((alg, enc)) = s.split_once(':') else {
            bail!("malformed digest {s:?} (expected \"sha256:<hex>\")");
        };
        if alg != "sha256" {
            bail!("unsupported digest algorithm {alg:?} in {s:?} (only sha256 is supported)");
        }
        if enc.len() != 64
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!("malformed sha256 digest {s:?} (expected 64 lowercase hex digits)");
        }
        Ok(BlobDigest {
            hex: enc.to_string(),
        })
    }

    fn from_hasher(h: Sha256) -> BlobDigest {
        BlobDigest {
            hex: hex::encode(h.finalize()),
        }
    }

    /// Where an OCI layout stores this blob.
    fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex)
    }

    /// The digest encoded in a docker-save member name ("blobs/sha256/<hex>" or "<hex>.json").
    fn from_member_name(name: &str) -> Option<BlobDigest> {
        let hex = name
            .strip_prefix("blobs/sha256/")
            .or_else(|| name.strip_suffix(".json"))?;
        BlobDigest::parse(&format!("sha256:{hex}")).ok()
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A reader that hashes and counts everything read through it.
struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// The archive: a directory or an indexed tar
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Member {
    offset: u64,
    size: u64,
}

enum Source {
    Dir(PathBuf),
    Tar {
        file: SharedFile,
        members: BTreeMap<String, Member>,
    },
}

struct Archive {
    path: PathBuf,
    /// The path as shown in messages.
    name: String,
    source: Source,
}

fn compression_name(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    }
}

impl Archive {
    fn open(path: &Path) -> Result<Archive> {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).with_context(|| format!("{name}: cannot open"))?;
        if meta.is_dir() {
            return Ok(Archive {
                path: path.to_path_buf(),
                name,
                source: Source::Dir(path.to_path_buf()),
            });
        }
        let file = crate::input::open(path, crate::input::Kind::ImageArchive)?.into_file();
        let shared = SharedFile::new(file, path);
        let members = index_tar(&name, &shared)?;
        Ok(Archive {
            path: path.to_path_buf(),
            name,
            source: Source::Tar {
                file: shared,
                members,
            },
        })
    }

    fn contains(&self, member: &str) -> Result<bool> {
        Ok(self.member(member)?.is_some())
    }

    /// A reader over a member (a normalized relative path) and its size; `None` if absent.
    fn member(&self, member: &str) -> Result<Option<(Box<dyn Read>, u64)>> {
        match &self.source {
            Source::Tar { file, members } => Ok(members.get(member).map(|m| {
                let r: Box<dyn Read> = Box::new(RegionReader {
                    file: file.clone(),
                    pos: m.offset,
                    end: m.offset + m.size,
                });
                (r, m.size)
            })),
            Source::Dir(root) => {
                // No symbolic link below the directory is followed (a `layer.tar` linking to
                // a file outside it is refused), and neither a FIFO nor a device is opened.
                let Some(input) = crate::input::open_beneath(
                    root,
                    Path::new(member),
                    crate::input::Kind::ImageBlob,
                )?
                else {
                    return Ok(None);
                };
                let len = input.len();
                Ok(Some((Box::new(input.into_file().take(len)), len)))
            }
        }
    }

    /// Read a small JSON blob completely, checking its size and digest when known.
    fn read_json(
        &self,
        member: &str,
        what: &str,
        digest: Option<&BlobDigest>,
        size: Option<u64>,
    ) -> Result<Vec<u8>> {
        let Some((reader, actual_size)) = self.member(member)? else {
            match digest {
                Some(d) => bail!(
                    "{}: {what} {d} is listed but its blob {member} is absent from the archive",
                    self.name
                ),
                None => bail!("{}: {what} {member} is absent from the archive", self.name),
            }
        };
        if let Some(size) = size {
            if size != actual_size {
                bail!(
                    "{}: {what} {member} is {actual_size} bytes but its descriptor says {size}",
                    self.name
                );
            }
        }
        if actual_size > MAX_JSON_BLOB {
            bail!(
                "{}: {what} {member} is {actual_size} bytes, more than the {MAX_JSON_BLOB}-byte \
                 limit for JSON documents",
                self.name
            );
        }
        let mut hr = HashingReader::new(reader.take(MAX_JSON_BLOB));
        let mut data = Vec::with_capacity(actual_size as usize);
        hr.read_to_end(&mut data)
            .with_context(|| format!("{}: reading {what} {member}", self.name))?;
        if data.len() as u64 != actual_size {
            bail!(
                "{}: {what} {member} is truncated ({} of {actual_size} bytes)",
                self.name,
                data.len()
            );
        }
        if let Some(expected) = digest {
            let got = BlobDigest::from_hasher(hr.sha);
            if &got != expected {
                bail!(
                    "{}: {what} {member}: digest mismatch: expected {expected}, got {got}",
                    self.name
                );
            }
        }
        Ok(data)
    }
}

/// Index the members of an (uncompressed) outer tar: regular files by normalized name, with
/// symlinks and hard links resolved to the files they name.
fn index_tar(name: &str, file: &SharedFile) -> Result<BTreeMap<String, Member>> {
    let len = file.len().with_context(|| format!("{name}: cannot stat"))?;
    let mut head = [0u8; 8];
    let n = (len.min(8)) as usize;
    file.read_exact_at(&mut head[..n], 0)
        .with_context(|| format!("{name}: cannot read"))?;
    if let Some(c) = compression_name(&head[..n]) {
        bail!(
            "{name}: is {c}-compressed; image archives are read in place, so decompress it \
             first"
        );
    }
    if len == 0 {
        bail!("{name}: not a tar archive (the file is empty)");
    }

    let reader = RegionReader {
        file: file.clone(),
        pos: 0,
        end: len,
    };
    let mut files: BTreeMap<String, Member> = BTreeMap::new();
    // name → (is_symlink, target)
    let mut links: BTreeMap<String, (bool, String)> = BTreeMap::new();
    let mut ar = tar::Archive::new(BufReader::with_capacity(BUF_SIZE, reader));
    let entries = ar
        .entries_with_seek()
        .map_err(|e| anyhow!("{name}: not a tar archive: {}", walk::clean(&e.to_string())))?;
    let limits = walk::Limits {
        end: len,
        end_name: "the end of the file: the archive is truncated".into(),
        depth: None,
    };
    let mut totals = walk::Totals::default();
    walk::walk(entries, name, &limits, &mut totals, |m, entry| {
        let Ok(path) = normalize_path(&m.path) else {
            // Members with unusable names cannot be referenced by a normalized name anyway.
            return Ok(());
        };
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous => {
                let m = Member {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                links.remove(&path);
                files.insert(path, m);
            }
            t @ (T::Symlink | T::Link) => {
                let target = m
                    .link
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                files.remove(&path);
                links.insert(path, (t == T::Symlink, target));
            }
            _ => {
                files.remove(&path);
                links.remove(&path);
            }
        }
        Ok(())
    })?;
    // Resolve links to the regular files they reach, within the archive.
    for (path, first) in &links {
        let mut cur_path = path.clone();
        let mut cur = first.clone();
        for _ in 0..MAX_LINK_HOPS {
            let (is_sym, target) = &cur;
            let base = if *is_sym {
                parent_of(&cur_path).to_string()
            } else {
                String::new()
            };
            let Some(resolved) = resolve_within(&base, target) else {
                break;
            };
            if let Some(m) = files.get(&resolved) {
                let m = *m;
                files.insert(path.clone(), m);
                break;
            }
            match links.get(&resolved) {
                Some(next) => {
                    cur = next.clone();
                    cur_path = resolved;
                }
                None => break,
            }
        }
    }
    Ok(files)
}

use crate::tree::{parent_of, resolve_within};

/// Normalize a path from a tar header: UTF-8, leading "/" and "./" stripped, empty and "."
/// components dropped, no ".." components. The root itself normalizes to "". Errors show
/// the path only in [`walk::shown`]'s short form.
fn normalize_path(raw: &[u8]) -> std::result::Result<String, String> {
    let s = std::str::from_utf8(raw)
        .map_err(|_| format!("path {} is not valid UTF-8", walk::shown(raw)))?;
    // Most paths are normal already (a directory's with one trailing "/"): one scan.
    let trimmed = s.strip_suffix('/').unwrap_or(s);
    if !trimmed.is_empty()
        && trimmed
            .as_bytes()
            .split(|&b| b == b'/')
            .all(|c| !matches!(c, b"" | b"." | b".."))
    {
        return Ok(trimmed.to_string());
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("path {} has a \"..\" component", walk::shown(raw))),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// The most a compressed blob (a layer, a compressed extension archive) of `stored` bytes may
/// decompress to: `max(MIN_EXPANSION, MAX_EXPANSION_RATIO × stored)`, at most
/// [`MAX_EXPANSION`].
pub fn expansion_limit(stored: u64) -> u64 {
    stored
        .saturating_mul(MAX_EXPANSION_RATIO)
        .clamp(MIN_EXPANSION, MAX_EXPANSION)
}

// ---------------------------------------------------------------------------------------------
// Selecting the image
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct DescriptorJson {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: u64,
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    architecture: String,
    os: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct IndexJson {
    manifests: Vec<DescriptorJson>,
}

#[derive(Deserialize)]
struct ManifestJson {
    config: DescriptorJson,
    #[serde(default)]
    layers: Vec<DescriptorJson>,
}

/// Tells an index from a manifest when the descriptor carries no media type.
#[derive(Deserialize)]
struct SniffJson {
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ConfigJson {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
    rootfs: Option<RootFsJson>,
}

#[derive(Deserialize)]
struct RootFsJson {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct DockerEntryJson {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl Platform {
    fn matches(&self, arch: Arch) -> bool {
        self.os == "linux"
            && self.arch == arch.as_str()
            && accepts_variant(arch, self.variant.as_deref())
    }

    fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.arch == "unknown"
    }

    fn from_config(c: &ConfigJson) -> Platform {
        Platform {
            os: c.os.clone().unwrap_or_else(|| "unknown".into()),
            arch: c.architecture.clone().unwrap_or_else(|| "unknown".into()),
            variant: c.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

impl From<&PlatformJson> for Platform {
    fn from(p: &PlatformJson) -> Platform {
        Platform {
            os: p.os.clone(),
            arch: p.architecture.clone(),
            variant: p.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A layer to read: the archive member, its stored digest and size when known, and the digest
/// of its uncompressed tar (from the config).
#[derive(Clone, Debug)]
struct LayerRef {
    member: String,
    digest: Option<BlobDigest>,
    size: Option<u64>,
    diff_id: BlobDigest,
}

impl LayerRef {
    fn label(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => self.member.clone(),
        }
    }
}

struct Selected {
    platform: String,
    manifest_digest: Option<String>,
    config: Vec<u8>,
    layers: Vec<LayerRef>,
}

/// An image found while walking an archive.
struct Candidate {
    /// Dedup key and label: the manifest digest, or the docker config member.
    key: String,
    label: String,
    /// From the descriptor, or from the config once loaded.
    platform: Option<Platform>,
    manifest_digest: Option<BlobDigest>,
    config_member: String,
    config_digest: Option<BlobDigest>,
    config_size: Option<u64>,
    config: Option<(Vec<u8>, ConfigJson)>,
    /// (member, stored digest, stored size)
    layers: Vec<(String, Option<BlobDigest>, Option<u64>)>,
}

fn parse_json<'a, T: Deserialize<'a>>(archive: &Archive, what: &str, data: &'a [u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| anyhow!("{}: {what}: bad JSON: {e}", archive.name))
}

fn load_config(archive: &Archive, c: &Candidate) -> Result<(Vec<u8>, ConfigJson)> {
    let what = format!("config of {}", c.label);
    let data = archive.read_json(
        &c.config_member,
        &what,
        c.config_digest.as_ref(),
        c.config_size,
    )?;
    let cfg: ConfigJson = parse_json(archive, &format!("{what} ({})", c.config_member), &data)?;
    Ok((data, cfg))
}

fn is_image_config_type(mt: Option<&str>) -> bool {
    matches!(mt, None | Some(MT_OCI_CONFIG) | Some(MT_DOCKER_CONFIG))
}

fn select_oci(archive: &Archive, arch: Arch) -> Result<Selected> {
    if let Some((mut r, size)) = archive.member("oci-layout")? {
        if size <= MAX_JSON_BLOB {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)
                .with_context(|| format!("{}: reading oci-layout", archive.name))?;
            #[derive(Deserialize)]
            struct LayoutJson {
                #[serde(rename = "imageLayoutVersion")]
                version: String,
            }
            let l: LayoutJson = parse_json(archive, "oci-layout", &buf)?;
            if !l.version.starts_with("1.") {
                bail!(
                    "{}: unsupported OCI image layout version {:?}",
                    archive.name,
                    l.version
                );
            }
        }
    }
    let data = archive.read_json("index.json", "index", None, None)?;
    let index: IndexJson = parse_json(archive, "index.json", &data)?;
    let mut walk = Walk {
        archive,
        arch,
        visited: BTreeSet::new(),
        candidates: Vec::new(),
    };
    walk.index(&index, "index.json", 0)?;
    let candidates = walk.candidates;
    choose(archive, arch, candidates)
}

struct Walk<'a> {
    archive: &'a Archive,
    arch: Arch,
    visited: BTreeSet<BlobDigest>,
    candidates: Vec<Candidate>,
}

impl Walk<'_> {
    fn index(&mut self, index: &IndexJson, at: &str, depth: usize) -> Result<()> {
        let name = &self.archive.name;
        for d in &index.manifests {
            let digest = BlobDigest::parse(&d.digest)
                .with_context(|| format!("{name}: a manifest descriptor in {at}"))?;
            let platform = d.platform.as_ref().map(Platform::from);
            if platform.as_ref().is_some_and(|p| p.is_unknown()) {
                // Attestations and other non-image manifests (buildx uses unknown/unknown).
                continue;
            }
            enum Kind {
                Index,
                Manifest,
                Sniff,
            }
            let kind = match d.media_type.as_deref() {
                Some(MT_OCI_INDEX) | Some(MT_DOCKER_LIST) => Kind::Index,
                Some(MT_OCI_MANIFEST) | Some(MT_DOCKER_MANIFEST) => Kind::Manifest,
                Some(_) => continue, // an artifact or an unsupported (e.g. schema 1) manifest
                None => Kind::Sniff,
            };
            if let (Kind::Manifest | Kind::Sniff, Some(p)) = (&kind, &platform) {
                if !p.matches(self.arch) {
                    // Record it without reading it: its blobs may not even be in the archive.
                    self.candidates.push(Candidate {
                        key: digest.to_string(),
                        label: format!("manifest {digest}"),
                        platform: Some(p.clone()),
                        manifest_digest: Some(digest),
                        config_member: String::new(),
                        config_digest: None,
                        config_size: None,
                        config: None,
                        layers: Vec::new(),
                    });
                    continue;
                }
            }
            if !self.visited.insert(digest.clone()) {
                continue;
            }
            if self.visited.len() > MAX_MANIFEST_BLOBS {
                bail!("{name}: more than {MAX_MANIFEST_BLOBS} manifests and indexes");
            }
            let data = self.archive.read_json(
                &digest.blob_path(),
                "manifest",
                Some(&digest),
                Some(d.size),
            )?;
            let what = format!("manifest {digest}");
            let is_index = match kind {
                Kind::Index => true,
                Kind::Manifest => false,
                Kind::Sniff => {
                    let s: SniffJson = parse_json(self.archive, &what, &data)?;
                    match (s.manifests.is_some(), s.config.is_some()) {
                        (true, _) => true,
                        (false, true) => false,
                        (false, false) => {
                            bail!("{name}: {what} is neither an image index nor an image manifest")
                        }
                    }
                }
            };
            if is_index {
                if depth + 1 > MAX_INDEX_DEPTH {
                    bail!("{name}: image indexes nest deeper than {MAX_INDEX_DEPTH} levels");
                }
                let inner: IndexJson = parse_json(self.archive, &format!("index {digest}"), &data)?;
                self.index(&inner, &format!("index {digest}"), depth + 1)?;
                continue;
            }
            let m: ManifestJson = parse_json(self.archive, &what, &data)?;
            if !is_image_config_type(m.config.media_type.as_deref()) {
                continue; // an artifact manifest, not an image
            }
            let config_digest = BlobDigest::parse(&m.config.digest)
                .with_context(|| format!("{name}: config descriptor of {what}"))?;
            let mut layers = Vec::with_capacity(m.layers.len());
            for (i, l) in m.layers.iter().enumerate() {
                let ld = BlobDigest::parse(&l.digest)
                    .with_context(|| format!("{name}: layer {} descriptor of {what}", i + 1))?;
                layers.push((ld.blob_path(), Some(ld), Some(l.size)));
            }
            self.candidates.push(Candidate {
                key: digest.to_string(),
                label: what,
                platform,
                manifest_digest: Some(digest),
                config_member: config_digest.blob_path(),
                config_digest: Some(config_digest),
                config_size: Some(m.config.size),
                config: None,
                layers,
            });
        }
        Ok(())
    }
}

fn select_docker(archive: &Archive, arch: Arch) -> Result<Selected> {
    let data = archive.read_json("manifest.json", "manifest", None, None)?;
    let entries: Vec<DockerEntryJson> = parse_json(archive, "manifest.json", &data)?;
    if entries.is_empty() {
        bail!("{}: manifest.json lists no images", archive.name);
    }
    let mut candidates = Vec::new();
    let mut platforms: BTreeMap<String, Platform> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let config_member = normalize_path(e.config.as_bytes()).map_err(|m| {
            anyhow!(
                "{}: manifest.json image {}: Config {m}",
                archive.name,
                i + 1
            )
        })?;
        let Some(config_digest) = BlobDigest::from_member_name(&config_member) else {
            bail!(
                "{}: manifest.json image {}: cannot verify config {config_member:?}: its name \
                 carries no sha256 digest",
                archive.name,
                i + 1
            );
        };
        let tags = e.repo_tags.clone().unwrap_or_default();
        let label = if tags.is_empty() {
            format!("image {}", i + 1)
        } else {
            format!("image {} ({})", i + 1, tags.join(", "))
        };
        let mut layers = Vec::with_capacity(e.layers.len());
        for l in &e.layers {
            let m = normalize_path(l.as_bytes())
                .map_err(|m| anyhow!("{}: manifest.json {label}: layer {m}", archive.name))?;
            let d = m
                .strip_prefix("blobs/sha256/")
                .and_then(|_| BlobDigest::from_member_name(&m));
            layers.push((m, d, None));
        }
        let mut c = Candidate {
            key: config_member.clone(),
            label,
            platform: None,
            manifest_digest: None,
            config_member,
            config_digest: Some(config_digest),
            config_size: None,
            config: None,
            layers,
        };
        // Each distinct config is read once, however often manifest.json names it.
        match platforms.get(&c.config_member) {
            Some(p) => c.platform = Some(p.clone()),
            None => {
                let loaded = load_config(archive, &c)?;
                let p = Platform::from_config(&loaded.1);
                platforms.insert(c.config_member.clone(), p.clone());
                c.platform = Some(p);
                c.config = Some(loaded);
            }
        }
        candidates.push(c);
    }
    choose(archive, arch, candidates)
}

/// Pick the one candidate for `arch`, load and check its config, and list its layers.
fn choose(archive: &Archive, arch: Arch, mut candidates: Vec<Candidate>) -> Result<Selected> {
    let name = &archive.name;
    // Candidates without a platform are matched by their config, each distinct one read once.
    let mut platforms: BTreeMap<(String, Option<u64>), Platform> = BTreeMap::new();
    for c in candidates.iter_mut().filter(|c| c.platform.is_none()) {
        let key = (c.config_member.clone(), c.config_size);
        if let Some(p) = platforms.get(&key) {
            c.platform = Some(p.clone());
            continue;
        }
        let loaded = load_config(archive, c)?;
        let p = Platform::from_config(&loaded.1);
        platforms.insert(key, p.clone());
        c.platform = Some(p);
        c.config = Some(loaded);
    }
    let mut matching: Vec<Candidate> = Vec::new();
    let mut held: Vec<String> = Vec::new();
    for c in candidates {
        let Some(p) = &c.platform else { continue };
        let shown = p.to_string();
        if !held.contains(&shown) {
            held.push(shown);
        }
        if p.matches(arch) && !matching.iter().any(|m| m.key == c.key) {
            matching.push(c);
        }
    }
    let wanted = format!("linux/{arch}");
    let mut chosen = match matching.len() {
        0 if held.is_empty() => bail!("no {wanted} image in {name}: it holds no images"),
        0 => bail!("no {wanted} image in {name}: it holds {}", held.join(", ")),
        1 => matching.remove(0),
        n => bail!(
            "{name} holds {n} {wanted} images ({}); it must hold only one",
            matching
                .iter()
                .map(|c| c.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let (config, cfg) = match chosen.config.take() {
        Some(loaded) => loaded,
        None => load_config(archive, &chosen)?,
    };
    let label = &chosen.label;
    let from_cfg = Platform::from_config(&cfg);
    if (cfg.os.is_some() || cfg.architecture.is_some()) && !from_cfg.matches(arch) {
        bail!(
            "{name}: {label} is listed as {} but its config says {from_cfg}",
            chosen
                .platform
                .as_ref()
                .map_or_else(|| wanted.clone(), |p| p.to_string())
        );
    }
    let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if chosen.layers.len() > MAX_LAYERS {
        bail!(
            "{name}: {label} has {} layers, more than the {MAX_LAYERS} edgeimage reads \
             (limits: README, \"Input limits\")",
            chosen.layers.len()
        );
    }
    if diff_ids.len() != chosen.layers.len() {
        bail!(
            "{name}: {label} has {} layers but its config lists {} rootfs.diff_ids",
            chosen.layers.len(),
            diff_ids.len()
        );
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (i, ((member, digest, size), diff_id)) in
        chosen.layers.into_iter().zip(&diff_ids).enumerate()
    {
        let diff_id = BlobDigest::parse(diff_id)
            .with_context(|| format!("{name}: {label}: rootfs.diff_ids[{i}]"))?;
        layers.push(LayerRef {
            member,
            digest,
            size,
            diff_id,
        });
    }
    Ok(Selected {
        platform: chosen.platform.map_or(wanted, |p| p.to_string()),
        manifest_digest: chosen.manifest_digest.map(|d| d.to_string()),
        config,
        layers,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading layers
// ---------------------------------------------------------------------------------------------

/// zstd's window is at most 2^27 bytes (128 MiB), zstd's own default ceiling: a frame asking
/// for more is refused instead of making the decoder allocate it.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

type Buffered = BufReader<Box<dyn Read>>;

enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Detect a layer's compression from its first bytes (up to 512).
fn detect_compression(head: &[u8]) -> std::result::Result<Compression, String> {
    match compression_name(head) {
        Some("gzip") => return Ok(Compression::Gzip),
        Some("zstd") => return Ok(Compression::Zstd),
        Some(other) => return Err(format!("unsupported compression: {other}")),
        None => {}
    }
    if head.is_empty() {
        return Ok(Compression::None); // an empty tar stream
    }
    if head.len() == 512 && (head.iter().all(|&b| b == 0) || is_tar_header(head)) {
        return Ok(Compression::None);
    }
    let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "unknown compression (neither gzip, zstd nor a tar header; first bytes {})",
        shown.join(" ")
    ))
}

/// Whether a block (512 bytes or more) starts with a tar header with a valid checksum.
pub(crate) fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..512])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * 32;
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| !matches!(c, ' ' | '\0'))
        .collect();
    !digits.is_empty() && u32::from_str_radix(&digits, 8).ok() == Some(sum)
}

/// A reader that fails as soon as more than `limit` bytes came through it (a decompressor's
/// output): decompression stops at the bound, whatever the compressed data says.
pub(crate) struct Capped<R> {
    inner: R,
    count: u64,
    limit: u64,
    over: bool,
}

impl<R> Capped<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Capped<R> {
        Capped {
            inner,
            count: 0,
            limit,
            over: false,
        }
    }

    /// Whether a read went past the limit.
    pub(crate) fn over(&self) -> bool {
        self.over
    }

    /// Bytes read through it so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte past the limit, to tell "exactly the limit" from "more".
        let room = (self.limit + 1).saturating_sub(self.count);
        let n = (buf.len() as u64).min(room) as usize;
        if n == 0 && !buf.is_empty() {
            self.over = true;
            return Err(io::Error::other("the decompression limit was reached"));
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.count += got as u64;
        if self.count > self.limit {
            self.over = true;
            return Err(io::Error::other("the decompression limit was reached"));
        }
        Ok(got)
    }
}

/// What the pass over a layer blob before decompression found.
#[derive(Clone, Copy, Debug)]
struct Checked {
    compression: Compression,
    stored: u64,
}

/// What the layers of one image have used so far of the image-wide limits.
#[derive(Default)]
struct Budget {
    totals: walk::Totals,
    /// Uncompressed bytes of the layers read so far ([`MAX_IMAGE_UNCOMPRESSED`]).
    uncompressed: u64,
    /// Bytes written to temporary files ([`MAX_KEPT_TOTAL`]).
    kept: u64,
}

/// A layer's changes, applied to the tree only after the layer checked out.
#[derive(Default)]
struct LayerChanges {
    /// Paths deleted (with everything below them) from lower layers.
    whiteouts: BTreeSet<String>,
    /// Directories whose lower-layer contents are cleared.
    opaques: BTreeSet<String>,
    /// Entries of this layer: is it a directory, and the entry if the filter kept it.
    upper: BTreeMap<String, (bool, Option<TreeEntry>)>,
}

fn remove_below(tree: &mut BTreeMap<String, TreeEntry>, dir: &str) {
    let keys: Vec<String> = if dir.is_empty() {
        tree.keys().cloned().collect()
    } else {
        let prefix = format!("{dir}/");
        tree.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    };
    for k in keys {
        tree.remove(&k);
    }
}

/// The length of the deepest directory that is an ancestor-or-self of both `a` and `b`
/// (normalized directory paths; `""` is the root, length 0).
fn common_dir_len(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let boundary = |s: &[u8]| n == s.len() || s[n] == b'/';
    if boundary(a) && boundary(b) {
        n
    } else {
        a[..n].iter().rposition(|&c| c == b'/').unwrap_or(0)
    }
}

impl LayerChanges {
    fn apply(self, tree: &mut BTreeMap<String, TreeEntry>) {
        for w in &self.whiteouts {
            tree.remove(w);
            remove_below(tree, w);
        }
        for o in &self.opaques {
            remove_below(tree, o);
        }
        // The parent of the entry handled last: it and its ancestors hold no non-directory
        // (inserting an entry below it cannot change that), so the ancestors an entry shares
        // with it need no second look. Without this, a deep tree costs depth × length per
        // entry.
        let mut clean = String::new();
        for (path, (is_dir, entry)) in self.upper {
            // A non-directory hides whatever was below the lower path; a directory replaces
            // a lower non-directory, here and at every ancestor.
            if is_dir {
                if tree
                    .get(&path)
                    .is_some_and(|e| !matches!(e.kind, EntryKind::Dir))
                {
                    tree.remove(&path);
                }
            } else {
                tree.remove(&path);
                remove_below(tree, &path);
            }
            let parent = parent_of(&path);
            let shared = common_dir_len(parent, &clean);
            let mut anc = parent;
            while anc.len() > shared {
                if tree
                    .get(anc)
                    .is_some_and(|e| !matches!(e.kind, EntryKind::Dir))
                {
                    tree.remove(anc);
                }
                anc = parent_of(anc);
            }
            clean.clear();
            clean.push_str(parent);
            if let Some(e) = entry {
                tree.insert(path, e);
            }
        }
    }
}

impl OciImage {
    /// A layer's blob as a reader, and its stored size; `label` names the layer.
    fn blob(&self, label: &str, layer: &LayerRef) -> Result<(Box<dyn Read>, u64)> {
        match self
            .archive
            .member(&layer.member)
            .context(label.to_string())?
        {
            Some(b) => Ok(b),
            None => bail!(
                "{label}: listed but its blob {} is absent from the archive",
                layer.member
            ),
        }
    }

    fn layer_label(&self, index: usize, layer: &LayerRef) -> String {
        format!(
            "{}: layer {}/{} ({})",
            self.archive.name,
            index + 1,
            self.layers.len(),
            layer.label()
        )
    }

    /// Everything about a layer blob that is checked without decompressing it: present, the
    /// size and digest of its descriptor, a compression edgeimage reads, and for a plain tar
    /// its diff_id (which is then the digest of the blob itself). One streaming pass.
    fn check_blob(&self, index: usize, layer: &LayerRef) -> Result<Checked> {
        let label = self.layer_label(index, layer);
        let (reader, stored) = self.blob(&label, layer)?;
        if let Some(size) = layer.size {
            if size != stored {
                bail!("{label}: blob is {stored} bytes but its descriptor says {size}");
            }
        }
        let mut raw = HashingReader::new(reader);
        let mut head = vec![0u8; 512];
        let n = read_up_to(&mut raw, &mut head).with_context(|| format!("{label}: reading"))?;
        head.truncate(n);
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            match raw.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(anyhow!("{label}: reading: {e}")),
            }
        }
        if raw.count != stored {
            bail!(
                "{label}: read {} bytes but the archive lists {stored}: did the file change \
                 while it was read?",
                raw.count
            );
        }
        let got = BlobDigest::from_hasher(raw.sha);
        if let Some(expected) = &layer.digest {
            if &got != expected {
                bail!("{label}: digest mismatch: expected {expected}, got {got}");
            }
        }
        let compression = detect_compression(&head).map_err(|msg| anyhow!("{label}: {msg}"))?;
        if compression == Compression::None && got != layer.diff_id {
            bail!(
                "{label}: uncompressed digest mismatch: the config's rootfs.diff_ids says {}, \
                 got {got}",
                layer.diff_id
            );
        }
        Ok(Checked {
            compression,
            stored,
        })
    }

    fn read_layer(
        &self,
        index: usize,
        layer: &LayerRef,
        checked: Checked,
        filter: &dyn Fn(&str) -> bool,
        lower: &BTreeMap<String, TreeEntry>,
        budget: &mut Budget,
    ) -> Result<LayerChanges> {
        let label = self.layer_label(index, layer);
        let (reader, _) = self.blob(&label, layer)?;
        let human = crate::progress::human_bytes;
        let stored = checked.stored;
        let left = MAX_IMAGE_UNCOMPRESSED.saturating_sub(budget.uncompressed);
        let (limit, end_name) = match checked.compression {
            Compression::None => (stored, format!("the end of the layer ({stored} bytes)")),
            _ => {
                let limit = expansion_limit(stored);
                (
                    limit,
                    format!(
                        "{}, the most a layer of {} may decompress to (max({}, {MAX_EXPANSION_RATIO} \
                         × its size), at most {})",
                        human(limit),
                        human(stored),
                        human(MIN_EXPANSION),
                        human(MAX_EXPANSION)
                    ),
                )
            }
        };
        let (limit, end_name) = if limit > left {
            (
                left,
                format!(
                    "{}, what is left of the {} all layers of an image may decompress to",
                    human(left),
                    human(MAX_IMAGE_UNCOMPRESSED)
                ),
            )
        } else {
            (limit, end_name)
        };
        let buffered: Buffered = BufReader::with_capacity(BUF_SIZE, reader);
        let decoder = match checked.compression {
            Compression::None => Decoder::Plain(buffered),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| anyhow!("{label}: cannot start the zstd decoder: {e}"))?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| anyhow!("{label}: cannot set up the zstd decoder: {e}"))?;
                Decoder::Zstd(d)
            }
        };
        let limits = walk::Limits {
            end: limit,
            end_name: end_name.clone(),
            depth: None,
        };
        let mut ar = tar::Archive::new(HashingReader::new(Capped::new(decoder, limit)));
        let walked = ar
            .entries()
            .map_err(|e| anyhow!("{label}: not a tar stream: {}", walk::clean(&e.to_string())))
            .and_then(|entries| read_entries(entries, &label, &limits, budget, filter, lower));
        let mut uncompressed = ar.into_inner();
        // Drain what follows the end-of-archive marker, so the digest covers all of it.
        let walked = walked.and_then(|changes| {
            io::copy(&mut uncompressed, &mut io::sink())
                .map(|_| changes)
                .map_err(|e| {
                    anyhow!(
                        "{label}: corrupt data after the tar stream: {}",
                        walk::clean(&e.to_string())
                    )
                })
        });
        budget.uncompressed += uncompressed.inner.count();
        if uncompressed.inner.over() {
            bail!(
                "{label}: decompresses past {end_name}: refused, nothing of it is used \
                 (limits: README, \"Input limits\")"
            );
        }
        let changes = walked?;
        let got = BlobDigest::from_hasher(uncompressed.sha);
        if got != layer.diff_id {
            bail!(
                "{label}: uncompressed digest mismatch: the config's rootfs.diff_ids says {}, \
                 got {got}",
                layer.diff_id
            );
        }
        Ok(changes)
    }
}

use crate::layout::read_up_to;

/// Copy an entry's `size` bytes to a new anonymous temporary file.
fn copy_to_temp(entry: &mut impl Read, size: u64, at: &str) -> Result<std::fs::File> {
    use std::io::Write;
    let mut tmp = tempfile::tempfile().map_err(|e| {
        anyhow!(
            "{at}: cannot create a temporary file: {e}; set TMPDIR to a writable directory \
             with room"
        )
    })?;
    let mut buf = vec![0u8; BUF_SIZE];
    let mut copied = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("{at}: reading: {}", walk::clean(&e.to_string())),
        };
        tmp.write_all(&buf[..n]).map_err(|e| {
            anyhow!("{at}: writing a temporary file: {e}; set TMPDIR to a directory with room")
        })?;
        copied += n as u64;
    }
    if copied != size {
        bail!("{at}: truncated ({copied} of {size} bytes)");
    }
    Ok(tmp)
}

/// Walk one layer's tar entries into a [`LayerChanges`].
fn read_entries<'a, R: Read + 'a>(
    entries: tar::Entries<'a, R>,
    label: &str,
    limits: &walk::Limits,
    budget: &mut Budget,
    filter: &dyn Fn(&str) -> bool,
    lower: &BTreeMap<String, TreeEntry>,
) -> Result<LayerChanges> {
    let human = crate::progress::human_bytes;
    let mut changes = LayerChanges::default();
    let kept_total = &mut budget.kept;
    walk::walk(entries, label, limits, &mut budget.totals, |m, entry| {
        let i = m.index;
        let path = normalize_path(&m.path).map_err(|msg| anyhow!("{label}: entry {i}: {msg}"))?;
        if path.is_empty() {
            return Ok(()); // the root directory itself
        }
        let at = format!("{label}: entry {i} ({})", walk::shown(path.as_bytes()));
        let ctx =
            |what: &str, e: io::Error| anyhow!("{at}: {what}: {}", walk::clean(&e.to_string()));
        let header = entry.header();
        let entry_type = header.entry_type();

        // Whiteouts.
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => ("", path.as_str()),
        };
        if base == ".wh..wh..opq" {
            changes.opaques.insert(dir.to_string());
            return Ok(());
        }
        if base.starts_with(".wh..wh.") {
            return Ok(()); // other AUFS metadata
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                bail!("{at}: malformed whiteout");
            }
            let target = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            changes.whiteouts.insert(target);
            return Ok(());
        }

        let mode = header.mode().map_err(|e| ctx("bad mode", e))? & 0o7777;
        let uid = match m.uid {
            Some(u) => u,
            None => header.uid().map_err(|e| ctx("bad uid", e))?,
        };
        let gid = match m.gid {
            Some(g) => g,
            None => header.gid().map_err(|e| ctx("bad gid", e))?,
        };
        let mtime = match m.mtime {
            Some(t) => t,
            None => header.mtime().map_err(|e| ctx("bad mtime", e))?,
        };
        let keep = filter(&path);
        let meta = |kind| TreeEntry {
            kind,
            mode,
            uid,
            gid,
            mtime,
        };
        use tar::EntryType as T;
        let (is_dir, kept) = match entry_type {
            T::Directory => (true, keep.then(|| meta(EntryKind::Dir))),
            T::Regular | T::Continuous => {
                let kept = if keep {
                    let size = entry.size();
                    if size > MAX_KEPT_FILE {
                        bail!(
                            "{at}: a file of {}, more than the {} limit for a file kept from an \
                             image (limits: README, \"Input limits\")",
                            human(size),
                            human(MAX_KEPT_FILE)
                        );
                    }
                    if *kept_total + size > MAX_KEPT_TOTAL {
                        bail!(
                            "{at}: the files kept from the image would take more than {} of \
                             temporary space (limits: README, \"Input limits\")",
                            human(MAX_KEPT_TOTAL)
                        );
                    }
                    *kept_total += size;
                    let tmp = copy_to_temp(entry, size, &at)?;
                    let content = SharedFile::new(tmp, format!("{label}: /{path}"));
                    Some(meta(EntryKind::File { size, content }))
                } else {
                    None
                };
                (false, kept)
            }
            T::Symlink => {
                let target = m.link.clone().unwrap_or_default();
                let target = String::from_utf8(target)
                    .map_err(|_| anyhow!("{at}: symlink target is not valid UTF-8"))?;
                (false, keep.then(|| meta(EntryKind::Symlink(target))))
            }
            T::Link => {
                let target = m.link.as_deref().unwrap_or_default();
                let target = normalize_path(target)
                    .map_err(|msg| anyhow!("{at}: hard link target {msg}"))?;
                let kept = if keep {
                    let found = match changes.upper.get(&target) {
                        Some((_, e)) => e.as_ref(),
                        None => lower.get(&target),
                    };
                    let shown_target = walk::shown(target.as_bytes());
                    match found {
                        Some(t) if matches!(t.kind, EntryKind::Dir) => {
                            bail!("{at}: hard link to directory {shown_target}")
                        }
                        Some(t) => Some(t.clone()),
                        None if filter(&target) => bail!(
                            "{at}: hard link target {shown_target} is not in this or an earlier \
                             layer"
                        ),
                        None => Some(meta(EntryKind::Hardlink(target))),
                    }
                } else {
                    None
                };
                (false, kept)
            }
            T::Char => (
                false,
                keep.then(|| meta(EntryKind::Other("character device"))),
            ),
            T::Block => (false, keep.then(|| meta(EntryKind::Other("block device")))),
            T::Fifo => (false, keep.then(|| meta(EntryKind::Other("fifo")))),
            T::GNUSparse => bail!("{at}: sparse files are not supported"),
            other => bail!(
                "{at}: unsupported tar entry type {:?}",
                char::from(other.as_byte())
            ),
        };
        changes.upper.insert(path, (is_dir, kept));
        Ok(())
    })?;
    Ok(changes)
}

#[cfg(test)]
mod tests;
