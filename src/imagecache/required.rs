//! Which container images a node pulls, derived from its machine configuration and the
//! defaults of its Talos version, and whether the configuration lets it use its local cache.
//!
//! Talos lists a node's images in `List` (`pkg/images/list.go`, v1.12.5) from the
//! configuration's accessors, each of which falls back to a default when its field is empty
//! (`(*APIServerConfig).Image()` and its siblings in
//! `pkg/machinery/config/types/v1alpha1/v1alpha1_provider.go`: `<repository>:v<Kubernetes
//! version>`; etcd and CoreDNS: `<repository>:<version>`). When each is pulled:
//! - kubelet: on every node, by machined itself (`services/kubelet.go`, `PreFunc`);
//! - pause (`DefaultSandboxImage`, containerd's own default; Talos sets no `sandbox_image`):
//!   on every node, by containerd for the first pod;
//! - etcd, kube-apiserver, kube-controller-manager, kube-scheduler: on control plane nodes
//!   (`machine.type` `controlplane` or `init`); the last two unless
//!   `machine.controlPlane.<component>.disabled`;
//! - kube-proxy (unless `cluster.proxy.disabled`), CoreDNS (unless `cluster.coreDNS.disabled`)
//!   and flannel (when the CNI is `flannel`, the default): by Kubernetes, on any node,
//!   from the manifests a control plane node renders from its configuration;
//! - the installer: on upgrade, the image `talosctl upgrade --image` names; an edgeimage node
//!   is installed by writing its disk, so only `machine.install.image`, when set, is required.
//!
//! The default versions are per Talos release (`pkg/machinery/constants/constants.go`:
//! `DefaultKubernetesVersion`, `DefaultEtcdVersion`, `DefaultCoreDNSVersion`,
//! `FlannelVersion`, `EtcdImage`; `pkg/images/list.go`: `DefaultSandboxImage`), read from
//! every release tag from v1.9.0 (the first with an image cache) to v1.13.9.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::config::machine::{ImageSettings, MachineType};
use crate::format::reference::Reference;
use crate::talos::TalosVersion;

/// The defaults of one Talos release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// `DefaultKubernetesVersion` (without `v`).
    pub kubernetes: &'static str,
    /// `EtcdImage:DefaultEtcdVersion`.
    pub etcd: &'static str,
    /// `DefaultCoreDNSVersion`.
    pub coredns: &'static str,
    /// `FlannelVersion`.
    pub flannel: &'static str,
    /// `DefaultSandboxImage`.
    pub pause: &'static str,
}

const GCR_ETCD: &str = "gcr.io/etcd-development/etcd";
const K8S_ETCD: &str = "registry.k8s.io/etcd";

/// (minor, first patch, last patch, Kubernetes, etcd repository, etcd, CoreDNS, flannel,
/// pause) for runs of releases with the same defaults.
type Row = (
    u32,
    u32,
    u32,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const P310: &str = "registry.k8s.io/pause:3.10";
const P3101: &str = "registry.k8s.io/pause:3.10.1";

const TABLE: &[Row] = &[
    (
        9, 0, 2, "1.32.0", GCR_ETCD, "v3.5.17", "v1.12.0", "v0.26.1", P310,
    ),
    (
        9, 3, 3, "1.32.1", GCR_ETCD, "v3.5.18", "v1.12.0", "v0.26.1", P310,
    ),
    (
        9, 4, 4, "1.32.2", GCR_ETCD, "v3.5.18", "v1.12.0", "v0.26.4", P310,
    ),
    (
        9, 5, 5, "1.32.3", GCR_ETCD, "v3.5.19", "v1.12.0", "v0.26.5", P310,
    ),
    (
        9, 6, 6, "1.32.4", GCR_ETCD, "v3.5.21", "v1.12.0", "v0.26.5", P310,
    ),
    (
        10, 0, 2, "1.33.0", GCR_ETCD, "v3.5.21", "v1.12.1", "v0.26.7", P310,
    ),
    (
        10, 3, 4, "1.33.1", GCR_ETCD, "v3.5.21", "v1.12.1", "v0.26.7", P310,
    ),
    (
        10, 5, 5, "1.33.2", GCR_ETCD, "v3.5.21", "v1.12.1", "v0.26.7", P310,
    ),
    (
        10, 6, 6, "1.33.3", GCR_ETCD, "v3.5.21", "v1.12.1", "v0.26.7", P310,
    ),
    (
        10, 7, 7, "1.33.4", GCR_ETCD, "v3.5.21", "v1.12.1", "v0.26.7", P310,
    ),
    (
        10, 8, 8, "1.33.6", GCR_ETCD, "v3.5.21", "v1.12.1", "v0.26.7", P310,
    ),
    (
        10, 9, 9, "1.33.6", GCR_ETCD, "v3.5.26", "v1.12.1", "v0.26.7", P310,
    ),
    (
        11, 0, 0, "1.34.0", GCR_ETCD, "v3.6.4", "v1.12.2", "v0.27.2", P310,
    ),
    (
        11, 1, 1, "1.34.0", GCR_ETCD, "v3.6.4", "v1.12.3", "v0.27.2", P310,
    ),
    (
        11, 2, 2, "1.34.1", GCR_ETCD, "v3.6.4", "v1.12.3", "v0.27.2", P310,
    ),
    (
        11, 3, 6, "1.34.1", GCR_ETCD, "v3.6.5", "v1.12.4", "v0.27.4", P310,
    ),
    (
        12, 0, 4, "1.35.0", K8S_ETCD, "v3.6.7", "v1.13.2", "v0.27.4", P310,
    ),
    (
        12, 5, 6, "1.35.2", K8S_ETCD, "v3.6.8", "v1.13.2", "v0.27.4", P310,
    ),
    (
        12, 7, 7, "1.35.4", K8S_ETCD, "v3.6.9", "v1.13.2", "v0.27.4", P310,
    ),
    (
        12, 8, 8, "1.35.4", K8S_ETCD, "v3.6.11", "v1.14.3", "v0.27.4", P3101,
    ),
    (
        12, 9, 11, "1.35.4", K8S_ETCD, "v3.6.11", "v1.14.2", "v0.27.4", P3101,
    ),
    (
        13, 0, 0, "1.36.0", K8S_ETCD, "v3.6.9", "v1.14.2", "v0.28.4", P3101,
    ),
    (
        13, 1, 2, "1.36.0", K8S_ETCD, "v3.6.11", "v1.14.2", "v0.28.4", P3101,
    ),
    (
        13, 3, 3, "1.36.1", K8S_ETCD, "v3.6.11", "v1.14.2", "v0.28.4", P3101,
    ),
    (
        13, 4, 4, "1.36.1", K8S_ETCD, "v3.6.12", "v1.14.2", "v0.28.5", P3101,
    ),
    (
        13, 5, 6, "1.36.2", K8S_ETCD, "v3.6.12", "v1.14.2", "v0.28.5", P3101,
    ),
    (
        13, 7, 7, "1.36.2", K8S_ETCD, "v3.6.12", "v1.14.4", "0.28.7", P3101,
    ),
    (
        13, 8, 8, "1.36.2", K8S_ETCD, "v3.6.12", "v1.14.6", "0.28.8", P3101,
    ),
    (
        13, 9, 9, "1.36.3", K8S_ETCD, "v3.6.12", "v1.14.6", "0.28.8", P3101,
    ),
];

/// The defaults of a Talos release, when edgeimage knows them.
pub fn defaults(t: &TalosVersion) -> Option<(Defaults, &'static str)> {
    TABLE
        .iter()
        .find(|r| t.major == 1 && r.0 == t.minor && (r.1..=r.2).contains(&t.patch))
        .map(|r| {
            (
                Defaults {
                    kubernetes: r.3,
                    etcd: r.5,
                    coredns: r.6,
                    flannel: r.7,
                    pause: r.8,
                },
                r.4,
            )
        })
}

/// One image the node will pull, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Required {
    pub reference: Reference,
    /// The field or default it comes from ("cluster.apiServer.image", "the default CoreDNS
    /// image of Talos v1.12.5", "image_cache.require[0]").
    pub from: String,
}

/// Every image a node of `machine_type` with these settings pulls, plus `extra` (named by the
/// profile), without duplicates (by name and tag), in a stable order.
pub fn required(
    s: &ImageSettings,
    machine_type: MachineType,
    talos: &TalosVersion,
    extra: &[Reference],
) -> Result<Vec<Required>> {
    let Some((d, etcd_repo)) = defaults(talos) else {
        bail!(
            "edgeimage does not know which images Talos {} pulls by default (it knows the \
             releases v1.9.0 to v1.13.9): an image cache cannot be checked for it",
            talos.tag
        );
    };
    let k8s = |repo: &str| format!("{repo}:v{}", d.kubernetes);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |field: Option<&String>, name: &str, default: String| match field {
        Some(v) => out.push((v.clone(), name.to_string())),
        None => out.push((
            default,
            format!("the default of {name} for Talos {}", talos.tag),
        )),
    };
    add(
        s.kubelet.as_ref(),
        "machine.kubelet.image",
        k8s("ghcr.io/siderolabs/kubelet"),
    );
    if machine_type.is_control_plane() {
        add(
            s.etcd.as_ref(),
            "cluster.etcd.image",
            format!("{etcd_repo}:{}", d.etcd),
        );
        add(
            s.api_server.as_ref(),
            "cluster.apiServer.image",
            k8s("registry.k8s.io/kube-apiserver"),
        );
        if !s.controller_manager_disabled {
            add(
                s.controller_manager.as_ref(),
                "cluster.controllerManager.image",
                k8s("registry.k8s.io/kube-controller-manager"),
            );
        }
        if !s.scheduler_disabled {
            add(
                s.scheduler.as_ref(),
                "cluster.scheduler.image",
                k8s("registry.k8s.io/kube-scheduler"),
            );
        }
    }
    if !s.proxy_disabled {
        add(
            s.proxy.as_ref(),
            "cluster.proxy.image",
            k8s("registry.k8s.io/kube-proxy"),
        );
    }
    if !s.coredns_disabled {
        add(
            s.coredns.as_ref(),
            "cluster.coreDNS.image",
            format!("registry.k8s.io/coredns/coredns:{}", d.coredns),
        );
    }
    if s.cni.as_deref().is_none_or(|c| c == "flannel") {
        out.push((
            format!("ghcr.io/siderolabs/flannel:{}", d.flannel),
            format!(
                "the flannel CNI of Talos {} (cluster.network.cni)",
                talos.tag
            ),
        ));
    }
    out.push((
        d.pause.to_string(),
        format!("containerd's sandbox (pause) image in Talos {}", talos.tag),
    ));
    if let Some(i) = &s.install_image {
        out.push((i.clone(), "machine.install.image".into()));
    }
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut list = Vec::new();
    for (r, from) in out {
        let reference = Reference::parse(&r).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        if seen.insert(reference.to_string(), ()).is_none() {
            list.push(Required { reference, from });
        }
    }
    for (i, r) in extra.iter().enumerate() {
        if seen.insert(r.to_string(), ()).is_none() {
            list.push(Required {
                reference: r.clone(),
                from: format!("image_cache.require[{i}]"),
            });
        }
    }
    Ok(list)
}

/// Whether the configuration lets the node use a local image cache, and finds the
/// `IMAGECACHE` volume; the error says which document or field to add.
///
/// Talos enables the cache with `machine.features.imageCache.localEnabled: true`
/// (`ImageCacheConfigController.Run`, `imageCacheDisabled`, in
/// `internal/app/machined/pkg/controllers/cri/image_cache_config.go`, v1.12.5); Talos 1.14
/// adds the `ImageCacheConfig` document (`local.enabled`) and deprecates the field. Without
/// a `VolumeConfig` named `IMAGECACHE` the volume is still found on the disk, but the
/// install waits for the volume's provisioning (siderolabs/talos#11341), so it is required.
pub fn check_config(s: &ImageSettings, talos: &TalosVersion, origin: &str) -> Result<()> {
    let enabled = match s.cache_config_document {
        Some(e) if talos.minor >= 14 => e,
        Some(_) => bail!(
            "{origin}: an ImageCacheConfig document needs Talos 1.14 or later; for Talos {} \
             enable the cache with `machine.features.imageCache.localEnabled: true`",
            talos.tag
        ),
        None => s.cache_local_enabled,
    };
    let how = if talos.minor >= 14 {
        "add an ImageCacheConfig document with `local: {enabled: true}`"
    } else {
        "set `machine.features.imageCache.localEnabled: true`"
    };
    if !enabled {
        bail!(
            "{origin}: the profile has an image cache but the machine configuration does not \
             enable it, so the node would pull from registries it cannot reach: {how} (README: \
             \"Image cache\" shows the patch)"
        );
    }
    if !s.cache_volume {
        bail!(
            "{origin}: the machine configuration has no VolumeConfig document named \
             IMAGECACHE, which Talos needs to use the cache partition: add `apiVersion: \
             v1alpha1`, `kind: VolumeConfig`, `name: IMAGECACHE` with `provisioning: \
             {{diskSelector: {{match: system_disk}}, grow: false}}` (README: \"Image cache\" \
             shows the patch)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> TalosVersion {
        TalosVersion::parse(s).unwrap()
    }

    #[test]
    fn every_release_has_one_row() {
        for minor in 9..=13u32 {
            let last = match minor {
                9 => 6,
                10 => 9,
                11 => 6,
                12 => 11,
                _ => 9,
            };
            for patch in 0..=last {
                let n = TABLE
                    .iter()
                    .filter(|r| r.0 == minor && (r.1..=r.2).contains(&patch))
                    .count();
                assert_eq!(n, 1, "v1.{minor}.{patch}");
            }
        }
        assert!(defaults(&v("v1.14.0")).is_none());
        assert!(defaults(&v("v1.8.3")).is_none());
    }

    #[test]
    fn control_plane_defaults_of_1_12_5() {
        let s = ImageSettings::default();
        let list = required(&s, MachineType::ControlPlane, &v("v1.12.5"), &[]).unwrap();
        let refs: Vec<String> = list.iter().map(|r| r.reference.to_string()).collect();
        // The list the fixtures (and every cache test) use, in Talos's order.
        assert_eq!(refs, crate::imagecache::fixtures::CONTROL_PLANE_1_12_5);
    }

    #[test]
    fn worker_with_fields_set() {
        let s = ImageSettings {
            kubelet: Some("ghcr.io/siderolabs/kubelet:v1.34.1".into()),
            proxy_disabled: true,
            cni: Some("none".into()),
            install_image: Some("ghcr.io/siderolabs/installer:v1.12.5".into()),
            ..Default::default()
        };
        let extra = vec![Reference::parse("nginx:1.27").unwrap()];
        let list = required(&s, MachineType::Worker, &v("v1.12.5"), &extra).unwrap();
        let refs: Vec<(String, String)> = list
            .iter()
            .map(|r| (r.reference.to_string(), r.from.clone()))
            .collect();
        assert_eq!(refs[0].0, "ghcr.io/siderolabs/kubelet:v1.34.1");
        assert_eq!(refs[0].1, "machine.kubelet.image");
        assert!(refs
            .iter()
            .all(|r| !r.0.contains("etcd") && !r.0.contains("proxy")));
        assert!(refs
            .iter()
            .any(|r| r.0 == "docker.io/library/nginx:1.27" && r.1 == "image_cache.require[0]"));
        assert!(refs.iter().any(|r| r.1 == "machine.install.image"));
    }

    #[test]
    fn config_checks_name_what_to_add() {
        let off = ImageSettings::default();
        let e = check_config(&off, &v("v1.12.5"), "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("machine.features.imageCache.localEnabled: true"),
            "{e}"
        );
        let e = check_config(&off, &v("v1.14.0"), "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ImageCacheConfig document"), "{e}");
        let on = ImageSettings {
            cache_local_enabled: true,
            ..Default::default()
        };
        let e = check_config(&on, &v("v1.12.5"), "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`name: IMAGECACHE`"), "{e}");
        let ok = ImageSettings {
            cache_volume: true,
            ..on
        };
        check_config(&ok, &v("v1.12.5"), "c.yaml").unwrap();
    }
}
