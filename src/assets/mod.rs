//! Talos boot assets: read from a directory laid out like `/usr/install/<arch>/` of the Talos
//! imager image, or straight from an OCI archive of that image; every asset is checked against
//! its pin before anything else looks at it, then checked for what it must be (an EFI binary
//! for the profile's architecture, a compressed initramfs).
//!
//! Each asset file is opened once and kept open: the bytes that were hashed are the bytes the
//! image is composed from.

pub mod oci;
pub mod rootfs;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::layout::SharedFile;
use crate::pe::{PeHeaders, SUBSYSTEM_EFI_APPLICATION};
use crate::profile::{AssetPin, Profile};
use crate::talos::Arch;

/// One checked asset.
#[derive(Clone, Debug)]
pub struct Asset {
    /// The profile field (`kernel`, `initramfs`, `systemd_boot`, `systemd_stub`).
    pub field: &'static str,
    /// Where it came from, for messages and provenance (`DIR/vmlinuz`, `ARCHIVE:usr/install/…`).
    pub origin: String,
    pub file: SharedFile,
    pub len: u64,
    pub sha256: String,
}

/// The four boot assets, checked.
#[derive(Clone, Debug)]
pub struct BootAssets {
    pub source: PathBuf,
    pub kernel: Asset,
    pub initramfs: Asset,
    pub systemd_boot: Asset,
    pub systemd_stub: Asset,
    /// The kernel release (`uname -r`), from the profile or the kernel's own header.
    pub kernel_version: Option<String>,
}

impl BootAssets {
    pub fn all(&self) -> [&Asset; 4] {
        [
            &self.kernel,
            &self.initramfs,
            &self.systemd_boot,
            &self.systemd_stub,
        ]
    }
}

/// Where assets are read from.
enum Source {
    Dir(PathBuf),
    Image(oci::OciImage, PathBuf),
}

/// Load and check the profile's boot assets from `source` (or the profile's `assets.source`).
pub fn load(profile: &Profile, source: Option<&Path>) -> Result<BootAssets> {
    let source = source
        .map(Path::to_path_buf)
        .or_else(|| profile.assets.source.clone())
        .ok_or_else(|| {
            anyhow!(
                "no boot assets given: pass --assets DIR|ARCHIVE or set assets.source in {}",
                profile.path.display()
            )
        })?;
    let meta = std::fs::metadata(&source).with_context(|| {
        format!(
            "asset source {} cannot be read; pass --assets with a directory or an OCI archive of the Talos imager",
            source.display()
        )
    })?;
    // A directory holding an image layout's top-level files is an unpacked OCI layout or
    // `docker save`: read as an image, its members opened without following links.
    let layout = ["oci-layout", "index.json", "manifest.json"]
        .iter()
        .any(|n| std::fs::symlink_metadata(source.join(n)).is_ok());
    let src = if meta.is_dir() && !layout {
        Source::Dir(source.clone())
    } else {
        let img =
            oci::OciImage::open(&source, profile.arch.as_str()).context("reading boot assets")?;
        Source::Image(img, source.clone())
    };
    let opened = open_all(&src, profile)?;
    let [kernel, initramfs, systemd_boot, systemd_stub] = opened;
    for a in [&kernel, &initramfs, &systemd_boot, &systemd_stub] {
        let pin = profile
            .assets
            .all()
            .into_iter()
            .find(|p| p.field == a.field)
            .ok_or_else(|| anyhow!("internal: no pin for {}", a.field))?;
        check_pin(a, pin, profile)?;
    }
    let arch = profile.arch;
    check_efi(&systemd_boot, arch, true)?;
    check_efi(&systemd_stub, arch, true)?;
    check_efi(&kernel, arch, false)?;
    check_initramfs(&initramfs)?;
    let kernel_version = match &profile.kernel_version {
        Some(v) => Some(v.clone()),
        None => bzimage_version(&kernel)?,
    };
    Ok(BootAssets {
        source,
        kernel,
        initramfs,
        systemd_boot,
        systemd_stub,
        kernel_version,
    })
}

/// A kernel outside the asset source (the installer's own `[installer] kernel`), checked like
/// the disk image's: opened once, pinned to `sha256`, an EFI-stub kernel for the profile's
/// architecture. `field` is the profile field that names it. Returns the kernel and its
/// release, read from an x86 kernel's header (arm64 kernels do not carry it).
pub fn load_kernel_file(
    field: &'static str,
    path: &Path,
    sha256: &str,
    profile: &Profile,
) -> Result<(Asset, Option<String>)> {
    let file = crate::input::open(path, crate::input::Kind::Asset)
        .with_context(|| format!("profile {}: field `{field}`", profile.path.display()))?
        .into_file();
    let a = hash_asset(
        field,
        path.display().to_string(),
        SharedFile::new(file, path),
    )?;
    if a.sha256 != sha256 {
        bail!(
            "profile {}: field `{field}`: {} does not match its pin: the profile pins sha256 {sha256}, the file has {} ({} bytes); use the file the pin names, or if this file is right, set {field}.sha256 to its digest",
            profile.path.display(),
            a.origin,
            a.sha256,
            a.len
        );
    }
    check_efi(&a, profile.arch, false)?;
    let release = bzimage_version(&a)?;
    Ok((a, release))
}

fn open_all(src: &Source, profile: &Profile) -> Result<[Asset; 4]> {
    let pins = profile.assets.all();
    match src {
        Source::Dir(dir) => {
            let open = |pin: &AssetPin| -> Result<Asset> {
                let path = dir.join(&pin.path);
                let file = crate::input::open(&path, crate::input::Kind::Asset)
                    .with_context(|| {
                        format!(
                            "asset `{}`: the asset directory must hold the files of /usr/install/{}/ of the Talos imager",
                            pin.field,
                            profile.arch
                        )
                    })?
                    .into_file();
                hash_asset(
                    pin.field,
                    path.display().to_string(),
                    SharedFile::new(file, &path),
                )
            };
            Ok([
                open(pins[0])?,
                open(pins[1])?,
                open(pins[2])?,
                open(pins[3])?,
            ])
        }
        Source::Image(img, archive) => {
            let prefix = format!("usr/install/{}/", profile.arch);
            let wanted: Vec<String> = pins.iter().map(|p| format!("{prefix}{}", p.path)).collect();
            let tree = img
                .merged_tree(&|p: &str| wanted.iter().any(|w| w == p))
                .context("reading boot assets")?;
            let take = |pin: &AssetPin| -> Result<Asset> {
                let inner = format!("{prefix}{}", pin.path);
                let origin = format!("{}:{}", archive.display(), inner);
                match tree.entries.get(&inner).map(|e| &e.kind) {
                    Some(oci::EntryKind::File { content, .. }) => {
                        hash_asset(pin.field, origin, content.clone())
                    }
                    Some(_) => bail!("asset `{}`: {origin} is not a regular file in the image", pin.field),
                    None => bail!(
                        "asset `{}`: the image in {} has no /{inner}; is it the Talos imager image for {}?",
                        pin.field,
                        archive.display(),
                        profile.arch
                    ),
                }
            };
            Ok([
                take(pins[0])?,
                take(pins[1])?,
                take(pins[2])?,
                take(pins[3])?,
            ])
        }
    }
}

fn hash_asset(field: &'static str, origin: String, file: SharedFile) -> Result<Asset> {
    let len = file
        .len()
        .with_context(|| format!("asset `{field}`: {origin}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], off)
            .with_context(|| format!("asset `{field}`: reading {origin}"))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Asset {
        field,
        origin,
        file,
        len,
        sha256: hex::encode(h.finalize()),
    })
}

fn check_pin(a: &Asset, pin: &AssetPin, profile: &Profile) -> Result<()> {
    if a.sha256 != pin.sha256 {
        bail!(
            "asset `{}` ({}) does not match its pin: profile pins sha256 {}, the file has {} ({} bytes); use the file the pin names, or if this file is right, set assets.{}.sha256 in {}",
            a.field,
            a.origin,
            pin.sha256,
            a.sha256,
            a.len,
            a.field,
            profile.path.display()
        );
    }
    Ok(())
}

fn head(a: &Asset, n: u64) -> Result<Vec<u8>> {
    let mut b = vec![0u8; a.len.min(n) as usize];
    a.file.read_exact_at(&mut b, 0)?;
    Ok(b)
}

/// An EFI binary (or EFI-stub kernel) for the profile's architecture.
fn check_efi(a: &Asset, arch: Arch, application: bool) -> Result<()> {
    let b = head(a, 64 * 1024)?;
    let what = if application {
        "an EFI application"
    } else {
        "an EFI-stub kernel (vmlinuz with a PE header)"
    };
    let h = PeHeaders::parse(&b)
        .map_err(|e| anyhow!("asset `{}` ({}) is not {what}: {e}", a.field, a.origin))?;
    if h.machine != arch.pe_machine() {
        let other = match Arch::from_pe_machine(h.machine) {
            Some(o) => format!("an {o} binary"),
            None => format!("a binary for PE machine {:#x}", h.machine),
        };
        bail!(
            "asset `{}` ({}) is {other} but the profile's arch is {arch}; use the {arch} assets",
            a.field,
            a.origin
        );
    }
    if application && h.subsystem != SUBSYSTEM_EFI_APPLICATION {
        bail!(
            "asset `{}` ({}) is not an EFI application (PE subsystem {})",
            a.field,
            a.origin,
            h.subsystem
        );
    }
    Ok(())
}

/// Compression formats the kernel can unpack an initramfs from, by magic bytes.
pub fn initramfs_format(b: &[u8]) -> Option<&'static str> {
    const MAGICS: [(&[u8], &str); 7] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz"),
        (&[0x1f, 0x8b], "gzip"),
        (b"BZh", "bzip2"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (b"070701", "cpio"),
        (b"070702", "cpio"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| b.starts_with(m))
        .map(|(_, n)| *n)
}

fn check_initramfs(a: &Asset) -> Result<()> {
    let b = head(a, 16)?;
    if initramfs_format(&b).is_none() {
        bail!(
            "asset `initramfs` ({}) is not an initramfs: it starts with {} instead of a zstd, xz, gzip, bzip2, lz4 or cpio signature",
            a.origin,
            hex::encode(&b[..b.len().min(8)])
        );
    }
    Ok(())
}

/// The kernel release from an x86 bzImage header (`kernel_version` field of the setup header,
/// 0x20e, pointing at a NUL-terminated string 0x200 bytes further), if present.
fn bzimage_version(a: &Asset) -> Result<Option<String>> {
    let b = head(a, 64 * 1024)?;
    if b.get(0x202..0x206) != Some(b"HdrS") {
        return Ok(None);
    }
    let Some(ptr) = b
        .get(0x20e..0x210)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
    else {
        return Ok(None);
    };
    if ptr == 0 {
        return Ok(None);
    }
    let start = 0x200 + ptr as usize;
    let Some(s) = b.get(start..) else {
        return Ok(None);
    };
    let end = s.iter().position(|&c| c == 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&s[..end]);
    Ok(text
        .split_whitespace()
        .next()
        .filter(|v| v.len() <= 64)
        .map(str::to_string))
}

/// Read an asset into memory (small assets only: the stub).
pub fn read_all(a: &Asset, limit: u64) -> Result<Vec<u8>> {
    if a.len > limit {
        bail!(
            "asset `{}` ({}) is {} bytes; more than the {} expected for it",
            a.field,
            a.origin,
            a.len,
            limit
        );
    }
    let mut v = Vec::with_capacity(a.len as usize);
    let mut r = crate::layout::Layout::new(a.len);
    r.put_file(0, a.file.clone(), 0, a.len)?;
    r.reader().read_to_end(&mut v)?;
    Ok(v)
}
