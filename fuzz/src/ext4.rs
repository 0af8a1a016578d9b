//! How the `ext4` fuzz target reads its input, shared with the seed check of `cargo xtask
//! fuzz` (xtask/src/fuzz.rs): the input is the leading bytes of a filesystem of
//! [`VOLUME_LEN`] bytes whose rest reads as zeros, as a sparse image's does.

use edgeimage::format::ext4::Volume;

/// The partition the input is the start of.
pub const VOLUME_LEN: u64 = 64 << 20;
/// Bytes read of one file at most.
pub const MAX_FILE: u64 = 1 << 20;

/// The filesystem the input starts.
pub fn volume(data: &[u8]) -> anyhow::Result<Volume<'_>> {
    Volume::open(VOLUME_LEN, edgeimage::layout::zero_padded(data))
}

/// What [`exercise`] got through.
#[derive(Debug, Default)]
pub struct Exercised {
    /// References the image cache reading resolved completely.
    pub resolved: usize,
    /// Files read from the root directory.
    pub files: usize,
}

/// Open the filesystem, read it as `inspect` reads an image cache, then list the root and
/// read its files (up to [`MAX_FILE`] bytes each).
pub fn exercise(data: &[u8]) -> anyhow::Result<Exercised> {
    let vol = volume(data)?;
    let mut done = Exercised::default();
    if let Ok(r) = edgeimage::inspect::cache::read(&vol) {
        done.resolved = r.images.iter().filter(|i| i.missing.is_empty()).count();
    }
    let root = vol.root()?;
    for e in vol.list(&root)? {
        if let Ok(i) = vol.inode(e.ino) {
            if i.is_file() && vol.read(&i, MAX_FILE).is_ok() {
                done.files += 1;
            }
        }
    }
    let _ = vol.find("manifests/registry.k8s.io/pause/reference/3.10");
    Ok(done)
}
