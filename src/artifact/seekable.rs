//! The zstd seekable format of `.raw.zst`: the image cut into independent zstd frames of
//! [`FRAME_SIZE`] decompressed bytes each (the last may be shorter), so every frame covers one
//! 1 MiB cell of the image, followed by a seek table in a skippable frame. A reader finds any
//! frame from the table, decompresses frames on several cores and skips the frames it does not
//! need; an ordinary zstd decoder (`zstd -d`, [`zstd::Decoder`]) ignores the skippable frame
//! and reads the frames as one stream.
//!
//! The layout follows the Zstandard Seekable Format specification, version 0.1.0 (repository
//! facebook/zstd, `contrib/seekable_format/zstd_seekable_compression_format.md`). All numbers
//! are little-endian:
//!
//! ```text
//! frame 0 | frame 1 | … | frame n-1 | seek table
//!
//! seek table (a skippable frame):
//!   Skippable_Magic_Number  u32  0x184D2A5E
//!   Frame_Size              u32  bytes after this field: the entries and the footer
//!   n entries:              Compressed_Size u32, Decompressed_Size u32,
//!                           [Checksum u32, only when Checksum_Flag is set]
//!   footer (9 bytes):       Number_Of_Frames u32,
//!                           Seek_Table_Descriptor u8 (bit 7 Checksum_Flag; bits 6-2
//!                             reserved, must be 0; bits 1-0 unused, not interpreted),
//!                           Seekable_Magic_Number u32 0x8F92EAB1 (the file's last bytes)
//! ```
//!
//! The sum of the compressed sizes of frames `0..i` is the offset of frame `i`. Tables written
//! here carry no checksums (descriptor 0): every frame carries its own content checksum and
//! its content size in its header instead, and any zstd decoder checks them. Each frame is
//! compressed on its own by single-threaded zstd, so the output depends only on the input and
//! the level, never on the number of workers.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};

/// Decompressed bytes per frame (the last frame of a file may hold fewer).
pub const FRAME_SIZE: usize = 1 << 20;

/// Largest seek table [`read_seek_table`] accepts (4 TiB of image in 1 MiB frames).
pub const MAX_FRAMES: u64 = 1 << 22;

/// Largest frame [`decompress_frames`] decompresses (whole frames are held in memory).
pub const MAX_READ_FRAME: u64 = 32 << 20;

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER_LEN: u64 = 9;
const CHECKSUM_FLAG: u8 = 0x80;
const RESERVED_BITS: u8 = 0x7C;
/// The smallest frame there is: a skippable frame's magic number and size (a zstd frame
/// needs at least 9 bytes).
const MIN_FRAME_LEN: u64 = 8;

/// The number of threads to compress or decompress with: every core.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn all_zero(b: &[u8]) -> bool {
    // OR-ing fixed-size chunks vectorizes; `iter().all` stops at every byte.
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0, |a, &x| a | x) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

/// Frames per compression worker between the caller and the output: enough to ride out
/// uneven frames (zeros are quick, kernel bytes slow).
const IN_FLIGHT: u64 = 4;

/// What a worker hands back: the compressed frame, and the input buffer for reuse.
type Done = (io::Result<Vec<u8>>, Vec<u8>);

struct Worker {
    jobs: SyncSender<Vec<u8>>,
    done: Receiver<Done>,
    thread: JoinHandle<()>,
}

/// Writes the seekable format: input is cut into [`FRAME_SIZE`] frames, which `workers`
/// threads compress (single-threaded zstd each, checksum and content size in the header),
/// and which are written in order; [`finish`](Self::finish) writes the last, shorter frame and
/// the seek table. The output is the same for any number of workers.
///
/// Frame `k` goes to worker `k % workers`; at most four frames per worker are in flight, so
/// memory stays at a few MiB per worker. [`flush`](Write::flush) writes the frames already
/// compressed, never a partial frame (that would break the frame grid).
pub struct SeekableWriter<W: Write> {
    inner: W,
    /// The frame being filled.
    cur: Vec<u8>,
    /// Input buffers handed back by the workers.
    free: Vec<Vec<u8>>,
    workers: Vec<Worker>,
    submitted: u64,
    written: u64,
    /// `(compressed, decompressed)` size of each frame written.
    entries: Vec<(u32, u32)>,
    failed: bool,
    level: i32,
    /// A frame of [`FRAME_SIZE`] zeros, compressed once, for [`Self::write_zero_frames`].
    zero_frame: Option<Vec<u8>>,
}

fn worker_gone() -> io::Error {
    io::Error::other("a zstd compression thread stopped")
}

fn compress_frames(
    mut c: zstd::bulk::Compressor<'static>,
    jobs: Receiver<Vec<u8>>,
    done: SyncSender<Done>,
) {
    let mut scratch = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME_SIZE));
    // Most of an image is unmapped space: a full frame of zeros compresses to the same bytes
    // every time, so they are compressed once.
    let mut zeros: Option<Vec<u8>> = None;
    for input in jobs {
        let zero = input.len() == FRAME_SIZE && all_zero(&input);
        let r = match &zeros {
            Some(z) if zero => Ok(z.clone()),
            _ => c
                .compress_to_buffer(&input[..], &mut scratch)
                .map(|n| scratch[..n].to_vec()),
        };
        if zero && zeros.is_none() {
            zeros = r.as_ref().ok().cloned();
        }
        if done.send((r, input)).is_err() {
            return;
        }
    }
}

impl<W: Write> SeekableWriter<W> {
    pub fn new(inner: W, level: i32, workers: usize) -> io::Result<Self> {
        let mut ws = Vec::new();
        for _ in 0..workers.max(1) {
            let c = Self::compressor(level)?;
            // At most IN_FLIGHT frames per worker (see `submit`): neither channel ever fills.
            let (jobs, jobs_rx) = sync_channel(IN_FLIGHT as usize);
            let (done_tx, done) = sync_channel(IN_FLIGHT as usize);
            let thread = std::thread::Builder::new()
                .name("zstd-frames".into())
                .spawn(move || compress_frames(c, jobs_rx, done_tx))?;
            ws.push(Worker { jobs, done, thread });
        }
        Ok(SeekableWriter {
            inner,
            cur: Vec::with_capacity(FRAME_SIZE),
            free: Vec::new(),
            workers: ws,
            submitted: 0,
            written: 0,
            entries: Vec::new(),
            failed: false,
            level,
            zero_frame: None,
        })
    }

    fn compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.include_checksum(true)?;
        c.include_contentsize(true)?;
        Ok(c)
    }

    /// Append `count` frames of [`FRAME_SIZE`] zeros without handing them to the workers: the
    /// frame is compressed once, with the workers' level and parameters, so the bytes are the
    /// ones writing the zeros would give. This is what keeps unwritten space cheap: a TiB of
    /// it costs a million small copies, not a TiB of input. The stream must be at a frame
    /// boundary (everything written so far a multiple of [`FRAME_SIZE`]).
    pub fn write_zero_frames(&mut self, count: u64) -> io::Result<()> {
        self.check()?;
        if !self.cur.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zero frames must start at a frame boundary",
            ));
        }
        self.failed = true;
        while self.written < self.submitted {
            self.write_next()?;
        }
        let frame = match self.zero_frame.take() {
            Some(f) => f,
            None => Self::compressor(self.level)?.compress(&vec![0u8; FRAME_SIZE])?,
        };
        let csize = frame.len() as u32;
        for _ in 0..count {
            self.inner.write_all(&frame)?;
            self.entries.push((csize, FRAME_SIZE as u32));
        }
        self.zero_frame = Some(frame);
        self.failed = false;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to this seekable zstd stream failed",
            ));
        }
        Ok(())
    }

    /// Hand the current frame to its worker, first writing frames until fewer than
    /// [`IN_FLIGHT`] per worker are in flight.
    fn submit(&mut self) -> io::Result<()> {
        let n = self.workers.len() as u64;
        while self.submitted - self.written >= IN_FLIGHT * n {
            self.write_next()?;
        }
        let next = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_SIZE));
        let frame = std::mem::replace(&mut self.cur, next);
        self.workers[(self.submitted % n) as usize]
            .jobs
            .send(frame)
            .map_err(|_| worker_gone())?;
        self.submitted += 1;
        Ok(())
    }

    /// Write the oldest frame in flight (waiting for it).
    fn write_next(&mut self) -> io::Result<()> {
        let n = self.workers.len() as u64;
        let (frame, mut input) = self.workers[(self.written % n) as usize]
            .done
            .recv()
            .map_err(|_| worker_gone())?;
        let size = input.len() as u32;
        input.clear();
        self.free.push(input);
        let frame = frame?;
        let csize = u32::try_from(frame.len())
            .map_err(|_| io::Error::other("a compressed frame exceeds 4 GiB"))?;
        self.inner.write_all(&frame)?;
        self.entries.push((csize, size));
        self.written += 1;
        Ok(())
    }

    fn finish_frames(&mut self) -> io::Result<()> {
        self.check()?;
        self.failed = true;
        if !self.cur.is_empty() {
            self.submit()?;
        }
        while self.written < self.submitted {
            self.write_next()?;
        }
        let table = seek_table(&self.entries)?;
        self.inner.write_all(&table)?;
        self.inner.flush()?;
        self.failed = false;
        Ok(())
    }

    /// Write the last frame and the seek table; return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let r = self.finish_frames();
        for w in self.workers {
            drop(w.jobs);
            w.thread.join().map_err(|_| worker_gone())?;
        }
        r.map(|()| self.inner)
    }
}

impl<W: Write> Write for SeekableWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        self.check()?;
        let len = data.len();
        while !data.is_empty() {
            let take = (FRAME_SIZE - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.cur.len() == FRAME_SIZE {
                self.failed = true;
                self.submit()?;
                self.failed = false;
            }
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.failed = true;
        while self.written < self.submitted {
            self.write_next()?;
        }
        self.inner.flush()?;
        self.failed = false;
        Ok(())
    }
}

/// The seek table frame for frames of the given `(compressed, decompressed)` sizes, without
/// checksums.
fn seek_table(entries: &[(u32, u32)]) -> io::Result<Vec<u8>> {
    let too_many = || {
        io::Error::other(format!(
            "{} frames are too many for a seek table",
            entries.len()
        ))
    };
    let n = u32::try_from(entries.len()).map_err(|_| too_many())?;
    let frame_size =
        u32::try_from(entries.len() as u64 * 8 + FOOTER_LEN).map_err(|_| too_many())?;
    let mut t = Vec::with_capacity(8 + frame_size as usize);
    t.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    t.extend_from_slice(&frame_size.to_le_bytes());
    for &(c, d) in entries {
        t.extend_from_slice(&c.to_le_bytes());
        t.extend_from_slice(&d.to_le_bytes());
    }
    t.extend_from_slice(&n.to_le_bytes());
    t.push(0);
    t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    Ok(t)
}

/// One frame of a seekable file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts in the file.
    pub compressed_offset: u64,
    pub compressed_size: u64,
    /// Where its content starts in the decompressed data.
    pub offset: u64,
    /// Its decompressed size (0 for a skippable or empty frame).
    pub size: u64,
}

impl Frame {
    fn describe(&self, index: usize) -> String {
        format!(
            "frame {index} (bytes {}..{} of the file, {}..{} decompressed)",
            self.compressed_offset,
            self.compressed_offset + self.compressed_size,
            self.offset,
            self.offset + self.size
        )
    }
}

/// The seek table of a seekable file, checked against the file: the frames follow each other
/// from byte 0 up to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeekTable {
    pub frames: Vec<Frame>,
    /// The sum of the frames' sizes.
    pub decompressed_size: u64,
}

impl SeekTable {
    /// The indices of the frames holding any of the decompressed bytes `start..end`.
    pub fn frames_overlapping(&self, start: u64, end: u64) -> Range<usize> {
        let first = self.frames.partition_point(|f| f.offset + f.size <= start);
        if end <= start {
            return first..first;
        }
        let last = self.frames.partition_point(|f| f.offset < end);
        first..last.max(first)
    }
}

fn read_at(f: &File, what: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
    f.read_exact_at(buf, offset).with_context(|| {
        format!(
            "{what}: reading bytes {offset}..{}",
            offset + buf.len() as u64
        )
    })
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Read and check the seek table of `f` (`what` names it in messages). `None` when the file
/// does not end in the seekable magic number (an ordinary `.zst`); an error naming the byte
/// offset when the table is there but damaged or inconsistent with the file. Checksums in the
/// table, if any, are skipped (not verified).
pub fn read_seek_table(f: &File, what: &str) -> Result<Option<SeekTable>> {
    let len = f
        .metadata()
        .with_context(|| format!("{what}: cannot read its size"))?
        .len();
    if len < 4 {
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    read_at(f, what, len - 4, &mut magic)?;
    if le32(&magic) != SEEKABLE_MAGIC {
        return Ok(None);
    }
    if len < 8 + FOOTER_LEN {
        bail!(
            "{what}: ends in the seekable zstd magic number, but its {len} bytes are too few for \
             a seek table"
        );
    }
    let footer_at = len - FOOTER_LEN;
    let mut footer = [0u8; FOOTER_LEN as usize];
    read_at(f, what, footer_at, &mut footer)?;
    let n = u64::from(le32(&footer[..4]));
    let descriptor = footer[4];
    if descriptor & RESERVED_BITS != 0 {
        bail!(
            "{what}: the seek table descriptor at byte {} is {descriptor:#04x}, with reserved \
             bits set",
            footer_at + 4
        );
    }
    let entry_len: u64 = if descriptor & CHECKSUM_FLAG != 0 {
        12
    } else {
        8
    };
    if n > MAX_FRAMES {
        bail!(
            "{what}: the seek table footer at byte {footer_at} counts {n} frames, more than the \
             {MAX_FRAMES} this reader takes"
        );
    }
    // n ≤ 2^22: none of the sums below can overflow.
    let table_len = 8 + n * entry_len + FOOTER_LEN;
    let table_at = match len.checked_sub(table_len) {
        Some(a) if n * MIN_FRAME_LEN <= a => a,
        _ => bail!(
            "{what}: the seek table footer at byte {footer_at} counts {n} frames, more than the \
             file's {len} bytes can hold"
        ),
    };
    let mut head = [0u8; 8];
    read_at(f, what, table_at, &mut head)?;
    if le32(&head[..4]) != SKIPPABLE_MAGIC {
        bail!(
            "{what}: no skippable frame at byte {table_at}, where the seek table of {n} frames \
             must begin"
        );
    }
    let frame_size = u64::from(le32(&head[4..]));
    if frame_size != table_len - 8 {
        bail!(
            "{what}: the seek table frame at byte {table_at} says it holds {frame_size} bytes, \
             but {n} entries and the footer take {}",
            table_len - 8
        );
    }
    let mut raw = vec![0u8; (n * entry_len) as usize];
    read_at(f, what, table_at + 8, &mut raw)?;
    let mut frames = Vec::with_capacity(n as usize);
    let (mut at, mut offset) = (0u64, 0u64);
    for (i, e) in raw.chunks_exact(entry_len as usize).enumerate() {
        let entry_at = table_at + 8 + i as u64 * entry_len;
        let compressed_size = u64::from(le32(&e[..4]));
        let size = u64::from(le32(&e[4..8]));
        if compressed_size < MIN_FRAME_LEN {
            bail!(
                "{what}: seek table entry {i} at byte {entry_at} gives frame {i} {compressed_size} \
                 bytes, fewer than any frame takes"
            );
        }
        if at + compressed_size > table_at {
            bail!(
                "{what}: seek table entry {i} at byte {entry_at} puts frame {i} at bytes {at}..{}, \
                 past the seek table at byte {table_at}",
                at + compressed_size
            );
        }
        frames.push(Frame {
            compressed_offset: at,
            compressed_size,
            offset,
            size,
        });
        at += compressed_size;
        offset += size;
    }
    if at != table_at {
        bail!(
            "{what}: the seek table at byte {table_at} accounts for {at} bytes of frames, but \
             {table_at} bytes precede it"
        );
    }
    Ok(Some(SeekTable {
        frames,
        decompressed_size: offset,
    }))
}

fn decompress_frame(
    f: &File,
    what: &str,
    index: usize,
    frame: &Frame,
    dctx: &mut zstd::bulk::Decompressor<'static>,
    compressed: &mut Vec<u8>,
) -> Result<Vec<u8>> {
    compressed.resize(frame.compressed_size as usize, 0);
    f.read_exact_at(compressed, frame.compressed_offset)
        .with_context(|| format!("{what}: reading {}", frame.describe(index)))?;
    if let Ok(Some(c)) = zstd::zstd_safe::get_frame_content_size(compressed) {
        if c != frame.size {
            bail!(
                "{what}: {} holds {c} bytes by its header, not the {} its seek table entry says",
                frame.describe(index),
                frame.size
            );
        }
    }
    // One byte more than the table says, to tell a frame that holds more from a damaged one.
    let mut data = Vec::with_capacity(frame.size as usize + 1);
    let n = dctx
        .decompress_to_buffer(&compressed[..], &mut data)
        .map_err(|e| anyhow!("{what}: {} is damaged: {e}", frame.describe(index)))?;
    if n as u64 > frame.size {
        bail!(
            "{what}: {} decompresses to more than the {} bytes its seek table entry says",
            frame.describe(index),
            frame.size
        );
    }
    if n as u64 != frame.size {
        bail!(
            "{what}: {} decompresses to {n} bytes, not the {} its seek table entry says",
            frame.describe(index),
            frame.size
        );
    }
    Ok(data)
}

/// Decompress the frames of `f` with the given indices (ascending) on `workers` threads and
/// hand each one's bytes to `out(index, decompressed offset, bytes)`, in order; stop early when
/// `out` returns `false`. Each frame must decompress to exactly its size in `table` (its zstd
/// checksum, if any, is checked too). Frame `k` of the list goes to worker `k % workers`, each
/// worker holding at most two frames, so memory stays at a few frames per worker.
pub fn decompress_frames(
    f: &File,
    what: &str,
    table: &SeekTable,
    frames: &[usize],
    workers: usize,
    out: &mut dyn FnMut(usize, u64, Vec<u8>) -> Result<bool>,
) -> Result<()> {
    let max_compressed = zstd::zstd_safe::compress_bound(MAX_READ_FRAME as usize) as u64;
    let mut prev: Option<usize> = None;
    for &i in frames {
        let Some(fr) = table.frames.get(i) else {
            bail!(
                "{what}: there is no frame {i}, the seek table lists {}",
                table.frames.len()
            );
        };
        if let Some(p) = prev.filter(|&p| p >= i) {
            bail!("frames to decompress must ascend without repeats: {i} after {p}");
        }
        if fr.size > MAX_READ_FRAME || fr.compressed_size > max_compressed {
            bail!(
                "{what}: {} is larger than the {} MiB this reader decompresses at once",
                fr.describe(i),
                MAX_READ_FRAME >> 20
            );
        }
        prev = Some(i);
    }
    let workers = workers.clamp(1, frames.len().max(1));
    if workers == 1 {
        // No thread for one worker: reads of a frame or two (inspect) stay cheap.
        let mut dctx =
            zstd::bulk::Decompressor::new().map_err(|e| anyhow!("starting zstd: {e}"))?;
        let mut compressed = Vec::new();
        for &i in frames {
            let data = decompress_frame(f, what, i, &table.frames[i], &mut dctx, &mut compressed)?;
            if !out(i, table.frames[i].offset, data)? {
                break;
            }
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let mut results = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<Vec<u8>>>(1);
            results.push(rx);
            s.spawn(move || {
                let mut dctx = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("starting zstd: {e}")));
                        return;
                    }
                };
                let mut compressed = Vec::new();
                for &i in frames.iter().skip(w).step_by(workers) {
                    let r =
                        decompress_frame(f, what, i, &table.frames[i], &mut dctx, &mut compressed);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        for (k, &i) in frames.iter().enumerate() {
            let data = results[k % workers]
                .recv()
                .map_err(|_| anyhow!("{what}: the thread decompressing frame {i} stopped"))??;
            if !out(i, table.frames[i].offset, data)? {
                break;
            }
        }
        // Dropping the receivers stops the workers.
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::path::Path;
    use std::process::Command;

    /// Zero frames appended whole give the bytes writing the zeros gives, for any number of
    /// workers, and a frame boundary is required.
    #[test]
    fn zero_frames_equal_written_zeros() {
        let data = sample();
        let plain = {
            let mut w = SeekableWriter::new(Vec::new(), 3, 2).unwrap();
            w.write_all(&data[..2 << 20]).unwrap();
            w.write_all(&vec![0u8; 3 * FRAME_SIZE]).unwrap();
            w.write_all(&data[..1000]).unwrap();
            w.finish().unwrap()
        };
        for workers in [1, 3] {
            let mut w = SeekableWriter::new(Vec::new(), 3, workers).unwrap();
            w.write_all(&data[..2 << 20]).unwrap();
            w.write_zero_frames(1).unwrap();
            w.write_zero_frames(2).unwrap();
            w.write_all(&data[..1000]).unwrap();
            assert!(w.write_zero_frames(1).is_err());
            assert_eq!(w.finish().unwrap(), plain);
        }
    }

    /// 5.5 MiB: noise in frames 0, 1 and 4, zeros elsewhere, a short last frame.
    fn sample() -> Vec<u8> {
        let mut v = vec![0u8; 11 << 19];
        for (i, b) in v[..2 << 20].iter_mut().enumerate() {
            *b = ((i as u32).wrapping_mul(2654435761) >> 13) as u8;
        }
        for (i, b) in v[(4 << 20) + 100..(4 << 20) + 5000].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        v
    }

    fn compress(data: &[u8], workers: usize) -> Vec<u8> {
        let mut w = SeekableWriter::new(Vec::new(), 3, workers).unwrap();
        // Writes of odd sizes, across frame boundaries.
        for part in data.chunks(300_007) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    fn all_frames(
        f: &File,
        t: &SeekTable,
        frames: &[usize],
        workers: usize,
    ) -> Result<Vec<(usize, u64, Vec<u8>)>> {
        let mut got = Vec::new();
        decompress_frames(f, "t.zst", t, frames, workers, &mut |i, o, d| {
            got.push((i, o, d));
            Ok(true)
        })?;
        Ok(got)
    }

    #[test]
    fn round_trip_with_a_seek_table() {
        let data = sample();
        let z = compress(&data, 1);
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), data);
        let f = file(&z);
        let t = read_seek_table(&f, "t.zst").unwrap().unwrap();
        assert_eq!(t.decompressed_size, data.len() as u64);
        assert_eq!(t.frames.len(), 6);
        for (i, fr) in t.frames.iter().enumerate() {
            assert_eq!(fr.offset, (i * FRAME_SIZE) as u64);
            let want = if i == 5 { FRAME_SIZE / 2 } else { FRAME_SIZE };
            assert_eq!(fr.size, want as u64);
            let bytes = &z[fr.compressed_offset as usize..][..fr.compressed_size as usize];
            assert_eq!(
                zstd::zstd_safe::find_frame_compressed_size(bytes).unwrap(),
                bytes.len()
            );
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(bytes).unwrap(),
                Some(want as u64)
            );
            // Checksum flag: bit 2 of the frame header descriptor.
            assert_ne!(bytes[4] & 0x04, 0, "frame {i} carries a checksum");
        }
        // Zero frames are tiny, and the same as compressing zeros (frames 2 and 3: one worker,
        // so the second is its kept copy).
        let frame = |i: usize| {
            let fr = t.frames[i];
            &z[fr.compressed_offset as usize..][..fr.compressed_size as usize]
        };
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_checksum(true).unwrap();
        let zeros = c.compress(&[0u8; FRAME_SIZE]).unwrap();
        assert!(zeros.len() < 100, "{}", zeros.len());
        assert_eq!(frame(2), zeros);
        assert_eq!(frame(3), zeros);
        assert_eq!(frame(0), c.compress(&data[..FRAME_SIZE]).unwrap());
        // The table: no checksums, 6 entries.
        let tail = &z[z.len() - 9..];
        assert_eq!(tail, [6, 0, 0, 0, 0, 0xB1, 0xEA, 0x92, 0x8F]);
        let table_at = t.frames[5].compressed_offset + t.frames[5].compressed_size;
        assert_eq!(z.len() as u64 - table_at, 8 + 6 * 8 + 9);
        assert_eq!(
            &z[table_at as usize..][..8],
            [0x5E, 0x2A, 0x4D, 0x18, 6 * 8 + 9, 0, 0, 0]
        );
        let got = all_frames(&f, &t, &[0, 1, 2, 3, 4, 5], 4).unwrap();
        let joined: Vec<u8> = got.iter().flat_map(|g| g.2.iter().copied()).collect();
        assert_eq!(joined, data);
        assert_eq!(
            got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            (0..6)
                .map(|i| (i, (i * FRAME_SIZE) as u64))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn output_does_not_depend_on_worker_count_or_write_sizes() {
        let data = sample();
        let one = compress(&data, 1);
        assert_eq!(one, compress(&data, 2));
        assert_eq!(one, compress(&data, 4));
        let mut w = SeekableWriter::new(Vec::new(), 3, 2).unwrap();
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        assert_eq!(w.finish().unwrap(), one);
    }

    #[test]
    fn empty_input_is_a_table_of_no_frames() {
        let z = SeekableWriter::new(Vec::new(), 3, 2)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(z.len(), 17);
        let t = read_seek_table(&file(&z), "t.zst").unwrap().unwrap();
        assert_eq!((t.frames.len(), t.decompressed_size), (0, 0));
        assert!(zstd::decode_all(&z[..]).unwrap().is_empty());
    }

    #[test]
    fn the_zstd_cli_reads_it() {
        let zstd_cli = Path::new("/usr/bin/zstd");
        if !zstd_cli.exists() {
            if std::env::var_os("CI").is_some() {
                panic!("/usr/bin/zstd is missing");
            }
            eprintln!("SKIPPED: /usr/bin/zstd is missing");
            return;
        }
        let data = sample();
        let d = tempfile::tempdir().unwrap();
        let z = d.path().join("t.raw.zst");
        std::fs::write(&z, compress(&data, 2)).unwrap();
        let out = Command::new(zstd_cli)
            .args(["-d", "-c", "-q"])
            .arg(&z)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == data, "zstd -d gives other bytes");
        let out = Command::new(zstd_cli).arg("-lv").arg(&z).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // zstd counts the frames and the skippable seek table apart.
        assert!(text.contains("# Zstandard Frames: 6"), "{text}");
        assert!(text.contains("# Skippable Frames: 1"), "{text}");
        assert!(text.contains("Check: XXH64"), "{text}");
    }

    #[test]
    fn an_ordinary_zst_has_no_seek_table() {
        let z = zstd::encode_all(&sample()[..], 3).unwrap();
        assert_eq!(read_seek_table(&file(&z), "t.zst").unwrap(), None);
        assert_eq!(read_seek_table(&file(b""), "t.zst").unwrap(), None);
        assert_eq!(read_seek_table(&file(b"\xB1\xEA"), "t.zst").unwrap(), None);
    }

    fn err(bytes: &[u8]) -> String {
        format!("{:#}", read_seek_table(&file(bytes), "t.zst").unwrap_err())
    }

    #[test]
    fn damaged_tables_are_errors_naming_the_place() {
        let z = compress(&sample(), 2);
        let len = z.len();
        let table_at = len - (8 + 6 * 8 + 9);
        let entry = |i: usize| table_at + 8 + 8 * i;
        let with = |at: usize, bytes: &[u8]| {
            let mut v = z.clone();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        // A byte missing from a frame.
        let mut short = z.clone();
        short.remove(10);
        let e = err(&short);
        assert!(
            e.contains(&format!("entry 5 at byte {}", entry(5) - 1)),
            "{e}"
        );
        assert!(
            e.contains(&format!("past the seek table at byte {}", table_at - 1)),
            "{e}"
        );
        // Only the footer left.
        let e = err(&z[len - 20..]);
        assert!(e.contains("more than the file's 20 bytes can hold"), "{e}");
        let e = err(&z[len - 12..]);
        assert!(e.contains("too few for a seek table"), "{e}");
        // Entries claiming more or less than there is.
        let c0 = le32(&z[entry(0)..]);
        let e = err(&with(entry(0), &(c0 + 1).to_le_bytes()));
        assert!(
            e.contains("entry 5") && e.contains("past the seek table"),
            "{e}"
        );
        let e = err(&with(entry(0), &(c0 - 1).to_le_bytes()));
        assert!(
            e.contains(&format!(
                "table at byte {table_at} accounts for {} bytes",
                table_at - 1
            )),
            "{e}"
        );
        let e = err(&with(entry(3), &u32::MAX.to_le_bytes()));
        assert!(e.contains(&format!("entry 3 at byte {}", entry(3))), "{e}");
        assert!(e.contains("past the seek table"), "{e}");
        let e = err(&with(entry(1), &0u32.to_le_bytes()));
        assert!(e.contains("gives frame 1 0 bytes"), "{e}");
        // Frame counts the file cannot hold.
        let e = err(&with(len - 9, &u32::MAX.to_le_bytes()));
        assert!(e.contains(&format!("footer at byte {}", len - 9)), "{e}");
        assert!(e.contains("4294967295 frames"), "{e}");
        let e = err(&with(len - 9, &100_000u32.to_le_bytes()));
        assert!(e.contains("can hold"), "{e}");
        let e = err(&with(len - 9, &5u32.to_le_bytes()));
        assert!(e.contains("no skippable frame at byte"), "{e}");
        // Descriptor, magic and frame size fields.
        let e = err(&with(len - 5, &[0x40]));
        assert!(e.contains("reserved bits"), "{e}");
        let e = err(&with(table_at, &[0x50]));
        assert!(
            e.contains(&format!("no skippable frame at byte {table_at}")),
            "{e}"
        );
        let e = err(&with(table_at + 4, &[60]));
        assert!(e.contains("says it holds 60 bytes"), "{e}");
        let e = err(&with(len - 5, &[0x80]));
        assert!(
            e.contains(&format!("no skippable frame at byte {}", table_at - 24)),
            "{e}"
        );
        // Unused bits are not interpreted.
        let t = read_seek_table(&file(&z), "t.zst").unwrap().unwrap();
        assert_eq!(
            read_seek_table(&file(&with(len - 5, &[0x03])), "t.zst").unwrap(),
            Some(t.clone())
        );
        // A table with checksums (12-byte entries) is read; its checksums are not checked.
        let mut v = z[..table_at].to_vec();
        v.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        v.extend_from_slice(&(6u32 * 12 + 9).to_le_bytes());
        for i in 0..6 {
            v.extend_from_slice(&z[entry(i)..entry(i) + 8]);
            v.extend_from_slice(&[0xAB; 4]);
        }
        v.extend_from_slice(&6u32.to_le_bytes());
        v.push(0x80);
        v.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        assert_eq!(read_seek_table(&file(&v), "t.zst").unwrap(), Some(t));
    }

    #[test]
    fn no_byte_of_a_table_makes_it_panic() {
        let z = compress(&sample()[..3 << 20], 1);
        let table_at = z.len() - (8 + 3 * 8 + 9);
        for at in table_at..z.len() {
            for v in [0u8, 1, 0x7F, 0x80, 0xFF] {
                let mut m = z.clone();
                m[at] = v;
                let f = file(&m);
                if let Ok(Some(t)) = read_seek_table(&f, "t.zst") {
                    let all: Vec<usize> = (0..t.frames.len()).collect();
                    let _ = all_frames(&f, &t, &all, 2);
                }
            }
        }
    }

    #[test]
    fn some_frames_in_order_and_stopping_early() {
        let data = sample();
        let f = file(&compress(&data, 2));
        let t = read_seek_table(&f, "t.zst").unwrap().unwrap();
        for workers in [1, 2, 3, 8] {
            let got = all_frames(&f, &t, &[1, 4, 5], workers).unwrap();
            assert_eq!(got.len(), 3);
            for (i, o, d) in got {
                assert_eq!(o, (i * FRAME_SIZE) as u64);
                assert!(d == data[o as usize..(o as usize + d.len()).min(data.len())]);
                assert_eq!(d.len() as u64, t.frames[i].size);
            }
        }
        let mut seen = Vec::new();
        decompress_frames(&f, "t.zst", &t, &[0, 1, 2, 3, 4, 5], 2, &mut |i, _, _| {
            seen.push(i);
            Ok(i < 2)
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2]);
        assert!(all_frames(&f, &t, &[], 4).unwrap().is_empty());
        let e = all_frames(&f, &t, &[2, 1], 2).unwrap_err();
        assert!(format!("{e}").contains("ascend"), "{e}");
        let e = all_frames(&f, &t, &[6], 2).unwrap_err();
        assert!(format!("{e}").contains("no frame 6"), "{e}");
        let e = decompress_frames(&f, "t.zst", &t, &[0, 1], 2, &mut |_, _, _| {
            bail!("disk full")
        })
        .unwrap_err();
        assert_eq!(format!("{e}"), "disk full");
        // The regions a reader needs: bytes 1.5 MiB..4 MiB+1 lie in frames 1 to 4.
        assert_eq!(t.frames_overlapping(3 << 19, (4 << 20) + 1), 1..5);
        assert_eq!(t.frames_overlapping(1 << 20, 2 << 20), 1..2);
        assert_eq!(t.frames_overlapping(5, 5), 0..0);
        assert_eq!(t.frames_overlapping(100 << 20, 200 << 20), 6..6);
    }

    #[test]
    fn a_damaged_or_mislabelled_frame_is_an_error_naming_it() {
        let data = sample();
        let z = compress(&data, 2);
        let t = read_seek_table(&file(&z), "t.zst").unwrap().unwrap();
        let fr = t.frames[1];
        let mut bad = z.clone();
        bad[(fr.compressed_offset + fr.compressed_size / 2) as usize] ^= 0x55;
        let f = file(&bad);
        let mut seen = Vec::new();
        let e = decompress_frames(&f, "t.zst", &t, &[0, 1, 2], 2, &mut |i, _, _| {
            seen.push(i);
            Ok(true)
        })
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!(
                "t.zst: frame 1 (bytes {}..{} of the file, 1048576..2097152 decompressed) is damaged",
                fr.compressed_offset,
                fr.compressed_offset + fr.compressed_size
            )),
            "{e}"
        );
        assert_eq!(seen, [0], "frames before the damaged one are delivered");
        // A table whose sizes do not match the frames.
        let f = file(&z);
        let mut wrong = t.clone();
        wrong.frames[2].size -= 1;
        let e = format!("{:#}", all_frames(&f, &wrong, &[2], 1).unwrap_err());
        assert!(
            e.contains("frame 2 (")
                && e.contains("holds 1048576 bytes by its header, not the 1048575"),
            "{e}"
        );
        let mut wrong = t.clone();
        wrong.frames[5].size += 1;
        let e = format!("{:#}", all_frames(&f, &wrong, &[5], 1).unwrap_err());
        assert!(
            e.contains("holds 524288 bytes by its header, not the 524289"),
            "{e}"
        );
        // Without a content size in the header, the decompressed size tells.
        let plain = zstd::bulk::compress(&data[..1000], 3).unwrap();
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_contentsize(false).unwrap();
        let bare = c.compress(&data[..1000]).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&plain).unwrap(),
            Some(1000)
        );
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&bare).unwrap(),
            None
        );
        let f = file(&bare);
        let one = |size| SeekTable {
            frames: vec![Frame {
                compressed_offset: 0,
                compressed_size: bare.len() as u64,
                offset: 0,
                size,
            }],
            decompressed_size: size,
        };
        assert_eq!(
            all_frames(&f, &one(1000), &[0], 1).unwrap()[0].2,
            data[..1000]
        );
        let e = format!("{:#}", all_frames(&f, &one(999), &[0], 1).unwrap_err());
        assert!(e.contains("decompresses to more than the 999 bytes"), "{e}");
        let e = format!("{:#}", all_frames(&f, &one(1001), &[0], 1).unwrap_err());
        assert!(
            e.contains("decompresses to 1000 bytes, not the 1001"),
            "{e}"
        );
        let mut huge = t.clone();
        huge.frames[0].size = MAX_READ_FRAME + 1;
        let e = format!("{:#}", all_frames(&f, &huge, &[0], 1).unwrap_err());
        assert!(e.contains("larger than the 32 MiB"), "{e}");
    }
}
