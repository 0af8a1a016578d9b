//! Getting Debian's kernel, systemd-boot, OVMF, busybox and QEMU without changing the host:
//! `apt-get download` into `target/e2e/debs/`, `dpkg -x` into `target/e2e/root/`, a stamp file
//! so later runs reuse the cache without touching apt.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::Paths;

const STAMP: &str = ".edgeimage-e2e-stamp";
const STAMP_FORMAT: &str = "edgeimage-e2e-root v1";

/// The unpacked packages.
pub struct Root {
    pub dir: PathBuf,
    pub kver: String,
}

impl Root {
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
        self.dir
            .join("usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    }
    pub fn sd_stub(&self) -> PathBuf {
        self.dir.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    }
    pub fn ovmf_code(&self) -> PathBuf {
        self.dir.join("usr/share/OVMF/OVMF_CODE_4M.fd")
    }
    pub fn ovmf_vars(&self) -> PathBuf {
        self.dir.join("usr/share/OVMF/OVMF_VARS_4M.fd")
    }
    pub fn qemu(&self) -> PathBuf {
        self.dir.join("usr/bin/qemu-system-x86_64")
    }
    pub fn qemu_data(&self) -> PathBuf {
        self.dir.join("usr/share/qemu")
    }
    pub fn ld_library_path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("usr/lib/x86_64-linux-gnu").display(),
            self.dir.join("lib/x86_64-linux-gnu").display()
        )
    }

    fn required(&self) -> Vec<PathBuf> {
        vec![
            self.kernel(),
            self.modules(),
            self.busybox(),
            self.sd_boot(),
            self.sd_stub(),
            self.ovmf_code(),
            self.ovmf_vars(),
            self.qemu(),
        ]
    }

    fn missing(&self) -> Option<PathBuf> {
        self.required().into_iter().find(|p| !p.exists())
    }
}

/// Reads the stamp of a complete unpacked cache, if there is one.
pub fn cached(paths: &Paths) -> Option<Root> {
    let text = fs::read_to_string(paths.root.join(STAMP)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != STAMP_FORMAT {
        return None;
    }
    let kver = lines.next()?.strip_prefix("kernel ")?.to_string();
    let root = Root {
        dir: paths.root.clone(),
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

/// The cache, fetched and unpacked if needed.
pub fn ensure(paths: &Paths, refresh: bool) -> Result<Root> {
    if !refresh {
        if let Some(root) = cached(paths) {
            println!(
                "e2e: reusing unpacked packages in {} (kernel {}; --refresh to fetch again)",
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
    let (kpkg, kver) = kernel_package()?;
    let mut pkgs = vec![
        kpkg.clone(),
        "systemd-boot-efi".to_string(),
        "ovmf".to_string(),
        "busybox-static".to_string(),
    ];
    for p in qemu_packages()? {
        if !pkgs.contains(&p) {
            pkgs.push(p);
        }
    }
    println!("e2e: packages: {}", pkgs.join(" "));

    let debs = match print_uris(&pkgs) {
        Ok(d) => d,
        Err(first) => {
            println!("e2e: apt cannot resolve the packages ({first:#}); running apt-get update");
            apt_update()?;
            print_uris(&pkgs)?
        }
    };
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
        if let Err(first) = apt_download(&paths.debs, &pkgs) {
            println!("e2e: apt-get download failed ({first:#}); running apt-get update");
            apt_update()?;
            apt_download(&paths.debs, &pkgs)?;
        }
    }
    for d in &debs {
        let p = paths.debs.join(&d.file);
        if !deb_ok(&p, d) {
            bail!(
                "{} is missing or does not match the sha256/size apt announced; \
                 delete {} and run again",
                p.display(),
                paths.debs.display()
            );
        }
    }
    // Drop packages of older runs from the cache.
    let wanted: Vec<&str> = debs.iter().map(|d| d.file.as_str()).collect();
    for e in
        fs::read_dir(&paths.debs).with_context(|| format!("listing {}", paths.debs.display()))?
    {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") && !wanted.contains(&name.as_str()) {
            let _ = fs::remove_file(e.path());
        }
    }

    if paths.root.exists() {
        fs::remove_dir_all(&paths.root)
            .with_context(|| format!("removing the old {}", paths.root.display()))?;
    }
    fs::create_dir_all(&paths.root)
        .with_context(|| format!("creating {}", paths.root.display()))?;
    for d in &debs {
        let p = paths.debs.join(&d.file);
        run_quiet(Command::new("dpkg").arg("-x").arg(&p).arg(&paths.root))
            .with_context(|| format!("unpacking {}", p.display()))?;
    }
    let root = Root {
        dir: paths.root.clone(),
        kver,
    };
    if let Some(m) = root.missing() {
        bail!(
            "after unpacking the packages, {} does not exist (the package layout changed?)",
            m.display()
        );
    }
    let mut stamp = format!("{STAMP_FORMAT}\nkernel {}\n", root.kver);
    for d in &debs {
        stamp.push_str(&d.file);
        stamp.push('\n');
    }
    fs::write(paths.root.join(STAMP), stamp).context("writing the cache stamp")?;
    println!(
        "e2e: unpacked {} packages into {} ({} MB of .deb files)",
        debs.len(),
        root.dir.display(),
        debs.iter().map(|d| d.size).sum::<u64>() / 1_000_000
    );
    Ok(root)
}

/// `linux-image-<ver>-amd64`, the package `linux-image-amd64` depends on, and `<ver>-amd64`.
fn kernel_package() -> Result<(String, String)> {
    let out = capture(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
        .context("asking apt which kernel linux-image-amd64 depends on")?;
    for line in out.lines() {
        if let Some(p) = line.trim().strip_prefix("Depends: ") {
            if let Some(ver) = p.strip_prefix("linux-image-") {
                if ver.ends_with("-amd64") && !ver.contains('<') {
                    return Ok((p.to_string(), ver.to_string()));
                }
            }
        }
    }
    bail!(
        "apt-cache depends linux-image-amd64 names no linux-image-<ver>-amd64 package; \
         run `apt-get update` (the package lists may be missing)\n{out}"
    )
}

/// The packages `apt-get install -s --no-install-recommends qemu-system-x86` would install.
fn qemu_packages() -> Result<Vec<String>> {
    let out = capture(Command::new("apt-get").args([
        "install",
        "-s",
        "--no-install-recommends",
        "qemu-system-x86",
    ]))
    .context("simulating `apt-get install qemu-system-x86`")?;
    let mut pkgs: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    // Already installed on the host: its dependencies are then there too, but take the
    // emulator itself anyway so that the cache is complete.
    for p in ["qemu-system-x86", "qemu-system-data"] {
        if !pkgs.iter().any(|x| x == p) {
            pkgs.push(p.to_string());
        }
    }
    Ok(pkgs)
}

fn print_uris(pkgs: &[String]) -> Result<Vec<Deb>> {
    let out = capture(
        Command::new("apt-get")
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

fn apt_download(dir: &Path, pkgs: &[String]) -> Result<()> {
    run_quiet(
        Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .args(pkgs)
            .current_dir(dir),
    )
    .context("apt-get download")
}

fn apt_update() -> Result<()> {
    run_quiet(Command::new("apt-get").args(["-q", "update"])).context(
        "apt-get update failed: the package lists cannot be refreshed (no network, or not root?)",
    )
}

/// Whether the tools can be had: the cache is complete, or apt can download a package now.
pub fn check_tools(paths: &Paths) -> Result<String, String> {
    if let Some(root) = cached(paths) {
        let qemu = Command::new(root.qemu())
            .arg("--version")
            .env("LD_LIBRARY_PATH", root.ld_library_path())
            .output();
        return match qemu {
            Ok(o) if o.status.success() => Ok(format!(
                "package cache present in {} ({})",
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
                paths.root.display()
            )),
            Err(e) => Err(format!("the cached QEMU does not start: {e}")),
        };
    }
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        if !on_path(tool) {
            return Err(format!(
                "no package cache in {} and `{tool}` is not installed",
                paths.root.display()
            ));
        }
    }
    let probe = std::env::temp_dir().join(format!("edgeimage-e2e-probe-{}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&probe) {
        return Err(format!("cannot create {}: {e}", probe.display()));
    }
    let r = apt_download(&probe, &["busybox-static".to_string()]);
    let _ = fs::remove_dir_all(&probe);
    match r {
        Ok(()) => Ok("apt can download Debian packages (no cache yet)".to_string()),
        Err(e) => Err(format!(
            "no package cache in {} and apt cannot download packages: {e:#}",
            paths.root.display()
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
