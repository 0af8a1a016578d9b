//! Build outputs: `<name>.raw.zst` (always) and `<name>.raw` (on request), streamed from the
//! composed [`Layout`] in one pass, with everything the manifest says about them measured on
//! the way.
//!
//! A reader thread walks the layout in 1 MiB chunks. Two hashing threads measure it: one the
//! image's chunked SHA-256 ([`manifest::ChunkDigest`]), one each partition's and each
//! block-map range's SHA-256 (see [`manifest`]). The calling thread feeds the compressor and
//! writes the raw image sparsely. Channels are bounded, so memory stays at a few tens of MiB
//! whatever the image size.
//!
//! A chunk that holds no extent of the layout is never read, hashed or compressed: it travels
//! as a marker, counts as the cached digest of a zero chunk and becomes a precompressed zero
//! frame ([`SeekableWriter::write_zero_frames`]). Build time therefore follows the bytes the
//! build writes, not the disk's size (a 1 TiB `disk_size` costs a million small copies).
//!
//! `.raw.zst` is in zstd's seekable format ([`seekable`]): one zstd frame per 1 MiB of the
//! image (each with its content size and a checksum), compressed on every core, then a seek
//! table in a skippable frame. Frames are compressed independently, so the bytes do not
//! depend on the number of cores (a test checks it) and are the same on any machine; a flasher
//! can decompress frames in parallel and skip those holding only unmapped space, and plain
//! `zstd -d` reads the file as one stream.
//!
//! Slot regions (personalization slots' partitions, see [`crate::personalize`]) are written
//! like everything else, and their partitions measured, but the block map leaves them out (their
//! ranges are returned apart, for the `.bmap`) and the image's SHA-256 reads them as zeros.
//!
//! One region, the manifest partition, is *late*: its content (the signed manifest) depends on
//! the digests of everything else. The writer stops writing at its start, lets the hashers
//! finish the whole image (reading the late region as zeros), asks the caller for the late
//! content, writes it, and then writes the rest of the image again from the layout (only the
//! backup GPT and unmapped space follow it).

pub mod atomic;
pub mod bmap;
pub mod manifest;
pub mod seekable;
pub mod set;
pub mod windows;

use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use atomic::AtomicFile;
use manifest::{BlockRange, BLOCK_SIZE, MAX_RANGE_BLOCKS};
use seekable::SeekableWriter;
use windows::WindowHasher;

/// zstd compression level of `.raw.zst` (kernel and initramfs are compressed already, so
/// higher levels gain little and cost much time).
pub const ZSTD_LEVEL: i32 = 3;

const CHUNK: usize = 1 << 20;

/// A 1 MiB chunk of zeros, for chunks of unwritten space.
static ZERO_CHUNK: [u8; CHUNK] = [0u8; CHUNK];

/// The longest run of unwritten chunks one [`Piece`] stands for (progress moves at least
/// this often).
const MAX_RUN: u64 = 1 << 30;

/// A piece of the image as the reader hands it on: a chunk's bytes (up to 1 MiB), or `None`
/// for unwritten space (zeros that are never read): a run of whole chunks on the chunk grid,
/// or a part of a chunk.
#[derive(Clone)]
struct Piece {
    pos: u64,
    len: u64,
    data: Option<Arc<Vec<u8>>>,
}

impl Piece {
    /// Whole chunks of unwritten space, on the chunk grid.
    fn zero_chunks(&self) -> Option<u64> {
        let c = CHUNK as u64;
        (self.data.is_none() && self.pos % c == 0 && self.len % c == 0).then_some(self.len / c)
    }

    /// The bytes of `from..to` (relative to the piece, at most a chunk apart).
    fn bytes(&self, from: u64, to: u64) -> &[u8] {
        match &self.data {
            Some(d) => &d[from as usize..to as usize],
            None => &ZERO_CHUNK[..(to - from) as usize],
        }
    }

    /// Call `f(position, bytes)` for the piece's bytes in chunks of at most 1 MiB.
    fn chunks(&self, f: &mut dyn FnMut(u64, &[u8])) {
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(CHUNK as u64);
            f(self.pos + at, self.bytes(at, at + n));
            at += n;
        }
    }
}

/// The piece of `layout` at `pos`: the chunk up to the next 1 MiB boundary, read; or, when
/// nothing is mapped there, a marker for the unwritten space up to the next extent, the next
/// of `stops` or [`MAX_RUN`] (whole chunks when `pos` is on the chunk grid).
fn piece(layout: &Layout, pos: u64, stops: &[u64]) -> io::Result<Piece> {
    let c = CHUNK as u64;
    let len = (c - pos % c).min(layout.len() - pos);
    if !layout.is_unmapped(pos, pos + len) {
        let mut buf = vec![0u8; len as usize];
        layout.read_at(pos, &mut buf)?;
        return Ok(Piece {
            pos,
            len,
            data: Some(Arc::new(buf)),
        });
    }
    let mut end = pos + len;
    if len == c {
        let limit = layout
            .next_mapped(pos)
            .unwrap_or(layout.len())
            .min(pos + MAX_RUN)
            .min(stops.iter().copied().find(|&s| s > pos).unwrap_or(u64::MAX));
        end = end.max(limit - limit % c);
    }
    Ok(Piece {
        pos,
        len: end - pos,
        data: None,
    })
}

/// What the writer produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outputs {
    pub image_size: u64,
    /// [`manifest::ChunkDigest`] of the image with the late (manifest) region and the slot
    /// regions read as zeros.
    pub image_sha256: String,
    pub zst: PathBuf,
    pub zst_size: u64,
    pub zst_sha256: String,
    pub raw: Option<PathBuf>,
}

/// What the stream measured, before the late region was written.
#[derive(Clone, Debug)]
pub struct Measured {
    /// [`manifest::ChunkDigest`] of the image with the late region and the slot regions read
    /// as zeros.
    pub image_sha256: String,
    /// SHA-256 of each described partition, in the order given.
    pub partitions: Vec<String>,
    /// The block map of what the builder wrote (the late and slot regions excluded).
    pub ranges: Vec<BlockRange>,
    /// The blocks the builder wrote inside the slot regions (for the `.bmap`, which writes
    /// the base image whole).
    pub slot_ranges: Vec<BlockRange>,
}

/// What to write: the layout, the partitions to measure, and the late region.
pub struct ImageSpec<'a> {
    pub layout: &'a Layout,
    /// `(offset, size)` of each partition whose digest the manifest carries.
    pub partitions: Vec<(u64, u64)>,
    /// `(offset, size)` of the late region (unmapped in `layout`).
    pub late: (u64, u64),
    /// `(offset, size)` of each slot region (a slot's partition): outside the block map, read
    /// as zeros by the image's digest.
    pub slots: Vec<(u64, u64)>,
}

/// A writer that hashes and counts what passes through.
struct Tee<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether block range `(first, last)` lies inside one of the slot regions (ranges are cut at
/// their boundaries, so a range is wholly inside or outside).
fn in_slot(spec: &ImageSpec, (first, last): (u64, u64)) -> bool {
    spec.slots
        .iter()
        .any(|&(o, l)| first * BLOCK_SIZE >= o && (last + 1).saturating_mul(BLOCK_SIZE) <= o + l)
}

/// Feed `data` (at byte `pos` of the image) to `h` with the bytes inside `zeroed` windows
/// replaced by zeros.
fn hash_zeroed(h: &mut Sha256, pos: u64, data: &[u8], zeroed: &[(u64, u64)]) {
    let end = pos + data.len() as u64;
    let mut at = pos;
    for &(o, l) in zeroed {
        let (a, b) = (o.max(at), (o + l).min(end));
        if a >= b {
            continue;
        }
        h.update(&data[(at - pos) as usize..(a - pos) as usize]);
        let mut left = b - a;
        while left > 0 {
            let n = left.min(crate::layout::zeros().len() as u64) as usize;
            h.update(&crate::layout::zeros()[..n]);
            left -= n as u64;
        }
        at = b;
    }
    h.update(&data[(at - pos) as usize..]);
}

/// The block map of a layout: blocks holding mapped bytes, outside the late region, split at
/// every partition and slot boundary and at [`MAX_RANGE_BLOCKS`] (slot regions included).
fn block_ranges(spec: &ImageSpec) -> Vec<(u64, u64)> {
    let (ls, ll) = spec.late;
    let extents: Vec<(u64, u64)> = spec
        .layout
        .extents()
        .iter()
        .map(|e| (e.offset, e.len))
        .collect();
    let boundaries: Vec<u64> = spec
        .partitions
        .iter()
        .chain(&spec.slots)
        .flat_map(|&(o, s)| [o, o + s])
        .chain([ls, ls + ll])
        .collect();
    bmap::ranges_from_extents(
        &extents,
        spec.layout.len(),
        BLOCK_SIZE,
        MAX_RANGE_BLOCKS,
        &boundaries,
    )
}

/// Stream the image into `<out_dir>/<name>.raw.zst` (and `<name>.raw` when `raw`).
/// `secret` makes the files mode 0600 (the image carries a machine configuration).
/// `late_content` receives what was measured and returns the late region's bytes (exactly
/// its size). `progress(done, total)` is called as bytes are consumed.
pub fn write_image(
    spec: &ImageSpec,
    out_dir: &Path,
    name: &str,
    raw: bool,
    secret: bool,
    late_content: &mut dyn FnMut(&Measured) -> Result<Vec<u8>>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Outputs, Measured)> {
    let layout = spec.layout;
    let total = layout.len();
    let (late_start, late_len) = spec.late;
    let late_end = late_start + late_len;
    if late_end > total {
        bail!("the late region {late_start}+{late_len} lies past the image's {total} bytes");
    }
    if let Some(e) = layout
        .extents()
        .iter()
        .find(|e| e.offset < late_end && e.end() > late_start)
    {
        bail!(
            "the late region {late_start}+{late_len} must be unmapped, but bytes {}+{} are mapped",
            e.offset,
            e.len
        );
    }
    let mut zeroed = spec.slots.clone();
    zeroed.sort_unstable();
    for (i, &(o, l)) in zeroed.iter().enumerate() {
        let overlaps_next = zeroed.get(i + 1).is_some_and(|&(n, _)| n < o + l);
        if o.checked_add(l).is_none_or(|e| e > total)
            || (o < late_end && o + l > late_start)
            || overlaps_next
        {
            bail!(
                "the slot region {o}+{l} lies past the image's {total} bytes or overlaps the late region or another slot region"
            );
        }
    }
    let mode = if secret { 0o600 } else { 0o644 };
    std::fs::create_dir_all(out_dir).with_context(|| {
        format!(
            "cannot create the output directory {}; choose a writable one with --out DIR",
            out_dir.display()
        )
    })?;
    let zst_path = out_dir.join(format!("{name}.raw.zst"));
    let raw_path = out_dir.join(format!("{name}.raw"));
    let mut zst_file = AtomicFile::create(&zst_path, mode)?;
    let mut raw_file = if raw {
        Some(AtomicFile::create(&raw_path, mode)?)
    } else {
        None
    };

    let block_ranges = block_ranges(spec);
    let range_windows: Vec<(u64, u64)> = block_ranges
        .iter()
        .map(|&(a, b)| bmap::byte_span(a, b, total, BLOCK_SIZE))
        .collect();
    let part_windows: Vec<(u64, u64)> = spec.partitions.iter().map(|&(o, s)| (o, o + s)).collect();

    // Runs of unwritten space end where the late region begins and ends.
    let stops = [late_start, late_end];
    let (tx_main, rx_main) = sync_channel::<Piece>(8);
    let (tx_image, rx_image) = sync_channel::<Piece>(8);
    let (tx_parts, rx_parts) = sync_channel::<Piece>(8);

    let result: Result<(Measured, u64, String)> = std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let mut pos = 0u64;
            while pos < total {
                let p = piece(layout, pos, &stops).context("reading the image inputs")?;
                pos += p.len;
                // A closed channel means a consumer failed; it reports the error.
                if tx_image.send(p.clone()).is_err()
                    || tx_parts.send(p.clone()).is_err()
                    || tx_main.send(p).is_err()
                {
                    return Ok(());
                }
            }
            Ok(())
        });
        let zeroed = &zeroed;
        let image_hasher = s.spawn(move || {
            let mut d = manifest::ChunkDigest::new();
            for p in rx_image {
                match p.zero_chunks() {
                    Some(n) => (0..n).for_each(|_| d.zero_chunk()),
                    None => p.chunks(&mut |pos, bytes| {
                        let mut h = Sha256::new();
                        hash_zeroed(&mut h, pos, bytes, zeroed);
                        d.leaf(h.finalize().into());
                    }),
                }
            }
            d.finish()
        });
        let window_hasher = s.spawn(move || {
            let mut parts = WindowHasher::new(part_windows);
            let mut ranges = WindowHasher::new(range_windows);
            for p in rx_parts {
                // Runs of unwritten space are fed in chunks; a window hasher skips those
                // outside its windows at once.
                p.chunks(&mut |pos, bytes| {
                    parts.update(pos, bytes);
                    ranges.update(pos, bytes);
                });
            }
            (parts.finish(), ranges.finish())
        });

        let consume = || -> Result<(Measured, u64, String)> {
            let tee = Tee {
                inner: io::BufWriter::with_capacity(CHUNK, zst_file.file()),
                hash: Sha256::new(),
                count: 0,
            };
            let mut enc = SeekableWriter::new(tee, ZSTD_LEVEL, seekable::workers())
                .with_context(|| format!("starting zstd for {}", zst_path.display()))?;
            let mut put = |p: &Piece,
                           upto: u64,
                           enc: &mut SeekableWriter<Tee<io::BufWriter<&mut std::fs::File>>>|
             -> Result<()> {
                let written = || format!("writing {}", zst_path.display());
                if let Some(n) = p.zero_chunks().filter(|_| upto == p.len) {
                    return enc.write_zero_frames(n).with_context(written);
                }
                let p = Piece {
                    len: upto,
                    ..p.clone()
                };
                let mut failed = None;
                p.chunks(&mut |pos, data| {
                    if failed.is_some() {
                        return;
                    }
                    if let Err(e) = enc.write_all(data) {
                        failed = Some(anyhow::Error::new(e).context(written()));
                        return;
                    }
                    if let (Some(f), Some(_)) = (raw_file.as_mut(), &p.data) {
                        if data.iter().any(|&b| b != 0) {
                            let f = f.file();
                            if let Err(e) =
                                f.seek(SeekFrom::Start(pos)).and_then(|_| f.write_all(data))
                            {
                                failed = Some(
                                    anyhow::Error::new(e)
                                        .context(format!("writing {}", raw_path.display())),
                                );
                            }
                        }
                    }
                });
                failed.map_or(Ok(()), Err)
            };
            // Everything before the late region, as it streams.
            let mut seen = 0u64;
            for p in rx_main.iter() {
                let end = p.pos + p.len;
                if p.pos < late_start {
                    let upto = late_start.min(end) - p.pos;
                    put(&p, upto, &mut enc)?;
                }
                seen = end;
                progress(seen.min(late_start), total);
            }
            if seen != total {
                return Err(anyhow!("the image stream ended at {seen} of {total} bytes"));
            }
            // The rest once the whole image has been measured.
            let image_sha256 = image_hasher
                .join()
                .map_err(|_| anyhow!("the image hashing thread failed"))?;
            let (partitions, range_sums) = window_hasher
                .join()
                .map_err(|_| anyhow!("the range hashing thread failed"))?;
            let (slot_ranges, ranges): (Vec<_>, Vec<_>) = block_ranges
                .iter()
                .zip(range_sums)
                .map(|(&(first, last), sha256)| BlockRange {
                    first,
                    last,
                    sha256,
                })
                .partition(|r| in_slot(spec, (r.first, r.last)));
            let measured = Measured {
                image_sha256,
                partitions,
                ranges,
                slot_ranges,
            };
            let late = late_content(&measured)?;
            if late.len() as u64 != late_len {
                bail!(
                    "the late region is {late_len} bytes, its content {} bytes",
                    late.len()
                );
            }
            // The late region is at most a partition (1 MiB); fed in chunks all the same.
            let late = Piece {
                pos: late_start,
                len: late_len,
                data: Some(Arc::new(late)),
            };
            put(&late, late.len, &mut enc)?;
            let mut pos = late_end;
            while pos < total {
                let p = piece(layout, pos, &[]).context("reading the image's tail")?;
                put(&p, p.len, &mut enc)?;
                pos += p.len;
                progress(pos, total);
            }
            progress(total, total);
            let tee = enc
                .finish()
                .with_context(|| format!("finishing {}", zst_path.display()))?;
            let mut inner = tee.inner;
            inner.flush()?;
            Ok((measured, tee.count, hex::encode(tee.hash.finalize())))
        };
        let consumed = consume();
        drop(rx_main);
        let read = reader
            .join()
            .map_err(|_| anyhow!("the image reader thread failed"))?;
        read?;
        consumed
    });
    let (measured, zst_size, zst_sha256) = result?;

    let zst = zst_file.commit()?;
    let raw = match raw_file {
        Some(mut f) => {
            f.file()
                .set_len(total)
                .with_context(|| format!("sizing {}", raw_path.display()))?;
            Some(f.commit()?)
        }
        None => None,
    };
    Ok((
        Outputs {
            image_size: total,
            image_sha256: measured.image_sha256.clone(),
            zst,
            zst_size,
            zst_sha256,
            raw,
        },
        measured,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Layout {
        let mut l = Layout::new(40 << 20);
        let noise: Vec<u8> = (0..(6u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        l.put_bytes(3 << 20, noise).unwrap();
        l.put_bytes((30 << 20) + 7, b"tail".to_vec()).unwrap();
        l
    }

    #[test]
    fn zstd_output_does_not_depend_on_worker_count() {
        let data = sample().to_vec().unwrap();
        let enc = |workers| {
            let mut e = SeekableWriter::new(Vec::new(), ZSTD_LEVEL, workers).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let one = enc(1);
        assert_eq!(one, enc(2));
        assert_eq!(one, enc(4));
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), data);
    }

    /// Partitions at 1-20 MiB and 20-35 MiB, the late region at 35-36 MiB.
    fn spec(l: &Layout) -> ImageSpec<'_> {
        ImageSpec {
            layout: l,
            partitions: vec![(1 << 20, 19 << 20), (20 << 20, 15 << 20)],
            late: (35 << 20, 1 << 20),
            slots: vec![],
        }
    }

    fn late_bytes() -> Vec<u8> {
        let mut v = vec![0u8; 1 << 20];
        v[..5].copy_from_slice(b"late!");
        v
    }

    #[test]
    fn writes_zst_and_sparse_raw_identically_twice() {
        let d = tempfile::tempdir().unwrap();
        let l = sample();
        let mut calls = Vec::new();
        let mut seen = None;
        let (a, m) = write_image(
            &spec(&l),
            d.path(),
            "x",
            true,
            false,
            &mut |m| {
                seen = Some(m.clone());
                Ok(late_bytes())
            },
            &mut |done, total| calls.push((done, total)),
        )
        .unwrap();
        // Progress by the chunk where data is, by the run where none is; never backwards.
        assert!(calls.len() >= 6, "{calls:?}");
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
        assert_eq!(calls.last(), Some(&(40 << 20, 40 << 20)));
        let zst1 = std::fs::read(&a.zst).unwrap();
        let raw = std::fs::read(a.raw.as_ref().unwrap()).unwrap();
        let described = l.to_vec().unwrap();
        let mut want = described.clone();
        want[35 << 20..36 << 20].copy_from_slice(&late_bytes());
        assert_eq!(raw, want);
        // The image digest is of the image with the late region as zeros.
        assert_eq!(a.image_sha256, manifest::ChunkDigest::of(&described));
        assert_eq!(seen.unwrap().image_sha256, a.image_sha256);
        assert_eq!(
            m.partitions,
            [
                hex::encode(Sha256::digest(&described[1 << 20..20 << 20])),
                hex::encode(Sha256::digest(&described[20 << 20..35 << 20])),
            ]
        );
        // Block map: the noise (3-9 MiB) split at 4 MiB and at the 20 MiB boundary is not
        // crossed; the tail's block; each digest is of those bytes.
        let blocks: Vec<(u64, u64)> = m.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(
            blocks,
            [(768, 1791), (1792, 2303), (7680, 7680)],
            "{blocks:?}"
        );
        for r in &m.ranges {
            let (s, e) = (r.first as usize * 4096, (r.last as usize + 1) * 4096);
            assert_eq!(r.sha256, hex::encode(Sha256::digest(&described[s..e])));
        }
        assert_eq!(a.zst_sha256, hex::encode(Sha256::digest(&zst1)));
        assert_eq!(zstd::decode_all(&zst1[..]).unwrap(), raw);
        // One frame per MiB, each with its content size in its header; the seek table covers
        // the image.
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&zst1).unwrap(),
            Some(seekable::FRAME_SIZE as u64)
        );
        let table = seekable::read_seek_table(&std::fs::File::open(&a.zst).unwrap(), "x")
            .unwrap()
            .unwrap();
        assert_eq!(table.decompressed_size, l.len());
        assert_eq!(table.frames.len() as u64, l.len().div_ceil(1 << 20));
        assert!(table.frames.iter().all(|f| f.size == 1 << 20));
        let (b, _) = write_image(
            &spec(&l),
            d.path(),
            "x",
            false,
            true,
            &mut |_| Ok(late_bytes()),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(std::fs::read(&b.zst).unwrap(), zst1);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b.zst), 0o600, "a secret-bearing image is private");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn slot_regions_leave_the_block_map_and_read_as_zeros_in_the_image_digest() {
        let d = tempfile::tempdir().unwrap();
        let l = sample();
        let mut sp = spec(&l);
        // The second partition (20-35 MiB, holding the tail) is a slot region.
        sp.slots = vec![(20 << 20, 15 << 20)];
        let (a, m) = write_image(
            &sp,
            d.path(),
            "x",
            true,
            false,
            &mut |_| Ok(late_bytes()),
            &mut |_, _| {},
        )
        .unwrap();
        let described = l.to_vec().unwrap();
        let mut zeroed = described.clone();
        zeroed[20 << 20..35 << 20].fill(0);
        assert_ne!(zeroed, described, "the slot region holds data");
        assert_eq!(a.image_sha256, manifest::ChunkDigest::of(&zeroed));
        assert_eq!(m.image_sha256, a.image_sha256);
        // The partition's digest is of its real (base) bytes.
        assert_eq!(
            m.partitions[1],
            hex::encode(Sha256::digest(&described[20 << 20..35 << 20]))
        );
        let blocks = |r: &[BlockRange]| r.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>();
        assert_eq!(blocks(&m.ranges), [(768, 1791), (1792, 2303)]);
        assert_eq!(blocks(&m.slot_ranges), [(7680, 7680)]);
        assert_eq!(
            m.slot_ranges[0].sha256,
            hex::encode(Sha256::digest(&described[7680 * 4096..7681 * 4096]))
        );
        // The image itself is written whole.
        let mut want = described;
        want[35 << 20..36 << 20].copy_from_slice(&late_bytes());
        assert_eq!(std::fs::read(a.raw.unwrap()).unwrap(), want);

        for bad in [(34 << 20, 2 << 20), (39 << 20, 2 << 20)] {
            sp.slots = vec![bad];
            let e = write_image(
                &sp,
                d.path(),
                "y",
                false,
                false,
                &mut |_| Ok(late_bytes()),
                &mut |_, _| {},
            )
            .unwrap_err();
            assert!(format!("{e:#}").contains("slot region"), "{e:#}");
        }
        sp.slots = vec![(2 << 20, 2 << 20), (3 << 20, 1 << 20)];
        let e = write_image(
            &sp,
            d.path(),
            "y",
            false,
            false,
            &mut |_| Ok(late_bytes()),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("another slot region"), "{e:#}");
    }

    #[test]
    fn hash_zeroed_replaces_windows_across_chunks() {
        let data: Vec<u8> = (0..100u8).collect();
        let windows = [(10, 5), (40, 30)];
        let mut want = data.clone();
        want[10..15].fill(0);
        want[40..70].fill(0);
        for cut in [0usize, 1, 12, 40, 55, 70, 99, 100] {
            let mut h = Sha256::new();
            hash_zeroed(&mut h, 0, &data[..cut], &windows);
            hash_zeroed(&mut h, cut as u64, &data[cut..], &windows);
            assert_eq!(h.finalize()[..], Sha256::digest(&want)[..], "cut at {cut}");
        }
    }

    #[test]
    fn late_content_of_the_wrong_size_or_failing_leaves_no_files() {
        let d = tempfile::tempdir().unwrap();
        let l = sample();
        let e = write_image(
            &spec(&l),
            d.path(),
            "x",
            true,
            false,
            &mut |_| Ok(vec![1u8; 10]),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("late region"), "{e:#}");
        let e = write_image(
            &spec(&l),
            d.path(),
            "x",
            true,
            false,
            &mut |_| Err(anyhow!("no key")),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no key"), "{e:#}");
        let mut mapped = sample();
        mapped.put_bytes(35 << 20, b"x".to_vec()).unwrap();
        let e = write_image(
            &spec(&mapped),
            d.path(),
            "x",
            true,
            false,
            &mut |_| Ok(late_bytes()),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("must be unmapped"), "{e:#}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn unwritable_output_directory_is_an_error_without_files() {
        let l = sample();
        let e = write_image(
            &spec(&l),
            Path::new("/proc/self/nope"),
            "x",
            false,
            false,
            &mut |_| Ok(late_bytes()),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--out"), "{e:#}");
    }
}
