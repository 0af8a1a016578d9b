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
//! - `image`: size and SHA-256 of the whole image **with the manifest partition read as
//!   zeros** (that partition carries this document, so it cannot be described by it).
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    pub size: u64,
    /// SHA-256 of the image with the manifest partition read as zeros.
    pub sha256: String,
    /// GPT disk GUID.
    pub disk_guid: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    /// SHA-256 of all `size` bytes.
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
        Ok(())
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
                sha256: "a".repeat(64),
                disk_guid: "G".into(),
            },
            partitions: vec![PartitionInfo {
                number: 1,
                label: "EFI".into(),
                type_guid: "T".into(),
                guid: "U".into(),
                offset: 1 << 20,
                size: 4 << 20,
                sha256: "b".repeat(64),
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
            },
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
