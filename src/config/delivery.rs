//! How the machine configuration reaches the node without a network.
//!
//! - [`Delivery::Embedded`] (Talos ≥ 1.12): the virtual `embedded-config` extension, exactly
//!   as Talos's imager builds it (`pkg/imager/embed.go`, `BuildEmbeddedConfigExtension`):
//!   manifest name `embedded-config`, version the hex SHA-256 of the config bytes, author
//!   `Imager`, description `Virtual extension which embeds the machine configuration.`,
//!   compatibility `>= 1.0.0`; `rootfs/usr/local/etc/talos/config.yaml`
//!   (`constants.EmbeddedConfigDirectory` + `constants.ConfigFilename`) with the mode of the
//!   imager's tar header: **0000** up to v1.12, **0400** from v1.13.0 (see
//!   [`TalosVersion::embedded_config_mode`]; root reads it either way) and the PAX record
//!   `SCHILY.xattr.security.selinux` = `constants.StateSelinuxLabel`
//!   (`system_u:object_r:system_state_t:s0`, no trailing NUL); the four directories above it
//!   are listed with mode 0755.
//! - [`Delivery::Inline`]: `talos.config.inline=` + standard base64 (with padding) of the
//!   zstd-compressed config. Talos's `AcquireController.loadFromCmdline` concatenates every
//!   occurrence of the parameter, base64-decodes (`StdEncoding`) and zstd-decodes the result;
//!   any zstd level decodes, so level 19 is used to fit more. The kernel keeps at most
//!   [`Arch::max_cmdline`] bytes of command line (2047) and cuts the rest off without a word,
//!   so a build whose command line is longer is refused.
//! - [`Delivery::MetalIso`]: `talos.config=metal-iso` on the command line, and a small FAT
//!   filesystem labelled `metal-iso` with `config.yaml` at its root. Talos's metal platform
//!   (`platform/metal/metal.go`, `readConfigFromISO`) matches the volume with the CEL
//!   expression `volume.label == 'metal-iso' || volume.partition_label == 'metal-iso'`:
//!   case-sensitive, any filesystem Talos can mount. So the FAT label is stored lowercase, and
//!   the GPT partition holding it should be named `metal-iso` too.

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::machine::MachineConfig;
use sha2::Digest;

use crate::compose::fat::{self, FatFile, FatParams, LabelRule};
use crate::extension::{Extension, Metadata};
use crate::layout::Layout;
use crate::talos::{Arch, TalosVersion};
use crate::tree::{Node, Tree};

/// How the configuration is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    Embedded,
    Inline,
    MetalIso,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Embedded => "embedded",
            Delivery::Inline => "inline",
            Delivery::MetalIso => "metal-iso",
        }
    }
}

/// Name of the virtual extension (the imager's manifest `name`).
pub const EMBEDDED_NAME: &str = "embedded-config";
/// Path of the configuration inside the extension's `rootfs/`.
pub const EMBEDDED_PATH: &str = "usr/local/etc/talos/config.yaml";
/// `constants.StateSelinuxLabel`, the value of `security.selinux` on the embedded file.
pub const STATE_SELINUX_LABEL: &str = "system_u:object_r:system_state_t:s0";
/// Kernel parameter of inline delivery.
pub const INLINE_PARAM: &str = "talos.config.inline";
/// Filesystem (and partition) label Talos looks for (`constants.MetalConfigISOLabel`).
pub const METAL_ISO_LABEL: &str = "metal-iso";
/// The file Talos reads at the root of the `metal-iso` volume.
pub const METAL_ISO_FILE: &str = "config.yaml";
/// The kernel argument that makes Talos read the `metal-iso` volume.
pub const METAL_ISO_ARG: &str = "talos.config=metal-iso";
/// 1 MiB: a FAT12 volume with about 1 MB of room, far more than any configuration needs.
pub const METAL_ISO_DEFAULT_SIZE: u64 = 1 << 20;
/// zstd level of inline delivery.
const INLINE_ZSTD_LEVEL: i32 = 19;

/// The virtual `embedded-config` extension holding `cfg`, placed last among the extensions.
pub fn embedded_extension(cfg: &MachineConfig, talos: &TalosVersion) -> Result<Extension> {
    if talos.major == 1 && talos.minor < 12 {
        bail!(
            "embedded machine configuration needs Talos v1.12 or later, the profile's Talos is \
             {talos}: use inline or metal-iso delivery"
        );
    }
    let mut rootfs = Tree::new();
    let mut dir = String::new();
    for part in ["usr", "local", "etc", "talos"] {
        if !dir.is_empty() {
            dir.push('/');
        }
        dir.push_str(part);
        rootfs.insert(dir.clone(), Node::dir(0o755));
    }
    let mut file = Node::file(
        Layout::from_bytes(cfg.bytes().to_vec()),
        talos.embedded_config_mode(),
    );
    file.xattrs.insert(
        "security.selinux".to_string(),
        STATE_SELINUX_LABEL.as_bytes().to_vec(),
    );
    rootfs.insert(EMBEDDED_PATH, file);
    Ok(Extension {
        metadata: Metadata {
            name: EMBEDDED_NAME.to_string(),
            version: cfg.sha256().to_string(),
            author: "Imager".to_string(),
            description: "Virtual extension which embeds the machine configuration.".to_string(),
            compatibility: Some(">= 1.0.0".to_string()),
            extra_info: None,
        },
        origin: "virtual".to_string(),
        sha256: cfg.sha256().to_string(),
        rootfs,
    })
}

/// A command line safe to show: each `talos.config.inline=` value (the machine configuration,
/// compressed) is replaced by `<redacted:sha256=HEX>`, HEX being the SHA-256 of the value.
pub fn redact_cmdline(cmdline: &str) -> String {
    let prefix = format!("{INLINE_PARAM}=");
    cmdline
        .split(' ')
        .map(|a| match a.strip_prefix(&prefix) {
            Some(v) => format!(
                "{prefix}<redacted:sha256={}>",
                hex::encode(sha2::Sha256::digest(v.as_bytes()))
            ),
            None => a.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kernel arguments of inline delivery: one `talos.config.inline=<base64(zstd(cfg))>`.
/// `base_cmdline` is the rest of the command line; the whole, plus `reserve` bytes a boot
/// profile adds to it, must fit [`Arch::max_cmdline`].
pub fn inline_args(
    cfg: &MachineConfig,
    base_cmdline: &str,
    arch: Arch,
    reserve: usize,
) -> Result<Vec<String>> {
    if base_cmdline
        .split_whitespace()
        .any(|a| a.starts_with(&format!("{INLINE_PARAM}=")))
    {
        bail!(
            "the kernel command line already has {INLINE_PARAM}=; Talos would concatenate both \
             values into one broken configuration"
        );
    }
    let compressed = zstd::bulk::compress(cfg.bytes(), INLINE_ZSTD_LEVEL)
        .context("compressing the machine configuration")?;
    let arg = format!(
        "{INLINE_PARAM}={}",
        base64::engine::general_purpose::STANDARD.encode(&compressed)
    );
    let base = base_cmdline.trim();
    let total = if base.is_empty() {
        arg.len()
    } else {
        base.len() + 1 + arg.len()
    };
    let max = arch.max_cmdline().saturating_sub(reserve);
    if total > max {
        let profile = if reserve > 0 {
            format!(" ({reserve} bytes are kept for the UKI's reset profile, which adds to it)")
        } else {
            String::new()
        };
        bail!(
            "the machine configuration does not fit the kernel command line: {} bytes, {} \
             compressed, {} as {INLINE_PARAM}=…; with the other {} bytes of arguments that is \
             {total} bytes, the {arch} kernel keeps at most {max}{profile} (it would cut the \
             rest off and Talos could not decode it): use embedded or metal-iso delivery",
            cfg.bytes().len(),
            compressed.len(),
            arg.len(),
            base.len(),
        );
    }
    Ok(vec![arg])
}

/// Where and how a `metal-iso` volume is made: its size, the build's `SOURCE_DATE_EPOCH`, its
/// serial number, its first sector (`BPB_HiddSec`) and the disk's sector size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetalIsoGeometry {
    pub size: u64,
    pub epoch: u64,
    pub volume_id: u32,
    pub first_lba: u32,
    pub sector_size: u64,
}

/// The `metal-iso` partition: a FAT12/FAT16 volume labelled `metal-iso`, with `config.yaml`
/// at its root.
pub fn metal_iso_partition(cfg: &MachineConfig, g: &MetalIsoGeometry) -> Result<Layout> {
    metal_iso_fat(cfg.bytes(), g)
}

/// [`metal_iso_partition`] for any `config.yaml` bytes: the same volume, byte for byte, for
/// the same arguments (a flasher writes a device's own configuration with it, see
/// [`crate::personalize::metal_iso_partition`]).
pub fn metal_iso_fat(config: &[u8], g: &MetalIsoGeometry) -> Result<Layout> {
    let params = FatParams {
        sector_size: g.sector_size,
        ..FatParams::new(g.size, METAL_ISO_LABEL, g.volume_id, g.first_lba, g.epoch)
    };
    let files = [FatFile {
        path: METAL_ISO_FILE.to_string(),
        content: Layout::from_bytes(config.to_vec()),
    }];
    fat::build_fat(&params, &files, LabelRule::AllowLowercase)
        .context("composing the metal-iso configuration partition")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::machine::tests::{controlplane_yaml, SECRET};
    use crate::tree::NodeKind;
    use std::io::Read;

    fn cfg() -> MachineConfig {
        MachineConfig::from_bytes(controlplane_yaml().into_bytes(), "test").unwrap()
    }

    #[test]
    fn delivery_names() {
        for (d, s) in [
            (Delivery::Embedded, "\"embedded\""),
            (Delivery::Inline, "\"inline\""),
            (Delivery::MetalIso, "\"metal-iso\""),
        ] {
            assert_eq!(serde_json::to_string(&d).unwrap(), s);
            assert_eq!(serde_json::from_str::<Delivery>(s).unwrap(), d);
            assert_eq!(format!("\"{}\"", d.as_str()), s);
        }
        assert!(serde_json::from_str::<Delivery>("\"metal_iso\"").is_err());
    }

    #[test]
    fn embedded_extension_matches_the_imager() {
        let c = cfg();
        let e = embedded_extension(&c, &TalosVersion::parse("v1.12.5").unwrap()).unwrap();
        assert_eq!(e.metadata.name, "embedded-config");
        assert_eq!(e.metadata.version, c.sha256());
        assert_eq!(e.metadata.version.len(), 64);
        assert_eq!(e.metadata.author, "Imager");
        assert_eq!(
            e.metadata.description,
            "Virtual extension which embeds the machine configuration."
        );
        assert_eq!(e.metadata.compatibility.as_deref(), Some(">= 1.0.0"));
        assert_eq!(
            e.rootfs.entries.keys().collect::<Vec<_>>(),
            [
                "usr",
                "usr/local",
                "usr/local/etc",
                "usr/local/etc/talos",
                "usr/local/etc/talos/config.yaml"
            ]
        );
        let f = &e.rootfs.entries[EMBEDDED_PATH];
        // v1.12: `Mode: 0o000` in pkg/imager/embed.go (BuildEmbeddedConfigExtension).
        assert_eq!(f.mode, 0o000);
        assert_eq!((f.uid, f.gid), (0, 0));
        assert_eq!(
            f.xattrs["security.selinux"],
            b"system_u:object_r:system_state_t:s0"
        );
        let NodeKind::File(l) = &f.kind else { panic!() };
        assert_eq!(l.to_vec().unwrap(), c.bytes());
        // v1.13.0 and later: `Mode: 0o400` (same function).
        for tag in ["v1.13.0", "v1.14.0"] {
            let e = embedded_extension(&c, &TalosVersion::parse(tag).unwrap()).unwrap();
            assert_eq!(e.rootfs.entries[EMBEDDED_PATH].mode, 0o400, "{tag}");
        }
        // Talos 1.11 has no embedded configuration.
        let err = embedded_extension(&c, &TalosVersion::parse("v1.11.3").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs Talos v1.12 or later") && err.contains("v1.11.3"),
            "{err}"
        );
        assert!(err.contains("use inline or metal-iso delivery"), "{err}");
    }

    #[test]
    fn inline_round_trips_and_respects_the_limit() {
        let small = MachineConfig::from_bytes(
            crate::config::machine::tests::worker_yaml().into_bytes(),
            "t",
        )
        .unwrap();
        let base = "talos.platform=metal console=tty0";
        let args = inline_args(&small, base, Arch::Amd64, 0).unwrap();
        assert_eq!(args.len(), 1);
        let b64 = args[0].strip_prefix("talos.config.inline=").unwrap();
        let z = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(&z[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, small.bytes());
        // Deterministic.
        assert_eq!(inline_args(&small, base, Arch::Amd64, 0).unwrap(), args);
        // Too long: sizes and advice, no secret.
        let max = Arch::Amd64.max_cmdline();
        let long_base = "x".repeat(max - args[0].len());
        let e = inline_args(&small, &long_base, Arch::Amd64, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit the kernel command line"), "{e}");
        assert!(e.contains(&format!("{} bytes", small.bytes().len())), "{e}");
        // The x86 kernel keeps 2047 bytes (COMMAND_LINE_SIZE 2048), not 4095.
        assert!(e.contains("amd64 kernel keeps at most 2047"), "{e}");
        assert!(e.contains("use embedded or metal-iso delivery"), "{e}");
        assert!(!e.contains(SECRET));
        // Exactly at the limit is fine.
        let fit = "x".repeat(max - args[0].len() - 1);
        assert_eq!(fit.len() + 1 + args[0].len(), 2047);
        inline_args(&small, &fit, Arch::Amd64, 0).unwrap();
        inline_args(&small, &fit, Arch::Arm64, 0).unwrap();
        // The reset profile's 48 bytes are kept free.
        let e = inline_args(&small, &fit, Arch::Amd64, 48).unwrap_err();
        assert!(
            e.to_string().contains("at most 1999 (48 bytes are kept"),
            "{e}"
        );
        let over = "x".repeat(max - args[0].len());
        let e = inline_args(&small, &over, Arch::Arm64, 0).unwrap_err();
        assert!(
            e.to_string().contains("arm64 kernel keeps at most 2047"),
            "{e}"
        );
        let e = inline_args(&small, "a talos.config.inline=abc", Arch::Amd64, 0).unwrap_err();
        assert!(
            e.to_string().contains("already has talos.config.inline="),
            "{e}"
        );
    }

    fn geometry(size: u64, sector_size: u64) -> MetalIsoGeometry {
        MetalIsoGeometry {
            size,
            epoch: 1_767_225_600,
            volume_id: 0xABCD_0123,
            first_lba: 2048,
            sector_size,
        }
    }

    #[test]
    fn metal_iso_partition_is_a_clean_lowercase_fat() {
        let c = cfg();
        let l = metal_iso_partition(&c, &geometry(METAL_ISO_DEFAULT_SIZE, 512)).unwrap();
        assert_eq!(l.len(), METAL_ISO_DEFAULT_SIZE);
        let bytes = l.to_vec().unwrap();
        assert_eq!(&bytes[43..54], b"metal-iso  ");
        assert_eq!(&bytes[54..62], b"FAT12   ");
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), &bytes).unwrap();
        let vol = crate::format::fat::Volume::from_bytes(&bytes).unwrap();
        assert_eq!(vol.label().unwrap(), "metal-iso");
        let entry = vol.find("config.yaml").unwrap().unwrap();
        assert_eq!(vol.read_to_end(&entry, 1 << 20).unwrap(), c.bytes());
        if let Ok(out) = std::process::Command::new("/usr/sbin/fsck.fat")
            .args(["-n", t.path().to_str().unwrap()])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert_eq!(text.lines().count(), 2, "{text}");
        }
        let e = metal_iso_partition(&c, &geometry(64 * 1024 + 100, 512)).unwrap_err();
        assert!(format!("{e:#}").contains("not a multiple of 512"), "{e:#}");
    }

    /// On a disk of 4 KiB logical blocks the volume has 4096-byte sectors (Linux mounts no
    /// FAT whose sectors are smaller than the device's blocks), and `fsck.fat` agrees.
    #[test]
    fn metal_iso_partition_with_4k_sectors() {
        let c = cfg();
        let l = metal_iso_partition(&c, &geometry(METAL_ISO_DEFAULT_SIZE, 4096)).unwrap();
        let bytes = l.to_vec().unwrap();
        assert_eq!(u16::from_le_bytes([bytes[11], bytes[12]]), 4096);
        assert_eq!(&bytes[43..54], b"metal-iso  ");
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), &bytes).unwrap();
        if let Ok(out) = std::process::Command::new("/usr/sbin/fsck.fat")
            .args(["-n", t.path().to_str().unwrap()])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert_eq!(text.lines().count(), 2, "{text}");
        }
        let e = metal_iso_partition(&c, &geometry(METAL_ISO_DEFAULT_SIZE + 512, 4096));
        assert!(format!("{:#}", e.unwrap_err()).contains("not a multiple of 4096"));
    }
}
