//! `edgeimage build` end to end on synthetic assets, checked by tools nobody here wrote.

mod common;

use std::fs;

use std::path::Path;

use common::*;
use edgeimage::talos::Arch;
use sha2::{Digest, Sha256};

#[test]
fn image_passes_sgdisk_fsck_objdump_zstd() {
    let f = fixture(
        Arch::Amd64,
        "[kernel_args]\nextra = [\"console=ttyS0\", \"-selinux\"]\n[meta]\n\"0x0c\" = \"site-17\"\n",
    );
    let out = f.dir.path().join("out");
    build(&f, &out, &["--raw"]);
    let raw = set_dir(&out).join("t.raw");
    let zst = set_dir(&out).join("t.raw.zst");

    if have("sgdisk") {
        let o = tool("sgdisk").arg("-v").arg(&raw).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("No problems found"),
            "sgdisk -v: {text}"
        );
    }
    let j = inspect_json(&zst);
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["label"], "EFI");
    assert_eq!(parts[0]["offset"], 1 << 20);
    assert_eq!(parts[1]["label"], "META");
    assert_eq!(parts[1]["size"], 1 << 20);
    assert_eq!(parts[2]["label"], "edgeimage-manifest");
    assert_eq!(parts[2]["size"], 1 << 20);
    assert_eq!(j["esp"]["label"], "EFI");
    assert_eq!(
        j["uki"]["cmdline"],
        "talos.platform=metal console=ttyS0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 \
         nvme_core.io_timeout=4294967295 printk.devkmsg=on module.sig_enforce=1"
    );
    assert_eq!(j["uki"]["uname"], edgeimage::synthetic::KERNEL_RELEASE);
    assert_eq!(j["meta"]["entries"][0]["key"], "0x0c");
    assert_eq!(j["meta"]["entries"][0]["text"], "site-17");
    let files: Vec<&str> = j["esp"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "EFI/Linux/Talos-v1.12.5.efi",
            "EFI/boot/BOOTX64.efi",
            "loader/loader.conf"
        ]
    );

    let esp = f.dir.path().join("esp.img");
    extract(&raw, 1 << 20, 100 << 20, &esp);
    if have("fsck.fat") {
        let o = tool("fsck.fat").arg("-n").arg(&esp).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
        assert!(o.status.success(), "fsck.fat -n: {text}");
        let findings: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("fsck.fat ") && !l.contains(" files, "))
            .collect();
        assert!(findings.is_empty(), "fsck.fat findings: {findings:?}");
    }
    if have("mcopy") && have("objdump") {
        let uki = f.dir.path().join("uki.efi");
        let o = tool("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args([
                "-i",
                esp.to_str().unwrap(),
                "::/EFI/Linux/Talos-v1.12.5.efi",
            ])
            .arg(&uki)
            .output()
            .unwrap();
        assert!(o.status.success(), "mcopy: {}", stderr(&o));
        let o = tool("objdump").arg("-h").arg(&uki).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("pei-x86-64"),
            "objdump: {text}{}",
            stderr(&o)
        );
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).filter(|n| n.starts_with('.')))
            .collect();
        assert_eq!(
            names,
            [
                ".text", ".sbat", ".osrel", ".cmdline", ".uname", ".linux", ".initrd",
                // Talos ≥ 1.10: the main and reset-maintenance boot profiles.
                ".profile", ".profile", ".cmdline"
            ]
        );
        // The .linux section holds the kernel byte for byte.
        let o = tool("objcopy")
            .args(["-O", "binary", "--only-section=.linux"])
            .arg(&uki)
            .arg(f.dir.path().join("linux.bin"))
            .output()
            .unwrap();
        assert!(o.status.success(), "objcopy: {}", stderr(&o));
        let kernel = fs::read(f.dir.path().join("assets/vmlinuz")).unwrap();
        assert_eq!(fs::read(f.dir.path().join("linux.bin")).unwrap(), kernel);
        let loader = f.dir.path().join("loader.conf");
        tool("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", esp.to_str().unwrap(), "::/loader/loader.conf"])
            .arg(&loader)
            .status()
            .unwrap();
        assert!(fs::read_to_string(&loader)
            .unwrap()
            .ends_with("\ntimeout 10\n"));
    }
    if have("zstd") {
        let o = tool("zstd").arg("-t").arg(&zst).output().unwrap();
        assert!(o.status.success(), "zstd -t: {}", stderr(&o));
        let o = tool("zstd").args(["-lv"]).arg(&zst).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("134217728") || text.contains("128.00 MiB"),
            "content size: {text}"
        );
        assert!(text.contains("XXH64"), "checksum: {text}");
    }
}

#[test]
fn rebuilds_are_byte_identical_across_directories() {
    let a = fixture(Arch::Amd64, "[meta]\n\"0x0d\" = \"x\"\n");
    let b = fixture(Arch::Amd64, "[meta]\n\"0x0d\" = \"x\"\n");
    let (oa, ob) = (a.dir.path().join("o"), b.dir.path().join("o"));
    build(&a, &oa, &["--raw"]);
    build(&b, &ob, &["--raw"]);
    for name in ["t.raw.zst", "t.raw"] {
        let x = fs::read(set_dir(&oa).join(name)).unwrap();
        let y = fs::read(set_dir(&ob).join(name)).unwrap();
        assert!(x == y, "{name} differs between two builds");
    }
    // A different SOURCE_DATE_EPOCH gives different bytes (timestamps are really used).
    let o = std::process::Command::new(bin())
        .args(["build", "--profile", a.profile.to_str().unwrap(), "--out"])
        .arg(a.dir.path().join("o2"))
        .args(["-q"])
        .env("SOURCE_DATE_EPOCH", "1800000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(
        fs::read(set_dir(&oa).join("t.raw.zst")).unwrap(),
        fs::read(a.dir.path().join("o2/t/t.raw.zst")).unwrap()
    );
}

#[test]
fn arm64_profile_builds_with_aa64_loader() {
    let f = fixture(Arch::Arm64, "");
    let out = f.dir.path().join("out");
    build(&f, &out, &[]);
    let j = inspect_json(&set_dir(&out).join("t.raw.zst"));
    assert_eq!(j["uki"]["machine"], "arm64");
    assert!(j["uki"]["cmdline"]
        .as_str()
        .unwrap()
        .starts_with("talos.platform=metal console=ttyAMA0 console=tty0 "));
    assert!(j["esp"]["files"]
        .to_string()
        .contains("EFI/boot/BOOTAA64.efi"));
    // No kernel version in an arm64 Image header and none in the profile: no .uname.
    assert!(j["uki"]["uname"].is_null());
}

fn append<W: std::io::Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

/// A `docker save` archive of an imager-like image holding the fixture's assets.
fn docker_save(f: &Fixture, arch: &str, to: &Path) {
    let mut layer = tar::Builder::new(Vec::new());
    for name in [
        "vmlinuz",
        "initramfs.xz",
        "systemd-boot.efi",
        "systemd-stub.efi",
    ] {
        let data = fs::read(f.dir.path().join("assets").join(name)).unwrap();
        append(&mut layer, &format!("usr/install/{arch}/{name}"), &data);
    }
    let layer = layer.into_inner().unwrap();
    let layer_hex = hex::encode(Sha256::digest(&layer));
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{layer_hex}"]}}}}"#
    );
    let config_hex = hex::encode(Sha256::digest(config.as_bytes()));
    let manifest = format!(
        r#"[{{"Config":"{config_hex}.json","RepoTags":["imager:test"],"Layers":["{layer_hex}/layer.tar"]}}]"#
    );
    let mut outer = tar::Builder::new(fs::File::create(to).unwrap());
    for (name, data) in [
        (format!("{config_hex}.json"), config.into_bytes()),
        (format!("{layer_hex}/layer.tar"), layer),
        ("manifest.json".to_string(), manifest.into_bytes()),
    ] {
        append(&mut outer, &name, &data);
    }
    outer.finish().unwrap();
}

#[test]
fn assets_from_docker_save_archive_give_the_same_image() {
    let f = fixture(Arch::Amd64, "");
    let archive = f.dir.path().join("imager.tar");
    docker_save(&f, "amd64", &archive);
    build(&f, &f.dir.path().join("dir"), &[]);
    build(
        &f,
        &f.dir.path().join("oci"),
        &["--assets", archive.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(f.dir.path().join("dir/t/t.raw.zst")).unwrap(),
        fs::read(f.dir.path().join("oci/t/t.raw.zst")).unwrap()
    );
    // The wrong platform is refused with what the archive holds.
    let arm = f.dir.path().join("arm.tar");
    docker_save(&f, "arm64", &arm);
    let o = try_build(
        &f,
        &f.dir.path().join("x"),
        &["--assets", arm.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("linux/amd64") && e.contains("arm64"), "{e}");
}
