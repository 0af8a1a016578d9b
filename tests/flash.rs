//! `edgeimage flash` end to end: signed builds written to files, sparse files and loop
//! devices, checked with `cmp`, `sgdisk -v` and `edgeimage verify`; plain xz/gzip/zstd
//! images and raw images with a `bmaptool`-made `.bmap`; every refusal with its message and
//! exit code, nothing written; fault injection (a loop device on a full tmpfs, a file on a full
//! tmpfs): the failing target ends without a partition table, the others are verified, the
//! record says which is which.
//!
//! Loop devices and tmpfs mounts need root; where the machine refuses them the test says
//! SKIPPED loudly and checks the rest.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `edgeimage flash` with args.
fn flash(args: &[&str]) -> Output {
    let mut all = vec!["flash"];
    all.extend_from_slice(args);
    run(&all)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn has_gpt(path: &Path) -> bool {
    let f = fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 512).is_ok() && &b == b"EFI PART"
}

fn cmp(a: &Path, b: &Path) {
    let o = Command::new("cmp").arg(a).arg(b).output().unwrap();
    assert!(
        o.status.success(),
        "cmp {} {}: {}",
        a.display(),
        b.display(),
        out(&o)
    );
}

fn sgdisk_ok(p: &Path) {
    if !have("sgdisk") {
        return;
    }
    let o = tool("sgdisk").arg("-v").arg(p).output().unwrap();
    let text = out(&o);
    assert!(
        text.contains("No problems found"),
        "sgdisk -v {}: {text}",
        p.display()
    );
}

fn records(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Signed images.

#[test]
fn signed_image_to_two_files_and_a_loop_device_with_records() {
    let b = signed();
    let dir = b.dir();
    let raw = b.raw();
    let size = fs::metadata(&raw).unwrap().len();
    let a = dir.join("a.img");
    let c = dir.join("c.img");
    // An existing file with other content is replaced by exactly the image.
    fs::write(&c, vec![0x5a; 3 << 20]).unwrap();
    let rec = dir.join("records.jsonl");
    let lo_file = dir.join("loop.img");
    sparse(&lo_file, size + 8 * MIB);
    // A used disk: garbage where the image has holes, a stale GPT at its end.
    fs::File::options()
        .write(true)
        .open(&lo_file)
        .unwrap()
        .write_all_at(b"EFI PART stale backup", size + 8 * MIB - 512)
        .unwrap();
    let lo = Loop::new(&lo_file);
    let mut args = vec![
        s(b.zst().as_path()).to_string(),
        "--trust".into(),
        s(&b.trust).into(),
        "-t".into(),
        s(&a).into(),
        "-t".into(),
        s(&c).into(),
        "--record".into(),
        s(&rec).into(),
        "--yes".into(),
    ];
    if let Some(l) = &lo {
        args.push("-t".into());
        args.push(l.0.clone());
    }
    let argv: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    let o = flash(&argv);
    let text = out(&o);
    assert_eq!(code(&o), 0, "{text}");
    assert!(text.contains("signed by key"), "{text}");
    let n = if lo.is_some() { 3 } else { 2 };
    assert!(
        text.contains(&format!("{n} of {n} target(s) written and verified")),
        "{text}"
    );
    for t in [&a, &c] {
        cmp(t, &raw);
        sgdisk_ok(t);
        b.verify(t, &[]).expect(0, "VERIFIED");
    }
    // Sparse: only the mapped bytes take space.
    let used = fs::metadata(&a).unwrap().blocks() * 512;
    assert!(used < size / 2, "{used} bytes allocated of {size}");
    if let Some(l) = &lo {
        b.verify(l.path(), &[]).expect(0, "VERIFIED");
        let mut img = vec![0u8; size as usize];
        fs::File::open(l.path())
            .unwrap()
            .read_exact_at(&mut img, 0)
            .unwrap();
        // Mapped ranges equal; the stale backup GPT beyond the image is gone.
        let m = b.manifest();
        for r in m["block_map"]["ranges"].as_array().unwrap() {
            let (f, last) = (r["first"].as_u64().unwrap(), r["last"].as_u64().unwrap());
            let (x, y) = ((f * 4096) as usize, ((last + 1) * 4096) as usize);
            let want = {
                let mut v = vec![0u8; y - x];
                fs::File::open(&raw)
                    .unwrap()
                    .read_exact_at(&mut v, x as u64)
                    .unwrap();
                v
            };
            assert!(
                img[x..y] == want[..],
                "range {f}-{last} differs on the loop device"
            );
        }
        let mut tail = [0u8; 9];
        fs::File::open(l.path())
            .unwrap()
            .read_exact_at(&mut tail, size + 8 * MIB - 512)
            .unwrap();
        assert_ne!(&tail, b"EFI PART ", "the old backup GPT was wiped");
    }
    let recs = records(&rec);
    assert_eq!(recs.len(), n);
    let m = b.manifest();
    for r in &recs {
        assert_eq!(r["result"], "verified", "{r}");
        assert_eq!(r["key_id"], b.key.id.as_str());
        assert_eq!(r["trusted"], true);
        assert_eq!(
            r["image_sha256"],
            format!("sha256-1m:{}", m["image"]["chunk_sha256"].as_str().unwrap())
        );
        assert_eq!(r["name"], "t");
        assert_eq!(r["bytes_written"], r["bytes_verified"]);
        assert!(r["bytes_verified"].as_u64().unwrap() > MIB);
        assert!(r["manifest_sha256"].as_str().unwrap().len() == 64);
    }
}

#[test]
fn json_lines_events_for_dashboards() {
    let b = signed();
    let t = b.dir().join("t.img");
    let o = flash(&[s(&b.zst()), "--trust", s(&b.trust), "-t", s(&t), "--json"]);
    assert_eq!(code(&o), 0, "{}", out(&o));
    let events: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"begin"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    for k in ["start", "progress", "verified"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let done = events.last().unwrap();
    assert_eq!(done["succeeded"], 1);
    assert_eq!(done["failed"], 0);
    let p = events.iter().find(|e| e["event"] == "progress").unwrap();
    assert_eq!(p["label"], s(&t));
    assert!(p["total"].as_u64().unwrap() > 0);
}

#[test]
fn raw_image_with_its_manifest_inside() {
    let b = signed();
    let t = b.dir().join("t.img");
    // The sidecar manifest is not needed: the one inside the image is signed.
    fs::remove_file(b.manifest_path()).unwrap();
    let o = flash(&[s(&b.raw()), "--trust", s(&b.trust), "-t", s(&t)]);
    assert_eq!(code(&o), 0, "{}", out(&o));
    assert!(out(&o).contains("raw,"), "{}", out(&o));
    cmp(&t, &b.raw());
}

#[test]
fn untrusted_and_unsigned_images_are_refused_before_anything_is_written() {
    let b = signed();
    // A trust store without the signing key.
    let other = new_key(&b.dir().join("k2"), "other");
    let t2 = b.dir().join("trust2");
    fs::create_dir_all(t2.join("trusted")).unwrap();
    fs::copy(&other.public, t2.join("trusted/other.pub")).unwrap();
    let t = b.dir().join("t.img");
    let o = flash(&[s(&b.zst()), "--trust", s(&t2), "-t", s(&t)]);
    assert_eq!(code(&o), 4, "{}", out(&o));
    assert!(out(&o).contains("not in the trust store"), "{}", out(&o));
    assert!(out(&o).contains("--allow-unsigned"), "{}", out(&o));
    assert!(!t.exists(), "nothing may be written");
    // Revoked: refused even with --allow-unsigned.
    fs::write(b.trust.join("revoked"), format!("{}\n", b.key.id)).unwrap();
    let o = flash(&[
        s(&b.zst()),
        "--trust",
        s(&b.trust),
        "-t",
        s(&t),
        "--allow-unsigned",
    ]);
    assert_eq!(code(&o), 5, "{}", out(&o));
    assert!(!t.exists());
    fs::remove_file(b.trust.join("revoked")).unwrap();
    // No trust store at all.
    let o = flash(&[s(&b.zst()), "-t", s(&t)]);
    assert_eq!(code(&o), 1, "{}", out(&o));
    assert!(out(&o).contains("--trust DIR"), "{}", out(&o));

    // Unsigned build: refused, then written with --allow-unsigned (and still verified
    // against the unsigned manifest's digests).
    let u = setup("", false);
    let o = flash(&[s(&u.zst()), "--trust", s(&u.trust), "-t", s(&t)]);
    assert_eq!(code(&o), 3, "{}", out(&o));
    assert!(out(&o).contains("no signature"), "{}", out(&o));
    assert!(!t.exists());
    let rec = u.dir().join("r.jsonl");
    let o = flash(&[
        s(&u.zst()),
        "--trust",
        s(&u.trust),
        "-t",
        s(&t),
        "--allow-unsigned",
        "--record",
        s(&rec),
    ]);
    assert_eq!(code(&o), 0, "{}", out(&o));
    assert!(out(&o).contains("NOT TRUSTED"), "{}", out(&o));
    cmp(&t, &u.raw());
    assert_eq!(records(&rec)[0]["trusted"], false);
}

#[test]
fn wrong_profile_and_rollback_are_refused() {
    let b = signed();
    let t = b.dir().join("t.img");
    let o = flash(&[
        s(&b.zst()),
        "--trust",
        s(&b.trust),
        "-t",
        s(&t),
        "--min-build",
        "5",
    ]);
    assert_eq!(code(&o), 9, "{}", out(&o));
    let o = flash(&[
        s(&b.zst()),
        "--trust",
        s(&b.trust),
        "-t",
        s(&t),
        "--profile",
        "other",
    ]);
    assert_eq!(code(&o), 10, "{}", out(&o));
    assert!(!t.exists());
}

// ---------------------------------------------------------------------------------------------
// Other image formats.

#[test]
fn plain_xz_gzip_and_zstd_images_are_recognised_by_magic() {
    let b = signed();
    let raw = b.raw();
    let dir = b.dir();
    for (tool_name, args, name) in [
        ("xz", vec!["-T2", "-c", "-1"], "image.bin"),
        ("gzip", vec!["-c", "-1"], "image.dat"),
    ] {
        if !have(tool_name) {
            continue;
        }
        let file = dir.join(name);
        let o = Command::new(tool_name)
            .args(&args)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(o.status.success());
        fs::write(&file, &o.stdout).unwrap();
        let t = dir.join(format!("{name}.target"));
        // No manifest next to it: nobody vouches for it.
        let o = flash(&[s(&file), "--trust", s(&b.trust), "-t", s(&t)]);
        assert_eq!(code(&o), 3, "{tool_name}: {}", out(&o));
        assert!(
            out(&o).contains(&format!("plain {tool_name}")),
            "{}",
            out(&o)
        );
        let o = flash(&[s(&file), "--allow-unsigned", "-t", s(&t)]);
        assert_eq!(code(&o), 0, "{tool_name}: {}", out(&o));
        cmp(&t, &raw);
        // With the manifest given, it is verified against the signed digests.
        let o = flash(&[
            s(&file),
            "--trust",
            s(&b.trust),
            "--manifest",
            s(&b.manifest_path()),
            "-t",
            s(&t),
        ]);
        assert_eq!(code(&o), 0, "{tool_name}: {}", out(&o));
        assert!(out(&o).contains("signed by key"), "{}", out(&o));
        cmp(&t, &raw);
    }
    if have("zstd") {
        // An ordinary single-frame .zst: the signed manifest inside the image is found.
        let file = dir.join("single.zst");
        let o = Command::new("zstd")
            .args(["-q", "-1", "-c"])
            .arg(&raw)
            .output()
            .unwrap();
        fs::write(&file, &o.stdout).unwrap();
        let t = dir.join("single.target");
        let o = flash(&[s(&file), "--trust", s(&b.trust), "-t", s(&t)]);
        assert_eq!(code(&o), 0, "{}", out(&o));
        assert!(out(&o).contains("zstd, "), "{}", out(&o));
        assert!(out(&o).contains("signed by key"), "{}", out(&o));
        cmp(&t, &raw);
    }
}

#[test]
fn a_corrupted_compressed_stream_is_refused() {
    let b = signed();
    let dir = b.dir();
    // xz: measured before writing, so nothing is written.
    if have("xz") {
        let file = dir.join("bad.xz");
        let o = Command::new("xz")
            .args(["-c", "-0"])
            .arg(b.raw())
            .output()
            .unwrap();
        let mut data = o.stdout;
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&file, &data).unwrap();
        let t = dir.join("xz.target");
        let o = flash(&[s(&file), "--allow-unsigned", "-t", s(&t)]);
        assert_eq!(code(&o), 7, "{}", out(&o));
        assert!(
            out(&o).contains("compressed stream is damaged"),
            "{}",
            out(&o)
        );
        assert!(!t.exists(), "nothing may be written");
    }
    // Our seekable .raw.zst with a flipped byte in a data frame: zstd's frame checksum
    // stops it; the target is left without a partition table.
    let zst = b.zst();
    let mut data = fs::read(&zst).unwrap();
    let at = data.len() / 3;
    data[at] ^= 0x55;
    fs::write(&zst, &data).unwrap();
    let t = dir.join("zst.target");
    let rec = dir.join("r.jsonl");
    let o = flash(&[
        s(&zst),
        "--trust",
        s(&b.trust),
        "-t",
        s(&t),
        "--record",
        s(&rec),
    ]);
    assert_eq!(code(&o), 7, "{}", out(&o));
    assert!(
        !has_gpt(&t),
        "a half-written target must not have a partition table"
    );
    let r = &records(&rec)[0];
    assert_eq!(r["result"], "failed");
    // Wiped, or stopped before the first write (then nothing was touched at all).
    assert!(
        r["partition_table_wiped"] == true || r["partition_table_wiped"].is_null(),
        "{r}"
    );
}

/// A 40 MiB raw image without a manifest: noise, text and holes.
fn plain_image(path: &Path, seed: u32) {
    let mut v = vec![0u8; 40 << 20];
    for (i, b) in v[(2 << 20)..(12 << 20)].iter_mut().enumerate() {
        *b = ((i as u32 ^ seed).wrapping_mul(2654435761) >> 13) as u8;
    }
    for (i, b) in v[(20 << 20)..(26 << 20)].iter_mut().enumerate() {
        *b = b"plain image text "[i % 17];
    }
    fs::write(path, v).unwrap();
}

#[test]
fn raw_image_with_a_bmap_and_a_bmap_of_another_image() {
    if !have("bmaptool") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("plain.img");
    plain_image(&img, 1);
    // bmaptool create needs the holes to be holes.
    let holey = d.path().join("holey.img");
    let o = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&img)
        .arg(&holey)
        .output()
        .unwrap();
    assert!(o.status.success());
    let bmap = d.path().join("holey.bmap");
    let o = Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(&bmap)
        .arg(&holey)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let t = d.path().join("t.img");
    let o = flash(&[s(&holey), "-t", s(&t)]);
    assert_eq!(code(&o), 1, "{}", out(&o));
    let key = new_key(&d.path().join("keys"), "k");
    fs::create_dir_all(d.path().join("trusted")).unwrap();
    fs::copy(&key.public, d.path().join("trusted/k.pub")).unwrap();
    let o = flash(&[s(&holey), "--trust", s(d.path()), "-t", s(&t)]);
    assert_eq!(code(&o), 3, "{}", out(&o));
    assert!(out(&o).contains("only the block map"), "{}", out(&o));
    let o = flash(&[s(&holey), "--allow-unsigned", "-t", s(&t)]);
    assert_eq!(code(&o), 0, "{}", out(&o));
    assert!(out(&o).contains("NOT SIGNED (block map"), "{}", out(&o));
    cmp(&t, &img);

    // The same-sized image with other noise: the .bmap's digests catch it while writing.
    let other = d.path().join("other.img");
    plain_image(&other, 2);
    let t2 = d.path().join("t2.img");
    let o = flash(&[
        s(&other),
        "--bmap",
        s(&bmap),
        "--allow-unsigned",
        "-t",
        s(&t2),
    ]);
    assert_eq!(code(&o), 7, "{}", out(&o));
    assert!(
        out(&o).contains("does not match its digests"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("block map range #"), "{}", out(&o));
    // Of another size: refused before anything is written.
    let small = d.path().join("small.img");
    fs::write(&small, vec![1u8; 1 << 20]).unwrap();
    let t3 = d.path().join("t3.img");
    let o = flash(&[
        s(&small),
        "--bmap",
        s(&bmap),
        "--allow-unsigned",
        "-t",
        s(&t3),
    ]);
    assert_eq!(code(&o), 7, "{}", out(&o));
    assert!(
        out(&o).contains("does not belong to this image"),
        "{}",
        out(&o)
    );
    assert!(!t3.exists());
}

// ---------------------------------------------------------------------------------------------
// Refusals and faults.

#[test]
fn refusals_name_the_problem_and_write_nothing() {
    let b = signed();
    let dir = b.dir();
    let size = fs::metadata(b.raw()).unwrap().len();
    let base = [
        s(&b.zst()).to_string(),
        "--trust".into(),
        s(&b.trust).into(),
    ];
    let with = |extra: &[&str]| -> Output {
        let mut a: Vec<&str> = base.iter().map(|x| x.as_str()).collect();
        a.extend_from_slice(extra);
        flash(&a)
    };
    // The image itself as a target.
    let o = with(&["-t", s(&b.zst())]);
    assert_eq!(code(&o), 11, "{}", out(&o));
    assert!(out(&o).contains("the image being written"), "{}", out(&o));
    // The same target twice; the refusal is recorded for each target.
    let t = dir.join("t.img");
    let rec = dir.join("refused.jsonl");
    let o = with(&["-t", s(&t), "-t", s(&t), "--record", s(&rec)]);
    assert_eq!(code(&o), 11, "{}", out(&o));
    assert!(out(&o).contains("the same target"), "{}", out(&o));
    assert!(!t.exists());
    let recs = records(&rec);
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r["result"] == "refused"), "{recs:?}");
    assert!(recs[1]["error"]
        .as_str()
        .unwrap()
        .contains("the same target"));
    // A target refused for another's reason says so.
    let other = dir.join("other.img");
    let rec2 = dir.join("refused2.jsonl");
    let o = with(&["-t", s(&other), "-t", s(&b.zst()), "--record", s(&rec2)]);
    assert_eq!(code(&o), 11, "{}", out(&o));
    let recs = records(&rec2);
    let err = |i: usize| recs[i]["error"].as_str().unwrap().to_string();
    assert!(err(0).starts_with("nothing written: "), "{recs:?}");
    assert!(err(1).contains("the image being written"), "{recs:?}");
    assert!(!other.exists());
    // Unknown --force names.
    let o = with(&["-t", s(&t), "--force", "everything"]);
    assert_eq!(code(&o), 1, "{}", out(&o));
    assert!(out(&o).contains("no such check"), "{}", out(&o));

    // Too small, and mounted: loop devices.
    let small = dir.join("small.img");
    sparse(&small, size / 2);
    if let Some(l) = Loop::new(&small) {
        let o = with(&["-t", &l.0, "--yes"]);
        assert_eq!(code(&o), 11, "{}", out(&o));
        assert!(out(&o).contains("the image needs"), "{}", out(&o));
        assert!(out(&o).contains("nothing was written"), "{}", out(&o));
        // Not confirmed without --yes and without a terminal.
        let o = with(&["-t", &l.0, "--force", "too-small"]);
        assert_eq!(code(&o), 12, "{}", out(&o));
    }
    if !have("mkfs.ext4") {
        return;
    }
    let fsimg = dir.join("fs.img");
    sparse(&fsimg, size + MIB);
    let o = tool("mkfs.ext4").arg("-q").arg(&fsimg).output().unwrap();
    assert!(o.status.success());
    if let Some(l) = Loop::new(&fsimg) {
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let m = Command::new("mount").arg(&l.0).arg(&mnt).output().unwrap();
        if !m.status.success() {
            eprintln!("SKIPPED (mounted loop device): {}", out(&m));
            return;
        }
        let o = with(&["-t", &l.0, "--yes"]);
        let _ = Command::new("umount").arg(&mnt).status();
        assert_eq!(code(&o), 11, "{}", out(&o));
        assert!(
            out(&o).contains(&format!("is mounted on {}", mnt.display())),
            "{}",
            out(&o)
        );
        // The filesystem is intact.
        let o = tool("e2fsck")
            .args(["-n", "-f"])
            .arg(&l.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", out(&o));
    }
}

#[test]
fn a_partition_is_refused_with_its_disk_named() {
    use edgeimage::flash::{self, FlashOptions, TargetArg};
    let b = signed();
    // A simulated system: one disk `sdx` with a partition `sdx1`.
    let root = b.dir().join("root");
    let sim = FakeSystem::new(&root);
    let disk = sim.disk("devices/virtual", "sdx", "8:16", 8 << 30, None);
    sim.partition(&disk, "sdx1", 1, "8:17", 512 << 20);
    let opts = FlashOptions {
        image: b.zst(),
        targets: vec![TargetArg::Path("/dev/sdx1".into())],
        source: flash::source::SourceOptions {
            trust: Some(b.trust.clone()),
            ..Default::default()
        },
        yes: true,
        force: vec![],
        record: None,
        settings: Default::default(),
        style: flash::ui::Style::Quiet,
        system_root: root.clone(),
        line: None,
    };
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sum = flash::flash(&opts, cancel);
    let text = sum.lines.join("\n");
    assert_eq!(sum.exit_code, 11, "{text}");
    assert!(text.contains("/dev/sdx1"), "{text}");
    assert!(text.contains("partition"), "{text}");
    assert!(text.contains("/dev/sdx"), "{text}");
    assert!(text.contains("nothing was written"), "{text}");
    assert_eq!(fs::metadata(root.join("dev/sdx1")).unwrap().len(), 0);
}

#[test]
fn a_target_failing_mid_write_ends_without_partition_table_and_the_others_succeed() {
    let b = signed();
    let dir = b.dir();
    let size = fs::metadata(b.raw()).unwrap().len();
    let mapped: u64 = b.manifest()["block_map"]["mapped_blocks"].as_u64().unwrap() * 4096;
    // A tmpfs with room for a third of the mapped data: writes fail with ENOSPC after it.
    let room = format!("{}k", ((mapped / 2 + 2 * MIB) / 4096) * 4);
    let Some(fs_) = Tmpfs::new(&dir.join("small-fs"), &room) else {
        return;
    };
    let failing_file = fs_.0.join("target.img");
    let good = dir.join("good.img");
    let rec = dir.join("r.jsonl");
    let mut targets = vec![s(&failing_file).to_string(), s(&good).to_string()];
    // The same fault on a block device: a loop device whose backing file lives on a second
    // full tmpfs fails with I/O errors once the tmpfs is full.
    let fs2 = Tmpfs::new(&dir.join("small-fs2"), &room);
    let lo = fs2.as_ref().and_then(|f| {
        let backing = f.0.join("disk.img");
        sparse(&backing, size);
        Loop::new(&backing)
    });
    if let Some(l) = &lo {
        targets.push(l.0.clone());
    }
    let mut args = vec![
        s(&b.zst()).to_string(),
        "--trust".into(),
        s(&b.trust).into(),
        "--yes".into(),
        "--record".into(),
        s(&rec).into(),
    ];
    for t in &targets {
        args.push("-t".into());
        args.push(t.clone());
    }
    let argv: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    let o = flash(&argv);
    let text = out(&o);
    assert_eq!(code(&o), 13, "{text}");
    assert!(
        text.contains("No space left on device") || text.contains("error"),
        "{text}"
    );
    assert!(text.contains(&format!("failed: {}", targets[0])), "{text}");
    cmp(&good, &b.raw());
    b.verify(&good, &[]).expect(0, "VERIFIED");
    assert!(!has_gpt(&failing_file), "the failed file must not boot");
    let recs = records(&rec);
    assert_eq!(recs.len(), targets.len());
    assert_eq!(recs[0]["result"], "failed");
    assert_eq!(recs[0]["partition_table_wiped"], true);
    assert!(
        recs[0]["error"].as_str().unwrap().contains("bytes"),
        "{}",
        recs[0]
    );
    assert_eq!(recs[1]["result"], "verified");
    if let Some(l) = &lo {
        assert_eq!(recs[2]["result"], "failed", "{}", recs[2]);
        assert!(!has_gpt(l.path()), "the failed device must not boot");
        if have("sgdisk") {
            let o = tool("sgdisk").arg("-v").arg(l.path()).output().unwrap();
            // sgdisk finds no partition table to check.
            assert!(out(&o).contains("Creating new GPT entries"), "{}", out(&o));
        }
    }
}

#[test]
fn devices_lists_disks_with_their_refusals() {
    let o = run(&["devices", "--json"]);
    assert!(o.status.success(), "{}", out(&o));
    let disks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    for d in &disks {
        for field in [
            "path",
            "size",
            "transport",
            "removable",
            "refusals",
            "mounted",
        ] {
            assert!(d.get(field).is_some(), "{field} missing in {d}");
        }
    }
    // The disk holding the running system (when / is on one) is refused as such.
    for d in disks.iter().filter(|d| d["system"] == true) {
        let checks: Vec<&str> = d["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["check"].as_str().unwrap())
            .collect();
        assert!(checks.contains(&"system"), "{d}");
    }
    // A loop device made here shows up with its file.
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("disk.img");
    sparse(&file, 64 * MIB);
    let Some(l) = Loop::new(&file) else {
        return;
    };
    let o = run(&["devices", "--json"]);
    let disks: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let me = disks
        .iter()
        .find(|x| x["path"] == l.0.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {disks:?}", l.0));
    assert_eq!(me["transport"], "loop");
    assert_eq!(me["size"], 64 * MIB);
    assert_eq!(me["backing_file"], s(&file));
    let table = run(&["devices"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&l.0));
}
