//! What the fuzz targets share: a scratch directory per input, OCI layouts made around fuzzed
//! layers, and how the `fat` and `ext4` targets read their input.

pub mod ext4;
pub mod fat;
pub mod oci;
pub use oci::{oci_input, LAYER_SEPARATOR};

use std::path::{Path, PathBuf};

/// A fresh temporary directory, removed when dropped. `None` when the system cannot make
/// one (the input is then skipped: that is no finding about the code under test).
pub fn scratch() -> Option<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("edgeimage-fuzz")
        .tempdir()
        .ok()
}

/// Write `data` to `dir/name` and return the path; `None` if the write fails.
pub fn put(dir: &Path, name: &str, data: &[u8]) -> Option<PathBuf> {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).ok()?;
    }
    std::fs::write(&p, data).ok()?;
    Some(p)
}
