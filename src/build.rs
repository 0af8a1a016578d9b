//! `edgeimage build`: profile → checked assets → composed layout → written artifacts, the
//! output set `<out>/<name>/`: `<name>.raw.zst` (and `<name>.raw`), `<name>.manifest.json`,
//! its signature `<name>.manifest.json.minisig` when a key is given, and `<name>.bmap`; with an
//! `[installer]` section also `<name>-installer.raw.zst` (and `<name>-installer.raw`), the
//! installer stick carrying those outputs (see [`crate::installer`]). The files are written
//! into a staging directory that replaces the previous set as a whole when all are written
//! ([`artifact::set`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::artifact::manifest::{self, Manifest};
use crate::artifact::{self, Measured, Outputs};
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
    /// Sign with this secret key (overrides the profile's `[signing] key`).
    pub sign_key: Option<PathBuf>,
    /// Where the key's passphrase comes from (overrides the profile's `passphrase_env`;
    /// default: ask on the terminal, only if the key is encrypted).
    pub passphrase_env: Option<String>,
    /// The static `edgeimage` for the installer's `/init` (overrides the profile's
    /// `[installer] binary`).
    pub installer_binary: Option<PathBuf>,
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
    pub build_number: u64,
    /// The output set: the directory holding every file below.
    pub set: PathBuf,
    pub outputs: Outputs,
    pub manifest: PathBuf,
    /// The manifest's signature, when the build was signed.
    pub signature: Option<PathBuf>,
    /// Key ID of the signing key.
    pub key_id: Option<String>,
    pub bmap: PathBuf,
    /// The installer image, when the profile has an `[installer]` section.
    pub installer: Option<crate::installer::InstallerReport>,
    /// The personalization slots, as the manifest describes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<manifest::Slot>,
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
    // The key first: a wrong passphrase should not cost a whole build.
    let key = signing_key(opts, &profile)?;
    // The installer's inputs next: a bad [installer] should not cost one either.
    let installer = match (&profile.installer, &key) {
        (None, _) => {
            if let Some(b) = &opts.installer_binary {
                bail!(
                    "--installer-binary {} is given, but profile {} has no [installer] section; add one or leave the option out",
                    b.display(),
                    profile.path.display()
                );
            }
            None
        }
        (Some(_), None) => bail!(
            "profile {}: [installer]: the installer needs a signed payload: pass --sign-key or set [signing] key",
            profile.path.display()
        ),
        (Some(spec), Some(k)) => {
            progress.phase("checking the installer's inputs");
            Some((
                spec,
                crate::installer::prepare(&profile, spec, opts.installer_binary.as_deref(), k)?,
            ))
        }
    };
    // Held until the set is committed or dropped; dropping removes the staging directory.
    let set = artifact::set::OutputSet::begin(&opts.out_dir, &profile.name)?;
    progress.phase("checking assets");
    let a = assets::load(&profile, opts.assets.as_deref())?;
    progress.phase("checking extensions and configuration");
    let plan = crate::plan::plan(&profile, opts.epoch)?;
    for (i, s) in profile.personalize.iter().enumerate() {
        if let crate::profile::SlotTarget::Meta(k) = s.target {
            if plan.meta.iter().any(|m| m.key == k) {
                bail!(
                    "profile {}: field `personalize[{i}].meta_key`: META key 0x{k:02x} is also set by the schematic's meta values; a slot's key has no value in the base image: remove it from the schematic or drop the slot",
                    profile.path.display()
                );
            }
        }
    }
    progress.phase("composing");
    let comp = compose::compose(&profile, &a, &plan, opts.epoch)?;
    let described = &comp.partitions;
    let mp = &comp.manifest_partition;
    let slots = slots(&profile, described)?;
    let mut slot_regions: Vec<(u64, u64)> = slots
        .iter()
        .map(|s| (s.partition.offset, s.partition.size))
        .collect();
    slot_regions.sort_unstable();
    slot_regions.dedup();
    let meta_base: Vec<manifest::MetaBase> =
        if slots.iter().any(|s| s.kind == manifest::SlotKind::Meta) {
            use sha2::Digest;
            plan.meta
                .iter()
                .map(|m| manifest::MetaBase {
                    key: m.key,
                    sha256: hex::encode(sha2::Sha256::digest(&m.value)),
                })
                .collect()
        } else {
            Vec::new()
        };
    let spec = artifact::ImageSpec {
        layout: &comp.layout,
        partitions: described.iter().map(|p| (p.offset, p.size)).collect(),
        late: (mp.offset, mp.size),
        slots: slot_regions,
    };
    // The installer image for upgrades, next to the image (its digest goes into the
    // manifest, so it is written first).
    let upgrade_image = match (&comp.upgrade_image, &profile.upgrade_image) {
        (Some(u), Some(spec)) => {
            progress.phase("writing the upgrade installer image");
            let file = crate::upgrade_image::file_name(&profile.name);
            let (size, sha256) =
                artifact::atomic::write_layout(&set.dir().join(&file), &u.archive, 0o644)?;
            Some(manifest::UpgradeImageDigest {
                file,
                size,
                sha256,
                reference: u.reference.to_string(),
                manifest_digest: u.image.top.digest.clone(),
                base_digest: spec.base_digest.clone(),
            })
        }
        _ => None,
    };
    let provenance = manifest::Provenance {
        edgeimage_version: env!("CARGO_PKG_VERSION").to_string(),
        source_date_epoch: opts.epoch,
        profile_sha256: profile.sha256.clone(),
        assets: a
            .all()
            .iter()
            .map(|x| manifest::InputDigest {
                field: x.field.to_string(),
                size: x.len,
                sha256: x.sha256.clone(),
            })
            .collect(),
        extensions: plan
            .extensions
            .iter()
            .map(|e| manifest::ExtensionDigest {
                name: e.metadata.name.clone(),
                version: e.metadata.version.clone(),
                sha256: e.sha256.clone(),
            })
            .collect(),
        schematic: plan
            .schematic
            .as_ref()
            .map(|s| manifest::SchematicDigest { id: s.id.clone() }),
        machine_config: plan.config.as_ref().map(|c| manifest::ConfigDigest {
            delivery: c.delivery.as_str().to_string(),
            machine_type: c.config.machine_type().as_str().to_string(),
            sha256: c.config.sha256().to_string(),
        }),
        image_cache: comp.cache_entries.clone(),
        upgrade_image,
    };
    let make_manifest = |m: &Measured, artifact: Option<manifest::Artifact>| Manifest {
        format: manifest::FORMAT.to_string(),
        version: manifest::VERSION,
        name: profile.name.clone(),
        build_number: profile.build_number,
        talos_version: profile.talos.tag.clone(),
        arch: profile.arch.to_string(),
        image: manifest::ImageInfo {
            size: comp.layout.len(),
            chunk_sha256: Some(m.image_sha256.clone()),
            sha256: None,
            disk_guid: comp.disk_guid.clone(),
            sector_size: plan.sector_size,
        },
        partitions: described
            .iter()
            .zip(&m.partitions)
            .map(|(p, sha)| manifest::PartitionInfo {
                number: p.number,
                label: p.label.clone(),
                type_guid: p.type_guid.clone(),
                guid: p.guid.clone(),
                offset: p.offset,
                size: p.size,
                sha256: sha.clone(),
                slot: slots.iter().any(|s| s.partition.number == p.number),
            })
            .collect(),
        manifest_partition: mp.clone(),
        block_map: manifest::BlockMap {
            block_size: manifest::BLOCK_SIZE,
            mapped_blocks: m.ranges.iter().map(|r| r.last - r.first + 1).sum(),
            ranges: m.ranges.clone(),
        },
        artifact,
        provenance: provenance.clone(),
        slots: slots.clone(),
        meta_base: meta_base.clone(),
    };
    let sign = |doc: &Manifest, bytes: &[u8]| -> Result<Option<String>> {
        key.as_ref()
            .map(|k| sign_manifest(doc, bytes, k))
            .transpose()
    };

    progress.phase("writing image");
    let mut late = Vec::new();
    let (mut outputs, measured) = artifact::write_image(
        &spec,
        set.dir(),
        &profile.name,
        opts.raw,
        plan.config.is_some(),
        &mut |m| {
            let doc = make_manifest(m, None);
            let bytes = doc.to_canonical()?;
            let sig = sign(&doc, &bytes)?;
            late = manifest::encode_partition(&bytes, sig.as_deref(), mp.size)?;
            Ok(late.clone())
        },
        &mut |done, total| progress.bytes(done, total),
    )?;

    progress.phase("writing manifest and block map");
    let zst_name = outputs
        .zst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doc = make_manifest(
        &measured,
        Some(manifest::Artifact {
            file: zst_name,
            compression: "zstd".to_string(),
            size: outputs.zst_size,
            sha256: outputs.zst_sha256.clone(),
        }),
    );
    let bytes = doc.to_canonical()?;
    let manifest_path = set.dir().join(format!("{}.manifest.json", profile.name));
    let signature_text = sign(&doc, &bytes)?;
    let sig_path = set
        .dir()
        .join(format!("{}.manifest.json.minisig", profile.name));
    artifact::atomic::write(&manifest_path, &bytes, 0o644)?;
    let signature = signature_text
        .as_ref()
        .map(|text| artifact::atomic::write(&sig_path, text.as_bytes(), 0o644))
        .transpose()?;
    // The block map of the written image: what the manifest maps, the base content of the
    // slot partitions, and the manifest partition (bmaptool must write them too).
    let mut ranges = measured.ranges.clone();
    ranges.extend(measured.slot_ranges.iter().cloned());
    {
        use sha2::Digest;
        let bs = manifest::BLOCK_SIZE;
        ranges.push(artifact::bmap::Range {
            first: mp.offset / bs,
            last: (mp.offset + mp.size) / bs - 1,
            sha256: hex::encode(sha2::Sha256::digest(&late)),
        });
        ranges.sort_by_key(|r| r.first);
    }
    let bmap_path = set.dir().join(format!("{}.bmap", profile.name));
    let raw_name = format!("{}.raw", profile.name);
    let bmap_text =
        artifact::bmap::render(&raw_name, comp.layout.len(), manifest::BLOCK_SIZE, &ranges)?;
    artifact::atomic::write(&bmap_path, bmap_text.as_bytes(), 0o644)?;

    let mut installer = match (installer, &signature_text) {
        (Some((spec, prepared)), Some(sig)) => Some(crate::installer::build(
            &profile,
            spec,
            &prepared,
            &a,
            &crate::installer::Payload {
                image: &outputs.zst,
                image_size: outputs.zst_size,
                manifest: &bytes,
                signature: sig,
            },
            &crate::installer::Target {
                out_dir: set.dir(),
                raw: opts.raw,
                secret: plan.config.is_some(),
                epoch: opts.epoch,
            },
            progress,
        )?),
        (Some(_), None) => {
            bail!("the installer needs a signed payload, but the manifest was not signed")
        }
        (None, _) => None,
    };
    progress.phase("replacing the output set");
    // The paths the files have once the set is in place.
    outputs.zst = set.final_path(&outputs.zst);
    outputs.raw = outputs.raw.map(|p| set.final_path(&p));
    if let Some(i) = installer.as_mut() {
        i.outputs.zst = set.final_path(&i.outputs.zst);
        i.outputs.raw = i.outputs.raw.take().map(|p| set.final_path(&p));
    }
    let manifest_path = set.final_path(&manifest_path);
    let signature = signature.map(|p| set.final_path(&p));
    let bmap_path = set.final_path(&bmap_path);
    let set_dir = set.commit()?;
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
        partitions: comp
            .partitions
            .iter()
            .chain([&comp.manifest_partition])
            .cloned()
            .collect(),
        build_number: profile.build_number,
        set: set_dir,
        outputs,
        manifest: manifest_path,
        key_id: key.as_ref().map(|k| k.key_id_hex()),
        signature,
        bmap: bmap_path,
        installer,
        slots,
    })
}

/// The manifest's description of the profile's `[[personalize]]` slots: each with the
/// partition it changes (META slots the `META` partition, the metal-iso slot `metal-iso`).
fn slots(profile: &Profile, placed: &[Placed]) -> Result<Vec<manifest::Slot>> {
    use crate::profile::SlotTarget;
    profile
        .personalize
        .iter()
        .map(|s| {
            let (kind, meta_key, label) = match s.target {
                SlotTarget::Meta(k) => (
                    manifest::SlotKind::Meta,
                    Some(k),
                    crate::format::meta::META_LABEL,
                ),
                SlotTarget::MetalIso => (
                    manifest::SlotKind::MetalIso,
                    None,
                    crate::config::delivery::METAL_ISO_LABEL,
                ),
            };
            let p = placed.iter().find(|p| p.label == label).ok_or_else(|| {
                anyhow!(
                    "profile {}: slot {:?}: the image has no {label} partition",
                    profile.path.display(),
                    s.name
                )
            })?;
            Ok(manifest::Slot {
                name: s.name.clone(),
                kind,
                meta_key,
                partition: manifest::SlotPartition {
                    number: p.number,
                    label: p.label.clone(),
                    offset: p.offset,
                    size: p.size,
                },
                secret: s.secret,
                template_sha256: s.template_sha256.clone(),
            })
        })
        .collect()
}

/// The minisign signature of manifest `bytes` (the canonical form of `doc`); the trusted
/// comment binds the profile name, Talos version and build number.
pub fn sign_manifest(doc: &Manifest, bytes: &[u8], key: &crate::sign::SecretKey) -> Result<String> {
    Ok(key
        .sign(
            bytes,
            &doc.trusted_comment(),
            &format!("signature from edgeimage key {}", key.key_id_hex()),
        )?
        .to_file_text())
}

/// `edgeimage sign`: sign an existing manifest, writing `<manifest>.minisig` next to it.
pub fn sign_manifest_file(path: &Path, key: &crate::sign::SecretKey) -> Result<PathBuf> {
    let bytes = crate::input::read(path, crate::input::Kind::Manifest)?;
    let doc = Manifest::parse(&bytes, &path.display().to_string())?;
    let text = sign_manifest(&doc, &bytes, key)?;
    let sig = PathBuf::from(format!("{}.minisig", path.display()));
    artifact::atomic::write(&sig, text.as_bytes(), 0o644)
}

/// The secret key a build signs with: `--sign-key`, else the profile's `[signing] key`, else
/// none. The passphrase comes from the environment variable named by `--passphrase-env` or
/// the profile's `passphrase_env`, else from the terminal.
fn signing_key(opts: &BuildOptions, profile: &Profile) -> Result<Option<crate::sign::SecretKey>> {
    let signing = profile.signing.as_ref();
    let Some(path) = opts.sign_key.clone().or(signing.map(|s| s.key.clone())) else {
        return Ok(None);
    };
    let env = opts
        .passphrase_env
        .clone()
        .or(signing.and_then(|s| s.passphrase_env.clone()));
    let source = crate::sign::PassphraseSource::env_or_prompt(env);
    Ok(Some(crate::sign::SecretKey::load_with(&path, &source)?))
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
