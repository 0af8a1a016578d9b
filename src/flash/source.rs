//! What `flash` writes: the image, what proves it, and its bytes as aligned chunks.
//!
//! An image is recognised by its first bytes (never its name): zstd, xz, gzip or raw. What
//! says which bytes matter, in order of preference:
//!
//! 1. **an edgeimage manifest** (inside the image, next to it as `<name>.manifest.json`, or
//!    `--manifest`): its signature is checked against the trust store before anything else;
//!    the block map's ranges and the manifest partition are written, and every range's bytes
//!    must match the manifest's SHA-256 as they stream past;
//! 2. **a `.bmap`** (next to the image or `--bmap`): its ranges are written and checked
//!    against its SHA-256 digests (a `.bmap` of another image is caught by these digests and
//!    by its image size);
//! 3. **nothing**: the whole image is written.
//!
//! Without a trusted signature (cases 2 and 3, an unsigned manifest or a key not in the trust
//! store) the image is refused unless `--allow-unsigned`; a revoked key, a bad signature, an
//! older build than `--min-build` or another profile than `--profile` are always refused.
//!
//! Seekable `.raw.zst` files (what `edgeimage build` writes) are decompressed frame by frame
//! on every core, and frames holding nothing to write are never decompressed. Other zstd, xz
//! and gzip streams are decompressed once, in order. Plain compressed images carry no reliable
//! size, so they are decompressed once beforehand to learn it (which also proves the stream
//! intact before the first byte is written).

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::artifact::bmap::{self, Bmap};
use crate::artifact::manifest::Manifest;
use crate::artifact::seekable::{self, SeekTable};
use crate::layout::SharedFile;
use crate::verify::target::{AlignedBuf, Kind};
use crate::verify::{self, Outcome, Report, Stop, VerifyOptions};

/// Largest chunk handed to the writers (and the grid chunks are cut on).
pub const CHUNK: u64 = 4 << 20;

/// How much of each end of the image is held back until everything else is written and
/// verified: the protective MBR and primary GPT at the start, the backup GPT at the end.
pub const HOLD: u64 = 1 << 20;

/// How the image file is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Raw,
    /// zstd with a seek table (independent frames).
    SeekableZstd,
    Zstd,
    Xz,
    Gzip,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::SeekableZstd => "zstd (seekable)",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
            Format::Gzip => "gzip",
        }
    }
}

/// What describes the bytes to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapSource {
    /// An edgeimage manifest (where it was found).
    Manifest(String),
    /// A `.bmap` file.
    Bmap(PathBuf),
    /// Neither: every byte is written.
    Whole,
}

/// Who vouches for the image.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Provenance {
    /// The manifest's profile name, build number and Talos version.
    pub name: Option<String>,
    pub build_number: Option<u64>,
    pub talos_version: Option<String>,
    /// SHA-256 of the image as the manifest states it (manifest partition read as zeros).
    pub image_sha256: Option<String>,
    /// SHA-256 of the manifest (or `.bmap`) file.
    pub manifest_sha256: Option<String>,
    /// The signing key's ID, when signed.
    pub key_id: Option<String>,
    /// The signature was checked against the trust store and is trusted.
    pub trusted: bool,
    /// One sentence: who signed what, or why it is not trusted.
    pub statement: String,
}

/// A checked image, ready to stream.
pub struct Image {
    pub path: PathBuf,
    pub format: Format,
    /// Size of the (decompressed) image.
    pub size: u64,
    pub map: MapSource,
    /// Byte ranges to write, sorted, disjoint, cut at [`HOLD`] boundaries and at [`CHUNK`].
    pub pieces: Vec<(u64, u64)>,
    /// Windows whose SHA-256 the stream must match, with the place each covers.
    pub expected: Vec<Expected>,
    pub provenance: Provenance,
    /// The manifest (authenticated unless `--allow-unsigned` let an untrusted one through).
    pub manifest: Option<Manifest>,
    seek: Option<SeekTable>,
    /// The image file, opened once.
    file: SharedFile,
}

/// A window of the image with the digest it must have.
#[derive(Clone, Debug)]
pub struct Expected {
    pub start: u64,
    pub end: u64,
    pub sha256: String,
    pub place: String,
}

/// A piece of the image, in a buffer aligned for direct I/O.
pub struct Chunk {
    pub offset: u64,
    pub data: AlignedBuf,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + self.data.as_slice().len() as u64
    }
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// The trust store; `None` only with `allow_unsigned`.
    pub trust: Option<PathBuf>,
    pub allow_unsigned: bool,
    pub manifest: Option<PathBuf>,
    pub bmap: Option<PathBuf>,
    pub min_build: Option<u64>,
    pub profile: Option<String>,
}

/// Why an image is refused: the outcome (exit code) `verify` would give, and the reason.
#[derive(Debug)]
pub struct Refused(pub Outcome, pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Refused {}

fn refuse(o: Outcome, msg: String) -> anyhow::Error {
    anyhow::Error::new(Refused(o, msg))
}

/// Open the image once (every later read uses this descriptor, so the bytes proven are the
/// bytes written) and recognise its format by magic bytes.
fn sniff(path: &Path) -> Result<(Format, SharedFile)> {
    let f = crate::input::open(path, crate::input::Kind::Image)?.into_file();
    let mut head = [0u8; 6];
    let n = crate::layout::read_up_to(&mut &f, &mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let head = &head[..n];
    let format = match head {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            if seekable::read_seek_table(&f, &path.display().to_string())?.is_some() {
                Format::SeekableZstd
            } else {
                Format::Zstd
            }
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Format::Xz,
        [0x1f, 0x8b, ..] => Format::Gzip,
        [b'B', b'Z', b'h', ..] => bail!(
            "{} is bzip2-compressed, which flash does not read: decompress it (bunzip2) or recompress it with zstd",
            path.display()
        ),
        [0x04, 0x22, 0x4d, 0x18, ..] => bail!(
            "{} is lz4-compressed, which flash does not read: decompress it (lz4 -d) or recompress it with zstd",
            path.display()
        ),
        [b'{', ..] => bail!(
            "{} is a manifest, not an image: give the image next to it (<name>.raw.zst), or pass the manifest with --manifest",
            path.display()
        ),
        _ if n == 0 => bail!("the image {} is empty", path.display()),
        _ => Format::Raw,
    };
    Ok((format, SharedFile::new(f, path)))
}

/// `foo.raw.zst` → `foo`, `foo.img.xz` → `foo.img` and `foo`, …: stems to look for
/// `<stem>.manifest.json` / `<stem>.bmap` next to the image.
fn stems(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![];
    let mut cur = name.as_str();
    out.push(path.with_file_name(cur));
    for suffix in [".zst", ".xz", ".gz", ".raw", ".img"] {
        if let Some(s) = cur.strip_suffix(suffix) {
            cur = s;
            out.push(path.with_file_name(cur));
        }
    }
    out.reverse();
    out
}

fn sidecar(path: &Path, ext: &str) -> Option<PathBuf> {
    stems(path)
        .into_iter()
        .map(|s| PathBuf::from(format!("{}.{ext}", s.display())))
        .find(|p| p.is_file())
}

/// The manifest of the image, authenticated (or, with `--allow-unsigned`, at least read).
fn manifest_of(
    path: &Path,
    format: Format,
    opts: &SourceOptions,
) -> Result<Option<(Manifest, Provenance, String)>> {
    let explicit = opts.manifest.clone().or_else(|| match format {
        Format::Xz | Format::Gzip => sidecar(path, "manifest.json"),
        _ => None,
    });
    let kind = match format {
        Format::Raw => Kind::Image,
        _ => Kind::Compressed,
    };
    if matches!(format, Format::Xz | Format::Gzip) && explicit.is_none() {
        return Ok(None);
    }
    let unchecked = |why: String| -> Result<Option<(Manifest, Provenance, String)>> {
        match verify::read_manifest_unchecked(path, kind, explicit.as_deref()) {
            Ok((m, source)) => {
                let p = Provenance {
                    name: Some(m.name.clone()),
                    build_number: Some(m.build_number),
                    talos_version: Some(m.talos_version.clone()),
                    image_sha256: m.image.digest(),
                    manifest_sha256: None,
                    key_id: None,
                    trusted: false,
                    statement: why,
                };
                Ok(Some((m, p, source)))
            }
            Err(Stop(Outcome::Unsigned, _)) => Ok(None),
            Err(Stop(o, msg)) => Err(refuse(o, msg)),
        }
    };
    let Some(trust) = &opts.trust else {
        if opts.allow_unsigned {
            return unchecked("not checked (no trust store given, --allow-unsigned)".into());
        }
        bail!("no trust store: pass --trust DIR (or set EDGEIMAGE_TRUST), or --allow-unsigned to write an image nobody vouches for");
    };
    let vopts = VerifyOptions {
        trust: trust.clone(),
        min_build: opts.min_build,
        profile: opts.profile.clone(),
        manifest: explicit.clone(),
    };
    let mut r = Report::new(path);
    match verify::authenticate(path, kind, &vopts, &mut r) {
        Ok((m, statement)) => {
            let p = Provenance {
                name: Some(m.name.clone()),
                build_number: Some(m.build_number),
                talos_version: Some(m.talos_version.clone()),
                image_sha256: m.image.digest(),
                manifest_sha256: r.manifest_sha256.clone(),
                key_id: r.key_id.clone(),
                trusted: true,
                statement,
            };
            let source = r.manifest_source.unwrap_or_default();
            Ok(Some((m, p, source)))
        }
        Err(Stop(o @ (Outcome::Unsigned | Outcome::UnknownKey), msg)) => {
            // No manifest at all: the block map or the plain image rules decide.
            if o == Outcome::Unsigned
                && matches!(
                    verify::read_manifest_unchecked(path, kind, explicit.as_deref()),
                    Err(Stop(Outcome::Unsigned, _))
                )
            {
                return Ok(None);
            }
            if !opts.allow_unsigned {
                return Err(refuse(
                    o,
                    format!("{msg}; refusing to write it (--allow-unsigned writes it anyway)"),
                ));
            }
            let got = unchecked(format!(
                "NOT TRUSTED ({msg}), written because of --allow-unsigned"
            ))?;
            Ok(got.map(|(m, mut p, s)| {
                p.key_id = r.key_id.clone();
                p.manifest_sha256 = r.manifest_sha256.clone();
                (m, p, s)
            }))
        }
        Err(Stop(o, msg)) => Err(refuse(o, format!("{msg}; refusing to write it"))),
    }
}

/// Cut sorted disjoint `ranges` at the hold boundaries and on the [`CHUNK`] grid.
pub fn cut(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let hold_end = HOLD.min(size);
    let tail = size.saturating_sub(HOLD).max(hold_end);
    let mut out = Vec::new();
    for &(a, b) in ranges {
        let mut s = a;
        while s < b {
            let mut e = ((s / CHUNK) + 1) * CHUNK;
            for bound in [hold_end, tail] {
                if s < bound && bound < e {
                    e = bound;
                }
            }
            let e = e.min(b);
            out.push((s, e));
            s = e;
        }
    }
    out
}

/// Is the chunk starting at `a` held back until the end (it lies in the first or last [`HOLD`]
/// bytes of the image)?
pub fn held(a: u64, size: u64) -> bool {
    a < HOLD.min(size) || a >= size.saturating_sub(HOLD)
}

/// Merge sorted ranges that touch or overlap.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in v {
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl Image {
    /// Recognise, authenticate and map the image at `path`.
    pub fn open(path: &Path, opts: &SourceOptions) -> Result<Image> {
        let (format, file) = sniff(path)?;
        let what = path.display().to_string();
        let seek = if format == Format::SeekableZstd {
            seekable::read_seek_table(file.file(), &what)?
        } else {
            None
        };
        let file_len = file
            .len()
            .with_context(|| format!("reading the size of {what}"))?;
        // The size the container states, if it states one.
        let stated: Option<u64> = match format {
            Format::Raw => Some(file_len),
            Format::SeekableZstd => seek.as_ref().map(|t| t.decompressed_size),
            // A frame header states only its own frame's size, and a plain .zst may hold
            // several frames: the size is measured (or taken from the manifest / .bmap).
            Format::Zstd => None,
            Format::Xz | Format::Gzip => None,
        };

        let mut provenance = Provenance::default();
        let mut expected = Vec::new();
        let mut manifest = None;
        let (size, map, wanted) = if let Some((m, p, source)) = manifest_of(path, format, opts)? {
            provenance = p;
            if let Some(s) = stated {
                if s != m.image.size {
                    return Err(refuse(
                        Outcome::ContentMismatch,
                        format!(
                            "{what} holds {s} bytes, its manifest ({source}) describes {} bytes: truncated or not this manifest's image; refusing to write it",
                            m.image.size
                        ),
                    ));
                }
            }
            let mut wanted: Vec<(u64, u64)> = Vec::new();
            for r in &m.block_map.ranges {
                let (a, b) = m.byte_range(r);
                expected.push(Expected {
                    start: a,
                    end: b,
                    sha256: r.sha256.clone(),
                    place: m.place_of(a),
                });
                wanted.push((a, b));
            }
            let mp = &m.manifest_partition;
            wanted.push((mp.offset, (mp.offset + mp.size).min(m.image.size)));
            // Personalization slots are outside the block map (their bytes differ per
            // device); their base content is written whole and must match the base digest.
            for p in m.slot_partitions() {
                let end = (p.offset + p.size).min(m.image.size);
                wanted.push((p.offset, end));
                expected.push(Expected {
                    start: p.offset,
                    end,
                    sha256: p.sha256.clone(),
                    place: format!("partition {} ({}, base content)", p.number, p.label),
                });
            }
            expected.sort_by_key(|e| e.start);
            let size = m.image.size;
            manifest = Some(m);
            (size, MapSource::Manifest(source), merge(wanted))
        } else if let Some(bpath) = opts.bmap.clone().or_else(|| sidecar(path, "bmap")) {
            let bmap_bytes = crate::input::read(&bpath, crate::input::Kind::BlockMap)?;
            let b: Bmap = bmap::parse_bytes(&bmap_bytes)
                .with_context(|| format!("the block map {}", bpath.display()))?;
            if let Some(s) = stated {
                if s != b.image_size {
                    return Err(refuse(
                        Outcome::ContentMismatch,
                        format!(
                            "the block map {} describes a {}-byte image, {what} holds {s} bytes: the .bmap does not belong to this image (pass the right one with --bmap)",
                            bpath.display(),
                            b.image_size
                        ),
                    ));
                }
            }
            if !opts.allow_unsigned {
                return Err(refuse(
                    Outcome::Unsigned,
                    format!(
                        "{what} has no signed manifest (only the block map {}); refusing to write it (--allow-unsigned writes it anyway)",
                        bpath.display()
                    ),
                ));
            }
            let mut wanted = Vec::new();
            for (i, r) in b.ranges.iter().enumerate() {
                let (a, e) = b.byte_range(r);
                wanted.push((a, e));
                expected.push(Expected {
                    start: a,
                    end: e,
                    sha256: r.sha256.clone(),
                    place: format!("block map range #{} (blocks {}-{})", i + 1, r.first, r.last),
                });
            }
            provenance.manifest_sha256 = Some({
                use sha2::{Digest, Sha256};
                hex::encode(Sha256::digest(&bmap_bytes))
            });
            provenance.statement = format!(
                "NOT SIGNED (block map {}), written because of --allow-unsigned",
                bpath.display()
            );
            (b.image_size, MapSource::Bmap(bpath), merge(wanted))
        } else {
            if !opts.allow_unsigned {
                return Err(refuse(
                    Outcome::Unsigned,
                    format!(
                        "{what} is a plain {} image with no manifest and no .bmap: nobody vouches for it; refusing to write it (--allow-unsigned writes it anyway)",
                        format.as_str()
                    ),
                ));
            }
            provenance.statement =
                "NOT SIGNED (plain image), written because of --allow-unsigned".into();
            let size = match stated {
                Some(s) => s,
                None => measure(&file, format, &what)?,
            };
            (size, MapSource::Whole, vec![(0, size)])
        };
        if size == 0 {
            bail!("the image {what} is empty");
        }
        Ok(Image {
            path: path.to_path_buf(),
            format,
            size,
            map,
            pieces: cut(&wanted, size),
            expected,
            provenance,
            manifest,
            seek,
            file,
        })
    }

    /// Bytes that will be written.
    /// The logical block size the image's partition table was written for: the manifest's,
    /// else read from the image's GPT; `None` when it has no readable GPT (a plain disk image
    /// of something else).
    pub fn block_size(&self) -> Option<u64> {
        if let Some(m) = &self.manifest {
            return Some(m.image.sector_size);
        }
        let head = self.read_range(0, (64 << 10).min(self.size)).ok()?;
        crate::format::gpt::read_head(&head, true)
            .ok()
            .map(|g| g.sector_size)
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.pieces.iter().map(|(a, b)| b - a).sum()
    }

    /// Read `len` bytes at image offset `offset` directly (raw images, and seekable `.zst`
    /// through the frames holding them): for per-device content computed from the image's
    /// own bytes (a personalized META starts from the base one). Streams cannot do this.
    pub fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let what = self.path.display().to_string();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| anyhow!("{what}: bytes {offset}+{len} lie outside the image"))?;
        let f = self.file.file();
        match (self.format, &self.seek) {
            (Format::Raw, _) => {
                let mut v = vec![0u8; len as usize];
                f.read_exact_at(&mut v, offset)
                    .with_context(|| format!("reading bytes {offset}-{} of {what}", end - 1))?;
                Ok(v)
            }
            (Format::SeekableZstd, Some(table)) => {
                let frames: Vec<usize> = table.frames_overlapping(offset, end).collect();
                let mut v = vec![0u8; len as usize];
                seekable::decompress_frames(f, &what, table, &frames, 1, &mut |_, at, bytes| {
                    let (a, b) = (at.max(offset), (at + bytes.len() as u64).min(end));
                    if a < b {
                        v[(a - offset) as usize..(b - offset) as usize]
                            .copy_from_slice(&bytes[(a - at) as usize..(b - at) as usize]);
                    }
                    Ok(true)
                })?;
                Ok(v)
            }
            _ => bail!(
                "{what} is a {} stream: per-device content needs a raw image or a seekable .raw.zst (as edgeimage build writes)",
                self.format.as_str()
            ),
        }
    }

    /// Stream every piece, in order, as aligned chunks. `out` returns `false` to stop early.
    /// Returns the number of bytes the image decompressed to (for sequential streams) or its
    /// size.
    pub fn stream(&self, workers: usize, out: &mut dyn FnMut(Chunk) -> Result<bool>) -> Result<()> {
        let what = self.path.display().to_string();
        let f = self.file.file();
        match self.format {
            Format::Raw => {
                for &(a, b) in &self.pieces {
                    let len = (b - a) as usize;
                    let mut buf = AlignedBuf::new(len);
                    f.read_exact_at(buf.as_mut_slice(), a)
                        .map_err(|e| anyhow!("reading bytes {a}-{} of {what}: {e}", b - 1))?;
                    if !out(Chunk {
                        offset: a,
                        data: buf,
                    })? {
                        return Ok(());
                    }
                }
                Ok(())
            }
            Format::SeekableZstd => {
                let table = self
                    .seek
                    .as_ref()
                    .ok_or_else(|| anyhow!("{what}: the seek table went missing"))?;
                let frames: Vec<usize> = table
                    .frames
                    .iter()
                    .enumerate()
                    .filter(|(_, fr)| {
                        let (s, e) = (fr.offset, fr.offset + fr.size);
                        overlaps(&self.pieces, s, e)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let mut asm = Assembler::new(&self.pieces);
                let mut stop = false;
                seekable::decompress_frames(
                    f,
                    &what,
                    table,
                    &frames,
                    workers,
                    &mut |_, off, bytes| {
                        let go = asm.feed(off, &bytes, out)?;
                        stop = !go;
                        Ok(go)
                    },
                )?;
                if !stop {
                    asm.finish(&what)?;
                }
                Ok(())
            }
            Format::Zstd | Format::Xz | Format::Gzip => {
                let mut dec = decoder(&self.file, self.format, &what)?;
                let mut asm = Assembler::new(&self.pieces);
                let mut pos = 0u64;
                let mut buf = vec![0u8; 1 << 20];
                let last = self.pieces.last().map_or(0, |p| p.1);
                while pos < last {
                    let n = crate::layout::read_up_to(&mut dec, &mut buf).map_err(|e| {
                        refuse(
                            Outcome::ContentMismatch,
                            format!(
                                "{what}: the compressed stream is damaged near byte {pos} of the image: {e}"
                            ),
                        )
                    })?;
                    if n == 0 {
                        break;
                    }
                    if !asm.feed(pos, &buf[..n], out)? {
                        return Ok(());
                    }
                    pos += n as u64;
                }
                // The stream must end where the image does (a longer one is another image);
                // what follows the last piece is read only up to the stated size, plus one
                // byte to tell a longer stream.
                let rest = io::copy(
                    &mut (&mut dec).take(self.size.saturating_sub(pos) + 1),
                    &mut io::sink(),
                )
                .map_err(|e| {
                    refuse(
                        Outcome::ContentMismatch,
                        format!("{what}: the compressed stream is damaged after byte {pos}: {e}"),
                    )
                })?;
                let total = pos + rest;
                if total != self.size {
                    return Err(refuse(
                        Outcome::ContentMismatch,
                        format!(
                            "{what} decompresses to {}{total} bytes, but {} says the image has {} bytes",
                            if total > self.size { "more than " } else { "" },
                            match &self.map {
                                MapSource::Manifest(s) => s.clone(),
                                MapSource::Bmap(b) => format!("the block map {}", b.display()),
                                MapSource::Whole => "its first reading".to_string(),
                            },
                            self.size
                        ),
                    ));
                }
                asm.finish(&what)
            }
        }
    }
}

fn overlaps(pieces: &[(u64, u64)], s: u64, e: u64) -> bool {
    let i = pieces.partition_point(|p| p.1 <= s);
    pieces.get(i).is_some_and(|p| p.0 < e)
}

fn decoder(f: &SharedFile, format: Format, what: &str) -> Result<Box<dyn Read + Send>> {
    let len = f
        .len()
        .with_context(|| format!("reading the size of {what}"))?;
    let r = io::BufReader::with_capacity(1 << 20, f.region(0, len));
    Ok(match format {
        Format::Zstd | Format::SeekableZstd => Box::new(
            zstd::Decoder::with_buffer(r).with_context(|| format!("starting zstd on {what}"))?,
        ),
        Format::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(r)),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Format::Raw => Box::new(r),
    })
}

/// Decompress a plain compressed image once to learn its size (and prove it readable), up
/// to the largest image edgeimage writes.
fn measure(f: &SharedFile, format: Format, what: &str) -> Result<u64> {
    let max = crate::layout::MAX_DISK_SIZE;
    let mut dec = decoder(f, format, what)?;
    let n = io::copy(&mut (&mut dec).take(max + 1), &mut io::sink()).map_err(|e| {
        refuse(
            Outcome::ContentMismatch,
            format!("{what}: the compressed stream is damaged: {e}; nothing was written"),
        )
    })?;
    if n > max {
        return Err(refuse(
            Outcome::ContentMismatch,
            format!(
                "{what} decompresses to more than {}, the largest image edgeimage writes; nothing was written",
                crate::progress::human_bytes(max)
            ),
        ));
    }
    Ok(n)
}

/// Cuts an in-order stream of decompressed bytes into the pieces to write.
struct Assembler<'a> {
    pieces: &'a [(u64, u64)],
    next: usize,
    cur: Option<(u64, AlignedBuf)>,
}

impl<'a> Assembler<'a> {
    fn new(pieces: &'a [(u64, u64)]) -> Self {
        Assembler {
            pieces,
            next: 0,
            cur: None,
        }
    }

    /// Feed `data` found at image offset `pos`.
    fn feed(
        &mut self,
        pos: u64,
        data: &[u8],
        out: &mut dyn FnMut(Chunk) -> Result<bool>,
    ) -> Result<bool> {
        let end = pos + data.len() as u64;
        while self.next < self.pieces.len() {
            let (a, b) = self.pieces[self.next];
            if a >= end {
                break;
            }
            if b <= pos {
                // A piece the stream has passed without covering it: only possible when
                // frames are skipped, and those are exactly the ones holding no piece.
                bail!("internal: piece {a}-{b} was skipped by the stream");
            }
            let (_, buf) = self
                .cur
                .get_or_insert_with(|| (a, AlignedBuf::new((b - a) as usize)));
            let from = a.max(pos);
            let to = b.min(end);
            buf.as_mut_slice()[(from - a) as usize..(to - a) as usize]
                .copy_from_slice(&data[(from - pos) as usize..(to - pos) as usize]);
            if to == b {
                let (offset, data) = self.cur.take().expect("set above");
                self.next += 1;
                if !out(Chunk { offset, data })? {
                    return Ok(false);
                }
            } else {
                break;
            }
        }
        Ok(true)
    }

    fn finish(&self, what: &str) -> Result<()> {
        if self.next < self.pieces.len() {
            let (a, _) = self.pieces[self.next];
            return Err(refuse(
                Outcome::ContentMismatch,
                format!("{what} ended before byte {a} of the image: truncated"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_hold_and_grid() {
        let size = 20 << 20;
        let p = cut(&[(0, 3 << 20), (9 << 20, 20 << 20)], size);
        assert_eq!(
            p,
            [
                (0, 1 << 20),
                (1 << 20, 3 << 20),
                (9 << 20, 12 << 20),
                (12 << 20, 16 << 20),
                (16 << 20, 19 << 20),
                (19 << 20, 20 << 20),
            ]
        );
        assert!(held(0, size));
        assert!(!held(1 << 20, size));
        assert!(held(19 << 20, size));
        assert!(!held(16 << 20, size));
        // An image smaller than two holds: everything is held.
        let small = cut(&[(0, 1536 << 10)], 1536 << 10);
        assert!(small.iter().all(|&(a, _)| held(a, 1536 << 10)));
    }

    #[test]
    fn stems_find_sidecars() {
        let s = stems(Path::new("/x/demo.raw.zst"));
        assert_eq!(s[0], Path::new("/x/demo"));
        let s = stems(Path::new("/x/a.img.xz"));
        assert!(s.contains(&PathBuf::from("/x/a.img")) && s.contains(&PathBuf::from("/x/a")));
    }

    #[test]
    fn read_range_from_raw_and_seekable_zst() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(5u32 << 20) + 123)
            .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
            .collect();
        let raw = d.path().join("x.raw");
        std::fs::write(&raw, &data).unwrap();
        let zst = d.path().join("x.raw.zst");
        let mut w = seekable::SeekableWriter::new(Vec::new(), 3, 2).unwrap();
        w.write_all(&data).unwrap();
        std::fs::write(&zst, w.finish().unwrap()).unwrap();
        let opts = SourceOptions {
            allow_unsigned: true,
            ..Default::default()
        };
        for p in [&raw, &zst] {
            let img = Image::open(p, &opts).unwrap();
            for (o, l) in [
                (0u64, 10u64),
                ((1 << 20) - 5, 10),
                (3 << 20, 2 << 20),
                (data.len() as u64 - 7, 7),
            ] {
                let got = img.read_range(o, l).unwrap();
                assert_eq!(
                    &got[..],
                    &data[o as usize..(o + l) as usize],
                    "{} {o}+{l}",
                    p.display()
                );
            }
            let e = img.read_range(data.len() as u64 - 1, 2).unwrap_err();
            assert!(e.to_string().contains("outside the image"), "{e}");
        }
    }

    #[test]
    fn assembler_cuts_pieces_from_any_stream_chunking() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let pieces = [(100u64, 5000u64), (5000, 9000), (20_000, 39_999)];
        for step in [1usize, 7, 4096, 40_000] {
            let mut asm = Assembler::new(&pieces);
            let mut got = Vec::new();
            for (i, c) in data.chunks(step).enumerate() {
                asm.feed((i * step) as u64, c, &mut |ch| {
                    got.push((ch.offset, ch.data.as_slice().to_vec()));
                    Ok(true)
                })
                .unwrap();
            }
            asm.finish("t").unwrap();
            assert_eq!(got.len(), 3);
            for ((a, b), (o, d)) in pieces.iter().zip(&got) {
                assert_eq!(*a, *o);
                assert_eq!(&data[*a as usize..*b as usize], &d[..]);
            }
        }
        let mut asm = Assembler::new(&pieces);
        asm.feed(0, &data[..6000], &mut |_| Ok(true)).unwrap();
        let e = asm.finish("img").unwrap_err();
        assert!(e.to_string().contains("ended before byte 5000"), "{e}");
    }
}
