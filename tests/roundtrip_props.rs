//! Round trips through the public API, as properties over generated inputs: what a writer
//! makes, its reader gives back unchanged.
//!
//! - META: `format::meta::partition` → `format::meta::parse` (either ADV copy), and
//!   `personalize::meta_partition(base, [])` gives the base back byte for byte;
//! - the manifest: `Manifest::to_canonical` → `Manifest::parse` → `to_canonical`;
//! - block maps: `bmap::render` → `bmap::parse_bytes`;
//! - seekable zstd: `SeekableWriter` → `read_seek_table` + `decompress_frames`;
//! - FAT: `compose::fat` (FAT12/16 and FAT32) → the `fatfs` crate;
//! - cpio: `compose::cpio::Writer` → `format::cpio::read`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Write};

use edgeimage::artifact::bmap::{self, Range};
use edgeimage::artifact::manifest::{
    self, Artifact, BlockMap, ConfigDigest, ExtensionDigest, ImageInfo, InputDigest, Manifest,
    MetaBase, PartitionInfo, Provenance, SchematicDigest, Slot, SlotKind, SlotPartition,
};
use edgeimage::artifact::seekable::{self, SeekableWriter};
use edgeimage::compose::cpio::{Body, Entry, Writer, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use edgeimage::compose::fat::{self, FatFile, FatParams, LabelRule};
use edgeimage::format::meta::{self, MetaValue, BLOCK_LEN};
use edgeimage::layout::Layout;
use proptest::prelude::*;

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; nothing is written next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, control characters and non-ASCII included.
fn text() -> impl Strategy<Value = String> {
    "(?s).{0,12}"
}

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

// ---------------------------------------------------------------------------------------------
// META

/// Distinct keys 1-255 (tag 0 ends the ADV's records, so no writer uses it) in any order,
/// values of any bytes; sometimes one large value.
fn meta_values() -> impl Strategy<Value = Vec<MetaValue>> {
    let values = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 0..60_000),
    ];
    prop::collection::btree_map(1u8..=255, values, 0..10)
        .prop_map(|m| {
            m.into_iter()
                .map(|(key, value)| MetaValue { key, value })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn meta_partition_parses_back(values in meta_values()) {
        prop_assume!(meta::check_capacity(&values).is_ok());
        let mut part = meta::partition(&values).unwrap().to_vec().unwrap();
        prop_assert_eq!(part.len() as u64, meta::META_SIZE);
        let mut want: Vec<(u32, Vec<u8>)> =
            values.iter().map(|v| (u32::from(v.key), v.value.clone())).collect();
        want.sort_by_key(|(k, _)| *k);

        let got = meta::parse(&part);
        prop_assert_eq!(got.copy, Some(1));
        prop_assert_eq!(&got.values, &want);
        prop_assert_eq!(meta::parse_block(&part[..BLOCK_LEN]), Some(want.clone()));
        // Re-encoding a base with nothing added gives it back byte for byte.
        prop_assert_eq!(&edgeimage::personalize::meta_partition(&part, &[]).unwrap(), &part);

        // With the first copy gone, the second one is read.
        part[..BLOCK_LEN].fill(0);
        let got = meta::parse(&part);
        prop_assert_eq!(got.copy, Some(2));
        prop_assert_eq!(got.values, want);
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest

/// What a manifest is made from: free text and numbers for every field the consistency
/// checks leave alone, and the choices that shape the checked parts.
#[derive(Clone, Debug)]
struct ManifestInput {
    texts: Vec<String>,
    numbers: Vec<u64>,
    digests: Vec<String>,
    image_size: u64,
    sector_size: u64,
    /// `(gap, span)` of each block-map range, in blocks (reduced to fit).
    ranges: Vec<(u64, u64)>,
    /// `(offset, size)` of each ordinary partition (reduced to fit).
    partitions: Vec<(u64, u64)>,
    meta_slot: Option<(String, u8)>,
    metal_iso_slot: Option<String>,
    meta_base: BTreeSet<u8>,
    flags: [bool; 4],
}

fn manifest_input() -> impl Strategy<Value = ManifestInput> {
    (
        (
            prop::collection::vec(text(), 32),
            prop::collection::vec(any::<u64>(), 16),
            prop::collection::vec(hex64(), 8),
            (1u64 << 20)..=(1u64 << 46),
            prop_oneof![Just(512u64), Just(4096u64), any::<u64>()],
        ),
        (
            prop::collection::vec((0u64..5000, 0u64..1024), 0..6),
            prop::collection::vec((any::<u64>(), any::<u64>()), 0..5),
            proptest::option::of((
                "[a-z0-9-]{1,32}",
                prop::sample::select(edgeimage::personalize::META_KEYS.to_vec()),
            )),
            proptest::option::of("[a-z0-9-]{1,32}"),
            prop::collection::btree_set(any::<u8>(), 0..4),
            any::<[bool; 4]>(),
        ),
    )
        .prop_map(
            |(
                (texts, numbers, digests, image_size, sector_size),
                (ranges, partitions, meta_slot, metal_iso_slot, meta_base, flags),
            )| ManifestInput {
                texts,
                numbers,
                digests,
                image_size,
                sector_size,
                ranges,
                partitions,
                meta_slot,
                metal_iso_slot,
                meta_base,
                flags,
            },
        )
}

fn guid(n: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        n >> 32,
        (n >> 16) & 0xffff,
        n & 0xffff,
        (n >> 48) & 0xffff,
        n & 0xffff_ffff_ffff
    )
}

/// A manifest that passes `Manifest::check`: the block map in the first half of the image,
/// the slot partitions (META at the half, metal-iso at three quarters) after it.
fn build_manifest(i: &ManifestInput) -> Manifest {
    let t = |k: usize| i.texts[k % i.texts.len()].clone();
    let n = |k: usize| i.numbers[k % i.numbers.len()];
    let d = |k: usize| i.digests[k % i.digests.len()].clone();
    let size = i.image_size;
    let half = size / 2;

    let mut ranges = Vec::new();
    let mut next = 0u64;
    for (k, (gap, span)) in i.ranges.iter().enumerate() {
        let first = next + gap;
        let last = first + span;
        if (last + 1) * manifest::BLOCK_SIZE > half {
            break;
        }
        ranges.push(manifest::BlockRange {
            first,
            last,
            sha256: d(k),
        });
        next = last + 1;
    }
    let mapped_blocks = ranges.iter().map(|r| r.last - r.first + 1).sum();

    let mut partitions: Vec<PartitionInfo> = i
        .partitions
        .iter()
        .enumerate()
        .map(|(k, (off, len))| {
            let offset = off % size;
            PartitionInfo {
                number: k as u32 + 1,
                label: t(k),
                type_guid: t(k + 5),
                guid: t(k + 10),
                offset,
                size: len % (size - offset + 1),
                sha256: t(k + 15),
                slot: false,
            }
        })
        .collect();
    let slot_size =
        |k: usize| 1 + n(k) % (size / 4).min(edgeimage::personalize::MAX_SLOT_PARTITION);
    let mut slots = Vec::new();
    let mut meta_base = Vec::new();
    let mut add_slot = |name: &str, kind, meta_key, label: &str, offset, psize, k: usize| {
        let number = partitions.len() as u32 + 1;
        partitions.push(PartitionInfo {
            number,
            label: label.to_string(),
            type_guid: t(k),
            guid: guid(n(k)),
            offset,
            size: psize,
            sha256: t(k + 1),
            slot: true,
        });
        slots.push(Slot {
            name: name.to_string(),
            kind,
            meta_key,
            partition: SlotPartition {
                number,
                label: label.to_string(),
                offset,
                size: psize,
            },
            secret: n(k) % 2 == 0,
            template_sha256: d(k),
        });
    };
    if let Some((name, key)) = &i.meta_slot {
        add_slot(
            name,
            SlotKind::Meta,
            Some(*key),
            meta::META_LABEL,
            half,
            slot_size(3),
            3,
        );
        meta_base = i
            .meta_base
            .iter()
            .filter(|&&b| b != *key)
            .map(|&key| MetaBase {
                key,
                sha256: d(key as usize),
            })
            .collect();
    }
    if let Some(name) = i
        .metal_iso_slot
        .as_ref()
        .filter(|m| i.meta_slot.as_ref().is_none_or(|(s, _)| s != *m))
    {
        let at = half + size / 4;
        add_slot(
            name,
            SlotKind::MetalIso,
            None,
            "metal-iso",
            at,
            slot_size(4),
            4,
        );
    }
    let mp_offset = n(5) % size;
    Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        name: t(20),
        build_number: n(6),
        talos_version: t(21),
        arch: t(22),
        image: ImageInfo {
            size,
            chunk_sha256: Some(d(23)),
            sha256: None,
            disk_guid: t(24),
            sector_size: i.sector_size,
        },
        manifest_partition: edgeimage::compose::Placed {
            number: partitions.len() as u32 + 1,
            label: t(25),
            type_guid: t(26),
            guid: t(27),
            offset: mp_offset,
            size: n(7) % (size - mp_offset + 1),
        },
        partitions,
        block_map: BlockMap {
            block_size: manifest::BLOCK_SIZE,
            mapped_blocks,
            ranges,
        },
        artifact: i.flags[0].then(|| Artifact {
            file: t(28),
            compression: t(29),
            size: n(8),
            sha256: t(30),
        }),
        provenance: Provenance {
            edgeimage_version: t(31),
            source_date_epoch: n(9),
            profile_sha256: t(1),
            assets: (0..(n(10) % 4) as usize)
                .map(|k| InputDigest {
                    field: t(k + 2),
                    size: n(k + 11),
                    sha256: t(k + 6),
                })
                .collect(),
            extensions: (0..(n(11) % 3) as usize)
                .map(|k| ExtensionDigest {
                    name: t(k + 7),
                    version: t(k + 8),
                    sha256: d(k + 2),
                })
                .collect(),
            schematic: i.flags[1].then(|| SchematicDigest { id: t(12) }),
            machine_config: i.flags[2].then(|| ConfigDigest {
                delivery: t(13),
                machine_type: t(14),
                sha256: d(5),
            }),
            image_cache: if i.flags[3] {
                vec![manifest::CachedImageDigest {
                    reference: "registry.k8s.io/pause:3.10".into(),
                    digest: format!("sha256:{}", d(6)),
                    platform: "linux/amd64".into(),
                    size: 321,
                }]
            } else {
                Vec::new()
            },
            upgrade_image: i.flags[3].then(|| manifest::UpgradeImageDigest {
                file: "t-installer-image.tar".into(),
                size: 4096,
                sha256: d(7),
                reference: "registry.edge.local/edge/installer:v1.12.5".into(),
                manifest_digest: format!("sha256:{}", d(8)),
                base_digest: format!("sha256:{}", d(9)),
            }),
        },
        slots,
        meta_base,
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn manifest_canonical_form_round_trips(input in manifest_input()) {
        let m = build_manifest(&input);
        m.check().unwrap();
        let bytes = m.to_canonical().unwrap();
        let parsed = Manifest::parse(&bytes, "generated manifest").unwrap();
        prop_assert_eq!(&parsed, &m);
        prop_assert_eq!(parsed.to_canonical().unwrap(), bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Block maps

/// An image file name bmaptool's comment can hold: no `/`, control characters or `--`.
fn bmap_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._<>&\"'=é€漢-]{1,24}".prop_filter("a name bmap refuses", |s| {
        !s.contains("--") && !s.ends_with('-')
    })
}

#[derive(Clone, Debug)]
struct BmapInput {
    name: String,
    image_size: u64,
    block_size: u64,
    /// Points in `[0, 1)` scaled to the block count: consecutive pairs become ranges.
    points: Vec<u64>,
    single: Vec<bool>,
    digests: Vec<String>,
}

fn bmap_input() -> impl Strategy<Value = BmapInput> {
    (
        bmap_name(),
        prop_oneof![1u64..=(1 << 24), 1u64..=(1 << 44), 1u64..=u64::MAX],
        prop_oneof![
            Just(4096u64),
            Just(512u64),
            1u64..=(1 << 20),
            1u64..=u64::MAX
        ],
        prop::collection::vec(any::<u64>(), 0..16),
        prop::collection::vec(any::<bool>(), 8),
        prop::collection::vec(hex64(), 8),
    )
        .prop_map(
            |(name, image_size, block_size, points, single, digests)| BmapInput {
                name,
                image_size,
                block_size,
                points,
                single,
                digests,
            },
        )
}

/// Sorted, non-overlapping ranges inside `blocks` blocks.
fn bmap_ranges(i: &BmapInput, blocks: u64) -> Vec<Range> {
    let mut pts: Vec<u64> = i
        .points
        .iter()
        .map(|&p| ((u128::from(p) * u128::from(blocks)) >> 64) as u64)
        .collect();
    pts.sort_unstable();
    pts.dedup();
    pts.chunks_exact(2)
        .enumerate()
        .map(|(k, pair)| Range {
            first: pair[0],
            last: if i.single[k % i.single.len()] {
                pair[0]
            } else {
                pair[1]
            },
            sha256: i.digests[k % i.digests.len()].clone(),
        })
        .collect()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn bmap_render_parses_back(input in bmap_input()) {
        let blocks = input.image_size.div_ceil(input.block_size);
        let ranges = bmap_ranges(&input, blocks);
        let text = bmap::render(&input.name, input.image_size, input.block_size, &ranges).unwrap();
        let b = bmap::parse_bytes(text.as_bytes()).unwrap();
        prop_assert_eq!(b.version.as_str(), bmap::FORMAT_VERSION);
        prop_assert_eq!(b.image_size, input.image_size);
        prop_assert_eq!(b.block_size, input.block_size);
        prop_assert_eq!(b.blocks_count, blocks);
        let mapped: u64 = ranges.iter().map(|r| r.last - r.first + 1).sum();
        prop_assert_eq!(b.mapped_blocks, mapped);
        prop_assert_eq!(b.ranges, ranges);
    }
}

// ---------------------------------------------------------------------------------------------
// Seekable zstd

/// Data made of runs: zeros (whole zero frames are compressed once and reused), a repeated
/// byte, or noise; up to a few frames long.
fn seekable_data() -> impl Strategy<Value = Vec<u8>> {
    let run = prop_oneof![
        (0usize..(1 << 21)).prop_map(|n| vec![0u8; n]),
        (any::<u8>(), 0usize..(1 << 20)).prop_map(|(b, n)| vec![b; n]),
        prop::collection::vec(any::<u8>(), 0..20_000),
    ];
    prop::collection::vec(run, 0..5).prop_map(|runs| runs.concat())
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn seekable_zstd_gives_the_data_back(
        data in seekable_data(),
        level in 1i32..=3,
        workers in 1usize..=3,
        chunk in 1usize..(3 << 20),
        read_workers in 1usize..=3,
    ) {
        let mut w = SeekableWriter::new(Vec::new(), level, workers).unwrap();
        for c in data.chunks(chunk) {
            w.write_all(c).unwrap();
        }
        let file_bytes = w.finish().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&file_bytes).unwrap();
        let table = seekable::read_seek_table(&f, "generated").unwrap().unwrap();
        prop_assert_eq!(table.decompressed_size, data.len() as u64);
        prop_assert_eq!(table.frames.len(), data.len().div_ceil(seekable::FRAME_SIZE));
        let all: Vec<usize> = (0..table.frames.len()).collect();
        let mut back = Vec::with_capacity(data.len());
        seekable::decompress_frames(&f, "generated", &table, &all, read_workers, &mut |i, off, b| {
            assert_eq!(off, back.len() as u64, "frame {i} out of order");
            back.extend_from_slice(&b);
            Ok(true)
        })
        .unwrap();
        prop_assert!(back == data, "the decompressed data differs");
        // An ordinary zstd reader sees the same stream.
        prop_assert!(zstd_decode(&file_bytes) == data, "zstd reads other data");
    }
}

fn zstd_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::Decoder::new(b)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// FAT

/// A FAT long name: letters of several scripts, digits, spaces, dots and the punctuation
/// FAT allows; not ending in a dot or space.
fn fat_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 ._$%'@~`!(){}^#&+,;=\\[\\]éÄß漢-]{1,40}".prop_filter("a name FAT refuses", |s| {
        !s.ends_with('.') && !s.ends_with(' ') && s != "." && s != ".."
    })
}

#[derive(Clone, Debug)]
struct FatInput {
    dirs: Vec<String>,
    /// (directory index or root, name, content)
    files: Vec<(Option<usize>, String, Vec<u8>)>,
    empty_dirs: Vec<(usize, String)>,
    label: String,
    sector: u64,
}

fn fat_input() -> impl Strategy<Value = FatInput> {
    (
        prop::collection::vec(fat_name(), 0..3),
        prop::collection::vec(
            (
                proptest::option::of(0usize..3),
                fat_name(),
                prop_oneof![
                    3 => prop::collection::vec(any::<u8>(), 0..3000),
                    1 => prop::collection::vec(any::<u8>(), 0..70_000),
                ],
            ),
            0..10,
        ),
        prop::collection::vec((0usize..3, fat_name()), 0..2),
        "[A-Z0-9_-][A-Z0-9 _-]{0,10}",
        prop_oneof![Just(512u64), Just(4096u64)],
    )
        .prop_map(|(dirs, files, empty_dirs, label, sector)| FatInput {
            dirs,
            files,
            empty_dirs,
            label,
            sector,
        })
}

/// FAT compares names case-insensitively: the key two names collide under (ours may be
/// stricter than the writer's, which only drops more names).
fn fold(s: &str) -> String {
    s.to_lowercase().to_uppercase()
}

/// The files and directories of `i`, with colliding names dropped (the writer refuses them):
/// `(path → content, directories)`. Every directory is passed to the writer, so those no
/// file is in stay as empty directories.
fn fat_tree(i: &FatInput) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>) {
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut top: Vec<String> = Vec::new();
    for d in &i.dirs {
        if taken.insert(fold(d)) {
            top.push(d.clone());
        }
    }
    let mut dirs: BTreeSet<String> = top.iter().cloned().collect();
    let mut files = BTreeMap::new();
    for (d, name, content) in &i.files {
        let path = match d.and_then(|k| top.get(k)) {
            Some(dir) => format!("{dir}/{name}"),
            None => name.clone(),
        };
        if taken.insert(fold(&path)) {
            files.insert(path, content.clone());
        }
    }
    for (k, name) in &i.empty_dirs {
        if let Some(parent) = top.get(*k) {
            let path = format!("{parent}/{name}");
            if taken.insert(fold(&path)) {
                dirs.insert(path);
            }
        }
    }
    (files, dirs)
}

/// The volume label (boot sector and root directory), every file (path → content) and
/// directory of a FAT volume, read with `fatfs`.
type FatContents = (
    (String, Option<String>),
    BTreeMap<String, Vec<u8>>,
    BTreeSet<String>,
);

fn read_fat(volume: Vec<u8>) -> FatContents {
    let fs = fatfs::FileSystem::new(Cursor::new(volume), fatfs::FsOptions::new()).unwrap();
    let label = (
        fs.volume_label(),
        fs.read_volume_label_from_root_dir().unwrap(),
    );
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    let mut stack = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = stack.pop() {
        for e in dir.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.is_dir() {
                dirs.insert(path.clone());
                stack.push((path, e.to_dir()));
            } else {
                let mut content = Vec::new();
                e.to_file().read_to_end(&mut content).unwrap();
                files.insert(path, content);
            }
        }
    }
    (label, files, dirs)
}

fn check_fat(
    layout: &Layout,
    label: &str,
    files: &BTreeMap<String, Vec<u8>>,
    dirs: &BTreeSet<String>,
) -> Result<(), TestCaseError> {
    let ((boot_label, root_label), got_files, got_dirs) = read_fat(layout.to_vec().unwrap());
    prop_assert_eq!(boot_label.as_str(), label.trim_end());
    prop_assert_eq!(root_label.as_deref(), Some(label.trim_end()));
    prop_assert_eq!(
        got_files.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    for (path, content) in files {
        prop_assert!(&got_files[path] == content, "{path}: other content");
    }
    prop_assert_eq!(&got_dirs, dirs);
    Ok(())
}

fn fat_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<FatFile> {
    files
        .iter()
        .map(|(path, content)| FatFile {
            path: path.clone(),
            content: Layout::from_bytes(content.clone()),
        })
        .collect()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn fat_volume_reads_back(
        input in fat_input(),
        at_least in prop_oneof![Just(0u64), Just(3u64 << 20), Just(20u64 << 20)],
    ) {
        let (files, dirs) = fat_tree(&input);
        let dir_list: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let params = FatParams {
            sector_size: input.sector,
            ..FatParams::new(0, &input.label, 0x1234_5678, 2048, 1_700_000_000)
        };
        let layout = fat::build_smallest(
            &params,
            &fat_files(&files),
            &dir_list,
            LabelRule::Uppercase,
            at_least,
        )
        .unwrap();
        check_fat(&layout, &input.label, &files, &dirs)?;
    }
}

proptest! {
    #![proptest_config(config(8))]

    #[test]
    fn fat32_volume_reads_back(input in fat_input()) {
        let (files, _) = fat_tree(&input);
        // 512-byte sectors: the smallest FAT32 volume with 4096-byte ones is 256 MiB.
        let params = FatParams::new(fat::min_size(), &input.label, 7, 2048, 1_700_000_000);
        // build_fat32 takes files only: directories come from their paths.
        let implied: BTreeSet<String> = files
            .keys()
            .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d.to_string()))
            .collect();
        let layout = fat::build_fat32(&params, &fat_files(&files)).unwrap();
        check_fat(&layout, &input.label, &files, &implied)?;
    }
}

// ---------------------------------------------------------------------------------------------
// cpio

#[derive(Clone, Debug)]
enum CpioKind {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    CharDevice(u32, u32, u32),
}

fn cpio_component() -> impl Strategy<Value = String> {
    "[^/\\x00]{1,12}".prop_filter("a component cpio refuses", |s| s != "." && s != "..")
}

fn cpio_entries() -> impl Strategy<Value = Vec<(String, CpioKind, u32, u32, u32)>> {
    let kind = prop_oneof![
        (0u32..0o7777).prop_map(CpioKind::Dir),
        (0u32..0o7777, prop::collection::vec(any::<u8>(), 0..5000))
            .prop_map(|(p, d)| CpioKind::File(p, d)),
        "[^\\x00]{1,40}".prop_map(CpioKind::Symlink),
        (0u32..0o7777, any::<u32>(), any::<u32>())
            .prop_map(|(p, ma, mi)| CpioKind::CharDevice(p, ma, mi)),
    ];
    prop::collection::vec(
        (
            prop::collection::vec(cpio_component(), 1..4).prop_map(|c| c.join("/")),
            kind,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        0..12,
    )
    .prop_map(|mut v| {
        let mut seen = BTreeSet::new();
        v.retain(|(p, ..)| p != "TRAILER!!!" && seen.insert(p.clone()));
        v
    })
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn cpio_archive_reads_back(entries in cpio_entries()) {
        let mut w = Writer::new(Vec::new());
        let mut want = Vec::new();
        for (path, kind, uid, gid, mtime) in &entries {
            let (entry, mode, body): (Entry<'_>, u32, Vec<u8>) = match kind {
                CpioKind::Dir(p) => (Entry::dir(path.clone(), *p), S_IFDIR | p, Vec::new()),
                CpioKind::File(p, d) => {
                    (Entry::file_bytes(path.clone(), *p, d), S_IFREG | p, d.clone())
                }
                CpioKind::Symlink(t) => (
                    Entry::new(path.clone(), S_IFLNK | 0o777, Body::Symlink(t.clone())),
                    S_IFLNK | 0o777,
                    t.as_bytes().to_vec(),
                ),
                CpioKind::CharDevice(p, ma, mi) => (
                    Entry::char_device(path.clone(), *p, *ma, *mi),
                    S_IFCHR | p,
                    Vec::new(),
                ),
            };
            w.append(entry.with_owner(*uid, *gid).with_mtime(u64::from(*mtime))).unwrap();
            want.push((path.clone(), mode, body));
        }
        let archive = w.finish().unwrap();
        prop_assert_eq!(archive.len() % 4, 0);
        let mut got = Vec::new();
        let n = edgeimage::format::cpio::read(&mut &archive[..], &mut |h, body| {
            let mut b = Vec::new();
            body.read_to_end(&mut b)?;
            assert_eq!(h.size, b.len() as u64, "{}: size and body differ", h.name);
            got.push((h.name.clone(), h.mode, b));
            Ok(())
        })
        .unwrap();
        prop_assert_eq!(n, want.len());
        prop_assert_eq!(got, want);
    }
}
