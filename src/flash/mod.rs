//! `edgeimage flash`: write an image to one or many disks (or files) at once, safely, and
//! prove by reading back from each device that what landed is what was signed.
//!
//! Data flows one way: [`source`] (recognise, authenticate and map the image) → [`devices`]
//! (resolve and check the targets) → [`medium`] (open them) → [`pipeline`] (write, read
//! back, partition table last) → [`record`] and [`ui`] (what happened, for people and
//! machines).
//!
//! Order of events, each failing before the next starts:
//!
//! 1. the image: its signature and trust (else refused, exit code as `verify`'s);
//! 2. every target resolved and checked (partition, mounted, swap, held, system disk, the
//!    image's own disk, too small, read-only): any refusal stops everything, nothing written;
//! 3. confirmation (model, serial, size, transport of every disk) unless `--yes`;
//! 4. every target opened (block devices exclusively);
//! 5. the engine: per target, identity re-checked right before the first write, old
//!    partition tables wiped, data written and read back, partition table written last.

pub mod devices;
pub mod medium;
pub mod pipeline;
pub mod record;
pub mod source;
pub mod station;
pub mod ui;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::progress::human_bytes;
use devices::{Check, Disk, Resolved, System, TargetSpec};
use medium::{Medium, Opened};
use pipeline::{Job, Settings, TargetResult};
use source::{Image, Refused, SourceOptions};

/// Exit codes of `edgeimage flash` (besides the image refusals, which are `verify`'s:
/// 3 unsigned, 4 unknown key, 5 revoked key, 6 bad signature, 7 content mismatch,
/// 9 rollback, 10 wrong profile).
pub mod exit {
    /// Every target written and verified.
    pub const OK: u8 = 0;
    /// Another error (arguments, unreadable image, record file).
    pub const ERROR: u8 = 1;
    /// The image's bytes did not match its manifest or block map while writing: every
    /// target was left without a partition table.
    pub const IMAGE_MISMATCH: u8 = 7;
    /// A target was refused by the safety checks or could not be opened: nothing written.
    pub const REFUSED: u8 = 11;
    /// Not confirmed (no `--yes` and no terminal, or the answer was not "yes").
    pub const NOT_CONFIRMED: u8 = 12;
    /// At least one target failed; the others were written and verified.
    pub const TARGET_FAILED: u8 = 13;
    /// The inventory or the personalization templates were refused: nothing written.
    pub const INVENTORY: u8 = 14;
    /// Interrupted (Ctrl-C): unfinished targets were left without a partition table.
    pub const INTERRUPTED: u8 = 130;
}

/// A target as given on the command line.
#[derive(Clone, Debug)]
pub enum TargetArg {
    Path(PathBuf),
    Serial(String),
}

impl TargetArg {
    fn label(&self) -> String {
        match self {
            TargetArg::Path(p) => p.display().to_string(),
            TargetArg::Serial(s) => format!("serial {s}"),
        }
    }
}

/// Everything `flash` needs.
#[derive(Clone, Debug)]
pub struct FlashOptions {
    pub image: PathBuf,
    pub targets: Vec<TargetArg>,
    pub source: SourceOptions,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Safety checks to skip.
    pub force: Vec<Check>,
    pub record: Option<PathBuf>,
    pub settings: Settings,
    pub style: ui::Style,
    /// Where disks are looked up (the host's `/`, or a fake tree in tests).
    pub system_root: PathBuf,
    /// Personalize each target from an inventory row (`--inventory`); the record file is
    /// the line's log of which row went where.
    pub line: Option<crate::factory::line::LineOptions>,
}

/// How `flash` ended.
#[derive(Debug)]
pub struct Summary {
    pub exit_code: u8,
    /// Lines for the terminal (the verdict per target).
    pub lines: Vec<String>,
}

impl Summary {
    fn stop(code: u8, lines: Vec<String>) -> Summary {
        Summary {
            exit_code: code,
            lines,
        }
    }
}

/// A checked target.
struct Target {
    label: String,
    path: PathBuf,
    disk: Option<Disk>,
}

fn resolve(
    sys: &System,
    image: &Image,
    arg: &TargetArg,
    force: &[Check],
) -> Result<(Target, Vec<String>)> {
    let spec = match arg {
        TargetArg::Path(p) => TargetSpec::Path(p.clone()),
        TargetArg::Serial(s) => TargetSpec::Serial(s.clone()),
    };
    let label = arg.label();
    let resolved = sys.resolve(&spec)?;
    let mut refusals = resolved.refusals(sys, image.size, Some(&image.path), force)?;
    if let (Resolved::Disk(d), Some(block)) = (&resolved, image.block_size()) {
        refusals.extend(d.block_size_refusal(block, force));
    }
    let refusals = refusals.into_iter().map(|r| r.reason).collect();
    let target = match resolved {
        Resolved::Disk(d) => Target {
            label,
            path: sys.real(&d.path),
            disk: Some(d),
        },
        Resolved::Partition { path, .. } => Target {
            label,
            path: sys.real(&path),
            disk: None,
        },
        Resolved::File(p) => Target {
            label,
            path: p,
            disk: None,
        },
    };
    Ok((target, refusals))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn describe(t: &Target) -> String {
    let path = t.path.display().to_string();
    let name = if t.label == path {
        path
    } else {
        format!("{path} ({})", t.label)
    };
    match &t.disk {
        Some(d) => format!(
            "{name}: {} {}, serial {}, {}{}",
            d.transport.name(),
            d.model.as_deref().unwrap_or("(no model)"),
            d.serial.as_deref().unwrap_or("(none)"),
            human_bytes(d.size),
            if d.removable { ", removable" } else { "" }
        ),
        None => format!("{name} (file)"),
    }
}

/// Ask on the terminal; `false` without one.
fn confirm(question: &str) -> bool {
    use std::io::{BufRead, Write};
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return false;
    };
    let mut w = &tty;
    let _ = write!(w, "{question}");
    let _ = w.flush();
    let mut line = String::new();
    let mut r = std::io::BufReader::new(&tty);
    if r.read_line(&mut line).is_err() {
        return false;
    }
    line.trim() == "yes"
}

/// Re-checks a disk's identity right before the first write.
fn identity_check(root: PathBuf, disk: Disk) -> pipeline::BeforeWrite {
    Box::new(move |m: &dyn Medium| {
        let sys = System::at(&root);
        let now = match sys.resolve(&TargetSpec::Path(disk.path.clone()))? {
            Resolved::Disk(d) => d,
            _ => {
                return Err(anyhow!(
                    "{} is no longer the disk that was checked; nothing written",
                    disk.path.display()
                ))
            }
        };
        // (A simulated disk in a test tree is a regular file, with no device number.)
        let dev = m.device_number().map(|(a, b)| format!("{a}:{b}"));
        let dev_changed = dev.as_ref().is_some_and(|d| *d != now.dev);
        if now.serial != disk.serial || now.size != disk.size || dev_changed {
            return Err(anyhow!(
                "{} changed since it was checked (serial {:?} → {:?}, size {} → {}, device {} → {}): another disk was plugged in its place? nothing written",
                disk.path.display(),
                disk.serial,
                now.serial,
                disk.size,
                now.size,
                disk.dev,
                dev.unwrap_or_default()
            ));
        }
        Ok(())
    })
}

/// The record of one target.
fn make_record(
    t: &Target,
    image: &Image,
    r: &TargetResult,
    result: &'static str,
) -> record::Record {
    record::Record {
        format: "edgeimage-flash-record-1",
        time: record::now_rfc3339(),
        target: t.label.clone(),
        path: t.path.display().to_string(),
        kind: if t.disk.is_some() { "disk" } else { "file" },
        serial: t.disk.as_ref().and_then(|d| d.serial.clone()),
        model: t.disk.as_ref().and_then(|d| d.model.clone()),
        transport: t.disk.as_ref().map(|d| d.transport.name().to_string()),
        size: t.disk.as_ref().map_or(image.size, |d| d.size),
        image: image.path.display().to_string(),
        image_format: image.format.as_str().to_string(),
        image_size: image.size,
        image_sha256: image.provenance.image_sha256.clone(),
        manifest_sha256: image.provenance.manifest_sha256.clone(),
        name: image.provenance.name.clone(),
        build_number: image.provenance.build_number,
        key_id: image.provenance.key_id.clone(),
        trusted: image.provenance.trusted,
        bytes_written: r.bytes_written,
        bytes_verified: r.bytes_verified,
        rewrites: r.rewrites,
        seconds_writing: r.seconds_writing,
        seconds_partition_table: r.seconds_partition_table,
        seconds: r.seconds,
        result,
        error: r.error.clone(),
        partition_table_wiped: (!r.ok && r.touched).then_some(r.wiped),
        disk_serial: t.disk.as_ref().and_then(|d| d.serial.clone()),
        row: None,
        slots: Vec::new(),
        operator: None,
        station: None,
    }
}

/// Stop before writing anything: every target gets a record (`result` with its own reason,
/// or the run's), and `--json` a `refused` event.
fn stop_unwritten(
    opts: &FlashOptions,
    image: &Image,
    targets: &[Target],
    reasons: &[(String, String)],
    result: &'static str,
    code: u8,
    mut lines: Vec<String>,
) -> Summary {
    let general = reasons
        .iter()
        .map(|(l, r)| format!("{l}: {r}"))
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(path) = &opts.record {
        for t in targets {
            let own: Vec<&str> = reasons
                .iter()
                .filter(|(l, _)| *l == t.label)
                .map(|(_, r)| r.as_str())
                .collect();
            let why = if own.is_empty() {
                format!("nothing written: {general}")
            } else {
                own.join("; ")
            };
            let r = TargetResult {
                error: Some(why),
                ..Default::default()
            };
            if let Err(e) = record::append(path, &make_record(t, image, &r, result)) {
                lines.push(format!("RECORD NOT WRITTEN: {e:#}"));
            }
        }
    }
    if opts.style == ui::Style::Json {
        println!(
            "{}",
            serde_json::json!({
                "event": "refused",
                "time": record::now_rfc3339(),
                "result": result,
                "reasons": reasons.iter().map(|(l, r)| serde_json::json!({"label": l, "reason": r})).collect::<Vec<_>>(),
            })
        );
    }
    Summary::stop(code, lines)
}

/// Run `edgeimage flash`.
pub fn flash(opts: &FlashOptions, cancel: Arc<AtomicBool>) -> Summary {
    match run(opts, cancel) {
        Ok(s) => s,
        Err(e) => {
            let code = e
                .downcast_ref::<Refused>()
                .map_or(exit::ERROR, |r| r.0.exit_code());
            Summary::stop(code, vec![format!("edgeimage flash: {e:#}")])
        }
    }
}

fn run(opts: &FlashOptions, cancel: Arc<AtomicBool>) -> Result<Summary> {
    let t0 = Instant::now();
    if opts.targets.is_empty() {
        return Err(anyhow!(
            "no target: give at least one --target PATH or --serial S"
        ));
    }
    let image = Image::open(&opts.image, &opts.source)?;
    let sys = System::at(&opts.system_root);

    // Every target resolved and checked before anything is opened for writing.
    let mut targets = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for arg in &opts.targets {
        let (t, why) = resolve(&sys, &image, arg, &opts.force)
            .with_context(|| format!("target {}", arg.label()))?;
        for w in why {
            refused.push((t.label.clone(), w));
        }
        if let Some(other) = targets
            .iter()
            .find(|o: &&Target| o.path == t.path || same_file(&o.path, &t.path))
        {
            refused.push((
                t.label.clone(),
                format!(
                    "{} and {} are the same target: give each once",
                    other.label, t.label
                ),
            ));
        }
        targets.push(t);
    }
    let mut lines = vec![format!(
        "image: {} ({}, {} to write of {}): {}",
        image.path.display(),
        image.format.as_str(),
        human_bytes(image.mapped_bytes()),
        human_bytes(image.size),
        image.provenance.statement
    )];
    if !refused.is_empty() {
        lines.extend(refused.iter().map(|(l, r)| format!("REFUSED: {l}: {r}")));
        lines.push("nothing was written".into());
        return Ok(stop_unwritten(
            opts,
            &image,
            &targets,
            &refused,
            "refused",
            exit::REFUSED,
            lines,
        ));
    }

    // Confirmation for disks.
    let disks: Vec<&Target> = targets.iter().filter(|t| t.disk.is_some()).collect();
    if !disks.is_empty() && !opts.yes {
        let mut q =
            String::from("These disks will be overwritten; everything on them will be lost:\n");
        for t in &disks {
            q.push_str(&format!("  {}\n", describe(t)));
        }
        q.push_str(&format!(
            "Write {} to {} disk(s)? Type yes to continue: ",
            image.path.display(),
            disks.len()
        ));
        if !confirm(&q) {
            let why = "not confirmed: nothing was written (answer \"yes\" on the terminal, or pass --yes)";
            lines.push(why.into());
            return Ok(stop_unwritten(
                opts,
                &image,
                &targets,
                &[("flash".into(), why.into())],
                "not-confirmed",
                exit::NOT_CONFIRMED,
                lines,
            ));
        }
    }

    // Personalization: every target's row and slot partitions, before anything is opened.
    let mut assigned: Vec<Option<crate::factory::line::Assigned>> =
        targets.iter().map(|_| None).collect();
    if let Some(lo) = &opts.line {
        let prepared = crate::factory::line::Line::prepare(lo, &image, opts.record.as_deref())
            .and_then(|mut line| {
                for (i, t) in targets.iter().enumerate() {
                    let serial = t.disk.as_ref().and_then(|d| d.serial.as_deref());
                    let a = line
                        .assign(serial)
                        .with_context(|| format!("target {}", t.label))?;
                    assigned[i] = Some(a);
                }
                Ok(())
            });
        if let Err(e) = prepared {
            lo.release(assigned.iter().flatten());
            let why = format!("{e:#}");
            lines.push(format!("REFUSED: {why}"));
            lines.push("nothing was written".into());
            return Ok(Summary::stop(exit::INVENTORY, lines));
        }
        for (t, a) in targets.iter().zip(&assigned) {
            if let Some(a) = a {
                lines.push(format!("{}: inventory row {}", t.label, a.row));
            }
        }
    }

    // Open everything before writing anything.
    let mut jobs = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let opened = match &t.disk {
            // A disk of a simulated system tree (tests) is a regular file.
            Some(_) if t.path.metadata().is_ok_and(|m| m.is_file()) => {
                Opened::file(&t.path, image.size)
            }
            Some(_) => Opened::device(&t.path),
            None if t.path.metadata().is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device()
            }) =>
            {
                Opened::device(&t.path)
            }
            None => Opened::file(&t.path, image.size),
        };
        match opened {
            Ok(m) => jobs.push(Job {
                medium: Box::new(m),
                extra: assigned[i]
                    .as_mut()
                    .map(|a| std::mem::take(&mut a.extra))
                    .unwrap_or_default(),
                before_write: t
                    .disk
                    .clone()
                    .map(|d| identity_check(opts.system_root.clone(), d)),
            }),
            Err(e) => {
                if let Some(lo) = &opts.line {
                    lo.release(assigned.iter().flatten());
                }
                let why = format!("{e:#}");
                lines.push(format!("REFUSED: {}: {why}", t.label));
                lines.push("nothing was written".into());
                return Ok(stop_unwritten(
                    opts,
                    &image,
                    &targets,
                    &[(t.label.clone(), why)],
                    "refused",
                    exit::REFUSED,
                    lines,
                ));
            }
        }
    }

    let labels: Vec<String> = targets.iter().map(|t| t.label.clone()).collect();
    let mut ui = ui::Ui::new(opts.style, labels);
    ui.json(serde_json::json!({
        "event": "begin",
        "time": record::now_rfc3339(),
        "image": image.path.display().to_string(),
        "format": image.format,
        "size": image.size,
        "bytes": image.mapped_bytes(),
        "provenance": &image.provenance,
        "targets": targets.iter().map(|t| serde_json::json!({
            "label": t.label,
            "path": t.path.display().to_string(),
            "disk": t.disk,
        })).collect::<Vec<_>>(),
    }));
    ui.line(&lines[0]);
    let (tx, rx) = std::sync::mpsc::channel();
    let (results, source_error) = std::thread::scope(|s| {
        let engine = s.spawn(|| pipeline::run(&image, jobs, &opts.settings, tx, cancel.clone()));
        for e in rx {
            ui.handle(&e);
        }
        engine.join().unwrap_or_else(|_| {
            (
                vec![
                    TargetResult {
                        error: Some("the engine failed".into()),
                        ..Default::default()
                    };
                    targets.len()
                ],
                Some("the engine failed".into()),
            )
        })
    });
    ui.finish();

    // Records and the verdict.
    let mut record_error = None;
    let mut failed = 0;
    let mut interrupted = false;
    for (i, (t, r)) in targets.iter().zip(&results).enumerate() {
        let result = if r.ok {
            "verified"
        } else if r.interrupted {
            interrupted = true;
            "interrupted"
        } else {
            "failed"
        };
        if !r.ok {
            failed += 1;
        }
        lines.push(match &r.error {
            None => format!(
                "VERIFIED: {}: {} written and read back in {:.1} s",
                describe(t),
                human_bytes(r.bytes_verified),
                r.seconds
            ),
            Some(e) => format!(
                "{}: {}: {e}{}",
                result.to_uppercase(),
                describe(t),
                if r.wiped {
                    " (left without a partition table: it will not boot)"
                } else {
                    ""
                }
            ),
        });
        if let Some(path) = &opts.record {
            let mut rec = make_record(t, &image, r, result);
            if let Some(Some(a)) = assigned.get(i) {
                rec.row = Some(a.row.clone());
                rec.slots = a.slots.clone();
            }
            if let Some(lo) = &opts.line {
                rec.operator = lo.operator.clone();
                rec.station = lo.station.clone();
            }
            if let Err(e) = record::append(path, &rec) {
                record_error = Some(format!("{e:#}"));
            }
        }
    }
    if let Some(lo) = &opts.line {
        let failed = assigned.iter().zip(&results).filter(|(_, r)| !r.ok);
        lo.release(failed.filter_map(|(a, _)| a.as_ref()));
    }
    let ok = targets.len() - failed;
    ui.json(serde_json::json!({
        "event": "done",
        "time": record::now_rfc3339(),
        "succeeded": ok,
        "failed": failed,
        "seconds": t0.elapsed().as_secs_f64(),
        "image_error": source_error,
    }));
    if let Some(e) = &source_error {
        lines.push(format!("IMAGE: {e}"));
    }
    lines.push(format!(
        "{ok} of {} target(s) written and verified in {:.1} s{}",
        targets.len(),
        t0.elapsed().as_secs_f64(),
        if failed > 0 {
            format!(
                "; failed: {}",
                targets
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| !r.ok)
                    .map(|(t, _)| t.label.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    ));
    if let Some(e) = record_error {
        lines.push(format!("RECORD NOT WRITTEN: {e}"));
    }
    let code = if interrupted {
        exit::INTERRUPTED
    } else if source_error.is_some() {
        exit::IMAGE_MISMATCH
    } else if failed > 0 {
        exit::TARGET_FAILED
    } else if lines.iter().any(|l| l.starts_with("RECORD NOT WRITTEN")) {
        exit::ERROR
    } else {
        exit::OK
    };
    Ok(Summary::stop(code, lines))
}
