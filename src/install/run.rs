//! The install flow: payload → signature and trust → payload digests → target disk → write and
//! read back (partition table last) → record on the stick → verdict.
//!
//! Every step that fails stops the flow before the next one: nothing is written to any disk
//! until the payload's signature, trust store, build number, profile and every digest of
//! the compressed image have been proven, and the one target disk has been chosen.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::config::{self, InstallerConfig};
use super::{init, rules};
use crate::flash::devices::{Disk, System};
use crate::flash::{self, FlashOptions, TargetArg};
use crate::format::fat;
use crate::progress::human_bytes;
use crate::verify::{self, Outcome, VerifyOptions};

/// Where the payload comes from.
#[derive(Clone, Debug)]
pub enum Payload {
    /// The stick's payload partition (found by its GPT name), copied into `work`.
    Stick,
    /// A directory holding the same files (`<name>.raw.zst`, its manifest and signature,
    /// `trust/`).
    Dir(PathBuf),
}

/// How to run an install.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub config: InstallerConfig,
    pub payload: Payload,
    /// Where records go when there is no stick (a directory); with a stick, its records
    /// partition.
    pub records: Option<PathBuf>,
    /// `/` normally; a simulated tree in tests.
    pub system_root: PathBuf,
    /// Scratch space for the payload copied off the stick (a tmpfs at boot).
    pub work: PathBuf,
    pub style: flash::ui::Style,
}

/// The record written to the stick.
#[derive(Clone, Debug, Serialize)]
pub struct InstallRecord {
    pub format: &'static str,
    pub time: String,
    pub host: init::Host,
    /// `installed` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
    /// The profile and build installed.
    pub name: String,
    pub build_number: Option<u64>,
    pub key_id: Option<String>,
    pub image_sha256: Option<String>,
    pub manifest_sha256: Option<String>,
    /// The installer stick (disk name, serial).
    pub stick: Option<String>,
    pub target: Option<Disk>,
    /// What `flash` recorded for the target.
    pub flash: Option<serde_json::Value>,
    /// Other disks whose Talos META partition was wiped (`install.wipe_other_metas`).
    pub metas_wiped: Vec<String>,
    pub seconds_verify: f64,
    pub seconds_write: f64,
    pub seconds: f64,
}

/// How the install ended.
#[derive(Debug)]
pub struct InstallReport {
    pub ok: bool,
    /// What was said on stderr as it happened (`edgeimage install: …` lines), the last one the
    /// verdict.
    pub lines: Vec<String>,
    pub record: InstallRecord,
    /// Where the record was written, or why it was not.
    pub record_place: Result<PathBuf, String>,
}

/// A partition with a GPT name, as `/sys/class/block/*/uevent` describes it.
struct NamedPartition {
    /// The kernel's name (`sda2`).
    name: String,
    /// Its `/dev` node (under the system root).
    path: PathBuf,
    /// The disks it is on.
    disks: Vec<String>,
    size: u64,
}

/// Every partition whose GPT name is `partname`, sorted by kernel name.
fn partitions_named(sys: &System, partname: &str) -> Vec<NamedPartition> {
    let Ok(rd) = fs::read_dir(sys.root.join("sys/class/block")) else {
        return Vec::new();
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for e in entries {
        let Ok(text) = fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k));
        if field("PARTNAME=") != Some(partname) {
            continue;
        }
        let Some(name) = field("DEVNAME=") else {
            continue;
        };
        let dev = field("MAJOR=")
            .zip(field("MINOR="))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        let sectors: u64 = fs::read_to_string(e.path().join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        out.push(NamedPartition {
            name: name.to_string(),
            path: sys.real(&PathBuf::from(format!("/dev/{name}"))),
            disks: dev.map(|d| sys.disks_under(d)).unwrap_or_default(),
            size: sectors * 512,
        });
    }
    out
}

/// The size of a partition (a block device, or a regular file standing in for one).
fn partition_len(mut f: &File, part: &Path, what: &str) -> Result<u64> {
    let len = f
        .seek(SeekFrom::End(0))
        .and_then(|len| f.seek(SeekFrom::Start(0)).map(|_| len))
        .with_context(|| format!("{}: reading the size of the {what}", part.display()))?;
    Ok(len)
}

/// Copy the payload files off the FAT payload partition into `work`.
fn copy_payload(part: &Path, cfg: &InstallerConfig, work: &Path) -> Result<()> {
    let f = File::open(part)
        .with_context(|| format!("opening the payload partition {}", part.display()))?;
    let len = partition_len(&f, part, "payload partition")?;
    let vol = fat::Volume::open(len, |off, buf| f.read_exact_at(buf, off)).map_err(|e| {
        anyhow!(
            "{}: the payload partition is not a readable FAT volume: {e:#}",
            part.display()
        )
    })?;
    let find = |n: &str| {
        vol.find(n)
            .with_context(|| format!("{}: looking up {n} on the payload", part.display()))
    };
    fs::create_dir_all(work.join("trust/trusted"))
        .with_context(|| format!("creating {}", work.display()))?;
    let mut names = vec![
        format!("{}.raw.zst", cfg.name),
        format!("{}.manifest.json", cfg.name),
        format!("{}.manifest.json.minisig", cfg.name),
    ];
    let trust = format!("{}/trusted", config::PAYLOAD_TRUST_DIR);
    if let Some(dir) = find(&trust)?.filter(|d| d.is_dir) {
        let listed = vol
            .list(&dir)
            .with_context(|| format!("{}: listing {trust} on the payload", part.display()))?;
        for e in listed {
            if !e.is_dir && e.name().ends_with(".pub") {
                names.push(format!("{trust}/{}", e.name()));
            }
        }
    }
    let revoked = format!("{}/revoked", config::PAYLOAD_TRUST_DIR);
    if find(&revoked)?.is_some_and(|e| !e.is_dir) {
        names.push(revoked);
    }
    let mut entries = Vec::with_capacity(names.len());
    for n in &names {
        match find(n)? {
            Some(e) if !e.is_dir => entries.push(e),
            _ => bail!("{}: the payload has no {n}", part.display()),
        }
    }
    // Files sharing clusters could add up to many times the partition: refused.
    let total = entries
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.size));
    if total > len {
        bail!(
            "{}: the payload's files add up to {total} bytes, more than the {len}-byte \
             partition holds: the FAT volume is corrupt",
            part.display()
        );
    }
    for (n, entry) in names.iter().zip(&entries) {
        let mut src = vol
            .open_file(entry)
            .with_context(|| format!("{}: reading {n}", part.display()))?;
        let dst_path = work.join(n);
        let mut dst =
            File::create(&dst_path).with_context(|| format!("creating {}", dst_path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = src
                .read(&mut buf)
                .with_context(|| format!("{}: reading {n}", part.display()))?;
            if k == 0 {
                break;
            }
            dst.write_all(&buf[..k])
                .with_context(|| format!("writing {}", dst_path.display()))?;
        }
    }
    Ok(())
}

/// Write the record into the stick's records partition (`records/<name>.json`).
fn record_on_stick(part: &Path, file_name: &str, json: &[u8]) -> Result<PathBuf> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)
        .with_context(|| format!("opening the records partition {}", part.display()))?;
    check_records_volume(&f, part)?;
    {
        let fs_ = fatfs::FileSystem::new(&f, fatfs::FsOptions::new()).map_err(|e| {
            anyhow!(
                "{}: the records partition is not a FAT filesystem: {e}",
                part.display()
            )
        })?;
        {
            let root = fs_.root_dir();
            let dir = match root.open_dir("records") {
                Ok(d) => d,
                Err(_) => root
                    .create_dir("records")
                    .map_err(|e| anyhow!("{}: creating records/: {e}", part.display()))?,
            };
            let mut out = dir
                .create_file(file_name)
                .map_err(|e| anyhow!("{}: creating records/{file_name}: {e}", part.display()))?;
            out.truncate()
                .and_then(|()| out.write_all(json))
                .and_then(|()| out.flush())
                .map_err(|e| anyhow!("{}: writing records/{file_name}: {e}", part.display()))?;
            drop(out);
        }
        fs_.unmount()
            .map_err(|e| anyhow!("{}: closing the FAT filesystem: {e}", part.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    Ok(PathBuf::from(format!(
        "{}:records/{file_name}",
        part.display()
    )))
}

/// Read the whole records volume with edgeimage's own FAT reader before `fatfs` writes to it:
/// `fatfs` panics or never returns on some corrupt volumes (a directory cycle, a looping FAT
/// chain, an entry naming cluster 0 or 1), and a stick may have been written by anyone.
/// Every directory and every file's FAT chain is checked.
fn check_records_volume(f: &File, part: &Path) -> Result<()> {
    let len = partition_len(f, part, "records partition")?;
    let refused = |e: anyhow::Error| {
        anyhow!(
            "{}: the records partition is not a FAT volume edgeimage can safely write to: {e:#}",
            part.display()
        )
    };
    let vol = fat::Volume::open(len, |off, buf| f.read_exact_at(buf, off)).map_err(refused)?;
    let all = vol
        .walk(&vol.root(), &fat::Limits::default())
        .map_err(refused)?;
    for e in all.iter().filter(|e| !e.is_dir) {
        if e.first_cluster != 0 && (e.first_cluster < 2 || e.first_cluster - 2 >= vol.clusters()) {
            return Err(refused(anyhow!(
                "{:?} (entry at byte {}) names cluster {}, not a data cluster",
                e.path,
                e.entry_offset,
                e.first_cluster
            )));
        }
        vol.open_file(e).map_err(refused)?;
    }
    Ok(())
}

/// Keep characters FAT and shells take as they are.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Wait until the set of disks has not changed for `settle` (disks appear one by one while
/// the kernel probes), at most until `deadline`; returns the last list.
fn settled_disks(sys: &System, settle: Duration, deadline: Instant) -> Result<Vec<Disk>> {
    let mut last: Option<Vec<String>> = None;
    let mut since = Instant::now();
    loop {
        let disks = sys.disks()?;
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        if last.as_ref() != Some(&names) {
            last = Some(names);
            since = Instant::now();
        }
        if since.elapsed() >= settle || Instant::now() >= deadline {
            return Ok(disks);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Zero the Talos META partitions of every disk but `keep` (by their GPT name `META`).
fn wipe_metas(sys: &System, keep: &[&str]) -> Result<Vec<String>> {
    let mut wiped = Vec::new();
    for p in partitions_named(sys, "META") {
        if p.disks.iter().any(|o| keep.contains(&o.as_str())) {
            continue;
        }
        let path = &p.path;
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {} to wipe its META", path.display()))?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = p.size;
        let mut w = &f;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            w.write_all(&zeros[..n])
                .with_context(|| format!("wiping META on {}", path.display()))?;
            left -= n as u64;
        }
        f.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        wiped.push(format!("/dev/{}", p.name));
    }
    Ok(wiped)
}

/// Run the install. Never panics; every failure is in the report.
pub fn run(opts: &InstallOptions, cancel: Arc<AtomicBool>) -> InstallReport {
    let t0 = Instant::now();
    let sys = System::at(&opts.system_root);
    let cfg = &opts.config;
    let mut rec = InstallRecord {
        format: "edgeimage-install-record-1",
        time: flash::record::now_rfc3339(),
        host: init::host(&opts.system_root),
        result: "failed",
        error: None,
        name: cfg.name.clone(),
        build_number: None,
        key_id: None,
        image_sha256: None,
        manifest_sha256: None,
        stick: None,
        target: None,
        flash: None,
        metas_wiped: Vec::new(),
        seconds_verify: 0.0,
        seconds_write: 0.0,
        seconds: 0.0,
    };
    let mut lines = Vec::new();
    let mut records_part: Option<PathBuf> = None;
    let result = steps(opts, &sys, cancel, &mut rec, &mut lines, &mut records_part);
    rec.seconds = t0.elapsed().as_secs_f64();
    let ok = result.is_ok();
    match &result {
        Ok(verdict) => {
            rec.result = "installed";
            lines.push(verdict.clone());
        }
        Err(e) => {
            rec.error = Some(format!("{e:#}"));
            lines.push(format!("INSTALL FAILED: {e:#}"));
        }
    }
    let json = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    let file_name = format!(
        "{}-{}.json",
        safe_name(&rec.time.replace([':', '-'], "")),
        safe_name(
            rec.host
                .serial
                .as_deref()
                .or(rec.host.uuid.as_deref())
                .unwrap_or("host")
        )
    );
    let record_place = match (&records_part, &opts.records) {
        (Some(part), _) => record_on_stick(part, &file_name, &json).map_err(|e| format!("{e:#}")),
        (None, Some(dir)) => {
            let p = dir.join(&file_name);
            fs::create_dir_all(dir)
                .and_then(|()| fs::write(&p, &json))
                .map(|()| p)
                .map_err(|e| format!("writing the record into {}: {e}", dir.display()))
        }
        (None, None) => Err("no records partition and no --records directory".into()),
    };
    let place = match &record_place {
        Ok(p) => format!("record written: {}", p.display()),
        Err(e) => format!("RECORD NOT WRITTEN: {e}"),
    };
    lines.insert(lines.len() - 1, place);
    // The verdict's lines as they happen were printed already; these come last.
    for l in &lines[lines.len() - 2..] {
        eprintln!("edgeimage install: {l}");
    }
    InstallReport {
        ok,
        lines,
        record: rec,
        record_place,
    }
}

fn steps(
    opts: &InstallOptions,
    sys: &System,
    cancel: Arc<AtomicBool>,
    rec: &mut InstallRecord,
    lines: &mut Vec<String>,
    records_part: &mut Option<PathBuf>,
) -> Result<String> {
    let cfg = &opts.config;
    let deadline = Instant::now() + Duration::from_secs(cfg.wait_seconds);
    let say = |lines: &mut Vec<String>, s: String| {
        eprintln!("edgeimage install: {s}");
        lines.push(s);
    };

    // 1. The payload.
    let (payload_dir, stick) = match &opts.payload {
        Payload::Dir(d) => (d.clone(), None),
        Payload::Stick => {
            let found = loop {
                if let Some(p) = partitions_named(sys, config::PAYLOAD_PARTNAME)
                    .into_iter()
                    .next()
                {
                    break p;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "no partition named {} appeared within {} s: is the installer stick plugged in, and are its USB/storage modules in the profile's installer.modules?",
                        config::PAYLOAD_PARTNAME,
                        cfg.wait_seconds
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            };
            let disk = found.disks.first().cloned();
            say(
                lines,
                format!(
                    "payload on {} (partition {} of {})",
                    found.path.display(),
                    found.name,
                    disk.as_deref().unwrap_or("?")
                ),
            );
            *records_part = partitions_named(sys, config::RECORDS_PARTNAME)
                .into_iter()
                .next()
                .map(|p| p.path);
            let dir = opts.work.join("payload");
            copy_payload(&found.path, cfg, &dir)?;
            (dir, disk)
        }
    };
    rec.stick = stick.clone();
    let image = payload_dir.join(format!("{}.raw.zst", cfg.name));

    // 2. Signature, trust, build number, profile, and every digest of the payload.
    let t = Instant::now();
    say(lines, format!("verifying {}", image.display()));
    let vopts = VerifyOptions {
        trust: payload_dir.join(config::PAYLOAD_TRUST_DIR),
        min_build: Some(cfg.build_number),
        profile: Some(cfg.name.clone()),
        manifest: None,
    };
    let report = verify::verify(&image, &vopts, &mut crate::progress::Silent);
    rec.seconds_verify = t.elapsed().as_secs_f64();
    rec.build_number = report.build_number;
    rec.key_id = report.key_id.clone();
    rec.manifest_sha256 = report.manifest_sha256.clone();
    if report.outcome != Outcome::Verified {
        bail!(
            "the payload is refused, no disk was touched: {}",
            report.verdict
        );
    }
    say(lines, report.verdict.clone());

    // 3. The target disk.
    let disks = settled_disks(sys, Duration::from_secs(2), deadline)?;
    let target = rules::select(&cfg.disk, &disks, stick.as_deref())
        .map_err(|e| anyhow!("{e}\nno disk was touched"))?
        .clone();
    say(
        lines,
        format!(
            "target {} ({} {}, serial {}, {})",
            target.path.display(),
            target.transport.name(),
            target.model.as_deref().unwrap_or("-"),
            target.serial.as_deref().unwrap_or("-"),
            human_bytes(target.size)
        ),
    );
    rec.target = Some(target.clone());

    // 4. Write and read back with the flash engine (partition table last).
    let t = Instant::now();
    fs::create_dir_all(&opts.work).with_context(|| format!("creating {}", opts.work.display()))?;
    let flash_record = opts.work.join("flash-record.jsonl");
    let _ = fs::remove_file(&flash_record);
    let fo = FlashOptions {
        image: image.clone(),
        targets: vec![TargetArg::Path(target.path.clone())],
        source: flash::source::SourceOptions {
            trust: Some(vopts.trust.clone()),
            allow_unsigned: false,
            manifest: None,
            bmap: None,
            min_build: vopts.min_build,
            profile: vopts.profile.clone(),
        },
        yes: true,
        force: Vec::new(),
        record: Some(flash_record.clone()),
        settings: Default::default(),
        style: opts.style,
        system_root: opts.system_root.clone(),
        line: None,
    };
    let summary = flash::flash(&fo, cancel);
    rec.seconds_write = t.elapsed().as_secs_f64();
    if let Ok(text) = fs::read_to_string(&flash_record) {
        rec.flash = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok());
    }
    if let Some(f) = &rec.flash {
        rec.image_sha256 = f["image_sha256"].as_str().map(str::to_string);
    }
    for l in &summary.lines {
        eprintln!("edgeimage install: {l}");
        lines.push(l.clone());
    }
    if summary.exit_code != flash::exit::OK {
        bail!(
            "writing {} failed (flash exit code {}): {}",
            target.path.display(),
            summary.exit_code,
            summary.lines.last().cloned().unwrap_or_default()
        );
    }

    // 5. Stale META partitions on other disks.
    if cfg.wipe_other_metas {
        let mut keep = vec![target.name.as_str()];
        if let Some(s) = &stick {
            keep.push(s.as_str());
        }
        rec.metas_wiped = wipe_metas(sys, &keep)?;
        if !rec.metas_wiped.is_empty() {
            say(
                lines,
                format!("wiped stale META on {}", rec.metas_wiped.join(", ")),
            );
        }
    }
    Ok(format!(
        "INSTALLED: {} build {} written to {} and verified in {:.1} s",
        cfg.name,
        rec.build_number.unwrap_or(0),
        target.path.display(),
        rec.seconds_write
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::fat::{build_fat_dirs, FatParams, LabelRule};

    /// A records volume on a file; with `retarget`, the `records` entry points at cluster 1
    /// (`"cluster 1"`) or at the cluster of the directory named.
    fn records_volume(retarget: Option<&str>) -> tempfile::NamedTempFile {
        let params = FatParams::new(1 << 20, "RECORDS", 7, 2048, 1_700_000_000);
        let mut bytes = build_fat_dirs(&params, &[], &["records", "other"], LabelRule::Uppercase)
            .unwrap()
            .to_vec()
            .unwrap();
        if let Some(target) = retarget {
            let vol = fat::Volume::from_bytes(&bytes).unwrap();
            let records = vol.find("records").unwrap().unwrap();
            let cluster = match target {
                "cluster 1" => 1u16,
                other => vol.find(other).unwrap().unwrap().first_cluster as u16,
            };
            drop(vol);
            let at = records.entry_offset as usize + 26;
            bytes[at..at + 2].copy_from_slice(&cluster.to_le_bytes());
        }
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), &bytes).unwrap();
        t
    }

    /// The record is written on a sound volume; a volume that would make `fatfs` panic or loop
    /// is refused before `fatfs` sees it, and left as it was.
    #[test]
    fn records_go_only_onto_a_sound_volume() {
        let good = records_volume(None);
        let at = record_on_stick(good.path(), "r.json", b"{}").unwrap();
        assert!(at.to_string_lossy().ends_with(":records/r.json"));
        let bytes = std::fs::read(good.path()).unwrap();
        let vol = fat::Volume::from_bytes(&bytes).unwrap();
        let r = vol.find("records/r.json").unwrap().unwrap();
        assert_eq!(vol.read_to_end(&r, 100).unwrap(), b"{}");
        for (target, want) in [
            ("cluster 1", "names cluster 1, not a data cluster"),
            ("other", "directory cycle at cluster"),
        ] {
            let bad = records_volume(Some(target));
            let before = std::fs::read(bad.path()).unwrap();
            let e = format!(
                "{:#}",
                record_on_stick(bad.path(), "r.json", b"{}").unwrap_err()
            );
            assert!(
                e.contains(
                    "the records partition is not a FAT volume edgeimage can safely write to"
                ) && e.contains(want),
                "{e}"
            );
            assert_eq!(std::fs::read(bad.path()).unwrap(), before);
        }
    }
}
