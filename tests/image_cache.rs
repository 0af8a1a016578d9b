//! The image cache partition end to end: a build with the images a v1.12.5 control plane
//! pulls, checked by e2fsprogs (`e2fsck -fn`, `debugfs`) and resolved the way Talos's
//! registry resolves a reference (tag file → its digest → manifest → config and layers, every
//! blob's SHA-256 equal to its name); then every bad input the contract names, each one error
//! line and no output.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use edgeimage::config::fixtures::controlplane_yaml;
use edgeimage::imagecache::fixtures::{self, FixtureImage, CONFIG_PATCH};
use edgeimage::talos::Arch;
use sha2::{Digest, Sha256};

/// A fixture whose profile caches `images` (written as OCI archives) for a control plane
/// configuration, patched to enable the cache when `enable`.
fn cache_fixture(images: &[FixtureImage], extra_toml: &str, enable: bool) -> Fixture {
    let mut toml = String::from("[config]\npath = \"machine.yaml\"\n");
    if enable {
        toml.push_str("patches = [\"cache.yaml\"]\n");
    }
    toml.push_str("delivery = \"inline\"\n\n[image_cache]\n");
    toml.push_str(extra_toml);
    for (i, im) in images.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[image_cache.images]]\nreference = \"{}\"\ndigest = \"{}\"\narchive = \"images/{i}.tar\"\n",
            im.reference, im.digest
        ));
    }
    let f = fixture(Arch::Amd64, &toml);
    let dir = f.dir.path();
    fs::create_dir_all(dir.join("images")).unwrap();
    for (i, im) in images.iter().enumerate() {
        fs::write(dir.join(format!("images/{i}.tar")), im.tar().unwrap()).unwrap();
    }
    fs::write(dir.join("machine.yaml"), controlplane_yaml()).unwrap();
    fs::write(dir.join("cache.yaml"), CONFIG_PATCH).unwrap();
    f
}

fn all_images() -> Vec<FixtureImage> {
    fixtures::talos_1_12_5_control_plane(Arch::Amd64).unwrap()
}

/// Run a build that must fail: its one error line; nothing is left in `out`.
fn fails(f: &Fixture) -> String {
    let out = f.dir.path().join("out");
    let o = try_build(f, &out, &["--raw"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!set_dir(&out).exists(), "an output set was left");
    lines[0].to_string()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `skopeo` for amd64/linux whatever the host (images here are amd64).
fn skopeo() -> std::process::Command {
    let mut c = tool("skopeo");
    c.args(["--override-arch", "amd64", "--override-os", "linux"]);
    c
}

fn debugfs(img: &Path, req: &str) -> Vec<u8> {
    let o = tool("debugfs")
        .arg("-R")
        .arg(req)
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs {req}: {o:?}");
    o.stdout
}

#[test]
fn cache_partition_is_ext4_and_resolves_every_image() {
    let images = all_images();
    let f = cache_fixture(&images, "free = \"2MiB\"\n", true);
    let out = f.dir.path().join("out");
    build(&f, &out, &["--raw"]);
    let set = set_dir(&out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(set.join("t.manifest.json")).unwrap()).unwrap();
    let cached = manifest["provenance"]["image_cache"].as_array().unwrap();
    assert_eq!(cached.len(), images.len());
    assert_eq!(cached[0]["reference"], "ghcr.io/siderolabs/kubelet:v1.35.2");
    assert_eq!(cached[0]["platform"], "linux/amd64");
    let part = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "IMAGECACHE")
        .expect("an IMAGECACHE partition")
        .clone();
    assert_eq!(part["type_guid"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    // `inspect` reads the cache back with its own ext4 reader and resolves every reference.
    let o = run(&["inspect", set.join("t.raw").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let i: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = i["image_cache"]["images"].as_array().unwrap();
    assert_eq!(listed.len(), images.len());
    for im in &images {
        let e = listed
            .iter()
            .find(|e| e["reference"] == im.reference.as_str())
            .unwrap_or_else(|| panic!("inspect does not list {}", im.reference));
        assert_eq!(e["digest"], im.digest.as_str());
        assert_eq!(e["missing"].as_array().unwrap().len(), 0, "{e}");
    }
    let text =
        String::from_utf8(run(&["inspect", set.join("t.raw").to_str().unwrap()]).stdout).unwrap();
    assert!(
        text.contains("image cache (ext4 \"IMAGECACHE\"): 9 images"),
        "{text}"
    );
    if have("sgdisk") {
        let o = tool("sgdisk")
            .arg("-v")
            .arg(set.join("t.raw"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("No problems found"), "sgdisk -v: {text}");
    }
    if !have("e2fsck") || !have("debugfs") {
        return;
    }
    // The partition as a file of its own.
    let raw = fs::read(set.join("t.raw")).unwrap();
    let (off, size) = (
        part["offset"].as_u64().unwrap() as usize,
        part["size"].as_u64().unwrap() as usize,
    );
    let img = f.dir.path().join("cache.img");
    fs::write(&img, &raw[off..off + size]).unwrap();
    drop(raw);
    let o = tool("e2fsck").arg("-fn").arg(&img).output().unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let stats = String::from_utf8(debugfs(&img, "stats")).unwrap();
    assert!(
        stats.contains("Filesystem volume name:   IMAGECACHE"),
        "{stats}"
    );
    // Every blob's SHA-256 is its name.
    let ls = String::from_utf8(debugfs(&img, "ls -p /blob")).unwrap();
    let blobs: Vec<&str> = ls
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    assert!(blobs.len() >= 2 * images.len(), "{ls}");
    for b in &blobs {
        let data = debugfs(&img, &format!("cat /blob/{b}"));
        assert_eq!(format!("sha256-{}", sha(&data)), *b);
    }
    // Each reference resolves as the node's registry resolves it.
    for im in &images {
        let r = edgeimage::format::reference::Reference::parse(&im.reference).unwrap();
        let dir = r.cache_dir();
        let tagged = debugfs(&img, &format!("cat /{dir}/reference/{}", r.tag.unwrap()));
        let digest = format!("sha256-{}", sha(&tagged));
        assert_eq!(digest, im.digest.replace(':', "-"));
        let by_digest = debugfs(&img, &format!("cat /{dir}/digest/{digest}"));
        assert_eq!(by_digest, tagged);
        let mut doc: serde_json::Value = serde_json::from_slice(&tagged).unwrap();
        assert!(doc["mediaType"].is_string());
        if let Some(list) = doc["manifests"].as_array() {
            let m = list
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .unwrap();
            let d = m["digest"].as_str().unwrap().replace(':', "-");
            let bytes = debugfs(&img, &format!("cat /{dir}/digest/{d}"));
            assert_eq!(format!("sha256-{}", sha(&bytes)), d);
            doc = serde_json::from_slice(&bytes).unwrap();
        }
        let mut want = vec![doc["config"]["digest"].as_str().unwrap().to_string()];
        for l in doc["layers"].as_array().unwrap() {
            want.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in want {
            let name = d.replace(':', "-");
            assert!(
                blobs.contains(&name.as_str()),
                "{} lacks {name}",
                im.reference
            );
        }
    }
    // Each cached image, copied out of the partition (debugfs rdump) into an OCI layout, is
    // an image skopeo reads and copies (checking every blob against its digest).
    if have("skopeo") {
        let dump = f.dir.path().join("dump");
        fs::create_dir_all(&dump).unwrap();
        debugfs(&img, &format!("rdump / {}", dump.display()));
        for (i, im) in images.iter().enumerate() {
            let r = edgeimage::format::reference::Reference::parse(&im.reference).unwrap();
            let layout = f.dir.path().join(format!("layout-{i}"));
            let blobs_dir = layout.join("blobs/sha256");
            fs::create_dir_all(&blobs_dir).unwrap();
            for src in [dump.join("blob"), dump.join(r.cache_dir()).join("digest")] {
                for e in fs::read_dir(src).unwrap() {
                    let e = e.unwrap();
                    let name = e.file_name().into_string().unwrap();
                    let hex = name.strip_prefix("sha256-").unwrap();
                    fs::copy(e.path(), blobs_dir.join(hex)).unwrap();
                }
            }
            let top = fs::read(blobs_dir.join(&im.digest["sha256:".len()..])).unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&top).unwrap();
            fs::write(
                layout.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .unwrap();
            fs::write(
                layout.join("index.json"),
                serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "manifests": [{
                        "mediaType": doc["mediaType"],
                        "digest": im.digest,
                        "size": top.len(),
                    }],
                }))
                .unwrap(),
            )
            .unwrap();
            let src = format!("oci:{}", layout.display());
            let o = skopeo().arg("inspect").arg(&src).output().unwrap();
            assert!(o.status.success(), "skopeo inspect {}: {o:?}", im.reference);
            let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(info["Architecture"], "amd64", "{}", im.reference);
            let out = f.dir.path().join(format!("copied-{i}"));
            let o = skopeo()
                .args(["copy", "-q"])
                .arg(&src)
                .arg(format!("dir:{}", out.display()))
                .output()
                .unwrap();
            assert!(o.status.success(), "skopeo copy {}: {o:?}", im.reference);
            assert!(out.join("manifest.json").exists());
        }
    }
    // The same inputs give the same bytes.
    let out2 = f.dir.path().join("out2");
    build(&f, &out2, &["--raw"]);
    assert_eq!(
        fs::read(set.join("t.raw")).unwrap(),
        fs::read(set_dir(&out2).join("t.raw")).unwrap()
    );
}

#[test]
fn missing_required_images_are_all_listed() {
    let images: Vec<FixtureImage> = all_images()
        .into_iter()
        .filter(|i| !i.reference.contains("etcd") && !i.reference.contains("kube-proxy"))
        .collect();
    let e = fails(&cache_fixture(&images, "", true));
    assert!(e.contains("lacks 2 images"), "{e}");
    assert!(
        e.contains("registry.k8s.io/etcd:v3.6.8 (from the default of cluster.etcd.image"),
        "{e}"
    );
    assert!(e.contains("registry.k8s.io/kube-proxy:v1.35.2"), "{e}");
}

#[test]
fn a_required_image_named_by_the_profile_is_checked_too() {
    let e = fails(&cache_fixture(
        &all_images(),
        "require = [\"nginx:1.27\"]\n",
        true,
    ));
    assert!(
        e.contains("docker.io/library/nginx:1.27 (from image_cache.require[0])"),
        "{e}"
    );
}

#[test]
fn a_blob_whose_digest_differs_is_refused() {
    let mut images = all_images();
    // Change one byte of the pause image's layer blob (not its descriptor).
    let im = images.last_mut().unwrap();
    let layer = im
        .members
        .iter_mut()
        .filter(|(n, _)| n.starts_with("blobs/"))
        .max_by_key(|(_, d)| d.first() == Some(&0x1f))
        .unwrap();
    assert_eq!(layer.1[0], 0x1f, "a gzip layer");
    let last = layer.1.len() - 1;
    layer.1[last] ^= 0xff;
    let e = fails(&cache_fixture(&images, "", true));
    assert!(e.contains("image_cache.images[8]"), "{e}");
    assert!(e.contains("registry.k8s.io/pause:3.10"), "{e}");
    assert!(e.contains("damaged or was altered"), "{e}");
}

#[test]
fn an_image_for_the_other_architecture_is_refused() {
    let mut images = all_images();
    images[8] = fixtures::image("registry.k8s.io/pause:3.10", Arch::Arm64, "p", false).unwrap();
    let e = fails(&cache_fixture(&images, "", true));
    assert!(e.contains("image_cache.images[8]"), "{e}");
    assert!(e.contains("linux/arm64, not linux/amd64"), "{e}");
}

#[test]
fn a_reference_given_twice_with_different_digests_is_refused() {
    let mut images = all_images();
    let other = fixtures::image("registry.k8s.io/pause:3.10", Arch::Amd64, "other", false).unwrap();
    images.push(other);
    let e = fails(&cache_fixture(&images, "", true));
    assert!(e.contains("image_cache.images[9].reference"), "{e}");
    assert!(
        e.contains("registry.k8s.io/pause:3.10 is also given with digest"),
        "{e}"
    );
}

#[test]
fn a_configuration_without_the_cache_enabled_is_refused() {
    let e = fails(&cache_fixture(&all_images(), "", false));
    assert!(
        e.contains("set `machine.features.imageCache.localEnabled: true`"),
        "{e}"
    );
}

#[test]
fn a_cache_larger_than_the_disk_is_refused() {
    let e = fails(&cache_fixture(&all_images(), "free = \"200MiB\"\n", true));
    assert!(e.contains("the image cache partition needs 201 MiB"), "{e}");
    assert!(e.contains("raise disk_size"), "{e}");
}

#[test]
fn a_docker_save_archive_without_manifests_is_refused() {
    let mut images = all_images();
    // A classic docker save: manifest.json only.
    let layer = fixtures::layer(&[("x", b"y")]).unwrap();
    let members = edgeimage::assets::oci::fixtures::docker_save_members(
        Arch::Amd64,
        &[edgeimage::assets::oci::fixtures::Layer::new(b"", layer)],
    )
    .unwrap();
    images[8].members = members;
    let e = fails(&cache_fixture(&images, "", true));
    assert!(e.contains("keeps no registry manifest"), "{e}");
    assert!(
        e.contains("skopeo copy docker://REFERENCE oci-archive:FILE"),
        "{e}"
    );
}

/// The cache partition is signed like the rest: `verify` passes the signed image, and a bit
/// flipped in a blob inside the partition is a content mismatch in that partition.
#[test]
fn verify_proves_the_cache_partition() {
    let f = cache_fixture(&all_images(), "", true);
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
    let raw = set_dir(&out).join("t.raw");
    verify_with(&trust, &raw, &[]).expect(0, "VERIFIED");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(set_dir(&out).join("t.manifest.json")).unwrap()).unwrap();
    let part = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "IMAGECACHE")
        .unwrap()
        .clone();
    let number = part["number"].as_u64().unwrap();
    let off = part["offset"].as_u64().unwrap();
    let size = part["size"].as_u64().unwrap();
    // The last mapped byte of the partition (the end of the last blob's last block).
    let mut data = fs::read(&raw).unwrap();
    let at = (off..off + size)
        .rev()
        .find(|&i| data[i as usize] != 0)
        .unwrap();
    data[at as usize] ^= 0x04;
    fs::write(&raw, data).unwrap();
    let v = verify_with(&trust, &raw, &[]);
    let verdict = v.expect(7, "CONTENT MISMATCH");
    assert!(
        verdict.contains(&format!("first in partition {number} (IMAGECACHE)")),
        "{verdict}"
    );
}

const UPGRADE_REF: &str = "registry.edge.local/edge/installer:v1.12.5-t";

/// The cache fixture with an `[upgrade_image]` made from a generated installer-base.
fn upgrade_fixture() -> Fixture {
    let f = cache_fixture(&all_images(), "", true);
    let base = fixtures::image(
        "ghcr.io/siderolabs/installer-base:v1.12.5",
        Arch::Amd64,
        "base",
        true,
    )
    .unwrap();
    fs::write(f.dir.path().join("images/base.tar"), base.tar().unwrap()).unwrap();
    let mut text = fs::read_to_string(&f.profile).unwrap();
    text.push_str(&format!(
        "\n[upgrade_image]\nreference = \"{UPGRADE_REF}\"\nbase = {{ archive = \"images/base.tar\", digest = \"{}\" }}\n",
        base.digest
    ));
    fs::write(&f.profile, text).unwrap();
    f
}

fn tar_out(args: &[&str]) -> Vec<u8> {
    let o = tool("tar").args(args).output().unwrap();
    assert!(o.status.success(), "tar {args:?}: {}", stderr(&o));
    o.stdout
}

/// `<name>-installer-image.tar`: an OCI archive skopeo reads and copies, whose last layer
/// holds exactly systemd-boot and the image's own UKI under `usr/install/amd64/`, recorded
/// in the signed manifest, served by the image cache, the same bytes twice.
#[test]
fn the_upgrade_installer_image_carries_the_uki() {
    let f = upgrade_fixture();
    let out = f.dir.path().join("out");
    build(&f, &out, &["--raw"]);
    let set = set_dir(&out);
    let tar = set.join("t-installer-image.tar");
    let bytes = fs::read(&tar).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(set.join("t.manifest.json")).unwrap()).unwrap();
    let u = &manifest["provenance"]["upgrade_image"];
    assert_eq!(u["file"], "t-installer-image.tar");
    assert_eq!(u["sha256"], sha(&bytes).as_str());
    assert_eq!(u["size"], bytes.len() as u64);
    assert_eq!(u["reference"], UPGRADE_REF);
    let cached = manifest["provenance"]["image_cache"].as_array().unwrap();
    let entry = cached
        .iter()
        .find(|e| e["reference"] == UPGRADE_REF)
        .expect("the upgrade image is in the cache");
    assert_eq!(entry["digest"], u["manifest_digest"]);

    // The layout: index.json → manifest → config and layers; the last layer is ours.
    let t = tar.to_str().unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&tar_out(&["-xOf", t, "index.json"])).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(mdigest, u["manifest_digest"].as_str().unwrap());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        UPGRADE_REF
    );
    let m: serde_json::Value = serde_json::from_slice(&tar_out(&[
        "-xOf",
        t,
        &format!("blobs/sha256/{}", &mdigest[7..]),
    ]))
    .unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "the base's layer and the boot assets");
    let last = layers[1]["digest"].as_str().unwrap();
    let layer = f.dir.path().join("layer.tar");
    fs::write(
        &layer,
        tar_out(&["-xOf", t, &format!("blobs/sha256/{}", &last[7..])]),
    )
    .unwrap();
    let listing = String::from_utf8(tar_out(&["-tf", layer.to_str().unwrap()])).unwrap();
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        [
            "usr/install/amd64/systemd-boot.efi",
            "usr/install/amd64/vmlinuz.efi"
        ]
    );
    let config: serde_json::Value = serde_json::from_slice(&tar_out(&[
        "-xOf",
        t,
        &format!(
            "blobs/sha256/{}",
            &m["config"]["digest"].as_str().unwrap()[7..]
        ),
    ]))
    .unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["rootfs"]["diff_ids"][1], last);
    if have("mcopy") {
        let uki = f.dir.path().join("uki.efi");
        esp_file(&set.join("t.raw"), 100, "EFI/Linux/Talos-v1.12.5.efi", &uki);
        let from_layer = tar_out(&[
            "-xOf",
            layer.to_str().unwrap(),
            "usr/install/amd64/vmlinuz.efi",
        ]);
        assert_eq!(sha(&from_layer), sha(&fs::read(&uki).unwrap()));
    }
    if have("skopeo") {
        let o = skopeo()
            .arg("inspect")
            .arg(format!("oci-archive:{t}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo inspect: {o:?}");
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["Architecture"], "amd64");
        assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
        let o = tool("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci-archive:{t}"))
            .arg(format!("dir:{}", f.dir.path().join("copied").display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo copy: {o:?}");
    }
    let out2 = f.dir.path().join("out2");
    build(&f, &out2, &["--raw"]);
    assert_eq!(
        sha(&fs::read(set_dir(&out2).join("t-installer-image.tar")).unwrap()),
        sha(&bytes)
    );
}
