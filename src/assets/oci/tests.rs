//! Fixtures are generated here with the tar, flate2 and zstd crates; nothing binary is
//! committed.

use super::*;
use serde_json::{json, Value};
use std::io::Write;

// ------------------------------------------------------------------------------------------
// Fixture helpers
// ------------------------------------------------------------------------------------------

/// One entry of a generated layer.
enum E {
    File(String, Vec<u8>),
    Dir(String),
    Sym(String, String),
    Hard(String, String),
    /// A regular file whose header name bytes are written verbatim (no validation).
    RawName(Vec<u8>, Vec<u8>),
    /// A regular file preceded by a PAX header carrying `mtime`.
    PaxMtime(String, Vec<u8>, String),
    Char(String),
}

fn file(p: &str, data: &[u8]) -> E {
    E::File(p.to_string(), data.to_vec())
}

fn dir(p: &str) -> E {
    E::Dir(p.to_string())
}

fn header(t: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(t);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(p, d) => {
                let mut h = header(tar::EntryType::Regular, 0o644, d.len() as u64);
                b.append_data(&mut h, p, &d[..]).unwrap();
            }
            E::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::Sym(p, t) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::RawName(name, d) => {
                let mut h = header(tar::EntryType::Regular, 0o644, d.len() as u64);
                let slot = &mut h.as_old_mut().name;
                slot.fill(0);
                slot[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, &d[..]).unwrap();
            }
            E::PaxMtime(p, d, mtime) => {
                let rec = pax_record("mtime", mtime);
                let mut x = header(tar::EntryType::XHeader, 0o644, rec.len() as u64);
                b.append_data(&mut x, "PaxHeaders/x", &rec[..]).unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644, d.len() as u64);
                b.append_data(&mut h, p, &d[..]).unwrap();
            }
            E::Char(p) => {
                let mut h = header(tar::EntryType::Char, 0o600, 0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

#[derive(Clone, Copy)]
enum Comp {
    Plain,
    Gzip,
    Zstd,
}

fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Plain => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// A layer as stored: its tar, the stored (maybe compressed) bytes.
struct Layer {
    tar: Vec<u8>,
    stored: Vec<u8>,
}

fn layer(entries: &[E], c: Comp) -> Layer {
    let tar = layer_tar(entries);
    let stored = compress(&tar, c);
    Layer { tar, stored }
}

fn config_json(arch: &str, layers: &[&Layer]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(&l.tar)).collect();
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Blobs of an OCI layout, keyed by hex digest.
#[derive(Default)]
struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    fn add(&mut self, data: Vec<u8>) -> (String, u64) {
        let d = sha(&data);
        let n = data.len() as u64;
        self.0.insert(hex_of(&d).to_string(), data);
        (d, n)
    }

    /// Add config + layers + manifest; return the manifest descriptor (platform from `arch`,
    /// unless `platform` is false).
    fn image(&mut self, arch: &str, layers: &[&Layer], platform: Option<Value>) -> Value {
        self.image_with_config(config_json(arch, layers), layers, platform)
    }

    fn image_with_config(
        &mut self,
        config: Vec<u8>,
        layers: &[&Layer],
        platform: Option<Value>,
    ) -> Value {
        let (cd, cs) = self.add(config);
        let ls: Vec<Value> = layers
            .iter()
            .map(|l| {
                let (d, s) = self.add(l.stored.clone());
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": cd, "size": cs},
            "layers": ls,
        }))
        .unwrap();
        let (md, ms) = self.add(manifest);
        let mut d = json!({"mediaType": MT_OCI_MANIFEST, "digest": md, "size": ms});
        if let Some(p) = platform {
            d["platform"] = p;
        }
        d
    }
}

fn plat(arch: &str) -> Option<Value> {
    Some(json!({"architecture": arch, "os": "linux"}))
}

fn index_json(manifests: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

/// An outer tar of (name, bytes) members.
fn outer_tar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn oci_members(blobs: &Blobs, index: Vec<u8>) -> Vec<(String, Vec<u8>)> {
    let mut m = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for (hex, data) in &blobs.0 {
        m.push((format!("blobs/sha256/{hex}"), data.clone()));
    }
    m
}

/// A temp dir holding one file; returns (dir guard, path).
fn write_tmp(name: &str, data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    std::fs::write(&p, data).unwrap();
    (d, p)
}

fn oci_tar_file(blobs: &Blobs, index: Vec<u8>) -> (tempfile::TempDir, PathBuf) {
    write_tmp("image.oci.tar", &outer_tar(&oci_members(blobs, index)))
}

fn talos_layer(arch: &str, c: Comp) -> Layer {
    let mut v = vec![
        dir("usr"),
        dir("usr/install"),
        dir(&format!("usr/install/{arch}")),
    ];
    for f in ASSETS {
        v.push(file(
            &format!("usr/install/{arch}/{f}"),
            asset_bytes(arch, f).as_slice(),
        ));
    }
    v.push(file("usr/bin/imager", b"#!/bin/imager\n"));
    layer(&v, c)
}

const ASSETS: [&str; 4] = [
    "vmlinuz",
    "initramfs.xz",
    "systemd-boot.efi",
    "systemd-stub.efi",
];

fn asset_bytes(arch: &str, name: &str) -> Vec<u8> {
    format!("{arch}:{name}:").repeat(100).into_bytes()
}

fn content(t: &MergedTree, p: &str) -> Vec<u8> {
    match &t.get(p).unwrap_or_else(|| panic!("{p} missing")).kind {
        EntryKind::File { size, content } => {
            let mut v = vec![0u8; *size as usize];
            content.read_exact_at(&mut v, 0).unwrap();
            assert_eq!(content.len().unwrap(), *size);
            v
        }
        other => panic!("{p} is {other:?}"),
    }
}

fn all(_: &str) -> bool {
    true
}

fn err_of(r: Result<impl fmt::Debug>) -> String {
    format!("{:#}", r.unwrap_err())
}

/// A docker-save archive in the classic format: `<hex>.json` config, `<id>/layer.tar` layers.
fn docker_save(arch: &str, layers: &[&Layer]) -> Vec<u8> {
    let config = config_json(arch, layers);
    let config_name = format!("{}.json", hex_of(&sha(&config)));
    let mut members = vec![(config_name.clone(), config)];
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("{:064x}/layer.tar", i + 1);
        members.push((n.clone(), l.stored.clone()));
        names.push(n);
    }
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["ghcr.io/siderolabs/imager:v1.9.0"],
        "Layers": names,
    }]))
    .unwrap();
    members.insert(0, ("manifest.json".to_string(), manifest));
    outer_tar(&members)
}

fn talos_filter(arch: &'static str) -> impl Fn(&str) -> bool {
    move |p: &str| p.starts_with(&format!("usr/install/{arch}/"))
}

// ------------------------------------------------------------------------------------------
// Formats
// ------------------------------------------------------------------------------------------

#[test]
fn docker_save_single_arch_checks_config_architecture() {
    let l = talos_layer("amd64", Comp::Plain);
    let (_d, p) = write_tmp("imager.tar", &docker_save("amd64", &[&l]));
    let img = OciImage::open(&p, "amd64").unwrap();
    assert_eq!(img.layer_count(), 1);
    assert_eq!(img.platform(), "linux/amd64");
    assert_eq!(img.manifest_digest(), None);
    let t = img.merged_tree(&talos_filter("amd64")).unwrap();
    assert_eq!(
        content(&t, "usr/install/amd64/vmlinuz"),
        asset_bytes("amd64", "vmlinuz")
    );

    let e = err_of(OciImage::open(&p, "arm64"));
    assert!(e.contains("no linux/arm64 image in"), "{e}");
    assert!(e.contains(&p.display().to_string()), "{e}");
    assert!(e.contains("it holds linux/amd64"), "{e}");
}

#[test]
fn docker_save_new_style_with_blob_paths_and_symlinked_layers() {
    // Docker 25+ stores blobs under blobs/sha256 and may keep legacy names as symlinks.
    let l1 = talos_layer("arm64", Comp::Plain);
    let l2 = layer(&[file("etc/os-release", b"talos\n")], Comp::Gzip);
    let config = config_json("arm64", &[&l1, &l2]);
    let cd = sha(&config);
    let d1 = sha(&l1.stored);
    let d2 = sha(&l2.stored);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{}", hex_of(&cd)),
        "RepoTags": null,
        "Layers": [format!("blobs/sha256/{}", hex_of(&d1)), "legacy/layer.tar"],
    }]))
    .unwrap();
    add("manifest.json", &manifest);
    add(&format!("./blobs/sha256/{}", hex_of(&cd)), &config);
    add(&format!("blobs/sha256/{}", hex_of(&d1)), &l1.stored);
    add(&format!("blobs/sha256/{}", hex_of(&d2)), &l2.stored);
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(
        &mut h,
        "legacy/layer.tar",
        format!("../blobs/sha256/{}", hex_of(&d2)),
    )
    .unwrap();
    let (_d, p) = write_tmp("new.tar", &b.into_inner().unwrap());
    let img = OciImage::open(&p, "arm64").unwrap();
    assert_eq!(img.layer_count(), 2);
    let t = img.merged_tree(&all).unwrap();
    assert_eq!(content(&t, "etc/os-release"), b"talos\n");
    assert_eq!(
        content(&t, "usr/install/arm64/vmlinuz"),
        asset_bytes("arm64", "vmlinuz")
    );
}

fn two_arch_blobs() -> (Blobs, Vec<u8>, Value, Value) {
    let mut blobs = Blobs::default();
    let a = talos_layer("amd64", Comp::Gzip);
    let r = talos_layer("arm64", Comp::Zstd);
    let da = blobs.image("amd64", &[&a], plat("amd64"));
    let dr = blobs.image(
        "arm64",
        &[&r],
        Some(json!({"architecture": "arm64", "os": "linux", "variant": "v8"})),
    );
    let index = index_json(vec![da.clone(), dr.clone()]);
    (blobs, index, da, dr)
}

#[test]
fn oci_tar_index_with_two_arches_picks_each() {
    let (blobs, index, da, dr) = two_arch_blobs();
    let (_d, p) = oci_tar_file(&blobs, index);
    for (arch, desc) in [("amd64", &da), ("arm64", &dr)] {
        let img = OciImage::open(&p, arch).unwrap();
        assert_eq!(img.manifest_digest(), desc["digest"].as_str());
        let t = img.merged_tree(&all).unwrap();
        assert_eq!(
            content(&t, &format!("usr/install/{arch}/vmlinuz")),
            asset_bytes(arch, "vmlinuz")
        );
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        assert!(t.get(&format!("usr/install/{other}/vmlinuz")).is_none());
    }
    assert_eq!(
        OciImage::open(&p, "arm64").unwrap().platform(),
        "linux/arm64/v8"
    );
    let e = err_of(OciImage::open(&p, "s390x"));
    assert!(e.contains("unsupported architecture \"s390x\""), "{e}");
}

#[test]
fn nested_index_and_unlisted_platforms() {
    let mut blobs = Blobs::default();
    let a = talos_layer("amd64", Comp::Gzip);
    let r = talos_layer("arm64", Comp::Gzip);
    let s = layer(&[file("x", b"s390x")], Comp::Gzip);
    let da = blobs.image("amd64", &[&a], plat("amd64"));
    let dr = blobs.image("arm64", &[&r], plat("arm64"));
    let ds = blobs.image("s390x", &[&s], plat("s390x"));
    let attestation = json!({
        "mediaType": MT_OCI_MANIFEST,
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 100,
        "platform": {"architecture": "unknown", "os": "unknown"},
    });
    let inner = index_json(vec![da, ds, attestation]);
    let (id, is) = blobs.add(inner);
    let (id2, is2) = blobs.add(index_json(vec![dr]));
    let top = index_json(vec![
        json!({"mediaType": MT_OCI_INDEX, "digest": id, "size": is}),
        // No media type: sniffed as an index.
        json!({"digest": id2, "size": is2}),
    ]);
    let (_d, p) = oci_tar_file(&blobs, top);
    let t = OciImage::open(&p, "amd64")
        .unwrap()
        .merged_tree(&all)
        .unwrap();
    assert!(t.get("usr/install/amd64/vmlinuz").is_some());
    let t = OciImage::open(&p, "arm64")
        .unwrap()
        .merged_tree(&all)
        .unwrap();
    assert!(t.get("usr/install/arm64/vmlinuz").is_some());
}

#[test]
fn manifest_without_platform_is_matched_by_config() {
    let mut blobs = Blobs::default();
    let a = talos_layer("amd64", Comp::Gzip);
    let mut d = blobs.image("amd64", &[&a], None);
    d.as_object_mut().unwrap().remove("mediaType");
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    assert_eq!(
        OciImage::open(&p, "amd64").unwrap().platform(),
        "linux/amd64"
    );
    let e = err_of(OciImage::open(&p, "arm64"));
    assert!(
        e.contains("no linux/arm64 image in") && e.contains("it holds linux/amd64"),
        "{e}"
    );
}

#[test]
fn no_matching_platform_lists_what_is_held() {
    let mut blobs = Blobs::default();
    let a = layer(&[file("a", b"a")], Comp::Gzip);
    let d1 = blobs.image("amd64", &[&a], plat("amd64"));
    let d2 = blobs.image("s390x", &[&a], plat("s390x"));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d1, d2]));
    let e = err_of(OciImage::open(&p, "arm64"));
    assert!(
        e.contains(&format!(
            "no linux/arm64 image in {}: it holds linux/amd64, linux/s390x",
            p.display()
        )),
        "{e}"
    );
    let (_d2, p2) = oci_tar_file(&Blobs::default(), index_json(vec![]));
    let e = err_of(OciImage::open(&p2, "arm64"));
    assert!(e.contains("it holds no images"), "{e}");
}

#[test]
fn two_images_for_one_platform_are_ambiguous() {
    let mut blobs = Blobs::default();
    let a = layer(&[file("a", b"a")], Comp::Gzip);
    let b = layer(&[file("b", b"b")], Comp::Gzip);
    let d1 = blobs.image("amd64", &[&a], plat("amd64"));
    let d2 = blobs.image("amd64", &[&b], plat("amd64"));
    // The same manifest listed twice is not ambiguous.
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d1.clone(), d1.clone()]));
    assert!(OciImage::open(&p, "amd64").is_ok());
    let (_d2, p2) = oci_tar_file(&blobs, index_json(vec![d1, d2]));
    let e = err_of(OciImage::open(&p2, "amd64"));
    assert!(e.contains("holds 2 linux/amd64 images"), "{e}");
}

#[test]
fn oci_layout_directory() {
    let (blobs, index, _, _) = two_arch_blobs();
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in oci_members(&blobs, index) {
        let p = dir.path().join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let img = OciImage::open(dir.path(), "arm64").unwrap();
    let t = img.merged_tree(&talos_filter("arm64")).unwrap();
    assert_eq!(t.len(), 4);
    assert_eq!(
        content(&t, "usr/install/arm64/initramfs.xz"),
        asset_bytes("arm64", "initramfs.xz")
    );

    // A missing blob in a directory layout.
    let (_, dr_hex) = blobs
        .0
        .iter()
        .find(|(_, d)| d.starts_with(b"\x28\xb5\x2f\xfd"))
        .map(|(h, d)| (d, h.clone()))
        .unwrap();
    std::fs::remove_file(dir.path().join("blobs/sha256").join(&dr_hex)).unwrap();
    let img = OciImage::open(dir.path(), "arm64").unwrap();
    let e = err_of(img.merged_tree(&all));
    assert!(
        e.contains("absent from the archive") && e.contains(&dr_hex),
        "{e}"
    );
}

// ------------------------------------------------------------------------------------------
// Layers
// ------------------------------------------------------------------------------------------

#[test]
fn gzip_zstd_and_plain_layers_merge_in_order() {
    let mut blobs = Blobs::default();
    let g = layer(
        &[
            dir("data"),
            file("data/g", b"gzip"),
            file("data/f", b"from gzip"),
        ],
        Comp::Gzip,
    );
    let z = layer(
        &[file("data/z", b"zstd"), file("data/f", b"from zstd")],
        Comp::Zstd,
    );
    let p = layer(&[file("data/p", b"plain")], Comp::Plain);
    let d = blobs.image("amd64", &[&g, &z, &p], plat("amd64"));
    let (_d, path) = oci_tar_file(&blobs, index_json(vec![d]));
    let img = OciImage::open(&path, "amd64").unwrap();
    assert_eq!(img.layer_count(), 3);
    let t = img.merged_tree(&all).unwrap();
    assert_eq!(content(&t, "data/g"), b"gzip");
    assert_eq!(content(&t, "data/z"), b"zstd");
    assert_eq!(content(&t, "data/p"), b"plain");
    // Overwritten by the later layer.
    assert_eq!(content(&t, "data/f"), b"from zstd");
    assert!(matches!(t.get("data").unwrap().kind, EntryKind::Dir));
    assert_eq!(t.get("data").unwrap().mode, 0o755);
    // Deterministic: a second pass gives the same paths and bytes.
    let t2 = img.merged_tree(&all).unwrap();
    assert_eq!(
        t.entries.keys().collect::<Vec<_>>(),
        t2.entries.keys().collect::<Vec<_>>()
    );
}

#[test]
fn multi_member_gzip_and_empty_layer() {
    let tar = layer_tar(&[file("a", b"first"), file("b", b"second")]);
    // Split the tar into two gzip members.
    let mut stored = compress(&tar[..512], Comp::Gzip);
    stored.extend(compress(&tar[512..], Comp::Gzip));
    let multi = Layer { tar, stored };
    let empty = Layer {
        tar: Vec::new(),
        stored: Vec::new(),
    };
    let mut blobs = Blobs::default();
    let d = blobs.image("amd64", &[&multi, &empty], plat("amd64"));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let t = OciImage::open(&p, "amd64")
        .unwrap()
        .merged_tree(&all)
        .unwrap();
    assert_eq!(content(&t, "a"), b"first");
    assert_eq!(content(&t, "b"), b"second");
}

fn single_image(layers: &[&Layer]) -> (tempfile::TempDir, PathBuf) {
    let mut blobs = Blobs::default();
    let d = blobs.image("amd64", layers, plat("amd64"));
    oci_tar_file(&blobs, index_json(vec![d]))
}

fn tree_of(layers: &[&Layer], filter: &dyn Fn(&str) -> bool) -> Result<MergedTree> {
    let (_d, p) = single_image(layers);
    OciImage::open(&p, "amd64")?.merged_tree(filter)
}

#[test]
fn whiteouts_and_opaque_whiteouts() {
    let l1 = layer(
        &[
            dir("etc"),
            file("etc/a", b"a"),
            file("etc/b", b"b"),
            dir("opt/x"),
            file("opt/x/1", b"1"),
            dir("opt/x/sub"),
            file("opt/x/sub/2", b"2"),
            file("opt/y", b"y"),
            dir("gone"),
            file("gone/deep", b"d"),
            file("opt/xy", b"not under opt/x"),
        ],
        Comp::Gzip,
    );
    let l2 = layer(
        &[
            file("etc/.wh.a", b""),
            file("./.wh.gone", b""),
            // The opaque marker after a new sibling: the new entry must survive.
            file("opt/x/3", b"3"),
            file("opt/x/.wh..wh..opq", b""),
            file("opt/x/.wh..wh.plnk", b""),
        ],
        Comp::Zstd,
    );
    let l3 = layer(&[file("gone/again", b"back")], Comp::Plain);
    let t = tree_of(&[&l1, &l2, &l3], &all).unwrap();
    let keys: Vec<&str> = t.entries.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        keys,
        [
            "etc",
            "etc/b",
            "gone/again",
            "opt/x",
            "opt/x/3",
            "opt/xy",
            "opt/y"
        ],
        "{keys:?}"
    );
}

#[test]
fn whiteout_removes_kept_paths_even_when_filtered() {
    let l1 = talos_layer("amd64", Comp::Gzip);
    let l2 = layer(&[file("usr/install/.wh.amd64", b"")], Comp::Gzip);
    let t = tree_of(&[&l1, &l2], &talos_filter("amd64")).unwrap();
    assert!(t.is_empty(), "{:?}", t.entries.keys());
    // A later non-directory replacing a kept directory hides its contents too.
    let l3 = layer(
        &[E::Sym("usr/install".into(), "/elsewhere".into())],
        Comp::Gzip,
    );
    let t = tree_of(&[&l1, &l3], &talos_filter("amd64")).unwrap();
    assert!(t.is_empty(), "{:?}", t.entries.keys());
}

#[test]
fn talos_filter_returns_the_four_assets() {
    let base = layer(&[dir("usr"), file("usr/bin/sh", b"sh")], Comp::Gzip);
    let both = talos_layer("amd64", Comp::Zstd);
    let arm = talos_layer("arm64", Comp::Plain);
    let t = tree_of(&[&base, &both, &arm], &talos_filter("amd64")).unwrap();
    let keys: Vec<&str> = t.entries.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        keys,
        [
            "usr/install/amd64/initramfs.xz",
            "usr/install/amd64/systemd-boot.efi",
            "usr/install/amd64/systemd-stub.efi",
            "usr/install/amd64/vmlinuz",
        ]
    );
    for f in ASSETS {
        let p = format!("usr/install/amd64/{f}");
        assert_eq!(content(&t, &p), asset_bytes("amd64", f), "{p}");
        let e = t.get(&p).unwrap();
        assert_eq!((e.mode, e.uid, e.gid, e.mtime), (0o644, 0, 0, 1000));
    }
}

#[test]
fn hard_links_resolve_to_kept_content() {
    let l1 = layer(
        &[file("bin/busybox", b"BB"), file("skip/me", b"S")],
        Comp::Gzip,
    );
    let l2 = layer(
        &[
            E::Hard("bin/sh".into(), "bin/busybox".into()),
            file("bin/new", b"N"),
            E::Hard("./bin/new2".into(), "bin/new".into()),
            E::Hard("bin/filtered".into(), "skip/me".into()),
        ],
        Comp::Gzip,
    );
    let filter = |p: &str| p.starts_with("bin");
    let t = tree_of(&[&l1, &l2], &filter).unwrap();
    assert_eq!(content(&t, "bin/sh"), b"BB");
    assert_eq!(content(&t, "bin/new2"), b"N");
    match &t.get("bin/filtered").unwrap().kind {
        EntryKind::Hardlink(target) => assert_eq!(target, "skip/me"),
        other => panic!("{other:?}"),
    }
    let l3 = layer(
        &[E::Hard("bin/dangling".into(), "bin/nothing".into())],
        Comp::Gzip,
    );
    let e = err_of(tree_of(&[&l1, &l3], &filter));
    assert!(
        e.contains("layer 2/2") && e.contains("bin/dangling") && e.contains("bin/nothing"),
        "{e}"
    );
    assert!(e.contains("not in this or an earlier layer"), "{e}");
}

#[test]
fn names_are_normalized_and_metadata_kept() {
    let long = format!("usr/{}/file", "d".repeat(150));
    let l = layer(
        &[
            E::RawName(b"/abs/path".to_vec(), b"abs".to_vec()),
            E::RawName(b"./dot//slash/./x".to_vec(), b"dot".to_vec()),
            E::File(long.clone(), b"long".to_vec()),
            E::Sym("evil".into(), "../../etc/passwd".into()),
            E::Sym("abs-link".into(), "/etc/shadow".into()),
            E::PaxMtime("pax".into(), b"p".to_vec(), "1700000000.25".into()),
            E::Char("dev/null".into()),
            dir("./"),
        ],
        Comp::Gzip,
    );
    let t = tree_of(&[&l], &all).unwrap();
    assert_eq!(content(&t, "abs/path"), b"abs");
    assert_eq!(content(&t, "dot/slash/x"), b"dot");
    assert_eq!(content(&t, &long), b"long");
    assert!(
        matches!(&t.get("evil").unwrap().kind, EntryKind::Symlink(s) if s == "../../etc/passwd")
    );
    assert!(
        matches!(&t.get("abs-link").unwrap().kind, EntryKind::Symlink(s) if s == "/etc/shadow")
    );
    assert_eq!(t.get("pax").unwrap().mtime, 1_700_000_000);
    assert!(matches!(
        t.get("dev/null").unwrap().kind,
        EntryKind::Other("character device")
    ));
    assert!(t.get("").is_none());
}

// ------------------------------------------------------------------------------------------
// Hostile and broken input
// ------------------------------------------------------------------------------------------

#[test]
fn dotdot_in_a_layer_is_refused() {
    let l = layer(
        &[E::RawName(b"usr/../../etc/passwd".to_vec(), b"x".to_vec())],
        Comp::Gzip,
    );
    let e = err_of(tree_of(&[&l], &all));
    assert!(e.contains("layer 1/1 (sha256:"), "{e}");
    assert!(
        e.contains("\"usr/../../etc/passwd\" has a \"..\" component"),
        "{e}"
    );
    let h = layer(&[E::Hard("a".into(), "../b".into())], Comp::Gzip);
    let e = err_of(tree_of(&[&h], &all));
    assert!(e.contains("hard link target") && e.contains(".."), "{e}");
}

#[test]
fn not_a_tar() {
    let (_d, p) = write_tmp("junk.tar", &[b'x'; 2000]);
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains(&format!("{}: not a tar archive", p.display())),
        "{e}"
    );
    let (_d, p) = write_tmp("empty.tar", b"");
    assert!(err_of(OciImage::open(&p, "amd64")).contains("not a tar archive"));
    let missing = Path::new("/nonexistent/edgeimage/x.tar");
    assert!(err_of(OciImage::open(missing, "amd64")).contains("/nonexistent/edgeimage/x.tar"));
}

#[test]
fn compressed_outer_archive_is_refused() {
    let l = talos_layer("amd64", Comp::Plain);
    let (_d, p) = write_tmp(
        "imager.tar.gz",
        &compress(&docker_save("amd64", &[&l]), Comp::Gzip),
    );
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains("imager.tar.gz: is gzip-compressed"), "{e}");
}

#[test]
fn missing_manifest_and_index() {
    let (_d, p) = write_tmp(
        "other.tar",
        &outer_tar(&[("hello.txt".into(), b"hi".to_vec())]),
    );
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains("other.tar: neither an OCI image layout (no index.json) nor a docker-save"),
        "{e}"
    );
}

#[test]
fn a_listed_layer_that_is_absent() {
    let mut blobs = Blobs::default();
    let l = layer(&[file("a", b"a")], Comp::Gzip);
    let d = blobs.image("amd64", &[&l], plat("amd64"));
    let ld = sha(&l.stored);
    blobs.0.remove(hex_of(&ld));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let img = OciImage::open(&p, "amd64").unwrap();
    let e = err_of(img.merged_tree(&all));
    assert!(
        e.contains(&format!(
            "layer 1/1 ({ld}): listed but its blob blobs/sha256/"
        )),
        "{e}"
    );
    assert!(e.contains("absent from the archive"), "{e}");

    // A manifest or config blob that is absent.
    let mut blobs = Blobs::default();
    let d = blobs.image("amd64", &[&l], None);
    let md = d["digest"].as_str().unwrap().to_string();
    let m: Value = serde_json::from_slice(&blobs.0[hex_of(&md)]).unwrap();
    let cd = m["config"]["digest"].as_str().unwrap().to_string();
    blobs.0.remove(hex_of(&cd));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d.clone()]));
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains(&format!(
            "config of manifest {md} {cd} is listed but its blob"
        )),
        "{e}"
    );
    blobs.0.remove(hex_of(&md));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains(&format!("manifest {md} is listed but its blob")),
        "{e}"
    );
    assert!(e.contains("absent from the archive"), "{e}");

    // Docker-save: a layer name with no member.
    let l = talos_layer("amd64", Comp::Plain);
    let mut tar = docker_save("amd64", &[&l]);
    // Rename the layer member in place so manifest.json no longer finds it.
    let needle = format!("{:064x}/layer.tar", 1);
    let pos = tar
        .windows(needle.len())
        .rposition(|w| w == needle.as_bytes())
        .unwrap();
    tar[pos] = b'f';
    let mut h = tar::Header::from_byte_slice(&tar[pos..pos + 512]).clone();
    h.set_cksum();
    tar[pos..pos + 512].copy_from_slice(h.as_bytes());
    let (_d, p) = write_tmp("docker.tar", &tar);
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains(&needle) && e.contains("absent from the archive"),
        "{e}"
    );
}

#[test]
fn truncated_layers() {
    // A gzip stream cut short; the descriptor matches the cut bytes, so decompression fails.
    let full = layer(&[file("big", &vec![7u8; 100_000])], Comp::Gzip);
    let cut = Layer {
        tar: full.tar.clone(),
        stored: full.stored[..full.stored.len() / 2].to_vec(),
    };
    let e = err_of(tree_of(&[&cut], &all));
    assert!(e.contains("layer 1/1 (sha256:"), "{e}");
    assert!(e.contains("big"), "{e}");

    // A plain tar cut inside the file data: its diff_id (the digest of the whole tar) is
    // checked against the stored bytes before anything is read.
    let plain = layer(&[file("big", &vec![7u8; 10_000])], Comp::Plain);
    let cut = Layer {
        tar: plain.tar.clone(),
        stored: plain.tar[..4096].to_vec(),
    };
    let e = err_of(tree_of(&[&cut], &all));
    assert!(e.contains("uncompressed digest mismatch"), "{e}");
    // With a matching diff_id, the entry's size field reaches past the end of the layer.
    let cut = Layer {
        tar: plain.tar[..4096].to_vec(),
        stored: plain.tar[..4096].to_vec(),
    };
    let e = err_of(tree_of(&[&cut], &all));
    assert!(
        e.contains("layer 1/1 (sha256:")
            && e.contains(
                "entry 1: its header claims 10000 bytes of data, reaching past the \
             end of the layer (4096 bytes)"
            ),
        "{e}"
    );
    // A compressed one cut inside the file data is read to its end and found short.
    let cut = Layer {
        tar: plain.tar[..4096].to_vec(),
        stored: compress(&plain.tar[..4096], Comp::Zstd),
    };
    let e = err_of(tree_of(&[&cut], &all));
    assert!(
        e.contains("entry 1 (\"big\"): truncated (3584 of 10000 bytes)"),
        "{e}"
    );

    // The outer archive cut inside a blob.
    let l = talos_layer("amd64", Comp::Plain);
    let tar = docker_save("amd64", &[&l]);
    let (_d, p) = write_tmp("cut.tar", &tar[..tar.len() - 3000]);
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains("cut.tar: entry 3: its header claims")
            && e.contains("past the end of the file: the archive is truncated"),
        "{e}"
    );
}

#[test]
fn unknown_compression() {
    let junk = Layer {
        tar: b"hello".to_vec(),
        stored: b"hello, this is not a tar".to_vec(),
    };
    let e = err_of(tree_of(&[&junk], &all));
    assert!(
        e.contains("layer 1/1") && e.contains("unknown compression") && e.contains("68 65 6c 6c"),
        "{e}"
    );
    let xz = Layer {
        tar: Vec::new(),
        stored: b"\xfd7zXZ\x00rest".to_vec(),
    };
    let e = err_of(tree_of(&[&xz], &all));
    assert!(e.contains("unsupported compression: xz"), "{e}");
}

#[test]
fn bad_json() {
    let (_d, p) = oci_tar_file(&Blobs::default(), b"{not json".to_vec());
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains("index.json: bad JSON"), "{e}");

    let mut blobs = Blobs::default();
    let (md, ms) = blobs.add(b"[1, 2".to_vec());
    let idx = index_json(vec![
        json!({"mediaType": MT_OCI_MANIFEST, "digest": md, "size": ms, "platform": {"architecture": "amd64", "os": "linux"}}),
    ]);
    let (_d, p) = oci_tar_file(&blobs, idx);
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains(&format!("manifest {md}: bad JSON")), "{e}");

    let (_d, p) = write_tmp(
        "d.tar",
        &outer_tar(&[("manifest.json".into(), b"{}".to_vec())]),
    );
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains("manifest.json: bad JSON"), "{e}");
}

#[test]
fn oversized_json_is_refused() {
    let big = vec![b' '; (MAX_JSON_BLOB + 1) as usize];
    let (_d, p) = oci_tar_file(&Blobs::default(), big);
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains("index index.json is 4194305 bytes, more than the 4194304-byte limit"),
        "{e}"
    );
}

#[test]
fn digest_mismatches() {
    // Layer: same size, one byte changed.
    let mut blobs = Blobs::default();
    let l = layer(&[file("a", &vec![1u8; 4000])], Comp::Plain);
    let d = blobs.image("amd64", &[&l], plat("amd64"));
    let ld = sha(&l.stored);
    let stored = blobs.0.get_mut(hex_of(&ld)).unwrap();
    stored[600] ^= 0xff;
    let got = sha(stored);
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains(&format!(
            "layer 1/1 ({ld}): digest mismatch: expected {ld}, got {got}"
        )),
        "{e}"
    );

    // A corrupted gzip layer reports the digest mismatch, not the inflate error.
    let mut blobs = Blobs::default();
    let l = layer(&[file("a", &vec![1u8; 4000])], Comp::Gzip);
    let d = blobs.image("amd64", &[&l], plat("amd64"));
    let ld = sha(&l.stored);
    let stored = blobs.0.get_mut(hex_of(&ld)).unwrap();
    let mid = stored.len() / 2;
    stored[mid] ^= 0xff;
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(e.contains("digest mismatch: expected"), "{e}");

    // Config.
    let mut blobs = Blobs::default();
    let d = blobs.image("amd64", &[&l], None);
    let m: Value = serde_json::from_slice(&blobs.0[hex_of(d["digest"].as_str().unwrap())]).unwrap();
    let cd = m["config"]["digest"].as_str().unwrap().to_string();
    let cfg = blobs.0.get_mut(hex_of(&cd)).unwrap();
    cfg[0] = b' ';
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains(&format!(
            "blobs/sha256/{}: digest mismatch: expected {cd}, got sha256:",
            hex_of(&cd)
        )),
        "{e}"
    );

    // Manifest: the descriptor names other bytes of the same size.
    let mut blobs = Blobs::default();
    let mut d = blobs.image("amd64", &[&l], plat("amd64"));
    let md = d["digest"].as_str().unwrap().to_string();
    let wrong = format!("sha256:{}", "a".repeat(64));
    let data = blobs.0[hex_of(&md)].clone();
    blobs.0.insert("a".repeat(64), data);
    d["digest"] = json!(wrong);
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains(&format!("digest mismatch: expected {wrong}, got {md}")),
        "{e}"
    );
}

#[test]
fn diff_id_mismatch() {
    let l = layer(&[file("a", b"a")], Comp::Gzip);
    let other = layer(&[file("b", b"b")], Comp::Gzip);
    let mut blobs = Blobs::default();
    let d = blobs.image_with_config(config_json("amd64", &[&other]), &[&l], plat("amd64"));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains("uncompressed digest mismatch") && e.contains(&sha(&other.tar)),
        "{e}"
    );
}

#[test]
fn descriptor_size_mismatch() {
    let l = layer(&[file("a", b"a")], Comp::Gzip);
    let mut blobs = Blobs::default();
    let d = blobs.image("amd64", &[&l], plat("amd64"));
    let md = d["digest"].as_str().unwrap().to_string();
    let mut m: Value = serde_json::from_slice(&blobs.0[hex_of(&md)]).unwrap();
    m["layers"][0]["size"] = json!(1);
    let (md2, ms2) = blobs.add(serde_json::to_vec(&m).unwrap());
    let d2 = json!({"mediaType": MT_OCI_MANIFEST, "digest": md2, "size": ms2, "platform": {"architecture": "amd64", "os": "linux"}});
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d2]));
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(e.contains("but its descriptor says 1"), "{e}");
}

#[test]
fn unsupported_digest_algorithm() {
    let d = json!({"mediaType": MT_OCI_MANIFEST, "digest": format!("sha512:{}", "0".repeat(128)), "size": 10, "platform": {"architecture": "amd64", "os": "linux"}});
    let (_d, p) = oci_tar_file(&Blobs::default(), index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains("unsupported digest algorithm \"sha512\""), "{e}");
    assert!(e.contains(&p.display().to_string()), "{e}");
}

#[test]
fn config_disagreeing_with_the_index_is_refused() {
    let l = layer(&[file("a", b"a")], Comp::Gzip);
    let mut blobs = Blobs::default();
    let d = blobs.image("amd64", &[&l], plat("arm64"));
    let (_d, p) = oci_tar_file(&blobs, index_json(vec![d]));
    let e = err_of(OciImage::open(&p, "arm64"));
    assert!(
        e.contains("is listed as linux/arm64 but its config says linux/amd64"),
        "{e}"
    );
}

#[test]
fn docker_save_config_without_digest_name_is_refused() {
    let l = talos_layer("amd64", Comp::Plain);
    let config = config_json("amd64", &[&l]);
    let manifest =
        serde_json::to_vec(&json!([{"Config": "config.json", "Layers": ["l.tar"]}])).unwrap();
    let tar = outer_tar(&[
        ("manifest.json".into(), manifest),
        ("config.json".into(), config),
        ("l.tar".into(), l.stored.clone()),
    ]);
    let (_d, p) = write_tmp("d.tar", &tar);
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains("cannot verify config \"config.json\""), "{e}");
    let manifest = serde_json::to_vec(&json!([{"Config": "../x.json", "Layers": []}])).unwrap();
    let (_d, p) = write_tmp("d.tar", &outer_tar(&[("manifest.json".into(), manifest)]));
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(
        e.contains("Config path \"../x.json\" has a \"..\" component"),
        "{e}"
    );
}

// ------------------------------------------------------------------------------------------
// Bounds: decompression, kept files, tar walks, layers
// ------------------------------------------------------------------------------------------

use super::fixtures::{self as fx, ZstdFrame};
use crate::talos::Arch;

fn image_of(layers: &[fx::Layer]) -> (tempfile::TempDir, PathBuf) {
    let members = fx::oci_members(Arch::Amd64, layers).unwrap();
    write_tmp("bounds.tar", &fx::outer_tar(&members).unwrap())
}

/// A layer whose config lists a diff_id nothing will match (the bound trips first).
fn unchecked(stored: Vec<u8>) -> fx::Layer {
    fx::Layer {
        stored,
        diff_id: fx::sha256(b"never reached"),
    }
}

const REG: tar::EntryType = tar::EntryType::Regular;

#[test]
fn expansion_limits_and_the_kept_file_limit() {
    assert_eq!(expansion_limit(0), MIN_EXPANSION);
    assert_eq!(expansion_limit(4 << 20), MIN_EXPANSION);
    assert_eq!(expansion_limit(10 << 20), 640 << 20);
    assert_eq!(expansion_limit(1 << 30), MAX_EXPANSION);
    assert_eq!(expansion_limit(u64::MAX), MAX_EXPANSION);
    assert_eq!(MAX_KEPT_FILE, crate::input::Kind::Asset.max());
    const { assert!(MIN_EXPANSION <= MAX_EXPANSION && MAX_EXPANSION <= MAX_IMAGE_UNCOMPRESSED) };
}

#[test]
fn a_bomb_entry_is_refused_at_its_header() {
    let head = fx::entry_header(b"usr/install/amd64/vmlinuz", REG, 3 << 30);
    let z = ZstdFrame::new().raw(&head).repeat(0, 3 << 30).finish();
    let g = fx::gzip_with_zeros(&head, 64 << 20).unwrap();
    for stored in [z, g] {
        let (_d, p) = image_of(&[unchecked(stored)]);
        let t = std::time::Instant::now();
        let e = err_of(
            OciImage::open(&p, "amd64")
                .unwrap()
                .merged_tree(&talos_filter("amd64")),
        );
        assert!(
            e.contains("bounds.tar: layer 1/1 (sha256:")
                && e.contains(
                    "entry 1: its header claims 3221225472 bytes of data, reaching past 256.0 \
                     MiB, the most a layer of"
                ),
            "{e}"
        );
        // A hang guard, not a performance claim (`cargo xtask bench` measures time).
        assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    }
}

#[test]
fn decompression_stops_at_the_bound() {
    // A valid tar, then zeros past the bound: the drain after the end marker trips it.
    let mut tar = fx::entry(b"etc/hostname", REG, b"h\n");
    tar.extend(fx::tar_end());
    let stored = ZstdFrame::new().raw(&tar).repeat(0, 300 << 20).finish();
    let (_d, p) = image_of(&[unchecked(stored)]);
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains("layer 1/1 (sha256:")
            && e.contains("decompresses past 256.0 MiB, the most a layer of")
            && e.contains("nothing of it is used"),
        "{e}"
    );
    assert!(!e.contains("diff_ids"), "{e}");
}

#[test]
fn every_blob_is_checked_before_any_layer_is_decompressed() {
    // Layer 1 would take long to decompress; layer 2's blob is damaged: that is found first.
    let mut tar = fx::entry(b"a", REG, b"a");
    tar.extend(fx::tar_end());
    let bomb = unchecked(ZstdFrame::new().raw(&tar).repeat(0, 200 << 20).finish());
    let ok = fx::Layer::new(&tar, zstd::encode_all(&tar[..], 3).unwrap());
    let mut members = fx::oci_members(Arch::Amd64, &[bomb, ok.clone()]).unwrap();
    let hex = &fx::sha256(&ok.stored)["sha256:".len()..];
    let (_, blob) = members.iter_mut().find(|(n, _)| n.ends_with(hex)).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    let (_d, p) = write_tmp("two.tar", &fx::outer_tar(&members).unwrap());
    let t = std::time::Instant::now();
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains("layer 2/2 (sha256:") && e.contains("digest mismatch"),
        "{e}"
    );
    // A hang guard, not a performance claim (`cargo xtask bench` measures time).
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
}

/// `n` bytes no compressor shrinks.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_kept_file_past_its_limit_is_refused_before_it_is_written() {
    // 18 MiB of stored noise lets the layer expand to 1152 MiB: a kept file of 1100 MiB fits
    // the layer's bound but not the kept-file limit.
    let mut tar = fx::entry(b"pad", REG, &noise(18 << 20));
    tar.extend(fx::entry_header(
        b"usr/install/amd64/vmlinuz",
        REG,
        1100 << 20,
    ));
    let stored = ZstdFrame::new().raw(&tar).repeat(0, 1100 << 20).finish();
    let (_d, p) = image_of(&[unchecked(stored)]);
    let e = err_of(
        OciImage::open(&p, "amd64")
            .unwrap()
            .merged_tree(&talos_filter("amd64")),
    );
    assert!(
        e.contains(
            "entry 2 (\"usr/install/amd64/vmlinuz\"): a file of 1.1 GiB, more than the \
             1.0 GiB limit for a file kept from an image"
        ),
        "{e}"
    );
}

#[test]
fn long_pax_paths_are_refused_by_index_and_path_bytes_are_capped() {
    let mut tar = fx::entry(b"ok", REG, b"");
    tar.extend(fx::entry(&vec![b'a'; 58_000], REG, b""));
    tar.extend(fx::tar_end());
    let (_d, p) = image_of(&[fx::Layer::new(&tar, zstd::encode_all(&tar[..], 1).unwrap())]);
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains("layer 1/1 (sha256:")
            && e.contains("entry 2: its path is 58000 bytes, more than the 4096-byte limit"),
        "{e}"
    );
    assert!(!e.contains("aaaa"), "{e}");

    // 9000 distinct paths of 4000 bytes: the tree would hold 36 MB of paths.
    let mut tar = Vec::new();
    for i in 0..9000 {
        let path = format!("{i:08}/{}", "p".repeat(3991));
        tar.extend(fx::entry(path.as_bytes(), tar::EntryType::Directory, b""));
    }
    tar.extend(fx::tar_end());
    let (_d, p) = image_of(&[fx::Layer::new(&tar, zstd::encode_all(&tar[..], 1).unwrap())]);
    let e = err_of(OciImage::open(&p, "amd64").unwrap().merged_tree(&all));
    assert!(
        e.contains(
            "entry 8389: the paths and link targets of the entries so far take more \
             than the 32.0 MiB limit"
        ),
        "{e}"
    );
}

#[test]
fn more_than_the_layer_limit_is_refused() {
    let mut tar = fx::entry(b"a", REG, b"a");
    tar.extend(fx::tar_end());
    let layers = vec![fx::Layer::new(&tar, tar.clone()); MAX_LAYERS + 1];
    let (_d, p) = image_of(&layers);
    let e = err_of(OciImage::open(&p, "amd64"));
    assert!(e.contains("has 129 layers, more than the 128"), "{e}");
    let (_d, p) = image_of(&layers[..MAX_LAYERS]);
    OciImage::open(&p, "amd64")
        .unwrap()
        .merged_tree(&all)
        .unwrap();
}

#[test]
fn ancestors_shared_with_the_entry_before_are_not_looked_at_again() {
    assert_eq!(common_dir_len("a/b", "a/b"), 3);
    assert_eq!(common_dir_len("a/b", "a/b/c"), 3);
    assert_eq!(common_dir_len("a/b/c", "a/b"), 3);
    assert_eq!(common_dir_len("a/bc", "a/bd"), 1);
    assert_eq!(common_dir_len("a/b", "a/bc"), 1);
    assert_eq!(common_dir_len("ab", "a"), 0);
    assert_eq!(common_dir_len("", "a"), 0);
    assert_eq!(common_dir_len("a", ""), 0);

    // Lower: files where the upper layer has directories, at several depths.
    let l1 = layer(
        &[
            file("a", b"1"),
            dir("x"),
            file("x/y", b"2"),
            file("q", b"3"),
        ],
        Comp::Gzip,
    );
    let l2 = layer(
        &[
            file("a/b/c", b"c"),
            file("a/b/d", b"d"),
            file("x/y/z/w", b"w"),
            file("x/k", b"k"),
        ],
        Comp::Gzip,
    );
    let t = tree_of(&[&l1, &l2], &all).unwrap();
    assert!(t.get("a").is_none() && t.get("x/y").is_none());
    assert_eq!(content(&t, "a/b/c"), b"c");
    assert_eq!(content(&t, "x/y/z/w"), b"w");
    assert_eq!(content(&t, "q"), b"3");

    // A chain 1000 levels deep listed at every level, then 5000 entries at its bottom: each
    // entry's ancestors are looked at once, not 1000 times.
    let mut tar = Vec::new();
    let mut path = String::new();
    for _ in 0..1000 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('d');
        tar.extend(fx::entry(path.as_bytes(), tar::EntryType::Directory, b""));
    }
    for i in 0..5000 {
        let p = format!("{path}/{i}");
        tar.extend(fx::entry(p.as_bytes(), tar::EntryType::Directory, b""));
    }
    tar.extend(fx::tar_end());
    let (_d, p) = image_of(&[fx::Layer::new(&tar, zstd::encode_all(&tar[..], 1).unwrap())]);
    let t0 = std::time::Instant::now();
    let t = OciImage::open(&p, "amd64")
        .unwrap()
        .merged_tree(&all)
        .unwrap();
    assert_eq!(t.len(), 6000);
    // A hang guard, not a performance claim (`cargo xtask bench` measures time).
    assert!(t0.elapsed().as_secs() < 60, "{:?}", t0.elapsed());
}

#[test]
fn links_in_layers_are_never_followed_on_the_host() {
    let l = layer(
        &[
            E::Sym("usr/install/amd64/vmlinuz".into(), "/etc/passwd".into()),
            E::Hard(
                "usr/install/amd64/initramfs.xz".into(),
                "/etc/shadow".into(),
            ),
        ],
        Comp::Zstd,
    );
    let t = tree_of(&[&l], &talos_filter("amd64")).unwrap();
    assert!(matches!(
        &t.get("usr/install/amd64/vmlinuz").unwrap().kind,
        EntryKind::Symlink(s) if s == "/etc/passwd"
    ));
    // The target is a path of the image (not kept), never the host's file.
    assert!(matches!(
        &t.get("usr/install/amd64/initramfs.xz").unwrap().kind,
        EntryKind::Hardlink(s) if s == "etc/shadow"
    ));
    let e = err_of(tree_of(&[&l], &all));
    assert!(e.contains("is not in this or an earlier layer"), "{e}");
}

#[test]
fn members_of_a_layout_directory_are_opened_without_following_links() {
    let mut tar = fx::entry(b"etc/hostname", REG, b"h\n");
    tar.extend(fx::tar_end());
    let members =
        fx::docker_save_members(Arch::Amd64, &[fx::Layer::new(&tar, tar.clone())]).unwrap();
    let layer_name = members[2].0.clone();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("layer.tar"), &tar).unwrap();
    type Setup<'a> = (&'a str, &'a dyn Fn(&Path));
    let setups: [Setup; 3] = [
        ("a file outside", &|d: &Path| {
            std::os::unix::fs::symlink(outside.path().join("layer.tar"), d.join(&layer_name))
                .unwrap()
        }),
        ("a file inside", &|d: &Path| {
            std::fs::write(d.join("inside.tar"), &tar).unwrap();
            std::os::unix::fs::symlink("../inside.tar", d.join(&layer_name)).unwrap()
        }),
        ("a directory outside", &|d: &Path| {
            let parent = d.join(&layer_name);
            let parent = parent.parent().unwrap();
            std::fs::remove_dir(parent).unwrap();
            std::os::unix::fs::symlink(outside.path(), parent).unwrap()
        }),
    ];
    for (what, setup) in setups {
        let d = tempfile::tempdir().unwrap();
        fx::write_members(&members, d.path()).unwrap();
        std::fs::remove_file(d.path().join(&layer_name)).unwrap();
        setup(d.path());
        let e = err_of(OciImage::open(d.path(), "amd64").unwrap().merged_tree(&all));
        assert!(
            e.contains("never followed") && e.contains("layer.tar"),
            "{what}: {e}"
        );
    }
    // Unpacked as it is, it reads.
    let d = tempfile::tempdir().unwrap();
    fx::write_members(&members, d.path()).unwrap();
    let t = OciImage::open(d.path(), "amd64")
        .unwrap()
        .merged_tree(&all)
        .unwrap();
    assert_eq!(content(&t, "etc/hostname"), b"h\n");
}
