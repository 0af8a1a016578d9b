//! What `verify` is pointed at, and how its bytes are read.
//!
//! Block devices are read with `O_DIRECT` (4096-byte aligned buffers, offsets and lengths), so
//! what is checked is what the device returns, not what the page cache remembers of the
//! write. Regular files are read normally: the page cache is the file's content.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Alignment of direct I/O.
pub const ALIGN: usize = 4096;

/// The kinds of target `verify` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A `.manifest.json`.
    Manifest,
    /// A raw disk image file (or a file a disk was written to).
    Image,
    /// A zstd-compressed image.
    Compressed,
    /// A block device (a written disk or stick).
    Device,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Image => "image",
            Kind::Compressed => "compressed image",
            Kind::Device => "block device",
        }
    }
}

/// Decide what `path` is: by file type, then by its first bytes (never by its name).
pub fn classify(path: &Path) -> Result<Kind> {
    let input = crate::input::open(path, crate::input::Kind::Disk)?;
    if input.is_device() {
        return Ok(Kind::Device);
    }
    let mut head = [0u8; 4];
    let mut f = input.into_file();
    let n = crate::layout::read_up_to(&mut f, &mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(match &head[..n] {
        [0x28, 0xb5, 0x2f, 0xfd] => Kind::Compressed,
        [b'{', ..] => Kind::Manifest,
        _ => Kind::Image,
    })
}

/// A byte buffer whose data starts at a 4096-byte aligned address.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let cap = len.next_multiple_of(ALIGN) + ALIGN;
        let raw = vec![0u8; cap];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len }
    }

    /// The whole aligned capacity (a multiple of [`ALIGN`] at least `len`).
    fn aligned_mut(&mut self, len: usize) -> &mut [u8] {
        let n = len.next_multiple_of(ALIGN);
        &mut self.raw[self.start..self.start + n]
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Bytes the buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    /// Use the first `len` bytes (at most [`AlignedBuf::capacity`]).
    pub fn set_len(&mut self, len: usize) {
        if len > self.capacity() {
            *self = AlignedBuf::new(len);
        }
        self.len = len;
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    /// The data padded with zeros to a multiple of [`ALIGN`] (what a direct write sends).
    pub fn padded(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len.next_multiple_of(ALIGN)]
    }
}

/// A file or block device opened for positional reads.
pub struct Source {
    file: File,
    pub path: PathBuf,
    pub direct: bool,
    /// Size in bytes (of the file, or the device).
    pub size: u64,
}

impl Source {
    pub fn open(path: &Path, kind: Kind) -> Result<Source> {
        let direct = kind == Kind::Device;
        let mut o = OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o
            .open(path)
            .with_context(|| format!("cannot open {} for reading", path.display()))?;
        let size = if direct {
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .with_context(|| format!("finding the size of {}", path.display()))?
        } else {
            file.metadata()
                .with_context(|| format!("reading the size of {}", path.display()))?
                .len()
        };
        Ok(Source {
            file,
            path: path.to_path_buf(),
            direct,
            size,
        })
    }

    /// Read `len` bytes at `offset` into `buf` (resized); bytes past the end of the source
    /// are an error naming the range.
    pub fn read_at(&self, buf: &mut AlignedBuf, offset: u64, len: usize) -> io::Result<()> {
        let end = offset + len as u64;
        if end > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {offset}-{} lie past the end of {} ({} bytes)",
                    end - 1,
                    self.path.display(),
                    self.size
                ),
            ));
        }
        if buf.raw.len() < len.next_multiple_of(ALIGN) + ALIGN {
            *buf = AlignedBuf::new(len);
        }
        buf.len = len;
        if self.direct {
            // Offsets are block-aligned; the length is rounded up to the alignment, and the
            // device is at least that long (devices are sized in 512-byte sectors, images
            // in 4096-byte blocks, so the rounded read ends inside the device).
            let want = len.next_multiple_of(ALIGN);
            let readable = (self.size - offset).min(want as u64) as usize;
            let dst = buf.aligned_mut(len);
            let mut done = 0;
            while done < readable {
                let n = self
                    .file
                    .read_at(&mut dst[done..want], offset + done as u64)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ended early at byte {}",
                            self.path.display(),
                            offset + done as u64
                        ),
                    ));
                }
                done += n;
            }
            if done < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended early", self.path.display()),
                ));
            }
            Ok(())
        } else {
            let dst = &mut buf.raw[buf.start..buf.start + len];
            self.file.read_exact_at(dst, offset)
        }
    }

    /// Read a small region into a plain vector.
    pub fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut b = AlignedBuf::new(len);
        self.read_at(&mut b, offset, len)?;
        Ok(b.as_slice().to_vec())
    }
}

/// Read everything from `r` into `buf`'s first `len` bytes (a stream's prefix).
pub fn read_prefix(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    let n = crate::layout::read_up_to(r, &mut v)?;
    v.truncate(n);
    Ok(v)
}
