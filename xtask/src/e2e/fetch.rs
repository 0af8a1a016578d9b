//! Getting Debian's kernel, systemd-boot, UEFI firmware, busybox and QEMU without changing the
//! host: a private apt configuration in `target/e2e/apt/` (Debian bookworm and trixie, the
//! `amd64` and `arm64` architectures, its own package lists), `apt-get download` into
//! `target/e2e/debs/`, `dpkg -x` into one directory per architecture plus one for the host's
//! QEMU, and a stamp file so later runs reuse the cache without touching apt.
//!
//! What comes from where:
//! - the guest's kernel (`linux-image-<ver>-<arch>`, the one `linux-image-<arch>` depends on
//!   in bookworm), `busybox-static` and the firmware (`ovmf` / `qemu-efi-aarch64`): bookworm;
//! - `systemd-boot-efi` from trixie (systemd 257): the first that boots UKI profiles
//!   (`.profile` sections), which Talos's UKIs carry from v1.10;
//! - QEMU (`qemu-system-x86` / `qemu-system-arm` and what `apt-get install -s
//!   --no-install-recommends` says the host lacks for it): bookworm, host architecture.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use edgeimage::talos::Arch;
use sha2::{Digest, Sha256};

use super::Paths;

const STAMP: &str = ".edgeimage-e2e-stamp";
const STAMP_FORMAT: &str = "edgeimage-e2e-root v2";
/// The suite the guest's kernel, busybox, firmware and QEMU come from.
const SUITE: &str = "bookworm";
/// The suite systemd-boot comes from (systemd 257).
const SD_BOOT_SUITE: &str = "trixie";

/// The unpacked packages of one guest architecture.
pub struct Root {
    pub arch: Arch,
    /// The guest's packages (kernel, modules, busybox, systemd-boot, firmware).
    pub dir: PathBuf,
    /// The host's QEMU.
    pub host: PathBuf,
    pub kver: String,
}

impl Root {
    fn efi(&self) -> &'static str {
        match self.arch {
            Arch::Amd64 => "x64",
            Arch::Arm64 => "aa64",
        }
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.kver))
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join(format!("lib/modules/{}", self.kver))
    }
    pub fn busybox(&self) -> PathBuf {
        self.dir.join("bin/busybox")
    }
    pub fn sd_boot(&self) -> PathBuf {
        self.dir.join(format!(
            "usr/lib/systemd/boot/efi/systemd-boot{}.efi",
            self.efi()
        ))
    }
    pub fn sd_stub(&self) -> PathBuf {
        self.dir.join(format!(
            "usr/lib/systemd/boot/efi/linux{}.efi.stub",
            self.efi()
        ))
    }
    /// The firmware code and the variable store template (a fresh copy per boot).
    pub fn firmware(&self) -> (PathBuf, PathBuf) {
        match self.arch {
            Arch::Amd64 => (
                self.dir.join("usr/share/OVMF/OVMF_CODE_4M.fd"),
                self.dir.join("usr/share/OVMF/OVMF_VARS_4M.fd"),
            ),
            Arch::Arm64 => (
                self.dir.join("usr/share/AAVMF/AAVMF_CODE.fd"),
                self.dir.join("usr/share/AAVMF/AAVMF_VARS.fd"),
            ),
        }
    }
    pub fn qemu(&self) -> PathBuf {
        self.host.join(match self.arch {
            Arch::Amd64 => "usr/bin/qemu-system-x86_64",
            Arch::Arm64 => "usr/bin/qemu-system-aarch64",
        })
    }
    pub fn qemu_data(&self) -> PathBuf {
        self.host.join("usr/share/qemu")
    }
    pub fn ld_library_path(&self) -> String {
        format!(
            "{}:{}",
            self.host.join("usr/lib/x86_64-linux-gnu").display(),
            self.host.join("lib/x86_64-linux-gnu").display()
        )
    }
    /// The guest's serial console device.
    pub fn console(&self) -> &'static str {
        match self.arch {
            Arch::Amd64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    fn required(&self) -> Vec<PathBuf> {
        let (code, vars) = self.firmware();
        vec![
            self.kernel(),
            self.modules(),
            self.busybox(),
            self.sd_boot(),
            self.sd_stub(),
            code,
            vars,
            self.qemu(),
        ]
    }

    fn missing(&self) -> Option<PathBuf> {
        self.required().into_iter().find(|p| !p.exists())
    }
}

fn guest_dir(paths: &Paths, arch: Arch) -> PathBuf {
    paths.e2e.join(format!("root-{arch}"))
}

fn host_dir(paths: &Paths, arch: Arch) -> PathBuf {
    paths.e2e.join(format!("host-{arch}"))
}

/// Reads the stamp of a complete unpacked cache for `arch`, if there is one.
pub fn cached(paths: &Paths, arch: Arch) -> Option<Root> {
    let dir = guest_dir(paths, arch);
    let text = fs::read_to_string(dir.join(STAMP)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != STAMP_FORMAT {
        return None;
    }
    let kver = lines.next()?.strip_prefix("kernel ")?.to_string();
    let root = Root {
        arch,
        dir,
        host: host_dir(paths, arch),
        kver,
    };
    root.missing().is_none().then_some(root)
}

/// One package file as `apt-get download --print-uris` names it.
struct Deb {
    file: String,
    size: u64,
    sha256: String,
}

/// The private apt configuration.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(paths: &Paths) -> Result<Apt> {
        let dir = paths.e2e.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(keyring).exists() {
            bail!("{keyring} is missing: the e2e test takes Debian packages (Debian hosts only)");
        }
        let mut sources = String::new();
        for suite in [SUITE, SD_BOOT_SUITE] {
            sources.push_str(&format!(
                "deb [arch=amd64,arm64 signed-by={keyring}] http://deb.debian.org/debian {suite} main\n"
            ));
        }
        fs::write(dir.join("sources.list"), sources)?;
        Ok(Apt { dir })
    }

    /// `apt-get`/`apt-cache` with the private configuration.
    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        let o = |k: &str, v: &Path| format!("{k}={}", v.display());
        c.arg("-o")
            .arg(o("Dir::Etc::SourceList", &self.dir.join("sources.list")))
            .arg("-o")
            .arg("Dir::Etc::SourceParts=/nonexistent")
            .arg("-o")
            .arg(o("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(o("Dir::Cache", &self.dir.join("cache")))
            .args(["-o", "APT::Architectures::=amd64"])
            .args(["-o", "APT::Architectures::=arm64"])
            .args(["-o", &format!("APT::Default-Release={SUITE}")])
            .args(["-o", "APT::Sandbox::User=root"])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            ])
            .args([
                "-o",
                "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
            ]);
        c
    }

    fn update(&self) -> Result<()> {
        run_quiet(self.cmd("apt-get").args(["-q", "update"])).context(
            "apt-get update (private lists in target/e2e/apt) failed: the package lists cannot \
             be fetched (no network to deb.debian.org?)",
        )
    }

    fn have_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists"))
            .map(|d| d.count() > 2)
            .unwrap_or(false)
    }
}

/// The packages of the guest (`arch`) and of its host QEMU.
fn packages(apt: &Apt, arch: Arch) -> Result<(Vec<String>, Vec<String>, String)> {
    let out = capture(
        apt.cmd("apt-cache")
            .args(["depends", &format!("linux-image-{arch}:{arch}")]),
    )
    .with_context(|| format!("asking apt which kernel linux-image-{arch} depends on"))?;
    let mut kernel = None;
    for line in out.lines() {
        if let Some(p) = line.trim().strip_prefix("Depends: ") {
            let p = p.split(':').next().unwrap_or(p);
            if let Some(ver) = p.strip_prefix("linux-image-") {
                if ver.ends_with(&format!("-{arch}")) && !ver.contains('<') {
                    kernel = Some((p.to_string(), ver.to_string()));
                    break;
                }
            }
        }
    }
    let Some((kpkg, kver)) = kernel else {
        bail!(
            "apt-cache depends linux-image-{arch} names no linux-image-<ver>-{arch} package\n{out}"
        );
    };
    let firmware = match arch {
        Arch::Amd64 => "ovmf",
        Arch::Arm64 => "qemu-efi-aarch64",
    };
    let guest = vec![
        format!("{kpkg}:{arch}"),
        format!("busybox-static:{arch}"),
        format!("systemd-boot-efi:{arch}/{SD_BOOT_SUITE}"),
        firmware.to_string(),
    ];
    let qemu = match arch {
        Arch::Amd64 => "qemu-system-x86",
        Arch::Arm64 => "qemu-system-arm",
    };
    // What installing QEMU would add to this host (the host's own libraries are used).
    let sim = capture(
        apt.cmd("apt-get")
            .args(["install", "-s", "--no-install-recommends", qemu]),
    )
    .with_context(|| format!("simulating `apt-get install {qemu}`"))?;
    let mut host: Vec<String> = sim
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for p in [qemu, "qemu-system-common", "qemu-system-data"] {
        if !host.iter().any(|x| x == p) {
            host.push(p.to_string());
        }
    }
    Ok((guest, host, kver))
}

/// The cache for `arch`, fetched and unpacked if needed.
pub fn ensure(paths: &Paths, arch: Arch, refresh: bool) -> Result<Root> {
    if !refresh {
        if let Some(root) = cached(paths, arch) {
            println!(
                "e2e: reusing unpacked {arch} packages in {} (kernel {}; --refresh to fetch again)",
                root.dir.display(),
                root.kver
            );
            return Ok(root);
        }
    }
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        if !on_path(tool) {
            bail!(
                "`{tool}` is not installed: the e2e test takes Debian packages with apt \
                 (Debian/Ubuntu hosts only)"
            );
        }
    }
    let apt = Apt::new(paths)?;
    if refresh || !apt.have_lists() {
        println!(
            "e2e: fetching Debian's package lists into {}",
            apt.dir.display()
        );
        apt.update()?;
    }
    let (guest, host, kver) = match packages(&apt, arch) {
        Ok(p) => p,
        Err(first) => {
            println!("e2e: apt cannot resolve the packages ({first:#}); fetching the lists again");
            apt.update()?;
            packages(&apt, arch)?
        }
    };
    println!("e2e: {arch} guest packages: {}", guest.join(" "));
    println!("e2e: host packages for QEMU: {}", host.join(" "));
    let guest_debs = download(&apt, paths, &guest)?;
    let host_debs = download(&apt, paths, &host)?;
    let root = Root {
        arch,
        dir: guest_dir(paths, arch),
        host: host_dir(paths, arch),
        kver,
    };
    for (dir, debs) in [(&root.dir, &guest_debs), (&root.host, &host_debs)] {
        if dir.exists() {
            fs::remove_dir_all(dir)
                .with_context(|| format!("removing the old {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for d in debs {
            let p = paths.debs.join(&d.file);
            run_quiet(Command::new("dpkg").arg("-x").arg(&p).arg(dir))
                .with_context(|| format!("unpacking {}", p.display()))?;
        }
    }
    if let Some(m) = root.missing() {
        bail!(
            "after unpacking the packages, {} does not exist (the package layout changed?)",
            m.display()
        );
    }
    let mut stamp = format!("{STAMP_FORMAT}\nkernel {}\n", root.kver);
    for d in guest_debs.iter().chain(&host_debs) {
        stamp.push_str(&d.file);
        stamp.push('\n');
    }
    fs::write(root.dir.join(STAMP), stamp).context("writing the cache stamp")?;
    println!(
        "e2e: unpacked {} packages for {arch} into {} and {} ({} MB of .deb files)",
        guest_debs.len() + host_debs.len(),
        root.dir.display(),
        root.host.display(),
        guest_debs
            .iter()
            .chain(&host_debs)
            .map(|d| d.size)
            .sum::<u64>()
            / 1_000_000
    );
    Ok(root)
}

/// Download `pkgs` into `target/e2e/debs/` unless already there with the announced digest.
fn download(apt: &Apt, paths: &Paths, pkgs: &[String]) -> Result<Vec<Deb>> {
    let debs = print_uris(apt, pkgs)?;
    fs::create_dir_all(&paths.debs)
        .with_context(|| format!("creating {}", paths.debs.display()))?;
    let missing: Vec<&Deb> = debs
        .iter()
        .filter(|d| !deb_ok(&paths.debs.join(&d.file), d))
        .collect();
    if !missing.is_empty() {
        println!(
            "e2e: downloading {} of {} packages into {}",
            missing.len(),
            debs.len(),
            paths.debs.display()
        );
        run_quiet(
            apt.cmd("apt-get")
                .args(["-q", "download"])
                .args(pkgs)
                .current_dir(&paths.debs),
        )
        .context("apt-get download")?;
    }
    for d in &debs {
        let p = paths.debs.join(&d.file);
        if !deb_ok(&p, d) {
            bail!(
                "{} is missing or does not match the sha256/size apt announced; delete {} and \
                 run again",
                p.display(),
                paths.debs.display()
            );
        }
    }
    Ok(debs)
}

fn print_uris(apt: &Apt, pkgs: &[String]) -> Result<Vec<Deb>> {
    let out = capture(
        apt.cmd("apt-get")
            .args(["download", "--print-uris"])
            .args(pkgs),
    )?;
    let mut debs = Vec::new();
    for line in out.lines() {
        // 'URI' FILE SIZE SHA256:HEX
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || !f[0].starts_with('\'') {
            continue;
        }
        let size = f[2]
            .parse()
            .with_context(|| format!("bad size in apt output: {line}"))?;
        let sha256 = f[3]
            .strip_prefix("SHA256:")
            .with_context(|| format!("no SHA256 in apt output: {line}"))?
            .to_ascii_lowercase();
        debs.push(Deb {
            file: f[1].to_string(),
            size,
            sha256,
        });
    }
    if debs.len() != pkgs.len() {
        bail!(
            "apt-get download --print-uris named {} files for {} packages",
            debs.len(),
            pkgs.len()
        );
    }
    Ok(debs)
}

fn deb_ok(path: &Path, d: &Deb) -> bool {
    match fs::metadata(path) {
        Ok(m) if m.len() == d.size => {}
        _ => return false,
    }
    sha256_file(path).map(|h| h == d.sha256).unwrap_or(false)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether the tools can be had for `arch`: the cache is complete, or apt can fetch the
/// package lists now.
pub fn check_tools(paths: &Paths, arch: Arch) -> Result<String, String> {
    if let Some(root) = cached(paths, arch) {
        let qemu = Command::new(root.qemu())
            .arg("--version")
            .env("LD_LIBRARY_PATH", root.ld_library_path())
            .output();
        return match qemu {
            Ok(o) if o.status.success() => Ok(format!(
                "{arch} package cache present in {} ({})",
                root.dir.display(),
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("qemu")
                    .trim()
            )),
            Ok(o) => Err(format!(
                "the cached QEMU does not run: {}; delete {} and run `cargo xtask e2e` again",
                String::from_utf8_lossy(&o.stderr).trim(),
                root.host.display()
            )),
            Err(e) => Err(format!("the cached QEMU does not start: {e}")),
        };
    }
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        if !on_path(tool) {
            return Err(format!(
                "no {arch} package cache in {} and `{tool}` is not installed",
                guest_dir(paths, arch).display()
            ));
        }
    }
    let apt = Apt::new(paths).map_err(|e| format!("{e:#}"))?;
    match apt.update() {
        Ok(()) => Ok(format!(
            "no {arch} package cache yet; apt can fetch Debian's package lists"
        )),
        Err(e) => Err(format!(
            "no {arch} package cache in {} and apt cannot fetch packages: {e:#}",
            guest_dir(paths, arch).display()
        )),
    }
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Runs a command, returning its stdout; stderr goes into the error.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, showing its output only when it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    capture(cmd).map(|_| ())
}
