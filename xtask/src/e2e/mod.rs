//! `cargo xtask e2e`: the end-to-end boot test.
//!
//! 1. Fetch Debian's kernel, systemd-boot, OVMF, busybox and QEMU with `apt-get download` into
//!    `target/e2e/debs/`, unpack them into `target/e2e/root/` (cached; the host is not changed).
//! 2. Make a stand-in asset set in `target/e2e/assets/`: Debian's kernel, a busybox initramfs
//!    (edgeimage's cpio writer + zstd) whose `/init` prints what it finds, systemd-boot and the
//!    stub.
//! 3. Write `target/e2e/e2e.toml` pinning those assets, run `edgeimage build` and
//!    `edgeimage inspect --json`.
//! 4. Boot the image under OVMF in QEMU and check the `EDGEIMAGE-E2E` lines on the serial
//!    console against the profile and the inspect output.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod fetch;
mod initramfs;
mod qemu;
mod scratch;

use qemu::Accel;

const HELP: &str = "\
usage: cargo xtask e2e [options]

Boots the disk image `edgeimage build` makes from a stand-in asset set (Debian kernel,
systemd-boot, busybox initramfs) under OVMF in QEMU and checks what the guest reports.

options:
  --check-tools          say whether the test can run here (package cache present, or apt can
                         download); exit 0 if so, 3 if not (1 when CI=true)
  --skip-if-unavailable  when the tools cannot be had, print \"E2E SKIPPED: <why>\" and exit 0
                         (never skips when CI=true: fails instead)
  --scratch              boot an image assembled with sgdisk/mkfs.fat/mtools/objcopy instead of
                         `edgeimage build` (checks the harness itself)
  --refresh              download and unpack the packages again
  --accel auto|tcg|kvm   accelerator (default auto: KVM only if a probe boot works)
  --timeout SECS         per boot (default 300)
";

const MARK: &str = "EDGEIMAGE-E2E ";
const TALOS_VERSION: &str = "v1.12.5";
const NAME: &str = "e2e";
const EXTRA_ARGS: &[&str] = &["console=ttyS0", "panic=-1"];

/// Directories under `target/e2e/`.
pub struct Paths {
    pub workspace: PathBuf,
    pub target: PathBuf,
    pub e2e: PathBuf,
    pub debs: PathBuf,
    pub root: PathBuf,
    pub assets: PathBuf,
    pub out: PathBuf,
    pub run: PathBuf,
}

impl Paths {
    fn new() -> Self {
        let workspace = crate::util::workspace();
        let target = crate::util::target_dir();
        let e2e = target.join("e2e");
        Paths {
            debs: e2e.join("debs"),
            root: e2e.join("root"),
            assets: e2e.join("assets"),
            out: e2e.join("out"),
            run: e2e.join("run"),
            e2e,
            target,
            workspace,
        }
    }
}

/// What the image is built from, and so what the guest must report.
pub struct Setup {
    pub name: String,
    pub talos_version: String,
    pub kver: String,
    pub disk_mib: u64,
    pub esp_mib: u64,
    pub extra_args: Vec<&'static str>,
    /// META key → value, in the profile's order.
    pub meta: Vec<(u8, Vec<u8>)>,
}

struct Opts {
    check_tools: bool,
    skip_if_unavailable: bool,
    scratch: bool,
    refresh: bool,
    accel: Option<Accel>,
    timeout: Duration,
}

fn parse(args: &[String]) -> Result<Option<Opts>> {
    let mut o = Opts {
        check_tools: false,
        skip_if_unavailable: false,
        scratch: false,
        refresh: false,
        accel: None,
        timeout: Duration::from_secs(300),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check-tools" => o.check_tools = true,
            "--skip-if-unavailable" => o.skip_if_unavailable = true,
            "--scratch" => o.scratch = true,
            "--refresh" => o.refresh = true,
            "--accel" => {
                o.accel = match it.next().map(String::as_str) {
                    Some("auto") => None,
                    Some("tcg") => Some(Accel::Tcg),
                    Some("kvm") => Some(Accel::Kvm),
                    v => bail!("--accel takes auto, tcg or kvm, not {v:?}"),
                }
            }
            "--timeout" => {
                let v = it.next().context("--timeout needs a number of seconds")?;
                let s: u64 = v
                    .parse()
                    .with_context(|| format!("--timeout {v:?}: not a number of seconds"))?;
                o.timeout = Duration::from_secs(s);
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => bail!("unknown option {other:?} (see `cargo xtask e2e --help`)"),
        }
    }
    Ok(Some(o))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask e2e: {e:#}");
            return ExitCode::from(2);
        }
    };
    let paths = Paths::new();
    if opts.check_tools || opts.skip_if_unavailable {
        match fetch::check_tools(&paths) {
            Ok(how) => {
                println!("e2e: tools available: {how}");
                if opts.check_tools {
                    return ExitCode::SUCCESS;
                }
            }
            Err(why) if in_ci() => {
                eprintln!("E2E FAILED: CI=true and the boot test cannot run: {why}");
                return ExitCode::FAILURE;
            }
            Err(why) => {
                if opts.check_tools {
                    eprintln!("e2e: tools unavailable: {why}");
                    return ExitCode::from(3);
                }
                eprintln!("\n==============================================================");
                eprintln!("E2E SKIPPED: {why}");
                eprintln!("==============================================================\n");
                return ExitCode::SUCCESS;
            }
        }
    }
    match run(&paths, &opts) {
        Ok(()) => {
            println!("E2E PASSED");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("E2E FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(paths: &Paths, opts: &Opts) -> Result<()> {
    let root = fetch::ensure(paths, opts.refresh)?;
    let setup = Setup {
        name: NAME.to_string(),
        talos_version: TALOS_VERSION.to_string(),
        kver: root.kver.clone(),
        disk_mib: 256,
        esp_mib: 100,
        extra_args: EXTRA_ARGS.to_vec(),
        meta: vec![
            (0x0c, b"e2e-meta-value-1".to_vec()),
            (0x0d, b"e2e-meta-value-2 (from meta-0d.txt)".to_vec()),
        ],
    };
    make_assets(paths, &root)?;

    let (disk, expect) = if opts.scratch {
        println!("e2e: --scratch: assembling the image with host tools");
        let (disk, cmdline) = scratch::build(paths, &setup)?;
        let expect = Expect {
            cmdline,
            esp_guid: None,
        };
        (disk, expect)
    } else {
        let profile = write_profile(paths, &setup)?;
        build_with_edgeimage(paths, &setup, &profile)?
    };
    println!("e2e: image {}", disk.display());
    println!("e2e: expected /proc/cmdline: {}", expect.cmdline);

    let boot = boot_with_accel(&root, paths, &disk, opts)?;
    check(&boot, &setup, &expect)
}

/// What the image's own description (`edgeimage inspect`) says the guest must see.
pub struct Expect {
    /// The UKI's `.cmdline`.
    pub cmdline: String,
    /// GUID of the EFI partition, which systemd-boot reports as `LoaderDevicePartUUID`.
    pub esp_guid: Option<String>,
}

fn make_assets(paths: &Paths, root: &fetch::Root) -> Result<()> {
    let a = &paths.assets;
    fs::create_dir_all(a).with_context(|| format!("creating {}", a.display()))?;
    for (src, dst) in [
        (root.kernel(), "vmlinuz"),
        (root.sd_boot(), "systemd-boot.efi"),
        (root.sd_stub(), "systemd-stub.efi"),
    ] {
        fs::copy(&src, a.join(dst))
            .with_context(|| format!("copying {} to {}", src.display(), a.display()))?;
    }
    let initrd = a.join("initramfs.xz");
    let t = Instant::now();
    let modules = initramfs::build(root, &initrd)?;
    println!(
        "e2e: initramfs {} ({} KiB zstd, {:.1} s); modules: {}",
        initrd.display(),
        fs::metadata(&initrd)?.len() / 1024,
        t.elapsed().as_secs_f64(),
        modules.join(" ")
    );
    Ok(())
}

fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `target/e2e/e2e.toml`; META key 0x0c inline, every other key from a file.
fn write_profile(paths: &Paths, setup: &Setup) -> Result<PathBuf> {
    let mut t = String::new();
    t.push_str("# Written by `cargo xtask e2e`; regenerated on every run.\n");
    t.push_str(&format!("name = {}\n", toml_str(&setup.name)));
    t.push_str("arch = \"amd64\"\n");
    t.push_str(&format!(
        "talos_version = {}\n",
        toml_str(&setup.talos_version)
    ));
    t.push_str(&format!("disk_size = \"{}MiB\"\n", setup.disk_mib));
    t.push_str(&format!(
        "esp_size = \"{}MiB\"\n\n[assets]\nsource = \"assets\"\n",
        setup.esp_mib
    ));
    for (key, file) in [
        ("kernel", "vmlinuz"),
        ("initramfs", "initramfs.xz"),
        ("systemd_boot", "systemd-boot.efi"),
        ("systemd_stub", "systemd-stub.efi"),
    ] {
        let sum = fetch::sha256_file(&paths.assets.join(file))?;
        t.push_str(&format!("{key} = {{ sha256 = \"{sum}\" }}\n"));
    }
    t.push_str("\n[kernel_args]\nextra = [");
    let extra: Vec<String> = setup.extra_args.iter().map(|a| toml_str(a)).collect();
    t.push_str(&extra.join(", "));
    t.push_str("]\n\n[meta]\n");
    for (i, (key, value)) in setup.meta.iter().enumerate() {
        let value_str = std::str::from_utf8(value).context("META test values are text")?;
        if i == 0 {
            t.push_str(&format!("\"0x{key:02x}\" = {}\n", toml_str(value_str)));
        } else {
            let file = format!("meta-{key:02x}.txt");
            fs::write(paths.e2e.join(&file), value)
                .with_context(|| format!("writing {}", paths.e2e.join(&file).display()))?;
            t.push_str(&format!(
                "\"0x{key:02x}\" = {{ file = {} }}\n",
                toml_str(&file)
            ));
        }
    }
    let p = paths.e2e.join(format!("{}.toml", setup.name));
    fs::write(&p, t).with_context(|| format!("writing {}", p.display()))?;
    println!("e2e: profile {}", p.display());
    Ok(p)
}

/// Builds edgeimage (release), runs `build` and `inspect --json`; returns the raw image and
/// what inspect reports about it.
fn build_with_edgeimage(paths: &Paths, setup: &Setup, profile: &Path) -> Result<(PathBuf, Expect)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(&cargo)
        .args(["build", "--release", "-p", "edgeimage"])
        .current_dir(&paths.workspace)
        .status()
        .context("running cargo build --release -p edgeimage")?;
    if !st.success() {
        bail!("cargo build --release -p edgeimage failed ({st})");
    }
    let bin = paths.target.join("release/edgeimage");
    let raw = paths.out.join(format!("{}.raw", setup.name));
    let zst = paths.out.join(format!("{}.raw.zst", setup.name));
    for p in [&raw, &zst] {
        let _ = fs::remove_file(p);
    }
    let t = Instant::now();
    let out = Command::new(&bin)
        .arg("build")
        .arg("--profile")
        .arg(profile)
        .arg("--out")
        .arg(&paths.out)
        .arg("--raw")
        .current_dir(&paths.workspace)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "`{} build --profile {} --out {} --raw` failed ({})",
            bin.display(),
            profile.display(),
            paths.out.display(),
            out.status
        );
    }
    for p in [&raw, &zst] {
        if !p.is_file() {
            bail!(
                "`edgeimage build` exited successfully but did not write {} — does this \
                 edgeimage have the `build` command yet? (`cargo xtask e2e --scratch` checks the \
                 boot harness without it)",
                p.display()
            );
        }
    }
    println!(
        "e2e: edgeimage build took {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let out = Command::new(&bin)
        .arg("inspect")
        .arg(&raw)
        .arg("--json")
        .output()
        .with_context(|| format!("running {} inspect", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`edgeimage inspect {} --json` failed ({}): {}",
            raw.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`edgeimage inspect --json` printed no valid JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let inspect_path = paths.e2e.join("inspect.json");
    let _ = fs::write(&inspect_path, &out.stdout);
    let cmdline = json
        .pointer("/uki/cmdline")
        .and_then(|v| v.as_str())
        .with_context(|| {
            format!(
                "`edgeimage inspect --json` has no string at .uki.cmdline (see {})",
                inspect_path.display()
            )
        })?
        .to_string();
    let esp_guid = json
        .pointer("/partitions")
        .and_then(|v| v.as_array())
        .and_then(|parts| {
            parts
                .iter()
                .find(|p| p.pointer("/label").and_then(|l| l.as_str()) == Some("EFI"))
        })
        .and_then(|p| p.pointer("/guid"))
        .and_then(|g| g.as_str())
        .map(str::to_string);
    Ok((raw, Expect { cmdline, esp_guid }))
}

fn boot_with_accel(
    root: &fetch::Root,
    paths: &Paths,
    disk: &Path,
    opts: &Opts,
) -> Result<qemu::Boot> {
    let accel = match opts.accel {
        Some(a) => a,
        None => match qemu::kvm_candidate() {
            Err(why) => {
                println!("e2e: using TCG: {why}");
                Accel::Tcg
            }
            Ok(()) => {
                // Probe: a full boot under KVM with a short timeout; fall back to TCG unless
                // it reaches the done marker.
                println!("e2e: probing KVM with a 90 s boot");
                let b = qemu::boot(root, &paths.run, disk, Accel::Kvm, Duration::from_secs(90))?;
                if b.log.contains(&format!("{MARK}done")) {
                    println!("e2e: KVM works ({:.1} s)", b.wall.as_secs_f64());
                    return Ok(b);
                }
                println!(
                    "e2e: KVM probe did not finish the boot ({}); using TCG (log {})",
                    b.status,
                    b.serial.display()
                );
                Accel::Tcg
            }
        },
    };
    println!(
        "e2e: booting under OVMF with {} (timeout {} s) …",
        accel.name(),
        opts.timeout.as_secs()
    );
    let b = qemu::boot(root, &paths.run, disk, accel, opts.timeout)?;
    println!(
        "e2e: QEMU ended after {:.1} s wall ({}); serial log {}",
        b.wall.as_secs_f64(),
        b.status,
        b.serial.display()
    );
    Ok(b)
}

/// The value of the first marker line `EDGEIMAGE-E2E <key>` (text after the key).
fn marker<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(key))
}

fn check(boot: &qemu::Boot, setup: &Setup, expect: &Expect) -> Result<()> {
    let cmdline = expect.cmdline.as_str();
    let marks: Vec<&str> = boot
        .log
        .lines()
        .filter_map(|l| l.find(MARK).map(|i| &l[i + MARK.len()..]))
        .collect();
    let mut failures: Vec<String> = Vec::new();
    for bad in ["Kernel panic", "Initramfs unpacking failed"] {
        if boot.log.contains(bad) {
            failures.push(format!("the serial log contains {bad:?}"));
        }
    }
    if boot.timed_out {
        failures.push(format!("QEMU did not end: {}", boot.status));
    }
    for l in marks.iter().filter(|l| l.starts_with("insmod-failed")) {
        failures.push(format!("guest: {l}"));
    }

    match marker(&marks, "cmdline: ") {
        None => failures.push("no cmdline marker".into()),
        Some(got) if got.trim() != cmdline.trim() => failures.push(format!(
            "booted command line differs:\n  booted:   {}\n  expected: {}",
            got.trim(),
            cmdline.trim()
        )),
        Some(got) => {
            let toks: Vec<&str> = got.split_whitespace().collect();
            for want in ["talos.platform=metal"]
                .iter()
                .chain(setup.extra_args.iter())
            {
                if !toks.contains(want) {
                    failures.push(format!("booted command line lacks {want}"));
                }
            }
            if toks.contains(&"console=tty0") {
                failures.push("console=ttyS0 did not replace the default console=tty0".into());
            }
        }
    }

    let uki = format!("Talos-{}.efi", setup.talos_version);
    match marker(&marks, "esp: ") {
        None => failures.push("no esp marker".into()),
        Some(esp) => {
            let files = esp.split_once("files=").map(|(_, f)| f).unwrap_or("");
            if !esp.contains("label=EFI") || !files.split(',').any(|f| f == uki) {
                failures.push(format!(
                    "ESP: expected a partition named EFI with EFI/Linux/{uki}, guest saw: {esp}"
                ));
            }
            if !esp.contains("fslabel=EFI ") {
                failures.push(format!("ESP: FAT volume label is not EFI: {esp}"));
            }
        }
    }
    match marker(&marks, "esp-boot: ") {
        Some(b) if b.to_ascii_uppercase().contains("BOOTX64.EFI") => {}
        other => failures.push(format!("ESP: no EFI/boot/BOOTX64.efi: {other:?}")),
    }

    for (key, value) in &setup.meta {
        let want = hex::encode(value);
        match marker(&marks, &format!("meta-hex 0x{key:02x}=")) {
            Some(got) if got == want => {}
            Some(got) => failures.push(format!(
                "META 0x{key:02x}: read back {:?}, expected {:?}",
                String::from_utf8_lossy(&hex::decode(got).unwrap_or_default()),
                String::from_utf8_lossy(value)
            )),
            None => failures.push(format!("META 0x{key:02x}: not found by the guest")),
        }
    }
    // Optional (needs efivarfs in the guest): the loader booted from the image's EFI partition.
    if let (Some(want), Some(got)) = (
        &expect.esp_guid,
        marker(&marks, "efivar LoaderDevicePartUUID="),
    ) {
        if !got.trim().eq_ignore_ascii_case(want) {
            failures.push(format!(
                "systemd-boot reports LoaderDevicePartUUID {}, but the EFI partition's GUID is {want}",
                got.trim()
            ));
        }
    }
    if !marks.contains(&"done") {
        failures.push("no `EDGEIMAGE-E2E done` marker: /init did not finish".into());
    }

    println!("e2e: guest reported:");
    for l in &marks {
        println!("  {MARK}{l}");
    }
    if failures.is_empty() {
        println!(
            "e2e: all checks passed ({:.1} s boot, log {})",
            boot.wall.as_secs_f64(),
            boot.serial.display()
        );
        return Ok(());
    }
    eprintln!("\ne2e: relevant serial lines:");
    let interesting = [
        "panic",
        "Panic",
        "error",
        "Error",
        "failed",
        "Failed",
        "BdsDxe",
        "Linux version",
        "Run /init",
        "not syncing",
    ];
    let lines: Vec<&str> = boot.log.lines().collect();
    for l in &lines {
        if interesting.iter().any(|k| l.contains(k)) && !l.contains(MARK) {
            eprintln!("  | {l}");
        }
    }
    eprintln!("e2e: last lines of the serial log:");
    for l in &lines[lines.len().saturating_sub(25)..] {
        eprintln!("  | {l}");
    }
    if !boot.stderr.trim().is_empty() {
        eprintln!("e2e: QEMU stderr:\n{}", boot.stderr.trim());
    }
    eprintln!("e2e: full serial log: {}", boot.serial.display());
    bail!(
        "{} check(s) failed:\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            name: NAME.into(),
            talos_version: TALOS_VERSION.into(),
            kver: "6.1.0-56-amd64".into(),
            disk_mib: 256,
            esp_mib: 100,
            extra_args: EXTRA_ARGS.to_vec(),
            meta: vec![(0x0c, b"v1".to_vec()), (0x0d, b"v 2".to_vec())],
        }
    }

    fn expect() -> Expect {
        Expect {
            cmdline: "talos.platform=metal console=ttyS0 panic=-1".into(),
            esp_guid: Some("b53f94ad-f2d2-885b-8fe4-7de5001158b2".into()),
        }
    }

    fn boot(log: &str) -> qemu::Boot {
        qemu::Boot {
            serial: PathBuf::from("serial.log"),
            log: qemu::clean(log.as_bytes()),
            wall: Duration::from_secs(1),
            timed_out: false,
            status: "exit status: 0".into(),
            stderr: String::new(),
        }
    }

    fn good_log() -> String {
        "BdsDxe: starting\r\n[    0.000000] Linux version 6.1\r\n\
         EDGEIMAGE-E2E cmdline: talos.platform=metal console=ttyS0 panic=-1 \r\n\
         EDGEIMAGE-E2E esp: vda1 label=EFI fslabel=EFI files=Talos-v1.12.5.efi\r\n\
         EDGEIMAGE-E2E esp-boot: files=BOOTX64.efi\r\n\
         EDGEIMAGE-E2E meta-hex 0x0c=7631\r\n\
         \x1b[0mEDGEIMAGE-E2E meta-hex 0x0d=762032\r\n\
         EDGEIMAGE-E2E efivar LoaderDevicePartUUID=B53F94AD-F2D2-885B-8FE4-7DE5001158B2\r\n\
         EDGEIMAGE-E2E done\r\n"
            .to_string()
    }

    #[test]
    fn passes_on_expected_markers() {
        check(&boot(&good_log()), &setup(), &expect()).expect("pass");
    }

    #[test]
    fn fails_on_each_deviation() {
        let cases = [
            ("EDGEIMAGE-E2E done\r\n", "", "done"),
            ("0x0d=762032", "0x0d=762033", "META 0x0d"),
            ("panic=-1 \r", "panic=-1 quiet\r", "command line differs"),
            (
                "files=Talos-v1.12.5.efi",
                "files=Talos-v1.12.4.efi",
                "Talos-v1.12.5.efi",
            ),
            (
                "BdsDxe: starting",
                "Kernel panic - not syncing",
                "Kernel panic",
            ),
            (
                "BdsDxe: starting",
                "Initramfs unpacking failed: x",
                "Initramfs unpacking",
            ),
            (
                "EDGEIMAGE-E2E meta-hex 0x0c=7631\r\n",
                "",
                "META 0x0c: not found",
            ),
            ("=B53F94AD", "=C53F94AD", "LoaderDevicePartUUID"),
        ];
        for (from, to, want) in cases {
            let log = good_log().replace(from, to);
            let e = check(&boot(&log), &setup(), &expect()).expect_err(want);
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
    }

    #[test]
    fn profile_pins_assets_and_meta() {
        let dir = tempfile_dir();
        let paths = Paths {
            workspace: dir.clone(),
            target: dir.clone(),
            e2e: dir.clone(),
            debs: dir.join("debs"),
            root: dir.join("root"),
            assets: dir.join("assets"),
            out: dir.join("out"),
            run: dir.join("run"),
        };
        fs::create_dir_all(&paths.assets).expect("mkdir");
        for f in [
            "vmlinuz",
            "initramfs.xz",
            "systemd-boot.efi",
            "systemd-stub.efi",
        ] {
            fs::write(paths.assets.join(f), f).expect("write asset");
        }
        let p = write_profile(&paths, &setup()).expect("profile");
        let t = fs::read_to_string(p).expect("read");
        assert!(
            t.contains("extra = [\"console=ttyS0\", \"panic=-1\"]"),
            "{t}"
        );
        assert!(t.contains("\"0x0c\" = \"v1\""), "{t}");
        assert!(t.contains("\"0x0d\" = { file = \"meta-0d.txt\" }"), "{t}");
        // sha256("vmlinuz")
        assert!(t.contains(&format!(
            "kernel = {{ sha256 = \"{}\" }}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"vmlinuz"))
        )));
        assert_eq!(
            fs::read(dir.join("meta-0d.txt")).expect("meta file"),
            b"v 2"
        );
        let _ = fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xtask-e2e-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }
}
