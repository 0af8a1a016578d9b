//! `cargo xtask e2e`: the end-to-end boot test, on amd64 and arm64.
//!
//! 1. Fetch Debian's kernel, systemd-boot (trixie's 257: UKI profiles), UEFI firmware (OVMF,
//!    AAVMF), busybox and QEMU for each architecture with a private apt configuration into
//!    `target/e2e/` ([`fetch`]; cached; the host is not changed).
//! 2. Make a stand-in asset set per architecture in `target/e2e/assets-<arch>/`: Debian's
//!    kernel, a busybox initramfs whose `rootfs.sqsh` (a real squashfs) carries a kernel
//!    module tree, and whose `/init` prints what it finds ([`initramfs`], `init.sh`),
//!    systemd-boot and the stub.
//! 3. For each image ([`VARIANTS`]), write its inputs into `target/e2e/inputs/<name>/` (the
//!    `edgehostlet` extension fixture in one of the forms edgeimage reads, an extension carrying
//!    a kernel module, a machine configuration and a merge patch setting the host name) and
//!    `target/e2e/<name>.toml`, run `edgeimage build --json` and `edgeimage inspect --json`.
//! 4. Boot each image under UEFI firmware in QEMU and check the `EDGEIMAGE-E2E` lines on the
//!    serial console against the profile, the build report and the inspect output: the
//!    command line, the ESP, META; the layers of `/extensions.yaml` mounted with loop +
//!    squashfs and stacked by one overlay over `rootfs.sqsh`, the last listed on top; the
//!    combined `modules.dep` (the line of the extension's module equals what kmod's `depmod -b`
//!    writes for the same tree) and busybox `modprobe` loading the extension's module with its
//!    dependencies from the base; the configuration each delivery brings; the host name the
//!    edgehostlet entrypoint prints. The `e2e` image is also booted into its UKI's
//!    `reset-maintenance` profile, the `e2e-4k` image from a virtio disk with 4096-byte
//!    logical blocks, and `e2e-inline` carries a configuration that fills the command line to
//!    within a few bytes of the kernel's limit.
//! 5. The installer stick (`installer`) on both architectures, a personalized disk
//!    (`personalized`) on amd64.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeimage::config::delivery::{
    Delivery, EMBEDDED_NAME, INLINE_PARAM, METAL_ISO_ARG, METAL_ISO_LABEL,
};
use edgeimage::extension::fixtures::{self as ext_fixtures, Entry, Form};
use edgeimage::talos::Arch;

pub mod fetch;
mod initramfs;
mod installer;
mod personalized;
mod qemu;
mod scratch;

use qemu::Accel;

const HELP: &str = "\
usage: cargo xtask e2e [options]

Builds disk images with `edgeimage build` from a stand-in asset set (Debian kernel,
systemd-boot 257, busybox initramfs with a squashfs root file system), boots each under UEFI
firmware in QEMU, one after another, and checks what the guest reports:
  e2e            embedded configuration, edgehostlet (OCI archive), a kernel-module extension;
                 booted again into its UKI's reset-maintenance profile
  e2e-metal-iso  configuration on a `metal-iso` partition + edgehostlet (plain directory)
  e2e-inline     a configuration in talos.config.inline= filling the command line to its limit
  e2e-4k         4096-byte logical blocks, booted from a 4K virtio disk
  e2e-arm64      the e2e image for arm64, under qemu-system-aarch64 with AAVMF
then the installer stick (amd64: install, tampered payload, two matching disks, no matching
disk; arm64: install), each installed disk booted alone, and a personalized disk (amd64).
Serial logs: target/e2e/run/serial-<image>-<accel>.log.

options:
  --check-tools          say whether the test can run here (package caches present, or apt can
                         fetch); exit 0 if so, 3 if not (1 when CI=true)
  --skip-if-unavailable  when the tools cannot be had, print \"E2E SKIPPED: <why>\" and exit 0
                         (never skips when CI=true: fails instead)
  --arch amd64|arm64|all architectures to boot (default all)
  --scratch              boot one amd64 image assembled with sgdisk/mkfs.fat/mtools/objcopy
                         instead of `edgeimage build` (checks the harness itself)
  --refresh              download and unpack the packages again
  --installer-only       only the installer stick runs
  --accel auto|tcg|kvm   accelerator for amd64 (default auto: KVM only if a probe boot works;
                         arm64 always runs under TCG)
  --timeout SECS         per boot (default 300)
";

/// One image of the run.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub name: &'static str,
    pub arch: Arch,
    pub delivery: Delivery,
    /// The form of the `edgehostlet` extension (none: no extension).
    pub extension: Option<Form>,
    /// A second extension carrying a kernel module ([`initramfs::EXT_MODULE`]).
    pub modules: bool,
    /// The small worker configuration instead of the control plane one.
    pub small_config: bool,
    /// Pad the (inline) configuration until the command line is within a few bytes of the
    /// kernel's limit.
    pub fill_cmdline: bool,
    /// The disk's logical block size.
    pub sector_size: u64,
    /// Also boot the UKI's reset-maintenance profile.
    pub boot_reset: bool,
    /// An image cache with the images a v1.12.5 control plane pulls (generated OCI layouts).
    pub cache: bool,
}

const BASE: Variant = Variant {
    name: NAME,
    arch: Arch::Amd64,
    delivery: Delivery::Embedded,
    extension: Some(Form::OciTar),
    modules: true,
    small_config: false,
    fill_cmdline: false,
    sector_size: 512,
    boot_reset: true,
    cache: true,
};

/// The images built and booted, in this order (the installer uses the first of its
/// architecture, the personalized disk the second).
pub const VARIANTS: [Variant; 5] = [
    BASE,
    Variant {
        name: "e2e-metal-iso",
        delivery: Delivery::MetalIso,
        extension: Some(Form::Dir),
        modules: false,
        boot_reset: false,
        cache: false,
        ..BASE
    },
    Variant {
        name: "e2e-inline",
        delivery: Delivery::Inline,
        extension: None,
        modules: false,
        small_config: true,
        fill_cmdline: true,
        boot_reset: false,
        cache: false,
        ..BASE
    },
    Variant {
        name: "e2e-4k",
        extension: Some(Form::Dir),
        modules: false,
        sector_size: 4096,
        boot_reset: false,
        cache: false,
        ..BASE
    },
    Variant {
        name: "e2e-arm64",
        arch: Arch::Arm64,
        boot_reset: false,
        ..BASE
    },
];

/// The host name the configuration patch sets (the fixture configurations say `edge-01` or
/// nothing).
pub const PATCHED_HOSTNAME: &str = "e2e-host";
const HOSTNAME_PATCH: &str = "machine:\n  network:\n    hostname: e2e-host\n";

const MARK: &str = "EDGEIMAGE-E2E ";
const TALOS_VERSION: &str = "v1.12.5";
const NAME: &str = "e2e";
/// The kernel-module extension's name.
const MODULE_EXT: &str = "e2e-vlan";

/// Directories under `target/e2e/`.
pub struct Paths {
    pub workspace: PathBuf,
    pub e2e: PathBuf,
    pub debs: PathBuf,
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
            out: e2e.join("out"),
            run: e2e.join("run"),
            e2e,
            workspace,
        }
    }

    /// The output set `edgeimage build --out <out>` writes for profile `name`.
    pub fn set(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// The stand-in asset set of `arch`.
    pub fn assets(&self, arch: Arch) -> PathBuf {
        self.e2e.join(format!("assets-{arch}"))
    }
}

/// What the image is built from, and so what the guest must report.
pub struct Setup {
    pub name: String,
    pub arch: Arch,
    pub talos_version: String,
    pub kver: String,
    pub disk_mib: u64,
    pub esp_mib: u64,
    pub sector_size: u64,
    pub extra_args: Vec<String>,
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
    /// Only the installer runs (`--installer-only`).
    installer_only: bool,
    /// The architectures booted.
    arches: Vec<Arch>,
}

fn parse(args: &[String]) -> Result<Option<Opts>> {
    let mut o = Opts {
        check_tools: false,
        skip_if_unavailable: false,
        scratch: false,
        refresh: false,
        accel: None,
        timeout: Duration::from_secs(300),
        installer_only: false,
        arches: vec![Arch::Amd64, Arch::Arm64],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check-tools" => o.check_tools = true,
            "--skip-if-unavailable" => o.skip_if_unavailable = true,
            "--scratch" => o.scratch = true,
            "--refresh" => o.refresh = true,
            "--installer-only" => o.installer_only = true,
            "--arch" => {
                o.arches = match it.next().map(String::as_str) {
                    Some("all") => vec![Arch::Amd64, Arch::Arm64],
                    Some("amd64") => vec![Arch::Amd64],
                    Some("arm64") => vec![Arch::Arm64],
                    v => bail!("--arch takes amd64, arm64 or all, not {v:?}"),
                }
            }
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
        let checked: Result<Vec<String>, String> = opts
            .arches
            .iter()
            .map(|&a| fetch::check_tools(&paths, a))
            .collect();
        match checked.map(|v| v.join("; ")) {
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

fn setup_for(name: &str, root: &fetch::Root, sector_size: u64) -> Setup {
    // FAT32 with 4096-byte sectors needs an ESP of at least 257 MiB.
    let (disk_mib, esp_mib) = if sector_size == 4096 {
        (276, 264)
    } else {
        (256, 100)
    };
    Setup {
        name: name.to_string(),
        arch: root.arch,
        talos_version: TALOS_VERSION.to_string(),
        kver: root.kver.clone(),
        disk_mib,
        esp_mib,
        sector_size,
        extra_args: vec![format!("console={}", root.console()), "panic=-1".into()],
        meta: vec![
            (0x0c, b"e2e-meta-value-1".to_vec()),
            (0x0d, b"e2e-meta-value-2 (from meta-0d.txt)".to_vec()),
        ],
    }
}

/// The package cache, the stand-in assets and the accelerator of one architecture.
pub struct ArchRun {
    pub root: fetch::Root,
    pub accel: Option<Accel>,
}

fn run(paths: &Paths, opts: &Opts) -> Result<()> {
    if opts.scratch {
        let root = fetch::ensure(paths, Arch::Amd64, opts.refresh)?;
        make_assets(paths, &root)?;
        let setup = setup_for(NAME, &root, 512);
        println!("e2e: --scratch: assembling the image with host tools");
        let (disk, cmdline) = scratch::build(paths, &setup)?;
        let expect = Expect {
            cmdline,
            ..Expect::default()
        };
        println!("e2e: image {}", disk.display());
        println!("e2e: expected /proc/cmdline: {}", expect.cmdline);
        let (boot, _) = boot_with_accel(&root, paths, &disk, NAME, opts.accel, opts, 512)?;
        return check(&boot, &setup, &expect);
    }

    let bin = build_edgeimage()?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    let mut outcome = |what: String, r: Result<f64>| match r {
        Ok(wall) => summary.push(format!("{what}: passed ({wall:.1} s boot)")),
        Err(e) => {
            eprintln!("e2e: {what} FAILED: {e:#}");
            summary.push(format!("{what}: FAILED"));
            failed.push(format!("{what}: {e:#}"));
        }
    };
    for &arch in &opts.arches {
        let root = fetch::ensure(paths, arch, opts.refresh)?;
        make_assets(paths, &root)?;
        let mut run = ArchRun {
            root,
            accel: match arch {
                Arch::Amd64 => opts.accel,
                Arch::Arm64 => Some(Accel::Tcg),
            },
        };
        for v in VARIANTS
            .iter()
            .filter(|v| v.arch == arch && !opts.installer_only)
        {
            println!(
                "\ne2e: ===== image {} ({arch}, {} configuration) =====",
                v.name,
                v.delivery.as_str()
            );
            let r = image_run(paths, &bin, &mut run, v, opts);
            match r {
                Ok((wall, reset)) => {
                    outcome(v.name.to_string(), Ok(wall));
                    if let Some(reset) = reset {
                        outcome(format!("{} reset-maintenance profile", v.name), reset);
                    }
                }
                Err(e) => outcome(v.name.to_string(), Err(e)),
            }
        }
        let accel = run.accel.unwrap_or(Accel::Tcg);
        if arch == Arch::Amd64 && !opts.installer_only {
            println!("\ne2e: ===== personalized disk (flash --inventory, metal-iso slot) =====");
            outcome(
                "personalized".into(),
                personalized::run(paths, &run.root, &bin, accel, opts),
            );
        }
        match installer::run(paths, &run.root, &bin, accel, opts) {
            Ok(results) => {
                for (what, r) in results {
                    outcome(what, r);
                }
            }
            Err(e) => outcome(format!("installer ({arch})"), Err(e)),
        }
    }
    println!("\ne2e: summary:");
    for l in &summary {
        println!("  {l}");
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} runs failed:\n{}",
            failed.len(),
            summary.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// Build, inspect and boot one image; then, for [`Variant::boot_reset`], boot its
/// reset-maintenance profile (the second result). Returns the boot's wall time.
fn image_run(
    paths: &Paths,
    bin: &Path,
    run: &mut ArchRun,
    v: &Variant,
    opts: &Opts,
) -> Result<(f64, Option<Result<f64>>)> {
    let root = &run.root;
    let setup = setup_for(v.name, root, v.sector_size);
    let inputs = write_inputs(paths, v, root)?;
    let profile = write_profile(paths, &setup, Some(&inputs))?;
    let cmdline_len = if v.fill_cmdline {
        Some(fill_cmdline(paths, &inputs, &profile)?)
    } else {
        None
    };
    let (disk, mut expect) = build_with_edgeimage(paths, bin, &setup, &profile, Some(v))?;
    expect.cmdline_len = cmdline_len;
    if v.modules {
        expect.modules_dep = Some(kmod_modules_dep_line(paths, root)?);
    }
    println!("e2e: image {}", disk.display());
    println!("e2e: expected /proc/cmdline: {}", expect.cmdline);
    let (boot, a) = boot_with_accel(root, paths, &disk, v.name, run.accel, opts, v.sector_size)?;
    run.accel = Some(a);
    check(&boot, &setup, &expect)?;
    let wall = boot.wall.as_secs_f64();
    let reset = v
        .boot_reset
        .then(|| boot_reset_profile(paths, root, &disk, &setup, &expect, a, opts));
    Ok((wall, reset))
}

/// What the image's own description (`edgeimage inspect`), its build report and its profile
/// say the guest must see.
#[derive(Default)]
pub struct Expect {
    /// The UKI's `.cmdline`.
    pub cmdline: String,
    /// GUID of the EFI partition, which systemd-boot reports as `LoaderDevicePartUUID`.
    pub esp_guid: Option<String>,
    /// `(name, version)` of each layer of `/extensions.yaml`, in order; empty: no
    /// `/extensions.yaml`.
    pub extensions: Vec<(String, String)>,
    /// How the configuration is delivered and what the guest must find.
    pub config: Option<ExpectConfig>,
    /// The host name the edgehostlet entrypoint must print (`None`: it is not in the image).
    pub edgehostlet_hostname: Option<String>,
    /// The `modules.dep` line of the extension's module, as kmod's `depmod -b` writes it for
    /// the same tree (`None`: no module extension).
    pub modules_dep: Option<String>,
    /// The boot profile booted, as systemd-boot names its entry (`None`: the default, main).
    pub entry: Option<String>,
    /// The length of the booted command line (`cmdline` may show an inline configuration by
    /// its digest only).
    pub cmdline_len: Option<usize>,
    /// The references the image cache must resolve, sorted (`None`: no cache partition).
    pub cache_images: Option<Vec<String>>,
}

#[derive(Clone)]
pub struct ExpectConfig {
    pub delivery: Delivery,
    /// The build report's `.config.sha256`: SHA-256 of the delivered configuration bytes.
    pub sha256: String,
    /// Inline delivery: SHA-256 of the concatenated `talos.config.inline=` values of the
    /// built command line.
    pub inline_sha256: Option<String>,
    /// The host name the init must set from the configuration (not for inline: busybox has
    /// no zstd).
    pub hostname: Option<String>,
}

/// The inputs a variant's profile names, relative to the profile's directory.
pub struct Inputs {
    /// The extension fixtures and their pins, in layer order.
    pub extensions: Vec<(String, String)>,
    pub config: String,
    pub patches: Vec<String>,
    pub delivery: Delivery,
    /// The image cache: (reference, pinned digest, archive).
    pub cache: Vec<(String, String, String)>,
    /// `[upgrade_image]`: (reference, installer-base digest, its archive).
    pub upgrade: Option<(String, String, String)>,
}

/// The reference of the e2e images' upgrade installer image (also cached).
pub const UPGRADE_REFERENCE: &str = "registry.edge.local/e2e/installer:v1.12.5";

/// The manifest of the kernel-module extension.
fn module_ext_manifest(kver: &str) -> String {
    format!(
        "version: v1alpha1\nmetadata:\n  name: {MODULE_EXT}\n  version: {kver}\n  author: edgeimage e2e\n  \
         description: Debian's 802.1Q VLAN module, which the base rootfs.sqsh does not carry\n  \
         compatibility:\n    talos:\n      version: \">= v1.10.0\"\n"
    )
}

/// Writes the variant's extension fixtures, configuration and patch into
/// `target/e2e/inputs/<name>/` (recreated on every run).
fn write_inputs(paths: &Paths, v: &Variant, root: &fetch::Root) -> Result<Inputs> {
    let dir = paths.e2e.join("inputs").join(v.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rel = |p: &Path| -> Result<String> {
        Ok(p.strip_prefix(&paths.e2e)
            .with_context(|| format!("{} is not under {}", p.display(), paths.e2e.display()))?
            .to_string_lossy()
            .into_owned())
    };
    let mut extensions = Vec::new();
    let mut add = |entries: &[Entry], form: Form, sub: &str| -> Result<()> {
        let d = dir.join(sub);
        fs::create_dir_all(&d)?;
        let p = ext_fixtures::write(entries, form, &d, v.arch)
            .with_context(|| format!("writing the {sub} fixture ({form:?}) in {}", d.display()))?;
        let pin = edgeimage::extension::input_sha256(&p)
            .with_context(|| format!("pinning {}", p.display()))?;
        println!(
            "e2e: extension {sub} ({form:?}) {} sha256 {pin}",
            p.display()
        );
        extensions.push((rel(&p)?, pin));
        Ok(())
    };
    if let Some(form) = v.extension {
        add(&ext_fixtures::edgehostlet(), form, "edgehostlet")?;
    }
    if v.modules {
        let kdir = format!("rootfs/usr/lib/modules/{}", root.kver);
        let ko = initramfs::ext_module_path(root)?;
        let data = fs::read(&ko).with_context(|| format!("reading {}", ko.display()))?;
        let entries = vec![
            Entry::file("manifest.yaml", module_ext_manifest(&root.kver), 0o644),
            Entry::dir("rootfs"),
            Entry::dir("rootfs/usr"),
            Entry::dir("rootfs/usr/lib"),
            Entry::dir("rootfs/usr/lib/modules"),
            Entry::dir(&kdir),
            Entry::dir(&format!("{kdir}/extras")),
            Entry::file(
                &format!("{kdir}/extras/{}.ko", initramfs::EXT_MODULE),
                data,
                0o644,
            ),
        ];
        add(&entries, Form::Tar, MODULE_EXT)?;
    }
    let yaml = if v.small_config {
        edgeimage::config::fixtures::worker_yaml()
    } else {
        edgeimage::config::fixtures::controlplane_yaml()
    };
    let cfg = dir.join("machine.yaml");
    fs::write(&cfg, yaml).with_context(|| format!("writing {}", cfg.display()))?;
    let patch = dir.join("hostname-patch.yaml");
    fs::write(&patch, HOSTNAME_PATCH).with_context(|| format!("writing {}", patch.display()))?;
    let mut patches = vec![rel(&patch)?];
    let mut cache = Vec::new();
    let mut upgrade = None;
    if v.cache {
        use edgeimage::imagecache::fixtures;
        let p = dir.join("image-cache-patch.yaml");
        fs::write(&p, fixtures::CONFIG_PATCH)
            .with_context(|| format!("writing {}", p.display()))?;
        patches.push(rel(&p)?);
        fs::create_dir_all(dir.join("images"))?;
        for (i, im) in fixtures::talos_1_12_5_control_plane(v.arch)?
            .into_iter()
            .enumerate()
        {
            let a = dir.join(format!("images/{i}.tar"));
            fs::write(&a, im.tar()?).with_context(|| format!("writing {}", a.display()))?;
            cache.push((im.reference, im.digest, rel(&a)?));
        }
        let base = fixtures::image(
            "ghcr.io/siderolabs/installer-base:v1.12.5",
            v.arch,
            "installer-base",
            true,
        )?;
        let a = dir.join("images/installer-base.tar");
        fs::write(&a, base.tar()?).with_context(|| format!("writing {}", a.display()))?;
        upgrade = Some((UPGRADE_REFERENCE.to_string(), base.digest, rel(&a)?));
    }
    Ok(Inputs {
        extensions,
        config: rel(&cfg)?,
        patches,
        delivery: v.delivery,
        cache,
        upgrade,
    })
}

/// `(name, version)` of the edgehostlet fixture's manifest.
fn edgehostlet_meta() -> (String, String) {
    let field = |k: &str| {
        ext_fixtures::EDGEHOSTLET_MANIFEST
            .lines()
            .find_map(|l| l.strip_prefix(&format!("  {k}: ")))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (field("name"), field("version"))
}

/// The digests `edgeimage inspect` (and the guest's init) show for each
/// `talos.config.inline=` value: `talos.config.inline=<redacted:sha256=HEX>` → HEX.
fn inline_digests(cmdline: &str) -> Vec<String> {
    let key = format!("{INLINE_PARAM}=<redacted:sha256=");
    cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix(key.as_str()))
        .map(|v| v.trim_end_matches('>').to_string())
        .collect()
}

fn make_assets(paths: &Paths, root: &fetch::Root) -> Result<()> {
    let a = &paths.assets(root.arch);
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

/// `target/e2e/<name>.toml`; META key 0x0c inline, every other key from a file; the
/// extension and configuration of `inputs`.
fn write_profile(paths: &Paths, setup: &Setup, inputs: Option<&Inputs>) -> Result<PathBuf> {
    let mut t = String::new();
    t.push_str("# Written by `cargo xtask e2e`; regenerated on every run.\n");
    t.push_str(&format!("name = {}\n", toml_str(&setup.name)));
    t.push_str(&format!("arch = \"{}\"\n", setup.arch));
    if setup.sector_size != 512 {
        t.push_str(&format!("sector_size = {}\n", setup.sector_size));
    }
    t.push_str(&format!(
        "talos_version = {}\n",
        toml_str(&setup.talos_version)
    ));
    t.push_str(&format!("disk_size = \"{}MiB\"\n", setup.disk_mib));
    t.push_str(&format!(
        "esp_size = \"{}MiB\"\n\n[assets]\nsource = \"assets-{}\"\n",
        setup.esp_mib, setup.arch
    ));
    for (key, file) in [
        ("kernel", "vmlinuz"),
        ("initramfs", "initramfs.xz"),
        ("systemd_boot", "systemd-boot.efi"),
        ("systemd_stub", "systemd-stub.efi"),
    ] {
        let sum = fetch::sha256_file(&paths.assets(setup.arch).join(file))?;
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
    if let Some(inputs) = inputs {
        for (path, pin) in &inputs.extensions {
            t.push_str(&format!(
                "\n[[extensions]]\npath = {}\nsha256 = \"{pin}\"\n",
                toml_str(path)
            ));
        }
        let patches: Vec<String> = inputs.patches.iter().map(|p| toml_str(p)).collect();
        t.push_str(&format!(
            "\n[config]\npath = {}\npatches = [{}]\ndelivery = \"{}\"\n",
            toml_str(&inputs.config),
            patches.join(", "),
            inputs.delivery.as_str()
        ));
        if !inputs.cache.is_empty() {
            t.push_str("\n[image_cache]\n");
            for (reference, digest, archive) in &inputs.cache {
                t.push_str(&format!(
                    "\n[[image_cache.images]]\nreference = {}\ndigest = \"{digest}\"\narchive = {}\n",
                    toml_str(reference),
                    toml_str(archive)
                ));
            }
        }
        if let Some((reference, digest, archive)) = &inputs.upgrade {
            t.push_str(&format!(
                "\n[upgrade_image]\nreference = {}\nbase = {{ archive = {}, digest = \"{digest}\" }}\n",
                toml_str(reference),
                toml_str(archive)
            ));
        }
    }
    let p = paths.e2e.join(format!("{}.toml", setup.name));
    fs::write(&p, t).with_context(|| format!("writing {}", p.display()))?;
    println!("e2e: profile {}", p.display());
    Ok(p)
}

/// Builds edgeimage (release); returns the binary.
fn build_edgeimage() -> Result<PathBuf> {
    crate::util::edgeimage_bin()
}

fn json_str<'a>(v: &'a serde_json::Value, ptr: &str, what: &str) -> Result<&'a str> {
    v.pointer(ptr)
        .and_then(|v| v.as_str())
        .with_context(|| format!("{what} has no string at {ptr}"))
}

/// Runs `build --json` and `inspect --json`; returns the raw image and what the report,
/// inspect and the variant say the guest must see. Checks the report against the variant
/// (extensions, delivery, the inline value decoding to the reported configuration).
fn build_with_edgeimage(
    paths: &Paths,
    bin: &Path,
    setup: &Setup,
    profile: &Path,
    variant: Option<&Variant>,
) -> Result<(PathBuf, Expect)> {
    let raw = paths.set(&setup.name).join(format!("{}.raw", setup.name));
    let zst = paths
        .set(&setup.name)
        .join(format!("{}.raw.zst", setup.name));
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("build")
        .arg("--profile")
        .arg(profile)
        .arg("--out")
        .arg(&paths.out)
        .arg("--raw")
        .arg("--json")
        .current_dir(&paths.workspace)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stdout));
        bail!(
            "`{} build --profile {} --out {} --raw --json` failed ({})",
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
    let report_path = paths.e2e.join(format!("{}.report.json", setup.name));
    let _ = fs::write(&report_path, &out.stdout);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`edgeimage build --json` printed no valid JSON (see {})",
            report_path.display()
        )
    })?;
    let report_what = format!("the build report ({})", report_path.display());

    let out = Command::new(bin)
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
    let inspect_path = paths.e2e.join(format!("{}.inspect.json", setup.name));
    let _ = fs::write(&inspect_path, &out.stdout);
    let inspect_what = format!("`edgeimage inspect --json` ({})", inspect_path.display());
    let cmdline = json_str(&json, "/uki/cmdline", &inspect_what)?.to_string();
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
    let mut expect = Expect {
        cmdline,
        esp_guid,
        ..Expect::default()
    };
    // The UKI as `inspect` reads it: `.uname` is the kernel release on both architectures
    // (arm64: from the base initramfs's module tree), and Talos v1.12 has two boot profiles.
    let uname = json.pointer("/uki/uname").and_then(|u| u.as_str());
    if uname != Some(setup.kver.as_str()) {
        bail!(
            "{inspect_what}: the UKI's .uname is {uname:?}, the kernel is {}",
            setup.kver
        );
    }
    let profiles: Vec<&str> = json
        .pointer("/uki/profiles")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    if profiles != ["main", edgeimage::talos::RESET_PROFILE_ID] {
        bail!("{inspect_what}: the UKI's boot profiles are {profiles:?}, Talos v1.12 has main and reset-maintenance");
    }
    let Some(v) = variant else {
        return Ok((raw, expect));
    };

    // The report against the profile.
    let mut bad = Vec::new();
    let report_cmdline = json_str(&report, "/cmdline", &report_what)?;
    if report_cmdline != expect.cmdline {
        bad.push(format!(
            "the report's .cmdline differs from the image's:\n  report: {report_cmdline}\n  image:  {}",
            expect.cmdline
        ));
    }
    let delivery = json_str(&report, "/config/delivery", &report_what)?;
    if delivery != v.delivery.as_str() {
        bad.push(format!(
            "the report's .config.delivery is {delivery:?}, the profile says {:?}",
            v.delivery.as_str()
        ));
    }
    let sha256 = json_str(&report, "/config/sha256", &report_what)?.to_string();
    let mut want_ext = Vec::new();
    if v.extension.is_some() {
        want_ext.push(edgehostlet_meta());
    }
    if v.modules {
        want_ext.push((MODULE_EXT.to_string(), setup.kver.clone()));
    }
    if v.delivery == Delivery::Embedded {
        want_ext.push((EMBEDDED_NAME.to_string(), sha256.clone()));
    }
    let got_ext: Vec<(String, String)> = report
        .pointer("/extensions")
        .and_then(|e| e.as_array())
        .with_context(|| format!("{report_what} has no array at .extensions"))?
        .iter()
        .map(|e| {
            let f = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
            (f("name"), f("version"))
        })
        .collect();
    if got_ext != want_ext {
        bad.push(format!(
            "the report's .extensions (name, version) are {got_ext:?}, expected {want_ext:?}"
        ));
    }
    let toks: Vec<&str> = expect.cmdline.split_whitespace().collect();
    // Inspect shows the inline configuration only as a digest of the argument's value, and
    // reads the configuration back out of the image (base64, zstd) for its `.config`.
    let inline = inline_digests(&expect.cmdline);
    match v.delivery {
        Delivery::MetalIso if !toks.contains(&METAL_ISO_ARG) => {
            bad.push(format!("the command line lacks {METAL_ISO_ARG}"))
        }
        Delivery::Inline if inline.len() != 1 => bad.push(format!(
            "the command line has {} {INLINE_PARAM}= arguments, expected one",
            inline.len()
        )),
        _ => {}
    }
    let inspected = |k: &str| {
        json.pointer(&format!("/config/{k}"))
            .and_then(|x| x.as_str())
    };
    if inspected("delivery") != Some(v.delivery.as_str()) || inspected("sha256") != Some(&sha256) {
        bad.push(format!(
            "inspect reads a {:?} configuration with sha256 {:?} from the image, the report \
             says {} with sha256 {sha256}",
            inspected("delivery"),
            inspected("sha256"),
            v.delivery.as_str()
        ));
    }
    if v.delivery != Delivery::Embedded && inspected("hostname") != Some(PATCHED_HOSTNAME) {
        bad.push(format!(
            "inspect reads host name {:?} from the image's configuration, expected \
             {PATCHED_HOSTNAME} (the patch was not applied?)",
            inspected("hostname")
        ));
    }
    if v.delivery != Delivery::Inline && !inline.is_empty() {
        bad.push(format!(
            "{INLINE_PARAM}= on the command line of a {} build",
            v.delivery.as_str()
        ));
    }
    if v.delivery != Delivery::MetalIso && toks.contains(&METAL_ISO_ARG) {
        bad.push(format!(
            "{METAL_ISO_ARG} on the command line of a {} build",
            v.delivery.as_str()
        ));
    }
    if !bad.is_empty() {
        bail!(
            "the build does not match the profile:\n  - {}",
            bad.join("\n  - ")
        );
    }
    println!(
        "e2e: report: extensions {:?}, config {} sha256 {sha256}",
        want_ext,
        v.delivery.as_str()
    );
    expect.config = Some(ExpectConfig {
        delivery: v.delivery,
        inline_sha256: (v.delivery == Delivery::Inline).then(|| inline.concat()),
        hostname: (v.delivery != Delivery::Inline).then(|| PATCHED_HOSTNAME.to_string()),
        sha256,
    });
    expect.edgehostlet_hostname = v.extension.map(|_| PATCHED_HOSTNAME.to_string());
    if v.cache {
        let mut refs: Vec<String> = edgeimage::imagecache::fixtures::CONTROL_PLANE_1_12_5
            .iter()
            .map(|r| r.to_string())
            .chain([UPGRADE_REFERENCE.to_string()])
            .collect();
        refs.sort();
        expect.cache_images = Some(refs);
    }
    if v.modules {
        // The combined modules.dep layer, last (Talos's imager appends it after every other).
        want_ext.push((
            edgeimage::extension::modules::LAYER_NAME.to_string(),
            setup.kver.clone(),
        ));
    }
    expect.extensions = want_ext;
    Ok((raw, expect))
}

/// Boots `disk` (serial log `serial-<tag>-<accel>.log`) with `accel`, or, when that is
/// `None`, with KVM if a probe boot proves it works and TCG otherwise; returns the boot and
/// the accelerator used, for the next boots.
fn boot_with_accel(
    root: &fetch::Root,
    paths: &Paths,
    disk: &Path,
    tag: &str,
    accel: Option<Accel>,
    opts: &Opts,
    block_size: u64,
) -> Result<(qemu::Boot, Accel)> {
    let accel = match accel {
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
                let b = qemu::boot(
                    root,
                    &paths.run,
                    disk,
                    tag,
                    Accel::Kvm,
                    Duration::from_secs(90),
                    block_size,
                )?;
                if b.log.contains(&format!("{MARK}done")) {
                    println!("e2e: KVM works ({:.1} s)", b.wall.as_secs_f64());
                    return Ok((b, Accel::Kvm));
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
        "e2e: booting {tag} under OVMF with {} (timeout {} s) …",
        accel.name(),
        opts.timeout.as_secs()
    );
    let b = qemu::boot(root, &paths.run, disk, tag, accel, opts.timeout, block_size)?;
    println!(
        "e2e: QEMU ended after {:.1} s wall ({}); serial log {}",
        b.wall.as_secs_f64(),
        b.status,
        b.serial.display()
    );
    Ok((b, accel))
}

/// Pad the inline configuration with a merge patch (`machine.nodeAnnotations`, text that
/// compresses badly) as far as the build still accepts it: the command line then ends within a
/// few bytes of the kernel's limit (less the reset profile's argument), and the boot proves a
/// configuration that large arrives whole. Rewrites `profile` with the padding patch.
fn fill_cmdline(paths: &Paths, inputs: &Inputs, profile: &Path) -> Result<usize> {
    use sha2::{Digest, Sha256};
    let pad = paths.e2e.join(format!(
        "{}/padding-patch.yaml",
        Path::new(&inputs.config)
            .parent()
            .unwrap_or(Path::new(""))
            .display()
    ));
    let text = fs::read_to_string(profile)?;
    let last = inputs
        .patches
        .last()
        .context("the inline variant has a patch")?;
    let with_pad = text.replacen(
        &format!("{}]", toml_str(last)),
        &format!(
            "{}, {}]",
            toml_str(last),
            toml_str(&pad.strip_prefix(&paths.e2e)?.to_string_lossy())
        ),
        1,
    );
    if with_pad == text {
        bail!(
            "the profile {} lists no patches to add the padding to",
            profile.display()
        );
    }
    fs::write(profile, &with_pad)?;
    let mut filler = String::new();
    let mut h = Sha256::digest(b"edgeimage e2e padding").to_vec();
    while filler.len() < 6000 {
        filler.push_str(&hex::encode(&h));
        h = Sha256::digest(&h).to_vec();
    }
    let cmdline_with = |n: usize| -> Result<Option<usize>> {
        fs::write(
            &pad,
            format!(
                "machine:\n  nodeAnnotations:\n    e2e.edgeimage/padding: \"{}\"\n",
                &filler[..n]
            ),
        )?;
        let p = edgeimage::profile::Profile::load(profile)?;
        Ok(edgeimage::plan::plan(&p, 0)
            .ok()
            .map(|plan| plan.cmdline.len()))
    };
    if cmdline_with(0)?.is_none() {
        bail!("the inline configuration does not fit the command line even unpadded");
    }
    let (mut lo, mut hi) = (0usize, filler.len());
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if cmdline_with(mid)?.is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let len = cmdline_with(lo)?.unwrap_or(0);
    let limit = Arch::Amd64.max_cmdline();
    println!(
        "e2e: inline configuration padded by {lo} characters: the command line is {len} bytes, \
         the reset profile's {} (the kernel keeps {limit})",
        len + 1 + edgeimage::talos::RESET_PROFILE_ARG.len()
    );
    if len + 1 + edgeimage::talos::RESET_PROFILE_ARG.len() + 24 < limit {
        bail!("the padded command line ({len} bytes) is not close to the limit");
    }
    Ok(len)
}

/// The `modules.dep` line kmod's `depmod -b` writes for the extension's module over the same
/// tree as the image's (the base modules of `rootfs.sqsh` and the extension's, with Talos's
/// `search extras built-in`).
fn kmod_modules_dep_line(paths: &Paths, root: &fetch::Root) -> Result<String> {
    let tree = paths.e2e.join(format!("depmod-{}", root.arch));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let kdir = tree.join("lib/modules").join(&root.kver);
    let modules = root.modules();
    let mut order = String::new();
    for m in initramfs::base_module_paths(root)? {
        let rel = m.strip_prefix(&modules)?;
        let to = kdir.join(rel);
        fs::create_dir_all(to.parent().context("a module path")?)?;
        fs::copy(&m, &to)?;
        order.push_str(&format!("{}\n", rel.display()));
    }
    fs::write(kdir.join("modules.order"), order)?;
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        fs::copy(modules.join(f), kdir.join(f))?;
    }
    fs::create_dir_all(kdir.join("extras"))?;
    fs::copy(
        initramfs::ext_module_path(root)?,
        kdir.join(format!("extras/{}.ko", initramfs::EXT_MODULE)),
    )?;
    let conf = tree.join("extra-modules.conf");
    fs::write(&conf, "search extras built-in\n")?;
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("kmod's depmod is not installed (apt-get install kmod; .ci/run does)")?;
    fetch::run_quiet(
        Command::new(depmod)
            .args(["--all", "--basedir"])
            .arg(&tree)
            .arg("--config")
            .arg(&conf)
            .arg(&root.kver),
    )?;
    let text = fs::read_to_string(kdir.join("modules.dep"))?;
    let want = format!("extras/{}.ko:", initramfs::EXT_MODULE);
    text.lines()
        .find(|l| l.starts_with(&want))
        .map(str::to_string)
        .with_context(|| format!("kmod's modules.dep has no line for {want}"))
}

/// Boot a copy of `disk` whose `loader.conf` makes systemd-boot start the UKI's
/// `reset-maintenance` profile (`default *@reset-maintenance`): the guest must see that
/// profile's command line and systemd-boot's entry for it.
fn boot_reset_profile(
    paths: &Paths,
    root: &fetch::Root,
    disk: &Path,
    setup: &Setup,
    expect: &Expect,
    accel: Accel,
    opts: &Opts,
) -> Result<f64> {
    println!(
        "\ne2e: ===== image {}: the reset-maintenance boot profile =====",
        setup.name
    );
    let copy = paths.run.join(format!("{}-reset.raw", setup.name));
    let o = Command::new("cp")
        .args(["--sparse=always"])
        .arg(disk)
        .arg(&copy)
        .output()?;
    if !o.status.success() {
        bail!(
            "copying {}: {}",
            disk.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let conf = paths.run.join("loader-reset.conf");
    fs::write(&conf, "timeout 0\ndefault *@reset-maintenance\n")?;
    let img = format!("{}@@{}", copy.display(), 1 << 20);
    fetch::run_quiet(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &img])
            .arg(&conf)
            .arg("::loader/loader.conf"),
    )
    .context("mcopy of loader.conf (mtools)")?;
    let reset_cmdline = format!("{} {}", expect.cmdline, edgeimage::talos::RESET_PROFILE_ARG);
    let uki = format!("talos-{}.efi", setup.talos_version.to_ascii_lowercase());
    let reset = Expect {
        cmdline: reset_cmdline,
        entry: Some(format!("{uki}@{}", edgeimage::talos::RESET_PROFILE_ID)),
        extensions: expect.extensions.clone(),
        config: expect.config.clone(),
        edgehostlet_hostname: expect.edgehostlet_hostname.clone(),
        modules_dep: expect.modules_dep.clone(),
        esp_guid: expect.esp_guid.clone(),
        cmdline_len: None,
        cache_images: expect.cache_images.clone(),
    };
    let boot = qemu::boot(
        root,
        &paths.run,
        &copy,
        &format!("{}-reset", setup.name),
        accel,
        opts.timeout,
        setup.sector_size,
    )?;
    println!(
        "e2e: QEMU ended after {:.1} s wall ({}); serial log {}",
        boot.wall.as_secs_f64(),
        boot.status,
        boot.serial.display()
    );
    check(&boot, setup, &reset)?;
    Ok(boot.wall.as_secs_f64())
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
    for l in marks
        .iter()
        .filter(|l| l.starts_with("insmod-failed") || l.starts_with("error"))
    {
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
            for want in std::iter::once("talos.platform=metal")
                .chain(setup.extra_args.iter().map(String::as_str))
            {
                if !toks.contains(&want) {
                    failures.push(format!("booted command line lacks {want}"));
                }
            }
            if toks.contains(&"console=tty0") {
                failures.push(format!(
                    "{} did not replace the default console=tty0",
                    setup.extra_args[0]
                ));
            }
            // The whole command line arrived (the kernel cuts off past its limit).
            if let Some(want) = expect.cmdline_len {
                let got = marker(&marks, "cmdline-length: ").map(str::trim);
                if got.and_then(|n| n.parse::<usize>().ok()) != Some(want) {
                    failures.push(format!(
                        "the guest's /proc/cmdline is {got:?} bytes, the built one {want}"
                    ));
                }
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
    // The disk's logical block size as the guest's kernel sees it.
    match marker(&marks, "logical-block-size: ").and_then(|m| m.split_once('=')) {
        Some((_, n)) if n.trim() == setup.sector_size.to_string() => {}
        got => failures.push(format!(
            "the boot disk's logical block size is {got:?}, the image is for {}",
            setup.sector_size
        )),
    }
    let boot_name = setup.arch.efi_boot_name().to_ascii_uppercase();
    match marker(&marks, "esp-boot: ") {
        Some(b) if b.to_ascii_uppercase().contains(&boot_name) => {}
        other => failures.push(format!(
            "ESP: no EFI/boot/{}: {other:?}",
            setup.arch.efi_boot_name()
        )),
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
    check_extensions(&marks, expect, &mut failures);
    check_config(&marks, expect, &mut failures);
    check_modules(&marks, expect, &mut failures);
    check_cache(&marks, expect, &mut failures);
    if let Some(entry) = &expect.entry {
        match marker(&marks, "efivar LoaderEntrySelected=") {
            Some(got) if got.trim() == entry => {}
            got => failures.push(format!(
                "systemd-boot started entry {got:?}, expected {entry:?} (the boot profile)"
            )),
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

/// Every marker line `EDGEIMAGE-E2E <key>…` (text after the key).
fn markers<'a>(lines: &[&'a str], key: &str) -> Vec<&'a str> {
    lines.iter().filter_map(|l| l.strip_prefix(key)).collect()
}

/// `key=value` out of a marker's space-separated fields.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

/// The layers of `/extensions.yaml`, as mounted, and the edgehostlet entrypoint's output.
fn check_extensions(marks: &[&str], expect: &Expect, failures: &mut Vec<String>) {
    let got: Vec<(String, String)> = markers(marks, "extension: ")
        .iter()
        .map(|l| {
            let f = |k| field(l, k).unwrap_or("").to_string();
            (f("name"), f("version"))
        })
        .collect();
    if got != expect.extensions {
        failures.push(format!(
            "extensions: the guest listed (name, version) {got:?} from /extensions.yaml, \
             expected {:?}",
            expect.extensions
        ));
    }
    let n = expect.extensions.len();
    if n > 0 {
        for (i, (name, _)) in expect.extensions.iter().enumerate() {
            // Talos names the combined modules.dep layer by its name, the others by index.
            let image = if name == edgeimage::extension::modules::LAYER_NAME {
                edgeimage::extension::modules::LAYER_IMAGE.to_string()
            } else {
                format!("{i}.sqsh")
            };
            let want = format!("{i} image={image} ");
            if !markers(marks, "layer: ")
                .iter()
                .any(|l| l.starts_with(&want))
            {
                failures.push(format!("extensions: layer {i} ({image}) was not mounted"));
            }
        }
        if marker(marks, "extensions: ") != Some(format!("layers={n}").as_str()) {
            failures.push(format!(
                "extensions: expected layers={n}, guest: {:?}",
                marker(marks, "extensions: ")
            ));
        }
        // Talos's order: the last listed on top, overlayfs's leftmost lowerdir is the top.
        let mut lower: Vec<String> = (0..n).rev().map(|i| format!("/layers/{i}")).collect();
        lower.push("/base".into());
        let lower = lower.join(":");
        match marker(marks, "overlay: ") {
            None => failures.push("extensions: no overlay marker".into()),
            Some(o) => {
                if field(o, "lowerdir") != Some(lower.as_str()) {
                    failures.push(format!("overlay: expected lowerdir={lower}, guest: {o}"));
                }
                if o.split_once(" base=").map(|(_, b)| b) != Some(initramfs::BASE_MARK) {
                    failures.push(format!(
                        "overlay: the base (rootfs.sqsh stand-in) does not show through: {o}"
                    ));
                }
                if let Some(want) = expect.extensions.iter().find(|e| e.0 == "edgehostlet") {
                    if field(o, "service-definition") != Some(want.0.as_str()) {
                        failures.push(format!(
                            "overlay: the edgehostlet layer does not hide the base's service \
                             definition: {o}"
                        ));
                    }
                }
            }
        }
    } else if marker(marks, "overlay: ").is_some() {
        failures.push("extensions: an overlay was mounted, but no extension was expected".into());
    }
    let host = marker(marks, "edgehostlet: hostname=");
    match (&expect.edgehostlet_hostname, host) {
        (None, None) => {}
        (Some(want), Some(got)) if got == want => {}
        (Some(want), got) => failures.push(format!(
            "edgehostlet: expected it to print hostname={want}, guest: {got:?}"
        )),
        (None, Some(got)) => failures.push(format!(
            "edgehostlet ran (hostname={got}), but the image should not hold it"
        )),
    }
}

/// What the init resolved in the image cache partition: every expected reference, complete.
fn check_cache(marks: &[&str], expect: &Expect, failures: &mut Vec<String>) {
    let summary = marker(marks, "image-cache: ");
    let Some(want) = &expect.cache_images else {
        if let Some(s) = summary {
            failures.push(format!(
                "image cache: found one ({s}), but none was expected"
            ));
        }
        return;
    };
    for bad in markers(marks, "cache-bad: ") {
        failures.push(format!("image cache: {bad}"));
    }
    let mut got: Vec<String> = markers(marks, "cache-image: ")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    got.sort();
    if &got != want {
        failures.push(format!(
            "image cache: the guest resolved {got:?}, the profile caches {want:?}"
        ));
    }
    let expected = format!("images={} incomplete=0", want.len());
    if summary != Some(expected.as_str()) {
        failures.push(format!(
            "image cache: the guest reports {summary:?}, expected {expected:?}"
        ));
    }
}

/// The combined modules.dep and busybox `modprobe` of the extension's module.
fn check_modules(marks: &[&str], expect: &Expect, failures: &mut Vec<String>) {
    let line = marker(marks, "modules-dep: ");
    let Some(want) = &expect.modules_dep else {
        if let Some(l) = line {
            failures.push(format!(
                "modules: a module test ran, but none was expected: {l}"
            ));
        }
        return;
    };
    match line {
        Some(got) if got.trim() == want => {}
        got => failures.push(format!(
            "modules: the image's modules.dep line is {got:?}, kmod's depmod -b writes {want:?}"
        )),
    }
    match marker(marks, "modprobe: ") {
        Some(m) if m.starts_with(&format!("{} loaded=1 ", initramfs::EXT_MODULE)) => {
            for dep in initramfs::BASE_MODULES {
                if !field(m, "with").unwrap_or("").split(',').any(|x| x == *dep) {
                    failures.push(format!(
                        "modules: {dep} is not in /proc/modules after modprobe: {m}"
                    ));
                }
            }
        }
        got => failures.push(format!(
            "modules: modprobe {} did not load it: {got:?}",
            initramfs::EXT_MODULE
        )),
    }
}

/// What each configuration source yielded.
fn check_config(marks: &[&str], expect: &Expect, failures: &mut Vec<String>) {
    let embedded = marker(marks, "config sha256=");
    let iso = marker(marks, "metal-iso config sha256=");
    let inline = marker(marks, "inline sha256=");
    let Some(c) = &expect.config else {
        for (what, m) in [
            ("embedded", embedded),
            ("metal-iso", iso),
            ("inline", inline),
        ] {
            if let Some(m) = m {
                failures.push(format!(
                    "config: the guest found an unexpected {what} configuration: {m}"
                ));
            }
        }
        return;
    };
    let first = |m: Option<&str>| m.map(|m| m.split(' ').next().unwrap_or("").to_string());
    match c.delivery {
        Delivery::Embedded => match first(embedded) {
            Some(got) if got == c.sha256 => {}
            got => failures.push(format!(
                "config: /usr/local/etc/talos/config.yaml sha256 {got:?}, the report says {}",
                c.sha256
            )),
        },
        Delivery::MetalIso => match iso {
            None => failures.push("config: the guest found no config.yaml on a metal-iso partition".into()),
            Some(m) => {
                if first(Some(m)).as_deref() != Some(c.sha256.as_str()) {
                    failures.push(format!(
                        "config: metal-iso config.yaml: {m}; the report says sha256 {}",
                        c.sha256
                    ));
                }
                if field(m, "fslabel") != Some(METAL_ISO_LABEL) {
                    failures.push(format!("config: the metal-iso FAT label is not {METAL_ISO_LABEL}: {m}"));
                }
                if let Some(part) = field(m, "partition") {
                    if field(m, "bylabel") != Some(format!("/dev/{part}").as_str()) {
                        failures.push(format!(
                            "config: `findfs LABEL={METAL_ISO_LABEL}` does not find the partition: {m}"
                        ));
                    }
                }
            }
        },
        Delivery::Inline => match (inline, &c.inline_sha256) {
            (Some(m), Some(want)) if first(Some(m)).as_deref() == Some(want.as_str()) => {
                if field(m, "magic") != Some("28b52ffd") {
                    failures.push(format!("config: the inline value is not base64 of zstd data: {m}"));
                }
            }
            (m, want) => failures.push(format!(
                "config: sha256 of the booted {INLINE_PARAM}= text: {m:?}, of the built one: {want:?}"
            )),
        },
    }
    for (d, what, m) in [
        (Delivery::Embedded, "embedded", embedded),
        (Delivery::MetalIso, "metal-iso", iso),
        (Delivery::Inline, "inline", inline),
    ] {
        if d != c.delivery {
            if let Some(m) = m {
                failures.push(format!(
                    "config: {} delivery, but the guest also found a {what} configuration: {m}",
                    c.delivery.as_str()
                ));
            }
        }
    }
    if let Some(want) = &c.hostname {
        match marker(marks, "hostname: ") {
            Some(got) if got == want => {}
            got => failures.push(format!(
                "config: the configuration's host name is {got:?}, expected {want} (patched)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(data))
    }

    fn setup() -> Setup {
        Setup {
            name: NAME.into(),
            arch: Arch::Amd64,
            talos_version: TALOS_VERSION.into(),
            kver: "6.1.0-56-amd64".into(),
            disk_mib: 256,
            esp_mib: 100,
            sector_size: 512,
            extra_args: vec!["console=ttyS0".into(), "panic=-1".into()],
            meta: vec![(0x0c, b"v1".to_vec()), (0x0d, b"v 2".to_vec())],
        }
    }

    fn expect() -> Expect {
        Expect {
            cmdline: "talos.platform=metal console=ttyS0 panic=-1".into(),
            esp_guid: Some("b53f94ad-f2d2-885b-8fe4-7de5001158b2".into()),
            ..Expect::default()
        }
    }

    const CFG_SHA: &str = "a3850e6464bea76eb1b3b1e294c6ac88b2e91ddf5e1c954e76365dadf9182daf";

    fn expect_embedded() -> Expect {
        Expect {
            extensions: vec![
                ("edgehostlet".into(), "1.7.1".into()),
                (EMBEDDED_NAME.into(), CFG_SHA.into()),
            ],
            config: Some(ExpectConfig {
                delivery: Delivery::Embedded,
                sha256: CFG_SHA.into(),
                inline_sha256: None,
                hostname: Some(PATCHED_HOSTNAME.into()),
            }),
            edgehostlet_hostname: Some(PATCHED_HOSTNAME.into()),
            ..expect()
        }
    }

    fn embedded_log() -> String {
        good_log().replace(
            "EDGEIMAGE-E2E done\r\n",
            &format!(
                "EDGEIMAGE-E2E extension: name=edgehostlet version=1.7.1\r\n\
                 EDGEIMAGE-E2E layer: 0 image=0.sqsh files=2\r\n\
                 EDGEIMAGE-E2E extension: name=embedded-config version={CFG_SHA}\r\n\
                 EDGEIMAGE-E2E layer: 1 image=1.sqsh files=1\r\n\
                 EDGEIMAGE-E2E extensions: layers=2\r\n\
                 EDGEIMAGE-E2E overlay: lowerdir=/layers/1:/layers/0:/base \
                 service-definition=edgehostlet base=rootfs.sqsh stand-in\r\n\
                 EDGEIMAGE-E2E config sha256={CFG_SHA}\r\n\
                 EDGEIMAGE-E2E hostname: e2e-host\r\n\
                 EDGEIMAGE-E2E edgehostlet: hostname=e2e-host\r\n\
                 EDGEIMAGE-E2E done\r\n"
            ),
        )
    }

    fn expect_metal_iso() -> Expect {
        Expect {
            extensions: vec![("edgehostlet".into(), "1.7.1".into())],
            config: Some(ExpectConfig {
                delivery: Delivery::MetalIso,
                sha256: CFG_SHA.into(),
                inline_sha256: None,
                hostname: Some(PATCHED_HOSTNAME.into()),
            }),
            edgehostlet_hostname: Some(PATCHED_HOSTNAME.into()),
            ..expect()
        }
    }

    fn metal_iso_log() -> String {
        good_log().replace(
            "EDGEIMAGE-E2E done\r\n",
            &format!(
                "EDGEIMAGE-E2E extension: name=edgehostlet version=1.7.1\r\n\
                 EDGEIMAGE-E2E layer: 0 image=0.sqsh files=2\r\n\
                 EDGEIMAGE-E2E extensions: layers=1\r\n\
                 EDGEIMAGE-E2E overlay: lowerdir=/layers/0:/base \
                 service-definition=edgehostlet base=rootfs.sqsh stand-in\r\n\
                 EDGEIMAGE-E2E metal-iso config sha256={CFG_SHA} fslabel=metal-iso \
                 partition=vda3 bylabel=/dev/vda3\r\n\
                 EDGEIMAGE-E2E hostname: e2e-host\r\n\
                 EDGEIMAGE-E2E edgehostlet: hostname=e2e-host\r\n\
                 EDGEIMAGE-E2E done\r\n"
            ),
        )
    }

    fn expect_inline() -> Expect {
        Expect {
            config: Some(ExpectConfig {
                delivery: Delivery::Inline,
                sha256: CFG_SHA.into(),
                inline_sha256: Some(sha256_hex(b"KLUv/Q==")),
                hostname: None,
            }),
            ..expect()
        }
    }

    fn inline_log() -> String {
        good_log().replace(
            "EDGEIMAGE-E2E done\r\n",
            &format!(
                "EDGEIMAGE-E2E inline sha256={} chars=8 magic=28b52ffd\r\n\
                 EDGEIMAGE-E2E done\r\n",
                sha256_hex(b"KLUv/Q==")
            ),
        )
    }

    #[test]
    fn passes_with_extensions_and_each_delivery() {
        check(&boot(&embedded_log()), &setup(), &expect_embedded()).expect("embedded");
        check(&boot(&metal_iso_log()), &setup(), &expect_metal_iso()).expect("metal-iso");
        check(&boot(&inline_log()), &setup(), &expect_inline()).expect("inline");
        // A log with extensions does not pass where none are expected, nor the reverse.
        let e = check(&boot(&embedded_log()), &setup(), &expect()).expect_err("unexpected");
        assert!(format!("{e:#}").contains("extensions"), "{e:#}");
        let e = check(&boot(&good_log()), &setup(), &expect_embedded()).expect_err("missing");
        assert!(format!("{e:#}").contains("overlay"), "{e:#}");
    }

    #[test]
    fn fails_on_each_extension_or_config_deviation() {
        let embedded = [
            // Order of the layers as listed.
            (
                "name=edgehostlet version=1.7.1",
                "name=edgehostlet version=1.7.2",
                "extensions: the guest listed",
            ),
            (
                "lowerdir=/layers/1:/layers/0:/base",
                "lowerdir=/layers/0:/layers/1:/base",
                "lowerdir",
            ),
            (
                "service-definition=edgehostlet",
                "service-definition=base-placeholder",
                "hide",
            ),
            ("base=rootfs.sqsh stand-in", "base=", "show through"),
            (
                "layer: 1 image=1.sqsh",
                "error: mount-failed: squashfs /1.sqsh",
                "mount-failed",
            ),
            (
                "EDGEIMAGE-E2E config sha256=a",
                "EDGEIMAGE-E2E config sha256=b",
                "the report says",
            ),
            (
                "edgehostlet: hostname=e2e-host",
                "edgehostlet: hostname=edge-01",
                "edgehostlet",
            ),
            ("hostname: e2e-host", "hostname: edge-01", "patched"),
            ("extensions: layers=2", "extensions: layers=1", "layers=2"),
        ];
        for (from, to, want) in embedded {
            let log = embedded_log().replace(from, to);
            assert_ne!(log, embedded_log(), "{from}");
            let e = check(&boot(&log), &setup(), &expect_embedded()).expect_err(want);
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
        let iso = [
            ("fslabel=metal-iso", "fslabel=METAL-ISO", "FAT label"),
            ("bylabel=/dev/vda3", "bylabel=", "findfs"),
            (
                "metal-iso config sha256=a",
                "metal-iso config sha256=b",
                "the report says",
            ),
            (
                "EDGEIMAGE-E2E metal-iso config",
                "EDGEIMAGE-E2E config",
                "also found",
            ),
        ];
        for (from, to, want) in iso {
            let log = metal_iso_log().replace(from, to);
            assert_ne!(log, metal_iso_log(), "{from}");
            let e = check(&boot(&log), &setup(), &expect_metal_iso()).expect_err(want);
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
        let inline = [
            ("inline sha256=", "inline sha256=0", "inline= text"),
            ("magic=28b52ffd", "magic=7b0a", "zstd"),
        ];
        for (from, to, want) in inline {
            let log = inline_log().replace(from, to);
            let e = check(&boot(&log), &setup(), &expect_inline()).expect_err(want);
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
    }

    #[test]
    fn inline_digests_of_a_redacted_cmdline() {
        let c = "a=1 talos.config.inline=<redacted:sha256=ab12> talos.config.inlinex=no b";
        assert_eq!(inline_digests(c), ["ab12"]);
        assert!(inline_digests("a=1 talos.config.inline b").is_empty());
        assert_eq!(edgehostlet_meta(), ("edgehostlet".into(), "1.7.1".into()));
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
         EDGEIMAGE-E2E logical-block-size: vda=512\r\n\
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
            ("vda=512", "vda=4096", "logical block size"),
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
            e2e: dir.clone(),
            debs: dir.join("debs"),
            out: dir.join("out"),
            run: dir.join("run"),
        };
        let assets = paths.assets(Arch::Amd64);
        fs::create_dir_all(&assets).expect("mkdir");
        for f in [
            "vmlinuz",
            "initramfs.xz",
            "systemd-boot.efi",
            "systemd-stub.efi",
        ] {
            fs::write(assets.join(f), f).expect("write asset");
        }
        let p = write_profile(&paths, &setup(), None).expect("profile");
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
        assert!(
            !t.contains("[config]") && !t.contains("[[extensions]]"),
            "{t}"
        );

        assert!(t.contains("source = \"assets-amd64\""), "{t}");

        // With a variant's inputs: the extension pinned, the configuration and its patch.
        let root = fetch::Root {
            arch: Arch::Amd64,
            dir: dir.join("root"),
            host: dir.join("host"),
            kver: "6.1.0-56-amd64".into(),
        };
        let v = &VARIANTS[1];
        let inputs = write_inputs(&paths, v, &root).expect("inputs");
        let p = write_profile(&paths, &setup(), Some(&inputs)).expect("profile");
        let t = fs::read_to_string(p).expect("read");
        let [(ext, pin)] = inputs.extensions.as_slice() else {
            panic!("one extension: {:?}", inputs.extensions)
        };
        assert!(
            ext.starts_with("inputs/e2e-metal-iso/edgehostlet/"),
            "{ext}"
        );
        assert_eq!(
            &edgeimage::extension::input_sha256(&dir.join(ext)).expect("pin"),
            pin
        );
        assert!(
            t.contains(&format!(
                "[[extensions]]\npath = \"{ext}\"\nsha256 = \"{pin}\"\n"
            )),
            "{t}"
        );
        assert!(
            t.contains(
                "[config]\npath = \"inputs/e2e-metal-iso/machine.yaml\"\n\
                 patches = [\"inputs/e2e-metal-iso/hostname-patch.yaml\"]\ndelivery = \"metal-iso\"\n"
            ),
            "{t}"
        );
        assert_eq!(
            fs::read_to_string(dir.join("inputs/e2e-metal-iso/hostname-patch.yaml"))
                .expect("patch"),
            HOSTNAME_PATCH
        );
        // Written again from scratch on the next run.
        write_inputs(&paths, v, &root).expect("inputs again");
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
