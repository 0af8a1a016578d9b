//! Image archives generated in code for tests, ordinary and hostile (nothing binary is
//! committed): OCI layout and `docker save` archives of given layer blobs, tar headers with
//! PAX paths, and compressed streams of zeros made without compressing anything (zstd RLE
//! blocks, repeated gzip members), so a bomb that expands to GiBs takes a few KiB and no time
//! to make.

use std::io::{self, Write};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::talos::Arch;

/// `"sha256:<hex>"` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A zstd frame built by hand from raw blocks (bytes as given) and RLE blocks (one byte
/// repeated): what it decompresses to is known without compressing anything.
pub struct ZstdFrame {
    out: Vec<u8>,
}

/// zstd's largest block, bytes.
const ZSTD_BLOCK: u64 = 128 << 10;

impl Default for ZstdFrame {
    fn default() -> Self {
        Self::new()
    }
}

impl ZstdFrame {
    pub fn new() -> ZstdFrame {
        // Magic; frame header descriptor 0 (no content size, no checksum, no dictionary);
        // window descriptor 0x38: 2^17 bytes, one block.
        ZstdFrame {
            out: vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38],
        }
    }

    fn block(&mut self, kind: u32, size: u32, last: bool) {
        let h = u32::from(last) | (kind << 1) | (size << 3);
        self.out.extend_from_slice(&h.to_le_bytes()[..3]);
    }

    /// `data` as it is.
    pub fn raw(&mut self, data: &[u8]) -> &mut Self {
        for chunk in data.chunks(ZSTD_BLOCK as usize) {
            self.block(0, chunk.len() as u32, false);
            self.out.extend_from_slice(chunk);
        }
        self
    }

    /// `n` copies of `byte`, 4 bytes per 128 KiB.
    pub fn repeat(&mut self, byte: u8, mut n: u64) -> &mut Self {
        while n > 0 {
            let k = n.min(ZSTD_BLOCK);
            self.block(1, k as u32, false);
            self.out.push(byte);
            n -= k;
        }
        self
    }

    /// The frame, ended by an empty last block.
    pub fn finish(&mut self) -> Vec<u8> {
        self.block(0, 0, true);
        std::mem::take(&mut self.out)
    }
}

/// A gzip stream (concatenated members, as `MultiGzDecoder` reads them) that decompresses to
/// `prefix` followed by `zeros` zero bytes: about 1 KiB per MiB of zeros.
pub fn gzip_with_zeros(prefix: &[u8], zeros: u64) -> io::Result<Vec<u8>> {
    let member = |data: &[u8]| -> io::Result<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data)?;
        e.finish()
    };
    let mut out = member(prefix)?;
    const MIB: u64 = 1 << 20;
    let one = member(&vec![0u8; MIB as usize])?;
    for _ in 0..zeros / MIB {
        out.extend_from_slice(&one);
    }
    if zeros % MIB != 0 {
        out.extend(member(&vec![0u8; (zeros % MIB) as usize])?);
    }
    Ok(out)
}

/// A PAX extended header record `"<len> key=value\n"`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn header_block(name: &[u8], kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    let slot = &mut h.as_old_mut().name;
    let n = name.len().min(slot.len());
    slot[..n].copy_from_slice(&name[..n]);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Zero bytes that pad `len` bytes of entry data to a whole 512-byte block.
pub fn padding(len: u64) -> usize {
    ((512 - len % 512) % 512) as usize
}

/// The header blocks of a tar entry named `path` (a PAX extended header carrying the path
/// when it does not fit the 100 bytes of the header, or is not ASCII), of type `kind`, whose
/// header says it holds `size` bytes; its data and padding are the caller's.
pub fn entry_header(path: &[u8], kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if path.len() > 100 || !path.is_ascii() {
        let rec = pax_record("path", path);
        out.extend(header_block(
            b"PaxHeaders/entry",
            tar::EntryType::XHeader,
            rec.len() as u64,
        ));
        out.extend_from_slice(&rec);
        out.resize(out.len() + padding(rec.len() as u64), 0);
        out.extend(header_block(b"long", kind, size));
    } else {
        out.extend(header_block(path, kind, size));
    }
    out
}

/// A whole tar entry: headers, `data`, padding.
pub fn entry(path: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut out = entry_header(path, kind, data.len() as u64);
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len() as u64), 0);
    out
}

/// The end-of-archive marker: two zero blocks.
pub fn tar_end() -> Vec<u8> {
    vec![0u8; 1024]
}

/// A layer as stored in an archive, and the diff_id its config lists for it.
#[derive(Clone, Debug)]
pub struct Layer {
    pub stored: Vec<u8>,
    pub diff_id: String,
}

impl Layer {
    /// A layer whose config's diff_id is the digest of `tar`, stored as `stored` (`tar`
    /// itself, or a compressed copy of it).
    pub fn new(tar: &[u8], stored: Vec<u8>) -> Layer {
        Layer {
            stored,
            diff_id: sha256(tar),
        }
    }
}

fn config(arch: Arch, layers: &[Layer]) -> io::Result<Vec<u8>> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    Ok(serde_json::to_vec(&json!({
        "architecture": arch.as_str(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?)
}

/// The members of an OCI image layout holding one image of `layers` for `arch`, every
/// descriptor's digest and size matching its blob.
pub fn oci_members(arch: Arch, layers: &[Layer]) -> io::Result<Vec<(String, Vec<u8>)>> {
    let config = config(arch, layers)?;
    let descriptors: Vec<_> = layers
        .iter()
        .map(|l| {
            json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(&l.stored),
                "size": l.stored.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": descriptors,
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": arch.as_str(), "os": "linux"},
        }],
    }))?;
    let blob = |data: &[u8]| format!("blobs/sha256/{}", &sha256(data)["sha256:".len()..]);
    let mut m = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
        (blob(&config), config),
        (blob(&manifest), manifest),
    ];
    for l in layers {
        m.push((blob(&l.stored), l.stored.clone()));
    }
    Ok(m)
}

/// The members of a classic `docker save` archive of one image of `layers` for `arch`: the
/// config as `<hex>.json`, layer *i* as `<i as 64 hex digits>/layer.tar` (no digest to check
/// it against but its diff_id).
pub fn docker_save_members(arch: Arch, layers: &[Layer]) -> io::Result<Vec<(String, Vec<u8>)>> {
    let config = config(arch, layers)?;
    let config_name = format!("{}.json", &sha256(&config)["sha256:".len()..]);
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("{:064x}/layer.tar", i + 1))
        .collect();
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["example.invalid/imager:fixture"],
        "Layers": names,
    }]))?;
    let mut m = vec![
        ("manifest.json".to_string(), manifest),
        (config_name, config),
    ];
    for (name, l) in names.into_iter().zip(layers) {
        m.push((name, l.stored.clone()));
    }
    Ok(m)
}

/// An uncompressed tar of `(name, bytes)` members, as `docker save` and `skopeo` write them.
pub fn outer_tar(members: &[(String, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, &data[..])?;
    }
    b.into_inner()
}

/// Write `members` as files below `dir` (an unpacked layout).
pub fn write_members(members: &[(String, Vec<u8>)], dir: &std::path::Path) -> io::Result<()> {
    for (name, data) in members {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn hand_made_streams_decompress_to_what_they_say() {
        let z = ZstdFrame::new()
            .raw(b"head")
            .repeat(0, 300_000)
            .raw(b"tail")
            .finish();
        assert!(z.len() < 100, "{}", z.len());
        let got = zstd::decode_all(&z[..]).unwrap();
        assert_eq!(got.len(), 300_008);
        assert!(got.starts_with(b"head") && got.ends_with(b"tail"));
        assert!(got[4..300_004].iter().all(|&b| b == 0));

        let g = gzip_with_zeros(b"x", (3 << 20) + 5).unwrap();
        let mut got = Vec::new();
        flate2::read::MultiGzDecoder::new(&g[..])
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got.len(), (3 << 20) + 6);
        assert_eq!(got[0], b'x');

        let long = vec![b'a'; 300];
        let e = entry(&long, tar::EntryType::Regular, b"data");
        let mut ar = tar::Archive::new(&e[..]);
        let mut entries = ar.entries().unwrap();
        let first = entries.next().unwrap().unwrap();
        assert_eq!(&first.path_bytes()[..], &long[..]);
    }
}
