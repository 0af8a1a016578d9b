//! `inspect` of an installer image (recognised by its partition names): the installer UKI's
//! command line, the configuration in its initramfs, the payload partition's files with their
//! sizes and SHA-256, and the records on the records partition.

use std::fmt::Write as _;
use std::io::Read;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::PartitionInfo;
use super::UkiReport;
use crate::format::fat;
use crate::install::config::{Action, InstallerConfig, PAYLOAD_PARTNAME, RECORDS_PARTNAME};
use crate::installer::RECORDS_DIR;

/// What `inspect` shows of an installer image.
#[derive(Debug, Serialize)]
pub struct InstallerInfo {
    /// The installer UKI's command line.
    pub cmdline: Option<String>,
    /// The configuration in the initramfs.
    pub config: Option<InstallerConfig>,
    /// Files of the payload partition, sorted by path.
    pub payload: Vec<PayloadEntry>,
    /// Files under `records/` on the records partition (paths below it), sorted.
    pub records: Vec<String>,
    /// What could not be read (the walk goes on past it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One file of the payload partition.
#[derive(Debug, Serialize)]
pub struct PayloadEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Whether the partitions are an installer image's.
pub fn is_installer(partitions: &[PartitionInfo]) -> bool {
    [PAYLOAD_PARTNAME, RECORDS_PARTNAME]
        .iter()
        .all(|n| partitions.iter().any(|p| p.label == *n))
}

/// Read the installer's parts of an image; `uki` is the ESP's UKI as already read.
pub fn describe(
    file: &super::Image,
    partitions: &[PartitionInfo],
    uki: Option<&UkiReport>,
) -> InstallerInfo {
    let mut notes = Vec::new();
    let config = match uki
        .and_then(|u| u.initrd.as_ref())
        .and_then(|i| i.installer_config.as_deref())
    {
        Some(text) => match serde_json::from_str::<InstallerConfig>(text) {
            Ok(c) => Some(c),
            Err(e) => {
                notes.push(format!(
                    "the initramfs's installer.json is not a valid configuration: {e}"
                ));
                None
            }
        },
        None => {
            notes.push("no installer.json in the UKI's initramfs".to_string());
            None
        }
    };
    let part = |name: &str| partitions.iter().find(|p| p.label == name);
    let mut payload = Vec::new();
    if let Some(p) = part(PAYLOAD_PARTNAME) {
        if let Err(e) = walk(file, p, "", &mut |path, f| {
            let mut h = Sha256::new();
            let size = std::io::copy(f, &mut h)?;
            payload.push(PayloadEntry {
                path: path.to_string(),
                size,
                sha256: hex::encode(h.finalize()),
            });
            Ok(())
        }) {
            notes.push(format!("payload partition {}: {e:#}", p.number));
        }
    }
    let mut records = Vec::new();
    if let Some(p) = part(RECORDS_PARTNAME) {
        if let Err(e) = walk(file, p, RECORDS_DIR, &mut |path, _| {
            records.push(path.to_string());
            Ok(())
        }) {
            notes.push(format!("records partition {}: {e:#}", p.number));
        }
    }
    payload.sort_by(|a, b| a.path.cmp(&b.path));
    records.sort();
    InstallerInfo {
        cmdline: uki.and_then(|u| u.info.cmdline.clone()),
        config,
        payload,
        records,
        notes,
    }
}

type Visit<'a> = dyn FnMut(&str, &mut dyn Read) -> std::io::Result<()> + 'a;

/// Call `visit` with every file below `dir` (relative to it) of the FAT on partition `p`.
fn walk(file: &super::Image, p: &PartitionInfo, dir: &str, visit: &mut Visit) -> Result<()> {
    let vol = super::fat_volume(file, p).context("not a readable FAT volume")?;
    let start = match vol.find(dir)? {
        Some(d) if d.is_dir => d,
        _ => return Err(anyhow!("no {dir}/ directory")),
    };
    // The walk refuses cross-linked files, so all of them together are at most the volume.
    for entry in vol.walk(&start, &fat::Limits::default())? {
        if entry.is_dir {
            continue;
        }
        let path = if start.path.is_empty() {
            entry.path.as_str()
        } else {
            entry
                .path
                .get(start.path.len() + 1..)
                .unwrap_or(entry.path.as_str())
        };
        let mut f = vol.open_file(&entry)?;
        visit(path, &mut f).map_err(|e| anyhow!("reading {path}: {e}"))?;
    }
    Ok(())
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Reboot => "reboot",
        Action::Poweroff => "poweroff",
        Action::Halt => "halt",
    }
}

/// The human-readable part of `inspect` for an installer image.
pub fn render(s: &mut String, i: &InstallerInfo) -> std::fmt::Result {
    writeln!(s, "installer")?;
    if let Some(c) = &i.cmdline {
        writeln!(s, "  cmdline  {c}")?;
    }
    if let Some(c) = &i.config {
        writeln!(
            s,
            "  payload  {} build {} or newer; wait {} s; on success {}, on failure {}",
            c.name,
            c.build_number,
            c.wait_seconds,
            action(c.on_success),
            action(c.on_failure)
        )?;
        let d = &c.disk;
        let mut rules = Vec::new();
        if !d.transports.is_empty() {
            rules.push(format!("transport {}", d.transports.join("|")));
        }
        if let Some(n) = d.min_size {
            rules.push(format!("size >= {}", crate::progress::human_bytes(n)));
        }
        if let Some(n) = d.max_size {
            rules.push(format!("size <= {}", crate::progress::human_bytes(n)));
        }
        if let Some(m) = &d.model {
            rules.push(format!("model {m:?}"));
        }
        if !d.serials.is_empty() {
            rules.push(format!("serial {}", d.serials.join("|")));
        }
        if let Some(b) = &d.by_id {
            rules.push(format!("by-id {b}"));
        }
        if rules.is_empty() {
            rules.push("any one disk that is not USB or loop".to_string());
        }
        writeln!(s, "  disk     {}", rules.join(", "))?;
        if c.wipe_other_metas {
            writeln!(s, "  other disks' META partitions are wiped")?;
        }
        if !c.modules.is_empty() {
            writeln!(s, "  modules  {}", c.modules.join(" "))?;
        }
    }
    writeln!(s, "payload")?;
    for f in &i.payload {
        writeln!(
            s,
            "  {:<40} {:>12} bytes  sha256 {}",
            f.path, f.size, f.sha256
        )?;
    }
    if i.records.is_empty() {
        writeln!(s, "records    none")?;
    } else {
        writeln!(s, "records")?;
        for r in &i.records {
            writeln!(s, "  {r}")?;
        }
    }
    for n in &i.notes {
        writeln!(s, "  note     {n}")?;
    }
    Ok(())
}
