//! Every bad input named by the build's contract: one clear error line (what, where, what to
//! do), exit code 1, and no output file.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use edgeimage::talos::Arch;
use sha2::{Digest, Sha256};

/// Run a build that must fail; returns its single error line.
fn fails(f: &Fixture, out: &Path) -> String {
    let o = try_build(f, out, &["--raw"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    // Progress lines (phase names) may precede it; the failure itself is one line.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    if out.exists() {
        let left: Vec<_> = fs::read_dir(out).unwrap().collect();
        assert!(left.is_empty(), "output files left behind: {left:?}");
    }
    lines[0].to_string()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn truncated_asset_is_refused_with_both_digests() {
    let f = fixture(Arch::Amd64, "");
    let p = f.dir.path().join("assets/vmlinuz");
    let data = fs::read(&p).unwrap();
    fs::write(&p, &data[..data.len() / 2]).unwrap();
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("asset `kernel`") && e.contains("does not match its pin"),
        "{e}"
    );
    assert!(e.contains(&digest(&f.digests, "vmlinuz")), "{e}");
    assert!(e.contains(&sha(&data[..data.len() / 2])), "{e}");
    assert!(e.contains("assets.kernel.sha256"), "{e}");
}

#[test]
fn wrong_asset_is_refused() {
    let f = fixture(Arch::Amd64, "");
    let a = f.dir.path().join("assets");
    fs::copy(a.join("systemd-boot.efi"), a.join("systemd-stub.efi")).unwrap();
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("asset `systemd_stub`") && e.contains("does not match its pin"),
        "{e}"
    );
}

#[test]
fn missing_asset_names_the_file() {
    let f = fixture(Arch::Amd64, "");
    fs::remove_file(f.dir.path().join("assets/initramfs.xz")).unwrap();
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("asset `initramfs`") && e.contains("initramfs.xz"),
        "{e}"
    );
}

#[test]
fn stub_that_is_not_pe_is_refused() {
    let f = fixture(Arch::Amd64, "");
    replace_asset(&f, "systemd-stub.efi", b"#!/bin/sh\necho not a PE file\n");
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("asset `systemd_stub`")
            && e.contains("is not an EFI application")
            && e.contains("MZ"),
        "{e}"
    );
}

#[test]
fn truncated_pe_stub_is_refused() {
    let f = fixture(Arch::Amd64, "");
    let stub = fs::read(f.dir.path().join("assets/systemd-stub.efi")).unwrap();
    replace_asset(&f, "systemd-stub.efi", &stub[..0x1000]);
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(e.contains("systemd-stub") && e.contains("truncated"), "{e}");
}

#[test]
fn kernel_for_the_other_architecture_is_refused() {
    let f = fixture(Arch::Amd64, "");
    let arm = edgeimage::synthetic::asset_set(Arch::Arm64, Default::default()).unwrap();
    let kernel = &arm.iter().find(|(n, _)| *n == "vmlinuz").unwrap().1;
    replace_asset(&f, "vmlinuz", kernel);
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("asset `kernel`") && e.contains("arm64 binary") && e.contains("arch is amd64"),
        "{e}"
    );
}

#[test]
fn initramfs_that_is_not_compressed_cpio_is_refused() {
    let f = fixture(Arch::Amd64, "");
    replace_asset(&f, "initramfs.xz", b"plain text, no archive");
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("asset `initramfs`") && e.contains("not an initramfs"),
        "{e}"
    );
}

#[test]
fn partitions_that_do_not_fit_are_refused() {
    let f = fixture(Arch::Amd64, "");
    let text = fs::read_to_string(&f.profile)
        .unwrap()
        .replace("128MiB", "64MiB");
    fs::write(&f.profile, text).unwrap();
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("p.toml") && e.contains("`disk_size`") && e.contains("do not fit"),
        "{e}"
    );
}

#[test]
fn command_line_over_the_kernels_limit_is_refused() {
    let args: Vec<String> = (0..300).map(|i| format!("\"opt{i}=value{i}\"")).collect();
    let f = fixture(
        Arch::Amd64,
        &format!("[kernel_args]\nextra = [{}]\n", args.join(", ")),
    );
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("`kernel_args`") && e.contains("limit of 2047 bytes"),
        "{e}"
    );
}

#[test]
fn unwritable_output_directory_is_refused() {
    let f = fixture(Arch::Amd64, "");
    let e = fails(&f, Path::new("/proc/edgeimage-out"));
    assert!(
        e.contains("/proc/edgeimage-out") && e.contains("--out"),
        "{e}"
    );
}

#[test]
fn esp_too_small_for_fat32_is_refused() {
    let f = fixture(Arch::Amd64, "");
    let text = fs::read_to_string(&f.profile)
        .unwrap()
        .replace("esp_size = \"100MiB\"", "esp_size = \"16MiB\"");
    fs::write(&f.profile, text).unwrap();
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(e.contains("too small for FAT32"), "{e}");
}

#[test]
fn unknown_profile_field_is_refused() {
    let f = fixture(Arch::Amd64, "flavour = \"x\"");
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("p.toml") && e.contains("unknown field `flavour`"),
        "{e}"
    );
}

#[test]
fn failed_build_leaves_previous_output_intact() {
    let f = fixture(Arch::Amd64, "");
    let out = f.dir.path().join("out");
    build(&f, &out, &[]);
    let set = set_dir(&out);
    let before = fs::read(set.join("t.raw.zst")).unwrap();
    let files = fs::read_dir(&set).unwrap().count();
    assert_eq!(files, 3, "image, manifest, block map");
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        1,
        "only the set directory"
    );
    fs::write(f.dir.path().join("assets/vmlinuz"), b"x").unwrap();
    let o = try_build(&f, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fs::read(set.join("t.raw.zst")).unwrap(), before);
    assert_eq!(fs::read_dir(&set).unwrap().count(), files);
    // No staging directory and no lock file are left.
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
}

/// Talos's own META keys (`pkg/machinery/meta/constants.go`: 0x06-0x09 upgrades and
/// encryption, 0x0f UUIDOverride, 0x10 UniqueMachineToken, 0x11 DiskImageBootloader) are
/// refused from the profile and from a schematic, naming the field and what to use instead.
#[test]
fn talos_meta_keys_are_refused_from_profile_and_schematic() {
    for (key, name) in [
        ("0x06", "Upgrade"),
        ("0x0f", "UUIDOverride"),
        ("0x10", "UniqueMachineToken"),
        ("0x11", "DiskImageBootloader"),
    ] {
        let f = fixture(Arch::Amd64, &format!("[meta]\n\"{key}\" = \"x\"\n"));
        let e = fails(&f, &f.dir.path().join("out"));
        assert!(
            e.contains(&format!("field `meta.{key}`"))
                && e.contains(name)
                && e.contains("0x0c-0x0e"),
            "{e}"
        );
    }
    for (key, name) in [(7, "StagedUpgradeImageRef"), (16, "UniqueMachineToken")] {
        let f = fixture(Arch::Amd64, "");
        fs::write(
            f.dir.path().join("s.yaml"),
            format!("customization:\n    meta:\n        - key: 12\n          value: ok\n        - key: {key}\n          value: x\n"),
        )
        .unwrap();
        let text = fs::read_to_string(&f.profile).unwrap().replacen(
            "[assets]",
            "schematic = \"s.yaml\"\n[assets]",
            1,
        );
        fs::write(&f.profile, text).unwrap();
        let e = fails(&f, &f.dir.path().join("out"));
        assert!(
            e.contains("field `customization.meta[1].key`")
                && e.contains(name)
                && e.contains("s.yaml"),
            "{e}"
        );
    }
}

/// A META that leaves Talos no room to record an upgrade (its `SetTagBytes` counts 20 bytes,
/// then `len + 8` per key, up to 262104) is refused with the sizes.
#[test]
fn meta_too_full_for_talos_is_refused() {
    let f = fixture(Arch::Amd64, "");
    fs::write(f.dir.path().join("big.bin"), vec![b'x'; 260_000]).unwrap();
    let text = fs::read_to_string(&f.profile).unwrap().replacen(
        "[assets]",
        "[meta]\n\"0x0c\" = { file = \"big.bin\" }\n[assets]",
        1,
    );
    fs::write(&f.profile, text).unwrap();
    let e = fails(&f, &f.dir.path().join("out"));
    assert!(
        e.contains("field `meta`")
            && e.contains("260028 of META's 262104 bytes")
            && e.contains("SetTagBytes"),
        "{e}"
    );
}
