//! Container images made in code for tests, the demo and the benchmark: small OCI image
//! layouts with a registry's manifests (each naming its `mediaType`), one image per
//! reference, optionally behind a two-platform index.

use std::io::{self, Write};

use serde_json::json;

use crate::assets::oci::fixtures::{outer_tar, sha256};
use crate::talos::Arch;

/// One generated image: what a profile's `[[image_cache.images]]` entry names.
pub struct FixtureImage {
    pub reference: String,
    /// The pin: digest of the manifest, or of the index for a multi-platform image.
    pub digest: String,
    /// Members of its OCI layout.
    pub members: Members,
}

impl FixtureImage {
    /// The layout as an uncompressed tar (`skopeo copy … oci-archive:`).
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        outer_tar(&self.members)
    }
}

/// A gzip-compressed layer holding `files`.
pub fn layer(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, name, *data)?;
    }
    let tar = b.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    gz.finish()
}

/// Members of a layout: (path, bytes).
type Members = Vec<(String, Vec<u8>)>;

/// The manifest and blobs of one platform's image of `layers`.
fn platform_image(arch: Arch, layers: &[Vec<u8>], seed: &str) -> io::Result<(Vec<u8>, Members)> {
    let config = serde_json::to_vec(&json!({
        "architecture": arch.as_str(),
        "os": "linux",
        "config": {"Env": [format!("EDGEIMAGE_FIXTURE={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(l),
            "size": l.len(),
        })).collect::<Vec<_>>(),
    }))?;
    let mut blobs = vec![(blob_path(&config), config)];
    for l in layers {
        blobs.push((blob_path(l), l.clone()));
    }
    Ok((manifest, blobs))
}

fn blob_path(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha256(data)["sha256:".len()..])
}

/// An image for `arch` whose one layer holds a file made from `seed`; with `multi`, behind an
/// index that also lists an image for the other architecture (its blobs included).
pub fn image(reference: &str, arch: Arch, seed: &str, multi: bool) -> io::Result<FixtureImage> {
    let content = format!("{reference} {seed}\n");
    let mk = |a: Arch| -> io::Result<(Vec<u8>, Members)> {
        let l = layer(&[("etc/fixture", format!("{content}{a}").as_bytes())])?;
        platform_image(a, &[l], seed)
    };
    let (manifest, mut blobs) = mk(arch)?;
    let manifest_desc = |m: &[u8], a: Arch| {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(m),
            "size": m.len(),
            "platform": {"architecture": a.as_str(), "os": "linux"},
        })
    };
    let (pin, top) = if multi {
        let other = match arch {
            Arch::Amd64 => Arch::Arm64,
            Arch::Arm64 => Arch::Amd64,
        };
        let (m2, b2) = mk(other)?;
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc(&manifest, arch), manifest_desc(&m2, other)],
        }))?;
        blobs.extend(b2);
        blobs.push((blob_path(&manifest), manifest));
        blobs.push((blob_path(&m2), m2));
        (sha256(&index), index)
    } else {
        (sha256(&manifest), manifest)
    };
    let top_desc = json!({
        "mediaType": if multi {
            "application/vnd.oci.image.index.v1+json"
        } else {
            "application/vnd.oci.image.manifest.v1+json"
        },
        "digest": pin,
        "size": top.len(),
        "annotations": {"org.opencontainers.image.ref.name": reference},
    });
    let index_json = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [top_desc],
    }))?;
    let mut members = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index_json),
        (blob_path(&top), top),
    ];
    members.extend(blobs);
    members.sort();
    members.dedup_by(|a, b| a.0 == b.0);
    Ok(FixtureImage {
        reference: reference.to_string(),
        digest: pin,
        members,
    })
}

/// The images a Talos v1.12.5 control plane node with default image settings pulls
/// ([`crate::imagecache::required`]).
pub const CONTROL_PLANE_1_12_5: [&str; 9] = [
    "ghcr.io/siderolabs/kubelet:v1.35.2",
    "registry.k8s.io/etcd:v3.6.8",
    "registry.k8s.io/kube-apiserver:v1.35.2",
    "registry.k8s.io/kube-controller-manager:v1.35.2",
    "registry.k8s.io/kube-scheduler:v1.35.2",
    "registry.k8s.io/kube-proxy:v1.35.2",
    "registry.k8s.io/coredns/coredns:v1.13.2",
    "ghcr.io/siderolabs/flannel:v0.27.4",
    "registry.k8s.io/pause:3.10",
];

/// [`CONTROL_PLANE_1_12_5`] as fixtures for `arch` (the kubelet behind a two-platform index,
/// as registries serve it).
pub fn talos_1_12_5_control_plane(arch: Arch) -> io::Result<Vec<FixtureImage>> {
    CONTROL_PLANE_1_12_5
        .iter()
        .enumerate()
        .map(|(i, r)| image(r, arch, &format!("fixture-{i}"), i == 0))
        .collect()
}

/// A machine configuration patch that enables the local image cache and declares the
/// `IMAGECACHE` volume (Talos v1.12: `machine.features.imageCache.localEnabled`).
pub const CONFIG_PATCH: &str = "machine:
  features:
    imageCache:
      localEnabled: true
---
apiVersion: v1alpha1
kind: VolumeConfig
name: IMAGECACHE
provisioning:
  diskSelector:
    match: system_disk
  grow: false
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::oci::pinned::open_pinned;

    #[test]
    fn fixtures_open_as_pinned_images() {
        let dir = tempfile::tempdir().unwrap();
        for multi in [false, true] {
            let im = image("registry.k8s.io/pause:3.10", Arch::Amd64, "x", multi).unwrap();
            let p = dir.path().join(format!("{multi}.tar"));
            std::fs::write(&p, im.tar().unwrap()).unwrap();
            let got = open_pinned(&p, &im.digest, Arch::Amd64).unwrap();
            assert_eq!(got.top.digest, im.digest);
            assert_eq!(got.platform_manifest.is_some(), multi);
            assert_eq!(got.platform, "linux/amd64");
            assert_eq!(got.layers.len(), 1);
            match open_pinned(&p, &im.digest, Arch::Arm64) {
                Ok(other) => {
                    assert!(multi);
                    assert_eq!(other.platform, "linux/arm64");
                }
                Err(e) => {
                    assert!(!multi);
                    let e = format!("{e:#}");
                    assert!(e.contains("another architecture"), "{e}");
                }
            }
        }
    }
}
