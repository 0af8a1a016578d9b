//! The installer stick, end to end: `edgeimage build` of the `e2e` image with an
//! `[installer]` section gives `e2e-inst-installer.raw`; QEMU boots it from a USB stick with
//! a blank virtio disk attached; the installer (the static `edgeimage` as `/init`) verifies
//! the payload, picks the virtio disk, writes and verifies it, records the result on the
//! stick and powers off. The virtio disk is then booted alone and must show everything the
//! disk-image test checks. Negative runs: a payload with one flipped byte, two matching disks,
//! no matching disk: each refused, every disk left blank, the reason on the console and in the
//! record on the stick.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::qemu::{self, Accel, Bus, Drive};
use super::{fetch, initramfs, Opts, Paths, VARIANTS};

/// Modules the installer loads (with their dependencies): USB stick, virtio disks.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "xhci_pci",
    "usb_storage",
    "sd_mod",
];
const RESULT: &str = "edgeimage install: RESULT ";
const DISK_SERIAL: &str = "E2E-TARGET-1";

fn profile_extra(root: &fetch::Root, binary: &Path, key: &Path) -> Result<String> {
    let order = initramfs::load_order(root, MODULES)?;
    let load: Vec<String> = order.iter().map(|m| format!("\"{m}\"")).collect();
    Ok(format!(
        "\n[signing]\nkey = \"{}\"\n\n[installer]\nmodules = {{ dir = \"{}\", load = [{}] }}\n\
         cmdline = [\"console={}\", \"panic=-1\"]\nbinary = \"{}\"\nwait_seconds = 30\n\
         on_success = \"poweroff\"\non_failure = \"poweroff\"\n\n[install.disk]\ntransports = [\"virtio\"]\n",
        key.display(),
        root.modules().display(),
        load.join(", "),
        root.console(),
        binary.display(),
    ))
}

/// A blank (sparse) disk of `mib` MiB.
fn blank(path: &Path, mib: u64) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(mib << 20)?;
    Ok(())
}

fn is_blank(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// The install records on a stick (records partition, `records/*.json`), read with mtools.
fn records(stick: &Path) -> Result<Vec<serde_json::Value>> {
    let gpt = edgeimage::format::gpt::read_file(&fs::File::open(stick)?)?;
    let (offset, _) = gpt
        .place_of(edgeimage::install::config::RECORDS_PARTNAME)
        .context("the stick has no records partition")?;
    let img = format!("{}@@{offset}", stick.display());
    let list = fetch::capture(Command::new("mdir").args(["-b", "-i", &img, "::records"]))
        .unwrap_or_default();
    let mut out = Vec::new();
    for name in list.lines().filter(|l| l.ends_with(".json")) {
        let file = name.trim_start_matches("::");
        let text = fetch::capture(Command::new("mtype").args(["-i", &img, &format!("::{file}")]))?;
        out.push(serde_json::from_str(&text).with_context(|| format!("record {file}: {text}"))?);
    }
    Ok(out)
}

/// Flip one byte in the middle of the payload's `.raw.zst` inside the stick image (searched
/// for inside the payload partition only: the same kernel bytes are in the ESP too).
fn tamper(stick: &Path, zst: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let payload = fs::read(zst)?;
    let at = payload.len() / 2;
    let needle = &payload[at..at + 64];
    let img = fs::read(stick)?;
    let gpt = edgeimage::format::gpt::read_file(&fs::File::open(stick)?)?;
    let (offset, size) = gpt
        .place_of(edgeimage::install::config::PAYLOAD_PARTNAME)
        .context("the stick has no payload partition")?;
    let (start, end) = (offset as usize, (offset + size) as usize);
    let pos = start
        + img[start..end.min(img.len())]
            .windows(64)
            .position(|w| w == needle)
            .context("the payload's bytes are not in the payload partition")?;
    let f = fs::OpenOptions::new().write(true).open(stick)?;
    f.write_all_at(&[img[pos] ^ 0x01], pos as u64)?;
    Ok(())
}

struct Scenario {
    name: &'static str,
    tamper: bool,
    disks: usize,
    expect_ok: bool,
    expect_text: &'static str,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "install",
        tamper: false,
        disks: 1,
        expect_ok: true,
        expect_text: "build 0 written to /dev/vda",
    },
    Scenario {
        name: "install-tampered",
        tamper: true,
        disks: 1,
        expect_ok: false,
        expect_text: "the payload is refused, no disk was touched",
    },
    Scenario {
        name: "install-ambiguous",
        tamper: false,
        disks: 2,
        expect_ok: false,
        expect_text: "2 disks match the install rules",
    },
    Scenario {
        name: "install-no-disk",
        tamper: false,
        disks: 0,
        expect_ok: false,
        expect_text: "no disk matches the install rules",
    },
];

/// Build the installer image of `root`'s architecture (the static `edgeimage` for it as
/// `/init`), run its scenarios (every one on amd64; the install on arm64, whose boots under
/// TCG take longest); returns each scenario's name and outcome.
pub(super) fn run(
    paths: &Paths,
    root: &fetch::Root,
    bin: &Path,
    accel: Accel,
    opts: &Opts,
) -> Result<Vec<(String, Result<f64>)>> {
    let arch = root.arch;
    let static_bin = crate::dist::build_for(arch)
        .with_context(|| format!("building the static {arch} edgeimage for the stick"))?;
    let keys = paths.e2e.join("keys");
    crate::util::run(
        Command::new(bin)
            .args([
                "key",
                "generate",
                "--name",
                "e2e",
                "--unencrypted",
                "--force",
                "--out",
            ])
            .arg(&keys),
    )?;
    let name = match arch {
        edgeimage::talos::Arch::Amd64 => "e2e-inst",
        edgeimage::talos::Arch::Arm64 => "e2e-inst-arm64",
    };
    let setup = super::setup_for(name, root, 512);
    let variant = VARIANTS
        .iter()
        .find(|v| v.arch == arch)
        .context("no image variant for this architecture")?;
    let inputs = super::write_inputs(paths, variant, root)?;
    let profile = super::write_profile(paths, &setup, Some(&inputs))?;
    let mut text = fs::read_to_string(&profile)?;
    text.push_str(&profile_extra(root, &static_bin, &keys.join("e2e.key"))?);
    fs::write(&profile, text)?;
    let (disk_image, mut expect) =
        super::build_with_edgeimage(paths, bin, &setup, &profile, Some(variant))?;
    if variant.modules {
        expect.modules_dep = Some(super::kmod_modules_dep_line(paths, root)?);
    }
    let installer = paths.set(name).join(format!("{name}-installer.raw"));
    if !installer.exists() {
        bail!("the build wrote no {}", installer.display());
    }
    let zst = paths.set(name).join(format!("{name}.raw.zst"));
    let trust = paths.e2e.join("trust");
    fs::create_dir_all(trust.join("trusted"))?;
    fs::copy(keys.join("e2e.pub"), trust.join("trusted/e2e.pub"))?;

    let mut results = Vec::new();
    let scenarios = match arch {
        edgeimage::talos::Arch::Amd64 => &SCENARIOS[..],
        edgeimage::talos::Arch::Arm64 => &SCENARIOS[..1],
    };
    for sc in scenarios {
        let tag = format!("{}-{arch}", sc.name);
        println!("\ne2e: ===== installer ({arch}): {} =====", sc.name);
        let r = (|| -> Result<f64> {
            let stick = paths.run.join(format!("{tag}-stick.raw"));
            fs::copy(&installer, &stick)?;
            if sc.tamper {
                tamper(&stick, &zst)?;
            }
            let targets: Vec<PathBuf> = (0..sc.disks)
                .map(|i| paths.run.join(format!("{tag}-disk{i}.raw")))
                .collect();
            for t in &targets {
                blank(t, setup.disk_mib + 64)?;
            }
            let serials: Vec<String> = (0..sc.disks)
                .map(|i| format!("E2E-TARGET-{}", i + 1))
                .collect();
            let mut drives = vec![Drive {
                file: &stick,
                bus: Bus::Usb,
                snapshot: false,
                serial: Some("E2E-STICK"),
                block_size: 512,
            }];
            for (t, s) in targets.iter().zip(&serials) {
                drives.push(Drive {
                    file: t,
                    bus: Bus::Virtio,
                    snapshot: false,
                    serial: Some(s),
                    block_size: 512,
                });
            }
            let boot = qemu::boot_drives(root, &paths.run, &drives, &tag, accel, opts.timeout)?;
            println!(
                "e2e: QEMU ended after {:.1} s wall ({}); serial log {}",
                boot.wall.as_secs_f64(),
                boot.status,
                boot.serial.display()
            );
            let log = &boot.log;
            let result = log
                .lines()
                .find_map(|l| l.find(RESULT).map(|i| l[i + RESULT.len()..].to_string()))
                .with_context(|| {
                    format!(
                        "no \"{RESULT}\" line on the console (log {})",
                        boot.serial.display()
                    )
                })?;
            let ok = result.starts_with("installed");
            if ok != sc.expect_ok {
                bail!(
                    "the installer said {result:?} (log {})",
                    boot.serial.display()
                );
            }
            if !log.contains(sc.expect_text) {
                bail!(
                    "the console does not say {:?} (log {})",
                    sc.expect_text,
                    boot.serial.display()
                );
            }
            let recs = records(&stick)?;
            let [rec] = recs.as_slice() else {
                bail!("{} records on the stick, expected 1: {recs:?}", recs.len());
            };
            let want = if sc.expect_ok { "installed" } else { "failed" };
            if rec["result"] != want {
                bail!("the record says {} (expected {want}): {rec}", rec["result"]);
            }
            if sc.expect_ok {
                if rec["target"]["serial"] != DISK_SERIAL {
                    bail!("the record's target is not {DISK_SERIAL}: {rec}");
                }
                // The disk holds the signed image: edgeimage verify, then boot it alone.
                let v = Command::new(bin)
                    .args(["verify", "-q", "--trust"])
                    .arg(&trust)
                    .arg(&targets[0])
                    .output()?;
                let verdict = String::from_utf8_lossy(&v.stdout).to_string();
                if !v.status.success() {
                    bail!("edgeimage verify of the installed disk: {verdict}");
                }
                println!("e2e: {}", verdict.trim());
                println!("e2e: booting the installed disk alone");
                let b2 = qemu::boot(
                    root,
                    &paths.run,
                    &targets[0],
                    &format!("installed-{arch}"),
                    accel,
                    opts.timeout,
                    512,
                )?;
                super::check(&b2, &setup, &expect)?;
                let _ = &disk_image;
            } else {
                for t in &targets {
                    if !is_blank(t)? {
                        bail!(
                            "{} was written although the install was refused",
                            t.display()
                        );
                    }
                }
                println!(
                    "e2e: every disk is still blank; the record says: {}",
                    rec["error"]
                );
            }
            Ok(boot.wall.as_secs_f64())
        })();
        results.push((format!("installer {arch} {}", sc.name), r));
    }
    Ok(results)
}
