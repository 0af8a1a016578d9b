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
}

impl Walk<'_, '_> {
    fn list(&mut self, dir: &Inode) -> Result<Vec<crate::format::ext4::Entry>> {
        let l = self.vol.list(dir)?;
        self.visited += l.len();
        if self.visited > MAX_VISITED {
            bail!("the cache has more than {MAX_VISITED} directory entries");
        }
        Ok(l)
    }
}

/// Read the cache on a partition of `len` bytes.
pub fn read(vol: &Volume) -> Result<CacheReport> {
    let mut w = Walk { vol, visited: 0 };
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
                    images.push(resolve(vol, &path, &t.name(), t.ino, &digests, &blobs)?);
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
        blob_bytes: blobs.values().sum(),
    })
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
    vol: &Volume,
    path: &[String],
    tag: &str,
    ino: u32,
    digests: &BTreeMap<String, u32>,
    blobs: &BTreeMap<String, u64>,
) -> Result<CachedRef> {
    let reference = format!("{}/{}:{tag}", registry_name(&path[0]), path[1..].join("/"));
    let bytes = vol
        .read(&vol.inode(ino)?, MAX_MANIFEST)
        .with_context(|| format!("reading the manifest of {reference}"))?;
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
            .map(|x| x.digest.replacen(':', "-", 1))
            .filter(|n| !blobs.contains_key(n))
            .map(|n| format!("blob/{}", n.chars().take(80).collect::<String>()))
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
                let n = m.digest.replacen(':', "-", 1);
                let Some(&i) = digests.get(&n) else { continue };
                let b = vol.read(&vol.inode(i)?, MAX_MANIFEST)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::oci::pinned::open_pinned;
    use crate::compose::ext4::{build, Ext4Input, Size};
    use crate::imagecache::{assemble, fixtures, CachedImage};
    use crate::talos::Arch;

    #[test]
    fn reads_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = Vec::new();
        for (i, r) in ["registry.k8s.io/pause:3.10", "host:5000/team/app:v1"]
            .iter()
            .enumerate()
        {
            let f = fixtures::image(r, Arch::Amd64, "s", i == 1).unwrap();
            let p = dir.path().join(format!("{i}.tar"));
            std::fs::write(&p, f.tar().unwrap()).unwrap();
            images.push(CachedImage {
                reference: crate::format::reference::Reference::parse(r).unwrap(),
                image: open_pinned(&p, &f.digest, Arch::Amd64).unwrap(),
            });
        }
        let cache = assemble(&images).unwrap();
        let fs = build(&Ext4Input {
            tree: &cache.tree,
            label: "IMAGECACHE",
            uuid: [1; 16],
            epoch: 0,
            size: Size::Fit { free: 0 },
            spare_inodes: 0,
        })
        .unwrap();
        let bytes = fs.layout.to_vec().unwrap();
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
        assert_eq!(r.images[1].digest, images[0].image.top.digest);
        assert_eq!(r.blobs, cache.blobs);
        assert_eq!(r.blob_bytes, cache.blob_bytes);
    }
}
