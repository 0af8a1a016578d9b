//! Resolving a profile's inputs into what the composer needs: the schematic's additions, the
//! system extensions, the machine configuration and its delivery, the META values and the
//! final kernel command line. Every input is read and checked here, before anything is
//! composed.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::delivery::{METAL_ISO_ARG, METAL_ISO_LABEL};
use crate::config::{self, machine::MachineConfig, schematic::Schematic};
use crate::extension::{self, Extension};
use crate::layout::Layout;
use crate::profile::{Delivery, MetaValue, Profile};

/// META key of the metal network configuration.
pub const META_NETWORK: u8 = 0x0a;

/// What a build composes, beyond the boot assets.
pub struct Plan {
    /// The final kernel command line.
    pub cmdline: String,
    /// The disk's logical block size: the profile's `sector_size`, or the schematic's
    /// `diskImage.sectorSize`, or 512.
    pub sector_size: u64,
    /// The UKI's boot profiles for the profile's Talos version (none before v1.10).
    pub boot_profiles: Vec<crate::talos::BootProfile>,
    /// META values, sorted by key.
    pub meta: Vec<MetaValue>,
    /// Extensions in layer order (the embedded configuration last).
    pub extensions: Vec<Extension>,
    /// The machine configuration, if any (never printed).
    pub config: Option<ConfigPlan>,
    /// The schematic, if the profile names one.
    pub schematic: Option<SchematicPlan>,
    /// The image cache, if the profile has one (checked against the configuration).
    pub image_cache: Option<crate::imagecache::CachePlan>,
}

pub struct ConfigPlan {
    pub delivery: Delivery,
    pub config: MachineConfig,
    /// The `metal-iso` partition (metal-iso delivery).
    pub metal_iso: Option<Layout>,
    /// Where the configuration came from (profile file or the schematic).
    pub source: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SchematicPlan {
    pub path: String,
    pub id: String,
}

/// Read and check every input the profile names besides the boot assets.
pub fn plan(profile: &Profile, epoch: u64) -> Result<Plan> {
    let p = profile.path.display().to_string();

    // Schematic first: it contributes kernel arguments, META values, extensions by name, and
    // possibly the machine configuration.
    let schematic = match &profile.schematic {
        Some(path) => {
            let ctx = || format!("profile {p}: field `schematic`: {}", path.display());
            let bytes =
                crate::input::read(path, crate::input::Kind::Schematic).with_context(ctx)?;
            Some(Schematic::parse(&bytes).with_context(ctx)?)
        }
        None => None,
    };

    if let Some(s) = &schematic {
        let at = profile
            .schematic
            .as_deref()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        unsupported_schematic_fields(s, profile)
            .map_err(|e| anyhow!("profile {p}: field `schematic`: {at}: {e}"))?;
    }

    let sector_size =
        sector_size(profile, schematic.as_ref()).map_err(|e| anyhow!("profile {p}: {e}"))?;

    let mut extensions = Vec::new();
    for (i, e) in profile.extensions.iter().enumerate() {
        let input = extension::ExtensionInput {
            path: e.path.clone(),
            sha256: e.sha256.clone(),
        };
        let ext = extension::load(&input, profile.arch, &profile.talos)
            .with_context(|| format!("profile {p}: field `extensions[{i}]`"))?;
        extensions.push(ext);
    }
    if let Some(s) = &schematic {
        for wanted in s.official_extensions() {
            let short = wanted.rsplit('/').next().unwrap_or(wanted);
            if !extensions.iter().any(|e| e.metadata.name == short) {
                bail!(
                    "schematic {} names extension {wanted:?}, but no extension named {short:?} is among the profile's [[extensions]]; add its archive to {p}",
                    profile.schematic.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
                );
            }
        }
    }

    if let Some(s) = &schematic {
        extensions.push(s.extension());
    }

    // META: the schematic's values, then the profile's, then the network file.
    let mut meta: Vec<MetaValue> = Vec::new();
    let mut put = |m: MetaValue, source: &str| -> Result<()> {
        if meta.iter().any(|x| x.key == m.key) {
            bail!(
                "META key 0x{:02x} is set twice (again by {source}); set it in one place",
                m.key
            );
        }
        meta.push(m);
        Ok(())
    };
    if let Some(s) = &schematic {
        for (i, (key, value)) in s.meta().iter().enumerate() {
            // Image Factory takes any key; a build does not take Talos's own (as in [meta]).
            if let Some(why) = crate::format::meta::refuse_key(*key) {
                bail!(
                    "profile {p}: field `schematic`: {}: field `customization.meta[{i}].key`: {why}",
                    profile.schematic.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
                );
            }
            put(
                MetaValue {
                    key: *key,
                    value: value.as_bytes().to_vec(),
                },
                "the schematic",
            )?;
        }
    }
    for m in &profile.meta {
        put(m.clone(), "the profile's [meta]")?;
    }
    if let Some(net) = &profile.network {
        let bytes = crate::input::read(net, crate::input::Kind::NetworkConfig)
            .with_context(|| format!("profile {p}: field `network`"))?;
        config::network::check_network_config(&bytes)
            .with_context(|| format!("profile {p}: field `network`: {}", net.display()))?;
        put(
            MetaValue {
                key: META_NETWORK,
                value: bytes,
            },
            "the profile's `network`",
        )?;
    }
    for m in &meta {
        if m.key == META_NETWORK {
            config::network::check_network_config(&m.value)
                .context("META key 0x0a (network configuration)")?;
        }
    }
    meta.sort_by_key(|m| m.key);
    crate::format::meta::check_capacity(&meta)?;

    // Machine configuration: from the profile, or embedded in the schematic.
    let from_schematic = schematic
        .as_ref()
        .and_then(|s| s.embedded_machine_configuration());
    let config = match (&profile.config, from_schematic) {
        (Some(_), Some(_)) => bail!(
            "profile {p} sets [config] and its schematic carries embeddedMachineConfiguration; keep one"
        ),
        (Some(spec), None) => Some((
            config::machine::load(&spec.path, &spec.patches)
                .with_context(|| format!("profile {p}: field `config.path`"))?,
            spec.delivery,
            spec.metal_iso_size,
            spec.path.display().to_string(),
        )),
        (None, Some(bytes)) => Some((
            MachineConfig::from_bytes(
                bytes.as_bytes().to_vec(),
                "schematic embeddedMachineConfiguration",
            )?,
            Delivery::Embedded,
            0,
            "schematic".to_string(),
        )),
        (None, None) => None,
    };

    let mut config_args = Vec::new();
    let config = match config {
        None => None,
        Some((cfg, delivery, iso_size, source)) => {
            let metal_iso = match delivery {
                Delivery::Embedded => {
                    extensions.push(config::delivery::embedded_extension(&cfg, &profile.talos)?);
                    None
                }
                Delivery::Inline => {
                    let base = profile
                        .cmdline_with(&schematic_args(&schematic), &[])
                        .map_err(|e| anyhow!("profile {p}: field `kernel_args`: {e}"))?;
                    // The longest command line is the reset profile's: the base plus its argument.
                    let reserve = profile
                        .talos
                        .boot_profiles("")
                        .iter()
                        .filter_map(|b| b.cmdline.as_ref().map(String::len))
                        .max()
                        .unwrap_or(0);
                    config_args =
                        config::delivery::inline_args(&cfg, &base, profile.arch, reserve)?;
                    None
                }
                Delivery::MetalIso => {
                    config_args.push(METAL_ISO_ARG.to_string());
                    let ns = crate::compose::gpt::namespace(&profile.name);
                    let g = crate::compose::gpt::guid_v8(&ns, METAL_ISO_LABEL);
                    let first_lba = crate::compose::metal_iso_offset(profile) / sector_size;
                    Some(config::delivery::metal_iso_partition(
                        &cfg,
                        &config::delivery::MetalIsoGeometry {
                            size: iso_size,
                            epoch,
                            volume_id: crate::compose::volume_id(&g),
                            first_lba: u32::try_from(first_lba)?,
                            sector_size,
                        },
                    )?)
                }
            };
            Some(ConfigPlan {
                delivery,
                config: cfg,
                metal_iso,
                source,
            })
        }
    };
    let cmdline = profile
        .cmdline_with(&schematic_args(&schematic), &config_args)
        .map_err(|e| anyhow!("profile {p}: the kernel command line: {e}"))?;
    let boot_profiles = profile.talos.boot_profiles(&cmdline);
    for b in &boot_profiles {
        if let Some(c) = &b.cmdline {
            crate::profile::check_cmdline(c, profile.arch).map_err(|e| {
                anyhow!(
                    "profile {p}: field `kernel_args`: the UKI's {} boot profile (Talos {} adds \
                     it, booting the command line plus {}): {e}",
                    b.id,
                    profile.talos,
                    crate::talos::RESET_PROFILE_ARG
                )
            })?;
        }
    }

    let schematic = match (&profile.schematic, &schematic) {
        (Some(path), Some(s)) => Some(SchematicPlan {
            path: path.display().to_string(),
            id: s.id(),
        }),
        _ => None,
    };
    let image_cache = match &profile.image_cache {
        Some(spec) => Some(crate::imagecache::load(
            spec,
            config.as_ref().map(|c| (&c.config, c.source.as_str())),
            &profile.talos,
            profile.arch,
            &p,
        )?),
        None => None,
    };
    Ok(Plan {
        cmdline,
        sector_size,
        boot_profiles,
        meta,
        extensions,
        config,
        schematic,
        image_cache,
    })
}

fn schematic_args(s: &Option<Schematic>) -> Vec<String> {
    s.as_ref()
        .map(|s| s.extra_kernel_args().to_vec())
        .unwrap_or_default()
}

/// The logical block size: the profile's `sector_size` and the schematic's
/// `diskImage.sectorSize` (the Image Factory's field for Talos's imager `diskSectorSize`,
/// `pkg/imager/profile/output.go`) must agree when both are set; default 512.
fn sector_size(profile: &Profile, schematic: Option<&Schematic>) -> Result<u64> {
    let from_schematic = schematic.and_then(|s| s.sector_size());
    match (profile.sector_size, from_schematic) {
        (Some(a), Some(b)) if a != b => bail!(
            "field `sector_size` is {a} but the schematic's `customization.diskImage.sectorSize` \
             is {b}; set one of them"
        ),
        (_, Some(n)) if n != 512 && n != 4096 => bail!(
            "field `schematic`: `customization.diskImage.sectorSize` is {n}; edgeimage writes \
             512 or 4096-byte logical blocks"
        ),
        (a, b) => Ok(a.or(b).unwrap_or(512)),
    }
}

/// The schematic fields edgeimage does not build yet: refused, never ignored, so a build never
/// makes something other than the schematic says.
fn unsupported_schematic_fields(s: &Schematic, profile: &Profile) -> Result<()> {
    let talos = &profile.talos;
    if let Some((image, name)) = s.overlay() {
        bail!(
            "field `overlay` ({name} from {image}): board overlays (SBC firmware, device trees, \
             u-boot) are not built by edgeimage yet; remove `overlay` and build for UEFI \
             hardware (Talos {talos})"
        );
    }
    // Talos's `selectBootloader` (`pkg/imager/profile/output.go`): an unset bootloader is
    // dual-boot (GRUB + sd-boot) on amd64 from v1.10, GRUB before, sd-boot on arm64.
    // edgeimage builds UEFI media with sd-boot; an unset field states nothing, a stated GRUB
    // path is refused.
    match s.bootloader() {
        None | Some("sd-boot") => {}
        Some(other) => bail!(
            "field `customization.bootloader`: {other:?} for Talos {talos} on {} means a GRUB \
             (BIOS) boot path, which edgeimage does not build yet: it builds UEFI media with \
             systemd-boot only; set `bootloader: sd-boot`",
            profile.arch
        ),
    }
    let (enroll, well_known) = s.secureboot();
    if enroll.is_some() || well_known {
        bail!(
            "field `customization.secureboot`: SecureBoot-signed media (signed systemd-boot and \
             UKI, key enrolment, PCR policy) are not built by edgeimage yet; remove \
             `secureboot` to build unsigned UEFI media for Talos {talos}"
        );
    }
    Ok(())
}
