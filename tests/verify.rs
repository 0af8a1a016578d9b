//! `edgeimage verify` against real builds: every place a signed build can be tampered with,
//! each refused with its own exit code, verdict word and the place named; copies made by
//! `bmaptool`, onto a used disk and through a loop device pass; `minisign` agrees with our
//! signatures both ways; secret keys are guarded.
//!
//! Every test builds once (synthetic assets on a 44 MiB disk, under a second) with a freshly
//! generated key whose `.pub` is the only key of a trust store in the test's temporary
//! directory.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

impl Built {
    fn verify_json(&self, target: &Path, extra: &[&str]) -> Value {
        verify_json_with(&self.trust, target, extra)
    }
}

// ---------------------------------------------------------------------------------------------
// Running verify.

fn verify_json_with(trust: &Path, target: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "verify",
        target.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        )
    });
    assert_eq!(
        o.status.code(),
        j["exit_code"].as_i64().map(|c| c as i32),
        "{j}"
    );
    j
}

/// `verify --json` says verified, with every range of the manifest checked.
fn assert_verified_json(j: &Value, manifest: &Value) {
    assert_eq!(j["outcome"], "verified", "{j:#}");
    assert_eq!(j["exit_code"], 0, "{j:#}");
    assert_eq!(
        j["ranges_checked"].as_u64(),
        Some(ranges(manifest).len() as u64),
        "{j:#}"
    );
    assert_eq!(j["mismatches"].as_array().map(Vec::len), Some(0), "{j:#}");
}

// ---------------------------------------------------------------------------------------------
// Reading the manifest, changing bytes.

/// A block map range as bytes `[start, end)`, with its digest.
#[derive(Clone, Debug)]
struct ByteRange {
    start: u64,
    end: u64,
    sha256: String,
}

fn ranges(m: &Value) -> Vec<ByteRange> {
    let size = m["image"]["size"].as_u64().unwrap();
    assert_eq!(m["block_map"]["block_size"], BLOCK);
    m["block_map"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ByteRange {
            start: r["first"].as_u64().unwrap() * BLOCK,
            end: ((r["last"].as_u64().unwrap() + 1) * BLOCK).min(size),
            sha256: r["sha256"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// `(offset, size)` of partition `number` in the manifest.
fn partition(m: &Value, number: u64) -> (u64, u64) {
    let p = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == number)
        .unwrap_or_else(|| panic!("no partition {number} in the manifest"));
    (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// XOR one byte of a file with `mask` (one bit).
fn flip_bit(path: &Path, offset: u64, mask: u8) {
    let mut b = read_at(path, offset, 1);
    b[0] ^= mask;
    write_at(path, offset, &b);
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Replace line `n` (0-based) of a text file.
fn edit_line(path: &Path, n: usize, edit: impl FnOnce(&str) -> String) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let new = edit(&lines[n]);
    assert_ne!(new, lines[n], "the edit changed nothing");
    lines[n] = new;
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// IEEE 802.3 CRC-32 (reflected, polynomial 0xEDB88320), as the GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Exchange GPT entries 1 and 2 in the GPT whose header is at `header_lba`, and recompute the
/// entry array's CRC32 (header byte 88) and the header's CRC32 (byte 16, over the header's
/// size with the field zeroed). Returns the alternate header's LBA.
fn swap_gpt_entries(image: &Path, header_lba: u64) -> u64 {
    let mut h = read_at(image, header_lba * 512, 512);
    assert_eq!(&h[..8], b"EFI PART");
    let header_size = le32(&h, 12) as usize;
    let stored = le32(&h, 16);
    let mut zeroed = h[..header_size].to_vec();
    zeroed[16..20].fill(0);
    assert_eq!(
        crc32(&zeroed),
        stored,
        "our CRC32 agrees with the builder's"
    );
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80) as u64;
    let size = le32(&h, 84) as usize;
    assert_eq!(size, 128);
    let mut e = read_at(image, entries_lba * 512, count * size as u64);
    assert_eq!(crc32(&e), le32(&h, 88));
    let (first, second) = e.split_at_mut(size);
    first.swap_with_slice(&mut second[..size]);
    write_at(image, entries_lba * 512, &e);
    h[88..92].copy_from_slice(&crc32(&e).to_le_bytes());
    h[16..20].fill(0);
    let c = crc32(&h[..header_size]);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    write_at(image, header_lba * 512, &h);
    le64(&h, 32)
}

/// `minisign`, with closed input (nothing may prompt).
fn minisign(args: &[&str]) -> Output {
    Command::new("minisign")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running minisign")
}

// ---------------------------------------------------------------------------------------------
// 1. What must pass.

#[test]
fn verifies_the_raw_image_the_compressed_image_and_the_manifest() {
    let b = signed();
    let m = b.manifest();
    assert!(ranges(&m).len() >= 4, "GPT, ESP, META, backup GPT at least");
    for (target, kind, read_from) in [
        (b.raw(), "image", "from the image"),
        (b.zst(), "compressed", "from the compressed image"),
        (
            b.manifest_path(),
            "manifest",
            "t.raw.zst (compressed image)",
        ),
    ] {
        let v = b.verify(&target, &[]);
        let verdict = v.expect(0, "VERIFIED");
        assert!(
            verdict.contains(&format!(
                "t build 0 (Talos v1.12.5, amd64) signed by key {}",
                b.key.id
            )) && verdict.contains(read_from)
                && verdict.ends_with("all match"),
            "{verdict}"
        );
        assert!(v.details().is_empty(), "{}", v.stdout);
        let j = b.verify_json(&target, &[]);
        assert_verified_json(&j, &m);
        assert_eq!(j["kind"], kind, "{j:#}");
        assert_eq!(j["key_id"], b.key.id.as_str());
        assert_eq!(j["name"], "t");
        assert_eq!(j["build_number"], 0);
    }
    // The image's own copy of the manifest was used for t.raw, the sidecar for the others.
    let j = b.verify_json(&b.raw(), &[]);
    assert_eq!(
        j["manifest_source"],
        format!("the manifest inside {}", b.raw().display())
    );
    let j = b.verify_json(&b.zst(), &[]);
    assert_eq!(
        j["manifest_source"],
        b.manifest_path().display().to_string()
    );
}

#[test]
fn verifies_a_bmaptool_copy() {
    if !have("bmaptool") {
        return;
    }
    let b = signed();
    let copy = b.dir().join("copy.raw");
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(b.set.join("t.bmap"))
        .arg(b.raw())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success(), "bmaptool copy: {}", stderr(&o));
    let o = Command::new("cmp")
        .arg(b.raw())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the bmaptool copy differs from t.raw: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    b.verify(&copy, &[]).expect(0, "VERIFIED");
    assert_verified_json(&b.verify_json(&copy, &[]), &b.manifest());
}

/// A disk that held something else: bigger than the image and full of non-zero garbage; only
/// the mapped ranges and the manifest partition are written (what a block-map copy writes).
/// Verified as a file and through a loop device (O_DIRECT).
#[test]
fn verifies_a_used_disk_file_and_a_loop_device() {
    let b = signed();
    let m = b.manifest();
    let size = m["image"]["size"].as_u64().unwrap();
    let disk = b.dir().join("disk.img");
    let disk_size = size + 16 * MIB;
    {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let garbage: Vec<u8> = (0..MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8 | 1
            })
            .collect();
        let f = fs::File::create(&disk).unwrap();
        let mut at = 0;
        while at < disk_size {
            f.write_all_at(&garbage, at).unwrap();
            at += MIB;
        }
        let mut writes: Vec<(u64, u64)> = ranges(&m).iter().map(|r| (r.start, r.end)).collect();
        let mp = &m["manifest_partition"];
        let mp_off = mp["offset"].as_u64().unwrap();
        writes.push((mp_off, mp_off + mp["size"].as_u64().unwrap()));
        for (a, e) in writes {
            f.write_all_at(&read_at(&b.raw(), a, e - a), a).unwrap();
        }
        f.sync_all().unwrap();
    }
    // Unmapped blocks really hold garbage where the image has zeros.
    let (esp, _) = partition(&m, 1);
    assert!(read_at(&b.raw(), esp - BLOCK, BLOCK)
        .iter()
        .all(|&x| x == 0));
    assert!(read_at(&disk, esp - BLOCK, BLOCK).iter().all(|&x| x != 0));

    let v = b.verify(&disk, &[]);
    assert!(
        v.expect(0, "VERIFIED").contains("from the image"),
        "{}",
        v.stdout
    );
    assert_verified_json(&b.verify_json(&disk, &[]), &m);

    let Some(dev) = Loop::read_only(&disk) else {
        return;
    };
    let target = PathBuf::from(&dev.0);
    let v = b.verify(&target, &[]);
    assert!(
        v.expect(0, "VERIFIED").contains("from the block device"),
        "{}",
        v.stdout
    );
    let j = b.verify_json(&target, &[]);
    assert_verified_json(&j, &m);
    assert_eq!(j["kind"], "device", "{j:#}");
    drop(dev);
}

// ---------------------------------------------------------------------------------------------
// 2. minisign interoperability.

#[test]
fn minisign_verifies_the_manifest_signature() {
    if !have("minisign") {
        return;
    }
    let b = signed();
    let o = minisign(&["-Vm", s(&b.manifest_path()), "-p", s(&b.key.public)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "minisign -V: {out}{}", stderr(&o));
    assert!(
        out.contains("Signature and comment signature verified"),
        "{out}"
    );
    let tc = out
        .lines()
        .find_map(|l| l.strip_prefix("Trusted comment: "))
        .unwrap_or_else(|| panic!("no trusted comment: {out}"));
    assert!(
        tc.contains("name=t") && tc.contains("build=0"),
        "trusted comment: {tc}"
    );
    assert_eq!(
        tc,
        "edgeimage manifest name=t talos=v1.12.5 build=0 arch=amd64"
    );
}

/// Paths for a minisign key pair in `<tempdir>/ms/` (the directory is created).
fn minisign_key_paths(b: &Built) -> (PathBuf, PathBuf) {
    let ms = b.dir().join("ms");
    fs::create_dir(&ms).unwrap();
    (ms.join("m.pub"), ms.join("m.key"))
}

/// `minisign -S` of the build's manifest with `key` and trusted comment `tc` (the signature
/// replaces ours next to the manifest).
fn minisign_sign_manifest(b: &Built, key: &Path, tc: &str) {
    let o = minisign(&["-S", "-s", s(key), "-m", s(&b.manifest_path()), "-t", tc]);
    assert!(o.status.success(), "minisign -S: {}", stderr(&o));
}

#[test]
fn minisign_signatures_verify_with_edgeimage() {
    if !have("minisign") {
        return;
    }
    let b = signed();
    let (ms_pub, ms_key) = minisign_key_paths(&b);
    let o = minisign(&["-G", "-W", "-p", s(&ms_pub), "-s", s(&ms_key)]);
    assert!(o.status.success(), "minisign -G: {}", stderr(&o));
    let ms_id = key_of(ms_key.clone(), ms_pub.clone()).id;
    let ours = fs::read_to_string(b.minisig()).unwrap();
    let tc = ours
        .lines()
        .nth(2)
        .and_then(|l| l.strip_prefix("trusted comment: "))
        .unwrap()
        .to_string();
    minisign_sign_manifest(&b, &ms_key, &tc);
    let theirs = fs::read_to_string(b.minisig()).unwrap();
    assert_ne!(theirs, ours);
    assert!(
        theirs.contains(&format!("trusted comment: {tc}\n")),
        "{theirs}"
    );

    // Not in the trust store yet: unknown key, named.
    let v = b.verify(&b.manifest_path(), &[]);
    assert!(v.expect(4, "UNKNOWN KEY").contains(&ms_id), "{}", v.stdout);
    // Trusted: verified end to end, content included.
    fs::copy(&ms_pub, b.trust.join("trusted/minisign.pub")).unwrap();
    let v = b.verify(&b.manifest_path(), &[]);
    let verdict = v.expect(0, "VERIFIED");
    assert!(
        verdict.contains(&format!("signed by key {ms_id}")) && verdict.contains("all match"),
        "{verdict}"
    );
    b.verify(&b.zst(), &[]).expect(0, "VERIFIED");

    // minisign's default trusted comment does not name the build: refused.
    let o = minisign(&["-S", "-s", s(&ms_key), "-m", s(&b.manifest_path())]);
    assert!(o.status.success(), "minisign -S: {}", stderr(&o));
    let v = b.verify(&b.manifest_path(), &[]);
    assert!(
        v.expect(6, "BAD SIGNATURE")
            .contains("trusted comment \"timestamp:"),
        "{}",
        v.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 3. bmaptool refuses an edited block map.

#[test]
fn bmaptool_refuses_a_tampered_bmap() {
    if !have("bmaptool") {
        return;
    }
    let b = signed();
    let text = fs::read_to_string(b.set.join("t.bmap")).unwrap();
    let r = &ranges(&b.manifest())[1];
    let span = format!("> {}-{} <", r.start / BLOCK, r.end / BLOCK - 1);
    assert!(text.contains(&span), "{span} in {text}");
    let edited = text.replace(
        &span,
        &format!("> {}-{} <", r.start / BLOCK, r.end / BLOCK - 2),
    );
    let copy_with = |map: &str, name: &str| {
        let p = b.dir().join(name);
        fs::write(&p, map).unwrap();
        Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&p)
            .arg(b.raw())
            .arg(b.dir().join("copy.raw"))
            .output()
            .unwrap()
    };
    // One digit changed: the file's own checksum no longer matches.
    let o = copy_with(&edited, "edited.bmap");
    assert!(!o.status.success(), "bmaptool copied with an edited bmap");
    assert!(
        stderr(&o).contains("checksum mismatch for bmap file"),
        "{}",
        stderr(&o)
    );
    // The same edit with the file checksum recomputed: the range's checksum catches it.
    let open = "<BmapFileChecksum>";
    let at = edited.find(open).unwrap() + open.len();
    let at = at + (edited[at..].len() - edited[at..].trim_start().len());
    let mut resealed = edited.clone();
    resealed.replace_range(at..at + 64, &"0".repeat(64));
    let digest = sha(resealed.as_bytes());
    resealed.replace_range(at..at + 64, &digest);
    let o = copy_with(&resealed, "resealed.bmap");
    assert!(!o.status.success(), "bmaptool copied with a resealed edit");
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// 4. The tamper matrix.

#[test]
fn flipped_bit_in_the_esp_is_a_mismatch_in_partition_1() {
    let b = signed();
    let m = b.manifest();
    let (off, size) = partition(&m, 1);
    let r = ranges(&m)
        .into_iter()
        .find(|r| r.start >= off && r.start < off + size)
        .expect("a mapped range inside the ESP");
    flip_bit(&b.raw(), (r.start + r.end) / 2, 0x10);
    let found = sha(&read_at(&b.raw(), r.start, r.end - r.start));
    assert_ne!(found, r.sha256);

    let v = b.verify(&b.raw(), &[]);
    let verdict = v.expect(7, "CONTENT MISMATCH");
    assert!(
        verdict.contains(&format!(
            "1 of {} ranges differ; first in partition 1 (EFI) at bytes {}-{}",
            ranges(&m).len(),
            r.start,
            r.end - 1
        )),
        "{verdict}"
    );
    assert_eq!(
        v.details(),
        [format!(
            "  partition 1 (EFI): bytes {}-{}: expected sha256 {}, found {found}",
            r.start,
            r.end - 1,
            r.sha256
        )]
    );
    let j = b.verify_json(&b.raw(), &[]);
    assert_eq!(j["outcome"], "content-mismatch");
    assert_eq!(j["exit_code"], 7);
    let mm = &j["mismatches"][0];
    assert_eq!(mm["place"], "partition 1 (EFI)");
    assert_eq!(mm["start"], r.start);
    assert_eq!(mm["end"], r.end);
    assert_eq!(mm["expected"], r.sha256.as_str());
    assert_eq!(mm["actual"], found.as_str());
    assert_eq!(j["mismatches"].as_array().unwrap().len(), 1);
}

#[test]
fn flipped_bit_in_the_disk_guid_is_a_mismatch_in_the_primary_gpt() {
    let b = signed();
    flip_bit(&b.raw(), 512 + 56, 0x01);
    let v = b.verify(&b.raw(), &[]);
    v.expect(7, "CONTENT MISMATCH");
    let d = v.details();
    assert_eq!(d.len(), 1, "{}", v.stdout);
    assert!(
        d[0].starts_with("  the protective MBR and primary GPT: bytes 0-"),
        "{}",
        v.stdout
    );
}

#[test]
fn flipped_bit_in_the_sidecar_manifest_is_a_bad_signature() {
    let b = signed();
    let len = fs::metadata(b.manifest_path()).unwrap().len();
    flip_bit(&b.manifest_path(), len / 2, 0x01);
    let v = b.verify(&b.manifest_path(), &[]);
    let verdict = v.expect(6, "BAD SIGNATURE");
    assert!(
        verdict.contains(&format!(
            "the signature by key {} does not match the manifest",
            b.key.id
        )) && verdict.contains("signature verification failed"),
        "{verdict}"
    );
}

#[test]
fn flipped_bit_in_the_embedded_manifest_is_a_bad_signature() {
    let b = signed();
    let mp = b.manifest()["manifest_partition"]["offset"]
        .as_u64()
        .unwrap();
    let head = read_at(&b.raw(), mp, 200);
    let text = String::from_utf8_lossy(&head);
    assert!(
        text.starts_with("edgeimage signed manifest 1\nmanifest "),
        "{text}"
    );
    let header = text.find("\n\n").unwrap() as u64 + 2;
    let mlen: u64 = text.lines().nth(1).unwrap()["manifest ".len()..]
        .parse()
        .unwrap();
    assert_eq!(read_at(&b.raw(), mp + header, 1), b"{");
    flip_bit(&b.raw(), mp + header + mlen / 2, 0x01);
    let v = b.verify(&b.raw(), &[]);
    let verdict = v.expect(6, "BAD SIGNATURE");
    assert!(
        verdict.contains(&format!(
            "does not match the manifest (the manifest inside {})",
            b.raw().display()
        )),
        "{verdict}"
    );
    // The sidecar still verifies: the damage is in the image's copy only.
    b.verify(&b.manifest_path(), &[]).expect(0, "VERIFIED");
}

#[test]
fn altered_signature_line_is_a_bad_signature() {
    let b = signed();
    // Character 40 of 100 encodes bytes 30-32 of sig_alg ‖ key ID ‖ signature: the signature.
    edit_line(&b.minisig(), 1, |l| {
        let mut c: Vec<u8> = l.bytes().collect();
        c[40] = if c[40] == b'A' { b'B' } else { b'A' };
        String::from_utf8(c).unwrap()
    });
    let v = b.verify(&b.manifest_path(), &[]);
    let verdict = v.expect(6, "BAD SIGNATURE");
    assert!(
        verdict.contains(&format!("the signature by key {}", b.key.id))
            && verdict.contains("signature verification failed"),
        "{verdict}"
    );
}

#[test]
fn altered_trusted_comment_is_a_bad_signature() {
    let b = signed();
    edit_line(&b.minisig(), 2, |l| {
        assert!(l.starts_with("trusted comment: "), "{l}");
        l.replace("build=0", "build=9")
    });
    let v = b.verify(&b.manifest_path(), &[]);
    assert!(
        v.expect(6, "BAD SIGNATURE")
            .contains("trusted comment verification failed"),
        "{}",
        v.stdout
    );
}

#[test]
fn signature_by_a_key_not_in_the_trust_store_is_an_unknown_key() {
    let b = signed();
    let other = new_key(&b.dir().join("keys"), "other");
    assert_ne!(other.id, b.key.id);
    let o = run(&["sign", s(&b.manifest_path()), "--key", s(&other.secret)]);
    assert!(o.status.success(), "sign: {}", stderr(&o));
    let v = b.verify(&b.manifest_path(), &[]);
    let verdict = v.expect(4, "UNKNOWN KEY");
    assert!(
        verdict.contains(&format!(
            "signed by key {}, which is not in the trust store",
            other.id
        )) && verdict.contains(&format!("(trusted: {})", b.key.id)),
        "{verdict}"
    );
    let j = b.verify_json(&b.manifest_path(), &[]);
    assert_eq!(j["outcome"], "unknown-key");
    assert_eq!(j["key_id"], other.id.as_str());
}

#[test]
fn signature_by_a_revoked_key_is_refused() {
    let b = signed();
    fs::write(
        b.trust.join("revoked"),
        format!("# leaked\n{}\n", b.key.id.to_lowercase()),
    )
    .unwrap();
    for target in [b.raw(), b.manifest_path()] {
        let v = b.verify(&target, &[]);
        let verdict = v.expect(5, "REVOKED KEY");
        assert!(
            verdict.contains(&format!("signed by key {}, which is revoked", b.key.id))
                && verdict.contains("line 2"),
            "{verdict}"
        );
    }
}

/// The trust store's `revoked` file takes key IDs as minisign prints them, and minisign 0.11
/// prints them without leading zeros (`write_pk_file` in minisign.c: `"minisign public key %"
/// PRIX64`): a key made by `minisign -G` whose ID starts with a zero (1 in 16) is revoked by
/// copying its ID from its `.pub`.
#[test]
fn key_revoked_by_the_id_minisign_prints_is_refused() {
    if !have("minisign") {
        return;
    }
    let b = signed();
    let (ms_pub, ms_key) = minisign_key_paths(&b);
    // Make minisign keys until one has an ID with a leading zero (1 in 16 does).
    let printed = (0..400)
        .find_map(|_| {
            let o = minisign(&["-G", "-W", "-f", "-p", s(&ms_pub), "-s", s(&ms_key)]);
            assert!(o.status.success(), "minisign -G: {}", stderr(&o));
            Some(comment_key_id(&ms_pub)).filter(|id| id.len() < 16)
        })
        .expect("a key ID with a leading zero in 400 tries");
    minisign_sign_manifest(
        &b,
        &ms_key,
        "edgeimage manifest name=t talos=v1.12.5 build=0 arch=amd64",
    );
    fs::copy(&ms_pub, b.trust.join("trusted/minisign.pub")).unwrap();
    b.verify(&b.manifest_path(), &[]).expect(0, "VERIFIED");
    fs::write(b.trust.join("revoked"), format!("{printed}\n")).unwrap();
    let v = b.verify(&b.manifest_path(), &[]);
    v.expect(5, "REVOKED KEY");
}

#[test]
fn unsigned_build_is_unsigned() {
    let b = setup("", false);
    assert!(!b.minisig().exists());
    for target in [b.raw(), b.manifest_path(), b.zst()] {
        let v = b.verify(&target, &[]);
        let verdict = v.expect(3, "UNSIGNED");
        assert!(
            verdict.contains("has no signature: the build was not signed"),
            "{verdict}"
        );
    }
}

#[test]
fn truncated_image_is_a_content_mismatch() {
    let b = signed();
    let m = b.manifest();
    let size = m["image"]["size"].as_u64().unwrap();
    let mp = &m["manifest_partition"];
    let mp_end = mp["offset"].as_u64().unwrap() + mp["size"].as_u64().unwrap();
    let rs = ranges(&m);
    let backup = rs.last().unwrap();

    // Cut after the manifest partition: the image's own manifest is read; the backup GPT is
    // missing.
    let short = b.dir().join("short.raw");
    fs::copy(b.raw(), &short).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(mp_end)
        .unwrap();
    let v = b.verify(&short, &[]);
    v.expect(7, "CONTENT MISMATCH");
    assert_eq!(
        v.details(),
        [format!(
            "  the backup GPT: bytes {}-{}: missing (expected sha256 {})",
            backup.start,
            backup.end - 1,
            backup.sha256
        )]
    );

    // Cut in half: the manifest partition is gone too.
    OpenOptions::new()
        .write(true)
        .open(b.raw())
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    // The manifest next to the image (or given with --manifest) still lists every range past
    // the cut as missing.
    let missing: Vec<&ByteRange> = rs.iter().filter(|r| r.end > size / 2).collect();
    let v = b.verify(&b.raw(), &[]);
    let verdict = v.expect(7, "CONTENT MISMATCH");
    assert!(
        verdict.contains(&format!(
            "{} of {} ranges are missing",
            missing.len(),
            rs.len()
        )) && verdict.contains("truncated"),
        "{verdict}"
    );
    assert_eq!(v.details().len(), missing.len(), "{}", v.stdout);
    // Without a manifest next to it: the embedded one is cut off, which is all there is to say.
    let alone = b.dir().join("alone.raw");
    fs::rename(b.raw(), &alone).unwrap();
    let v = b.verify(&alone, &[]);
    let verdict = v.expect(7, "CONTENT MISMATCH");
    assert!(
        verdict.contains("lies past the end") && verdict.contains("the image is truncated"),
        "{verdict}"
    );
    fs::rename(&alone, b.raw()).unwrap();
    let v = b.verify(&b.raw(), &["--manifest", s(&b.manifest_path())]);
    v.expect(7, "CONTENT MISMATCH");
    assert_eq!(v.details().len(), missing.len(), "{}", v.stdout);
    for (line, r) in v.details().iter().zip(missing) {
        assert!(
            line.contains(&format!("bytes {}-{}: missing", r.start, r.end - 1)),
            "{line}"
        );
    }
}

/// The brief: a truncated `t.raw` verifies to 7 with `missing` in the details. The sidecar
/// `t.manifest.json` is next to it, but verify only falls back to it when the image has no
/// manifest partition at all; one that lies past the truncated end stops verify with a
/// verdict and no details.
#[test]
fn truncated_image_lists_missing_ranges_from_the_sidecar_manifest() {
    let b = signed();
    let size = b.manifest()["image"]["size"].as_u64().unwrap();
    OpenOptions::new()
        .write(true)
        .open(b.raw())
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let v = b.verify(&b.raw(), &[]);
    v.expect(7, "CONTENT MISMATCH");
    assert!(
        v.details().iter().any(|l| l.contains("missing")),
        "{}",
        v.stdout
    );
}

#[test]
fn swapped_gpt_entries_are_a_content_mismatch() {
    let b = signed();
    let alternate = swap_gpt_entries(&b.raw(), 1);
    assert_eq!(swap_gpt_entries(&b.raw(), alternate), 1);
    if have("sgdisk") {
        let o = tool("sgdisk").arg("-v").arg(b.raw()).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("No problems found"),
            "the edited GPT is valid: {text}{}",
            stderr(&o)
        );
        let o = tool("sgdisk").arg("-p").arg(b.raw()).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let first = text
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(first.ends_with("META"), "entry 1 is META now: {text}");
    }
    let v = b.verify(&b.raw(), &[]);
    v.expect(7, "CONTENT MISMATCH");
    let d = v.details();
    assert_eq!(d.len(), 2, "{}", v.stdout);
    assert!(
        d[0].starts_with("  the protective MBR and primary GPT: bytes 0-"),
        "{}",
        v.stdout
    );
    assert!(d[1].starts_with("  the backup GPT: bytes "), "{}", v.stdout);
}

#[test]
fn swapped_partition_contents_are_a_mismatch_in_both() {
    let b = signed();
    let m = b.manifest();
    let (esp, _) = partition(&m, 1);
    let (meta, meta_size) = partition(&m, 2);
    assert_eq!(meta_size, MIB);
    let a = read_at(&b.raw(), esp, MIB);
    let c = read_at(&b.raw(), meta, MIB);
    assert_ne!(a, c);
    write_at(&b.raw(), esp, &c);
    write_at(&b.raw(), meta, &a);
    let v = b.verify(&b.raw(), &[]);
    v.expect(7, "CONTENT MISMATCH");
    let d = v.details();
    assert_eq!(d.len(), 2, "{}", v.stdout);
    let rs = ranges(&m);
    let esp_range = rs.iter().find(|r| r.start == esp).unwrap();
    assert!(
        d[0].starts_with(&format!(
            "  partition 1 (EFI): bytes {esp}-{}: expected sha256 {}",
            esp_range.end - 1,
            esp_range.sha256
        )),
        "{}",
        v.stdout
    );
    assert!(
        d[1].starts_with(&format!(
            "  partition 2 (META): bytes {meta}-{}: expected sha256",
            meta + MIB - 1
        )),
        "{}",
        v.stdout
    );
}

#[test]
fn build_older_than_min_build_is_a_rollback() {
    let b = signed();
    let v = b.verify(&b.raw(), &["--min-build", "1"]);
    assert!(
        v.expect(9, "ROLLBACK")
            .contains("t build 0 is older than the minimum build 1 (--min-build)"),
        "{}",
        v.stdout
    );
    b.verify(&b.raw(), &["--min-build", "0"])
        .expect(0, "VERIFIED");
}

#[test]
fn media_of_another_profile_is_refused() {
    let b = signed();
    let v = b.verify(&b.raw(), &["--profile", "edge-amd64", "--min-build", "0"]);
    assert!(
        v.expect(10, "WRONG PROFILE")
            .contains("built from profile \"t\" (build 0), not \"edge-amd64\" (--profile)"),
        "{}",
        v.stdout
    );
    b.verify(&b.raw(), &["--profile", "t", "--min-build", "0"])
        .expect(0, "VERIFIED");
}

#[test]
fn build_number_at_min_build_passes() {
    let b = setup("build_number = 5", true);
    assert!(fs::read_to_string(b.minisig())
        .unwrap()
        .contains("trusted comment: edgeimage manifest name=t talos=v1.12.5 build=5 arch=amd64\n"));
    for target in [b.raw(), b.zst(), b.manifest_path()] {
        let v = b.verify(&target, &["--min-build", "5"]);
        assert!(
            v.expect(0, "VERIFIED").contains("t build 5 "),
            "{}",
            v.stdout
        );
    }
    b.verify(&b.raw(), &["--min-build", "6"])
        .expect(9, "ROLLBACK");
}

#[test]
fn nonexistent_target_is_unreadable() {
    let b = signed();
    let missing = b.out.join("nothing.raw");
    let v = b.verify(&missing, &[]);
    let verdict = v.expect(8, "UNREADABLE");
    assert!(
        verdict.contains(&format!(
            "cannot read the image or disk {}",
            missing.display()
        )),
        "{verdict}"
    );
}

#[test]
fn directory_target_is_unreadable() {
    let b = signed();
    let v = b.verify(&b.out, &[]);
    let verdict = v.expect(8, "UNREADABLE");
    assert!(
        verdict.contains("is a directory, not a regular file or a block device")
            && verdict.matches(b.out.to_str().unwrap()).count() == 1,
        "{verdict}"
    );
}

#[test]
fn corrupted_compressed_image_is_a_content_mismatch() {
    let b = signed();
    let len = fs::metadata(b.zst()).unwrap().len();
    flip_bit(&b.zst(), len / 2, 0x01);
    for target in [b.zst(), b.manifest_path()] {
        let v = b.verify(&target, &[]);
        let verdict = v.expect(7, "CONTENT MISMATCH");
        // Either zstd notices (its frame checksum), or the file's digest does.
        let damaged = verdict.contains("t.raw.zst: the compressed image is damaged");
        let digest = v
            .details()
            .iter()
            .any(|l| l.starts_with(&format!("  the compressed file {}", b.zst().display())));
        assert!(damaged || digest, "{}", v.stdout);
    }
}

/// A skippable zstd frame appended: the image decompresses to the same bytes, so only the
/// compressed file's own digest can tell.
#[test]
fn compressed_image_with_an_extra_frame_fails_its_digest() {
    let b = signed();
    let m = b.manifest();
    let zsize = m["artifact"]["size"].as_u64().unwrap();
    let mut data = fs::read(b.zst()).unwrap();
    data.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    data.extend_from_slice(&8u32.to_le_bytes());
    data.extend_from_slice(b"appended");
    fs::write(b.zst(), &data).unwrap();
    let v = b.verify(&b.zst(), &[]);
    v.expect(7, "CONTENT MISMATCH");
    assert_eq!(
        v.details(),
        [format!(
            "  the compressed file {}: bytes 0-{}: expected sha256 {} ({zsize} bytes), found {} ({} bytes)",
            b.zst().display(),
            data.len() - 1,
            m["artifact"]["sha256"].as_str().unwrap(),
            sha(&data),
            data.len()
        )]
    );
    // The image inside is intact.
    b.verify(&b.raw(), &[]).expect(0, "VERIFIED");
}

// ---------------------------------------------------------------------------------------------
// 5. Secret keys.

#[test]
fn world_readable_secret_key_is_refused() {
    let f = small_fixture("");
    let key = new_key(&f.dir.path().join("keys"), "release");
    fs::set_permissions(&key.secret, fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.dir.path().join("out");
    let o = try_build(&f, &out, &["-q", "--raw", "--sign-key", s(&key.secret)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.secret.display()))
            && err.contains("readable by others (mode 0644)"),
        "{err}"
    );
    assert!(!set_dir(&out).join("t.raw.zst").exists());
}

#[test]
fn encrypted_key_needs_the_right_passphrase() {
    let f = small_fixture("");
    let keys = f.dir.path().join("keys");
    fs::create_dir(&keys).unwrap();
    let edgeimage = |args: &[&str], pw: &str| {
        Command::new(bin())
            .args(args)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("PW", pw)
            .output()
            .unwrap()
    };
    let o = edgeimage(
        &[
            "key",
            "generate",
            "--name",
            "enc",
            "--out",
            s(&keys),
            "--passphrase-env",
            "PW",
        ],
        "right horse battery",
    );
    assert!(o.status.success(), "key generate: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("encrypted"));
    let key = key_of(keys.join("enc.key"), keys.join("enc.pub"));
    let out = f.dir.path().join("out");
    let build_args = [
        "build",
        "--profile",
        s(&f.profile),
        "--out",
        s(&out),
        "-q",
        "--raw",
        "--sign-key",
        s(&key.secret),
        "--passphrase-env",
        "PW",
    ];
    let o = edgeimage(&build_args, "wrong horse battery");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(
        !err.contains("horse"),
        "the passphrase is never shown: {err}"
    );
    assert!(!set_dir(&out).join("t.raw.zst").exists());

    let o = edgeimage(&build_args, "right horse battery");
    assert!(o.status.success(), "build: {}", stderr(&o));
    let trust = f.dir.path().join("trust");
    fs::create_dir_all(trust.join("trusted")).unwrap();
    fs::copy(&key.public, trust.join("trusted/enc.pub")).unwrap();
    let v = verify_with(&trust, &set_dir(&out).join("t.raw"), &[]);
    assert!(
        v.expect(0, "VERIFIED")
            .contains(&format!("signed by key {}", key.id)),
        "{}",
        v.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Secret keys cannot be committed.

#[test]
fn secret_keys_are_git_ignored() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git_ok = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !git_ok || !root.join(".git").exists() {
        eprintln!("SKIPPED: git or {}/.git is missing", root.display());
        return;
    }
    let check = |path: &str| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["check-ignore", "-q", path])
            .output()
            .unwrap()
    };
    for path in [
        "signing/release.key",
        "signing/trusted/x.key",
        "x.key",
        "some/dir/y.key",
    ] {
        let o = check(path);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{path} must be ignored by git: {}",
            stderr(&o)
        );
    }
    // Public keys and sources are not: the check itself works.
    for path in ["signing/trusted/x.pub", "src/lib.rs"] {
        let o = check(path);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{path} must not be ignored: {}",
            stderr(&o)
        );
    }
}
