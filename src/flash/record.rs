//! `--record FILE`: one JSON line per target, appended whole.
//!
//! Each record is serialised first and appended with a single `write` on a file opened
//! `O_APPEND`, then `fdatasync`ed: a crash leaves earlier records intact and never half a
//! line from this process, and several flashing processes may share one file. Records carry
//! no secrets (no configuration content, no keys).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// What one target's flashing came to.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub format: &'static str,
    /// When the record was written (UTC, RFC 3339).
    pub time: String,
    /// The target as given on the command line (`/dev/disk/by-id/…`, `--serial …`, a file).
    pub target: String,
    /// The path written (`/dev/sdb`, a file).
    pub path: String,
    pub kind: &'static str,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub transport: Option<String>,
    /// Size of the target in bytes.
    pub size: u64,
    pub image: String,
    pub image_format: String,
    pub image_size: u64,
    /// The image's digest as the manifest states it, with its algorithm:
    /// `sha256-1m:<hex>` (the manifest's `image.chunk_sha256`), or `sha256:<hex>` for a
    /// manifest of an earlier release.
    pub image_sha256: Option<String>,
    /// SHA-256 of the manifest (or `.bmap`) the image was written by.
    pub manifest_sha256: Option<String>,
    pub name: Option<String>,
    pub build_number: Option<u64>,
    pub key_id: Option<String>,
    pub trusted: bool,
    pub bytes_written: u64,
    pub bytes_verified: u64,
    pub rewrites: u64,
    pub seconds_writing: f64,
    pub seconds_partition_table: f64,
    pub seconds: f64,
    /// `verified`, `failed`, `interrupted`, `refused` (a safety check or the exclusive open
    /// refused a target: nothing was written to any) or `not-confirmed`.
    pub result: &'static str,
    pub error: Option<String>,
    /// The disk's serial (as `serial`; the name the factory log reads).
    pub disk_serial: Option<String>,
    /// The inventory row written (`--inventory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
    /// Digests of the slot values written (never the values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<crate::factory::line::SlotDigest>,
    /// Who ran the line, and which station (`--operator`, `--station-name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    /// After a failure that wrote something: the target was left without a valid partition
    /// table (absent when nothing was written).
    pub partition_table_wiped: Option<bool>,
}

/// Append `record` to `path` as one line.
pub fn append(path: &Path, record: &Record) -> Result<()> {
    let mut line = serde_json::to_vec(record).context("serialising the record")?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open the record file {}: choose a writable path for --record",
                path.display()
            )
        })?;
    f.write_all(&line)
        .with_context(|| format!("appending to the record file {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("syncing the record file {}", path.display()))?;
    Ok(())
}

/// The current time as RFC 3339 UTC (`2026-11-23T17:04:05Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::civil::from_unix(secs).rfc3339()
}
