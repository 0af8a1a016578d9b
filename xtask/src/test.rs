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

pub fn main(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--no-e2e");
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
