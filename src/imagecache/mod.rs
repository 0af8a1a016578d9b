//! The node's local image cache: the container images a site without a registry needs, laid
//! out as Talos's registry reads them, and checked for completeness against the machine
//! configuration.
//!
//! Layout (what `talosctl images cache-create --layout=flat` writes, `pkg/imager/cache/
//! cache.go` v1.12.5, and what the node's registry serves, `internal/app/machined/pkg/system/
//! services/registry/registry.go`):
//!
//! | path | content |
//! |------|---------|
//! | `blob/sha256-<hex>` | every config and layer blob, by digest |
//! | `manifests/<registry>/<path>/reference/<tag>` | the manifest or index a tag names |
//! | `manifests/<registry>/<path>/digest/sha256-<hex>` | that manifest or index by its digest, and an index's manifest for the architecture |
//!
//! A request for a tag is answered by hashing `reference/<tag>` and serving
//! `digest/sha256-<that hash>` (`resolveCanonicalRef`), so both files hold the same bytes; a
//! manifest must name its `mediaType` (`getManifestData`); blobs are served from `blob/` for
//! any name. Registry ports are written `host_port_`.

pub mod fixtures;
pub mod required;

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::assets::oci::pinned::PinnedImage;
use crate::format::reference::{digest_file, Reference};
use crate::layout::Layout;
use crate::tree::{Node, Tree};

pub use required::{check_config, required, Required};

use crate::config::machine::MachineConfig;
use crate::profile::ImageCacheSpec;
use crate::talos::{Arch, TalosVersion};

/// The checked cache of a build.
pub struct CachePlan {
    pub cache: Cache,
    /// What the node needs (all held by the cache).
    pub required: Vec<Required>,
    /// Bytes kept free in the cache filesystem.
    pub free: u64,
}

/// Check the configuration enables the cache, open and check every image (both cores hash
/// blobs), lay them out and check nothing the node needs is missing.
pub fn load(
    spec: &ImageCacheSpec,
    config: Option<(&MachineConfig, &str)>,
    talos: &TalosVersion,
    arch: Arch,
    profile: &str,
) -> Result<CachePlan> {
    let Some((config, origin)) = config else {
        bail!(
            "profile {profile}: [image_cache]: the images a node needs are derived from its              machine configuration, and the profile has none: add [config]"
        );
    };
    let settings = &config.info().images;
    check_config(settings, talos, origin)?;
    let need = required(settings, config.machine_type(), talos, &spec.require)?;
    let images = open_all(spec, arch, profile)?;
    let cache = assemble(&images)?;
    check_complete(&need, &cache).map_err(|e| anyhow::anyhow!("profile {profile}: {e}"))?;
    Ok(CachePlan {
        cache,
        required: need,
        free: spec.free,
    })
}

/// Open every image, two at a time (reading and hashing its blobs is most of the work).
fn open_all(spec: &ImageCacheSpec, arch: Arch, profile: &str) -> Result<Vec<CachedImage>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<PinnedImage>>>> =
        Mutex::new((0..spec.images.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(im) = spec.images.get(i) else { break };
                let r = crate::assets::oci::pinned::open_pinned(&im.archive, &im.digest, arch)
                    .map_err(|e| {
                        e.context(format!(
                            "profile {profile}: field `image_cache.images[{i}]` ({})",
                            im.reference
                        ))
                    });
                if let Ok(mut g) = results.lock() {
                    g[i] = Some(r);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("an image cache worker failed"))?;
    let mut out = Vec::with_capacity(results.len());
    for (im, r) in spec.images.iter().zip(results) {
        let image = r.ok_or_else(|| anyhow::anyhow!("an image cache worker stopped"))??;
        out.push(CachedImage {
            reference: im.reference.clone(),
            image,
        });
    }
    Ok(out)
}

/// One image in the cache.
#[derive(Clone, Debug)]
pub struct CachedImage {
    /// The reference the node asks for (with its tag, without digest).
    pub reference: Reference,
    pub image: PinnedImage,
}

/// What the cache holds, as the manifest records it (shared blobs are counted for each
/// image in `size`).
pub use crate::artifact::manifest::CachedImageDigest as CacheEntry;

/// The cache as files.
#[derive(Clone, Default)]
pub struct Cache {
    pub tree: Tree,
    pub entries: Vec<CacheEntry>,
    /// Blob digest → size, and reference → digest of its manifest or index.
    sizes: BTreeMap<String, u64>,
    refs: BTreeMap<String, String>,
}

/// Lay the images out; a reference given twice must name the same image.
pub fn assemble(images: &[CachedImage]) -> Result<Cache> {
    let mut c = Cache::default();
    for im in images {
        c.add(im)?;
    }
    Ok(c)
}

impl Cache {
    /// Distinct blobs.
    pub fn blobs(&self) -> usize {
        self.sizes.len()
    }

    /// Bytes of the distinct blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.sizes.values().sum()
    }

    /// Add one image (its blobs once, however many images share them).
    pub fn add(&mut self, im: &CachedImage) -> Result<()> {
        let file = |bytes: &[u8]| Node::file(Layout::from_bytes(bytes.to_vec()), 0o644);
        let key = im.reference.to_string();
        let top = &im.image.top;
        if let Some(other) = self.refs.get(&key) {
            if *other != top.digest {
                bail!(
                    "image cache: {key} is given twice, as {other} and as {}: one reference \
                     names one image",
                    top.digest
                );
            }
            return Ok(());
        }
        self.refs.insert(key.clone(), top.digest.clone());
        let dir = im.reference.cache_dir();
        if let Some(tag) = &im.reference.tag {
            self.tree
                .insert(format!("{dir}/reference/{tag}"), file(&top.bytes));
        }
        self.tree.insert(
            format!("{dir}/digest/{}", digest_file(&top.digest)),
            file(&top.bytes),
        );
        if let Some(m) = &im.image.platform_manifest {
            self.tree.insert(
                format!("{dir}/digest/{}", digest_file(&m.digest)),
                file(&m.bytes),
            );
        }
        let c = &im.image.config;
        if self
            .sizes
            .insert(c.digest.clone(), c.bytes.len() as u64)
            .is_none()
        {
            self.tree
                .insert(format!("blob/{}", digest_file(&c.digest)), file(&c.bytes));
        }
        for l in &im.image.layers {
            if self
                .sizes
                .insert(l.digest.clone(), l.content.len())
                .is_none()
            {
                self.tree.insert(
                    format!("blob/{}", digest_file(&l.digest)),
                    Node::file(l.content.clone(), 0o644),
                );
            }
        }
        self.entries.push(CacheEntry {
            reference: key,
            digest: top.digest.clone(),
            platform: im.image.platform.clone(),
            size: im.image.size(),
        });
        Ok(())
    }
}

/// Refuse a cache that lacks any required image, listing every missing one and where it is
/// required from.
pub fn check_complete(need: &[Required], cache: &Cache) -> Result<()> {
    let missing: Vec<String> = need
        .iter()
        .filter(|r| !holds(cache, &r.reference))
        .map(|r| format!("{} (from {})", r.reference, r.from))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the image cache lacks {} image{} the node will pull: {}; add each to \
             [[image_cache.images]] (README: \"Image cache\" says how to save them on a \
             connected machine)",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        );
    }
    Ok(())
}

/// Whether the cache answers a reference: by tag, and by digest when it has one.
fn holds(cache: &Cache, r: &Reference) -> bool {
    cache.entries.iter().any(|e| {
        let Ok(have) = Reference::parse(&e.reference) else {
            return false;
        };
        have.registry == r.registry
            && have.path == r.path
            && (r.tag.is_none() || have.tag == r.tag)
            && r.digest.as_ref().is_none_or(|d| *d == e.digest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::oci::pinned::{JsonBlob, LayerBlob};

    fn image(top: &str, layer: &str) -> PinnedImage {
        let j = |d: &str, b: &str| JsonBlob {
            digest: format!("sha256:{}", d.repeat(64)),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: b.as_bytes().to_vec(),
        };
        PinnedImage {
            archive: "x.tar".into(),
            top: j(top, "{}"),
            platform_manifest: None,
            config: j("c", "{\"os\":\"linux\"}"),
            layers: vec![LayerBlob {
                digest: format!("sha256:{}", layer.repeat(64)),
                media_type: String::new(),
                content: Layout::from_bytes(b"layer".to_vec()),
            }],
            platform: "linux/amd64".into(),
        }
    }

    #[test]
    fn layout_and_completeness() {
        let a = CachedImage {
            reference: Reference::parse("registry.k8s.io/pause:3.10").unwrap(),
            image: image("a", "1"),
        };
        let b = CachedImage {
            reference: Reference::parse("host:5000/app:v1").unwrap(),
            image: image("b", "1"),
        };
        let c = assemble(&[a.clone(), b]).unwrap();
        let paths: Vec<&String> = c.tree.entries.keys().collect();
        assert!(paths.contains(&&format!("blob/sha256-{}", "1".repeat(64))));
        assert!(paths.contains(&&"manifests/registry.k8s.io/pause/reference/3.10".to_string()));
        assert!(paths.contains(&&format!(
            "manifests/host_5000_/app/digest/sha256-{}",
            "b".repeat(64)
        )));
        assert_eq!(c.blobs(), 2, "the shared layer is stored once");
        let need = |s: &str| Required {
            reference: Reference::parse(s).unwrap(),
            from: "test".into(),
        };
        check_complete(&[need("registry.k8s.io/pause:3.10")], &c).unwrap();
        let e = check_complete(
            &[
                need("registry.k8s.io/pause:3.10"),
                need("registry.k8s.io/etcd:v3.6.8"),
                need("nginx"),
            ],
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lacks 2 images"), "{e}");
        assert!(e.contains("registry.k8s.io/etcd:v3.6.8 (from test)"), "{e}");
        assert!(e.contains("docker.io/library/nginx:latest"), "{e}");
        let twice = CachedImage {
            reference: a.reference.clone(),
            image: image("d", "2"),
        };
        let e = assemble(&[a, twice]).err().unwrap().to_string();
        assert!(e.contains("given twice"), "{e}");
    }
}
