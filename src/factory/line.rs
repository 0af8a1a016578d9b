//! One device's personalization on a provisioning line: the inventory row it gets, the slot
//! values rendered from the profile's templates, and the slot partitions built from them.
//!
//! Before anything is written, [`Line::prepare`] checks that the profile's templates are the
//! ones the signed manifest names (by SHA-256), and validates every row of the inventory
//! against them (all problems at once). [`Line::assign`] then picks the row for a disk (by its
//! serial, or the next unused one), never one already written according to the record log
//! unless `reuse`, renders the slots, and builds the META and metal-iso partitions the
//! flasher writes after the image's data and before the partition table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::inventory::{FieldSpec, Inventory, Key, Kind};
use super::log::{self, Written};
use crate::artifact::manifest::{Manifest, Slot, SlotKind};
use crate::flash::source::{Chunk, Image};
use crate::personalize::{self, MetalIsoParams};
use crate::profile::Profile;
use crate::verify::target::AlignedBuf;

/// What the line needs.
#[derive(Clone, Debug)]
pub struct LineOptions {
    pub inventory: PathBuf,
    /// The profile whose `[[personalize]]` templates fill the slots.
    pub profile: PathBuf,
    /// Write a row again although the log says it was written.
    pub reuse: bool,
    /// Rows taken by runs still in progress in this process (a station writing several
    /// devices at once): never handed out twice. A run releases its rows when its device
    /// fails, so the row is retried.
    pub claimed: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// Who runs the line and where, for the records.
    pub operator: Option<String>,
    pub station: Option<String>,
}

impl LineOptions {
    /// Options with nothing claimed yet.
    pub fn new(inventory: PathBuf, profile: PathBuf, reuse: bool) -> LineOptions {
        LineOptions {
            inventory,
            profile,
            reuse,
            claimed: Default::default(),
            operator: None,
            station: None,
        }
    }

    /// Give back the rows of devices that failed or were not written (they are written
    /// again later).
    pub fn release<'a>(&self, rows: impl IntoIterator<Item = &'a Assigned>) {
        if let Ok(mut c) = self.claimed.lock() {
            for a in rows {
                c.remove(&a.row);
            }
        }
    }
}

/// A slot value's digest, for records (never the value).
#[derive(Clone, Debug, Serialize)]
pub struct SlotDigest {
    pub name: String,
    pub sha256: String,
    pub bytes: usize,
}

/// What one device gets.
pub struct Assigned {
    pub row: String,
    pub extra: Vec<Chunk>,
    pub slots: Vec<SlotDigest>,
}

/// The line's state for one run.
pub struct Line {
    inventory: Inventory,
    slots: Vec<(Slot, String)>,
    used: BTreeMap<String, Written>,
    in_run: BTreeSet<String>,
    claimed: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    reuse: bool,
    meta: Option<(u64, Vec<u8>)>,
    metal_iso: Option<(u64, MetalIsoParams)>,
}

/// Field kinds by column name: `hostname` is a host name; `address`, `*_address`, `*_cidr`
/// an address with prefix; `*_ip`, `gateway` an address; names with `token`, `secret`,
/// `password` or `key` (or used by a secret slot) secrets; everything else text.
pub fn field_spec(columns: &[String], secret_fields: &BTreeSet<String>) -> FieldSpec {
    let mut spec = FieldSpec::new();
    for c in columns {
        let l = c.to_ascii_lowercase();
        let kind = if secret_fields.contains(c)
            || ["token", "secret", "password", "key"]
                .iter()
                .any(|w| l.contains(w))
        {
            Kind::Secret
        } else if l == "hostname" {
            Kind::Hostname
        } else if l == "address" || l.ends_with("_address") || l.ends_with("_cidr") {
            Kind::Cidr
        } else if l.ends_with("_ip") || l == "gateway" {
            Kind::Ip
        } else {
            Kind::Text
        };
        spec.insert(c.clone(), kind);
    }
    spec
}

impl Line {
    /// Check the templates against the signed manifest, validate the inventory, read which
    /// rows the record log says were written.
    pub fn prepare(opts: &LineOptions, image: &Image, log_path: Option<&Path>) -> Result<Line> {
        let m: &Manifest = image.manifest.as_ref().ok_or_else(|| {
            anyhow!(
                "{} has no edgeimage manifest, so it has no personalization slots: --inventory needs an image built with [[personalize]]",
                image.path.display()
            )
        })?;
        if m.slots.is_empty() {
            bail!(
                "{} build {} has no personalization slots: build it from a profile with [[personalize]] entries",
                m.name,
                m.build_number
            );
        }
        let profile = Profile::load(&opts.profile)?;
        let mut slots = Vec::new();
        let mut secret_fields = BTreeSet::new();
        for s in &m.slots {
            let spec = profile
                .personalize
                .iter()
                .find(|p| p.name == s.name)
                .ok_or_else(|| {
                    anyhow!(
                    "profile {}: no [[personalize]] entry named {:?}, which the image's slot needs",
                    opts.profile.display(),
                    s.name
                )
                })?;
            if spec.template_sha256 != s.template_sha256 {
                bail!(
                    "profile {}: the template of slot {:?} ({}) is not the one {} build {} was signed with (sha256 {} vs {}): use the profile the image was built from",
                    opts.profile.display(),
                    s.name,
                    spec.template.display(),
                    m.name,
                    m.build_number,
                    spec.template_sha256,
                    s.template_sha256
                );
            }
            if s.secret {
                for f in personalize::fields(&spec.template_text)? {
                    secret_fields.insert(f);
                }
            }
            slots.push((s.clone(), spec.template_text.clone()));
        }
        let inventory = Inventory::load(&opts.inventory)?;
        let spec = field_spec(inventory.columns(), &secret_fields);
        let templates: Vec<(&str, &str)> = slots
            .iter()
            .map(|(s, t)| (s.name.as_str(), t.as_str()))
            .collect();
        if let Err(problems) = inventory.validate(&spec, &templates) {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            bail!(
                "the inventory {} is refused, nothing was written:\n{}",
                opts.inventory.display(),
                list.join("\n")
            );
        }
        let used = match log_path {
            Some(p) => log::used_rows(p)?,
            None => BTreeMap::new(),
        };
        let meta = match m.slots.iter().find(|s| s.kind == SlotKind::Meta) {
            Some(s) => Some((
                s.partition.offset,
                image
                    .read_range(s.partition.offset, s.partition.size)
                    .context("reading the image's base META")?,
            )),
            None => None,
        };
        let metal_iso = match m.slots.iter().find(|s| s.kind == SlotKind::MetalIso) {
            Some(s) => Some((s.partition.offset, MetalIsoParams::from_manifest(m)?)),
            None => None,
        };
        Ok(Line {
            inventory,
            slots,
            used,
            in_run: BTreeSet::new(),
            claimed: opts.claimed.clone(),
            reuse: opts.reuse,
            meta,
            metal_iso,
        })
    }

    /// The row, slot partitions and slot digests for the disk with `disk_serial`.
    pub fn assign(&mut self, disk_serial: Option<&str>) -> Result<Assigned> {
        let mut claimed = self
            .claimed
            .lock()
            .map_err(|_| anyhow!("the line's row list is poisoned"))?;
        let mut used = self.used.clone();
        for r in self.in_run.iter().chain(claimed.iter()) {
            used.entry(r.clone()).or_insert(Written {
                disk_serial: None,
                time: "this run".into(),
            });
        }
        let reuse = self.reuse && self.inventory.key() != Key::Sequence;
        let row = self
            .inventory
            .row_for(disk_serial, None, &used, reuse)
            .map_err(|e| anyhow!("{e}"))?;
        let mut meta_values = Vec::new();
        let mut iso_config = None;
        let mut digests = Vec::new();
        for (slot, template) in &self.slots {
            let value = super::render(template, row)?;
            personalize::check_value(slot, value.as_bytes())?;
            digests.push(SlotDigest {
                name: slot.name.clone(),
                sha256: hex::encode(Sha256::digest(value.as_bytes())),
                bytes: value.len(),
            });
            match (slot.kind, slot.meta_key) {
                (SlotKind::Meta, Some(k)) => meta_values.push((k, value.into_bytes())),
                (SlotKind::MetalIso, _) => iso_config = Some(value.into_bytes()),
                (SlotKind::Meta, None) => bail!("slot {} has no META key", slot.name),
            }
        }
        let chunk = |offset: u64, bytes: Vec<u8>| {
            let mut data = AlignedBuf::new(bytes.len());
            data.as_mut_slice().copy_from_slice(&bytes);
            Chunk { offset, data }
        };
        let mut extra = Vec::new();
        if let Some((offset, base)) = &self.meta {
            extra.push(chunk(
                *offset,
                personalize::meta_partition(base, &meta_values)?,
            ));
        }
        if let (Some((offset, params)), Some(cfg)) = (&self.metal_iso, iso_config) {
            extra.push(chunk(
                *offset,
                personalize::metal_iso_partition(params, &cfg)?,
            ));
        }
        let id = row.id().to_string();
        self.in_run.insert(id.clone());
        claimed.insert(id.clone());
        Ok(Assigned {
            row: id,
            extra,
            slots: digests,
        })
    }
}
