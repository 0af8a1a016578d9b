//! `edgeimage build`: profile → checked assets → composed layout → written artifacts.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::artifact::{self, Outputs};
use crate::assets;
use crate::compose::{self, Placed};
use crate::profile::Profile;
use crate::progress::Progress;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub profile: PathBuf,
    /// Overrides the profile's `assets.source`.
    pub assets: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// Also write the uncompressed `<name>.raw`.
    pub raw: bool,
    /// `SOURCE_DATE_EPOCH`: every timestamp in the image.
    pub epoch: u64,
}

/// What was built.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildReport {
    pub profile: String,
    pub profile_sha256: String,
    pub talos_version: String,
    pub arch: String,
    pub source_date_epoch: u64,
    pub cmdline: String,
    pub uki_size: u64,
    pub assets: Vec<AssetReport>,
    pub extensions: Vec<ExtensionReport>,
    pub config: Option<ConfigReport>,
    pub schematic: Option<crate::plan::SchematicPlan>,
    pub partitions: Vec<Placed>,
    pub outputs: Outputs,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ExtensionReport {
    pub name: String,
    pub version: String,
    pub origin: String,
    /// Digest of the input (as pinned).
    pub sha256: String,
}

/// What is shown of the machine configuration: never its content.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigReport {
    pub delivery: crate::profile::Delivery,
    pub sha256: String,
    pub machine_type: String,
    pub source: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AssetReport {
    pub field: String,
    pub origin: String,
    pub size: u64,
    pub sha256: String,
}

/// Read `SOURCE_DATE_EPOCH` from the environment (0 when unset, so builds are reproducible
/// by default).
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(std::env::VarError::NotPresent) => Ok(0),
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| {
            anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970; unset it or set e.g. the last commit's time")
        }),
        _ => Err(anyhow!(
            "SOURCE_DATE_EPOCH is set but empty or not UTF-8; unset it or set a number of seconds"
        )),
    }
}

/// Run a build.
pub fn build(opts: &BuildOptions, progress: &mut dyn Progress) -> Result<BuildReport> {
    progress.phase("reading profile");
    let profile = Profile::load(&opts.profile)?;
    progress.phase("checking assets");
    let a = assets::load(&profile, opts.assets.as_deref())?;
    progress.phase("checking extensions and configuration");
    let plan = crate::plan::plan(&profile, opts.epoch)?;
    progress.phase("composing");
    let comp = compose::compose(&profile, &a, &plan, opts.epoch)?;
    progress.phase("writing image");
    let outputs = artifact::write_image(
        &comp.layout,
        &opts.out_dir,
        &profile.name,
        opts.raw,
        plan.config.is_some(),
        &mut |done, total| progress.bytes(done, total),
    )?;
    progress.finish();
    Ok(BuildReport {
        profile: profile.name.clone(),
        profile_sha256: profile.sha256.clone(),
        talos_version: profile.talos.tag.clone(),
        arch: profile.arch.to_string(),
        source_date_epoch: opts.epoch,
        cmdline: crate::config::delivery::redact_cmdline(&plan.cmdline),
        uki_size: comp.uki_size,
        assets: a
            .all()
            .iter()
            .map(|x| AssetReport {
                field: x.field.to_string(),
                origin: x.origin.clone(),
                size: x.len,
                sha256: x.sha256.clone(),
            })
            .collect(),
        extensions: plan
            .extensions
            .iter()
            .map(|e| ExtensionReport {
                name: e.metadata.name.clone(),
                version: e.metadata.version.clone(),
                origin: e.origin.clone(),
                sha256: e.sha256.clone(),
            })
            .collect(),
        config: plan.config.as_ref().map(|c| ConfigReport {
            delivery: c.delivery,
            sha256: c.config.sha256().to_string(),
            machine_type: c.config.machine_type().as_str().to_string(),
            source: c.source.clone(),
        }),
        schematic: plan.schematic.clone(),
        partitions: comp.partitions,
        outputs,
    })
}

/// The profile file for a name (`profiles/<name>.toml` under `root`), or the path itself.
pub fn profile_path(root: &Path, name_or_path: &str) -> PathBuf {
    let p = Path::new(name_or_path);
    if p.extension().is_some_and(|e| e == "toml") || p.components().count() > 1 {
        p.to_path_buf()
    } else {
        root.join("profiles").join(format!("{name_or_path}.toml"))
    }
}
