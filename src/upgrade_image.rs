//! The Talos installer image of a profile (`<name>-installer-image.tar`): what `talosctl
//! upgrade --image <reference>` runs, so an upgrade keeps the profile's extensions,
//! EdgeHostLet, the configuration delivery and the kernel arguments.
//!
//! Laid out as Talos's imager lays out its `installer` output (`outInstaller` in
//! `pkg/imager/out.go`, v1.12.5): the pinned `installer-base` image's layers unchanged, its
//! config (entrypoint `/bin/installer`, environment, labels) with `architecture` and `os` set,
//! and one more layer holding exactly `usr/install/<arch>/systemd-boot.efi` and
//! `usr/install/<arch>/vmlinuz.efi` (the profile's UKI, which carries the extensions in its
//! `.initrd` and the kernel arguments in its `.cmdline`). No `vmlinuz`/`initramfs.xz`: with
//! them the installer's GRUB path refuses `grubUseUKICmdline` (`(*Config).install` in
//! `cmd/installer/pkg/install/bootloader/grub`); the sd-boot path copies `vmlinuz.efi` to
//! `EFI/Linux/Talos-<version>.efi`.
//!
//! Differences from the imager, each for reproducibility or for the image cache: the layer is
//! an uncompressed tar (Talos gzips it; containerd reads both, and the UKI is compressed
//! already); its entries are mode 0644 (Talos writes 0000, which only root can read),
//! uid/gid 0, mtime 0, USTAR, no directory entries, as Talos's; `created` is
//! `SOURCE_DATE_EPOCH`, not the time of the build; the output is an OCI image layout in a tar
//! (`skopeo copy oci-archive:…`) that keeps the registry manifest, where Talos writes a
//! `docker save` tarball (which keeps no manifest, so the image cache could not serve it by
//! digest). Nothing large is read: the layer and the archive are [`Layout`]s over the UKI,
//! the boot loader and the base image's blobs.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::assets::oci::pinned::{open_pinned, JsonBlob, LayerBlob, PinnedImage};
use crate::format::reference::Reference;
use crate::layout::Layout;
use crate::profile::UpgradeImageSpec;
use crate::talos::Arch;

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The largest file a USTAR header describes (11 octal digits).
const USTAR_MAX: u64 = (1 << 33) - 1;

/// The built image.
#[derive(Clone, Debug)]
pub struct UpgradeImage {
    pub reference: Reference,
    /// Manifest, config and layers (base layers, then the boot assets layer).
    pub image: PinnedImage,
    /// The OCI image layout as a tar.
    pub archive: Layout,
}

/// The file name of the image in the output set.
pub fn file_name(profile_name: &str) -> String {
    format!("{profile_name}-installer-image.tar")
}

/// A USTAR header for a regular file (root-owned, mode 0644).
fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    if size > USTAR_MAX {
        bail!("{name}: {size} bytes is more than a tar header describes (8 GiB)");
    }
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .with_context(|| format!("{name}: not a name a tar header holds"))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// A tar of `files` (name, content), in the order given, as a layout.
fn tar_layout(files: &[(String, &Layout)], mtime: u64) -> Result<Layout> {
    let mut len = 1024u64; // the two zero blocks at the end
    for (_, c) in files {
        len += 512 + c.len().next_multiple_of(512);
    }
    let mut l = Layout::new(len);
    let mut at = 0u64;
    for (name, c) in files {
        l.put_bytes(at, header(name, c.len(), mtime)?.to_vec())?;
        at += 512;
        l.put_layout_range(at, c, 0, c.len(), true)?;
        let pad = c.len().next_multiple_of(512) - c.len();
        if pad > 0 {
            l.put_zeros(at + c.len(), pad)?;
        }
        at += c.len() + pad;
    }
    l.put_zeros(at, 1024)?;
    Ok(l)
}

fn json_blob(value: &Value, media_type: &str) -> Result<JsonBlob> {
    let bytes = serde_json::to_vec(value)?;
    Ok(JsonBlob {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        media_type: media_type.to_string(),
        bytes,
    })
}

/// Build the image from the pinned base, the UKI and systemd-boot.
pub fn build(
    spec: &UpgradeImageSpec,
    arch: Arch,
    uki: &Layout,
    systemd_boot: &Layout,
    epoch: u64,
) -> Result<UpgradeImage> {
    let base = open_pinned(&spec.base_archive, &spec.base_digest, arch)
        .context("reading the installer-base image (upgrade_image.base)")?;
    let dir = format!("usr/install/{}", arch.as_str());
    let layer = tar_layout(
        &[
            (format!("{dir}/systemd-boot.efi"), systemd_boot),
            (format!("{dir}/vmlinuz.efi"), uki),
        ],
        0,
    )?;
    let layer_digest = format!("sha256:{}", layer.sha256_hex()?);

    // The config: the base's, with the platform, the time and the layer list set.
    let mut config: Value = serde_json::from_slice(&base.config.bytes)
        .context("the installer-base image's config is not JSON")?;
    let obj = config
        .as_object_mut()
        .context("the installer-base image's config is not a JSON object")?;
    let mut diff_ids: Vec<Value> = obj
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if diff_ids.len() != base.layers.len() {
        bail!(
            "the installer-base image has {} layers but its config lists {} diff_ids",
            base.layers.len(),
            diff_ids.len()
        );
    }
    diff_ids.push(json!(layer_digest));
    obj.insert("architecture".into(), json!(arch.as_str()));
    obj.insert("os".into(), json!("linux"));
    obj.insert(
        "created".into(),
        json!(crate::civil::from_unix(epoch).rfc3339()),
    );
    obj.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    // The base's history describes layers this image replaces its config for (as Talos's
    // imager drops it too).
    obj.remove("history");
    let config = json_blob(&config, MT_CONFIG)?;

    let base_manifest: Value = serde_json::from_slice(&base.manifest().bytes)?;
    let mut layers: Vec<Value> = base_manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    layers.push(json!({"mediaType": MT_LAYER, "digest": layer_digest, "size": layer.len()}));
    let manifest = json_blob(
        &json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config.digest, "size": config.bytes.len()},
            "layers": layers,
        }),
        MT_MANIFEST,
    )?;
    let mut blobs: Vec<LayerBlob> = base.layers.clone();
    blobs.push(LayerBlob {
        digest: layer_digest,
        media_type: MT_LAYER.into(),
        content: layer,
    });

    // The OCI image layout, in a tar.
    let reference = spec.reference.clone();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest.digest,
            "size": manifest.bytes.len(),
            "platform": {"architecture": arch.as_str(), "os": "linux"},
            "annotations": {
                "org.opencontainers.image.ref.name": reference.to_string(),
                "io.containerd.image.name": reference.to_string(),
            },
        }],
    }))?;
    let layout_json = Layout::from_bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let index = Layout::from_bytes(index);
    let blob_name = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let config_l = Layout::from_bytes(config.bytes.clone());
    let manifest_l = Layout::from_bytes(manifest.bytes.clone());
    let mut members: Vec<(String, &Layout)> = vec![
        ("oci-layout".into(), &layout_json),
        ("index.json".into(), &index),
        (blob_name(&config.digest), &config_l),
        (blob_name(&manifest.digest), &manifest_l),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for b in &blobs {
        if seen.insert(b.digest.clone()) {
            members.push((blob_name(&b.digest), &b.content));
        }
    }
    let archive = tar_layout(&members, 0)?;
    Ok(UpgradeImage {
        reference,
        image: PinnedImage {
            archive: spec.base_archive.clone(),
            top: manifest,
            platform_manifest: None,
            config,
            layers: blobs,
            platform: format!("linux/{}", arch.as_str()),
        },
        archive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_is_a_tar_of_the_two_boot_files() {
        let a = Layout::from_bytes(b"boot".to_vec());
        let b = Layout::from_bytes(vec![7u8; 1000]);
        let l = tar_layout(
            &[
                ("usr/install/amd64/systemd-boot.efi".into(), &a),
                ("usr/install/amd64/vmlinuz.efi".into(), &b),
            ],
            0,
        )
        .unwrap();
        let bytes = l.to_vec().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let got: Vec<(String, u64, u32, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.size().unwrap(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("usr/install/amd64/systemd-boot.efi".into(), 4, 0o644, 0),
                ("usr/install/amd64/vmlinuz.efi".into(), 1000, 0o644, 0),
            ]
        );
        assert_eq!(bytes.len() % 512, 0);
    }
}
