//! The build manifest: a versioned JSON document describing one build, byte for byte, that
//! `edgeimage verify` checks images, compressed artifacts and written disks against.
//!
//! # Canonical form
//!
//! A manifest is serialized one way only: UTF-8 JSON, no whitespace, object keys sorted by
//! their bytes, integers only (no floats), strings escaped as `serde_json` escapes them. The
//! signature covers those bytes; a reader re-serializes what it parsed and refuses a document
//! that is not in canonical form, so two manifests with the same meaning never differ in bytes.
//!
//! # What is described
//!
//! - `image`: size and chunked SHA-256 (`chunk_sha256`, see [`ChunkDigest`]) of the whole image
//!   **with the manifest partition read as zeros** (that partition carries this document, so it
//!   cannot be described by it). Manifests of earlier releases carry a plain `sha256` instead,
//!   which is still read.
//! - `partitions`: every partition but the manifest partition: number, label, type, GUID,
//!   offset, size and SHA-256 of all its bytes.
//! - `manifest_partition`: where the manifest partition is (not its content).
//! - `block_map`: ranges of 4096-byte blocks the builder wrote, with the SHA-256 of each
//!   range's bytes; taken from the composed layout (what was written), never from the
//!   filesystem. Ranges do not cross partition boundaries and span at most
//!   [`MAX_RANGE_BLOCKS`] blocks, so a mismatch is located precisely. Blocks outside every
//!   range are don't-care: on a written disk they hold whatever was there before.
//! - `artifact`: the compressed file (`<name>.raw.zst`): size and SHA-256. The copy of the
//!   manifest inside the image has no `artifact` (the file contains that copy).
//! - `provenance`: profile digest, every input asset, extension and the schematic (digests),
//!   the machine configuration's digest (never its content), edgeimage's version,
//!   `SOURCE_DATE_EPOCH`.
//! - `build_number`: the profile's release counter; `verify --min-build` refuses older ones.
//! - `slots` (only when the profile has `[[personalize]]` entries): the personalization slots,
//!   parts of the image a flasher writes per device (see [`crate::personalize`]). A slot's
//!   partition stays in `partitions` with its base digest and `"slot": true`, but the block map
//!   does not cover it, and `image.chunk_sha256` reads it as zeros like the manifest partition.
//!   `meta_base` (only with a META slot) holds the SHA-256 of every value the build wrote into
//!   META, which `verify` requires unchanged while the slot keys may hold anything.
//!
//! # The manifest partition
//!
//! [`encode_partition`] lays out the partition: a header of text lines, then the manifest
//! bytes, then the minisign signature text (empty when the build is unsigned), then zeros:
//!
//! ```text
//! edgeimage signed manifest 1\n
//! manifest <bytes>\n
//! signature <bytes>\n
//! \n
//! <manifest><signature>
//! ```

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Blocks `first..=last` and the SHA-256 of their bytes: the same entry as a `.bmap` range.
pub use super::bmap::Range as BlockRange;
use super::bmap::{byte_span, is_sha256_hex};

/// `format` of every manifest.
pub const FORMAT: &str = "edgeimage-manifest";
/// The document version this edgeimage writes and reads.
pub const VERSION: u32 = 1;
/// Block size of the block map.
pub const BLOCK_SIZE: u64 = 4096;
/// Largest range in the block map, in blocks (4 MiB).
pub const MAX_RANGE_BLOCKS: u64 = 1024;

/// Most `verify` reads of a manifest partition (the partition edgeimage writes is 1 MiB).
pub const MAX_PARTITION_READ: u64 = 4 << 20;

/// The first line of the manifest partition.
pub const PARTITION_MAGIC: &str = "edgeimage signed manifest 1\n";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The profile's name; outputs are `<name>.*`.
    pub name: String,
    pub build_number: u64,
    pub talos_version: String,
    pub arch: String,
    pub image: ImageInfo,
    pub partitions: Vec<PartitionInfo>,
    pub manifest_partition: crate::compose::Placed,
    pub block_map: BlockMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    pub provenance: Provenance,
    /// Personalization slots (absent from manifests of images without any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<Slot>,
    /// The base META values (key and SHA-256), present when a slot is a META key and the build
    /// wrote any META value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta_base: Vec<MetaBase>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    pub size: u64,
    /// [`ChunkDigest`] of the image with the manifest partition read as zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_sha256: Option<String>,
    /// Plain SHA-256 of the image with the manifest partition read as zeros, as manifests of
    /// earlier releases carry it (read, never written: hashing every byte of a mostly empty
    /// disk made build time grow with the disk's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// GPT disk GUID.
    pub disk_guid: String,
    /// The logical block size the image is made for; absent when 512 (manifests of 512-byte
    /// images stay as they were).
    #[serde(
        default = "default_sector_size",
        skip_serializing_if = "is_default_sector_size"
    )]
    pub sector_size: u64,
}

fn default_sector_size() -> u64 {
    512
}

fn is_default_sector_size(n: &u64) -> bool {
    *n == 512
}

impl ImageInfo {
    /// The image digest the manifest carries, as `<algorithm>:<hex>`.
    pub fn digest(&self) -> Option<String> {
        match (&self.chunk_sha256, &self.sha256) {
            (Some(c), _) => Some(format!("{CHUNK_DIGEST}:{c}")),
            (None, Some(s)) => Some(format!("sha256:{s}")),
            (None, None) => None,
        }
    }
}

/// The name of [`ChunkDigest`] where a digest is written with its algorithm.
pub const CHUNK_DIGEST: &str = "sha256-1m";
/// The chunk size of [`ChunkDigest`].
pub const DIGEST_CHUNK: usize = 1 << 20;

/// `image.chunk_sha256`: the SHA-256 of the sequence of SHA-256 digests (32 bytes each) of the
/// image's consecutive 1 MiB chunks, the last one possibly shorter. A chunk of zeros has one
/// digest, computed once, so the cost follows the bytes written, not the disk's size; to
/// recompute it by hand: `split -b 1M` the decompressed image, `sha256sum` each piece, and
/// hash the concatenated binary digests.
pub struct ChunkDigest {
    outer: sha2::Sha256,
    zero: Option<[u8; 32]>,
}

impl Default for ChunkDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDigest {
    pub fn new() -> Self {
        ChunkDigest {
            outer: sha2::Sha256::default(),
            zero: None,
        }
    }

    /// Add the digest of the next chunk.
    pub fn leaf(&mut self, digest: [u8; 32]) {
        sha2::Digest::update(&mut self.outer, digest);
    }

    /// Add the next chunk.
    pub fn chunk(&mut self, bytes: &[u8]) {
        self.leaf(sha2::Sha256::digest(bytes).into());
    }

    /// Add a whole chunk of zeros.
    pub fn zero_chunk(&mut self) {
        let d = *self
            .zero
            .get_or_insert_with(|| sha2::Sha256::digest(vec![0u8; DIGEST_CHUNK]).into());
        self.leaf(d);
    }

    pub fn finish(self) -> String {
        hex::encode(sha2::Digest::finalize(self.outer))
    }

    /// The digest of `bytes`, all in memory (tests, small images).
    pub fn of(bytes: &[u8]) -> String {
        let mut d = ChunkDigest::new();
        for c in bytes.chunks(DIGEST_CHUNK) {
            d.chunk(c);
        }
        d.finish()
    }
}

use sha2::Digest as _;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    /// SHA-256 of all `size` bytes (for a slot partition: of the base image's content).
    pub sha256: String,
    /// The partition holds a personalization slot: its bytes differ per device, the block map
    /// does not cover it, and `image.chunk_sha256` reads it as zeros.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slot: bool,
}

/// What a personalization slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    /// A Talos META key (`meta_key`) in the `META` partition.
    Meta,
    /// `config.yaml` on the `metal-iso` partition.
    MetalIso,
}

impl SlotKind {
    /// The name used in the manifest and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotKind::Meta => "meta",
            SlotKind::MetalIso => "metal-iso",
        }
    }
}

/// A personalization slot: part of the image a flasher writes per device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// The profile's `[[personalize]] name`.
    pub name: String,
    pub kind: SlotKind,
    /// The META key (META slots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_key: Option<u8>,
    /// The partition whose content the slot changes (also listed in `partitions`).
    pub partition: SlotPartition,
    /// The value is a secret: flashers and readers never show it.
    pub secret: bool,
    /// SHA-256 of the template the value is rendered from.
    pub template_sha256: String,
}

impl Slot {
    /// `META 0x0a` or `metal-iso`, for messages.
    pub fn place(&self) -> String {
        match (self.kind, self.meta_key) {
            (SlotKind::Meta, Some(k)) => format!("META 0x{k:02x}"),
            (kind, _) => kind.as_str().to_string(),
        }
    }
}

/// Where a slot's partition is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotPartition {
    pub number: u32,
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

/// One META value the build wrote, by its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaBase {
    pub key: u8,
    /// SHA-256 of the value's bytes.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockMap {
    pub block_size: u64,
    pub mapped_blocks: u64,
    pub ranges: Vec<BlockRange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name (no directory).
    pub file: String,
    pub compression: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub edgeimage_version: String,
    pub source_date_epoch: u64,
    /// SHA-256 of the profile file.
    pub profile_sha256: String,
    pub assets: Vec<InputDigest>,
    pub extensions: Vec<ExtensionDigest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schematic: Option<SchematicDigest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<ConfigDigest>,
    /// The images of the `IMAGECACHE` partition, in profile order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_cache: Vec<CachedImageDigest>,
    /// The Talos installer image made for upgrades (`<name>-installer-image.tar`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_image: Option<UpgradeImageDigest>,
}

/// The installer image for upgrades, as written next to the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeImageDigest {
    /// File name (no directory).
    pub file: String,
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The reference upgrades name.
    pub reference: String,
    /// Digest of the image's manifest.
    pub manifest_digest: String,
    /// Digest of the installer-base image it was made from, as pinned.
    pub base_digest: String,
}

/// One image of the image cache partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedImageDigest {
    /// The reference the node asks for.
    pub reference: String,
    /// Digest of the manifest or index that reference names.
    pub digest: String,
    /// `linux/amd64` or `linux/arm64`.
    pub platform: String,
    /// Bytes of its blobs.
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDigest {
    /// The profile field (`kernel`, `initramfs`, …).
    pub field: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionDigest {
    pub name: String,
    pub version: String,
    /// Digest of the input as pinned in the profile (virtual layers: of their content).
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchematicDigest {
    /// The Image Factory schematic ID.
    pub id: String,
}

/// The machine configuration: its digest and how it is delivered, never its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDigest {
    pub delivery: String,
    pub machine_type: String,
    pub sha256: String,
}

impl Manifest {
    /// The canonical bytes (see the module documentation).
    pub fn to_canonical(&self) -> Result<Vec<u8>> {
        let v = serde_json::to_value(self).context("serializing the manifest")?;
        let mut out = Vec::with_capacity(4096);
        write_canonical(&v, &mut out)?;
        Ok(out)
    }

    /// Parse manifest bytes: JSON of this format and version, in canonical form, with a
    /// consistent block map. `what` names the source in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        // Format and version first, so a newer document gets a clear message rather than a
        // complaint about a field this version does not know.
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| anyhow!("{what}: not a JSON manifest: {e}"))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => bail!(
                "{what}: not an edgeimage manifest (format is {other:?}, expected {FORMAT:?})"
            ),
        }
        match v.get("version").and_then(|f| f.as_u64()) {
            Some(n) if n == VERSION as u64 => {}
            other => bail!(
                "{what}: manifest version {other:?}; this edgeimage reads version {VERSION}: use the edgeimage release that made it or a newer one"
            ),
        }
        let m: Manifest =
            serde_json::from_value(v).map_err(|e| anyhow!("{what}: malformed manifest: {e}"))?;
        if m.to_canonical()? != bytes {
            bail!(
                "{what}: the manifest is not in canonical form (re-formatted or edited by hand); its signature would not cover what it says"
            );
        }
        m.check().map_err(|e| anyhow!("{what}: {e:#}"))?;
        Ok(m)
    }

    /// Consistency of what the manifest says (not of the target): block map inside the image,
    /// sorted, not overlapping, counted right; partitions inside the image.
    pub fn check(&self) -> Result<()> {
        match (&self.image.chunk_sha256, &self.image.sha256) {
            (Some(d), None) | (None, Some(d)) if is_sha256_hex(d) => {}
            _ => bail!("image: needs one of chunk_sha256 or sha256, a SHA-256 in lowercase hex"),
        }
        let bm = &self.block_map;
        if bm.block_size != BLOCK_SIZE {
            bail!(
                "block_map.block_size is {}, expected {BLOCK_SIZE}",
                bm.block_size
            );
        }
        let blocks = self.image.size.div_ceil(BLOCK_SIZE);
        let mut next = 0u64;
        let mut count = 0u64;
        for (i, r) in bm.ranges.iter().enumerate() {
            if r.last.saturating_sub(r.first) >= MAX_RANGE_BLOCKS {
                bail!(
                    "block_map.ranges[{i}] ({}-{}) spans more than {MAX_RANGE_BLOCKS} blocks",
                    r.first,
                    r.last
                );
            }
            if r.first < next || r.last < r.first || r.last >= blocks {
                bail!(
                    "block_map.ranges[{i}] ({}-{}) is out of order, overlapping or past the image's {blocks} blocks",
                    r.first,
                    r.last
                );
            }
            if !is_sha256_hex(&r.sha256) {
                bail!("block_map.ranges[{i}].sha256 is not a SHA-256 in lowercase hex");
            }
            count += r.last - r.first + 1;
            next = r.last + 1;
        }
        if count != bm.mapped_blocks {
            bail!(
                "block_map.mapped_blocks is {} but the ranges hold {count} blocks",
                bm.mapped_blocks
            );
        }
        let mp = &self.manifest_partition;
        for (what, off, size) in std::iter::once(("manifest partition", mp.offset, mp.size)).chain(
            self.partitions
                .iter()
                .map(|p| ("a partition", p.offset, p.size)),
        ) {
            if off
                .checked_add(size)
                .is_none_or(|end| end > self.image.size)
            {
                bail!("{what} at byte {off} of {size} bytes lies past the image's end");
            }
        }
        self.check_slots()
    }

    /// Consistency of the personalization slots: each names a partition of `partitions`
    /// marked `slot` (META slots the `META` partition, the metal-iso slot the `metal-iso`
    /// one), names and META keys are unique and allowed, no block-map range reaches into a
    /// slot partition, and `meta_base` is sorted, only present with a META slot, and holds
    /// no slot key.
    fn check_slots(&self) -> Result<()> {
        use crate::config::delivery::METAL_ISO_LABEL;
        use crate::format::meta::META_LABEL;
        use crate::personalize::{self, MAX_SLOT_PARTITION};
        for (i, s) in self.slots.iter().enumerate() {
            let f = format!("slots[{i}]");
            if !personalize::valid_name(&s.name) {
                bail!("{f}.name {:?} is not a slot name", s.name);
            }
            if self.slots[..i].iter().any(|o| o.name == s.name) {
                bail!("{f}.name {:?} is used twice", s.name);
            }
            let label = match (s.kind, s.meta_key) {
                (SlotKind::Meta, Some(k)) if personalize::is_meta_key(k) => {
                    if self.slots[..i].iter().any(|o| o.meta_key == Some(k)) {
                        bail!("{f}.meta_key 0x{k:02x} belongs to two slots");
                    }
                    META_LABEL
                }
                (SlotKind::Meta, k) => bail!("{f}.meta_key {k:?} is not a personalization key"),
                (SlotKind::MetalIso, None) => {
                    if self.slots[..i].iter().any(|o| o.kind == SlotKind::MetalIso) {
                        bail!("{f}: a second metal-iso slot");
                    }
                    METAL_ISO_LABEL
                }
                (SlotKind::MetalIso, Some(_)) => bail!("{f}: a metal-iso slot has no meta_key"),
            };
            if !is_sha256_hex(&s.template_sha256) {
                bail!("{f}.template_sha256 is not a SHA-256 in lowercase hex");
            }
            let sp = &s.partition;
            let Some(p) = self.partitions.iter().find(|p| p.number == sp.number) else {
                bail!("{f}.partition: no partition {} in partitions", sp.number);
            };
            if (p.label.as_str(), p.offset, p.size) != (sp.label.as_str(), sp.offset, sp.size)
                || p.label != label
                || !p.slot
            {
                bail!(
                    "{f}.partition does not match partition {} ({}) of partitions, or that is not a slot partition labelled {label}",
                    p.number,
                    p.label
                );
            }
            if p.size == 0 || p.size > MAX_SLOT_PARTITION {
                bail!(
                    "{f}.partition is {} bytes; slot partitions hold 1 to {MAX_SLOT_PARTITION}",
                    p.size
                );
            }
            if p.guid.parse::<uuid::Uuid>().is_err() {
                bail!(
                    "partition {} ({}): guid {:?} is not a GUID",
                    p.number,
                    p.label,
                    p.guid
                );
            }
        }
        for p in self.partitions.iter().filter(|p| p.slot) {
            if !self.slots.iter().any(|s| s.partition.number == p.number) {
                bail!(
                    "partition {} ({}) is marked slot, but no slot names it",
                    p.number,
                    p.label
                );
            }
            let end = p.offset + p.size;
            if let Some((i, r)) = self.block_map.ranges.iter().enumerate().find(|(_, r)| {
                let (a, b) = self.byte_range(r);
                a < end && b > p.offset
            }) {
                bail!(
                    "block_map.ranges[{i}] ({}-{}) reaches into slot partition {} ({}), whose bytes differ per device",
                    r.first,
                    r.last,
                    p.number,
                    p.label
                );
            }
        }
        if !self.meta_base.is_empty() && !self.slots.iter().any(|s| s.kind == SlotKind::Meta) {
            bail!("meta_base is given, but no slot is a META key");
        }
        for (i, b) in self.meta_base.iter().enumerate() {
            if i > 0 && self.meta_base[i - 1].key >= b.key {
                bail!("meta_base[{i}]: keys are not in ascending order or repeat");
            }
            if !is_sha256_hex(&b.sha256) {
                bail!("meta_base[{i}].sha256 is not a SHA-256 in lowercase hex");
            }
            if self.slots.iter().any(|s| s.meta_key == Some(b.key)) {
                bail!(
                    "meta_base[{i}]: key 0x{:02x} is also a slot; a slot key has no base value",
                    b.key
                );
            }
        }
        Ok(())
    }

    /// The partitions holding personalization slots (each once), in GPT order: a flasher
    /// writes them besides the block map, with their base content or the device's values.
    pub fn slot_partitions(&self) -> Vec<&PartitionInfo> {
        self.partitions.iter().filter(|p| p.slot).collect()
    }

    /// The trusted comment that binds a signature to this manifest's profile, Talos version
    /// and build number.
    pub fn trusted_comment(&self) -> String {
        format!(
            "edgeimage manifest name={} talos={} build={} arch={}",
            self.name, self.talos_version, self.build_number, self.arch
        )
    }

    /// This manifest without its `artifact` (the copy carried inside the image).
    pub fn for_partition(&self) -> Manifest {
        Manifest {
            artifact: None,
            ..self.clone()
        }
    }

    /// Byte range `[start, end)` of a block range (the last block cut at the image's end).
    pub fn byte_range(&self, r: &BlockRange) -> (u64, u64) {
        byte_span(r.first, r.last, self.image.size, BLOCK_SIZE)
    }

    /// What a byte offset belongs to, for messages: `partition 1 (EFI)`, `the GPT`, ….
    pub fn place_of(&self, offset: u64) -> String {
        if let Some(p) = self
            .partitions
            .iter()
            .find(|p| offset >= p.offset && offset < p.offset + p.size)
        {
            return format!("partition {} ({})", p.number, p.label);
        }
        let mp = &self.manifest_partition;
        if offset >= mp.offset && offset < mp.offset + mp.size {
            return format!("partition {} ({})", mp.number, mp.label);
        }
        let first = self.partitions.iter().map(|p| p.offset).min().unwrap_or(0);
        if offset < first {
            "the protective MBR and primary GPT".to_string()
        } else {
            "the backup GPT".to_string()
        }
    }

    /// The bytes read from the target that a verification covers.
    pub fn mapped_bytes(&self) -> u64 {
        self.block_map
            .ranges
            .iter()
            .map(|r| {
                let (a, b) = self.byte_range(r);
                b - a
            })
            .sum()
    }
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) -> Result<()> {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            out.extend_from_slice(serde_json::to_string(v)?.as_bytes())
        }
        Value::Number(n) => {
            if !(n.is_u64() || n.is_i64()) {
                bail!("the manifest holds a non-integer number {n}");
            }
            out.extend_from_slice(n.to_string().as_bytes())
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out)?;
            }
            out.push(b']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k)?.as_bytes());
                out.push(b':');
                write_canonical(&o[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The content of the manifest partition (exactly `size` bytes): header, manifest, signature
/// text, zeros.
pub fn encode_partition(manifest: &[u8], signature: Option<&str>, size: u64) -> Result<Vec<u8>> {
    let sig = signature.unwrap_or("").as_bytes();
    let header = format!(
        "{PARTITION_MAGIC}manifest {}\nsignature {}\n\n",
        manifest.len(),
        sig.len()
    );
    let used = header.len() + manifest.len() + sig.len();
    if used as u64 > size {
        bail!(
            "the manifest ({} bytes) and its signature do not fit the {} KiB manifest partition",
            manifest.len(),
            size >> 10
        );
    }
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(sig);
    out.resize(size as usize, 0);
    Ok(out)
}

/// What the manifest partition holds.
#[derive(Debug)]
pub struct Embedded {
    pub manifest: Vec<u8>,
    /// The minisign signature text; `None` for an unsigned build.
    pub signature: Option<String>,
}

/// Read the manifest partition's content (at least the header and the two documents).
pub fn decode_partition(data: &[u8], what: &str) -> Result<Embedded> {
    let rest = data.strip_prefix(PARTITION_MAGIC.as_bytes()).ok_or_else(|| {
        anyhow!("{what}: no edgeimage manifest here (the partition does not start with {PARTITION_MAGIC:?})")
    })?;
    let mut lens = [0usize; 2];
    let mut pos = 0usize;
    for (i, key) in ["manifest ", "signature "].iter().enumerate() {
        let line_end = rest[pos..]
            .iter()
            .take(32)
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("{what}: the manifest partition's header is damaged"))?;
        let line = std::str::from_utf8(&rest[pos..pos + line_end])
            .ok()
            .and_then(|l| l.strip_prefix(key))
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| anyhow!("{what}: the manifest partition's header is damaged"))?;
        lens[i] = line;
        pos += line_end + 1;
    }
    if rest.get(pos) != Some(&b'\n') {
        bail!("{what}: the manifest partition's header is damaged");
    }
    pos += 1;
    let [mlen, slen] = lens;
    let end = pos
        .checked_add(mlen)
        .and_then(|e| e.checked_add(slen))
        .filter(|&e| e <= rest.len())
        .ok_or_else(|| {
            anyhow!("{what}: the manifest partition says it holds more than it has (truncated?)")
        })?;
    let manifest = rest[pos..pos + mlen].to_vec();
    let sig = &rest[pos + mlen..end];
    let signature =
        if sig.is_empty() {
            None
        } else {
            Some(String::from_utf8(sig.to_vec()).map_err(|_| {
                anyhow!("{what}: the signature in the manifest partition is not text")
            })?)
        };
    Ok(Embedded {
        manifest,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            name: "demo".into(),
            build_number: 7,
            talos_version: "v1.12.5".into(),
            arch: "amd64".into(),
            image: ImageInfo {
                size: 10 << 20,
                chunk_sha256: Some("a".repeat(64)),
                sha256: None,
                disk_guid: "G".into(),
                sector_size: 512,
            },
            partitions: vec![PartitionInfo {
                number: 1,
                label: "EFI".into(),
                type_guid: "T".into(),
                guid: "U".into(),
                offset: 1 << 20,
                size: 4 << 20,
                sha256: "b".repeat(64),
                slot: false,
            }],
            manifest_partition: crate::compose::Placed {
                number: 2,
                label: "edgeimage-manifest".into(),
                type_guid: "T2".into(),
                guid: "U2".into(),
                offset: 5 << 20,
                size: 1 << 20,
            },
            block_map: BlockMap {
                block_size: BLOCK_SIZE,
                mapped_blocks: 3,
                ranges: vec![
                    BlockRange {
                        first: 0,
                        last: 1,
                        sha256: "c".repeat(64),
                    },
                    BlockRange {
                        first: 2559,
                        last: 2559,
                        sha256: "d".repeat(64),
                    },
                ],
            },
            artifact: Some(Artifact {
                file: "demo.raw.zst".into(),
                compression: "zstd".into(),
                size: 123,
                sha256: "e".repeat(64),
            }),
            provenance: Provenance {
                edgeimage_version: "0.1.0".into(),
                source_date_epoch: 0,
                profile_sha256: "f".repeat(64),
                assets: vec![],
                extensions: vec![],
                schematic: None,
                machine_config: None,
                image_cache: Vec::new(),
                upgrade_image: None,
            },
            slots: vec![],
            meta_base: vec![],
        }
    }

    #[test]
    fn canonical_round_trip_and_refusals() {
        let m = sample();
        let b = m.to_canonical().unwrap();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(
            text.starts_with("{\"arch\":\"amd64\",\"artifact\":{"),
            "{text}"
        );
        assert!(!text.contains(' ') && !text.contains('\n'));
        assert_eq!(Manifest::parse(&b, "m").unwrap(), m);
        // Pretty-printed: same meaning, refused.
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        let e = Manifest::parse(&pretty, "m").unwrap_err().to_string();
        assert!(e.contains("canonical"), "{e}");
        // Other format, newer version, unknown field.
        let e = Manifest::parse(b"{\"format\":\"x\"}", "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an edgeimage manifest"), "{e}");
        let newer = text.replace("\"version\":1", "\"version\":2");
        let e = Manifest::parse(newer.as_bytes(), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("version Some(2)"), "{e}");
        let extra = text.replacen("{\"arch\"", "{\"aaa\":1,\"arch\"", 1);
        let e = Manifest::parse(extra.as_bytes(), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let e = Manifest::parse(b"{not json", "m.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.json: not a JSON manifest"), "{e}");
    }

    #[test]
    fn check_refuses_inconsistent_block_maps() {
        let mut m = sample();
        m.block_map.mapped_blocks = 4;
        assert!(m.check().unwrap_err().to_string().contains("mapped_blocks"));
        let mut m = sample();
        m.block_map.ranges[1].first = 1;
        assert!(m.check().unwrap_err().to_string().contains("ranges[1]"));
        let mut m = sample();
        m.block_map.ranges[1].last = 2560;
        m.block_map.ranges[1].first = 2560;
        assert!(m.check().unwrap_err().to_string().contains("past"));
        let mut m = sample();
        m.partitions[0].size = 100 << 20;
        assert!(m
            .check()
            .unwrap_err()
            .to_string()
            .contains("past the image"));
    }

    /// `sample()` with a META partition (6-7 MiB) holding slot `net` (META 0x0a), a
    /// metal-iso partition (7-8 MiB) holding slot `cfg`, and one base META value.
    fn with_slots() -> Manifest {
        let mut m = sample();
        for (number, label, offset) in [(3, "META", 6u64 << 20), (4, "metal-iso", 7 << 20)] {
            m.partitions.push(PartitionInfo {
                number,
                label: label.into(),
                type_guid: "T".into(),
                guid: "0fc63daf-8483-4772-8e79-3d69d8477de4".into(),
                offset,
                size: 1 << 20,
                sha256: "b".repeat(64),
                slot: true,
            });
        }
        let part = |n: u32, label: &str, offset: u64| SlotPartition {
            number: n,
            label: label.into(),
            offset,
            size: 1 << 20,
        };
        m.slots = vec![
            Slot {
                name: "net".into(),
                kind: SlotKind::Meta,
                meta_key: Some(0x0a),
                partition: part(3, "META", 6 << 20),
                secret: false,
                template_sha256: "1".repeat(64),
            },
            Slot {
                name: "cfg".into(),
                kind: SlotKind::MetalIso,
                meta_key: None,
                partition: part(4, "metal-iso", 7 << 20),
                secret: true,
                template_sha256: "2".repeat(64),
            },
        ];
        m.meta_base = vec![MetaBase {
            key: 0x0c,
            sha256: "3".repeat(64),
        }];
        m
    }

    #[test]
    fn slots_round_trip_and_are_absent_without_slots() {
        let text = String::from_utf8(sample().to_canonical().unwrap()).unwrap();
        for key in ["\"slots\"", "\"meta_base\"", "\"slot\""] {
            assert!(!text.contains(key), "{key} in {text}");
        }
        let m = with_slots();
        m.check().unwrap();
        let b = m.to_canonical().unwrap();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(
            text.contains(
                "\"meta_base\":[{\"key\":12,\"sha256\":\"3333333333333333333333333333333333333333333333333333333333333333\"}]"
            ),
            "{text}"
        );
        assert!(
            text.contains("{\"kind\":\"meta\",\"meta_key\":10,\"name\":\"net\",\"partition\":{\"label\":\"META\",\"number\":3,"),
            "{text}"
        );
        assert!(
            text.contains("{\"kind\":\"metal-iso\",\"name\":\"cfg\","),
            "{text}"
        );
        assert!(text.contains("\"sha256\":\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\",\"size\":1048576,\"slot\":true,"), "{text}");
        assert_eq!(Manifest::parse(&b, "m").unwrap(), m);
        assert_eq!(
            m.slot_partitions()
                .iter()
                .map(|p| p.number)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(m.slots[0].place(), "META 0x0a");
        assert_eq!(m.slots[1].place(), "metal-iso");
        // Spelled out empty or false: not canonical.
        for (from, to) in [
            ("\"meta_base\":[{", "\"meta_base\":[],\"x\":[{"),
            ("\"slot\":true", "\"slot\":false"),
        ] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text);
            assert!(Manifest::parse(edited.as_bytes(), "m").is_err(), "{edited}");
        }
        let mut plain = sample();
        plain.partitions[0].slot = false;
        let t = String::from_utf8(plain.to_canonical().unwrap()).unwrap();
        let e = Manifest::parse(
            t.replacen("\"sha256\":\"bbbb", "\"slot\":false,\"sha256\":\"bbbb", 1)
                .as_bytes(),
            "m",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("canonical"), "{e}");
    }

    #[test]
    fn check_refuses_inconsistent_slots() {
        type Edit = fn(&mut Manifest);
        let cases: &[(Edit, &str)] = &[
            (|m| m.slots[0].name = "Net".into(), "slots[0].name"),
            (|m| m.slots[1].name = "net".into(), "used twice"),
            (
                |m| m.slots[0].meta_key = Some(0x0b),
                "not a personalization key",
            ),
            (|m| m.slots[0].meta_key = None, "not a personalization key"),
            (|m| m.slots[1].meta_key = Some(0x0c), "has no meta_key"),
            (
                |m| {
                    let mut s = m.slots[0].clone();
                    s.name = "two".into();
                    m.slots.push(s);
                },
                "belongs to two slots",
            ),
            (
                |m| {
                    let mut s = m.slots[1].clone();
                    s.name = "two".into();
                    m.slots.push(s);
                },
                "a second metal-iso slot",
            ),
            (
                |m| m.slots[0].template_sha256 = "x".into(),
                "template_sha256",
            ),
            (|m| m.slots[0].partition.number = 9, "no partition 9"),
            (
                |m| m.slots[0].partition.offset += 4096,
                "does not match partition 3",
            ),
            (
                |m| m.partitions[1].slot = false,
                "does not match partition 3",
            ),
            (
                |m| m.slots[0].partition = m.slots[1].partition.clone(),
                "labelled META",
            ),
            (|m| m.partitions[0].slot = true, "no slot names it"),
            (|m| m.partitions[1].guid = "nope".into(), "is not a GUID"),
            (
                |m| {
                    m.block_map.ranges.insert(
                        1,
                        BlockRange {
                            first: 1792,
                            last: 1800,
                            sha256: "c".repeat(64),
                        },
                    );
                    m.block_map.mapped_blocks += 9;
                },
                "reaches into slot partition 4 (metal-iso)",
            ),
            (
                |m| {
                    m.slots.remove(0);
                    m.partitions.remove(1);
                },
                "meta_base is given, but no slot is a META key",
            ),
            (
                |m| {
                    m.meta_base.push(MetaBase {
                        key: 0x0b,
                        sha256: "3".repeat(64),
                    })
                },
                "meta_base[1]: keys are not in ascending order",
            ),
            (|m| m.meta_base[0].key = 0x0a, "key 0x0a is also a slot"),
            (
                |m| m.meta_base[0].sha256 = "A".repeat(64),
                "meta_base[0].sha256",
            ),
            (
                |m| {
                    for p in m.partitions.iter_mut().filter(|p| p.number == 4) {
                        p.size = MAX_SLOT + (1 << 20);
                    }
                    m.slots[1].partition.size = MAX_SLOT + (1 << 20);
                    m.image.size = 200 << 20;
                },
                "slot partitions hold 1 to",
            ),
            (
                |m| {
                    for p in m.partitions.iter_mut().filter(|p| p.number == 3) {
                        p.size = 0;
                    }
                    m.slots[0].partition.size = 0;
                },
                "slot partitions hold 1 to",
            ),
        ];
        for (edit, want) in cases {
            let mut m = with_slots();
            m.check().unwrap();
            edit(&mut m);
            let e = m.check().expect_err(want).to_string();
            assert!(e.contains(want), "wanted {want:?}: {e}");
        }
    }

    const MAX_SLOT: u64 = crate::personalize::MAX_SLOT_PARTITION;

    #[test]
    fn places_and_ranges() {
        let m = sample();
        assert_eq!(m.place_of(0), "the protective MBR and primary GPT");
        assert_eq!(m.place_of(1 << 20), "partition 1 (EFI)");
        assert_eq!(m.place_of(5 << 20), "partition 2 (edgeimage-manifest)");
        assert_eq!(m.place_of(10 << 20), "the backup GPT");
        assert_eq!(m.byte_range(&m.block_map.ranges[0]), (0, 8192));
        assert_eq!(m.mapped_bytes(), 3 * 4096);
        assert_eq!(
            m.trusted_comment(),
            "edgeimage manifest name=demo talos=v1.12.5 build=7 arch=amd64"
        );
    }

    #[test]
    fn partition_round_trip_and_damage() {
        let doc = sample().to_canonical().unwrap();
        let p = encode_partition(&doc, Some("sig\ntext\n"), 1 << 20).unwrap();
        assert_eq!(p.len(), 1 << 20);
        let e = decode_partition(&p, "disk").unwrap();
        assert_eq!(e.manifest, doc);
        assert_eq!(e.signature.as_deref(), Some("sig\ntext\n"));
        let u = decode_partition(&encode_partition(&doc, None, 1 << 20).unwrap(), "d").unwrap();
        assert!(u.signature.is_none());
        let e = encode_partition(&vec![b'x'; 2 << 20], None, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        let e = decode_partition(&[0u8; 512], "disk")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no edgeimage manifest"), "{e}");
        let mut bad = p.clone();
        bad[PARTITION_MAGIC.len() + 9] = b'x';
        let e = decode_partition(&bad, "disk").unwrap_err().to_string();
        assert!(e.contains("header is damaged"), "{e}");
        let e = decode_partition(&p[..200], "disk").unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
