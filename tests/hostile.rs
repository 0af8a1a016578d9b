//! Hostile inputs, as a user who wants edgeimage to hang, exhaust memory, panic or print a file
//! it has no business showing would craft them: files that are not regular files, secrets
//! behind symbolic links, nesting and counts far past anything real, huge sizes. Each runs the
//! binary under a watchdog (a regression fails the test instead of hanging it), and checks
//! the exit, the message and, where memory was the problem, the child's peak memory.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::watch;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// The two non-regular files every case is tried with: a FIFO (blocks a reader forever) and
/// `/dev/zero` (never ends), each put at `path`.
/// A kind of special file and how to put one in place.
type Special = (&'static str, Box<dyn Fn()>);

fn specials(path: &Path) -> Vec<Special> {
    let p1 = path.to_path_buf();
    let p2 = path.to_path_buf();
    vec![
        (
            "FIFO",
            Box::new(move || {
                let _ = fs::remove_file(&p1);
                mkfifo(&p1);
            }),
        ),
        (
            "character device",
            Box::new(move || {
                let _ = fs::remove_file(&p2);
                symlink("/dev/zero", &p2).unwrap();
            }),
        ),
    ]
}

fn build_args<'a>(f: &'a Fixture, out: &'a Path) -> Vec<&'a str> {
    vec!["build", "-q", "--profile", s(&f.profile), "--out", s(out)]
}

fn with_config(f: &Fixture, patch: bool) {
    let d = f.dir.path();
    fs::write(
        d.join("machine.yaml"),
        edgeimage::config::fixtures::worker_yaml(),
    )
    .unwrap();
    if patch {
        fs::write(d.join("p.yaml"), "machine:\n  network:\n    hostname: h\n").unwrap();
    }
}

#[test]
fn meta_value_file_that_is_not_a_regular_file_is_refused() {
    let f = small_fixture("[meta]\n\"0x0c\" = { file = \"v\" }");
    let out = f.dir.path().join("out");
    for (what, make) in specials(&f.dir.path().join("v")) {
        make();
        watch::run(&build_args(&f, &out), &[], LIMIT).refused(&[
            what,
            "not a regular file",
            "META value file",
        ]);
    }
}

#[test]
fn asset_that_is_not_a_regular_file_is_refused() {
    let f = small_fixture("");
    let out = f.dir.path().join("out");
    for (what, make) in specials(&f.dir.path().join("assets/vmlinuz")) {
        make();
        watch::run(&build_args(&f, &out), &[], LIMIT).refused(&["vmlinuz", what]);
    }
}

#[test]
fn patch_that_is_not_a_regular_file_is_refused() {
    let f = small_fixture(
        "[config]\npath = \"machine.yaml\"\npatches = [\"p.yaml\"]\ndelivery = \"inline\"",
    );
    with_config(&f, false);
    let out = f.dir.path().join("out");
    for (what, make) in specials(&f.dir.path().join("p.yaml")) {
        make();
        watch::run(&build_args(&f, &out), &[], LIMIT).refused(&[
            "p.yaml",
            what,
            "configuration patch",
        ]);
    }
}

#[test]
fn trust_store_members_that_are_not_regular_files_are_refused() {
    let b = signed();
    let pubkey = b.trust.join("trusted/release.pub");
    let saved = fs::read(&pubkey).unwrap();
    // In a trust store nothing is followed: a FIFO is refused as such, a link as a link.
    for (file, kind) in [
        (pubkey.clone(), "public key"),
        (b.trust.join("revoked"), ""),
    ] {
        for (what, make) in specials(&file) {
            make();
            let want = if what == "FIFO" {
                what
            } else {
                "symbolic link"
            };
            watch::run(
                &["verify", "-q", "--trust", s(&b.trust), s(&b.zst())],
                &[],
                LIMIT,
            )
            .refused(&[want, kind]);
        }
        let _ = fs::remove_file(&file);
        fs::write(&pubkey, &saved).unwrap();
    }
    let r = watch::run(
        &["verify", "-q", "--trust", s(&b.trust), s(&b.zst())],
        &[],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn manifest_and_key_that_are_not_regular_files_are_refused() {
    let b = signed();
    let dir = b.f.dir.path();
    let m = dir.join("m.json");
    for (what, make) in specials(&m) {
        make();
        watch::run(
            &[
                "verify",
                "-q",
                "--trust",
                s(&b.trust),
                "--manifest",
                s(&m),
                s(&b.zst()),
            ],
            &[],
            LIMIT,
        )
        .refused(&[what, "manifest"]);
    }
    let k = dir.join("k.key");
    for (what, make) in specials(&k) {
        make();
        watch::run(&["sign", "--key", s(&k), s(&b.manifest_path())], &[], LIMIT)
            .refused(&[what, "secret key"]);
    }
}

/// A `revoked` list that is a link to a secret file is refused without reading it; a
/// `revoked` list that holds a secret's text is refused without quoting it.
#[test]
fn a_revoked_list_never_shows_the_file_it_reads() {
    let b = signed();
    let secret = b.f.dir.path().join("shadow");
    let line = "root:$6$SECRET-HASH-aWx0ZQ:19000:0:99999:7:::";
    fs::write(&secret, format!("{line}\n")).unwrap();
    let revoked = b.trust.join("revoked");
    symlink(&secret, &revoked).unwrap();
    let zst = b.zst();
    let args = ["verify", "-q", "--trust", s(&b.trust), s(&zst)];
    watch::run(&args, &[], LIMIT)
        .refused(&["revoked", "symbolic link"])
        .never_shows("SECRET-HASH");
    fs::remove_file(&revoked).unwrap();
    fs::copy(&secret, &revoked).unwrap();
    watch::run(&args, &[], LIMIT)
        .refused(&["revoked"])
        .never_shows("SECRET-HASH")
        .never_shows("root:");
}

/// Deep flow nesting took the YAML parser time growing with its square (200,000 levels: over
/// a minute); it is refused before the parser sees it, in every YAML input.
#[test]
fn deeply_nested_yaml_is_refused_in_every_yaml_input() {
    let deep = "[".repeat(200_000);
    let cases = [
        (
            "config",
            "machine.yaml",
            "[config]\npath = \"machine.yaml\"\ndelivery = \"inline\"",
        ),
        (
            "patch",
            "p.yaml",
            "[config]\npath = \"machine.yaml\"\npatches = [\"p.yaml\"]\ndelivery = \"inline\"",
        ),
        ("schematic", "s.yaml", "schematic = \"s.yaml\""),
        ("network", "n.yaml", "network = \"n.yaml\""),
    ];
    for (what, file, toml) in cases {
        let f = small_fixture(toml);
        with_config(&f, false);
        fs::write(f.dir.path().join(file), &deep).unwrap();
        let out = f.dir.path().join("out");
        watch::run(&build_args(&f, &out), &[], Duration::from_secs(20)).refused(&[
            file,
            "nest deeper than 64 levels",
            "line 1",
        ]);
        let _ = what;
    }
}

#[test]
fn hundreds_of_thousands_of_kernel_arguments_are_refused() {
    let args = vec!["\"a\""; 200_000].join(",");
    let f = small_fixture(&format!("[kernel_args]\nextra = [{args}]"));
    let out = f.dir.path().join("out");
    watch::run(&build_args(&f, &out), &[], Duration::from_secs(20)).refused(&[
        "`kernel_args`",
        "200000 extra kernel arguments, more than the 1024",
    ]);
}

#[test]
fn a_disk_size_past_the_limit_is_refused() {
    let f = small_fixture("");
    let text = fs::read_to_string(&f.profile)
        .unwrap()
        .replace("disk_size = \"44MiB\"", "disk_size = \"1000TiB\"");
    fs::write(&f.profile, text).unwrap();
    let out = f.dir.path().join("out");
    watch::run(&build_args(&f, &out), &[], Duration::from_secs(20))
        .refused(&["`disk_size`", "1024000 GiB is more than the 4096 GiB"]);
}

/// Unwritten space is cheap: a 1 TiB disk holding a few MiB of data compresses to tens of
/// MiB (a precompressed zero frame per MiB), builds without reading or hashing a TiB (the
/// watchdog would stop it), and verifies. `cargo xtask bench build` measures the time (its 1 TiB row).
#[test]
fn a_one_tib_disk_builds_and_verifies_without_touching_its_empty_space() {
    let f = small_fixture("");
    let text = fs::read_to_string(&f.profile)
        .unwrap()
        .replace("disk_size = \"44MiB\"", "disk_size = \"1TiB\"");
    fs::write(&f.profile, text).unwrap();
    let key = new_key(&f.dir.path().join("keys"), "release");
    let out = f.dir.path().join("out");
    let mut args = build_args(&f, &out);
    args.extend(["--sign-key", s(&key.secret)]);
    let r = watch::run(&args, &[], Duration::from_secs(300));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let zst = find_output(&out, "t.raw.zst");
    let size = fs::metadata(&zst).unwrap().len();
    assert!(size < 80 << 20, "{size} bytes");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(find_output(&out, "t.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["image"]["size"], 1u64 << 40);
    let trust = f.dir.path().join("trust");
    fs::create_dir_all(trust.join("trusted")).unwrap();
    fs::copy(&key.public, trust.join("trusted/release.pub")).unwrap();
    let v = watch::run(
        &["verify", "-q", "--trust", s(&trust), s(&zst)],
        &[],
        Duration::from_secs(300),
    );
    assert_eq!(v.code, Some(0), "{}{}", v.stdout, v.stderr);
}

/// An output of the build in `out`, wherever the output set puts it.
fn find_output(out: &Path, name: &str) -> PathBuf {
    for p in [out.join(name), out.join("t").join(name)] {
        if p.exists() {
            return p;
        }
    }
    panic!("no {name} under {}", out.display());
}

/// `records summarize` streams the log: its memory does not grow with the log (it held about
/// seven times the log before).
#[test]
fn records_summarize_memory_does_not_grow_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let mut text = String::with_capacity(70 << 20);
    let mut i = 0u64;
    while text.len() < 64 << 20 {
        text.push_str(&format!(
            "{{\"row\":\"r{i}\",\"result\":\"verified\",\"disk_serial\":\"S{i}\",\"time\":\"2026-01-01T00:00:00Z\",\"bytes_written\":4096,\"note\":\"{}\"}}\n",
            "x".repeat(200)
        ));
        i += 1;
    }
    fs::write(&log, &text).unwrap();
    drop(text);
    let r = watch::run(&["records", "summarize", s(&log)], &[], LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(&i.to_string()), "{}", r.stdout);
    assert!(
        r.peak_rss_mib < 48,
        "summarize of a 64 MiB log peaked at {} MiB",
        r.peak_rss_mib
    );
}

/// The partition table of an image is read by edgeimage's own reader: entries of 256 bytes
/// (128 × 2^1, legal) with valid CRCs made the `gpt` crate panic; a table claiming 20 million
/// entries made it allocate gigabytes.
#[test]
fn inspect_reads_wide_gpt_entries_and_refuses_huge_tables() {
    let b = setup("", false);
    let raw = fs::read(b.raw()).unwrap();
    let hdr = 512usize;
    let entries_at = 1024usize;
    let count = u32::from_le_bytes(raw[hdr + 80..hdr + 84].try_into().unwrap()) as usize;
    let mut wide = vec![0u8; count * 256];
    for i in 0..count {
        wide[i * 256..i * 256 + 128]
            .copy_from_slice(&raw[entries_at + i * 128..entries_at + (i + 1) * 128]);
    }
    let fix_header = |img: &mut Vec<u8>| {
        img[hdr + 16..hdr + 20].fill(0);
        let size = u32::from_le_bytes(img[hdr + 12..hdr + 16].try_into().unwrap()) as usize;
        let c = crc32(&img[hdr..hdr + size]);
        img[hdr + 16..hdr + 20].copy_from_slice(&c.to_le_bytes());
    };
    let mut img = raw.clone();
    img[entries_at..entries_at + wide.len()].copy_from_slice(&wide);
    img[hdr + 84..hdr + 88].copy_from_slice(&256u32.to_le_bytes());
    img[hdr + 88..hdr + 92].copy_from_slice(&crc32(&wide).to_le_bytes());
    // The entries now reach past the first usable LBA the header states; lower it is not
    // needed for reading (the ESP starts at 1 MiB).
    fix_header(&mut img);
    let path = b.f.dir.path().join("wide.raw");
    fs::write(&path, &img).unwrap();
    let r = watch::run(&["inspect", "--json", s(&path)], &[], LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let labels: Vec<&str> = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"EFI") && labels.contains(&"META"),
        "{labels:?}"
    );

    let mut img = raw.clone();
    img[hdr + 80..hdr + 84].copy_from_slice(&20_000_000u32.to_le_bytes());
    fix_header(&mut img);
    fs::write(&path, &img).unwrap();
    let r = watch::run(&["inspect", s(&path)], &[], LIMIT);
    r.refused(&[
        "20000000 entries, more than the 4096 read",
        "bytes 512..1024",
    ]);
    assert!(r.peak_rss_mib < 100, "{} MiB", r.peak_rss_mib);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A `.bmap` of 200,000 ranges is read in linear time (its errors used to look up line
/// numbers from the start for every range): the 200,000th range's error names its line.
#[test]
fn a_block_map_of_200k_ranges_is_read_in_linear_time() {
    let mut ranges = String::new();
    let n = 200_000u64;
    for i in 0..n {
        let sha = "0".repeat(64);
        let (a, b) = if i == n - 1 {
            (2 * i + 1, 2 * i)
        } else {
            (2 * i, 2 * i)
        };
        ranges.push_str(&format!(
            "        <Range chksum=\"{sha}\"> {a}-{b} </Range>\n"
        ));
    }
    let zero = "0".repeat(64);
    let text = format!(
        "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n    <ImageSize> {} </ImageSize>\n    <BlockSize> 4096 </BlockSize>\n    <BlocksCount> {} </BlocksCount>\n    <MappedBlocksCount> {n} </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {zero} </BmapFileChecksum>\n    <BlockMap>\n{ranges}    </BlockMap>\n</bmap>\n",
        4 * n * 4096,
        4 * n
    );
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    let text = text.replacen(&zero, &sum, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(edgeimage::artifact::bmap::parse(&text).map(|b| b.ranges.len()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("reading the block map did not end");
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains(&format!("line {}", n + 9)), "{e}");
}

/// The README's input limits table lists every kind of input with the limit the code applies.
#[test]
fn the_readme_lists_every_input_limit() {
    let section = readme_section("Input limits");
    let section = section.as_str();
    for kind in edgeimage::input::Kind::ALL {
        let what = kind.what();
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| {what} |")))
            .unwrap_or_else(|| panic!("no row for {what:?} in the README's input limits"));
        if kind != edgeimage::input::Kind::Disk {
            let limit = edgeimage::progress::human_bytes(kind.max());
            assert!(
                row.contains(&format!("| {limit}")),
                "{row}: the code says {limit}"
            );
        }
    }
    for (needle, value) in [
        (
            "`disk_size`",
            format!("{} TiB", edgeimage::layout::MAX_DISK_SIZE >> 40),
        ),
        (
            "YAML nesting",
            format!("{} levels", edgeimage::format::yaml::MAX_DEPTH),
        ),
        ("`kernel_args.extra`", "1024 entries".to_string()),
        (
            "| GPT",
            format!("{} entries", edgeimage::format::gpt::MAX_ENTRIES),
        ),
        (
            "zstd image without a seek table",
            edgeimage::progress::human_bytes(edgeimage::inspect::source::MAX_STREAM)
                .replace(".0", ""),
        ),
        (
            "| initrd",
            format!("{} archives", edgeimage::inspect::initrd::MAX_ARCHIVES),
        ),
    ] {
        let row = section
            .lines()
            .find(|l| l.starts_with("| ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no row for {needle} in the README's input limits"));
        assert!(row.contains(&value), "{row}: the code says {value}");
    }
}
