//! Extensions, machine configuration delivery, network configuration and schematics, end to
//! end through `edgeimage build` and `inspect`, checked with cpio, unsquashfs, fsck.fat.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use edgeimage::config::fixtures::{controlplane_yaml, worker_yaml, SECRET};
use edgeimage::extension::fixtures::{self as xf, Entry, Form};
use edgeimage::talos::Arch;
use sha2::{Digest, Sha256};

/// An extension in `form` under the fixture dir; returns the profile snippet pinning it.
fn config_section(f: &Fixture, yaml: &str, delivery: &str) -> String {
    fs::write(f.dir.path().join("machine.yaml"), yaml).unwrap();
    fs::write(
        f.dir.path().join("hostname.yaml"),
        "machine:\n  network:\n    hostname: patched-host\n",
    )
    .unwrap();
    format!("[config]\npath = \"machine.yaml\"\npatches = [\"hostname.yaml\"]\ndelivery = \"{delivery}\"\n")
}

fn build_json(f: &Fixture, out: &Path) -> serde_json::Value {
    let o = build(f, out, &["--raw", "--json"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert!(!text.contains(SECRET), "the build printed a secret");
    serde_json::from_slice(&o.stdout).unwrap()
}

fn inspect(image: &Path) -> serde_json::Value {
    let o = run(&["inspect", image.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = run(&["inspect", image.to_str().unwrap()]);
    for out in [&o, &text] {
        let all = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(out);
        assert!(!all.contains(SECRET), "inspect printed a secret");
    }
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Extract a file from the ESP (100 MiB) of a raw image with mtools.
fn esp_file(_f: &Fixture, raw: &Path, inner: &str, to: &Path) {
    common::esp_file(raw, 100, inner, to);
}

fn lines(cmd: &mut std::process::Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn embedded_config_and_extension_are_packed_as_talos_reads_them() {
    let f = fixture(Arch::Amd64, "");
    add(
        &f,
        &extension(&f, &xf::edgehostlet(), Form::DockerSave, "ext"),
    );
    add(&f, &config_section(&f, &controlplane_yaml(), "embedded"));
    let out = f.dir.path().join("out");
    let report = build_json(&f, &out);
    let raw = set_dir(&out).join("t.raw");
    use std::os::unix::fs::PermissionsExt;
    for p in [&raw, &set_dir(&out).join("t.raw.zst")] {
        assert_eq!(
            fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
    let j = inspect(&set_dir(&out).join("t.raw.zst"));
    let layers: Vec<(String, String)> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().into(),
                l["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    let cfg_sha = report["config"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(
        layers,
        [
            ("edgehostlet".to_string(), "1.7.1".to_string()),
            ("embedded-config".into(), cfg_sha.clone())
        ]
    );
    assert_eq!(j["config"]["delivery"], "embedded");
    assert_eq!(j["config"]["sha256"], cfg_sha);
    assert_eq!(report["config"]["machine_type"], "controlplane");

    if !(have("mcopy") && have("objcopy") && have("cpio") && have("unsquashfs")) {
        return;
    }
    let work = f.dir.path();
    esp_file(
        &f,
        &raw,
        "EFI/Linux/Talos-v1.12.5.efi",
        &work.join("uki.efi"),
    );
    lines(
        tool("objcopy")
            .args(["-O", "binary", "--only-section=.initrd"])
            .arg(work.join("uki.efi"))
            .arg(work.join("initrd")),
    );
    let initrd = fs::read(work.join("initrd")).unwrap();
    let archives = j["uki"]["initrd"]["archives"].as_array().unwrap();
    assert_eq!(archives.len(), 2, "base + extensions");
    let base_len = fs::metadata(work.join("assets/initramfs.xz"))
        .unwrap()
        .len();
    let ext_at = archives[1]["offset"].as_u64().unwrap();
    assert_eq!(
        ext_at,
        base_len.div_ceil(4) * 4,
        "appended right after the base, padded to 4"
    );
    assert_eq!(
        &initrd[..base_len as usize],
        &fs::read(work.join("assets/initramfs.xz")).unwrap()[..]
    );
    let frame = &initrd[ext_at as usize..];
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(frame).unwrap();
    assert!(frame[frame_len..].iter().all(|&b| b == 0) && initrd.len() % 4 == 0);
    fs::write(work.join("ext.cpio.zst"), &frame[..frame_len]).unwrap();
    lines(
        tool("zstd")
            .args(["-q", "-d", "-f"])
            .arg(work.join("ext.cpio.zst"))
            .arg("-o")
            .arg(work.join("ext.cpio")),
    );
    let listing = lines(
        tool("sh")
            .arg("-c")
            .arg(format!("cpio -itvn < {}", work.join("ext.cpio").display())),
    );
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(names, ["0.sqsh", "1.sqsh", "extensions.yaml"], "{listing}");
    for l in listing.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!((cols[2], cols[3]), ("0", "0"), "owner 0:0: {l}");
    }
    let x = work.join("x");
    fs::create_dir_all(&x).unwrap();
    lines(tool("sh").arg("-c").arg(format!(
        "cd {} && cpio -idm < {}",
        x.display(),
        work.join("ext.cpio").display()
    )));
    let yaml = fs::read_to_string(x.join("extensions.yaml")).unwrap();
    assert!(
        yaml.starts_with(
            "layers:\n    - image: 0.sqsh\n      metadata:\n        name: edgehostlet\n"
        ),
        "{yaml}"
    );
    let l0 = lines(tool("unsquashfs").arg("-lln").arg(x.join("0.sqsh")));
    assert!(
        l0.contains("squashfs-root/usr/local/etc/containers/edgehostlet.yaml"),
        "{l0}"
    );
    assert!(
        l0.contains("squashfs-root/usr/local/lib/containers/edgehostlet/edgehostlet"),
        "{l0}"
    );
    assert!(
        l0.lines()
            .filter(|l| l.contains("squashfs-root/"))
            .all(|l| l.contains(" 0/0 ")),
        "{l0}"
    );
    let l1 = lines(tool("unsquashfs").arg("-lln").arg(x.join("1.sqsh")));
    let cfg_line = l1
        .lines()
        .find(|l| l.ends_with("usr/local/etc/talos/config.yaml"))
        .expect("config.yaml in layer 1");
    assert!(
        cfg_line.starts_with("----------"),
        "mode 0000 as Talos writes it: {cfg_line}"
    );
    // The delivered bytes are the patched configuration.
    let d = work.join("sq1");
    lines(
        tool("unsquashfs")
            .arg("-q")
            .arg("-d")
            .arg(&d)
            .arg(x.join("1.sqsh")),
    );
    let cfg = fs::read(d.join("usr/local/etc/talos/config.yaml")).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&cfg)), cfg_sha);
    assert!(String::from_utf8_lossy(&cfg).contains("patched-host"));
}

#[test]
fn metal_iso_partition_carries_the_config() {
    let f = fixture(Arch::Amd64, "");
    add(&f, &extension(&f, &xf::edgehostlet(), Form::Dir, "ext"));
    add(&f, &config_section(&f, &controlplane_yaml(), "metal-iso"));
    let out = f.dir.path().join("out");
    let report = build_json(&f, &out);
    let j = inspect(&set_dir(&out).join("t.raw"));
    assert!(j["uki"]["cmdline"]
        .as_str()
        .unwrap()
        .ends_with(" talos.config=metal-iso"));
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts[2]["label"], "metal-iso");
    assert_eq!(j["config"]["delivery"], "metal-iso");
    assert_eq!(j["config"]["sha256"], report["config"]["sha256"]);
    assert_eq!(j["config"]["machine_type"], "controlplane");
    assert_eq!(j["config"]["hostname"], "patched-host");
    assert_eq!(
        j["layers"].as_array().unwrap().len(),
        1,
        "no embedded layer"
    );
    if have("sgdisk") {
        let t = lines(tool("sgdisk").arg("-v").arg(set_dir(&out).join("t.raw")));
        assert!(t.contains("No problems found"), "{t}");
    }
    if have("fsck.fat") {
        let off = parts[2]["offset"].as_u64().unwrap() as usize;
        let size = parts[2]["size"].as_u64().unwrap() as usize;
        let data = fs::read(set_dir(&out).join("t.raw")).unwrap();
        let iso = f.dir.path().join("iso.img");
        fs::write(&iso, &data[off..off + size]).unwrap();
        let o = tool("fsck.fat").arg("-n").arg(&iso).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() && text.lines().count() == 2,
            "fsck.fat: {text}"
        );
        let o = tool("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", iso.to_str().unwrap(), "::/config.yaml"])
            .output()
            .unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&o.stdout)),
            report["config"]["sha256"].as_str().unwrap()
        );
    }
}

#[test]
fn inline_config_is_on_the_command_line_but_never_shown() {
    let f = fixture(Arch::Amd64, "");
    add(&f, &config_section(&f, &worker_yaml(), "inline"));
    let out = f.dir.path().join("out");
    let report = build_json(&f, &out);
    assert!(report["cmdline"]
        .as_str()
        .unwrap()
        .contains("talos.config.inline=<redacted:sha256="));
    let j = inspect(&set_dir(&out).join("t.raw.zst"));
    assert!(j["uki"]["cmdline"]
        .as_str()
        .unwrap()
        .contains("talos.config.inline=<redacted:sha256="));
    assert_eq!(j["config"]["delivery"], "inline");
    assert_eq!(j["config"]["machine_type"], "worker");
    assert_eq!(j["config"]["sha256"], report["config"]["sha256"]);
}

#[test]
fn inline_config_too_long_is_refused() {
    let f = fixture(Arch::Amd64, "");
    // Many certificate SANs of incompressible text: far beyond what fits inline.
    let sans: String = (0..150)
        .map(|i| {
            format!(
                "    - {}.example\n",
                hex::encode(Sha256::digest(i.to_string()))
            )
        })
        .collect();
    let big =
        controlplane_yaml().replacen("machine:\n", &format!("machine:\n  certSANs:\n{sans}"), 1);
    add(&f, &config_section(&f, &big, "inline"));
    let out = f.dir.path().join("o");
    let o = try_build(&f, &out, &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("amd64 kernel keeps at most 2000") && e.contains("metal-iso"),
        "{e}"
    );
    assert!(!e.contains(SECRET));
    assert!(!out.exists() || fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn hostile_extension_is_refused_through_the_cli() {
    let f = fixture(Arch::Amd64, "");
    let entries = xf::edgehostlet_with(vec![Entry::file(
        "rootfs/usr/local/bin/open",
        b"x".to_vec(),
        0o777,
    )]);
    add(&f, &extension(&f, &entries, Form::Tar, "ext"));
    let out = f.dir.path().join("o");
    let o = try_build(&f, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("extensions[0]")
            && e.contains("usr/local/bin/open")
            && e.contains("world-writable"),
        "{e}"
    );
    assert!(!out.exists() || fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn rebuilds_with_extensions_and_config_are_identical() {
    let mut images: Vec<Vec<u8>> = Vec::new();
    for _ in 0..2 {
        let f = fixture(Arch::Amd64, "");
        add(&f, &extension(&f, &xf::edgehostlet(), Form::OciTar, "ext"));
        add(&f, &config_section(&f, &controlplane_yaml(), "embedded"));
        let out = f.dir.path().join("out");
        build(&f, &out, &[]);
        images.push(fs::read(set_dir(&out).join("t.raw.zst")).unwrap());
    }
    assert!(images[0] == images[1], "two builds differ");
}

#[test]
fn schematic_contributes_args_meta_and_its_id() {
    let f = fixture(Arch::Amd64, "");
    add(&f, &extension(&f, &xf::edgehostlet(), Form::TarGz, "ext"));
    let schematic = "customization:\n    extraKernelArgs:\n        - noapic\n    meta:\n        - key: 12\n          value: from-schematic\n    systemExtensions:\n        officialExtensions:\n            - stackit/edgehostlet\n";
    fs::write(f.dir.path().join("schematic.yaml"), schematic).unwrap();
    let id = edgeimage::config::schematic::Schematic::parse(schematic.as_bytes())
        .unwrap()
        .id();
    let text = fs::read_to_string(&f.profile).unwrap().replacen(
        "[assets]",
        "schematic = \"schematic.yaml\"\n[assets]",
        1,
    );
    fs::write(&f.profile, text).unwrap();
    let out = f.dir.path().join("out");
    build(&f, &out, &[]);
    let j = inspect(&set_dir(&out).join("t.raw.zst"));
    assert_eq!(j["schematic_id"], id);
    assert!(j["uki"]["cmdline"].as_str().unwrap().contains(" noapic"));
    assert_eq!(j["meta"]["entries"][0]["key"], "0x0c");
    assert_eq!(j["meta"]["entries"][0]["text"], "from-schematic");
    let names: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["edgehostlet", "schematic"]);

    // A named extension that is not available locally is an error naming it.
    let missing = schematic.replace("stackit/edgehostlet", "siderolabs/iscsi-tools");
    fs::write(f.dir.path().join("schematic.yaml"), missing).unwrap();
    let o = try_build(&f, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("siderolabs/iscsi-tools"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn network_config_goes_to_meta_0a_and_is_checked() {
    let f = fixture(Arch::Amd64, "");
    let net: PathBuf = f.dir.path().join("net.yaml");
    fs::write(&net, "addresses:\n  - address: 192.168.1.10/24\n    linkName: eth0\n    family: inet4\n    scope: global\n    flags: permanent\n    layer: platform\nhostnames:\n  - hostname: edge-17\n    layer: platform\n").unwrap();
    let text = fs::read_to_string(&f.profile).unwrap().replacen(
        "[assets]",
        "network = \"net.yaml\"\n[assets]",
        1,
    );
    fs::write(&f.profile, text).unwrap();
    let out = f.dir.path().join("out");
    build(&f, &out, &[]);
    let j = inspect(&set_dir(&out).join("t.raw.zst"));
    assert_eq!(j["meta"]["entries"][0]["key"], "0x0a");
    assert!(j["meta"]["entries"][0]["text"]
        .as_str()
        .unwrap()
        .contains("192.168.1.10/24"));

    fs::write(&net, "addresses:\n  - address: 300.1.1.1/24\n").unwrap();
    let o = try_build(&f, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("`network`") && e.contains("addresses[0].address"),
        "{e}"
    );
}
