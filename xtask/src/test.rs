//! `cargo xtask test`: the project's test command (what CI runs).
//!
//! Formatting, lints, every unit and integration test, a smoke run of every fuzz target
//! ([`SMOKE_SECONDS`] each), then the end-to-end boot test. The fuzz run needs the nightly
//! toolchain and the boot test Debian packages (fetched into target/e2e); when they cannot be
//! had they are skipped with a loud banner, except under CI (`CI=true`), where they must run.

use anyhow::Result;

use crate::util;

/// Seconds each fuzz target runs in the smoke run.
pub const SMOKE_SECONDS: u64 = 5;

/// The independent tools the tests check edgeimage's output with, and the Debian package of
/// each (what `.ci/run` installs). A test whose tool is missing skips its check (never under
/// CI); this list says so before anything runs.
const TOOLS: &[(&str, &str)] = &[
    ("sgdisk", "gdisk"),
    ("fsck.fat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mdir", "mtools"),
    ("mtype", "mtools"),
    ("e2fsck", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkfs.ext4", "e2fsprogs"),
    ("objdump", "binutils"),
    ("objcopy", "binutils"),
    ("unsquashfs", "squashfs-tools"),
    ("cpio", "cpio"),
    ("minisign", "minisign"),
    ("bmaptool", "bmap-tools"),
    ("zstd", "zstd"),
    ("xz", "xz-utils"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("losetup", "mount"),
    ("skopeo", "skopeo"),
];

/// Print every missing tool at once.
fn report_missing_tools() {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| {
            !["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
                .iter()
                .any(|d| std::path::Path::new(d).join(t).exists())
        })
        .map(|(t, p)| format!("{t} (package {p})"))
        .collect();
    if !missing.is_empty() {
        println!(
            "missing: {}: the checks that use them are SKIPPED (under CI=true they fail)",
            missing.join(", ")
        );
    }
}

pub fn main(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--no-e2e");
    report_missing_tools();
    let nightly = std::process::Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nightly {
        println!(
            "missing: the nightly toolchain (`rustup toolchain install nightly --profile \
             minimal`): the fuzz smoke run will be skipped"
        );
    }
    println!("== cargo fmt --check");
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    println!("== cargo clippy --all-targets -- -D warnings");
    util::run(util::cargo().args([
        "clippy",
        "--quiet",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("== cargo test --workspace");
    util::run(util::cargo().args(["test", "--workspace"]))?;
    println!("== cargo xtask fuzz --seconds {SMOKE_SECONDS} (every target)");
    util::run(util::cargo().args([
        "xtask",
        "fuzz",
        "--seconds",
        &SMOKE_SECONDS.to_string(),
        "--skip-if-unavailable",
    ]))?;
    if quick {
        println!("\n*** E2E SKIPPED: --no-e2e given ***\n");
        return Ok(());
    }
    println!("== cargo xtask e2e");
    util::run(util::cargo().args(["xtask", "e2e", "--skip-if-unavailable"]))
}
