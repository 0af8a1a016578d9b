//! The EFI system partition: FAT32 labelled `EFI` holding systemd-boot as the removable-media
//! loader, the UKI where systemd-boot finds it by itself (type #2 entries in `EFI/Linux/`, so
//! no `loader/entries/`), and `loader/loader.conf`.
//!
//! ```text
//! EFI/boot/BOOTX64.efi            systemd-boot (BOOTAA64.efi on arm64)
//! EFI/Linux/Talos-<version>.efi   the UKI
//! loader/loader.conf              a comment line, a blank line, "timeout 10"
//! ```

use anyhow::{Context, Result};

use crate::compose::fat::{self, FatFile, FatParams, LabelRule};
use crate::layout::Layout;
use crate::talos::{Arch, TalosVersion};

/// The loader configuration Talos writes, byte for byte (v1.10 … v1.14, `pkg/imager`'s
/// sd-boot installer: a comment line, a blank line, `timeout 10`).
pub const LOADER_CONF: &str = "# systemd-boot configuration\n\ntimeout 10\n";

/// Volume label and GPT partition name of the ESP.
pub const LABEL: &str = "EFI";

/// Path of the UKI inside the ESP.
pub fn uki_path(version: &TalosVersion) -> String {
    format!("EFI/Linux/Talos-{}.efi", version.tag)
}

/// Path of systemd-boot inside the ESP.
pub fn loader_path(arch: Arch) -> String {
    format!("EFI/boot/{}", arch.efi_boot_name())
}

/// What goes into an ESP.
pub struct EspInput<'a> {
    /// Partition size in bytes; `None`: the smallest FAT32 volume that holds the files (a
    /// whole number of MiB).
    pub size: Option<u64>,
    pub first_lba: u64,
    /// The disk's logical block size (the FAT's sector size).
    pub sector_size: u64,
    pub volume_id: u32,
    pub epoch: u64,
    pub arch: Arch,
    /// Where the UKI goes ([`uki_path`] for a Talos disk image).
    pub uki_path: String,
    /// The text of `loader/loader.conf` ([`LOADER_CONF`] for a Talos disk image).
    pub loader_conf: &'a str,
    pub systemd_boot: Layout,
    pub uki: Layout,
}

/// Compose the ESP: FAT32 labelled [`LABEL`] holding systemd-boot, the UKI and the loader
/// configuration.
pub fn build(input: EspInput) -> Result<Layout> {
    let files = vec![
        FatFile {
            path: loader_path(input.arch),
            content: input.systemd_boot,
        },
        FatFile {
            path: input.uki_path,
            content: input.uki,
        },
        FatFile {
            path: "loader/loader.conf".into(),
            content: Layout::from_bytes(input.loader_conf.as_bytes().to_vec()),
        },
    ];
    let params = FatParams {
        size: input.size.unwrap_or(0),
        label: LABEL.into(),
        volume_id: input.volume_id,
        hidden_sectors: u32::try_from(input.first_lba)
            .context("the ESP starts beyond the 2 TiB a FAT boot sector can describe")?,
        mtime: input.epoch,
        sector_size: input.sector_size,
    };
    match input.size {
        Some(_) => fat::build_fat32(&params, &files),
        None => fat::build_smallest(
            &params,
            &files,
            &[],
            LabelRule::Uppercase,
            fat::min_size_for(input.sector_size),
        ),
    }
    .context("composing the ESP (FAT32)")
}
