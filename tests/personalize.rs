//! Personalization slots end to end: a signed build with two META slots and a metal-iso slot,
//! its manifest and block map, `verify` of the base image and of images personalized with
//! `edgeimage::personalize` (passing, and tampered in every way a slot partition can be),
//! `inspect`, `bmaptool`, and the profile refusals.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use edgeimage::artifact::manifest::Manifest;
use edgeimage::config::fixtures::{controlplane_yaml, SECRET};
use edgeimage::format::meta;
use edgeimage::personalize::{self, MetalIsoParams};
use edgeimage::profile::MetaValue;
use edgeimage::talos::Arch;
use serde_json::Value;
use sha2::{Digest, Sha256};

const BASE_SITE: &str = "site-17";

const NETWORK_TEMPLATE: &str =
    "addresses:\n  - address: {{ address }}\n    linkName: eth0\n    family: inet4\nhostnames:\n  - hostname: {{host}}\n";
const CONFIG_TEMPLATE_SUFFIX: &str = "# device {{ host }}\n";

const SLOTS: &str = "[[personalize]]\nname = \"network\"\nmeta_key = \"0x0a\"\ntemplate = \"network.tmpl\"\n\
     [[personalize]]\nname = \"token\"\nmeta_key = \"0x0d\"\ntemplate = \"token.tmpl\"\nsecret = true\n\
     [[personalize]]\nname = \"config\"\nmetal_iso = true\ntemplate = \"config.tmpl\"\n";

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The fixture on a 48 MiB disk (40 MiB ESP, room for metal-iso), its inputs written.
fn slot_fixture(extra_toml: &str) -> Fixture {
    let f = fixture(Arch::Amd64, extra_toml);
    let text = fs::read_to_string(&f.profile).unwrap();
    let small = text
        .replace("disk_size = \"128MiB\"", "disk_size = \"48MiB\"")
        .replace("esp_size = \"100MiB\"", "esp_size = \"40MiB\"");
    assert_ne!(small, text);
    fs::write(&f.profile, small).unwrap();
    let d = f.dir.path();
    fs::write(d.join("machine.yaml"), controlplane_yaml()).unwrap();
    fs::write(d.join("network.tmpl"), NETWORK_TEMPLATE).unwrap();
    fs::write(d.join("token.tmpl"), "{{ token }}").unwrap();
    fs::write(
        d.join("config.tmpl"),
        controlplane_yaml() + CONFIG_TEMPLATE_SUFFIX,
    )
    .unwrap();
    f
}

/// The profile with slots: base META 0x0c, configuration on metal-iso.
fn slot_profile() -> String {
    format!(
        "{SLOTS}[meta]\n\"0x0c\" = \"{BASE_SITE}\"\n[config]\npath = \"machine.yaml\"\ndelivery = \"metal-iso\"\n"
    )
}

/// A signed `build --raw` of `extra_toml` on the slot fixture, with its trust store.
fn built(extra_toml: &str) -> Built {
    let f = slot_fixture(extra_toml);
    let key = new_key(&f.dir.path().join("keys"), "release");
    let trust = f.dir.path().join("trust");
    fs::create_dir_all(trust.join("trusted")).unwrap();
    fs::copy(&key.public, trust.join("trusted/release.pub")).unwrap();
    let out = f.dir.path().join("out");
    build(
        &f,
        &out,
        &["--raw", "--sign-key", key.secret.to_str().unwrap()],
    );
    let set = set_dir(&out);
    Built {
        f,
        out,
        set,
        trust,
        key,
    }
}

fn verify_json(b: &Built, target: &Path) -> Value {
    let o = run(&[
        "verify",
        target.to_str().unwrap(),
        "--trust",
        b.trust.to_str().unwrap(),
        "--json",
    ]);
    let j: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&o)));
    assert_eq!(o.status.code(), j["exit_code"].as_i64().map(|c| c as i32));
    j
}

fn part<'a>(m: &'a Value, label: &str) -> &'a Value {
    m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no {label} partition"))
}

fn span(p: &Value) -> (u64, u64) {
    (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

/// A copy of the built `.raw` with `data` written at `offset`.
fn copy_with(b: &Built, name: &str, offset: u64, data: &[u8]) -> PathBuf {
    let to = b.dir().join(name);
    fs::copy(b.raw(), &to).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&to).unwrap();
    f.write_all_at(data, offset).unwrap();
    to
}

fn meta_bytes(values: &[(u8, &[u8])]) -> Vec<u8> {
    let v: Vec<MetaValue> = values
        .iter()
        .map(|(k, v)| MetaValue {
            key: *k,
            value: v.to_vec(),
        })
        .collect();
    meta::partition(&v).unwrap().to_vec().unwrap()
}

fn slot<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no slot {name} in {j:#}"))
}

#[test]
fn slots_are_described_verified_and_personalizable() {
    let b = built(&slot_profile());
    let m = b.manifest();
    let bytes = fs::read(b.manifest_path()).unwrap();
    let parsed = Manifest::parse(&bytes, "manifest").unwrap();

    // The manifest: three slots, META and metal-iso marked, base META by digest.
    let slots = m["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 3, "{m:#}");
    let meta_p = part(&m, "META");
    let iso_p = part(&m, "metal-iso");
    assert_eq!(meta_p["slot"], true);
    assert_eq!(iso_p["slot"], true);
    assert!(part(&m, "EFI").get("slot").is_none());
    assert_eq!(slots[0]["name"], "network");
    assert_eq!(slots[0]["kind"], "meta");
    assert_eq!(slots[0]["meta_key"], 10);
    assert_eq!(slots[0]["secret"], false);
    assert_eq!(slots[0]["partition"]["number"], meta_p["number"]);
    assert_eq!(slots[0]["partition"]["offset"], meta_p["offset"]);
    assert_eq!(
        slots[0]["template_sha256"],
        sha(NETWORK_TEMPLATE.as_bytes())
    );
    assert_eq!(slots[1]["meta_key"], 13);
    assert_eq!(slots[1]["secret"], true);
    assert_eq!(slots[2]["kind"], "metal-iso");
    assert!(slots[2].get("meta_key").is_none());
    assert_eq!(slots[2]["partition"]["label"], "metal-iso");
    assert_eq!(
        m["meta_base"],
        serde_json::json!([{"key": 12, "sha256": sha(BASE_SITE.as_bytes())}])
    );

    // The block map leaves both slot partitions out; the partitions keep their base digests.
    let (meta_off, meta_len) = span(meta_p);
    let (iso_off, iso_len) = span(iso_p);
    let ranges = m["block_map"]["ranges"].as_array().unwrap();
    assert!(ranges.len() >= 3);
    for r in ranges {
        let (a, e) = (
            r["first"].as_u64().unwrap() * 4096,
            (r["last"].as_u64().unwrap() + 1) * 4096,
        );
        for (o, l) in [(meta_off, meta_len), (iso_off, iso_len)] {
            assert!(e <= o || a >= o + l, "range {r} reaches into {o}+{l}");
        }
    }
    let base_meta = read_at(&b.raw(), meta_off, meta_len);
    let base_iso = read_at(&b.raw(), iso_off, iso_len);
    assert_eq!(meta_p["sha256"], sha(&base_meta));
    assert_eq!(iso_p["sha256"], sha(&base_iso));
    // image.chunk_sha256 reads the slot partitions and the manifest partition as zeros.
    let mut image = fs::read(b.raw()).unwrap();
    let (mp_off, mp_len) = span(&m["manifest_partition"]);
    for (o, l) in [(meta_off, meta_len), (iso_off, iso_len), (mp_off, mp_len)] {
        image[o as usize..(o + l) as usize].fill(0);
    }
    assert_eq!(
        m["image"]["chunk_sha256"],
        edgeimage::artifact::manifest::ChunkDigest::of(&image)
    );

    // The flasher's functions give back the base partitions byte for byte.
    assert_eq!(
        personalize::meta_partition(&base_meta, &[]).unwrap(),
        base_meta
    );
    let params = MetalIsoParams::from_manifest(&parsed).unwrap();
    let machine = controlplane_yaml();
    assert_eq!(
        personalize::metal_iso_partition(&params, machine.as_bytes()).unwrap(),
        base_iso
    );

    // The base image, raw and compressed: verified, slot keys absent, the base config.yaml.
    for target in [b.raw(), b.zst()] {
        let j = verify_json(&b, &target);
        assert_eq!(j["outcome"], "verified", "{j:#}");
        assert_eq!(slot(&j, "network")["present"], false);
        assert!(slot(&j, "network")["sha256"].is_null());
        assert_eq!(slot(&j, "token")["present"], false);
        assert_eq!(slot(&j, "config")["present"], true);
        assert_eq!(slot(&j, "config")["sha256"], sha(machine.as_bytes()));
        assert_eq!(slot(&j, "config")["bytes"], machine.len());
    }
    let v = b.verify(&b.raw(), &[]);
    assert!(
        v.expect(0, "VERIFIED")
            .ends_with("all match; 3 personalization slots (below)"),
        "{}",
        v.stdout
    );
    assert_eq!(
        v.details(),
        [
            "slot network (META 0x0a): absent".to_string(),
            "slot token (META 0x0d, secret): absent".to_string(),
            format!(
                "slot config (metal-iso): {} bytes sha256 {}",
                machine.len(),
                sha(machine.as_bytes())
            ),
        ]
    );

    // A personalized device: rendered templates written with the flasher's functions.
    let fields: BTreeMap<String, String> = [
        ("address", "10.0.7.17/24"),
        ("host", "edge-017"),
        ("token", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let net = personalize::render(NETWORK_TEMPLATE, &fields).unwrap();
    assert!(net.contains("address: 10.0.7.17/24\n") && net.contains("hostname: edge-017\n"));
    personalize::check_value(&parsed.slots[0], net.as_bytes()).unwrap();
    let token = personalize::render("{{ token }}", &fields).unwrap();
    let config =
        personalize::render(&(controlplane_yaml() + CONFIG_TEMPLATE_SUFFIX), &fields).unwrap();
    personalize::check_value(&parsed.slots[2], config.as_bytes()).unwrap();
    let dev_meta = personalize::meta_partition(
        &base_meta,
        &[
            (0x0a, net.clone().into_bytes()),
            (0x0d, token.clone().into_bytes()),
        ],
    )
    .unwrap();
    let dev = copy_with(&b, "device.raw", meta_off, &dev_meta);
    let dev_iso = personalize::metal_iso_partition(&params, config.as_bytes()).unwrap();
    assert_eq!(dev_iso.len() as u64, iso_len);
    fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .unwrap()
        .write_all_at(&dev_iso, iso_off)
        .unwrap();
    let j = verify_json(&b, &dev);
    assert_eq!(j["outcome"], "verified", "{j:#}");
    assert_eq!(slot(&j, "network")["sha256"], sha(net.as_bytes()));
    assert_eq!(slot(&j, "network")["bytes"], net.len());
    assert_eq!(slot(&j, "token")["sha256"], sha(SECRET.as_bytes()));
    assert_eq!(slot(&j, "token")["secret"], true);
    assert_eq!(slot(&j, "config")["sha256"], sha(config.as_bytes()));
    let v = b.verify(&dev, &[]);
    v.expect(0, "VERIFIED");
    assert!(
        v.details().contains(
            &format!(
                "slot token (META 0x0d, secret): {} bytes sha256 {}",
                SECRET.len(),
                sha(SECRET.as_bytes())
            )
            .as_str()
        ),
        "{}",
        v.stdout
    );
    assert!(
        !v.stdout.contains(SECRET) && !v.stdout.contains("edge-017"),
        "verify printed a slot's content: {}",
        v.stdout
    );
    // inspect lists the slots and names the slot keys, hiding the secret one's value.
    let o = run(&["inspect", dev.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let i: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(i["manifest"]["slots"].as_array().unwrap().len(), 3);
    let entries = i["meta"]["entries"].as_array().unwrap();
    let entry = |k: &str| entries.iter().find(|e| e["key"] == k).unwrap();
    assert_eq!(entry("0x0c")["text"], BASE_SITE);
    assert!(entry("0x0c").get("slot").is_none());
    assert_eq!(entry("0x0a")["slot"], "network");
    assert_eq!(entry("0x0d")["slot"], "token");
    assert!(entry("0x0d")["text"].is_null());
    let o = run(&["inspect", dev.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("personalization slots"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("token") && l.contains("META 0x0d") && l.contains(", secret")),
        "{text}"
    );
    assert!(
        text.contains(&format!("0x0d = <{} bytes>  (slot token)", SECRET.len())),
        "{text}"
    );

    // Only 0x0a written, as the flasher would for a device without a token.
    let only_net = personalize::meta_partition(&base_meta, &[(0x0a, b"x".to_vec())]).unwrap();
    let j = verify_json(&b, &copy_with(&b, "net-only.raw", meta_off, &only_net));
    assert_eq!(j["outcome"], "verified", "{j:#}");
    assert_eq!(slot(&j, "network")["sha256"], sha(b"x"));
    assert_eq!(slot(&j, "token")["present"], false);

    // Tampered slot partitions: content mismatch naming what differs.
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        (
            "base-changed.raw",
            meta_off,
            meta_bytes(&[(0x0a, b"x"), (0x0c, b"site-18")]),
            "META key 0x0c differs from the base image's value",
        ),
        (
            "base-missing.raw",
            meta_off,
            meta_bytes(&[(0x0a, b"x")]),
            "META key 0x0c of the base image is missing",
        ),
        (
            "extra-key.raw",
            meta_off,
            meta_bytes(&[(0x0c, BASE_SITE.as_bytes()), (0x0e, b"planted")]),
            "META key 0x0e (7 bytes) is neither a base value nor a slot",
        ),
        (
            "reserved-key.raw",
            meta_off,
            meta_bytes(&[(0x08, b"x"), (0x0c, BASE_SITE.as_bytes())]),
            "META key 0x08 (1 bytes) is neither a base value nor a slot",
        ),
        (
            "meta-zeros.raw",
            meta_off,
            vec![0; meta_len as usize],
            "no valid META copy",
        ),
        (
            "meta-padding.raw",
            meta_off + meta_len - 1,
            vec![1],
            "the META partition is not as edgeimage writes its values",
        ),
        (
            "iso-extra.raw",
            iso_off + iso_len - 1,
            vec![0x55],
            "the metal-iso partition holds more or other than config.yaml",
        ),
        (
            "iso-garbage.raw",
            iso_off,
            vec![0xaa; 4096],
            "the metal-iso partition is neither all zeros nor a volume with config.yaml",
        ),
    ];
    for (name, at, data, want) in cases {
        let t = copy_with(&b, name, at, &data);
        let v = b.verify(&t, &[]);
        let verdict = v.expect(7, "CONTENT MISMATCH");
        assert!(verdict.contains(want), "{name}: {}", v.stdout);
        let j = verify_json(&b, &t);
        assert!(
            j["mismatches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["what"].as_str().is_some_and(|w| w.contains(want))),
            "{name}: {j:#}"
        );
        assert_eq!(
            j["ranges_checked"],
            ranges.len(),
            "{name}: every range still checked"
        );
    }
    // Zeros on metal-iso: no configuration there (absent), nothing else changed: verified.
    let t = copy_with(&b, "iso-zeros.raw", iso_off, &vec![0; iso_len as usize]);
    let j = verify_json(&b, &t);
    assert_eq!(j["outcome"], "verified", "{j:#}");
    assert_eq!(slot(&j, "config")["present"], false);

    // A byte outside the slots: a range mismatch, as without slots.
    let (esp_off, _) = span(part(&m, "EFI"));
    let mut byte = read_at(&dev, esp_off + 3, 1);
    byte[0] ^= 0x10;
    let t = b.dir().join("esp-flipped.raw");
    fs::copy(&dev, &t).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&t)
        .unwrap()
        .write_all_at(&byte, esp_off + 3)
        .unwrap();
    let v = b.verify(&t, &[]);
    let verdict = v.expect(7, "CONTENT MISMATCH");
    assert!(
        verdict.contains("1 of") && verdict.contains("ranges differ; first in partition 1 (EFI)"),
        "{}",
        v.stdout
    );

    // The .bmap writes the base image whole, slot partitions included.
    let bm =
        edgeimage::artifact::bmap::parse_bytes(&fs::read(b.set.join("t.bmap")).unwrap()).unwrap();
    for (o, l) in [(meta_off, meta_len), (iso_off, iso_len)] {
        assert!(
            bm.ranges.iter().any(|r| {
                let (a, e) = bm.byte_range(r);
                a <= o && e > o
            }),
            "the .bmap does not cover the slot partition at {o}+{l}"
        );
    }
    let meta_blocks: u64 = bm
        .ranges
        .iter()
        .map(|r| bm.byte_range(r))
        .filter(|&(a, e)| a >= meta_off && e <= meta_off + meta_len)
        .map(|(a, e)| e - a)
        .sum();
    assert_eq!(
        meta_blocks, meta_len,
        "META is written whole (mapped zeros)"
    );
    if have("bmaptool") {
        let copy = b.dir().join("bmap-copy.raw");
        let o = Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(b.set.join("t.bmap"))
            .arg(b.raw())
            .arg(&copy)
            .output()
            .unwrap();
        assert!(o.status.success(), "bmaptool copy: {}", stderr(&o));
        assert!(fs::read(&copy).unwrap() == fs::read(b.raw()).unwrap());
        let j = verify_json(&b, &copy);
        assert_eq!(j["outcome"], "verified", "{j:#}");
    }
}

#[test]
fn an_image_without_slots_has_no_slot_fields() {
    let b = built("[meta]\n\"0x0c\" = \"x\"\n");
    let text = fs::read_to_string(b.manifest_path()).unwrap();
    for key in ["\"slots\"", "\"meta_base\"", "\"slot\""] {
        assert!(!text.contains(key), "{key} in {text}");
    }
    let j = verify_json(&b, &b.raw());
    assert_eq!(j["outcome"], "verified", "{j:#}");
    assert_eq!(j["slots"], serde_json::json!([]));
    let v = b.verify(&b.raw(), &[]);
    assert!(
        v.expect(0, "VERIFIED").ends_with("all match"),
        "{}",
        v.stdout
    );
    assert!(v.details().is_empty(), "{}", v.stdout);
    // META is still in the block map, whole.
    let m = b.manifest();
    let (o, l) = span(part(&m, "META"));
    let covered: u64 = m["block_map"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["first"].as_u64().unwrap() * 4096,
                (r["last"].as_u64().unwrap() + 1) * 4096,
            )
        })
        .filter(|&(a, e)| a >= o && e <= o + l)
        .map(|(a, e)| e - a)
        .sum();
    assert_eq!(covered, l);
}

/// A build that must fail: one error line, exit code 1, no output file; returns the line.
fn refused(extra_toml: &str, files: &[(&str, &str)]) -> String {
    let f = slot_fixture(extra_toml);
    for (name, text) in files {
        fs::write(f.dir.path().join(name), text).unwrap();
    }
    let out = f.dir.path().join("out");
    let o = try_build(&f, &out, &["--raw"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.exists() || fs::read_dir(&out).unwrap().next().is_none(),
        "output left behind"
    );
    lines[0].to_string()
}

#[test]
fn bad_slots_are_refused_before_anything_is_written() {
    let e = refused(
        "[[personalize]]\nname = \"site\"\nmeta_key = \"0x0c\"\ntemplate = \"token.tmpl\"\n[meta]\n\"0x0c\" = \"x\"\n",
        &[],
    );
    assert!(
        e.contains("p.toml")
            && e.contains("`personalize[0].meta_key`")
            && e.contains("also set in [meta]"),
        "{e}"
    );
    let e = refused(
        "[[personalize]]\nname = \"net\"\nmeta_key = \"0x0a\"\ntemplate = \"broken.tmpl\"\n",
        &[("broken.tmpl", "addresses:\n  - address: {{ address\n")],
    );
    assert!(
        e.contains("`personalize[0].template`")
            && e.contains("broken.tmpl")
            && e.contains("line 2, column 14"),
        "{e}"
    );
    let e = refused(
        "[[personalize]]\nname = \"config\"\nmetal_iso = true\ntemplate = \"config.tmpl\"\n",
        &[],
    );
    assert!(
        e.contains("`personalize[0].metal_iso`") && e.contains("delivery = \"metal-iso\""),
        "{e}"
    );
    let e = refused(
        "[[personalize]]\nname = \"Site\"\nmeta_key = \"0x0c\"\ntemplate = \"token.tmpl\"\n",
        &[],
    );
    assert!(e.contains("`personalize[0].name`"), "{e}");
    // A key the schematic sets cannot be a slot either.
    let e = refused(
        "schematic = \"s.yaml\"\n[[personalize]]\nname = \"site\"\nmeta_key = \"0x0c\"\ntemplate = \"token.tmpl\"\n",
        &[(
            "s.yaml",
            "customization:\n    meta:\n        - key: 12\n          value: from-schematic\n",
        )],
    );
    assert!(
        e.contains("`personalize[0].meta_key`") && e.contains("schematic"),
        "{e}"
    );
}

#[test]
fn flash_writes_the_base_content_of_slot_partitions_over_a_used_disk() {
    let b = built(&slot_profile());
    let raw = b.raw();
    let size = std::fs::metadata(&raw).unwrap().len();
    // A used disk: garbage everywhere, so unwritten slot partitions would show.
    let t = b.dir().join("used.img");
    std::fs::write(&t, vec![0xa5u8; size as usize]).unwrap();
    let o = run(&[
        "flash",
        b.zst().to_str().unwrap(),
        "--trust",
        b.trust.to_str().unwrap(),
        "-t",
        t.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The file target is the image; the slot partitions hold their base content.
    assert_eq!(std::fs::read(&t).unwrap(), std::fs::read(&raw).unwrap());
    let j = verify_json(&b, &t);
    assert_eq!(j["outcome"], "verified", "{j}");
    assert_eq!(slot(&j, "network")["present"], false, "{j}");
}

/// A sequence inventory of `n` devices for the slot fixture's templates.
fn inventory(dir: &Path, n: usize, extra: &str) -> PathBuf {
    let mut csv = String::from("id,host,address,token\n");
    for i in 1..=n {
        csv.push_str(&format!("r{i},node-{i},10.0.0.{i}/24,tok-SECRET-{i}\n"));
    }
    csv.push_str(extra);
    let p = dir.join("inventory.csv");
    fs::write(&p, csv).unwrap();
    p
}

#[test]
fn a_line_personalizes_each_device_from_its_inventory_row() {
    let b = built(&slot_profile());
    let d = b.dir();
    let inv = inventory(d, 3, "");
    let log = d.join("line.jsonl");
    let profile = b.f.profile.to_str().unwrap().to_string();
    let flash = |targets: &[&Path], extra: &[&str]| {
        let mut a = vec![
            "flash".to_string(),
            b.zst().to_str().unwrap().into(),
            "--trust".into(),
            b.trust.to_str().unwrap().into(),
            "--inventory".into(),
            inv.to_str().unwrap().into(),
            "--personalize".into(),
            profile.clone(),
            "--record".into(),
            log.to_str().unwrap().into(),
        ];
        for t in targets {
            a.push("-t".into());
            a.push(t.to_str().unwrap().into());
        }
        a.extend(extra.iter().map(|x| x.to_string()));
        let argv: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&argv)
    };
    let (t1, t2, t3) = (d.join("dev1.img"), d.join("dev2.img"), d.join("dev3.img"));
    let o = flash(&[&t1, &t2], &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{text}");
    assert!(
        !text.contains("tok-SECRET"),
        "secrets never printed: {text}"
    );
    let o = flash(&[&t3], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Each device verifies, with its own slot digests.
    for (i, t) in [&t1, &t2, &t3].iter().enumerate() {
        let j = verify_json(&b, t);
        assert_eq!(j["outcome"], "verified", "{j}");
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("host".to_string(), format!("node-{}", i + 1));
        fields.insert("address".to_string(), format!("10.0.0.{}/24", i + 1));
        let net = personalize::render(NETWORK_TEMPLATE, &fields).unwrap();
        assert_eq!(slot(&j, "network")["sha256"], sha(net.as_bytes()), "{j}");
        assert_eq!(
            slot(&j, "token")["sha256"],
            sha(format!("tok-SECRET-{}", i + 1).as_bytes())
        );
        assert_eq!(slot(&j, "config")["present"], true);
    }
    let log_text = fs::read_to_string(&log).unwrap();
    assert!(!log_text.contains("tok-SECRET"), "secrets never logged");
    let recs: Vec<Value> = log_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rows: Vec<&str> = recs.iter().map(|r| r["row"].as_str().unwrap()).collect();
    assert_eq!(rows, ["r1", "r2", "r3"]);
    assert!(recs
        .iter()
        .all(|r| r["slots"].as_array().unwrap().len() == 3));
    // Every row used: a fourth device is refused, nothing written.
    let t4 = d.join("dev4.img");
    let o = flash(&[&t4], &[]);
    assert_eq!(o.status.code(), Some(14), "{}", stderr(&o));
    assert!(!t4.exists());
    let o = run(&[
        "records",
        "summarize",
        log.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(summary.contains("devices verified"), "{summary}");
}

#[test]
fn a_bad_inventory_is_refused_before_anything_is_written() {
    let b = built(&slot_profile());
    let d = b.dir();
    let inv = inventory(d, 2, "r1,node-x,10.0.0.300/24,tok-SECRET-x\n");
    let t = d.join("dev.img");
    let o = run(&[
        "flash",
        b.zst().to_str().unwrap(),
        "--trust",
        b.trust.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
        "--personalize",
        b.f.profile.to_str().unwrap(),
        "--record",
        d.join("l.jsonl").to_str().unwrap(),
        "-t",
        t.to_str().unwrap(),
    ]);
    let e = stderr(&o) + &String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(14), "{e}");
    assert!(e.contains("is refused, nothing was written"), "{e}");
    assert!(e.contains("r1"), "{e}");
    assert!(e.contains("address"), "{e}");
    assert!(!e.contains("tok-SECRET"), "{e}");
    assert!(!t.exists());
    // Keyed by disk serial: a serial twice, a missing value, a column no template knows.
    let keyed = d.join("keyed.csv");
    fs::write(
        &keyed,
        "id,disk_serial,host,address,token
         a,S1,node-a,10.0.0.1/24,tok-SECRET-a
         b,S1,node-b,10.0.0.2/24,tok-SECRET-b
         c,S3,,10.0.0.3/24,tok-SECRET-c
",
    )
    .unwrap();
    let o = run(&[
        "flash",
        b.zst().to_str().unwrap(),
        "--trust",
        b.trust.to_str().unwrap(),
        "--inventory",
        keyed.to_str().unwrap(),
        "--personalize",
        b.f.profile.to_str().unwrap(),
        "--record",
        d.join("l.jsonl").to_str().unwrap(),
        "-t",
        t.to_str().unwrap(),
    ]);
    let e = stderr(&o) + &String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(14), "{e}");
    assert!(e.contains("S1"), "duplicate serial named: {e}");
    assert!(e.contains("host"), "missing value named: {e}");
    assert!(!e.contains("tok-SECRET"), "{e}");
    assert!(!t.exists());
}

/// One station run writing `devices` (each a file, made into a loop device while the
/// station watches); returns the station's exit status.
fn station_run(
    b: &Built,
    inv: &Path,
    log: &Path,
    devices: &[PathBuf],
) -> Option<std::process::ExitStatus> {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(bin())
        .args([
            "station",
            b.zst().to_str().unwrap(),
            "--trust",
            b.trust.to_str().unwrap(),
        ])
        .args(["--ports", "transport:loop", "--json", "--parallel", "2"])
        .args(["--count", &devices.len().to_string(), "--idle-exit", "60"])
        .args(["--inventory", inv.to_str().unwrap()])
        .args(["--personalize", b.f.profile.to_str().unwrap()])
        .args(["--record", log.to_str().unwrap()])
        .args(["--operator", "op-7", "--station-name", "line-2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines.any(|l| l.is_ok_and(|l| l.contains("\"station-start\"")));
    let mut loops = Vec::new();
    for f in devices.iter().filter(|_| started) {
        match Loop::new(f) {
            Some(l) => loops.push(l),
            None => break,
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !started || loops.len() < devices.len() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    for l in lines {
        if l.unwrap().contains("\"station-done\"") {
            break;
        }
    }
    let st = child.wait().unwrap();
    drop(loops);
    Some(st)
}

/// A device file on its own tmpfs of 2 MiB: writing the image to it fails mid-write. The
/// tmpfs is unmounted when the returned guard is dropped.
fn failing_device(d: &Path, name: &str, size: u64) -> Option<(PathBuf, Tmpfs)> {
    let fs_ = Tmpfs::new(&d.join(format!("{name}-fs")), "2m")?;
    let f = fs_.0.join("disk.img");
    sparse(&f, size);
    Some((f, fs_))
}

#[test]
fn a_line_of_twenty_devices_across_station_runs_with_two_failures_retried() {
    let b = built(&slot_profile());
    let d = b.dir();
    let size = fs::metadata(b.raw()).unwrap().len();
    let inv = inventory(d, 20, "");
    let log = d.join("line.jsonl");
    let mut n = 0;
    let mut dev = || {
        n += 1;
        let p = d.join(format!("dev{n:02}.img"));
        fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    };
    let mut good: Vec<PathBuf> = Vec::new();
    // Three station runs: 8 devices with one failing, 8 with one failing, then 6.
    for (run_no, count) in [(1, 8), (2, 8), (3, 6)] {
        let mut devices: Vec<PathBuf> = (0..count - usize::from(run_no < 3))
            .map(|_| dev())
            .collect();
        good.extend(devices.iter().cloned());
        let mut mount = None;
        if run_no < 3 {
            let Some((f, m)) = failing_device(d, &format!("bad{run_no}"), size) else {
                eprintln!("SKIPPED (station line): cannot mount a tmpfs");
                return;
            };
            devices.insert(3, f);
            mount = Some(m);
        }
        let st = station_run(&b, &inv, &log, &devices);
        drop(mount);
        let Some(st) = st else {
            eprintln!("SKIPPED (station line): no loop devices");
            return;
        };
        let want = if run_no < 3 { Some(13) } else { Some(0) };
        assert_eq!(st.code(), want, "station run {run_no}");
    }
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("tok-SECRET"), "secrets never logged");
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 22);
    let failed: Vec<&Value> = recs.iter().filter(|r| r["result"] != "verified").collect();
    assert_eq!(failed.len(), 2, "{recs:?}");
    let mut verified: Vec<String> = recs
        .iter()
        .filter(|r| r["result"] == "verified")
        .map(|r| r["row"].as_str().unwrap().to_string())
        .collect();
    verified.sort();
    let mut all: Vec<String> = (1..=20).map(|i| format!("r{i}")).collect();
    all.sort();
    assert_eq!(verified, all, "exactly one success line per row");
    for f in &failed {
        assert!(
            verified.contains(&f["row"].as_str().unwrap().to_string()),
            "retried: {f}"
        );
    }
    assert!(recs
        .iter()
        .all(|r| r["operator"] == "op-7" && r["station"] == "line-2"));
    // Every device verifies, base intact, with its own slots: the twenty token digests are
    // the twenty rows' tokens, each once.
    let mut tokens: Vec<String> = good
        .iter()
        .map(|f| {
            let j = verify_json(&b, f);
            assert_eq!(j["outcome"], "verified", "{}: {j}", f.display());
            slot(&j, "token")["sha256"].as_str().unwrap().to_string()
        })
        .collect();
    tokens.sort();
    let mut want: Vec<String> = (1..=20)
        .map(|i| sha(format!("tok-SECRET-{i}").as_bytes()))
        .collect();
    want.sort();
    assert_eq!(tokens, want);
    let o = run(&[
        "records",
        "summarize",
        log.to_str().unwrap(),
        "--inventory",
        inv.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["rows_verified"], 20, "{s}");
}
