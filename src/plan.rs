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
            let bytes = std::fs::read(path).with_context(ctx)?;
            Some(Schematic::parse(&bytes).with_context(ctx)?)
        }
        None => None,
    };

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
        let bytes = std::fs::read(net).with_context(|| {
            format!(
                "profile {p}: field `network`: cannot read {}",
                net.display()
            )
        })?;
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
                    let volume_id = u32::from_le_bytes(g.as_bytes()[..4].try_into()?);
                    let first_lba = crate::compose::metal_iso_offset(profile) / 512;
                    Some(config::delivery::metal_iso_partition(
                        &cfg,
                        iso_size,
                        epoch,
                        volume_id,
                        u32::try_from(first_lba)?,
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
    Ok(Plan {
        cmdline,
        boot_profiles,
        meta,
        extensions,
        config,
        schematic,
    })
}

fn schematic_args(s: &Option<Schematic>) -> Vec<String> {
    s.as_ref()
        .map(|s| s.extra_kernel_args().to_vec())
        .unwrap_or_default()
}
