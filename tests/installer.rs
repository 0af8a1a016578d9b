//! `edgeimage build` of a profile with `[installer]`: the installer stick image, checked by
//! tools nobody here wrote (sgdisk, fsck.fat, mtools, objdump, zstd, cpio).
//!
//! The installer's `/init` must be a static executable. Building a real static edgeimage
//! here would need a musl toolchain, so the tests generate one: a 129-byte ELF64 x86-64
//! executable with one loadable segment and no interpreter
//! (`edgeimage::installer::elf::tiny_executable`, which exits 0 when run), and the same with
//! a `PT_INTERP` for the "dynamically linked" refusal. Kernel modules are generated stand-ins
//! (an ELF header and the module's name), some zstd-compressed, with a `modules.dep`.

mod common;

use std::fs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use edgeimage::install::config::{Action, InstallerConfig};
use edgeimage::installer::elf::{tiny_executable, EM_X86_64};
use sha2::{Digest, Sha256};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A stand-in kernel module.
fn ko(name: &str) -> Vec<u8> {
    [b"\x7fELF\x02\x01\x01\x00".as_slice(), name.as_bytes()].concat()
}

/// Inputs next to the profile: `init-static` (static ELF), `init-dynamic`, `modules/` (a
/// lib/modules-like tree with a modules.dep), `installer/vmlinuz` (the fixture's kernel).
fn write_inputs(dir: &Path) {
    fs::write(dir.join("init-static"), tiny_executable(EM_X86_64, None)).unwrap();
    fs::write(
        dir.join("init-dynamic"),
        tiny_executable(EM_X86_64, Some("/lib64/ld-linux-x86-64.so.2")),
    )
    .unwrap();
    let m = dir.join("modules/kernel/drivers");
    fs::create_dir_all(&m).unwrap();
    fs::write(m.join("virtio.ko"), ko("virtio")).unwrap();
    fs::write(
        m.join("virtio_ring.ko.zst"),
        zstd::encode_all(&ko("virtio_ring")[..], 3).unwrap(),
    )
    .unwrap();
    fs::write(
        m.join("virtio_blk.ko.zst"),
        zstd::encode_all(&ko("virtio_blk")[..], 3).unwrap(),
    )
    .unwrap();
    fs::write(m.join("usb-storage.ko"), ko("usb_storage")).unwrap();
    fs::write(
        dir.join("modules/modules.dep"),
        "kernel/drivers/virtio_blk.ko.zst: kernel/drivers/virtio_ring.ko.zst kernel/drivers/virtio.ko\n\
         kernel/drivers/virtio_ring.ko.zst: kernel/drivers/virtio.ko\n\
         kernel/drivers/virtio.ko:\n\
         kernel/drivers/usb-storage.ko:\n",
    )
    .unwrap();
    fs::create_dir_all(dir.join("installer")).unwrap();
    fs::copy(dir.join("assets/vmlinuz"), dir.join("installer/vmlinuz")).unwrap();
}

const INSTALLER_TOML: &str = r#"
[installer]
kernel = { path = "installer/vmlinuz", sha256 = "KERNEL_SHA" }
modules = { dir = "modules", load = ["virtio_blk", "usb-storage"] }
cmdline = ["console=ttyS0,115200"]
wait_seconds = 45
on_success = "poweroff"
on_failure = "halt"
[install]
wipe_other_metas = true
[install.disk]
transports = ["nvme", "virtio"]
min_size = "8GiB"
max_size = "4TiB"
model = "Samsung*"
serials = ["S3Z1NB0K123456"]
"#;

/// The small fixture with `[installer]`, its inputs, and a key.
fn installer_fixture() -> (Fixture, Key) {
    let f = small_fixture("");
    write_inputs(f.dir.path());
    let kernel = sha(&fs::read(f.dir.path().join("installer/vmlinuz")).unwrap());
    let text = fs::read_to_string(&f.profile).unwrap();
    // The profile's tables come after its top-level keys: put [installer] at the end.
    fs::write(
        &f.profile,
        format!("{text}{}", INSTALLER_TOML.replace("KERNEL_SHA", &kernel)),
    )
    .unwrap();
    let key = new_key(&f.dir.path().join("keys"), "release");
    (f, key)
}

fn signed_args(f: &Fixture, key: &Key) -> Vec<String> {
    vec![
        "--sign-key".into(),
        key.secret.display().to_string(),
        "--installer-binary".into(),
        f.dir.path().join("init-static").display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn ok(o: Output, what: &str) -> Vec<u8> {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o.stdout
}

fn mtools(name: &str, args: &[&str]) -> Vec<u8> {
    let o = tool(name)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(args)
        .output()
        .unwrap();
    ok(o, name)
}

fn fsck_clean(path: &Path) {
    let o = tool("fsck.fat").arg("-n").arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert!(o.status.success(), "fsck.fat -n: {text}");
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("fsck.fat ") && !l.contains(" files, "))
        .collect();
    assert!(findings.is_empty(), "fsck.fat findings: {findings:?}");
}

/// The names and offsets of the installer's partitions, from `inspect --json`.
fn partitions(j: &serde_json::Value) -> Vec<(String, u64, u64)> {
    j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["offset"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn installer_image_is_built_and_passes_the_tools() {
    let (f, key) = installer_fixture();
    let out = f.dir.path().join("out");
    let mut args = signed_args(&f, &key);
    args.push("--raw".into());
    let o = build(&f, &out, &strs(&args));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let zst = set_dir(&out).join("t-installer.raw.zst");
    let raw = set_dir(&out).join("t-installer.raw");
    assert!(
        stdout.contains(&format!("built {}", zst.display()))
            && stdout.contains(&format!("built {}", raw.display())),
        "{stdout}"
    );
    // The .raw.zst holds the .raw.
    let raw_bytes = fs::read(&raw).unwrap();
    assert_eq!(
        zstd::decode_all(&fs::read(&zst).unwrap()[..]).unwrap(),
        raw_bytes
    );
    println!(
        "installer image: {} bytes raw, {} bytes .raw.zst",
        raw_bytes.len(),
        fs::metadata(&zst).unwrap().len()
    );

    if have("sgdisk") {
        let o = tool("sgdisk").arg("-v").arg(&raw).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("No problems found"),
            "sgdisk -v: {text}"
        );
        let o = tool("sgdisk").arg("-p").arg(&raw).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        for name in ["EFI", "edgeimage-payload", "edgeimage-records"] {
            assert!(text.contains(name), "sgdisk -p: {text}");
        }
    }
    let j = inspect_json(&zst);
    let parts = partitions(&j);
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["EFI", "edgeimage-payload", "edgeimage-records"]);
    assert_eq!(parts[0].1, 1 << 20);
    assert_eq!(parts[2].2, 16 << 20);
    assert_eq!(
        j["partitions"][1]["type_guid"],
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
    );
    for (name, offset, size) in &parts {
        assert_eq!(offset % (1 << 20), 0, "{name} is 1 MiB-aligned");
        assert_eq!(size % (1 << 20), 0, "{name} is whole MiB");
    }
    let last = parts[2].1 + parts[2].2;
    assert_eq!(
        raw_bytes.len() as u64,
        last + (1 << 20),
        "backup GPT in the last MiB"
    );

    // Each FAT volume is clean.
    let dir = f.dir.path();
    let vols: Vec<PathBuf> = parts
        .iter()
        .map(|(name, offset, size)| {
            let p = dir.join(format!("{name}.img"));
            extract(&raw, *offset, *size, &p);
            p
        })
        .collect();
    if have("fsck.fat") {
        for v in &vols {
            fsck_clean(v);
        }
    }

    // The payload: the build's outputs byte for byte, and the trust store (the signing key).
    let payload_at = format!("{}@@{}", raw.display(), parts[1].1);
    if have("mdir") && have("mtype") {
        let listing =
            String::from_utf8_lossy(&mtools("mdir", &["-i", &payload_at, "-/", "::"])).into_owned();
        assert!(
            listing.contains("Volume in drive : is PAYLOAD"),
            "{listing}"
        );
        let pub_name = format!("{}.pub", key.id);
        for name in [
            "t.raw.zst",
            "t.manifest.json",
            "t.manifest.json.minisig",
            "trusted",
            pub_name.as_str(),
        ] {
            assert!(
                listing.contains(name),
                "mdir does not list {name}:\n{listing}"
            );
        }
        for name in ["t.raw.zst", "t.manifest.json", "t.manifest.json.minisig"] {
            let got = mtools("mtype", &["-i", &payload_at, &format!("::/{name}")]);
            assert!(
                got == fs::read(set_dir(&out).join(name)).unwrap(),
                "{name} differs"
            );
        }
        let got = mtools(
            "mtype",
            &["-i", &payload_at, &format!("::/trust/trusted/{pub_name}")],
        );
        assert_eq!(got, fs::read(&key.public).unwrap());
        // The records partition: an empty records/ directory.
        let records_at = format!("{}@@{}", raw.display(), parts[2].1);
        let listing =
            String::from_utf8_lossy(&mtools("mdir", &["-i", &records_at, "::"])).into_owned();
        assert!(
            listing.contains("Volume in drive : is RECORDS") && listing.contains("records"),
            "{listing}"
        );
        let listing =
            String::from_utf8_lossy(&mtools("mdir", &["-i", &records_at, "-a", "::/records"]))
                .into_owned();
        let entries: Vec<&str> = listing
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.is_empty() && !l.starts_with("Directory for"))
            .filter(|l| !l.starts_with(". ") && !l.starts_with(".. "))
            .collect();
        assert!(entries.is_empty(), "records/ is not empty: {listing}");
    }

    // The UKI: sections, the installer kernel, the initramfs.
    if have("mcopy") && have("objdump") && have("zstd") && have("cpio") {
        let uki = dir.join("installer.efi");
        mtools(
            "mcopy",
            &[
                "-i",
                &format!("{}@@{}", raw.display(), parts[0].1),
                "::/EFI/Linux/edgeimage-installer.efi",
                uki.to_str().unwrap(),
            ],
        );
        let text = String::from_utf8_lossy(&ok(
            tool("objdump").arg("-h").arg(&uki).output().unwrap(),
            "objdump",
        ))
        .into_owned();
        let sections: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).filter(|n| n.starts_with('.')))
            .collect();
        for s in [".cmdline", ".linux", ".initrd"] {
            assert!(sections.contains(&s), "objdump -h: {text}");
        }
        let section = |name: &str| -> Vec<u8> {
            let to = dir.join(format!("section{name}"));
            ok(
                tool("objcopy")
                    .args(["-O", "binary", &format!("--only-section={name}")])
                    .arg(&uki)
                    .arg(&to)
                    .output()
                    .unwrap(),
                "objcopy",
            );
            fs::read(to).unwrap()
        };
        assert_eq!(
            section(".cmdline"),
            b"console=ttyS0,115200 edgeimage.install"
        );
        assert_eq!(
            section(".linux"),
            fs::read(dir.join("installer/vmlinuz")).unwrap()
        );
        let initrd = section(".initrd");
        let cpio_path = dir.join("initrd.cpio");
        let cz = dir.join("initrd.cpio.zst");
        fs::write(&cz, &initrd).unwrap();
        ok(
            tool("zstd")
                .args(["-d", "-q", "-f", "-o"])
                .arg(&cpio_path)
                .arg(&cz)
                .output()
                .unwrap(),
            "zstd -d",
        );
        let cpio = |args: &[&str]| -> Vec<u8> {
            ok(
                Command::new("cpio")
                    .args(args)
                    .stdin(fs::File::open(&cpio_path).unwrap())
                    .output()
                    .unwrap(),
                "cpio",
            )
        };
        let listing = String::from_utf8_lossy(&cpio(&["-itv", "--quiet"])).into_owned();
        let lines: Vec<&str> = listing.lines().collect();
        let line = |path: &str| -> &str {
            lines
                .iter()
                .find(|l| l.ends_with(&format!(" {path}")))
                .unwrap_or_else(|| panic!("cpio lists no {path}:\n{listing}"))
        };
        assert!(line("init").starts_with("-rwxr-xr-x "), "{listing}");
        assert!(line("dev/console").starts_with("crw------- "), "{listing}");
        for p in [
            "etc/edgeimage/installer.json",
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
        ] {
            line(p);
        }
        for l in &lines {
            let owner: Vec<&str> = l.split_whitespace().skip(2).take(2).collect();
            assert_eq!(owner, ["root", "root"], "{l}");
        }
        let kos: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split_whitespace().last())
            .filter(|p| p.starts_with("lib/modules/") && p.ends_with(".ko"))
            .collect();
        assert_eq!(
            kos,
            [
                "lib/modules/usb_storage.ko",
                "lib/modules/virtio.ko",
                "lib/modules/virtio_blk.ko",
                "lib/modules/virtio_ring.ko"
            ]
        );
        // Plain (decompressed) modules, the binary as /init, the configuration.
        assert_eq!(
            cpio(&["-i", "--quiet", "--to-stdout", "lib/modules/virtio_blk.ko"]),
            ko("virtio_blk")
        );
        assert_eq!(
            cpio(&["-i", "--quiet", "--to-stdout", "init"]),
            tiny_executable(EM_X86_64, None)
        );
        let json = cpio(&[
            "-i",
            "--quiet",
            "--to-stdout",
            "etc/edgeimage/installer.json",
        ]);
        let c: InstallerConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(c.format, "edgeimage-installer-1");
        assert_eq!(c.name, "t");
        assert_eq!(
            c.modules,
            [
                "virtio.ko",
                "virtio_ring.ko",
                "virtio_blk.ko",
                "usb_storage.ko"
            ],
            "dependencies first, each once, in the order given"
        );
        assert_eq!(c.wait_seconds, 45);
        assert_eq!(
            (c.on_success, c.on_failure),
            (Action::Poweroff, Action::Halt)
        );
        assert!(c.wipe_other_metas);
        assert_eq!(c.disk.transports, ["nvme", "virtio"]);
        assert_eq!(c.disk.min_size, Some(8 << 30));
        assert_eq!(c.disk.max_size, Some(4 << 40));
        assert_eq!(c.disk.model.as_deref(), Some("Samsung*"));
        assert_eq!(c.disk.serials, ["S3Z1NB0K123456"]);
        assert_eq!(c.disk.by_id, None);
    }

    // inspect describes the installer: command line, configuration, payload, records.
    let i = &j["installer"];
    assert_eq!(i["cmdline"], "console=ttyS0,115200 edgeimage.install");
    assert_eq!(i["config"]["on_failure"], "halt");
    assert_eq!(i["config"]["disk"]["model"], "Samsung*");
    assert_eq!(i["config"]["modules"][0], "virtio.ko");
    let payload: Vec<(String, u64, String)> = i["payload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["size"].as_u64().unwrap(),
                p["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in ["t.raw.zst", "t.manifest.json", "t.manifest.json.minisig"] {
        let data = fs::read(set_dir(&out).join(name)).unwrap();
        assert!(
            payload.contains(&(name.to_string(), data.len() as u64, sha(&data))),
            "{name}: {payload:?}"
        );
    }
    assert_eq!(payload.len(), 4, "{payload:?}");
    assert_eq!(i["records"].as_array().unwrap().len(), 0);
    let o = run(&["inspect", zst.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&ok(o, "inspect")).into_owned();
    for s in [
        "installer\n",
        "cmdline  console=ttyS0,115200 edgeimage.install",
        "on success poweroff, on failure halt",
        "transport nvme|virtio",
        "modules  virtio.ko virtio_ring.ko virtio_blk.ko usb_storage.ko",
        "t.manifest.json.minisig",
        "records    none",
    ] {
        assert!(text.contains(s), "inspect lacks {s:?}:\n{text}");
    }

    // The payload on the stick verifies with the trust store it carries.
    let stick_trust = dir.join("stick-trust/trusted");
    fs::create_dir_all(&stick_trust).unwrap();
    fs::copy(&key.public, stick_trust.join("k.pub")).unwrap();
    verify_with(
        &dir.join("stick-trust"),
        &set_dir(&out).join("t.raw.zst"),
        &[],
    )
    .expect(0, "VERIFIED");

    // The same inputs again, elsewhere: the same bytes; the report names the installer.
    let again = dir.join("again");
    let mut args = signed_args(&f, &key);
    args.push("--json".into());
    let o = build(&f, &again, &strs(&args));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["installer"]["outputs"]["zst"],
        set_dir(&again)
            .join("t-installer.raw.zst")
            .display()
            .to_string()
    );
    assert_eq!(report["installer"]["config"]["wait_seconds"], 45);
    assert!(
        fs::read(set_dir(&again).join("t-installer.raw.zst")).unwrap() == fs::read(&zst).unwrap(),
        "a rebuild gives other bytes"
    );
    assert!(!set_dir(&again).join("t-installer.raw").exists());
}

#[test]
fn a_trust_store_directory_goes_to_the_stick_and_must_trust_the_key() {
    let (f, key) = installer_fixture();
    let dir = f.dir.path();
    let store = dir.join("signing");
    fs::create_dir_all(store.join("trusted")).unwrap();
    fs::copy(&key.public, store.join("trusted/release.pub")).unwrap();
    let other = new_key(&dir.join("other"), "old");
    fs::copy(&other.public, store.join("trusted/old.pub")).unwrap();
    fs::write(store.join("revoked"), format!("{}\n", other.id)).unwrap();
    let text = fs::read_to_string(&f.profile).unwrap();
    let with_trust = text.replace(
        "[installer]\n",
        "[installer]\ntrust = \"signing\"\nbinary = \"init-static\"\n",
    );
    fs::write(&f.profile, &with_trust).unwrap();
    let out = dir.join("out");
    let sign = key.secret.to_str().unwrap();
    build(&f, &out, &["--sign-key", sign]);
    let j = inspect_json(&set_dir(&out).join("t-installer.raw.zst"));
    let paths: Vec<&str> = j["installer"]["payload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "t.manifest.json",
            "t.manifest.json.minisig",
            "t.raw.zst",
            "trust/revoked",
            "trust/trusted/old.pub",
            "trust/trusted/release.pub"
        ]
    );
    // Signed by a key the store revokes: refused before anything is built.
    let out2 = dir.join("out2");
    let o = try_build(
        &f,
        &out2,
        &["-q", "--sign-key", other.secret.to_str().unwrap()],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("`installer.trust`") && e.contains("revokes the signing key"),
        "{e}"
    );
    assert!(!out2.exists() || fs::read_dir(&out2).unwrap().count() == 0);
}

#[test]
fn unsigned_build_with_installer_is_refused_without_files() {
    let (f, _key) = installer_fixture();
    let out = f.dir.path().join("out");
    let static_bin = f.dir.path().join("init-static");
    let o = try_build(
        &f,
        &out,
        &["-q", "--installer-binary", static_bin.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("the installer needs a signed payload: pass --sign-key or set [signing] key"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(!set_dir(&out).join("t-installer.raw.zst").exists());
    assert!(!set_dir(&out).exists(), "nothing is built");
}

#[test]
fn bad_installer_fields_are_refused_each_with_its_message() {
    let (f, key) = installer_fixture();
    let good = fs::read_to_string(&f.profile).unwrap();
    let sign = key.secret.to_str().unwrap().to_string();
    let static_bin = f.dir.path().join("init-static").display().to_string();
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "unknown field",
            "[installer]\n",
            "[installer]\ncolour = \"blue\"\n",
            &["unknown field `colour`"],
        ),
        (
            "reboot on failure",
            "on_failure = \"halt\"",
            "on_failure = \"reboot\"",
            &["`installer.on_failure`", "loop"],
        ),
        (
            "bad size",
            "min_size = \"8GiB\"",
            "min_size = \"8GB\"",
            &["`install.disk.min_size`", "\"GB\""],
        ),
        (
            "min above max",
            "max_size = \"4TiB\"",
            "max_size = \"4GiB\"",
            &["`install.disk.min_size`", "more than max_size"],
        ),
        (
            "unknown transport",
            "transports = [\"nvme\", \"virtio\"]",
            "transports = [\"nvme\", \"firewire\"]",
            &["`install.disk.transports[1]`", "\"firewire\""],
        ),
        (
            "missing module",
            "load = [\"virtio_blk\", \"usb-storage\"]",
            "load = [\"virtio_blk\", \"e1000e\"]",
            &["`installer.modules.load[1]`", "module e1000e is not in"],
        ),
        (
            "kernel pin",
            "kernel = { path = \"installer/vmlinuz\", sha256 = \"",
            "kernel = { path = \"installer/vmlinuz\", sha256 = \"00",
            &["`installer.kernel.sha256`"],
        ),
        (
            "kernel not matching its pin",
            "path = \"installer/vmlinuz\"",
            "path = \"assets/systemd-boot.efi\"",
            &["`installer.kernel`", "does not match its pin"],
        ),
        (
            "dynamically linked binary",
            "[installer]\n",
            "[installer]\nbinary = \"init-dynamic\"\n",
            &[
                "`installer.binary`",
                "dynamically linked",
                "cargo xtask dist",
            ],
        ),
    ];
    for (what, from, to, wants) in cases {
        let text = good.replacen(from, to, 1);
        assert_ne!(text, good, "{what}: the fixture changed");
        fs::write(&f.profile, text).unwrap();
        let out = f.dir.path().join("out");
        let mut args = vec!["-q", "--sign-key", sign.as_str()];
        // The dynamically linked case names its binary in the profile.
        if *what != "dynamically linked binary" {
            args.extend(["--installer-binary", static_bin.as_str()]);
        }
        let o = try_build(&f, &out, &args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {e}");
        assert_eq!(e.lines().count(), 1, "{what}: one error line: {e}");
        assert!(e.contains("p.toml"), "{what}: names the profile: {e}");
        for w in *wants {
            assert!(e.contains(w), "{what}: {w:?} missing from: {e}");
        }
        assert!(
            !out.exists() || fs::read_dir(&out).unwrap().count() == 0,
            "{what}: files were written"
        );
    }
    fs::write(&f.profile, &good).unwrap();

    // No binary anywhere: the running edgeimage, refused when it is not static.
    let exe = fs::File::open(bin()).unwrap();
    let dynamic = edgeimage::installer::elf::read(&exe)
        .map(|i| i.interpreter.is_some())
        .unwrap_or(false);
    if dynamic {
        let o = try_build(&f, &f.dir.path().join("o"), &["-q", "--sign-key", &sign]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains("the running edgeimage")
                && e.contains("dynamically linked")
                && e.contains("--installer-binary"),
            "{e}"
        );
    }
    // --installer-binary without [installer] is a mistake.
    let plain = small_fixture("");
    let o = try_build(
        &plain,
        &plain.dir.path().join("o"),
        &["--installer-binary", &static_bin],
    );
    assert!(
        o.status.code() == Some(1) && stderr(&o).contains("no [installer] section"),
        "{}",
        stderr(&o)
    );
}

/// Copy every file of the FAT volume in `image` to `to`.
fn copy_out(image: &Path, to: &Path) {
    let fs_ = fatfs::FileSystem::new(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .unwrap(),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let mut stack = vec![(to.to_path_buf(), fs_.root_dir())];
    while let Some((dir, d)) = stack.pop() {
        fs::create_dir_all(&dir).unwrap();
        for e in d.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if e.is_dir() {
                stack.push((dir.join(&name), e.to_dir()));
            } else {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e.to_file(), &mut data).unwrap();
                fs::write(dir.join(&name), data).unwrap();
            }
        }
    }
}

/// What the stick carries is what `edgeimage install` takes: its configuration and its
/// payload partition install the disk image onto a simulated host's virtio disk.
#[test]
fn the_stick_s_configuration_and_payload_install_with_edgeimage_install() {
    let (f, key) = installer_fixture();
    let text = fs::read_to_string(&f.profile).unwrap();
    let disk_rules = &text[text.find("[install.disk]\n").unwrap()..];
    fs::write(
        &f.profile,
        text.replace(disk_rules, "[install.disk]\ntransports = [\"virtio\"]\n"),
    )
    .unwrap();
    let out = f.dir.path().join("out");
    let mut args = signed_args(&f, &key);
    args.push("--raw".into());
    build(&f, &out, &strs(&args));
    let stick = set_dir(&out).join("t-installer.raw");
    let j = inspect_json(&stick);
    let dir = f.dir.path();
    let config = dir.join("installer.json");
    fs::write(&config, j["installer"]["config"].to_string()).unwrap();
    let payload = &partitions(&j)[1];
    let part = dir.join("payload.img");
    extract(&stick, payload.1, payload.2, &part);
    copy_out(&part, &dir.join("payload"));

    let sim = FakeSystem::new(&dir.join("root"));
    sim.disk(
        "devices/pci0000:00/0000:00:04.0/virtio1",
        "vda",
        "240:0",
        64 << 30,
        Some("VDISK-1"),
    );
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let o = run(&[
        "install",
        "--config",
        &p(&config),
        "--payload",
        &p(&dir.join("payload")),
        "--records",
        &p(&dir.join("records")),
        "--work",
        &p(&dir.join("work")),
        "--system-root",
        &p(&sim.root),
        "-q",
    ]);
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("INSTALLED: t build 0 written to /dev/vda"),
        "{said}"
    );
    assert!(
        fs::read(sim.root.join("dev/vda")).unwrap()
            == fs::read(set_dir(&out).join("t.raw")).unwrap(),
        "the installed disk is not the image"
    );
}
