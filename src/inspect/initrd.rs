//! Reading a UKI's `.initrd` back: it is a sequence of archives (the base Talos initramfs and
//! what edgeimage appended), each a newc cpio, compressed (zstd, gzip) or not, with zero
//! padding between them. Each archive is decompressed as a stream and its cpio headers are
//! parsed on the fly; only `extensions.yaml` is kept in memory, and the `*.sqsh` layers are
//! hashed as they pass.

use std::io::{self, BufRead, BufReader, Read};

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One archive of the initrd.
#[derive(Debug, Serialize)]
pub struct ArchiveInfo {
    /// Offset inside the `.initrd` section.
    pub offset: u64,
    pub compression: String,
    pub entries: usize,
}

/// One file of an archive that `inspect` reports (layers and `extensions.yaml`).
#[derive(Debug, Serialize, Clone)]
pub struct Member {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Default)]
pub struct InitrdInfo {
    pub archives: Vec<ArchiveInfo>,
    /// `N.sqsh` files with their digests, in archive order.
    pub layers: Vec<Member>,
    /// The text of `extensions.yaml`, when present.
    pub extensions_yaml: Option<String>,
    /// Number of firmware files carried in the cpio (`usr/lib/firmware/**`).
    pub firmware_files: usize,
    /// Set when the walk stopped early (an archive format it cannot read, e.g. xz).
    pub note: Option<String>,
    /// The installer's configuration (`etc/edgeimage/installer.json`), when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installer_config: Option<String>,
}

const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP: [u8; 2] = [0x1f, 0x8b];
const YAML_LIMIT: u64 = 1 << 20;
/// The most archives read from one initrd (edgeimage writes two or three).
pub const MAX_ARCHIVES: usize = 1024;
/// The most `*.sqsh` layers reported (a node carries tens of extensions at most).
pub const MAX_LAYERS: usize = 1024;

/// A reader that counts what it hands out (the position inside the section).
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.pos += n as u64;
        self.inner.consume(n);
    }
}

/// Walk the archives of an initrd given as a reader over the section's bytes.
pub fn walk<R: Read>(section: R) -> Result<InitrdInfo> {
    let mut r = Counted {
        inner: BufReader::with_capacity(1 << 20, section),
        pos: 0,
    };
    let mut info = InitrdInfo::default();
    loop {
        // Skip the zero padding between archives.
        let head = loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Ok(info);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            if zeros == 0 {
                break buf[..buf.len().min(6)].to_vec();
            }
            r.consume(zeros);
        };
        let offset = r.pos;
        if info.archives.len() >= MAX_ARCHIVES {
            info.note = Some(format!(
                "stopped at offset {offset}: more than {MAX_ARCHIVES} archives, far more than \
                 an initrd holds"
            ));
            return Ok(info);
        }
        let compression = if head.starts_with(&ZSTD) {
            "zstd"
        } else if head.starts_with(&GZIP) {
            "gzip"
        } else if head.starts_with(b"07070") {
            "none"
        } else {
            // Named by its magic number when known, never quoted.
            let kind = if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
                "an xz archive"
            } else if head.starts_with(&[0x02, 0x21, 0x4c, 0x18])
                || head.starts_with(&[0x04, 0x22, 0x4d, 0x18])
            {
                "an lz4 archive"
            } else if head.starts_with(b"BZh") {
                "a bzip2 archive"
            } else if head.starts_with(&[0x5d, 0, 0]) {
                "an lzma archive"
            } else {
                "data that is no archive this reader knows"
            };
            info.note = Some(format!(
                "stopped at offset {offset}: {kind}, which this reader does not decompress"
            ));
            return Ok(info);
        };
        let parsed = match compression {
            "zstd" => {
                let mut d = zstd::stream::read::Decoder::with_buffer(&mut r)?.single_frame();
                read_cpio(&mut d, &mut info).and_then(|n| {
                    io::copy(&mut d, &mut io::sink())?;
                    Ok(n)
                })
            }
            "gzip" => {
                let mut d = flate2::bufread::GzDecoder::new(&mut r);
                read_cpio(&mut d, &mut info).and_then(|n| {
                    io::copy(&mut d, &mut io::sink())?;
                    Ok(n)
                })
            }
            _ => read_cpio(&mut r, &mut info),
        };
        let entries = match parsed {
            Ok(n) => n,
            Err(e) => {
                // Not fatal: report what could be read and say where it stopped.
                info.note = Some(format!(
                    "stopped at the {compression} archive at offset {offset}: {e:#}"
                ));
                return Ok(info);
            }
        };
        info.archives.push(ArchiveInfo {
            offset,
            compression: compression.to_string(),
            entries,
        });
    }
}

/// Parse one newc archive up to its trailer; returns the number of entries.
fn read_cpio<R: Read>(r: &mut R, info: &mut InitrdInfo) -> Result<usize> {
    crate::format::cpio::read(r, &mut |h, body| {
        let name = h.name.as_str();
        let text = |body: &mut dyn Read| -> Result<String> {
            let mut t = Vec::new();
            body.read_to_end(&mut t)?;
            Ok(String::from_utf8_lossy(&t).into_owned())
        };
        if !h.is_file() {
            return Ok(());
        }
        if name == "extensions.yaml" && h.size <= YAML_LIMIT {
            info.extensions_yaml = Some(text(body)?);
        } else if name == crate::install::config::CONFIG_PATH.trim_start_matches('/')
            && h.size <= YAML_LIMIT
        {
            info.installer_config = Some(text(body)?);
        } else if name.ends_with(".sqsh") && !name.contains('/') {
            if info.layers.len() >= MAX_LAYERS {
                bail!(
                    "more than {MAX_LAYERS} extension layers (*.sqsh), far more than a node \
                     carries"
                );
            }
            let mut d = Sha256::new();
            let n = io::copy(body, &mut d)?;
            if n != h.size {
                bail!("truncated {name}");
            }
            info.layers.push(Member {
                name: name.to_string(),
                size: h.size,
                sha256: hex::encode(d.finalize()),
            });
        } else if name.starts_with("usr/lib/firmware/") {
            info.firmware_files += 1;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::cpio;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = cpio::Writer::new(&mut out);
        for (name, data) in entries {
            w.append(cpio::Entry::file_bytes(*name, 0o644, data))
                .unwrap();
        }
        w.finish().unwrap();
        out
    }

    /// An initrd of a huge number of layers (700k long-named `*.sqsh` entries took
    /// gigabytes) or of archives stops at the caps with a note, holding at most the caps.
    #[test]
    fn layer_and_archive_counts_are_capped() {
        let long = "x".repeat(3000);
        let names: Vec<String> = (0..MAX_LAYERS + 5)
            .map(|i| format!("{long}{i}.sqsh"))
            .collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let info = walk(&archive(&entries)[..]).unwrap();
        assert_eq!(info.layers.len(), MAX_LAYERS);
        let note = info.note.unwrap();
        assert!(note.contains("more than 1024 extension layers"), "{note}");
        assert!(!note.contains(&long), "{note}");

        let one = archive(&[("a", b"x")]);
        let many: Vec<u8> = one.repeat(MAX_ARCHIVES + 3);
        let info = walk(&many[..]).unwrap();
        assert_eq!(info.archives.len(), MAX_ARCHIVES);
        assert!(info.note.unwrap().contains("more than 1024 archives"));
    }

    #[test]
    fn walks_padded_concatenated_archives() {
        let base = zstd::encode_all(
            &archive(&[("init", b"#!/bin/sh"), ("rootfs.sqsh", b"x")])[..],
            3,
        )
        .unwrap();
        let mut initrd = base.clone();
        initrd.resize(initrd.len().div_ceil(4) * 4, 0);
        let ext = archive(&[
            ("0.sqsh", b"layer-zero"),
            ("extensions.yaml", b"layers:\n"),
            ("usr/lib/firmware/x.bin", b"fw"),
        ]);
        initrd.extend(zstd::encode_all(&ext[..], 3).unwrap());
        let info = walk(&initrd[..]).unwrap();
        assert_eq!(info.archives.len(), 2);
        assert_eq!(
            info.archives[1].offset,
            initrd.len() as u64 - zstd::encode_all(&ext[..], 3).unwrap().len() as u64
        );
        assert_eq!(info.extensions_yaml.as_deref(), Some("layers:\n"));
        let names: Vec<&str> = info.layers.iter().map(|l| l.name.as_str()).collect();
        // rootfs.sqsh of the base counts as a layer-like member too; callers filter by name.
        assert_eq!(names, ["rootfs.sqsh", "0.sqsh"]);
        assert_eq!(
            info.layers[1].sha256,
            hex::encode(Sha256::digest(b"layer-zero"))
        );
        assert_eq!(info.firmware_files, 1);
        assert!(info.note.is_none());
    }

    #[test]
    fn compressed_non_cpio_is_noted_not_fatal() {
        let data = zstd::encode_all(&b"not a cpio at all, just bytes"[..], 3).unwrap();
        let info = walk(&data[..]).unwrap();
        assert!(info.archives.is_empty());
        assert!(info
            .note
            .unwrap()
            .contains("stopped at the zstd archive at offset 0"));
    }

    #[test]
    fn unknown_compression_is_noted_not_fatal() {
        let mut initrd = vec![0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2];
        initrd.extend([0u8; 8]);
        let info = walk(&initrd[..]).unwrap();
        assert!(info.note.unwrap().contains("an xz archive"));
    }
}
