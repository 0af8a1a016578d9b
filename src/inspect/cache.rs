//! What an image's `IMAGECACHE` partition holds, read with the bounded ext4 reader
//! ([`crate::format::ext4`]) and resolved the way Talos's registry resolves a reference
//! (`resolveCanonicalRef` in `internal/app/machined/pkg/system/services/registry/
//! registry.go`, v1.12.5): the tag file's SHA-256 names the manifest in `digest/`, whose
//! config and layers must be in `blob/`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::format::ext4::{Inode, Kind, Volume};

/// Directory levels below `manifests/` followed at most (registry, path components, then
/// `reference` or `digest`).
const MAX_LEVELS: usize = 16;
/// Tag files read at most.
const MAX_TAGS: usize = 4096;
/// Directory entries visited at most, all listings together.
const MAX_VISITED: usize = 200_000;
/// The largest manifest or index read.
const MAX_MANIFEST: u64 = 4 << 20;
/// Bytes of manifests read at most, all together.
const MAX_MANIFEST_TOTAL: u64 = 64 << 20;

#[derive(Debug, Serialize)]
pub struct CacheReport {
    /// The filesystem label.
    pub label: String,
    pub images: Vec<CachedRef>,
    pub blobs: usize,
    pub blob_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct CachedRef {
    /// `registry/path:tag`.
    pub reference: String,
    /// SHA-256 of the tag file: what the node's registry answers for the tag.
    pub digest: String,
    /// `index` or `manifest`.
    pub kind: String,
    /// Whether the manifest (or one of an index's manifests) is there with its config and
    /// every layer; else what is missing.
    pub missing: Vec<String>,
}

#[derive(Deserialize)]
struct Doc {
    manifests: Option<Vec<Desc>>,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
}

#[derive(Deserialize)]
struct Desc {
    digest: String,
}

struct Walk<'v, 'a> {
    vol: &'v Volume<'a>,
    visited: usize,
    /// Directories listed so far: none is listed twice (a cycle).
    dirs: std::collections::HashSet<u32>,
    /// Bytes of manifests left to read.
    budget: u64,
}

impl Walk<'_, '_> {
    fn list(&mut self, dir: &Inode) -> Result<Vec<crate::format::ext4::Entry>> {
        if !self.dirs.insert(dir.ino) {
            bail!(
                "directory inode {} is reached twice: the tree has a cycle",
                dir.ino
            );
        }
        let l = self.vol.list(dir)?;
        self.visited += l.len();
        if self.visited > MAX_VISITED {
            bail!("the cache has more than {MAX_VISITED} directory entries");
        }
        Ok(l)
    }

    /// Read a manifest or index (at most [`MAX_MANIFEST`], all of them together at most
    /// [`MAX_MANIFEST_TOTAL`]).
    fn manifest(&mut self, ino: u32, what: &str) -> Result<Vec<u8>> {
        let inode = self.vol.inode(ino)?;
        if inode.size > self.budget {
            bail!("{what}: the cache's manifests are more than {MAX_MANIFEST_TOTAL} bytes");
        }
        let b = self
            .vol
            .read(&inode, MAX_MANIFEST)
            .with_context(|| format!("reading {what}"))?;
        self.budget -= b.len() as u64;
        Ok(b)
    }
}

/// Read the cache on a partition of `len` bytes.
pub fn read(vol: &Volume) -> Result<CacheReport> {
    let mut w = Walk {
        vol,
        visited: 0,
        dirs: Default::default(),
        budget: MAX_MANIFEST_TOTAL,
    };
    let blob_dir = vol.find("blob")?;
    let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(d) = &blob_dir {
        for e in w.list(d)? {
            if e.kind == Kind::File {
                let size = vol.inode(e.ino)?.size;
                blobs.insert(e.name(), size);
            }
        }
    }
    let mut images = Vec::new();
    if let Some(m) = vol.find("manifests")? {
        // (directory inode, path below manifests/)
        let mut stack: Vec<(Inode, Vec<String>)> = vec![(m, Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            if path.len() > MAX_LEVELS {
                bail!(
                    "manifests/{}: nested deeper than {MAX_LEVELS} levels",
                    path.join("/")
                );
            }
            let entries = w.list(&dir)?;
            let sub: BTreeMap<String, u32> = entries
                .iter()
                .filter(|e| e.kind == Kind::Dir)
                .map(|e| (e.name(), e.ino))
                .collect();
            if let (Some(&r), false) = (sub.get("reference"), path.is_empty()) {
                let digests = match sub.get("digest") {
                    Some(&d) => w
                        .list(&vol.inode(d)?)?
                        .into_iter()
                        .map(|e| (e.name(), e.ino))
                        .collect(),
                    None => BTreeMap::new(),
                };
                for t in w.list(&vol.inode(r)?)? {
                    if images.len() >= MAX_TAGS {
                        bail!("the cache has more than {MAX_TAGS} tags");
                    }
                    images.push(resolve(&mut w, &path, &t.name(), t.ino, &digests, &blobs)?);
                }
            }
            for (name, ino) in sub.iter().rev() {
                if !path.is_empty() && (name == "reference" || name == "digest") {
                    continue;
                }
                let mut p = path.clone();
                p.push(name.clone());
                stack.push((vol.inode(*ino)?, p));
            }
        }
    }
    images.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(CacheReport {
        label: vol.label().to_string(),
        images,
        blobs: blobs.len(),
        // Sizes come from the filesystem: added without overflow (a hostile one may claim
        // anything; found by the ext4 fuzz target).
        blob_bytes: blobs.values().fold(0u64, |a, &b| a.saturating_add(b)),
    })
}

/// A name from the filesystem as shown: printable ASCII kept, anything else `?` (names are
/// shown, never bytes that could drive a terminal).
fn shown(name: &str) -> String {
    name.chars()
        .take(255)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// A digest from a manifest as a blob name (`sha256-<hex>`), or `None` when it is not one.
fn blob_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| format!("sha256-{hex}"))
}

/// `host_5000_` (how the cache writes a registry port) → `host:5000`.
fn registry_name(dir: &str) -> String {
    if let Some(rest) = dir.strip_suffix('_') {
        if let Some((host, port)) = rest.rsplit_once('_') {
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                return format!("{host}:{port}");
            }
        }
    }
    dir.to_string()
}

fn resolve(
    w: &mut Walk,
    path: &[String],
    tag: &str,
    ino: u32,
    digests: &BTreeMap<String, u32>,
    blobs: &BTreeMap<String, u64>,
) -> Result<CachedRef> {
    let reference = shown(&format!(
        "{}/{}:{tag}",
        registry_name(&path[0]),
        path[1..].join("/")
    ));
    let bytes = w.manifest(ino, &format!("the manifest of {reference}"))?;
    let hex = hex::encode(Sha256::digest(&bytes));
    let mut missing = Vec::new();
    let name = format!("sha256-{hex}");
    if !digests.contains_key(&name) {
        missing.push(format!("digest/{name}"));
    }
    let doc: Option<Doc> = serde_json::from_slice(&bytes).ok();
    let kind = match &doc {
        Some(d) if d.manifests.is_some() => "index",
        Some(_) => "manifest",
        None => {
            missing.push("a readable manifest".into());
            "unreadable"
        }
    };
    let blobs_of = |d: &Doc| -> Vec<String> {
        d.config
            .iter()
            .chain(&d.layers)
            .filter_map(|x| match blob_name(&x.digest) {
                Some(n) if blobs.contains_key(&n) => None,
                Some(n) => Some(format!("blob/{n}")),
                None => Some("a blob named by a malformed digest".into()),
            })
            .collect()
    };
    match doc {
        Some(Doc {
            manifests: Some(list),
            ..
        }) => {
            // One listed manifest must be there with its blobs (the cache keeps only the
            // profile's architecture): report the closest.
            let mut best: Option<Vec<String>> = None;
            for m in list.iter().take(64) {
                let Some(n) = blob_name(&m.digest) else {
                    continue;
                };
                let Some(&i) = digests.get(&n) else { continue };
                let b = w.manifest(i, &format!("a manifest of {reference}"))?;
                let Ok(d) = serde_json::from_slice::<Doc>(&b) else {
                    continue;
                };
                let lacking = blobs_of(&d);
                if best.as_ref().is_none_or(|x| lacking.len() < x.len()) {
                    best = Some(lacking);
                }
                if best.as_ref().is_some_and(|x| x.is_empty()) {
                    break;
                }
            }
            match best {
                Some(l) => missing.extend(l),
                None => missing.push("the manifest of every platform the index lists".into()),
            }
        }
        Some(d) => missing.extend(blobs_of(&d)),
        None => {}
    }
    Ok(CachedRef {
        reference,
        digest: format!("sha256:{hex}"),
        kind: kind.into(),
        missing,
    })
}

/// An image cache filesystem as `build` writes it, for tests and fuzz seeds: the fixture
/// images `(reference, behind a two-platform index)` for `arch` (archives written in `dir`),
/// laid out and written as ext4; returns the cache and the filesystem's bytes.
pub fn sample(
    images: &[(&str, bool)],
    arch: crate::talos::Arch,
    dir: &std::path::Path,
) -> Result<(crate::imagecache::Cache, Vec<u8>)> {
    use crate::compose::ext4;
    use crate::imagecache::{assemble, fixtures, CachedImage};
    let mut cached = Vec::with_capacity(images.len());
    for (i, &(r, multi)) in images.iter().enumerate() {
        let f = fixtures::image(r, arch, "sample", multi)?;
        let p = dir.join(format!("{arch}-{i}.tar"));
        std::fs::write(&p, f.tar()?)?;
        cached.push(CachedImage {
            reference: crate::format::reference::Reference::parse(r)?,
            image: crate::assets::oci::pinned::open_pinned(&p, &f.digest, arch)?,
        });
    }
    let cache = assemble(&cached)?;
    let bytes = ext4::build(&ext4::Ext4Input {
        tree: &cache.tree,
        label: "IMAGECACHE",
        uuid: [7; 16],
        epoch: 1_700_000_000,
        size: ext4::Size::Fit { free: 0 },
        spare_inodes: 0,
    })?
    .layout
    .to_vec()?;
    Ok((cache, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::talos::Arch;

    const PAUSE: &[(&str, bool)] = &[("registry.k8s.io/pause:3.10", false)];

    #[test]
    fn reads_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, bytes) = sample(
            &[
                ("registry.k8s.io/pause:3.10", false),
                ("host:5000/team/app:v1", true),
            ],
            Arch::Amd64,
            dir.path(),
        )
        .unwrap();
        let vol = Volume::from_bytes(&bytes).unwrap();
        let r = read(&vol).unwrap();
        assert_eq!(r.label, "IMAGECACHE");
        let refs: Vec<(&str, &str, bool)> = r
            .images
            .iter()
            .map(|i| (i.reference.as_str(), i.kind.as_str(), i.missing.is_empty()))
            .collect();
        assert_eq!(
            refs,
            [
                ("host:5000/team/app:v1", "index", true),
                ("registry.k8s.io/pause:3.10", "manifest", true),
            ]
        );
        assert_eq!(r.images[1].digest, cache.entries[0].digest);
        assert_eq!(r.blobs, cache.blobs());
        assert_eq!(r.blob_bytes, cache.blob_bytes());
    }

    #[test]
    fn a_directory_cycle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut bytes) = sample(PAUSE, Arch::Amd64, dir.path()).unwrap();
        let manifests = {
            let v = Volume::from_bytes(&bytes).unwrap();
            v.find("manifests").unwrap().unwrap().ino
        };
        // The entry `registry.k8s.io` in manifests/ now names manifests/ itself.
        let name = b"registry.k8s.io";
        let at = bytes
            .windows(name.len())
            .enumerate()
            .position(|(i, w)| w == name && i >= 8 && bytes[i - 2] == 15 && bytes[i - 1] == 2)
            .unwrap();
        bytes[at - 8..at - 4].copy_from_slice(&manifests.to_le_bytes());
        let v = Volume::from_bytes(&bytes).unwrap();
        let e = format!("{:#}", read(&v).unwrap_err());
        assert!(e.contains("reached twice: the tree has a cycle"), "{e}");
    }

    #[test]
    fn names_and_digests_are_shown_safely() {
        assert_eq!(shown("reg\x1b[2J/app:v1"), "reg?[2J/app:v1");
        assert_eq!(blob_name("sha256:zz"), None);
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(blob_name(&d), Some(format!("sha256-{}", "a".repeat(64))));
        assert_eq!(registry_name("host_5000_"), "host:5000");
        assert_eq!(registry_name("docker.io"), "docker.io");
    }

    #[test]
    fn blob_sizes_that_overflow_are_added_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut bytes) = sample(PAUSE, Arch::Amd64, dir.path()).unwrap();
        let blobs: Vec<u32> = {
            let v = Volume::from_bytes(&bytes).unwrap();
            let d = v.find("blob").unwrap().unwrap();
            v.list(&d).unwrap().iter().map(|e| e.ino).collect()
        };
        assert_eq!(blobs.len(), 2);
        // Both blobs claim nearly 2^64 bytes (i_size_high), so their sum overflows.
        let table = u32::from_le_bytes(bytes[4096 + 8..4096 + 12].try_into().unwrap()) as usize;
        for ino in blobs {
            let at = table * 4096 + (ino as usize - 1) * 256;
            bytes[at + 0x6C..at + 0x70].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        let v = Volume::from_bytes(&bytes).unwrap();
        let r = read(&v).unwrap();
        assert_eq!(r.blob_bytes, u64::MAX);
    }
}
