//! Composition of the disk image from its parts: the UKI goes into the ESP, the ESP and META
//! into the GPT disk. Everything is a [`Layout`]; nothing large is read here.
//!
//! Disk layout (512-byte LBAs, every partition 1 MiB-aligned, as Talos's UEFI images):
//!
//! | LBA range        | content                                   |
//! |------------------|-------------------------------------------|
//! | 0                | protective MBR                            |
//! | 1 – 33           | primary GPT header and 128 entries        |
//! | 2048 – …         | `EFI`: FAT32 ESP (profile `esp_size`)     |
//! | …                | `META`: 1 MiB Talos ADV                   |
//! | last 33          | backup GPT                                |

pub mod cpio;
pub mod esp;
pub mod fat;
pub mod gpt;
pub mod initramfs;
pub mod meta;
pub mod squashfs;
pub mod uki;

use anyhow::{Context, Result};

use crate::assets::{self, BootAssets};
use crate::layout::Layout;
use crate::profile::{Profile, META_SIZE};

/// First usable offset: partitions start at 1 MiB.
pub const FIRST_OFFSET: u64 = 1 << 20;

/// A partition as placed in the image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Placed {
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
}

/// The composed image.
pub struct Composition {
    pub layout: Layout,
    pub partitions: Vec<Placed>,
    pub uki_size: u64,
}

/// Largest stub accepted (systemd's are about 100 KiB).
const STUB_LIMIT: u64 = 16 << 20;

/// Compose the disk image for a profile from checked assets.
pub fn compose(profile: &Profile, a: &BootAssets, epoch: u64) -> Result<Composition> {
    let stub = assets::read_all(&a.systemd_stub, STUB_LIMIT)?;
    let file_layout = |asset: &assets::Asset| -> Result<Layout> {
        let mut l = Layout::new(asset.len);
        l.put_file(0, asset.file.clone(), 0, asset.len)?;
        Ok(l)
    };
    let kernel = file_layout(&a.kernel)?;
    let initrd = file_layout(&a.initramfs)?;
    let osrel = profile.talos.os_release();
    let uki = uki::build(&uki::UkiInput {
        stub: &stub,
        osrel: &osrel,
        cmdline: &profile.cmdline,
        uname: a.kernel_version.as_deref(),
        kernel: &kernel,
        initrd: &initrd,
        epoch,
    })
    .with_context(|| format!("assembling the UKI from {}", a.systemd_stub.origin))?;
    let uki_size = uki.len();

    let ns = gpt::namespace(&profile.name);
    let esp_guid = gpt::guid_v8(&ns, esp::LABEL);
    let esp_layout = esp::build(esp::EspInput {
        size: profile.esp_size,
        first_lba: FIRST_OFFSET / gpt::SECTOR,
        volume_id: u32::from_le_bytes(esp_guid.as_bytes()[..4].try_into()?),
        epoch,
        arch: profile.arch,
        version: &profile.talos,
        systemd_boot: file_layout(&a.systemd_boot)?,
        uki,
    })?;
    let meta_layout = meta::partition(&profile.meta)?;

    let specs = [
        (esp::LABEL, gpt::TYPE_EFI, profile.esp_size),
        ("META", gpt::TYPE_LINUX_FS, META_SIZE),
    ];
    let mut parts = Vec::new();
    let mut placed = Vec::new();
    let mut offset = FIRST_OFFSET;
    for (label, ty, size) in specs {
        let type_guid: uuid::Uuid = ty.parse()?;
        parts.push(gpt::PartSpec {
            label: label.to_string(),
            type_guid,
            first_lba: offset / gpt::SECTOR,
            sectors: size / gpt::SECTOR,
        });
        placed.push(Placed {
            label: label.to_string(),
            type_guid: ty.to_string(),
            guid: gpt::guid_v8(&ns, label).to_string(),
            offset,
            size,
        });
        offset += size;
    }
    let mut layout = gpt::table(profile.disk_size, &ns, &parts)?;
    layout.put_layout(placed[0].offset, &esp_layout)?;
    layout.put_layout(placed[1].offset, &meta_layout)?;
    Ok(Composition {
        layout,
        partitions: placed,
        uki_size,
    })
}
