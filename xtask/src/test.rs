//! `cargo xtask test`: the project's test command (what CI runs).
//!
//! Formatting, lints, every unit and integration test, then the end-to-end boot test. The
//! boot test needs Debian packages (fetched into target/e2e); when they cannot be had it is
//! skipped with a loud banner, except under CI (`CI=true`), where it must run.

use anyhow::Result;

use crate::util;

pub fn main(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--no-e2e");
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
    if quick {
        println!("\n*** E2E SKIPPED: --no-e2e given ***\n");
        return Ok(());
    }
    println!("== cargo xtask e2e");
    util::run(util::cargo().args(["xtask", "e2e", "--skip-if-unavailable"]))
}
