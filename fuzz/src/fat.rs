//! How the `fat` fuzz target reads its input, shared with the seed check of `cargo xtask fuzz`
//! (xtask/src/fuzz.rs): the input is the leading bytes of a volume of [`VOLUME_LEN`] bytes whose
//! rest reads as zeros (as a sparse image's does), so FAT16 and FAT32 volumes of several MiB fit
//! seeds of a few hundred KiB.

use edgeimage::format::fat::{Limits, Volume};

/// The partition the input is the start of.
pub const VOLUME_LEN: u64 = 64 << 20;
/// Bytes read of one file at most.
pub const MAX_FILE: u64 = 1 << 20;
/// Bytes read of all files together at most.
pub const MAX_TOTAL: u64 = 8 << 20;

/// The volume the input starts.
pub fn volume(data: &[u8]) -> anyhow::Result<Volume<'_>> {
    Volume::open(VOLUME_LEN, edgeimage::layout::zero_padded(data))
}

/// What [`exercise`] got through.
#[derive(Debug, Default)]
pub struct Exercised {
    /// Files read (up to [`MAX_FILE`] bytes each).
    pub files: usize,
    /// Files, lookups or the label that failed.
    pub failed: usize,
}

/// Open the volume, read its label, walk it, read every file (up to the limits above) and look
/// up the paths edgeimage looks up; what fails past the walk is counted, not returned.
pub fn exercise(data: &[u8]) -> anyhow::Result<Exercised> {
    let vol = volume(data)?;
    let mut done = Exercised::default();
    if vol.label().is_err() {
        done.failed += 1;
    }
    let entries = vol.walk(&vol.root(), &Limits::default())?;
    let mut total = 0u64;
    for e in entries.iter().filter(|e| !e.is_dir) {
        if total >= MAX_TOTAL {
            break;
        }
        let n = e.size.min(MAX_FILE);
        total += n;
        let read = vol.open_file(e).and_then(|f| {
            let mut buf = vec![0u8; n as usize];
            f.read_at(0, &mut buf)
        });
        match read {
            Ok(()) => done.files += 1,
            Err(_) => done.failed += 1,
        }
    }
    for p in [
        "loader/loader.conf",
        "EFI/Linux",
        "config.yaml",
        "records",
        "a/b/c",
    ] {
        let ok = match vol.find(p) {
            Ok(Some(e)) if e.is_dir => vol.list(&e).is_ok(),
            Ok(Some(e)) if e.size <= MAX_FILE => vol.read_to_end(&e, MAX_FILE).is_ok(),
            Ok(_) => true,
            Err(_) => false,
        };
        if !ok {
            done.failed += 1;
        }
    }
    Ok(done)
}
