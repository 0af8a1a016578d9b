//! Build outputs: `<name>.raw.zst` (always) and `<name>.raw` (on request), streamed from the
//! composed [`Layout`] in one pass.
//!
//! A reader thread walks the layout in 1 MiB chunks; a hashing thread computes the image's
//! SHA-256; the calling thread feeds zstd (which compresses on its own worker threads) and
//! writes the raw image sparsely. Channels are bounded, so memory stays at a few tens of MiB
//! whatever the image size. The zstd frame carries the content size and a checksum.
//! zstd's multithreaded output does not depend on the number of workers (a test checks it),
//! so the bytes are the same on any machine.

pub mod atomic;

use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use atomic::AtomicFile;

/// zstd compression level of `.raw.zst` (kernel and initramfs are compressed already, so
/// higher levels gain little and cost much time).
pub const ZSTD_LEVEL: i32 = 3;

const CHUNK: usize = 1 << 20;

/// What the writer produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outputs {
    pub image_size: u64,
    pub image_sha256: String,
    pub zst: PathBuf,
    pub zst_size: u64,
    pub zst_sha256: String,
    pub raw: Option<PathBuf>,
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

/// Number of zstd worker threads: every core (the output is the same for any count ≥ 1).
pub fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A zstd encoder configured the way every edgeimage `.zst` is written.
pub fn zstd_encoder<W: Write>(
    w: W,
    size: u64,
    workers: u32,
) -> io::Result<zstd::Encoder<'static, W>> {
    let mut enc = zstd::Encoder::new(w, ZSTD_LEVEL)?;
    enc.multithread(workers.max(1))?;
    enc.include_checksum(true)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(size))?;
    Ok(enc)
}

/// Stream `layout` into `<out_dir>/<name>.raw.zst` (and `<name>.raw` when `raw`).
/// `secret` makes the files mode 0600 (the image carries a machine configuration).
/// `progress(done, total)` is called as bytes are consumed.
pub fn write_image(
    layout: &Layout,
    out_dir: &Path,
    name: &str,
    raw: bool,
    secret: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outputs> {
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
    let total = layout.len();

    let (tx_main, rx_main) = sync_channel::<Arc<Vec<u8>>>(8);
    let (tx_hash, rx_hash) = sync_channel::<Arc<Vec<u8>>>(8);

    let result: Result<(String, u64, String)> = std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let mut r = layout.reader();
            loop {
                let mut buf = vec![0u8; CHUNK];
                let filled = crate::layout::read_up_to(&mut r, &mut buf)
                    .context("reading the image inputs")?;
                if filled == 0 {
                    return Ok(());
                }
                buf.truncate(filled);
                let chunk = Arc::new(buf);
                // A closed channel means the consumer failed; it reports the error.
                if tx_hash.send(chunk.clone()).is_err() || tx_main.send(chunk).is_err() {
                    return Ok(());
                }
            }
        });
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx_hash {
                h.update(&chunk[..]);
            }
            hex::encode(h.finalize())
        });

        let mut consume = || -> Result<(u64, String)> {
            let tee = Tee {
                inner: io::BufWriter::with_capacity(CHUNK, zst_file.file()),
                hash: Sha256::new(),
                count: 0,
            };
            let mut enc = zstd_encoder(tee, total, zstd_workers())
                .with_context(|| format!("starting zstd for {}", zst_path.display()))?;
            let mut pos = 0u64;
            for chunk in rx_main.iter() {
                enc.write_all(&chunk)
                    .with_context(|| format!("writing {}", zst_path.display()))?;
                if let Some(f) = raw_file.as_mut() {
                    if chunk.iter().any(|&b| b != 0) {
                        let f = f.file();
                        f.seek(SeekFrom::Start(pos))?;
                        f.write_all(&chunk)
                            .with_context(|| format!("writing {}", raw_path.display()))?;
                    }
                }
                pos += chunk.len() as u64;
                progress(pos, total);
            }
            let tee = enc
                .finish()
                .with_context(|| format!("finishing {}", zst_path.display()))?;
            let mut inner = tee.inner;
            inner.flush()?;
            if pos != total {
                return Err(anyhow!("the image stream ended at {pos} of {total} bytes"));
            }
            Ok((tee.count, hex::encode(tee.hash.finalize())))
        };
        let consumed = consume();
        drop(rx_main);
        let read = reader
            .join()
            .map_err(|_| anyhow!("the image reader thread failed"))?;
        let image_sha = hasher
            .join()
            .map_err(|_| anyhow!("the hashing thread failed"))?;
        read?;
        let (zst_size, zst_sha) = consumed?;
        Ok((image_sha, zst_size, zst_sha))
    });
    let (image_sha256, zst_size, zst_sha256) = result?;

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
    Ok(Outputs {
        image_size: total,
        image_sha256,
        zst,
        zst_size,
        zst_sha256,
        raw,
    })
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
            let mut e = zstd_encoder(Vec::new(), data.len() as u64, workers).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let one = enc(1);
        assert_eq!(one, enc(2));
        assert_eq!(one, enc(4));
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), data);
    }

    #[test]
    fn writes_zst_and_sparse_raw_identically_twice() {
        let d = tempfile::tempdir().unwrap();
        let l = sample();
        let mut calls = 0;
        let a = write_image(&l, d.path(), "x", true, false, &mut |_, _| calls += 1).unwrap();
        assert!(calls >= 40);
        let zst1 = std::fs::read(&a.zst).unwrap();
        let raw = std::fs::read(a.raw.as_ref().unwrap()).unwrap();
        assert_eq!(raw, l.to_vec().unwrap());
        assert_eq!(a.image_sha256, hex::encode(Sha256::digest(&raw)));
        assert_eq!(a.zst_sha256, hex::encode(Sha256::digest(&zst1)));
        assert_eq!(zstd::decode_all(&zst1[..]).unwrap(), raw);
        // Content size is in the frame header.
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&zst1).unwrap(),
            Some(l.len())
        );
        let b = write_image(&l, d.path(), "x", false, true, &mut |_, _| {}).unwrap();
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
    fn unwritable_output_directory_is_an_error_without_files() {
        let e = write_image(
            &sample(),
            Path::new("/proc/self/nope"),
            "x",
            false,
            false,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--out"), "{e:#}");
    }
}
