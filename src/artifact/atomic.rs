//! Output files that appear whole or not at all.
//!
//! The data is written to an unnamed file (`O_TMPFILE`) in the target directory, so a build that
//! is killed at any point leaves nothing behind; when it is complete and synced it gets a name
//! with `linkat` and is renamed over the target, then the directory is synced. On filesystems
//! without `O_TMPFILE` a hidden named temporary file is used instead (removed on error).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A file being written; [`AtomicFile::commit`] makes it appear at its path.
pub struct AtomicFile {
    file: File,
    target: PathBuf,
    /// The named temporary file, when `O_TMPFILE` was not available.
    named: Option<tempfile::TempPath>,
}

impl AtomicFile {
    /// Start writing `target` with permission bits `mode` (e.g. 0o644; 0o600 for secrets).
    pub fn create(target: &Path, mode: u32) -> Result<AtomicFile> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let hint = || {
            format!(
                "cannot write into {}: choose a writable output directory (--out DIR)",
                dir.display()
            )
        };
        match OpenOptions::new()
            .write(true)
            .read(true)
            .mode(mode)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) => {
                // The mode passed to open is filtered by the umask; set it exactly.
                let f = AtomicFile {
                    file,
                    target: target.to_path_buf(),
                    named: None,
                };
                f.file.set_permissions(mode_perm(mode)).with_context(hint)?;
                Ok(f)
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let named = tempfile::Builder::new()
                    .prefix(".edgeimage-")
                    .permissions(mode_perm(mode))
                    .tempfile_in(dir)
                    .with_context(hint)?;
                let (file, path) = named.into_parts();
                Ok(AtomicFile {
                    file,
                    target: target.to_path_buf(),
                    named: Some(path),
                })
            }
            Err(e) => Err(anyhow::Error::new(e).context(hint())),
        }
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Sync the data and give the file its name (replacing an older file of that name).
    pub fn commit(self) -> Result<PathBuf> {
        let target = self.target.clone();
        let ctx = || format!("finishing {}", target.display());
        self.file.sync_all().with_context(ctx)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match self.named {
            Some(tmp) => {
                tmp.persist(&target)
                    .map_err(|e| e.error)
                    .with_context(ctx)?;
            }
            None => {
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
                let _ = fs::remove_file(&tmp);
                link_fd(&self.file, &tmp).with_context(ctx)?;
                if let Err(e) = fs::rename(&tmp, &target) {
                    let _ = fs::remove_file(&tmp);
                    return Err(anyhow::Error::new(e).context(ctx()));
                }
            }
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(ctx)?;
        Ok(target)
    }
}

/// Write `bytes` to `target` atomically with permission bits `mode`.
pub fn write(target: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    use std::io::Write;
    let mut f = AtomicFile::create(target, mode)?;
    f.file()
        .write_all(bytes)
        .with_context(|| format!("writing {}", target.display()))?;
    f.commit()
}

fn mode_perm(mode: u32) -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(mode)
}

/// Give an `O_TMPFILE` file a name.
fn link_fd(file: &File, to: &Path) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Write a layout to `target` in one streaming pass (nothing held in memory); returns its
/// size and lowercase hex SHA-256.
pub fn write_layout(
    target: &Path,
    layout: &crate::layout::Layout,
    mode: u32,
) -> Result<(u64, String)> {
    use sha2::Digest;
    use std::io::{Read, Write};
    let mut f = AtomicFile::create(target, mode)?;
    let mut h = sha2::Sha256::new();
    let mut r = layout.reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("reading the content of {}", target.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        f.file()
            .write_all(&buf[..n])
            .with_context(|| format!("writing {}", target.display()))?;
    }
    f.commit()?;
    Ok((layout.len(), hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appears_only_on_commit_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("x.bin");
        let mut f = AtomicFile::create(&target, 0o600).unwrap();
        f.file().write_all(b"hello").unwrap();
        assert!(!target.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(&d.path().join("y"), 0o644).unwrap();
        f.file().write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn unwritable_directory_is_named() {
        let e = AtomicFile::create(Path::new("/proc/nope/x"), 0o644)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/proc/nope"), "{e:#}");
    }
}
