//! bmaptool block maps (`<image>.bmap`, format 2.0): a writer for our images and a strict reader
//! for block maps made by anyone else.
//!
//! A block map lists the blocks of a disk image that hold data, so that `bmaptool copy` writes
//! only those to the target device, and gives a SHA-256 digest per range so that the copy is
//! verified as it goes. Every format fact below is taken from bmaptool's own source, in two
//! places that agree: upstream `yoctoproject/bmaptool` (`src/bmaptool/BmapCreate.py`,
//! `src/bmaptool/BmapCopy.py`, `src/bmaptool/BmapHelpers.py`; formerly `intel/bmap-tools`,
//! `bmaptools/*.py`) and Debian's bmap-tools 3.6 (`/usr/lib/python3/dist-packages/bmaptools/`).
//!
//! * The file is XML with root `<bmap version="MAJOR.MINOR">`. `BmapCopy._parse_bmap` refuses a
//!   major version above that of `SUPPORTED_BMAP_VERSION = "2.0"` and accepts any minor.
//!   Version 1.4 is identical to 2.0 (the changelog comment above `SUPPORTED_BMAP_VERSION` in
//!   `BmapCreate.py`); 1.3 used SHA-1 (`BmapFileSHA1`, `sha1=`) and 1.0–1.2 had no checksums.
//! * `BmapCopy._parse_bmap` reads the direct children `ImageSize`, `BlockSize`, `BlocksCount`,
//!   `MappedBlocksCount`, `ChecksumType` and `BmapFileChecksum` with `int(x.text.strip())` /
//!   `.text.strip()`: values may be padded with white space. It refuses a `BlocksCount` other
//!   than `ceil(ImageSize / BlockSize)`; `ImageSize` need not be a multiple of `BlockSize`.
//! * `BmapFileChecksum` (`BmapCopy._verify_bmap_checksum`, `BmapCreate._bmap_file_end`) is the
//!   hex digest, with the `ChecksumType` algorithm, of the whole file as bytes with the first
//!   occurrence of the digest's text replaced by as many ASCII `0`s.
//! * `BlockMap` holds `Range` elements whose text is `first-last` (inclusive block numbers;
//!   `BmapCopy._get_block_ranges` splits at the first `-` and strips both halves) or a single
//!   block `N`, with attribute `chksum` = digest of those blocks' bytes; the last block of the
//!   image is hashed only up to `ImageSize` (`BmapCreate._calculate_chksum` reads to the end of
//!   the file). `BmapCopy.copy` checks that it wrote exactly `MappedBlocksCount` blocks.
//! * "Mapped" means written by the image's builder, not non-zero: `BmapCreate.generate` lists
//!   what `Filemap` reports as allocated, zero-filled or not, and `bmaptool copy` writes every
//!   listed block, zeros included.
//!
//! [`render`] writes the same layout as `BmapCreate` (XML declaration, the explanatory comments,
//! four-space indentation, padded values, the padded `MappedBlocksCount`) plus one comment with
//! the image's file name. The output depends only on its arguments: no dates, no paths.
//!
//! [`parse`] is stricter than bmaptool, which checks little beyond the version, the block count
//! and the digests: it also requires every element, plain decimal numbers, sorted,
//! non-overlapping ranges inside the image, a `chksum` on every range, and a correct
//! `MappedBlocksCount`, and checks the file digest before anything else so that an edited file
//! is reported as such. Only `sha256` is read (the only type `bmaptool create` writes:
//! `CLI.create_command` passes `"sha256"`).

use std::fmt::Write as _;
use std::io::{self, Read, Seek, SeekFrom};

use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};

/// Block size of the block maps we write (what `bmaptool create` reports on ext4, XFS, tmpfs).
pub const BLOCK_SIZE: u64 = 4096;

/// The format version we write (`SUPPORTED_BMAP_VERSION` in `BmapCreate.py`).
pub const FORMAT_VERSION: &str = "2.0";

/// Length of a SHA-256 hex digest.
const SHA256_HEX: usize = 64;

/// What to do about a block map that cannot be used.
const REMAKE: &str = "get the .bmap file again from where the image came from, or make a new one \
                      with `bmaptool create IMAGE > IMAGE.bmap`";

/// A run of mapped blocks (also the manifest's block-map entry, `manifest::BlockRange`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// First block (inclusive).
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// SHA-256 of the range's bytes (the image's last block only up to its end), lowercase hex.
    pub sha256: String,
}

/// A checked block map.
#[derive(Clone, Debug)]
pub struct Bmap {
    /// The `version` attribute as written (`2.0`, `2.1`, `1.4`, …).
    pub version: String,
    pub image_size: u64,
    pub block_size: u64,
    /// `ceil(image_size / block_size)`.
    pub blocks_count: u64,
    /// Blocks in all ranges.
    pub mapped_blocks: u64,
    /// Sorted, non-overlapping, inside the image.
    pub ranges: Vec<Range>,
}

impl Bmap {
    /// Bytes `[start, end)` of range `r` within the image (end cut at `image_size`).
    pub fn byte_range(&self, r: &Range) -> (u64, u64) {
        byte_span(r.first, r.last, self.image_size, self.block_size)
    }

    /// Bytes in all ranges (the last block counted only up to the end of the image).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (s, e) = self.byte_range(r);
                e - s
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// Bytes `[start, end)` of blocks `first..=last`, cut at `image_size` (never panics).
pub(crate) fn byte_span(first: u64, last: u64, image_size: u64, block_size: u64) -> (u64, u64) {
    let start = first.saturating_mul(block_size).min(image_size);
    let end = last
        .saturating_add(1)
        .saturating_mul(block_size)
        .min(image_size);
    (start, end.max(start))
}

/// Check that block ranges are well-formed, sorted, non-overlapping (adjacent is fine) and
/// inside `blocks_count` blocks; returns the number of blocks they cover.
fn check_block_ranges(
    ranges: impl Iterator<Item = (u64, u64)>,
    blocks_count: u64,
) -> std::result::Result<u64, String> {
    let mut mapped = 0u64;
    let mut prev: Option<(u64, u64)> = None;
    for (i, (first, last)) in ranges.enumerate() {
        let n = i + 1;
        if first > last {
            return Err(format!("range #{n} ({first}-{last}) starts after it ends"));
        }
        if last >= blocks_count {
            return Err(format!(
                "range #{n} ({first}-{last}) ends past the image's last block {}",
                blocks_count.wrapping_sub(1)
            ));
        }
        if let Some((pf, pl)) = prev {
            if first <= pl {
                return Err(format!(
                    "range #{n} ({first}-{last}) {} range #{} ({pf}-{pl})",
                    if first < pf {
                        "comes before"
                    } else {
                        "overlaps"
                    },
                    n - 1
                ));
            }
        }
        prev = Some((first, last));
        mapped += last - first + 1;
    }
    Ok(mapped)
}

/// A SHA-256 digest in lowercase hex.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `BmapHelpers.human_size`: "1 byte", "N bytes" below 512, else one decimal in KiB, MiB, ….
/// (bmaptool labels sizes of 1024 TiB and more "EiB"; we name the units correctly.)
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".to_string();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut v = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB", "PiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
    }
    format!("{:.1} EiB", v / 1024.0)
}

/// The file name goes into an XML comment: it must not end the comment or break the file.
fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.contains('/')
        || name.contains("--")
        || name.ends_with('-')
        || name
            .chars()
            .any(|c| c.is_control() || c == '\u{fffe}' || c == '\u{ffff}');
    if bad {
        bail!(
            "cannot name the image {name:?} in its .bmap file: give a plain file name without \
             directories, control characters or \"--\""
        );
    }
    Ok(())
}

/// Render a version-2.0 block map with `BmapFileChecksum` filled in, laid out as
/// `BmapCreate._bmap_file_start` / `generate` / `_bmap_file_end` write it.
///
/// `ranges` must be sorted, non-overlapping, inside the image and carry their SHA-256 (see
/// [`checksum_ranges`], or `artifact::windows::WindowHasher` while streaming). `name` (the image's file name, no directories) is
/// only used in a comment.
pub fn render(name: &str, image_size: u64, block_size: u64, ranges: &[Range]) -> Result<String> {
    check_name(name)?;
    if block_size == 0 {
        bail!("cannot write a .bmap with a block size of 0 bytes");
    }
    if image_size == 0 {
        // BmapCreate: "cannot generate bmap for zero-sized image file".
        bail!("cannot write a .bmap for the empty image {name}");
    }
    let blocks_count = image_size.div_ceil(block_size);
    let mapped = check_block_ranges(ranges.iter().map(|r| (r.first, r.last)), blocks_count)
        .map_err(|e| {
            anyhow!(
                "cannot write the .bmap of {name} ({blocks_count} blocks of {block_size} bytes): \
                 {e}"
            )
        })?;
    if let Some((i, r)) = ranges
        .iter()
        .enumerate()
        .find(|(_, r)| !is_sha256_hex(&r.sha256))
    {
        bail!(
            "cannot write the .bmap of {name}: range #{} ({}-{}) has no SHA-256 (got {:?}); \
             compute it with checksum_ranges or while streaming the image first",
            i + 1,
            r.first,
            r.last,
            r.sha256
        );
    }

    let image_human = human_size(image_size);
    let mut x = String::with_capacity(3000 + ranges.len() * 100);
    x.push_str(HEADER);
    // `writeln!` into a String cannot fail.
    let _ = writeln!(x, "<bmap version=\"{FORMAT_VERSION}\">");
    let _ = writeln!(x, "    <!-- Image file: {name} -->");
    let _ = writeln!(x, "    <!-- Image size in bytes: {image_human} -->");
    let _ = writeln!(x, "    <ImageSize> {image_size} </ImageSize>\n");
    x.push_str("    <!-- Size of a block in bytes -->\n");
    let _ = writeln!(x, "    <BlockSize> {block_size} </BlockSize>\n");
    x.push_str("    <!-- Count of blocks in the image file -->\n");
    let _ = writeln!(x, "    <BlocksCount> {blocks_count} </BlocksCount>\n");

    // BmapCreate writes spaces for the mapped size and percentage, then overwrites them from
    // the left once they are known; reproduce the result.
    let written = format!(
        "{} or {:.1}%",
        human_size(mapped.saturating_mul(block_size)),
        mapped as f64 * 100.0 / blocks_count as f64
    );
    let slot = image_human.len() + " or ".len() + "100.0%".len() + "   ".len();
    let tail = if written.len() <= slot {
        format!("{}-->", " ".repeat(slot - written.len()))
    } else {
        " -->".to_string()
    };
    let _ = writeln!(x, "    <!-- Count of mapped blocks: {written}{tail}");
    let width = blocks_count.to_string().len();
    let _ = writeln!(
        x,
        "    <MappedBlocksCount> {mapped:<width$} </MappedBlocksCount>\n"
    );

    x.push_str("    <!-- Type of checksum used in this file -->\n");
    x.push_str("    <ChecksumType> sha256 </ChecksumType>\n\n");
    x.push_str(
        "    <!-- The checksum of this bmap file. When it is calculated, the value of\n\
         \x20        the checksum has to be zero (all ASCII \"0\" symbols).  -->\n",
    );
    x.push_str("    <BmapFileChecksum> ");
    let checksum_at = x.len();
    x.push_str(&"0".repeat(SHA256_HEX));
    x.push_str(" </BmapFileChecksum>\n\n");
    x.push_str(
        "    <!-- The block map which consists of elements which may either be a\n\
         \x20        range of blocks or a single block. The 'chksum' attribute\n\
         \x20        (if present) is the checksum of this blocks range. -->\n",
    );
    x.push_str("    <BlockMap>\n");
    for r in ranges {
        if r.first == r.last {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {} </Range>",
                r.sha256, r.first
            );
        } else {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {}-{} </Range>",
                r.sha256, r.first, r.last
            );
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");

    let digest = hex::encode(Sha256::digest(x.as_bytes()));
    x.replace_range(checksum_at..checksum_at + SHA256_HEX, &digest);
    Ok(x)
}

/// The opening comment `BmapCreate` writes (`_BMAP_START_TEMPLATE`, upstream wording).
const HEADER: &str = r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map is an optimization which allows to copy or flash the image
     to the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

"#;

/// [`parse`] for raw file contents (bmaptool hashes the file's bytes; so do we).
pub fn parse_bytes(bytes: &[u8]) -> Result<Bmap> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "the .bmap file is not UTF-8 text (invalid byte at offset {}); {REMAKE}",
            e.valid_up_to()
        )
    })?;
    parse(text)
}

/// Parse and check a block map from any bmaptool-compatible producer.
///
/// Checks, in order: well-formed XML with root `<bmap>`; the version (major 2, or 1.4 which is
/// the same format; 1.0–1.3 and 3+ are refused); `ChecksumType` is `sha256`;
/// `BmapFileChecksum` matches the file; `ImageSize`, `BlockSize`, `BlocksCount` and
/// `MappedBlocksCount` are present once each, decimal, non-zero where it matters and consistent;
/// every `Range` is `N` or `first-last`, carries a `chksum`, and the ranges are sorted,
/// non-overlapping and inside the image. Elements this reader does not know are ignored, as
/// bmaptool does (a minor version may add some).
pub fn parse(text: &str) -> Result<Bmap> {
    let doc = roxmltree::Document::parse_with_options(
        text,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow!("the .bmap file is not well-formed XML ({e}); {REMAKE}"))?;
    let line = |n: roxmltree::Node| doc.text_pos_at(n.range().start).row;

    let root = doc.root_element();
    if root.tag_name().name() != "bmap" || root.tag_name().namespace().is_some() {
        bail!(
            "the .bmap file's root element is <{}> (line {}), not <bmap>: this is not a bmaptool \
             block map; {REMAKE}",
            root.tag_name().name(),
            line(root)
        );
    }

    // Version: "MAJOR.MINOR" (BmapCopy splits at the first '.' and int()s both halves).
    let version = root
        .attribute("version")
        .ok_or_else(|| {
            anyhow!(
                "<bmap> (line {}) has no version attribute; {REMAKE}",
                line(root)
            )
        })?
        .trim()
        .to_string();
    let bad_version = || {
        anyhow!(
            "<bmap version=…> (line {}): the version must be MAJOR.MINOR, e.g. 2.0; \
             {REMAKE}",
            line(root)
        )
    };
    let (major, minor) = version.split_once('.').ok_or_else(bad_version)?;
    let major = decimal(major.trim()).ok_or_else(bad_version)?;
    let minor = decimal(minor.trim()).ok_or_else(bad_version)?;
    match (major, minor) {
        (2, _) | (1, 4) => {}
        (1, 3) => bail!(
            "<bmap version=\"{version}\">: bmap format 1.3 protects the file and its ranges with \
             SHA-1 (BmapFileSHA1, sha1=), which edgeimage does not read; make a format 2.0 block \
             map with bmaptool 3.1 or later: `bmaptool create IMAGE > IMAGE.bmap`"
        ),
        (0..=1, _) => bail!(
            "<bmap version=\"{version}\">: bmap format {major}.{minor} carries no checksums, so \
             the copy cannot be verified; make a format 2.0 block map with bmaptool 3.1 or \
             later: `bmaptool create IMAGE > IMAGE.bmap`"
        ),
        _ => bail!(
            "<bmap version=\"{version}\">: bmap format {major}.x is newer than the format 2.x \
             edgeimage reads (bmaptool refuses it too); make a format 2.0 block map with \
             `bmaptool create IMAGE > IMAGE.bmap` (bmaptool 3.1 or later)"
        ),
    }

    // The value elements: direct children of <bmap>, each once, text only.
    const NAMES: [&str; 7] = [
        "ImageSize",
        "BlockSize",
        "BlocksCount",
        "MappedBlocksCount",
        "ChecksumType",
        "BmapFileChecksum",
        "BlockMap",
    ];
    let mut found: [Option<roxmltree::Node>; 7] = [None; 7];
    for child in root.children().filter(|n| n.is_element()) {
        if child.tag_name().namespace().is_some() {
            continue;
        }
        if let Some(i) = NAMES.iter().position(|&n| n == child.tag_name().name()) {
            if let Some(first) = found[i] {
                bail!(
                    "<{}> appears twice in the .bmap file (lines {} and {}); {REMAKE}",
                    NAMES[i],
                    line(first),
                    line(child)
                );
            }
            found[i] = Some(child);
        }
    }
    let element = |i: usize| {
        found[i].ok_or_else(|| anyhow!("<{}> is missing from the .bmap file; {REMAKE}", NAMES[i]))
    };
    // The text of a value element, trimmed; returns (node, value).
    let value = |i: usize| -> Result<(roxmltree::Node, String)> {
        let node = element(i)?;
        let mut s = String::new();
        for c in node.children() {
            match c.text() {
                Some(t) if c.is_text() => s.push_str(t),
                _ => bail!(
                    "<{}> (line {}) must hold only its value as text; {REMAKE}",
                    NAMES[i],
                    line(node)
                ),
            }
        }
        Ok((node, s.trim().to_string()))
    };
    let number = |i: usize| -> Result<(roxmltree::Node, u64)> {
        let (node, v) = value(i)?;
        let n = decimal(&v).ok_or_else(|| {
            anyhow!(
                "<{}> (line {}) is not a decimal number{}; {REMAKE}",
                NAMES[i],
                line(node),
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    " that fits in 64 bits"
                } else {
                    ""
                }
            )
        })?;
        Ok((node, n))
    };

    // Checksum type and the file's own digest first: an edited file is reported as such.
    let (ct_node, checksum_type) = value(4)?;
    if !checksum_type.eq_ignore_ascii_case("sha256") {
        bail!(
            "<ChecksumType> (line {}) is not sha256: edgeimage reads block maps checked \
             with sha256 only (what `bmaptool create` writes); make one with \
             `bmaptool create IMAGE > IMAGE.bmap`",
            line(ct_node)
        );
    }
    verify_file_checksum(text, &doc, element(5)?)?;

    let (is_node, image_size) = number(0)?;
    let (bs_node, block_size) = number(1)?;
    let (bc_node, blocks_count) = number(2)?;
    let (mc_node, mapped_claimed) = number(3)?;
    if image_size == 0 {
        bail!(
            "<ImageSize> (line {}) is 0: there is nothing to copy (bmaptool makes no block map \
             for an empty image); {REMAKE}",
            line(is_node)
        );
    }
    if block_size == 0 {
        bail!(
            "<BlockSize> (line {}) is 0, which cannot hold data; {REMAKE}",
            line(bs_node)
        );
    }
    let expected_blocks = image_size.div_ceil(block_size);
    if blocks_count != expected_blocks {
        bail!(
            "<BlocksCount> (line {}) is {blocks_count}, but an <ImageSize> of {image_size} bytes \
             in blocks of <BlockSize> {block_size} bytes makes {expected_blocks} blocks; \
             {REMAKE}",
            line(bc_node)
        );
    }

    let block_map = element(6)?;
    let mut ranges = Vec::new();
    let mut prev: Option<(u64, u64)> = None;
    let mut mapped = 0u64;
    for node in block_map
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "Range")
        .filter(|n| n.tag_name().namespace().is_none())
    {
        let n = ranges.len() + 1;
        let mut raw = String::new();
        for c in node.children() {
            match c.text() {
                Some(t) if c.is_text() => raw.push_str(t),
                _ => bail!(
                    "<Range> #{n} (line {}) must hold only its block numbers as text; {REMAKE}",
                    line(node)
                ),
            }
        }
        let raw = raw.trim();
        // The line is found only for a message: looking it up scans the text from its start.
        let at = || format!("<Range> #{n} (line {})", line(node));
        let (first, last) = match raw.split_once('-') {
            Some((a, b)) => (decimal(a.trim()), decimal(b.trim())),
            None => (decimal(raw), decimal(raw)),
        };
        let (Some(first), Some(last)) = (first, last) else {
            bail!(
                "{} is not a block number N or a block range FIRST-LAST in decimal; {REMAKE}",
                at()
            );
        };
        if first > last {
            bail!(
                "{} starts at block {first}, after its last block {last}; {REMAKE}",
                at()
            );
        }
        if last >= blocks_count {
            bail!(
                "{} ends past the image: the last block is {} (<BlocksCount> {blocks_count}); \
                 {REMAKE}",
                at(),
                blocks_count - 1
            );
        }
        if let Some((pf, pl)) = prev {
            if first <= pl {
                let how = if first < pf {
                    "is out of order: it comes before"
                } else {
                    "overlaps"
                };
                bail!("{} {how} the previous range ({pf}-{pl}); {REMAKE}", at());
            }
        }
        prev = Some((first, last));
        let sha256 = match node.attribute("chksum") {
            Some(c) if is_sha256_hex(c.trim()) => c.trim().to_string(),
            Some(_) => bail!(
                "{}: its chksum is not 64 lowercase hex digits (a sha256 digest as bmaptool \
                 writes it; bmaptool refuses other spellings too); {REMAKE}",
                at()
            ),
            None => bail!(
                "{} has no chksum attribute, so its blocks cannot be verified; make a block \
                 map with checksums: `bmaptool create IMAGE > IMAGE.bmap` (without \
                 --no-checksum)",
                at()
            ),
        };
        mapped += last - first + 1;
        ranges.push(Range {
            first,
            last,
            sha256,
        });
    }
    if mapped != mapped_claimed {
        bail!(
            "<MappedBlocksCount> (line {}) is {mapped_claimed}, but the {} <Range> elements \
             cover {mapped} blocks (bmaptool would stop with \"bmap file does not belong to \
             this image\"); {REMAKE}",
            line(mc_node),
            ranges.len()
        );
    }
    Ok(Bmap {
        version,
        image_size,
        block_size,
        blocks_count,
        mapped_blocks: mapped,
        ranges,
    })
}

/// Plain decimal digits (leading zeros allowed, as Python's `int` allows them), fitting `u64`.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Check `BmapFileChecksum`: SHA-256 of the file's bytes with the digest text replaced by as
/// many `0`s. bmaptool replaces the *first occurrence* of the digest text anywhere in the file;
/// we replace it where the element holds it and require that to be the first occurrence, so
/// that whatever we accept, bmaptool computes the same digest for.
fn verify_file_checksum(
    text: &str,
    doc: &roxmltree::Document,
    node: roxmltree::Node,
) -> Result<()> {
    let line = doc.text_pos_at(node.range().start).row;
    let texts: Vec<_> = node.children().collect();
    let fail = |what: &str| anyhow!("<BmapFileChecksum> (line {line}) {what}; {REMAKE}");
    let [child] = texts.as_slice() else {
        return Err(fail("must hold only the digest as text"));
    };
    let Some(value) = child.text().filter(|_| child.is_text()) else {
        return Err(fail("must hold only the digest as text"));
    };
    let value = value.trim();
    if !is_sha256_hex(value) {
        return Err(fail("is not 64 lowercase hex digits (a sha256 digest)"));
    }
    let span = child.range();
    let raw = &text[span.clone()];
    if raw.trim() != value {
        return Err(fail(
            "must hold the digest as plain text (no entities or CDATA)",
        ));
    }
    let at = span.start + (raw.len() - raw.trim_start().len());
    if let Some(earlier) = text.find(value).filter(|&p| p != at) {
        return Err(fail(&format!(
            "holds a digest that also appears earlier in the file (line {}), so bmaptool would \
             check a different text",
            doc.text_pos_at(earlier).row
        )));
    }
    let mut h = Sha256::new();
    h.update(&text.as_bytes()[..at]);
    h.update([b'0'; SHA256_HEX]);
    h.update(&text.as_bytes()[at + SHA256_HEX..]);
    let actual = hex::encode(h.finalize());
    if actual != value {
        bail!(
            "the .bmap file was modified after it was made: BmapFileChecksum (line {line}) is \
             {value} but the file's sha256 (with that value zeroed) is {actual}; {REMAKE}"
        );
    }
    Ok(())
}

/// Helper for builders: turn mapped byte extents (`(offset, len)` pairs of what the builder
/// wrote) into inclusive block ranges.
///
/// Every block touched by an extent is mapped; extents are clamped to the image, may overlap
/// or come in any order; adjacent blocks are merged. The result is then split so that no range
/// spans more than `max_blocks` blocks (0: no limit) and no range crosses any of `boundaries`
/// (byte offsets, e.g. partition starts and ends; one that is not a multiple of `block_size` is
/// rounded down to one). Checksums are computed separately (`artifact::windows::WindowHasher`,
/// [`checksum_ranges`]).
pub fn ranges_from_extents(
    extents: &[(u64, u64)],
    image_size: u64,
    block_size: u64,
    max_blocks: u64,
    boundaries: &[u64],
) -> Vec<(u64, u64)> {
    if block_size == 0 || image_size == 0 {
        return Vec::new();
    }
    let blocks = image_size.div_ceil(block_size);
    let mut spans: Vec<(u64, u64)> = extents
        .iter()
        .filter(|&&(off, len)| len > 0 && off < image_size)
        .map(|&(off, len)| {
            let end = off.saturating_add(len).min(image_size);
            (off / block_size, (end - 1) / block_size)
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (f, l) in spans {
        match merged.last_mut() {
            Some(m) if f <= m.1.saturating_add(1) => m.1 = m.1.max(l),
            _ => merged.push((f, l)),
        }
    }
    // Block numbers a range may not run across (it may start there).
    let mut cuts: Vec<u64> = boundaries
        .iter()
        .map(|b| b / block_size)
        .filter(|&b| b > 0 && b < blocks)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let max = if max_blocks == 0 {
        u64::MAX
    } else {
        max_blocks
    };

    let mut out = Vec::with_capacity(merged.len());
    for (f, l) in merged {
        let mut start = f;
        let mut i = cuts.partition_point(|&c| c <= f);
        loop {
            let end = match cuts.get(i) {
                Some(&c) if c <= l => c - 1,
                _ => l,
            };
            while end - start >= max {
                out.push((start, start + (max - 1)));
                start += max;
            }
            out.push((start, end));
            if end == l {
                break;
            }
            start = end + 1;
            i += 1;
        }
    }
    out
}

/// Compute the SHA-256 of each range by reading `image` (the last block up to `image_size`).
pub fn checksum_ranges(
    image: &mut (impl Read + Seek),
    ranges: &[(u64, u64)],
    image_size: u64,
    block_size: u64,
) -> io::Result<Vec<Range>> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    if block_size == 0 {
        return Err(invalid("block size 0".to_string()));
    }
    check_block_ranges(ranges.iter().copied(), image_size.div_ceil(block_size)).map_err(invalid)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(ranges.len());
    for &(first, last) in ranges {
        let (start, end) = byte_span(first, last, image_size, block_size);
        image.seek(SeekFrom::Start(start))?;
        let mut h = Sha256::new();
        let mut left = end - start;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            image.read_exact(&mut buf[..n]).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "reading blocks {first}-{last} (bytes {start}..{end}) of the image: {e}"
                    ),
                )
            })?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        out.push(Range {
            first,
            last,
            sha256: hex::encode(h.finalize()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// An image of 5 blocks + 100 bytes with distinct block contents.
    fn image() -> Vec<u8> {
        (0..(5 * 4096 + 100) as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    fn sample() -> (Vec<u8>, String) {
        let img = image();
        let ranges = checksum_ranges(
            &mut io::Cursor::new(&img),
            &[(0, 1), (3, 3), (5, 5)],
            img.len() as u64,
            4096,
        )
        .unwrap();
        let text = render("disk.raw", img.len() as u64, 4096, &ranges).unwrap();
        (img, text)
    }

    /// Recompute BmapFileChecksum of an edited file (the way BmapCreate does, independently).
    fn reseal(text: &str) -> String {
        let open = "<BmapFileChecksum> ";
        let at = text.find(open).unwrap() + open.len();
        let mut zeroed = text.to_string();
        zeroed.replace_range(at..at + 64, &"0".repeat(64));
        let digest = sha(zeroed.as_bytes());
        zeroed.replace_range(at..at + 64, &digest);
        zeroed
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    fn assert_err(text: &str, needles: &[&str]) {
        let e = err(text);
        for n in needles {
            assert!(e.contains(n), "{n:?} not in: {e}");
        }
    }

    #[test]
    fn render_parse_round_trip() {
        let (img, text) = sample();
        let b = parse(&text).unwrap();
        assert_eq!(b.version, "2.0");
        assert_eq!(b.image_size, img.len() as u64);
        assert_eq!(b.block_size, 4096);
        assert_eq!(b.blocks_count, 6);
        assert_eq!(b.mapped_blocks, 4);
        let spans: Vec<_> = b.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, [(0, 1), (3, 3), (5, 5)]);
        assert_eq!(b.ranges[0].sha256, sha(&img[..8192]));
        assert_eq!(b.ranges[1].sha256, sha(&img[3 * 4096..4 * 4096]));
        assert_eq!(b.ranges[2].sha256, sha(&img[5 * 4096..]), "last block cut");
        assert_eq!(b.byte_range(&b.ranges[2]), (5 * 4096, img.len() as u64));
        assert_eq!(b.mapped_bytes(), 3 * 4096 + 100);
        assert!(text.contains("        <Range chksum=\""));
        assert!(text.contains("\"> 0-1 </Range>\n"));
        assert!(text.contains("\"> 3 </Range>\n"));
        assert!(text.contains("<!-- Image file: disk.raw -->"));
        assert!(text.contains("<!-- Image size in bytes: 20.1 KiB -->"));
        assert!(text.contains("<!-- Count of mapped blocks: 16.0 KiB or 66.7%    -->"));
        assert!(text.contains("    <MappedBlocksCount> 4 </MappedBlocksCount>\n"));
        assert!(text.starts_with("<?xml version=\"1.0\" ?>\n<!-- This file contains"));
    }

    #[test]
    fn file_checksum_is_sha256_with_the_value_zeroed() {
        let (_, text) = sample();
        let open = "<BmapFileChecksum> ";
        let at = text.find(open).unwrap() + open.len();
        let value = &text[at..at + 64];
        let zeroed = format!("{}{}{}", &text[..at], "0".repeat(64), &text[at + 64..]);
        assert_eq!(value, sha(zeroed.as_bytes()));
        assert_eq!(text[at + 64..].find(" </BmapFileChecksum>"), Some(0));
    }

    #[test]
    fn output_is_deterministic_and_depends_only_on_the_arguments() {
        let (_, a) = sample();
        let (_, b) = sample();
        assert_eq!(a, b);
        // The name appears in its comment only.
        let ranges = parse(&a).unwrap().ranges;
        let other = render("other.raw", 20580, 4096, &ranges).unwrap();
        let strip = |t: &str| {
            t.lines()
                .filter(|l| !l.contains("<!-- Image file:") && !l.contains("<BmapFileChecksum>"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&a), strip(&other));
        assert!(!a.contains("disk.raw -->\n    <!-- Image file"));
    }

    #[test]
    fn padded_values_and_spaced_ranges_are_read() {
        let (_, text) = sample();
        let t = text
            .replace(
                "<ImageSize> 20580 </ImageSize>",
                "<ImageSize>\n\t  20580\t\n </ImageSize>",
            )
            .replace("> 0-1 </Range>", ">  0 - 1\n</Range>")
            .replace("<bmap version=\"2.0\">", "<bmap version=\" 2.1 \">");
        let b = parse(&reseal(&t)).unwrap();
        assert_eq!(b.image_size, 20580);
        assert_eq!(b.version, "2.1");
        assert_eq!((b.ranges[0].first, b.ranges[0].last), (0, 1));
        // CRLF line ends: the digest covers the bytes as they are.
        let crlf = reseal(&text.replace('\n', "\r\n"));
        assert_eq!(parse(&crlf).unwrap().ranges.len(), 3);
        // Version 1.4 is format 2.0 under another number.
        let v14 = reseal(&text.replace("version=\"2.0\"", "version=\"1.4\""));
        assert_eq!(parse(&v14).unwrap().version, "1.4");
    }

    #[test]
    fn an_edited_file_is_reported_as_modified() {
        let (_, text) = sample();
        let flip_chksum_char = {
            let i = text.find("chksum=\"").unwrap() + 8;
            let mut t = text.clone();
            let c = if &t[i..i + 1] == "a" { "b" } else { "a" };
            t.replace_range(i..i + 1, c);
            t
        };
        for edited in [
            text.replace("> 3 </Range>", "> 4 </Range>"),
            flip_chksum_char,
            text.replace("<ImageSize> 20580", "<ImageSize> 20581"),
            text.replace("<BlocksCount> 6 ", "<BlocksCount> 7 "),
        ] {
            assert_ne!(edited, text);
            assert_err(
                &edited,
                &[
                    "the .bmap file was modified after it was made: BmapFileChecksum (line ",
                    "bmaptool create",
                ],
            );
        }
    }

    #[test]
    fn hostile_inputs_each_get_their_own_message() {
        let (_, text) = sample();
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                text.replace("version=\"2.0\"", "version=\"3.0\""),
                vec![
                    "<bmap version=\"3.0\">",
                    "format 3.x is newer",
                    "bmaptool create",
                ],
            ),
            (
                text.replace("version=\"2.0\"", "version=\"2\""),
                vec!["must be MAJOR.MINOR"],
            ),
            (
                text.replace("version=\"2.0\"", "version=\"1.3\""),
                vec!["SHA-1", "bmaptool 3.1 or later"],
            ),
            (
                text.replace("version=\"2.0\"", "version=\"1.2\""),
                vec!["carries no checksums"],
            ),
            (
                text.replace(" version=\"2.0\"", ""),
                vec!["no version attribute"],
            ),
            (
                text.replace("    <ImageSize> 20580 </ImageSize>\n", ""),
                vec!["<ImageSize> is missing"],
            ),
            (
                text.replace("<BlocksCount> 6 ", "<BlocksCount> 7 "),
                vec!["<BlocksCount> (line", "is 7", "makes 6 blocks"],
            ),
            (
                text.replace("> 3 </Range>", "> 1 </Range>"),
                vec!["<Range> #2 (line", "overlaps the previous range (0-1)"],
            ),
            (
                text.replace("> 0-1 </Range>", "> 4 </Range>"),
                vec!["<Range> #2 (line", "out of order"],
            ),
            (
                text.replace("> 5 </Range>", "> 5-6 </Range>")
                    .replace("<MappedBlocksCount> 4 ", "<MappedBlocksCount> 5 "),
                vec![
                    "<Range> #3 (line",
                    "ends past the image: the last block is 5",
                ],
            ),
            (
                text.replace("<ImageSize> 20580 ", "<ImageSize> 20KiB "),
                vec!["<ImageSize> (line", "not a decimal number"],
            ),
            (
                text.replace("<BlockSize> 4096 ", "<BlockSize> +4096 "),
                vec!["<BlockSize>", "not a decimal number"],
            ),
            (
                text.replace("<ImageSize> 20580 ", "<ImageSize> 99999999999999999999999 "),
                vec!["<ImageSize>", "fits in 64 bits"],
            ),
            (
                text.replace("<MappedBlocksCount> 4 ", "<MappedBlocksCount> 5 "),
                vec!["<MappedBlocksCount> (line", "is 5", "cover 4 blocks"],
            ),
            (
                text.replace("<ChecksumType> sha256 ", "<ChecksumType> sha512 "),
                vec!["<ChecksumType> (line", "not sha256", "sha256 only"],
            ),
            (
                text.replace("</BlockMap>", "</BlockMap"),
                vec!["not well-formed XML"],
            ),
            (
                text.replace("> 3 </Range>", "> 5-3 </Range>"),
                vec![
                    "<Range> #2 (line",
                    "starts at block 5, after its last block 3",
                ],
            ),
            (
                text.replace("> 3 </Range>", "> a-b </Range>"),
                vec!["<Range> #2 (line", "not a block number N or a block range"],
            ),
            (
                text.replace("> 3 </Range>", "> -3 </Range>"),
                vec!["<Range> #2 (line", "not a block number"],
            ),
            (
                text.replace("> 3 </Range>", "> 1-2-3 </Range>"),
                vec!["<Range> #2 (line", "not a block number"],
            ),
            (
                text.replacen("<Range chksum=\"", "<Range sum=\"", 1),
                vec!["<Range> #1", "no chksum attribute", "--no-checksum"],
            ),
            (
                {
                    let i = text.find("chksum=\"").unwrap() + 8;
                    let up = text[i..i + 64].to_uppercase();
                    let mut t = text.clone();
                    t.replace_range(i..i + 64, &up);
                    t
                },
                vec!["<Range> #1", "64 lowercase hex"],
            ),
            (
                text.replace(
                    "<ImageSize> 20580 </ImageSize>",
                    "<ImageSize> 20580 </ImageSize><ImageSize> 1 </ImageSize>",
                ),
                vec!["<ImageSize> appears twice"],
            ),
            (
                text.replace("<ImageSize> 20580 ", "<ImageSize> 0 ")
                    .replace("<BlocksCount> 6 ", "<BlocksCount> 0 "),
                vec!["<ImageSize> (line", "is 0"],
            ),
            (
                text.replace("<BlockSize> 4096 ", "<BlockSize> 0 "),
                vec!["<BlockSize> (line", "is 0"],
            ),
            (
                text.replace("<ImageSize> 20580 ", "<ImageSize> 20<!-- x -->580 "),
                vec!["<ImageSize> (line", "only its value as text"],
            ),
            (
                text.replace("<bmap version", "<bmapp version")
                    .replace("</bmap>", "</bmapp>"),
                vec!["root element is <bmapp>"],
            ),
            (
                text.replace(
                    "<?xml version=\"1.0\" ?>",
                    "<?xml version=\"1.0\" ?><!DOCTYPE bmap [<!ENTITY a \"b\">]>",
                ),
                vec!["not well-formed XML"],
            ),
        ];
        for (t, needles) in cases {
            assert_err(&reseal(&t), &needles);
        }
        // Missing digest element, and a digest that is not one.
        let start = text.find("    <BmapFileChecksum>").unwrap();
        let end = text.find("</BmapFileChecksum>\n").unwrap() + 20;
        let mut no_sum = text.clone();
        no_sum.replace_range(start..end, "");
        assert_err(&no_sum, &["<BmapFileChecksum> is missing"]);
        let at = text.find("<BmapFileChecksum> ").unwrap() + 19;
        let mut short = text.clone();
        short.replace_range(at..at + 4, "");
        assert_err(
            &short,
            &["<BmapFileChecksum> (line", "not 64 lowercase hex"],
        );
        // The digest text also earlier in the file: bmaptool would zero that copy instead.
        let value = &text[at..at + 64];
        let twice = text.replacen(
            "<bmap version",
            &format!("<!-- {value} -->\n<bmap version"),
            1,
        );
        assert_err(
            &twice,
            &["<BmapFileChecksum> (line", "also appears earlier"],
        );
        // Never a panic on any byte soup.
        for cut in (0..text.len()).step_by(97) {
            let _ = parse(&text[..cut]);
        }
        assert!(parse_bytes(b"<bmap version=\"2.0\">\xff</bmap>").is_err());
    }

    #[test]
    fn ranges_from_extents_merges_splits_and_clamps() {
        let bs = 4096;
        let size = 100 * bs + 10;
        // Unsorted, overlapping, zero-length, past the end, touching partial blocks.
        let ext = [
            (10 * bs + 5, 1),
            (0, 2 * bs),
            (2 * bs, 1),
            (50 * bs, 0),
            (7 * bs - 1, 2),
            (99 * bs, 10 * bs),
            (500 * bs, 4),
        ];
        assert_eq!(
            ranges_from_extents(&ext, size, bs, 0, &[]),
            [(0, 2), (6, 7), (10, 10), (99, 100)]
        );
        // Boundaries split; a boundary at a range start does not.
        assert_eq!(
            ranges_from_extents(
                &[(0, 40 * bs)],
                size,
                bs,
                0,
                &[0, 8 * bs, 20 * bs, 20 * bs + 7, 40 * bs]
            ),
            [(0, 7), (8, 19), (20, 39)]
        );
        // max_blocks splits from each piece's start.
        assert_eq!(
            ranges_from_extents(&[(0, 10 * bs), (12 * bs, 3 * bs)], size, bs, 4, &[6 * bs]),
            [(0, 3), (4, 5), (6, 9), (12, 14)]
        );
        assert_eq!(ranges_from_extents(&[(0, 1)], size, bs, 1, &[]), [(0, 0)]);
        assert!(ranges_from_extents(&[(0, 1)], 0, bs, 0, &[]).is_empty());
        assert!(ranges_from_extents(&[(0, 1)], size, 0, 0, &[]).is_empty());
        assert_eq!(
            ranges_from_extents(&[(u64::MAX - 1, u64::MAX)], u64::MAX, bs, 0, &[u64::MAX]),
            [(u64::MAX / bs, u64::MAX / bs)]
        );
    }

    #[test]
    fn checksum_ranges_refuses_short_images() {
        let img = image();
        assert!(checksum_ranges(
            &mut io::Cursor::new(&img[..100]),
            &[(0, 0)],
            img.len() as u64,
            4096
        )
        .is_err());
    }

    #[test]
    fn render_refuses_bad_arguments() {
        let r = |f, l| Range {
            first: f,
            last: l,
            sha256: "0".repeat(64),
        };
        let e = |res: Result<String>| format!("{:#}", res.unwrap_err());
        assert!(e(render("x", 10, 4096, &[r(0, 1)])).contains("ends past"));
        assert!(e(render("x", 9000, 4096, &[r(1, 1), r(0, 0)])).contains("comes before"));
        assert!(e(render("x", 9000, 4096, &[r(0, 1), r(1, 2)])).contains("overlaps"));
        assert!(e(render("x", 9000, 4096, &[r(1, 0)])).contains("starts after"));
        let no_sum = Range {
            first: 0,
            last: 0,
            sha256: String::new(),
        };
        assert!(e(render("x", 9000, 4096, &[no_sum])).contains("no SHA-256"));
        assert!(e(render("x", 0, 4096, &[])).contains("empty image"));
        assert!(e(render("x", 10, 0, &[])).contains("block size of 0"));
        for bad in ["", "a/b", "a--b", "a-", "a\nb"] {
            assert!(
                e(render(bad, 10, 4096, &[])).contains("plain file name"),
                "{bad:?}"
            );
        }
        // No ranges at all is a valid (if useless) map.
        let t = render("x", 10, 4096, &[]).unwrap();
        assert_eq!(parse(&t).unwrap().mapped_blocks, 0);
    }

    #[test]
    fn human_sizes_match_bmaptool() {
        for (n, s) in [
            (1, "1 byte"),
            (0, "0 bytes"),
            (511, "511 bytes"),
            (512, "0.5 KiB"),
            (3146728, "3.0 MiB"),
            (821752, "802.5 KiB"),
            (479232, "468.0 KiB"),
            (1 << 40, "1.0 TiB"),
        ] {
            assert_eq!(human_size(n), s);
        }
    }
}
