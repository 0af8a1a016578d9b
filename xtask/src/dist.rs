//! `cargo xtask dist`: the static `edgeimage` binary that runs anywhere, including as `/init`
//! of the installer stick's initramfs (which holds nothing else).
//!
//! amd64: musl where the toolchain has the target and a musl C compiler (the zstd and xz C code
//! are compiled too); otherwise glibc linked statically (`-C target-feature=+crt-static`).
//! arm64 (`--arch arm64`): Rust's `aarch64-unknown-linux-musl` target (its own musl C library
//! and start files), linked and its C code compiled with Debian's cross compiler
//! (`gcc-aarch64-linux-gnu`). The result is checked to have no program interpreter
//! (`PT_INTERP`), i.e. to be static, and to be for the architecture asked for.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

use edgeimage::talos::Arch;

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";
const ARM64_MUSL: &str = "aarch64-unknown-linux-musl";
/// Debian's cross compiler for arm64 (package `gcc-aarch64-linux-gnu`).
const ARM64_CC: &str = "aarch64-linux-gnu-gcc";

fn have_target(target: &str) -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false)
}

fn have_musl() -> bool {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == MUSL)
        })
        .unwrap_or(false);
    let cc = Command::new("sh")
        .args(["-c", "command -v musl-gcc"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    installed && cc
}

/// Is `path` an ELF executable without a program interpreter?
pub fn is_static(path: &Path) -> Result<bool> {
    let b = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or([0; 2]));
    let phoff = u64_at(0x20) as usize;
    let phentsize = u16_at(0x36) as usize;
    let phnum = u16_at(0x38) as usize;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(t) = b.get(o..o + 4) else {
            bail!(
                "{}: program header {i} lies outside the file",
                path.display()
            );
        };
        if u32::from_le_bytes(t.try_into().unwrap_or([0; 4])) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Build the static binary for `arch`; returns its path (`target/dist/edgeimage` for amd64,
/// `target/dist/edgeimage-arm64` for arm64).
pub fn build_for(arch: Arch) -> Result<PathBuf> {
    match arch {
        Arch::Amd64 => build(),
        Arch::Arm64 => build_arm64(),
    }
}

fn build_arm64() -> Result<PathBuf> {
    if !have_target(ARM64_MUSL) {
        bail!("the Rust target {ARM64_MUSL} is not installed: rustup target add {ARM64_MUSL} (.ci/run does)");
    }
    if !crate::e2e::fetch::on_path(ARM64_CC) {
        bail!("{ARM64_CC} is not installed: apt-get install gcc-aarch64-linux-gnu (.ci/run does)");
    }
    let mut c = release_build(ARM64_MUSL);
    c.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", ARM64_CC)
        .env("CC_aarch64_unknown_linux_musl", ARM64_CC)
        .env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar");
    finish(c, ARM64_MUSL, "edgeimage-arm64")
}

/// Build the static amd64 binary; returns its path (`target/dist/edgeimage`).
pub fn build() -> Result<PathBuf> {
    let (target, flags) = if have_musl() {
        (MUSL, None)
    } else {
        eprintln!(
            "xtask dist: no {MUSL} target or no musl-gcc (rustup target add {MUSL}; apt-get install musl-tools): linking glibc statically"
        );
        (GNU, Some("-C target-feature=+crt-static"))
    };
    let mut c = release_build(target);
    if let Some(f) = flags {
        c.env("RUSTFLAGS", f);
    }
    finish(c, target, "edgeimage")
}

/// `cargo build --release` of the `edgeimage` binary for `target`.
fn release_build(target: &str) -> Command {
    let mut c = util::cargo();
    c.args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "edgeimage",
        "--bin",
        "edgeimage",
        "--target",
        target,
    ]);
    c
}

/// Run the build, check the binary is static, copy it to `target/dist/<name>`.
fn finish(mut build: Command, target: &str, name: &str) -> Result<PathBuf> {
    util::run(&mut build)?;
    let built = util::target_dir().join(target).join("release/edgeimage");
    if !is_static(&built)? {
        bail!("{} is dynamically linked", built.display());
    }
    let dir = util::target_dir().join("dist");
    fs::create_dir_all(&dir)?;
    let out = dir.join(name);
    fs::copy(&built, &out).with_context(|| format!("copying to {}", out.display()))?;
    Ok(out)
}

pub fn main(args: &[String]) -> Result<()> {
    let arch = match args {
        [] => Arch::Amd64,
        [flag, a] if flag == "--arch" => a.parse()?,
        _ => bail!("usage: cargo xtask dist [--arch amd64|arm64]"),
    };
    let out = build_for(arch)?;
    let size = fs::metadata(&out)?.len();
    println!(
        "static binary: {} ({:.1} MiB); it runs as /init of an installer stick",
        out.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}
