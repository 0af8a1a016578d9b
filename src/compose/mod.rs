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
//! | …                | `metal-iso`: FAT with `config.yaml` (only with metal-iso delivery) |
//! | …                | `edgeimage-manifest`: 1 MiB, the signed manifest (written last, see [`crate::artifact::manifest`]) |
//! | last 33          | backup GPT                                |

pub mod cpio;
pub mod esp;
pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod initramfs;
pub mod squashfs;
pub mod uki;

use anyhow::{Context, Result};

use crate::assets::{self, BootAssets};
use crate::format::meta;
use crate::layout::Layout;
use crate::plan::Plan;
use crate::profile::{Profile, META_SIZE};

/// First usable offset: partitions start at 1 MiB.
pub const FIRST_OFFSET: u64 = 1 << 20;

use crate::config::delivery::METAL_ISO_LABEL;

/// GPT type of FAT data partitions (the `metal-iso` configuration partition, the installer
/// stick's payload and records): Microsoft basic data.
pub const TYPE_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// GPT type of the partition that carries the signed manifest: edgeimage's own type (UUID
/// version 8 from SHA-256 of "edgeimage: signed manifest partition"), so that nothing mounts
/// or claims it.
pub const TYPE_MANIFEST: &str = "3258B288-CCD2-850D-9B84-E87EF83EC735";
/// Label of that partition.
pub const MANIFEST_LABEL: &str = "edgeimage-manifest";
pub use crate::profile::MANIFEST_PART_SIZE;

/// Where the metal-iso partition starts: after the ESP and META.
pub fn metal_iso_offset(profile: &Profile) -> u64 {
    FIRST_OFFSET + profile.esp_size + META_SIZE
}

/// A partition as placed in the image (also how the manifest names its own partition).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placed {
    /// GPT entry number (1-based).
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
}

/// The composed image.
pub struct Composition {
    /// The image, with the manifest partition unmapped (its content is made after the rest
    /// has been hashed).
    pub layout: Layout,
    /// The partitions the manifest describes, in GPT order.
    pub partitions: Vec<Placed>,
    /// The partition that carries the manifest: the last one in the GPT.
    pub manifest_partition: Placed,
    /// The GPT disk GUID.
    pub disk_guid: String,
    pub uki_size: u64,
    /// The extension layers packed into the initrd.
    pub layers: Vec<initramfs::LayerInfo>,
    /// The Talos installer image for upgrades (`[upgrade_image]`).
    pub upgrade_image: Option<crate::upgrade_image::UpgradeImage>,
    /// What the image cache partition holds (the upgrade image included).
    pub cache_entries: Vec<crate::imagecache::CacheEntry>,
}

/// A partition to place: GPT name (also the label its GUID derives from), type GUID, and
/// content (the partition is exactly as long as the content).
pub type PartitionContent<'a> = (&'a str, &'a str, &'a Layout);

/// Lay `parts` out one after another from [`FIRST_OFFSET`] on a disk of `disk_size` bytes of
/// `block`-byte logical blocks, with the partition table (GUIDs derived from the namespace
/// `ns`, see [`gpt`]) and each partition's content placed. Returns the disk and where each
/// partition went.
pub fn place_partitions(
    disk_size: u64,
    ns: &[u8; 16],
    parts: &[PartitionContent],
    block: u64,
) -> Result<(Layout, Vec<Placed>)> {
    let mut specs = Vec::new();
    let mut placed = Vec::new();
    let mut offset = FIRST_OFFSET;
    for &(label, ty, content) in parts {
        let size = content.len();
        if size == 0 || size % block != 0 {
            anyhow::bail!(
                "partition {label}: {size} bytes is not a positive number of {block}-byte blocks"
            );
        }
        let type_guid: uuid::Uuid = ty.parse()?;
        specs.push(gpt::PartSpec {
            label: label.to_string(),
            type_guid,
            first_lba: offset / block,
            sectors: size / block,
        });
        placed.push(Placed {
            number: placed.len() as u32 + 1,
            label: label.to_string(),
            type_guid: ty.to_string(),
            guid: gpt::guid_v8(ns, label).to_string(),
            offset,
            size,
        });
        offset += size;
    }
    let mut layout = gpt::table(disk_size, ns, &specs, block)?;
    for (p, (_, _, content)) in placed.iter().zip(parts) {
        layout.put_layout(p.offset, content)?;
    }
    Ok((layout, placed))
}

/// GPT name of the image cache partition, which Talos finds it by (`createVolumeConfigDisk`
/// in `internal/app/machined/pkg/controllers/cri/image_cache_config.go`, v1.12.5:
/// `volume.partition_label == "IMAGECACHE"`); also the filesystem's label, as Talos's imager
/// formats it (`mkfs.ext4 -L IMAGECACHE`).
pub const IMAGE_CACHE_LABEL: &str = "IMAGECACHE";

/// The ext4 filesystem of the image cache, sized to its content plus the free space asked
/// for, with a UUID derived from the partition's GUID.
fn image_cache_partition(
    c: &crate::imagecache::CachePlan,
    upgrade: Option<&crate::upgrade_image::UpgradeImage>,
    ns: &[u8; 16],
    epoch: u64,
) -> Result<(Layout, Vec<crate::imagecache::CacheEntry>)> {
    let uuid = *gpt::guid_v8(ns, IMAGE_CACHE_LABEL).as_bytes();
    // The upgrade installer image goes into the cache too: an upgrade needs no registry.
    let mut cache = c.cache.clone();
    if let Some(u) = upgrade {
        cache.add(&crate::imagecache::CachedImage {
            reference: u.reference.clone(),
            image: u.image.clone(),
        })?;
    }
    let fs = ext4::build(&ext4::Ext4Input {
        tree: &cache.tree,
        label: IMAGE_CACHE_LABEL,
        uuid,
        epoch,
        size: ext4::Size::Fit { free: c.free },
        spare_inodes: 64,
    })
    .context("writing the image cache filesystem")?;
    Ok((fs.layout, cache.entries))
}

/// The FAT volume serial of a partition: the first 4 bytes of its GUID.
pub fn volume_id(guid: &uuid::Uuid) -> u32 {
    let b = guid.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Largest stub accepted (systemd's are about 100 KiB).
pub const STUB_LIMIT: u64 = 16 << 20;

/// What the base initramfs's root filesystem gives the composer: the combined `modules.dep`
/// layer when an extension carries kernel modules ([`crate::extension::modules`]), and the
/// kernel release (the name of its module directory) for the UKI's `.uname` when neither the
/// profile nor the kernel's header says it (arm64 kernels carry no header): Talos's arm64 UKIs
/// have `.uname` too. The root filesystem is read only when one of them is needed; a base
/// initramfs without a module tree then gives no `.uname`, but is an error for modules.
fn from_base_rootfs(
    profile: &Profile,
    base: &Layout,
    origin: &str,
    plan: &Plan,
    kernel_version: Option<&str>,
) -> Result<(Option<crate::extension::Extension>, Option<String>)> {
    use crate::extension::{modules, modules_root};
    let with_modules = plan
        .extensions
        .iter()
        .any(|e| modules::carries_modules(e, &profile.talos));
    if !with_modules && kernel_version.is_some() {
        return Ok((None, None));
    }
    let tree = assets::rootfs::BaseRootfs::extract(base, origin).and_then(|r| {
        let t = r.modules(modules_root(&profile.talos))?;
        Ok((t.kver.clone(), r))
    });
    if !with_modules {
        return Ok((None, tree.ok().map(|t| t.0)));
    }
    let (_, rootfs) =
        tree.context("reading the base initramfs for the extensions' kernel modules")?;
    let tree = rootfs.modules(modules_root(&profile.talos))?;
    let sig_enforce = plan
        .cmdline
        .split_whitespace()
        .any(|a| a == "module.sig_enforce=1");
    let layer = modules::modules_layer(&tree, &plan.extensions, &profile.talos, sig_enforce)
        .context("building the combined modules.dep layer")?;
    Ok((layer, Some(tree.kver.clone())))
}

/// Compose the disk image for a profile from checked assets and its resolved plan.
pub fn compose(profile: &Profile, a: &BootAssets, plan: &Plan, epoch: u64) -> Result<Composition> {
    let stub = assets::read_all(&a.systemd_stub, STUB_LIMIT)?;
    let file_layout = |asset: &assets::Asset| -> Result<Layout> {
        let mut l = Layout::new(asset.len);
        l.put_file(0, asset.file.clone(), 0, asset.len)?;
        Ok(l)
    };
    let kernel = file_layout(&a.kernel)?;
    let base = file_layout(&a.initramfs)?;
    let (modules_dep, base_kver) = from_base_rootfs(
        profile,
        &base,
        &a.initramfs.origin,
        plan,
        a.kernel_version.as_deref(),
    )?;
    let uname = a.kernel_version.clone().or(base_kver);
    let (initrd, layers) = if plan.extensions.is_empty() {
        (base, Vec::new())
    } else {
        let packed = initramfs::extensions_archive(&plan.extensions, modules_dep.as_ref(), epoch)
            .context("packing the system extensions")?;
        (initramfs::compose_initrd(&base, &packed)?, packed.layers)
    };
    let osrel = profile.talos.os_release();
    let profiles: Vec<uki::UkiProfile> = plan
        .boot_profiles
        .iter()
        .map(|b| uki::UkiProfile::new(b.id, b.title, b.cmdline.clone()))
        .collect();
    let uki = uki::build(&uki::UkiInput {
        stub: &stub,
        osrel: &osrel,
        cmdline: &plan.cmdline,
        uname: uname.as_deref(),
        kernel: &kernel,
        initrd: &initrd,
        profiles: &profiles,
        epoch,
    })
    .with_context(|| format!("assembling the UKI from {}", a.systemd_stub.origin))?;
    let uki_size = uki.len();
    let upgrade_image = match &profile.upgrade_image {
        Some(spec) => Some(
            crate::upgrade_image::build(
                spec,
                profile.arch,
                &uki,
                &file_layout(&a.systemd_boot)?,
                epoch,
            )
            .with_context(|| format!("profile {}: [upgrade_image]", profile.path.display()))?,
        ),
        None => None,
    };

    let ns = gpt::namespace(&profile.name);
    let esp_guid = gpt::guid_v8(&ns, esp::LABEL);
    let esp_layout = esp::build(esp::EspInput {
        size: Some(profile.esp_size),
        first_lba: FIRST_OFFSET / plan.sector_size,
        sector_size: plan.sector_size,
        volume_id: volume_id(&esp_guid),
        epoch,
        arch: profile.arch,
        uki_path: esp::uki_path(&profile.talos),
        loader_conf: esp::LOADER_CONF,
        systemd_boot: file_layout(&a.systemd_boot)?,
        uki,
    })?;
    let meta_layout = meta::partition(&plan.meta)?;
    let metal_iso = plan.config.as_ref().and_then(|c| c.metal_iso.as_ref());

    let mut specs = vec![
        (esp::LABEL, gpt::TYPE_EFI, &esp_layout),
        (meta::META_LABEL, gpt::TYPE_LINUX_FS, &meta_layout),
    ];
    if let Some(iso) = metal_iso {
        specs.push((METAL_ISO_LABEL, TYPE_BASIC_DATA, iso));
    }
    let (cache_layout, cache_entries) = match &plan.image_cache {
        Some(c) => {
            let (l, e) = image_cache_partition(c, upgrade_image.as_ref(), &ns, epoch)?;
            (Some(l), e)
        }
        None => (None, Vec::new()),
    };
    if let Some(l) = &cache_layout {
        specs.push((IMAGE_CACHE_LABEL, gpt::TYPE_LINUX_FS, l));
        let used: u64 = specs.iter().map(|s| s.2.len()).sum::<u64>()
            + FIRST_OFFSET
            + MANIFEST_PART_SIZE
            + FIRST_OFFSET;
        if used > profile.disk_size {
            anyhow::bail!(
                "profile {}: the image cache partition needs {} MiB, and with the other \
                 partitions the image needs {} MiB, more than disk_size ({} MiB): raise \
                 disk_size to at least {} MiB or cache fewer images",
                profile.path.display(),
                l.len().div_ceil(1 << 20),
                used.div_ceil(1 << 20),
                profile.disk_size >> 20,
                used.div_ceil(1 << 20)
            );
        }
    }
    let manifest_layout = Layout::new(MANIFEST_PART_SIZE);
    specs.push((MANIFEST_LABEL, TYPE_MANIFEST, &manifest_layout));
    let (layout, mut placed) = place_partitions(profile.disk_size, &ns, &specs, plan.sector_size)?;
    // The manifest partition was placed last; its content is written after the rest.
    let manifest_partition = placed
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no partitions were placed"))?;
    Ok(Composition {
        layout,
        manifest_partition,
        disk_guid: gpt::guid_v8(&ns, gpt::DISK_LABEL).to_string(),
        partitions: placed,
        uki_size,
        layers,
        upgrade_image,
        cache_entries,
    })
}
