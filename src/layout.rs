//! A byte layout: what every composer (GPT, ESP, META, UKI) produces and what the artifact
//! writer streams.
//!
//! A [`Layout`] describes an object of a fixed length (a whole disk image, one partition, one
//! file inside a filesystem) as a sorted list of non-overlapping [`Extent`]s. Each extent is
//! filled from memory, from a region of an input file, or with zeros. Bytes covered by no
//! extent are zero too, but *unmapped*: nothing was written there, so a flasher may skip them.
//! A mapped zero extent ([`Fill::Zero`]) is different: those zeros are part of the content (a
//! FAT's free entries, the zeroed tail of a META copy) and must land on the target.
//!
//! Layouts nest: the UKI is a layout, placed as a file's data inside the ESP layout, which is
//! placed at the partition offset inside the disk layout. Nothing is copied; big inputs stay
//! in their files until the final stream reads them, so the image is never held in memory.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

/// The largest disk image edgeimage makes or reads (`disk_size`): 4 TiB, the most a seek
/// table of `.raw.zst` describes (2^22 frames of 1 MiB). Unwritten space costs little: one
/// precompressed zero frame per MiB (about 30 bytes, plus 8 in the seek table) and one cached
/// digest, so build time follows the bytes written, not the disk's size; a real image is a
/// few GiB anyway, as Talos grows its partitions to the disk it is installed on.
pub const MAX_DISK_SIZE: u64 = 4 << 40;

/// An input file opened once and kept open, so the bytes that were checked against their
/// pin are the bytes that are read later.
#[derive(Clone)]
pub struct SharedFile {
    file: Arc<File>,
    path: Arc<PathBuf>,
}

impl SharedFile {
    pub fn new(file: File, path: impl Into<PathBuf>) -> Self {
        Self {
            file: Arc::new(file),
            path: Arc::new(path.into()),
        }
    }

    /// The open file (for positional reads).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the file came from (for error messages).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Fill `buf` completely from `offset`; a short file is an error naming the file.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "reading {} bytes at offset {} of {}: {}",
                    buf.len(),
                    offset,
                    self.path.display(),
                    e
                ),
            )
        })
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl SharedFile {
    /// A reader of bytes `[start, end)` (positional reads: clones read independently).
    pub fn region(&self, start: u64, end: u64) -> RegionReader {
        RegionReader {
            file: self.clone(),
            pos: start,
            end,
        }
    }
}

/// Positional reads of `data` as the start of a longer object whose rest reads as zeros (as
/// a sparse image's does): how the filesystem fuzz targets feed a reader a few KiB as a
/// volume of MiBs.
pub fn zero_padded(data: &[u8]) -> impl Fn(u64, &mut [u8]) -> io::Result<()> + '_ {
    move |off, buf| {
        buf.fill(0);
        let src = usize::try_from(off)
            .ok()
            .and_then(|start| data.get(start..))
            .unwrap_or_default();
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(())
    }
}

/// Reads `[pos, end)` of a shared file with positional reads.
pub struct RegionReader {
    pub(crate) file: SharedFile,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl Read for RegionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for RegionReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        // Positions may pass the end, where reads return nothing (EOF).
        let new = match to {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            io::SeekFrom::End(d) => self.end.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        self.pos = new;
        Ok(new)
    }
}

impl fmt::Debug for SharedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedFile({})", self.path.display())
    }
}

/// Where an extent's bytes come from.
#[derive(Clone, Debug)]
pub enum Fill {
    /// Bytes held in memory (headers, tables, small files). The extent covers all of them.
    Bytes(Arc<[u8]>),
    /// A region of an input file starting at the given file offset.
    File(SharedFile, u64),
    /// Zeros that are content: they must be written.
    Zero,
}

/// One mapped region of a layout.
#[derive(Clone, Debug)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub fill: Fill,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A fixed-length byte object described by extents. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    len: u64,
    extents: Vec<Extent>,
}

impl Layout {
    /// An empty (all unmapped) layout of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self {
            len,
            extents: Vec::new(),
        }
    }

    /// A layout that is exactly these bytes.
    pub fn from_bytes(data: impl Into<Arc<[u8]>>) -> Self {
        let data = data.into();
        let mut l = Self::new(data.len() as u64);
        if !data.is_empty() {
            l.extents.push(Extent {
                offset: 0,
                len: data.len() as u64,
                fill: Fill::Bytes(data),
            });
        }
        l
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped extents, sorted by offset, never overlapping.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Total number of mapped bytes.
    pub fn mapped_len(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// Put bytes at `offset`.
    pub fn put_bytes(&mut self, offset: u64, data: impl Into<Arc<[u8]>>) -> Result<()> {
        let data: Arc<[u8]> = data.into();
        let len = data.len() as u64;
        self.insert(Extent {
            offset,
            len,
            fill: Fill::Bytes(data),
        })
    }

    /// Map `len` bytes of zeros at `offset` (zeros that must be written).
    pub fn put_zeros(&mut self, offset: u64, len: u64) -> Result<()> {
        self.insert(Extent {
            offset,
            len,
            fill: Fill::Zero,
        })
    }

    /// Map `len` bytes of `file` starting at `file_offset` to `offset`.
    pub fn put_file(
        &mut self,
        offset: u64,
        file: SharedFile,
        file_offset: u64,
        len: u64,
    ) -> Result<()> {
        self.insert(Extent {
            offset,
            len,
            fill: Fill::File(file, file_offset),
        })
    }

    /// Place another layout's extents at `offset` (it must fit).
    pub fn put_layout(&mut self, offset: u64, inner: &Layout) -> Result<()> {
        if offset
            .checked_add(inner.len)
            .is_none_or(|end| end > self.len)
        {
            bail!(
                "a {}-byte object placed at offset {} does not fit a {}-byte layout",
                inner.len,
                offset,
                self.len
            );
        }
        for e in &inner.extents {
            self.insert(Extent {
                offset: offset + e.offset,
                len: e.len,
                fill: e.fill.clone(),
            })?;
        }
        Ok(())
    }

    /// Place bytes `[start, start + len)` of another layout at `offset` (the pieces of a
    /// file that a filesystem stores in several runs of blocks). With `dense`, what `inner`
    /// leaves unmapped there is mapped as zeros: a file's holes must read as zeros on the
    /// target, whatever was on the disk before.
    pub fn put_layout_range(
        &mut self,
        offset: u64,
        inner: &Layout,
        start: u64,
        len: u64,
        dense: bool,
    ) -> Result<()> {
        let end = match start.checked_add(len) {
            Some(end) if end <= inner.len => end,
            _ => bail!(
                "bytes {start}..+{len} lie outside the {}-byte object",
                inner.len
            ),
        };
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            bail!(
                "a {len}-byte piece placed at offset {offset} does not fit a {}-byte layout",
                self.len
            );
        }
        let first = inner.extents.partition_point(|x| x.end() <= start);
        let mut at = start;
        for e in inner.extents[first..].iter().take_while(|x| x.offset < end) {
            let s = e.offset.max(start);
            let t = e.end().min(end);
            if dense && s > at {
                self.put_zeros(offset + (at - start), s - at)?;
            }
            at = t;
            let skip = s - e.offset;
            let fill = match &e.fill {
                Fill::Bytes(b) => Fill::Bytes(b[skip as usize..(t - e.offset) as usize].into()),
                Fill::File(f, at) => Fill::File(f.clone(), at + skip),
                Fill::Zero => Fill::Zero,
            };
            self.insert(Extent {
                offset: offset + (s - start),
                len: t - s,
                fill,
            })?;
        }
        if dense && end > at {
            self.put_zeros(offset + (at - start), end - at)?;
        }
        Ok(())
    }

    /// Lowercase hex SHA-256 of the layout's bytes, read in one streaming pass.
    pub fn sha256_hex(&self) -> io::Result<String> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut r = self.reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    }

    fn insert(&mut self, e: Extent) -> Result<()> {
        if e.len == 0 {
            return Ok(());
        }
        let Some(end) = e.offset.checked_add(e.len).filter(|&end| end <= self.len) else {
            bail!(
                "extent at {}..+{} lies outside the {}-byte layout",
                e.offset,
                e.len,
                self.len
            );
        };
        // Position of the first extent that starts at or after e.offset.
        let idx = self.extents.partition_point(|x| x.offset < e.offset);
        if idx > 0 && self.extents[idx - 1].end() > e.offset {
            let p = &self.extents[idx - 1];
            bail!(
                "extent {}..{} overlaps extent {}..{}",
                e.offset,
                end,
                p.offset,
                p.end()
            );
        }
        if let Some(n) = self.extents.get(idx) {
            if n.offset < end {
                bail!(
                    "extent {}..{} overlaps extent {}..{}",
                    e.offset,
                    end,
                    n.offset,
                    n.end()
                );
            }
        }
        self.extents.insert(idx, e);
        Ok(())
    }

    /// A reader over the whole layout: extent bytes, zeros in the gaps.
    pub fn reader(&self) -> LayoutReader<'_> {
        LayoutReader {
            layout: self,
            pos: 0,
            next: 0,
        }
    }

    /// Read `buf.len()` bytes at `offset` (gaps read as zeros).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut r = LayoutReader {
            layout: self,
            pos: offset,
            next: self.extents.partition_point(|x| x.end() <= offset),
        };
        r.read_exact(buf)
    }

    /// All bytes of the layout in memory. Only for small layouts (headers, tests).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "layout too large"))?;
        let mut v = vec![0u8; len];
        self.read_at(0, &mut v)?;
        Ok(v)
    }
}

/// Sequential reader over a [`Layout`]; see [`Layout::reader`].
pub struct LayoutReader<'a> {
    layout: &'a Layout,
    pos: u64,
    /// Index of the first extent that ends after `pos`.
    next: usize,
}

impl LayoutReader<'_> {
    /// The current position.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

impl Read for LayoutReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.layout.len.saturating_sub(self.pos);
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(remaining);
        let extents = &self.layout.extents;
        while self.next < extents.len() && extents[self.next].end() <= self.pos {
            self.next += 1;
        }
        let n = match extents.get(self.next) {
            Some(e) if e.offset <= self.pos => {
                let within = self.pos - e.offset;
                let n = want.min(e.len - within) as usize;
                let out = &mut buf[..n];
                match &e.fill {
                    Fill::Bytes(b) => out.copy_from_slice(&b[within as usize..within as usize + n]),
                    Fill::File(f, foff) => f.read_exact_at(out, foff + within)?,
                    Fill::Zero => out.fill(0),
                }
                n
            }
            other => {
                // In a gap: zeros up to the next extent (or the end).
                let gap_end = other.map_or(self.layout.len, |e| e.offset);
                let n = want.min(gap_end - self.pos) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Read until `buf` is full or the reader ends; returns the bytes read.
pub fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The position a `Seek` on an object of `len` bytes, now at `pos`, moves to.
pub fn seek_target(pos: u64, len: u64, to: io::SeekFrom) -> io::Result<u64> {
    match to {
        io::SeekFrom::Start(n) => Some(n),
        io::SeekFrom::End(d) => len.checked_add_signed(d),
        io::SeekFrom::Current(d) => pos.checked_add_signed(d),
    }
    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))
}

/// Whether bytes `start..end` hold no extent (read as zeros without touching any input).
impl Layout {
    pub fn is_unmapped(&self, start: u64, end: u64) -> bool {
        let i = self.extents.partition_point(|e| e.end() <= start);
        self.extents.get(i).is_none_or(|e| e.offset >= end)
    }

    /// Where the next mapped byte at or after `pos` is (`None`: nothing mapped from there).
    pub fn next_mapped(&self, pos: u64) -> Option<u64> {
        let i = self.extents.partition_point(|e| e.end() <= pos);
        self.extents.get(i).map(|e| e.offset.max(pos))
    }
}

/// A static buffer of zeros for writers that emit runs of zeros.
pub fn zeros() -> &'static [u8] {
    &ZEROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_fills_gaps_with_zeros_and_nests() {
        let mut inner = Layout::new(8);
        inner.put_bytes(2, vec![1u8, 2, 3]).unwrap();
        let mut outer = Layout::new(16);
        outer.put_layout(4, &inner).unwrap();
        outer.put_zeros(12, 2).unwrap();
        outer.put_bytes(15, vec![9u8]).unwrap();
        let v = outer.to_vec().unwrap();
        assert_eq!(v, [0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(outer.mapped_len(), 6);
        let mut part = [0u8; 4];
        outer.read_at(5, &mut part).unwrap();
        assert_eq!(part, [0, 1, 2, 3]);
    }

    #[test]
    fn overlaps_and_overflows_are_errors() {
        let mut l = Layout::new(10);
        l.put_bytes(2, vec![0u8; 4]).unwrap();
        let e = l.put_zeros(5, 2).unwrap_err().to_string();
        assert!(e.contains("overlaps extent 2..6"), "{e}");
        assert!(l.put_zeros(0, 3).is_err());
        assert!(l
            .put_zeros(8, 3)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(l.put_zeros(u64::MAX, 3).is_err());
        l.put_zeros(6, 4).unwrap();
        assert!(l.put_layout(9, &Layout::new(2)).is_err());
    }
}
