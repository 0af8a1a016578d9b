//! Extension fixtures generated in code (nothing binary is committed): the `edgehostlet`
//! extension used by unit, integration and end-to-end tests, and writers for every input form
//! [`super::load`] reads.
//!
//! The tar writer puts entry names and link targets into the headers verbatim, so hostile
//! fixtures (`../x`, `/etc/x`) can be made; the directory writer refuses such names and never
//! writes outside the directory it is given.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::assets::oci::fixtures::outer_tar;
use crate::talos::Arch;
use crate::tree::normalize;

/// One entry of a fixture tree (paths relative to the extension's top).
#[derive(Clone, Debug)]
pub enum Entry {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    Hardlink(String, String),
    CharDevice(String, u32, u32),
    Fifo(String),
}

impl Entry {
    pub fn dir(p: &str) -> Entry {
        Entry::Dir(p.into(), 0o755)
    }

    pub fn file(p: &str, data: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry::File(p.into(), data.into(), mode)
    }

    pub fn symlink(p: &str, target: &str) -> Entry {
        Entry::Symlink(p.into(), target.into())
    }

    pub fn path(&self) -> &str {
        match self {
            Entry::Dir(p, _)
            | Entry::File(p, _, _)
            | Entry::Symlink(p, _)
            | Entry::Hardlink(p, _)
            | Entry::CharDevice(p, _, _)
            | Entry::Fifo(p) => p,
        }
    }
}

/// `manifest.yaml` of the `edgehostlet` fixture.
pub const EDGEHOSTLET_MANIFEST: &str = "\
version: v1alpha1
metadata:
  name: edgehostlet
  version: 1.7.1
  author: STACKIT
  description: Edge host agent (edgeimage test fixture)
  compatibility:
    talos:
      version: \">= v1.8.0\"
";

/// The `edgehostlet` extension service definition.
pub const EDGEHOSTLET_SERVICE: &str = "\
name: edgehostlet
container:
  entrypoint: ./edgehostlet
  mounts:
    - source: /etc/hostname
      destination: /etc/hostname
      type: bind
      options: [bind, ro]
depends:
  - network: [hostname, etcfiles]
restart: untilSuccess
logToConsole: true
";

/// The service's entrypoint: prints the host name it finds, then exits 0. Uses only POSIX
/// shell builtins, so a bare busybox `sh` runs it. Note that the container root
/// (`/usr/local/lib/containers/edgehostlet`) must also hold `/bin/sh` for it to start on a
/// real host: add one with [`edgehostlet_with`].
pub const EDGEHOSTLET_SCRIPT: &str = r#"#!/bin/sh
# edgehostlet: edgeimage's end-to-end fixture. Prints the host name this host was given.
cfg=/usr/local/etc/talos/config.yaml
h=
if [ -r "$cfg" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      *hostname:*) h=${line#*hostname:}; break ;;
    esac
  done < "$cfg"
fi
if [ -z "$h" ] && [ -r /etc/hostname ]; then
  IFS= read -r h < /etc/hostname || true
fi
set -- $h
h=${1:-}
h=${h#\"}; h=${h%\"}; h=${h#\'}; h=${h%\'}
echo "EDGEIMAGE-E2E edgehostlet: hostname=${h:-unknown}"
"#;

/// The `edgehostlet` fixture tree, every directory listed.
pub fn edgehostlet() -> Vec<Entry> {
    edgehostlet_with(Vec::new())
}

/// The `edgehostlet` fixture plus `extra` entries (e.g. a busybox at
/// `rootfs/usr/local/lib/containers/edgehostlet/bin/sh`, or hostile ones for tests).
pub fn edgehostlet_with(extra: Vec<Entry>) -> Vec<Entry> {
    let mut v = vec![Entry::file(
        "manifest.yaml",
        EDGEHOSTLET_MANIFEST.as_bytes(),
        0o644,
    )];
    for d in [
        "rootfs",
        "rootfs/usr",
        "rootfs/usr/local",
        "rootfs/usr/local/bin",
        "rootfs/usr/local/etc",
        "rootfs/usr/local/etc/containers",
        "rootfs/usr/local/lib",
        "rootfs/usr/local/lib/containers",
        "rootfs/usr/local/lib/containers/edgehostlet",
    ] {
        v.push(Entry::dir(d));
    }
    v.push(Entry::file(
        "rootfs/usr/local/etc/containers/edgehostlet.yaml",
        EDGEHOSTLET_SERVICE.as_bytes(),
        0o644,
    ));
    v.push(Entry::file(
        "rootfs/usr/local/lib/containers/edgehostlet/edgehostlet",
        EDGEHOSTLET_SCRIPT.as_bytes(),
        0o755,
    ));
    v.push(Entry::symlink(
        "rootfs/usr/local/bin/edgehostlet",
        "../lib/containers/edgehostlet/edgehostlet",
    ));
    v.extend(extra);
    v
}

/// The input forms [`super::load`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Dir,
    Tar,
    TarGz,
    TarZst,
    OciDir,
    OciTar,
    DockerSave,
}

impl Form {
    pub const ALL: [Form; 7] = [
        Form::Dir,
        Form::Tar,
        Form::TarGz,
        Form::TarZst,
        Form::OciDir,
        Form::OciTar,
        Form::DockerSave,
    ];

    fn file_name(self) -> &'static str {
        match self {
            Form::Dir => "extension",
            Form::Tar => "extension.tar",
            Form::TarGz => "extension.tar.gz",
            Form::TarZst => "extension.tar.zst",
            Form::OciDir => "extension-oci",
            Form::OciTar => "extension.oci.tar",
            Form::DockerSave => "extension.docker.tar",
        }
    }
}

fn raw_name(slot: &mut [u8], name: &str) -> io::Result<()> {
    let b = name.as_bytes();
    if b.len() > slot.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fixture name {name:?} is longer than {} bytes", slot.len()),
        ));
    }
    slot.fill(0);
    slot[..b.len()].copy_from_slice(b);
    Ok(())
}

/// A tar of `entries`, names and link targets written verbatim, owner 0:0, mtime 0.
pub fn tar_bytes(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        let mut data: &[u8] = &[];
        match e {
            Entry::Dir(_, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
            }
            Entry::File(_, d, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                data = d;
            }
            Entry::Symlink(_, t) | Entry::Hardlink(_, t) => {
                let sym = matches!(e, Entry::Symlink(..));
                h.set_entry_type(if sym {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(if sym { 0o777 } else { 0o644 });
                raw_name(&mut h.as_old_mut().linkname, t)?;
            }
            Entry::CharDevice(_, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o600);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
            }
            Entry::Fifo(_) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
            }
        }
        raw_name(&mut h.as_old_mut().name, e.path())?;
        h.set_cksum();
        b.append(&h, data)?;
    }
    b.into_inner()
}

/// Write `entries` as a directory tree at `root` (which must not exist yet). Names with `..`
/// or a leading `/`, and character devices (they need root), are refused.
pub fn write_dir(entries: &[Entry], root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(root)?;
    let safe = |p: &str| -> io::Result<PathBuf> {
        match normalize(p) {
            Some(n) if !p.starts_with('/') && !n.is_empty() => Ok(root.join(n)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fixture path {p:?} would leave the directory"),
            )),
        }
    };
    let mut dirs = Vec::new();
    for e in entries {
        let full = safe(e.path())?;
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent)?;
        }
        match e {
            Entry::Dir(_, mode) => {
                fs::create_dir_all(&full)?;
                dirs.push((full, *mode));
            }
            Entry::File(_, d, mode) => {
                fs::write(&full, d)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode))?;
            }
            Entry::Symlink(_, t) => std::os::unix::fs::symlink(t, &full)?,
            Entry::Hardlink(_, t) => fs::hard_link(safe(t)?, &full)?,
            Entry::Fifo(_) => {
                let c = std::ffi::CString::new(full.as_os_str().as_encoded_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Entry::CharDevice(..) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "device nodes cannot be written to a directory fixture",
                ))
            }
        }
    }
    for (d, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    e.finish()
}

/// Members of an OCI image layout holding one single-layer image of `layer_tar`.
fn oci_members(layer_tar: &[u8], arch: Arch) -> io::Result<Vec<(String, Vec<u8>)>> {
    let layer = gzip(layer_tar)?;
    let config = serde_json::to_vec(&json!({
        "architecture": arch.as_str(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(layer_tar))]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha(&config)),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", sha(&layer)),
            "size": layer.len(),
        }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(),
            "platform": {"architecture": arch.as_str(), "os": "linux"},
        }],
    }))?;
    let mut m = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for blob in [config, layer, manifest] {
        m.push((format!("blobs/sha256/{}", sha(&blob)), blob));
    }
    Ok(m)
}

/// Members of a classic `docker save` archive of one single-layer image.
fn docker_members(layer_tar: &[u8], arch: Arch) -> io::Result<Vec<(String, Vec<u8>)>> {
    let config = serde_json::to_vec(&json!({
        "architecture": arch.as_str(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(layer_tar))]},
    }))?;
    let config_name = format!("{}.json", sha(&config));
    let layer_name = format!("{}/layer.tar", sha(layer_tar));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": ["example.invalid/edgehostlet:fixture"],
        "Layers": [layer_name],
    }]))?;
    Ok(vec![
        ("manifest.json".to_string(), manifest),
        (config_name, config),
        (layer_name, layer_tar.to_vec()),
    ])
}

/// Write `entries` in `form` inside `dir`; returns the input path to hand to
/// [`super::load`]. OCI forms hold one image for `arch`.
pub fn write(entries: &[Entry], form: Form, dir: &Path, arch: Arch) -> io::Result<PathBuf> {
    let path = dir.join(form.file_name());
    match form {
        Form::Dir => write_dir(entries, &path)?,
        Form::Tar => fs::write(&path, tar_bytes(entries)?)?,
        Form::TarGz => fs::write(&path, gzip(&tar_bytes(entries)?)?)?,
        Form::TarZst => fs::write(&path, zstd::encode_all(&tar_bytes(entries)?[..], 3)?)?,
        Form::OciDir => {
            fs::create_dir(&path)?;
            for (name, data) in oci_members(&tar_bytes(entries)?, arch)? {
                let p = path.join(name);
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::write(p, data)?;
            }
        }
        Form::OciTar => fs::write(&path, outer_tar(&oci_members(&tar_bytes(entries)?, arch)?)?)?,
        Form::DockerSave => fs::write(
            &path,
            outer_tar(&docker_members(&tar_bytes(entries)?, arch)?)?,
        )?,
    }
    Ok(path)
}
