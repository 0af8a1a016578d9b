//! The image `inspect` reads, by random access, whatever its form:
//!
//! - raw: the file itself;
//! - zstd with a seek table (what `edgeimage build` writes): each frame decompressed when a
//!   read needs it (a few kept), so a 1 TiB disk costs the frames that are read, and a frame
//!   that expands past what the seek table says is refused;
//! - any other zstd stream: decompressed once into a sparse temporary file, at most
//!   [`MAX_STREAM`] bytes: a 16 MiB stream that expands to 512 GiB is refused at the limit
//!   instead of decompressed for hours.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use crate::artifact::seekable::{self, SeekTable};

/// The most a zstd image without a seek table is decompressed for `inspect` (a Talos disk
/// image is one to a few GiB).
pub const MAX_STREAM: u64 = 8 << 30;

/// Decompressed frames kept for the next reads.
const CACHED_FRAMES: usize = 8;

/// Recently used frames (index, bytes), most recent last.
type FrameCache = Mutex<Vec<(usize, Arc<Vec<u8>>)>>;

/// An image opened for reading at any offset.
pub struct Image {
    src: Source,
    len: u64,
    format: &'static str,
}

enum Source {
    Raw(File),
    Seekable {
        file: File,
        what: String,
        table: SeekTable,
        cache: FrameCache,
    },
}

impl Image {
    /// Open `path`: raw, seekable zstd, or a zstd stream (decompressed, bounded).
    pub fn open(path: &Path) -> Result<Image> {
        let what = path.display().to_string();
        let f = crate::input::open(path, crate::input::Kind::Image)?.into_file();
        let mut magic = [0u8; 4];
        let n = f
            .read_at(&mut magic, 0)
            .with_context(|| format!("reading {what}"))?;
        if n < 4 || magic != [0x28, 0xb5, 0x2f, 0xfd] {
            let len = f
                .metadata()
                .with_context(|| format!("reading the size of {what}"))?
                .len();
            return Ok(Image {
                src: Source::Raw(f),
                len,
                format: "raw",
            });
        }
        if let Some(table) = seekable::read_seek_table(&f, &what)? {
            return Ok(Image {
                len: table.decompressed_size,
                src: Source::Seekable {
                    file: f,
                    what,
                    table,
                    cache: Mutex::new(Vec::new()),
                },
                format: "zstd",
            });
        }
        let (file, len) = decompress_stream(f, &what, MAX_STREAM)?;
        Ok(Image {
            src: Source::Raw(file),
            len,
            format: "zstd",
        })
    }

    /// The decompressed size.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `raw` or `zstd`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    /// Read from byte `offset` up to the end of `buf` or of the image, whichever comes
    /// first; returns the bytes read (0 at or past the end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        if n > 0 {
            self.read_exact_at(&mut buf[..n], offset)?;
        }
        Ok(n)
    }

    /// Fill `buf` from byte `offset` of the (decompressed) image.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "bytes {offset}..{} lie past the image's {} bytes",
                        offset.saturating_add(buf.len() as u64),
                        self.len
                    ),
                )
            })?;
        match &self.src {
            Source::Raw(f) => f.read_exact_at(buf, offset),
            Source::Seekable {
                file,
                what,
                table,
                cache,
            } => {
                let mut at = offset;
                for i in table.frames_overlapping(offset, end) {
                    let frame = self.frame(file, what, table, cache, i)?;
                    let fr = &table.frames[i];
                    let from = (at - fr.offset) as usize;
                    let to = (end.min(fr.offset + fr.size) - fr.offset) as usize;
                    let dst = (at - offset) as usize;
                    buf[dst..dst + (to - from)].copy_from_slice(&frame[from..to]);
                    at += (to - from) as u64;
                }
                Ok(())
            }
        }
    }

    fn frame(
        &self,
        file: &File,
        what: &str,
        table: &SeekTable,
        cache: &FrameCache,
        i: usize,
    ) -> io::Result<Arc<Vec<u8>>> {
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = c.iter().position(|(n, _)| *n == i) {
            let hit = c.remove(k);
            let data = hit.1.clone();
            c.push(hit);
            return Ok(data);
        }
        let mut got = None;
        seekable::decompress_frames(file, what, table, &[i], 1, &mut |_, _, bytes| {
            got = Some(bytes);
            Ok(false)
        })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}")))?;
        let data = Arc::new(got.unwrap_or_default());
        if c.len() >= CACHED_FRAMES {
            c.remove(0);
        }
        c.push((i, data.clone()));
        Ok(data)
    }
}

/// Decompress a zstd stream into an anonymous sparse temporary file (zeros are not written),
/// refusing one that expands past `max` bytes.
fn decompress_stream(f: File, what: &str, max: u64) -> Result<(File, u64)> {
    let mut out = tempfile::tempfile().context("creating a temporary file")?;
    let mut dec = zstd::Decoder::new(io::BufReader::new(f))
        .with_context(|| format!("{what}: not a valid zstd stream"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let filled = crate::layout::read_up_to(&mut dec, &mut buf).with_context(|| {
            format!("{what}: corrupt or truncated zstd data after image byte {pos}")
        })?;
        if filled == 0 {
            break;
        }
        if pos + filled as u64 > max {
            bail!(
                "{what}: the zstd stream expands past {}, the most inspect decompresses from a \
                 stream without a seek table; images edgeimage builds have one (and are read \
                 frame by frame); for another image, decompress it first (zstd -d) if it is \
                 really that large",
                crate::progress::human_bytes(max)
            );
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(pos))?;
            out.write_all(&buf[..filled])?;
        }
        pos += filled as u64;
    }
    out.set_len(pos)?;
    Ok((out, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        let mut v = vec![0u8; (5 << 20) + 1234];
        for (i, b) in v.iter_mut().enumerate().skip(1 << 19).take(3 << 20) {
            *b = (i as u32).wrapping_mul(2654435761).to_le_bytes()[3];
        }
        v
    }

    fn reads_back(img: &Image, data: &[u8]) {
        assert_eq!(img.len(), data.len() as u64);
        for (off, n) in [
            (0u64, 10usize),
            (1 << 20, 4096),
            ((1 << 20) - 7, 20),
            (5 << 20, 1234),
        ] {
            let mut b = vec![0u8; n];
            img.read_exact_at(&mut b, off).unwrap();
            assert_eq!(&b[..], &data[off as usize..off as usize + n], "{off}+{n}");
        }
        let mut b = vec![0u8; 2];
        let e = img
            .read_exact_at(&mut b, data.len() as u64 - 1)
            .unwrap_err();
        assert!(e.to_string().contains("past the image's"), "{e}");
    }

    #[test]
    fn raw_seekable_and_stream_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample();
        let raw = dir.path().join("a.raw");
        std::fs::write(&raw, &data).unwrap();
        let img = Image::open(&raw).unwrap();
        assert_eq!(img.format(), "raw");
        reads_back(&img, &data);

        let seek = dir.path().join("a.raw.zst");
        let mut w = seekable::SeekableWriter::new(Vec::new(), 3, 2).unwrap();
        w.write_all(&data).unwrap();
        std::fs::write(&seek, w.finish().unwrap()).unwrap();
        let img = Image::open(&seek).unwrap();
        assert!(matches!(img.src, Source::Seekable { .. }));
        reads_back(&img, &data);

        let plain = dir.path().join("b.raw.zst");
        std::fs::write(&plain, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let img = Image::open(&plain).unwrap();
        assert_eq!(img.format(), "zstd");
        reads_back(&img, &data);
    }

    /// A stream that expands past the limit is refused there, not decompressed to the end.
    #[test]
    fn a_zstd_bomb_without_seek_table_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.zst");
        let mut enc = zstd::Encoder::new(std::fs::File::create(&p).unwrap(), 19).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let e = format!(
            "{:#}",
            decompress_stream(f, "bomb.zst", 32 << 20).unwrap_err()
        );
        assert!(
            e.contains("bomb.zst: the zstd stream expands past 32.0 MiB"),
            "{e}"
        );
    }
}
