//! What the xtask commands share: where the workspace and target directory are, and the
//! release `edgeimage` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    let ws = workspace();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { ws.join(t) })
        .unwrap_or_else(|| ws.join("target"))
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

/// Build the release `edgeimage` binary and return its path.
pub fn edgeimage_bin() -> Result<PathBuf> {
    let st = cargo()
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "edgeimage",
            "--bin",
            "edgeimage",
        ])
        .status()
        .context("running cargo build --release -p edgeimage")?;
    if !st.success() {
        bail!("cargo build --release -p edgeimage failed ({st})");
    }
    Ok(target_dir().join("release/edgeimage"))
}

/// Run a command, failing with its description when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}
