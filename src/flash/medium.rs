//! A target opened for writing: a block device (exclusive, direct I/O) or a regular file.
//!
//! Block devices are opened `O_EXCL` (the kernel refuses while the disk or a partition is
//! mounted, or held by device-mapper, RAID, or another `O_EXCL` opener) and `O_DIRECT`, so
//! writes and read-back go to the device, not the page cache. Chunks whose offset or length is
//! not a multiple of 4096 (only the tail of an odd-sized plain image) go through a second,
//! buffered descriptor. Regular files are written through the page cache; after `fdatasync`
//! they are read back with `O_DIRECT` where the filesystem supports it, else after dropping
//! the range from the page cache (`POSIX_FADV_DONTNEED`).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::verify::target::{AlignedBuf, ALIGN};

/// What to do with the image's unmapped space on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unmapped {
    /// Leave it as it is (fastest; the image's mapped bytes are all that is promised).
    Keep,
    /// Zero it (`BLKZEROOUT`; files are written sparsely and read as zeros anyway).
    Zero,
    /// Discard it (`BLKDISCARD`; for SSDs and SD cards).
    Discard,
}

/// A place an image is written to. The flash pipeline only talks to this trait, so tests can
/// put a failing disk in its place.
pub trait Medium: Send + Sync {
    /// The path (for messages).
    fn path(&self) -> &Path;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Called before the first write: a file target is emptied and sized here (not when
    /// opened, so a run refused after opening leaves it alone).
    fn begin(&self) -> io::Result<()> {
        Ok(())
    }
    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &AlignedBuf) -> io::Result<()>;
    /// Make everything written so far durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
    /// Read `len` bytes at `offset` from the device itself, not from the page cache.
    fn read_back(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()>;
    /// Zero or discard `[offset, offset + len)`.
    fn fill(&self, offset: u64, len: u64, how: Unmapped) -> io::Result<()>;
    /// Ask the kernel to re-read the partition table (block devices).
    fn reread_partitions(&self) {}
    /// `(major, minor)` of the opened block device.
    fn device_number(&self) -> Option<(u32, u32)> {
        None
    }
}

/// A block device or regular file opened for flashing.
pub struct Opened {
    path: PathBuf,
    /// `O_DIRECT` descriptor (block devices: read-write and exclusive; files: read-only, when
    /// the filesystem supports it).
    direct: Option<File>,
    /// Direct reads work (cleared when a filesystem refuses them after accepting the open).
    direct_reads: std::sync::atomic::AtomicBool,
    /// Buffered read-write descriptor.
    file: File,
    device: bool,
    size: u64,
    rdev: Option<(u32, u32)>,
}

fn errno_message(e: &io::Error, path: &Path) -> String {
    match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{} is busy: it (or a partition on it) is mounted, used as swap, or held by device-mapper/RAID or another program (exclusive open refused); release it first",
            path.display()
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "no permission to write {}: run as root (or a user in the disk group)",
            path.display()
        ),
        Some(libc::EROFS) => format!("{} is read-only", path.display()),
        _ => format!("cannot open {}: {e}", path.display()),
    }
}

impl Opened {
    /// Open a whole block device exclusively for direct I/O.
    pub fn device(path: &Path) -> Result<Opened> {
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_EXCL | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| anyhow::anyhow!(errno_message(&e, path)))?;
        let meta = direct
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        if !meta.file_type().is_block_device() {
            anyhow::bail!("{} is not a block device", path.display());
        }
        let rdev = meta.rdev();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| anyhow::anyhow!(errno_message(&e, path)))?;
        let size = (&direct)
            .seek(SeekFrom::End(0))
            .with_context(|| format!("finding the size of {}", path.display()))?;
        Ok(Opened {
            path: path.to_path_buf(),
            direct: Some(direct),
            direct_reads: true.into(),
            file,
            device: true,
            size,
            rdev: Some((libc::major(rdev), libc::minor(rdev))),
        })
    }

    /// Open (or create) a regular file; [`Medium::begin`] empties it and gives it `size`
    /// bytes, and it is written sparsely, so it ends up byte for byte the image.
    pub fn file(path: &Path, size: u64) -> Result<Opened> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot create the target file {}", path.display()))?;
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .ok();
        Ok(Opened {
            path: path.to_path_buf(),
            direct_reads: direct.is_some().into(),
            direct,
            file,
            device: false,
            size,
            rdev: None,
        })
    }

    fn aligned(offset: u64, len: usize) -> bool {
        offset % ALIGN as u64 == 0 && len % ALIGN == 0
    }
}

fn ioctl_range(f: &File, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT / BLKDISCARD read a u64[2] {start, length} from the pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), request as _, range.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `_IO(0x12, nr)`.
const fn blk_io(nr: libc::c_ulong) -> libc::c_ulong {
    (0x12 << 8) | nr
}
const BLKRRPART: libc::c_ulong = blk_io(95);
const BLKDISCARD: libc::c_ulong = blk_io(119);
const BLKZEROOUT: libc::c_ulong = blk_io(127);

impl Medium for Opened {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn begin(&self) -> io::Result<()> {
        if !self.device {
            self.file.set_len(0)?;
            self.file.set_len(self.size)?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &AlignedBuf) -> io::Result<()> {
        let bytes = data.as_slice();
        match &self.direct {
            Some(d) if self.device && Self::aligned(offset, bytes.len()) => {
                d.write_all_at(bytes, offset)
            }
            _ => self.file.write_all_at(bytes, offset),
        }
    }

    fn sync(&self) -> io::Result<()> {
        if let Some(d) = &self.direct {
            if self.device {
                d.sync_data()?;
            }
        }
        self.file.sync_data()
    }

    fn read_back(&self, offset: u64, len: usize, buf: &mut AlignedBuf) -> io::Result<()> {
        if buf.capacity() < len {
            *buf = AlignedBuf::new(len);
        }
        buf.set_len(len);
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(d) = self
            .direct
            .as_ref()
            .filter(|_| self.direct_reads.load(Relaxed))
        {
            if Self::aligned(offset, len) {
                match d.read_exact_at(buf.as_mut_slice(), offset) {
                    Ok(()) => return Ok(()),
                    // Some filesystems accept O_DIRECT at open but not for every read.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !self.device => {
                        self.direct_reads.store(false, Relaxed)
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // SAFETY: posix_fadvise only takes plain integers.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        self.file.read_exact_at(buf.as_mut_slice(), offset)
    }

    fn fill(&self, offset: u64, len: u64, how: Unmapped) -> io::Result<()> {
        if len == 0 || how == Unmapped::Keep {
            return Ok(());
        }
        if self.device {
            let req = if how == Unmapped::Zero {
                BLKZEROOUT
            } else {
                BLKDISCARD
            };
            // Both need 512-byte aligned ranges; the unmapped space of an image is made of
            // whole 4096-byte blocks.
            return ioctl_range(&self.file, req, offset, len);
        }
        // A file: punching a hole zeroes and discards.
        // SAFETY: fallocate only takes plain integers.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn reread_partitions(&self) {
        if self.device {
            if let Some(d) = &self.direct {
                // SAFETY: BLKRRPART takes no argument. Failure only means the kernel keeps
                // its old view until the next boot or `partprobe`.
                unsafe { libc::ioctl(d.as_raw_fd(), BLKRRPART as _, 0) };
            }
        }
    }

    fn device_number(&self) -> Option<(u32, u32)> {
        self.rdev
    }
}

/// Write zeros over `[offset, offset + len)` of `m`, clipped to the medium.
pub fn zero(m: &dyn Medium, offset: u64, len: u64) -> io::Result<()> {
    let end = (offset + len).min(m.size());
    if offset >= end {
        return Ok(());
    }
    let len = (end - offset) as usize;
    let buf = AlignedBuf::new(len);
    m.write_at(offset, &buf)
}

/// Leave no valid partition table: zero the first MiB (protective MBR, primary GPT), the
/// last MiB of the image (its backup GPT) and the last MiB of the medium (a backup GPT from
/// an earlier, larger layout, which firmware would otherwise restore from).
pub fn wipe(m: &dyn Medium, image_size: u64) -> io::Result<()> {
    let size = m.size();
    let mib = 1u64 << 20;
    // Ends rounded down to 4096 bytes where possible, so block devices take them directly.
    let tail = |end: u64| -> u64 {
        let start = end.saturating_sub(mib);
        if start % 4096 == 0 || end % 4096 != 0 {
            start
        } else {
            start - start % 4096
        }
    };
    // Every region is tried even if one fails (a failing disk may still take some).
    let img_end = image_size.min(size);
    let first = zero(m, 0, mib);
    let image_tail = zero(m, tail(img_end), img_end - tail(img_end));
    let disk_tail = if size != img_end {
        zero(m, tail(size), size - tail(size))
    } else {
        Ok(())
    };
    first.and(image_tail).and(disk_tail)?;
    m.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_target_is_sparse_written_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.img");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let m = Opened::file(&p, 8 << 20).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            vec![7u8; 1 << 20],
            "opening changes nothing"
        );
        m.begin().unwrap();
        let mut buf = AlignedBuf::new(8192);
        buf.as_mut_slice()[..5].copy_from_slice(b"hello");
        m.write_at(4 << 20, &buf).unwrap();
        m.sync().unwrap();
        let mut back = AlignedBuf::new(0);
        m.read_back(4 << 20, 8192, &mut back).unwrap();
        assert_eq!(back.as_slice(), buf.as_slice());
        // The old content is gone (truncated), the file has the image's size.
        m.read_back(0, 4096, &mut back).unwrap();
        assert!(back.as_slice().iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8 << 20);
        // Odd offsets and lengths work too.
        let mut odd = AlignedBuf::new(3);
        odd.as_mut_slice().copy_from_slice(b"xyz");
        m.write_at(12345, &odd).unwrap();
        m.sync().unwrap();
        m.read_back(12345, 3, &mut back).unwrap();
        assert_eq!(back.as_slice(), b"xyz");
        wipe(&m, 8 << 20).unwrap();
        m.read_back(12288, 4096, &mut back).unwrap();
        assert!(back.as_slice().iter().all(|&b| b == 0));
    }
}
