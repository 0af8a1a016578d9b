//! Station mode: watch for disks that appear on allowed ports and write each as it arrives.
//!
//! Safe by default: a disk that was present when the station started is never written, nor
//! one on a port the rules do not allow; USB and loop devices only when a rule names them.
//! Disks are found by polling sysfs (no udev), so the station also runs in a minimal system.
//! A disk that disappears is forgotten, so the same stick plugged in again is a new device.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::devices::{Disk, System};
use crate::install::rules::glob;

/// One rule of `--ports`: which disks the station may write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "pattern", rename_all = "kebab-case")]
pub enum PortRule {
    /// The disk's sysfs device path (e.g. `*/usb2/2-1/*`) matches.
    Sysfs(String),
    /// One of its `/dev/disk/by-id` names matches (e.g. `usb-SanDisk_*`).
    ById(String),
    /// Its transport is this one (`usb`, `sata`, `nvme`, `mmc`, `virtio`, `scsi`, `loop`).
    Transport(String),
}

impl PortRule {
    /// `sysfs:GLOB`, `by-id:GLOB` or `transport:NAME`.
    pub fn parse(s: &str) -> Result<PortRule> {
        let (kind, pat) = s.split_once(':').unwrap_or(("", ""));
        if pat.is_empty() {
            bail!("--ports {s:?}: write sysfs:GLOB, by-id:GLOB or transport:NAME");
        }
        Ok(match kind {
            "sysfs" => PortRule::Sysfs(pat.to_string()),
            "by-id" => PortRule::ById(pat.to_string()),
            "transport" => PortRule::Transport(pat.to_string()),
            _ => bail!("--ports {s:?}: unknown kind {kind:?}: use sysfs:, by-id: or transport:"),
        })
    }

    fn matches(&self, d: &Disk, sysfs_path: &str) -> bool {
        match self {
            PortRule::Sysfs(p) => glob(p, sysfs_path),
            PortRule::ById(p) => d
                .by_id
                .iter()
                .any(|l| l.file_name().is_some_and(|n| glob(p, &n.to_string_lossy()))),
            PortRule::Transport(t) => d.transport.name() == t,
        }
    }
}

/// The port a disk is on, for status lines: its sysfs device path.
pub fn port_of(sys: &System, d: &Disk) -> String {
    std::fs::canonicalize(sys.root.join("sys/block").join(&d.name))
        .ok()
        .and_then(|p| {
            p.strip_prefix(sys.root.join("sys"))
                .ok()
                .map(|r| format!("/sys/{}", r.display()))
        })
        .unwrap_or_else(|| format!("/sys/block/{}", d.name))
}

/// Whether the station may write `d`: some rule matches. USB and loop disks need a rule that
/// names their transport or matches their port or by-id name explicitly (a `transport:` rule
/// for another transport never lets them through).
pub fn allowed(rules: &[PortRule], d: &Disk, port: &str) -> bool {
    rules.iter().any(|r| r.matches(d, port))
}

/// What the watcher saw in one poll.
#[derive(Debug, Default)]
pub struct Changes {
    /// Disks that appeared and may be written.
    pub arrived: Vec<Disk>,
    /// Disks that appeared on a port no rule allows (reported once).
    pub ignored: Vec<(Disk, String)>,
    /// Names of disks that went away.
    pub gone: Vec<String>,
}

/// Polls sysfs for disks appearing and disappearing.
pub struct Watcher {
    sys: System,
    rules: Vec<PortRule>,
    /// Present at start: never written (by name and serial, so a renamed one is still known).
    initial: BTreeSet<(String, Option<String>)>,
    /// Disks currently present that were reported (by name).
    seen: BTreeMap<String, Option<String>>,
}

impl Watcher {
    /// Start watching: every disk present now is off limits for this station's lifetime.
    pub fn new(sys: System, rules: Vec<PortRule>) -> Result<Watcher> {
        if rules.is_empty() {
            bail!("no --ports rule: the station writes only disks on ports you allow (e.g. --ports transport:usb)");
        }
        let initial = sys
            .disks()?
            .into_iter()
            .map(|d| (d.name, d.serial))
            .collect::<BTreeSet<_>>();
        let seen = initial
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        Ok(Watcher {
            sys,
            rules,
            initial,
            seen,
        })
    }

    /// The disks present at start (never written).
    pub fn initial(&self) -> impl Iterator<Item = &String> {
        self.initial.iter().map(|(n, _)| n)
    }

    /// One poll.
    pub fn poll(&mut self) -> Result<Changes> {
        let now = self.sys.disks()?;
        let mut ch = Changes::default();
        let names: BTreeSet<&str> = now.iter().map(|d| d.name.as_str()).collect();
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for n in gone {
            self.seen.remove(&n);
            ch.gone.push(n);
        }
        for d in now {
            if self.seen.contains_key(&d.name) {
                continue;
            }
            self.seen.insert(d.name.clone(), d.serial.clone());
            if self.initial.contains(&(d.name.clone(), d.serial.clone())) {
                continue;
            }
            let port = port_of(&self.sys, &d);
            if allowed(&self.rules, &d, &port) {
                ch.arrived.push(d);
            } else {
                ch.ignored.push((d, port));
            }
        }
        Ok(ch)
    }

    /// Poll every `interval` until something changes or `deadline`.
    pub fn wait(&mut self, interval: Duration, deadline: Instant) -> Result<Changes> {
        loop {
            let ch = self.poll()?;
            if !ch.arrived.is_empty() || !ch.ignored.is_empty() || !ch.gone.is_empty() {
                return Ok(ch);
            }
            if Instant::now() >= deadline {
                return Ok(ch);
            }
            std::thread::sleep(interval);
        }
    }

    pub fn system(&self) -> &System {
        &self.sys
    }
}

/// How a station runs.
#[derive(Clone, Debug)]
pub struct StationOptions {
    /// What every device gets (targets are filled in per device; `yes` is implied: the ports
    /// rules and the never-a-disk-present-at-start rule are the station's confirmation).
    pub flash: super::FlashOptions,
    pub ports: Vec<PortRule>,
    /// Devices written at once.
    pub parallel: usize,
    /// Stop after this many devices finished (verified or failed).
    pub count: Option<usize>,
    /// Stop when nothing is running and nothing arrived for this long.
    pub idle_exit: Option<Duration>,
    /// `--json`: events as JSON lines on stdout; else status lines on stderr.
    pub json: bool,
}

/// How a station run ended.
#[derive(Debug, Default, Serialize)]
pub struct StationSummary {
    pub written: usize,
    pub failed: usize,
    /// One line per device: port, disk, serial, verdict.
    pub lines: Vec<String>,
}

fn event(json: bool, v: serde_json::Value, human: &str) {
    if json {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.insert("time".into(), super::record::now_rfc3339().into());
        }
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    } else {
        eprintln!("station: {human}");
    }
}

/// Run a station until `count` devices are done, it has been idle for `idle_exit`, or
/// `cancel` is set.
pub fn run(
    opts: &StationOptions,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<StationSummary> {
    use std::sync::atomic::Ordering;
    // The image is proven once before any disk is awaited: an untrusted image stops the
    // station at once instead of failing every device.
    let image = super::source::Image::open(&opts.flash.image, &opts.flash.source)?;
    event(
        opts.json,
        serde_json::json!({"event": "image", "path": image.path, "provenance": image.provenance}),
        &format!(
            "image {}: {}",
            image.path.display(),
            image.provenance.statement
        ),
    );
    let sys = System::at(&opts.flash.system_root);
    let mut w = Watcher::new(sys, opts.ports.clone())?;
    let initial: Vec<String> = w.initial().cloned().collect();
    event(
        opts.json,
        serde_json::json!({"event": "station-start", "ports": opts.ports, "present": initial}),
        &format!(
            "watching ports {}; disks present now are never written: {}",
            opts.ports
                .iter()
                .map(|r| serde_json::to_string(r).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
            initial.join(", ")
        ),
    );
    let (tx, rx) = std::sync::mpsc::channel::<(Disk, String, super::Summary)>();
    let mut running = 0usize;
    let mut queue: std::collections::VecDeque<(Disk, String)> = Default::default();
    let mut sum = StationSummary::default();
    let mut last_activity = Instant::now();
    loop {
        if cancel.load(Ordering::Relaxed) && running == 0 {
            break;
        }
        if let Some(n) = opts.count {
            if sum.written + sum.failed >= n && running == 0 {
                break;
            }
        }
        if let Some(idle) = opts.idle_exit {
            if running == 0 && queue.is_empty() && last_activity.elapsed() >= idle {
                break;
            }
        }
        let ch = w.wait(
            Duration::from_millis(300),
            Instant::now() + Duration::from_millis(300),
        )?;
        for (d, port) in ch.ignored {
            event(
                opts.json,
                serde_json::json!({"event": "ignored", "disk": d.path, "serial": d.serial, "port": port}),
                &format!(
                    "{} on {port}: not an allowed port, left alone",
                    d.path.display()
                ),
            );
        }
        for name in ch.gone {
            event(
                opts.json,
                serde_json::json!({"event": "gone", "disk": format!("/dev/{name}")}),
                &format!("/dev/{name} removed"),
            );
        }
        for d in ch.arrived {
            last_activity = Instant::now();
            let port = port_of(w.system(), &d);
            event(
                opts.json,
                serde_json::json!({"event": "arrived", "disk": d.path, "serial": d.serial, "model": d.model, "size": d.size, "port": port}),
                &format!(
                    "{} arrived on {port} (serial {}, {})",
                    d.path.display(),
                    d.serial.as_deref().unwrap_or("-"),
                    crate::progress::human_bytes(d.size)
                ),
            );
            queue.push_back((d, port));
        }
        while running < opts.parallel.max(1) && !cancel.load(Ordering::Relaxed) {
            let Some((d, port)) = queue.pop_front() else {
                break;
            };
            let mut fo = opts.flash.clone();
            fo.targets = vec![super::TargetArg::Path(d.path.clone())];
            fo.yes = true;
            fo.style = super::ui::Style::Quiet;
            let tx = tx.clone();
            let c = cancel.clone();
            running += 1;
            std::thread::spawn(move || {
                let s = super::flash(&fo, c);
                let _ = tx.send((d, port, s));
            });
        }
        while let Ok((d, port, s)) = rx.try_recv() {
            running -= 1;
            last_activity = Instant::now();
            let ok = s.exit_code == super::exit::OK;
            if ok {
                sum.written += 1;
            } else {
                sum.failed += 1;
            }
            let verdict = s
                .lines
                .iter()
                .find(|l| {
                    l.starts_with("VERIFIED:")
                        || l.starts_with("FAILED:")
                        || l.starts_with("REFUSED:")
                        || l.starts_with("INTERRUPTED:")
                })
                .or(s.lines.last())
                .cloned()
                .unwrap_or_default();
            let line = format!(
                "{} on {port} (serial {}): {}",
                d.path.display(),
                d.serial.as_deref().unwrap_or("-"),
                verdict
            );
            event(
                opts.json,
                serde_json::json!({"event": "finished", "disk": d.path, "serial": d.serial, "port": port, "ok": ok, "exit_code": s.exit_code, "verdict": verdict}),
                &line,
            );
            sum.lines.push(line);
        }
    }
    event(
        opts.json,
        serde_json::json!({"event": "station-done", "written": sum.written, "failed": sum.failed}),
        &format!(
            "done: {} written and verified, {} failed",
            sum.written, sum.failed
        ),
    );
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn file(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn disk(root: &Path, parent: &str, name: &str, dev: &str, serial: &str) {
        let dir = format!("sys/{parent}/block/{name}");
        file(root, &format!("{dir}/dev"), &format!("{dev}\n"));
        file(root, &format!("{dir}/size"), "16777216\n");
        file(root, &format!("{dir}/ro"), "0\n");
        file(root, &format!("{dir}/removable"), "0\n");
        file(root, &format!("{dir}/queue/logical_block_size"), "512\n");
        file(root, &format!("{dir}/serial"), &format!("{serial}\n"));
        fs::create_dir_all(root.join("sys/block")).unwrap();
        symlink(
            format!("../{}", &dir[4..]),
            root.join(format!("sys/block/{name}")),
        )
        .unwrap();
        file(root, &format!("dev/{name}"), "");
    }

    fn unplug(root: &Path, name: &str) {
        fs::remove_file(root.join(format!("sys/block/{name}"))).unwrap();
    }

    #[test]
    fn only_new_disks_on_allowed_ports_arrive() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        file(root, "proc/self/mountinfo", "");
        file(root, "proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
        disk(
            root,
            "devices/pci0000:00/0000:00:04.0/virtio1",
            "vda",
            "240:0",
            "SYS",
        );
        let rules = vec![PortRule::parse("sysfs:*/0000:00:05.0/*").unwrap()];
        let mut w = Watcher::new(System::at(root), rules).unwrap();
        assert_eq!(w.initial().collect::<Vec<_>>(), ["vda"]);
        assert!(w.poll().unwrap().arrived.is_empty());
        // A disk on the allowed port arrives once; one elsewhere is ignored once.
        disk(
            root,
            "devices/pci0000:00/0000:00:05.0/virtio2",
            "vdb",
            "240:16",
            "A1",
        );
        disk(
            root,
            "devices/pci0000:00/0000:00:06.0/virtio3",
            "vdc",
            "240:32",
            "B1",
        );
        let ch = w.poll().unwrap();
        assert_eq!(ch.arrived.len(), 1);
        assert_eq!(ch.arrived[0].serial.as_deref(), Some("A1"));
        assert_eq!(ch.ignored.len(), 1);
        assert!(ch.ignored[0].1.contains("0000:00:06.0"), "{:?}", ch.ignored);
        let ch = w.poll().unwrap();
        assert!(ch.arrived.is_empty() && ch.ignored.is_empty());
        // Unplugged and plugged again: a new arrival.
        unplug(root, "vdb");
        assert_eq!(w.poll().unwrap().gone, ["vdb"]);
        symlink(
            "../devices/pci0000:00/0000:00:05.0/virtio2/block/vdb",
            root.join("sys/block/vdb"),
        )
        .unwrap();
        assert_eq!(w.poll().unwrap().arrived.len(), 1);
    }

    #[test]
    fn port_rules_parse_and_refuse_nonsense() {
        assert_eq!(
            PortRule::parse("transport:usb").unwrap(),
            PortRule::Transport("usb".into())
        );
        assert_eq!(
            PortRule::parse("by-id:usb-SanDisk_*").unwrap(),
            PortRule::ById("usb-SanDisk_*".into())
        );
        let e = PortRule::parse("usb").unwrap_err().to_string();
        assert!(
            e.contains("sysfs:GLOB, by-id:GLOB or transport:NAME"),
            "{e}"
        );
        let e = PortRule::parse("port:1").unwrap_err().to_string();
        assert!(e.contains("unknown kind"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = Watcher::new(System::at(d.path()), vec![])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no --ports rule"), "{e}");
    }
}
