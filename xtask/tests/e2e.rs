//! The end-to-end boot test as part of `cargo test`.
//!
//! A boot takes a minute or more, so it runs only when asked: `EDGEIMAGE_E2E=1 cargo test -p
//! xtask --test e2e`, and always when `CI=true` (where it never skips: missing tools fail it).
//! Otherwise it says loudly that it was skipped.

use std::process::Command;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[test]
fn boots_the_built_image() {
    let asked = std::env::var("EDGEIMAGE_E2E").is_ok_and(|v| v == "1");
    if !asked && !in_ci() {
        eprintln!("\n==============================================================");
        eprintln!("E2E SKIPPED: set EDGEIMAGE_E2E=1 (or CI=true) to boot the image in QEMU");
        eprintln!("==============================================================\n");
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // `--skip-if-unavailable` skips loudly without apt or a cache, and fails instead under CI.
    let status = Command::new(cargo)
        .args(["xtask", "e2e", "--skip-if-unavailable"])
        .current_dir(workspace)
        .status()
        .expect("running cargo xtask e2e");
    assert!(
        status.success(),
        "cargo xtask e2e failed ({status}); see its output above"
    );
}
