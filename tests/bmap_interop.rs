//! Our block maps against the real `bmaptool` (bmap-tools): it copies images with the maps we
//! render, refuses them when edited, and we read the maps it creates.
//!
//! `bmaptool copy` opens a regular-file destination with mode `wb+` (bmap-tools
//! `bmaptools/CLI.py`, `open_files`), which truncates it, so a destination pre-filled with
//! garbage would be wiped. Instead the image carries decoy data in blocks the map leaves out:
//! they must not arrive. That mapped zero blocks are written is seen by running
//! `bmaptool create` on the copy (written blocks are allocated, the rest are holes).

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use edgeimage::artifact::bmap::{self, Range};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const BS: u64 = 4096;
/// Not a multiple of the block size.
const SIZE: u64 = 4 * MIB + 1234;
/// Extents the builder "wrote": data, a partial block, a mapped zero extent next to data, and
/// the image's partial last block.
const EXTENTS: [(u64, u64); 6] = [
    (0, 8192),
    (20000, 300),
    (MIB, 256 << 10),
    (2 * MIB, 64 << 10),
    (2 * MIB + (64 << 10), 8192),
    (SIZE - 100, 100),
];
/// The extent written with zeros.
const ZERO_EXTENT: usize = 3;
/// Data in the image that the block map leaves out.
const DECOY: (u64, u64) = (3 * MIB, 4096);

fn bmaptool_present() -> bool {
    common::have("bmaptool")
}

fn noise(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sparse image file: only `EXTENTS` (and the decoy, if asked) are written.
fn make_image(path: &Path, decoy: bool) -> Vec<u8> {
    let f = File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut content = vec![0u8; SIZE as usize];
    let mut writes: Vec<(u64, Vec<u8>)> = EXTENTS
        .iter()
        .enumerate()
        .map(|(i, &(off, len))| {
            let data = if i == ZERO_EXTENT {
                vec![0u8; len as usize]
            } else {
                noise(i as u64 + 1, len)
            };
            (off, data)
        })
        .collect();
    if decoy {
        writes.push((DECOY.0, noise(99, DECOY.1)));
    }
    for (off, data) in writes {
        f.write_all_at(&data, off).unwrap();
        content[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    content
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn run(args: &[&str]) -> Output {
    Command::new("bmaptool")
        .args(args)
        .output()
        .expect("running bmaptool")
}

fn copy(bmap: Option<&Path>, image: &Path, dest: &Path) -> Output {
    let mut args = vec!["copy"];
    if let Some(b) = bmap {
        args.extend(["--bmap", b.to_str().unwrap()]);
    }
    args.extend([image.to_str().unwrap(), dest.to_str().unwrap()]);
    run(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Our block map of the image file at `path`, with ranges split the way a builder would.
fn our_bmap(path: &Path, max_blocks: u64, boundaries: &[u64]) -> (Vec<Range>, String) {
    let spans = bmap::ranges_from_extents(&EXTENTS, SIZE, BS, max_blocks, boundaries);
    let ranges = bmap::checksum_ranges(&mut File::open(path).unwrap(), &spans, SIZE, BS).unwrap();
    // Streaming gives the same digests.
    let windows = spans
        .iter()
        .map(|&(a, b)| (a * BS, ((b + 1) * BS).min(SIZE)))
        .collect();
    let mut h = edgeimage::artifact::windows::WindowHasher::new(windows);
    let mut pos = 0;
    for chunk in fs::read(path).unwrap().chunks(100_000) {
        h.update(pos, chunk);
        pos += chunk.len() as u64;
    }
    let streamed: Vec<String> = ranges.iter().map(|r| r.sha256.clone()).collect();
    assert_eq!(h.finish(), streamed);
    let name = path.file_name().unwrap().to_str().unwrap();
    let text = bmap::render(name, SIZE, BS, &ranges).unwrap();
    (ranges, text)
}

/// The mapped blocks as bmaptool would list them: merged, unsplit.
fn merged_spans() -> Vec<(u64, u64)> {
    bmap::ranges_from_extents(&EXTENTS, SIZE, BS, 0, &[])
}

/// Recompute BmapFileChecksum after an edit (sha256 with the value zeroed, as BmapCreate does).
fn reseal(text: &str) -> String {
    let open = "<BmapFileChecksum>";
    let start = text.find(open).unwrap() + open.len();
    let at = start + (text[start..].len() - text[start..].trim_start().len());
    let mut t = text.to_string();
    t.replace_range(at..at + 64, &"0".repeat(64));
    let digest = sha(t.as_bytes());
    t.replace_range(at..at + 64, &digest);
    t
}

#[test]
fn bmaptool_copies_exactly_the_mapped_ranges_of_our_bmap() {
    if !bmaptool_present() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("decoy.raw");
    let content = make_image(&img, true);
    // Splits at a "partition boundary" inside the 1 MiB extent and between the zero extent and
    // the data after it, and at 16 blocks.
    let (ranges, text) = our_bmap(&img, 16, &[MIB + (128 << 10), 2 * MIB + (64 << 10)]);
    assert!(ranges.len() > merged_spans().len(), "the splits happened");
    let parsed = bmap::parse(&text).unwrap();
    assert_eq!(parsed.ranges, ranges);
    let map = d.path().join("decoy.raw.bmap");
    fs::write(&map, &text).unwrap();

    let dest = d.path().join("copy.raw");
    let o = copy(Some(&map), &img, &dest);
    assert!(o.status.success(), "bmaptool copy: {}", stderr(&o));
    let copied = fs::read(&dest).unwrap();
    assert_eq!(copied.len() as u64, SIZE);
    let mut expect = vec![0u8; SIZE as usize];
    for r in &parsed.ranges {
        let (s, e) = parsed.byte_range(r);
        expect[s as usize..e as usize].copy_from_slice(&content[s as usize..e as usize]);
    }
    let decoy = DECOY.0 as usize..(DECOY.0 + DECOY.1) as usize;
    assert!(content[decoy.clone()].iter().any(|&b| b != 0));
    assert!(
        copied[decoy].iter().all(|&b| b == 0),
        "an unmapped block was copied"
    );
    assert!(
        copied == expect,
        "the copy differs from the mapped ranges of the image"
    );

    // The mapped zero extent was written: the copy has exactly our blocks allocated.
    let o = run(&["create", dest.to_str().unwrap()]);
    assert!(o.status.success(), "bmaptool create: {}", stderr(&o));
    let of_copy = bmap::parse_bytes(&o.stdout).unwrap();
    let spans: Vec<_> = of_copy.ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(
        spans,
        merged_spans(),
        "blocks allocated in the copy (the zero extent is blocks {}..{})",
        EXTENTS[ZERO_EXTENT].0 / BS,
        (EXTENTS[ZERO_EXTENT].0 + EXTENTS[ZERO_EXTENT].1) / BS
    );
}

#[test]
fn copies_equal_the_image_when_its_unmapped_blocks_are_zero() {
    if !bmaptool_present() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("plain.raw");
    let content = make_image(&img, false);
    let (_, text) = our_bmap(&img, 0, &[]);
    let map = d.path().join("plain.raw.bmap");
    fs::write(&map, &text).unwrap();

    // To a path that does not exist yet, and to an existing empty file.
    let fresh = d.path().join("fresh.raw");
    let empty = d.path().join("empty.raw");
    File::create(&empty).unwrap();
    for dest in [&fresh, &empty] {
        let o = copy(Some(&map), &img, dest);
        assert!(o.status.success(), "bmaptool copy: {}", stderr(&o));
        assert!(
            fs::read(dest).unwrap() == content,
            "{} differs",
            dest.display()
        );
    }

    // The image as we ship it: zstd-compressed, with the map found by name (bmaptool tries
    // `plain.raw.zst.bmap`, then `plain.raw.bmap`: bmaptools/CLI.py, find_and_open_bmap).
    let zst = d.path().join("plain.raw.zst");
    let mut enc = zstd::Encoder::new(File::create(&zst).unwrap(), 3).unwrap();
    enc.write_all(&content).unwrap();
    enc.finish().unwrap();
    let dest = d.path().join("from-zst.raw");
    let o = copy(None, &zst, &dest);
    assert!(o.status.success(), "bmaptool copy of .zst: {}", stderr(&o));
    assert!(
        stderr(&o).contains("plain.raw.bmap"),
        "the map was discovered: {}",
        stderr(&o)
    );
    assert!(fs::read(&dest).unwrap() == content);
}

#[test]
fn an_edited_bmap_is_refused_by_bmaptool_and_by_us() {
    if !bmaptool_present() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("t.raw");
    make_image(&img, false);
    let (ranges, text) = our_bmap(&img, 0, &[]);
    let r = &ranges[2];
    assert!(r.last > r.first);
    let range_digit = text.replace(
        &format!("> {}-{} </Range>", r.first, r.last),
        &format!("> {}-{} </Range>", r.first, r.last - 1),
    );
    let chksum_char = {
        let at = text.find(&ranges[1].sha256).unwrap();
        let mut t = text.clone();
        let c = if &t[at..at + 1] == "f" { "e" } else { "f" };
        t.replace_range(at..at + 1, c);
        t
    };
    for (what, edited) in [("range", range_digit), ("chksum", chksum_char)] {
        assert_ne!(edited, text);
        let map = d.path().join(format!("{what}.bmap"));
        fs::write(&map, &edited).unwrap();
        let o = copy(Some(&map), &img, &d.path().join("dest.raw"));
        assert!(!o.status.success(), "bmaptool accepted an edited {what}");
        assert!(
            stderr(&o).contains("checksum mismatch for bmap file"),
            "{what}: {}",
            stderr(&o)
        );
        let e = format!("{:#}", bmap::parse(&edited).unwrap_err());
        assert!(
            e.contains("the .bmap file was modified after it was made: BmapFileChecksum"),
            "{what}: {e}"
        );
    }
}

#[test]
fn we_read_what_bmaptool_create_writes_and_write_the_same_layout() {
    if !bmaptool_present() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("c.raw");
    make_image(&img, false);
    let o = run(&["create", img.to_str().unwrap()]);
    assert!(o.status.success(), "bmaptool create: {}", stderr(&o));
    let theirs = String::from_utf8(o.stdout).unwrap();
    let b = bmap::parse(&theirs).unwrap();
    assert_eq!(b.version, "2.0");
    assert_eq!(b.image_size, SIZE);
    assert_eq!(
        b.block_size, BS,
        "bmaptool used the file system's block size; this test expects 4096"
    );
    assert_eq!(b.blocks_count, SIZE.div_ceil(BS));
    let spans: Vec<_> = b.ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(
        spans,
        merged_spans(),
        "mapped blocks as the file system reports them"
    );
    let want = bmap::checksum_ranges(&mut File::open(&img).unwrap(), &spans, SIZE, BS).unwrap();
    assert_eq!(b.ranges, want);
    assert_eq!(
        b.mapped_blocks,
        spans.iter().map(|(f, l)| l - f + 1).sum::<u64>()
    );

    // Same layout: equal once the explanatory comments (whose wording differs between bmaptool
    // releases), our file-name comment and the file digests are set aside.
    let ours = bmap::render("c.raw", SIZE, BS, &want).unwrap();
    assert_eq!(
        normalize(&ours),
        normalize(&theirs),
        "ours:\n{ours}\ntheirs:\n{theirs}"
    );

    // `--no-checksum` maps have ranges without digests: bmaptool copies them unverified, we
    // refuse them.
    let o = run(&["create", "--no-checksum", img.to_str().unwrap()]);
    assert!(o.status.success());
    let e = format!("{:#}", bmap::parse_bytes(&o.stdout).unwrap_err());
    assert!(e.contains("no chksum attribute"), "{e}");
}

/// Drop comments spanning lines and the file-name comment; zero BmapFileChecksum.
fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("<!--") {
        let end = rest[i..].find("-->").map_or(rest.len(), |j| i + j + 3);
        let comment = &rest[i..end];
        out.push_str(&rest[..i]);
        if !comment.contains('\n') && !comment.starts_with("<!-- Image file:") {
            out.push_str(comment);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    let out: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = out.join("\n");
    let open = "<BmapFileChecksum> ";
    if let Some(i) = out.find(open) {
        let at = i + open.len();
        out.replace_range(at..at + 64, &"0".repeat(64));
    }
    out
}

#[test]
fn padding_and_minor_versions_are_accepted_by_both_and_major_3_by_neither() {
    if !bmaptool_present() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("v.raw");
    let content = make_image(&img, false);
    let (ranges, text) = our_bmap(&img, 0, &[]);
    let r = &ranges[2];
    let spaced = format!("> {} - {}\n</Range>", r.first, r.last);
    let accepted = [
        (
            "padded values",
            text.replace(
                &format!("<ImageSize> {SIZE} </ImageSize>"),
                &format!("<ImageSize>\n\t  {SIZE}\t\n  </ImageSize>"),
            )
            .replace(&format!("> {}-{} </Range>", r.first, r.last), &spaced),
        ),
        (
            "minor version",
            text.replace("version=\"2.0\"", "version=\"2.7\""),
        ),
        (
            "version 1.4",
            text.replace("version=\"2.0\"", "version=\"1.4\""),
        ),
    ];
    for (what, t) in accepted {
        assert_ne!(t, text, "{what}");
        let t = reseal(&t);
        let b = bmap::parse(&t).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(b.ranges, ranges, "{what}");
        let map = d.path().join("edited.bmap");
        fs::write(&map, &t).unwrap();
        let dest = d.path().join("dest.raw");
        let o = copy(Some(&map), &img, &dest);
        assert!(o.status.success(), "{what}: bmaptool: {}", stderr(&o));
        assert!(fs::read(&dest).unwrap() == content, "{what}");
    }

    let v3 = reseal(&text.replace("version=\"2.0\"", "version=\"3.0\""));
    let map = d.path().join("v3.bmap");
    fs::write(&map, &v3).unwrap();
    let o = copy(Some(&map), &img, &d.path().join("dest3.raw"));
    assert!(!o.status.success(), "bmaptool accepted version 3.0");
    let e = format!("{:#}", bmap::parse(&v3).unwrap_err());
    assert!(e.contains("format 3.x is newer"), "{e}");
}
