//! What depends on the Talos version and architecture, end to end through `edgeimage build`
//! and `edgeimage inspect`: the default kernel arguments (Talos's `kernel.DefaultArgs` and
//! quirks), the UKI's boot profiles (from v1.10), the embedded configuration's file mode
//! (0400 from v1.13), and the command line limit on both architectures. `objdump -h` (a tool
//! nobody here wrote) reads the UKI's sections.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use edgeimage::config::fixtures::controlplane_yaml;
use edgeimage::talos::Arch;

/// A fixture for `version` and `arch` with `extra` in the profile.
fn versioned(arch: Arch, version: &str, extra: &str) -> Fixture {
    let f = fixture(arch, extra);
    let text = fs::read_to_string(&f.profile).unwrap().replace(
        "talos_version = \"v1.12.5\"",
        &format!("talos_version = \"{version}\""),
    );
    fs::write(&f.profile, text).unwrap();
    f
}

fn built(f: &Fixture) -> serde_json::Value {
    let out = f.dir.path().join("out");
    build(f, &out, &["--raw"]);
    inspect_json(&set_dir(&out).join("t.raw"))
}

/// The UKI, copied out of the ESP with mtools.
fn uki_file(f: &Fixture, version: &str) -> std::path::PathBuf {
    let to = f.dir.path().join("uki.efi");
    esp_file(
        &f.dir.path().join("out/t/t.raw"),
        100,
        &format!("EFI/Linux/Talos-{version}.efi"),
        &to,
    );
    to
}

/// Section names as `objdump -h` lists them (binutils for the UKI's architecture: the host's
/// `objdump` reads x86-64 PE, `aarch64-linux-gnu-objdump` arm64 PE).
fn objdump_sections(pe: &Path, arch: Arch) -> Option<Vec<String>> {
    let objdump = match arch {
        Arch::Amd64 => "objdump",
        Arch::Arm64 => "aarch64-linux-gnu-objdump",
    };
    if !have(objdump) {
        eprintln!("SKIPPED: {objdump} -h ({objdump} not installed)");
        return None;
    }
    let o = tool(objdump).arg("-h").arg(pe).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 7 && f[0].parse::<u32>().is_ok()).then(|| f[1].to_string())
            })
            .collect(),
    )
}

/// The default command line of every minor version on both architectures, as built, and the
/// UKI's boot profiles: `main` and `reset-maintenance` from v1.10 (`SupportsUKIProfiles`),
/// none before.
#[test]
fn defaults_and_profiles_per_version_and_arch() {
    let v11 = "init_on_alloc=1 slab_nomerge pti=on consoleblank=0 \
               nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1";
    let cases = [
        (
            "v1.9.6",
            "init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 \
             printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512"
                .to_string(),
        ),
        ("v1.12.5", format!("{v11} module.sig_enforce=1")),
        (
            "v1.13.9",
            format!("{v11} module.sig_enforce=1 proc_mem.force_override=never"),
        ),
        (
            "v1.14.0",
            "slab_nomerge pti=on consoleblank=0 printk.devkmsg=on selinux=1 \
             module.sig_enforce=1 proc_mem.force_override=never"
                .to_string(),
        ),
    ];
    for arch in [Arch::Amd64, Arch::Arm64] {
        let console = match arch {
            Arch::Amd64 => "console=tty0",
            Arch::Arm64 => "console=ttyAMA0 console=tty0",
        };
        for (version, defaults) in &cases {
            let f = versioned(arch, version, "");
            let j = built(&f);
            let cmdline = format!("talos.platform=metal {console} {defaults}");
            assert_eq!(j["uki"]["cmdline"], cmdline.as_str(), "{version} {arch}");
            let profiles = j["uki"]["profiles"].as_array().cloned().unwrap_or_default();
            let sections = have("mcopy")
                .then(|| objdump_sections(&uki_file(&f, version), arch))
                .flatten();
            if version.starts_with("v1.9") {
                assert!(profiles.is_empty(), "{version}: {profiles:?}");
                if let Some(s) = &sections {
                    assert!(!s.iter().any(|n| n == ".profile"), "{s:?}");
                }
                continue;
            }
            assert_eq!(profiles.len(), 2, "{version} {arch}");
            assert_eq!(profiles[0]["id"], "main");
            assert_eq!(profiles[0]["own_cmdline"], false);
            assert_eq!(profiles[1]["id"], "reset-maintenance");
            assert_eq!(profiles[1]["title"], "Reset to maintenance mode");
            assert_eq!(
                profiles[1]["cmdline"],
                format!("{cmdline} talos.experimental.wipe=system:EPHEMERAL,STATE").as_str()
            );
            if let Some(s) = sections {
                let tail: Vec<&str> = s.iter().rev().take(5).rev().map(String::as_str).collect();
                assert_eq!(
                    tail,
                    [".linux", ".initrd", ".profile", ".profile", ".cmdline"],
                    "objdump -h: {s:?}"
                );
            }
        }
    }
}

/// The reset profile's command line is the longest: a base command line that fits the
/// kernel's 2047 bytes alone but not with the profile's argument is refused, naming the
/// profile.
#[test]
fn reset_profile_command_line_must_fit_too() {
    // An extra argument filling the base command line of `version` to 2027 bytes: the reset
    // profile adds 47 (a space and its argument), 2074 in all.
    let filled = |version: &str| {
        let base = built(&versioned(Arch::Amd64, version, ""))["uki"]["cmdline"]
            .as_str()
            .unwrap()
            .len();
        let fill = "a".repeat(2027 - base - 3);
        versioned(
            Arch::Amd64,
            version,
            &format!("[kernel_args]\nextra = [\"x={fill}\"]\n"),
        )
    };
    let f = filled("v1.12.5");
    let o = try_build(&f, &f.dir.path().join("out"), &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("reset-maintenance boot profile")
            && e.contains("2074 bytes")
            && e.contains("limit of 2047"),
        "{e}"
    );
    // Talos before v1.10 has no profiles: the same length fits.
    let j = built(&filled("v1.9.6"));
    assert_eq!(j["uki"]["cmdline"].as_str().unwrap().len(), 2027);
}

/// The embedded configuration's file mode: 0000 on v1.12, 0400 from v1.13
/// (`pkg/imager/embed.go`, `BuildEmbeddedConfigExtension`), as unsquashfs lists it.
#[test]
fn embedded_config_mode_per_version() {
    for (version, mode) in [("v1.12.5", "----------"), ("v1.13.9", "-r--------")] {
        let f = versioned(Arch::Amd64, version, "");
        let cfg = f.dir.path().join("machine.yaml");
        fs::write(&cfg, controlplane_yaml()).unwrap();
        let text = fs::read_to_string(&f.profile).unwrap();
        fs::write(
            &f.profile,
            format!("{text}\n[config]\npath = \"machine.yaml\"\ndelivery = \"embedded\"\n"),
        )
        .unwrap();
        let j = built(&f);
        let layer = j["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "embedded-config")
            .unwrap()
            .clone();
        assert_eq!(layer["image"], "0.sqsh");
        if !["unsquashfs", "zstd", "cpio", "mcopy", "objcopy"]
            .iter()
            .all(|t| have(t))
        {
            eprintln!("SKIPPED: unsquashfs listing of the embedded configuration");
            continue;
        }
        let dir = f.dir.path().join("appended");
        unpack_appended(
            &uki_file(&f, version),
            &f.dir.path().join("assets/initramfs.xz"),
            &dir,
        );
        let sqsh = dir.join("0.sqsh");
        let o = tool("unsquashfs")
            .args(["-lls", "-n"])
            .arg(&sqsh)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&o.stdout);
        let line = listing
            .lines()
            .find(|l| l.ends_with("usr/local/etc/talos/config.yaml"))
            .unwrap_or_else(|| panic!("{listing}"));
        assert!(line.starts_with(mode), "{version}: {line}");
    }
}

/// `sector_size = 4096` (the schematic's `diskImage.sectorSize`): a GPT of 4 KiB logical
/// blocks and FAT volumes of 4096-byte sectors, as Talos's imager makes a `metal-4k` image
/// (`pkg/imager/profile/default.go`; `gpt.WithFileSectorSize`, `mkfs.vfat -S`). Checked by
/// `sgdisk -v` on a loop device with 4096-byte blocks, `fsck.fat -n` on the ESP and the
/// metal-iso partition, and `edgeimage verify` of the image and of the loop device.
#[test]
fn four_k_logical_blocks() {
    let f = fixture(Arch::Amd64, "sector_size = 4096");
    let text = fs::read_to_string(&f.profile)
        .unwrap()
        .replace("disk_size = \"128MiB\"", "disk_size = \"266MiB\"")
        .replace("esp_size = \"100MiB\"", "esp_size = \"260MiB\"");
    fs::write(&f.profile, &text).unwrap();
    fs::write(f.dir.path().join("machine.yaml"), controlplane_yaml()).unwrap();
    fs::write(
        &f.profile,
        format!("{text}\n[config]\npath = \"machine.yaml\"\ndelivery = \"metal-iso\"\n"),
    )
    .unwrap();
    let b = built_from(f, true);
    let raw = b.set.join("t.raw");
    let j = inspect_json(&raw);
    assert_eq!(j["sector_size"], 4096);
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts[0]["label"], "EFI");
    assert_eq!(parts[0]["first_lba"], 256, "1 MiB in 4 KiB blocks");
    assert_eq!(parts[0]["offset"], 1 << 20);
    assert_eq!(b.manifest()["image"]["sector_size"], 4096);
    b.verify(&raw, &[]).expect(0, "VERIFIED");

    // The ESP and the metal-iso volume: FAT with 4096-byte sectors, clean for fsck.fat.
    for p in parts
        .iter()
        .filter(|p| p["label"] != "META" && p["label"] != "edgeimage-manifest")
    {
        let part =
            b.f.dir
                .path()
                .join(format!("{}.img", p["label"].as_str().unwrap()));
        extract(
            &raw,
            p["offset"].as_u64().unwrap(),
            p["size"].as_u64().unwrap(),
            &part,
        );
        let boot = read_at(&part, 0, 512);
        assert_eq!(
            u16::from_le_bytes([boot[11], boot[12]]),
            4096,
            "{}",
            p["label"]
        );
        if have("fsck.fat") {
            let o = tool("fsck.fat").arg("-n").arg(&part).output().unwrap();
            assert!(
                o.status.success(),
                "fsck.fat {}: {}",
                p["label"],
                String::from_utf8_lossy(&o.stdout)
            );
        }
    }

    // A loop device with 4096-byte logical blocks: sgdisk -v finds a clean table; verify of
    // the written device.
    let Some(lo) = Loop::with_block_size(&raw, 4096) else {
        return;
    };
    if have("sgdisk") {
        let o = tool("sgdisk").arg("-v").arg(&lo.0).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("No problems found"),
            "sgdisk -v: {text}"
        );
    }
    b.verify(Path::new(&lo.0), &[]).expect(0, "VERIFIED");
}

/// The schematic's `diskImage.sectorSize` gives the same image as the profile's `sector_size`;
/// the two disagreeing, or a size edgeimage does not write, is refused naming the field; the
/// schematic fields edgeimage does not build are refused, never ignored.
#[test]
fn schematic_disk_image_and_unsupported_fields() {
    let with_schematic = |profile_extra: &str, schematic: &str| {
        let f = versioned(Arch::Amd64, "v1.12.5", profile_extra);
        let text = fs::read_to_string(&f.profile)
            .unwrap()
            .replace("disk_size = \"128MiB\"", "disk_size = \"266MiB\"")
            .replace("esp_size = \"100MiB\"", "esp_size = \"260MiB\"")
            .replacen("[assets]", "schematic = \"s.yaml\"\n[assets]", 1);
        fs::write(&f.profile, text).unwrap();
        fs::write(f.dir.path().join("s.yaml"), schematic).unwrap();
        f
    };
    let f = with_schematic(
        "",
        "customization:\n    diskImage:\n        sectorSize: 4096\n",
    );
    assert_eq!(built(&f)["sector_size"], 4096);
    let refused = |f: &Fixture, want: &[&str]| {
        let o = try_build(f, &f.dir.path().join("out"), &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert_eq!(
            e.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{e}"
        );
        for w in want {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
    };
    refused(
        &with_schematic(
            "sector_size = 512",
            "customization:\n    diskImage:\n        sectorSize: 4096\n",
        ),
        &[
            "field `sector_size` is 512",
            "`customization.diskImage.sectorSize` is 4096",
        ],
    );
    refused(
        &with_schematic(
            "",
            "customization:\n    diskImage:\n        sectorSize: 2048\n",
        ),
        &[
            "`customization.diskImage.sectorSize` is 2048",
            "512 or 4096",
        ],
    );
    refused(
        &with_schematic(
            "",
            "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: rpi_generic\n",
        ),
        &[
            "field `overlay`",
            "rpi_generic",
            "not built by edgeimage yet",
            "Talos v1.12.5",
        ],
    );
    refused(
        &with_schematic("", "customization:\n    bootloader: dual-boot\n"),
        &[
            "field `customization.bootloader`",
            "\"dual-boot\"",
            "set `bootloader: sd-boot`",
            "Talos v1.12.5",
        ],
    );
    refused(
        &with_schematic("", "customization:\n    bootloader: grub\n"),
        &["\"grub\" for Talos v1.12.5 on amd64"],
    );
    built(&with_schematic(
        "",
        "customization:\n    bootloader: sd-boot\n",
    ));
    refused(
        &with_schematic(
            "",
            "customization:\n    secureboot:\n        enrollKeys: if-safe\n",
        ),
        &[
            "field `customization.secureboot`",
            "not built by edgeimage yet",
            "Talos v1.12.5",
        ],
    );
}
