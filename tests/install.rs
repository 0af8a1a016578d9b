//! `edgeimage install` on a simulated system (sysfs, /proc and /dev as files, disks as regular
//! files): the payload proven first, the target chosen by the rules, written and read back,
//! the record written; a tampered payload, an ambiguous rule, no matching disk and an older
//! build each refused with nothing written.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// A signed build's payload directory: `t.raw.zst`, its manifest and signature, `trust/`.
fn payload(b: &Built) -> PathBuf {
    let dir = b.dir().join("payload");
    fs::create_dir_all(dir.join("trust/trusted")).unwrap();
    for n in ["t.raw.zst", "t.manifest.json", "t.manifest.json.minisig"] {
        fs::copy(b.set.join(n), dir.join(n)).unwrap();
    }
    fs::copy(&b.key.public, dir.join("trust/trusted/release.pub")).unwrap();
    dir
}

fn config(dir: &Path, disk: Value, build_number: u64) -> PathBuf {
    config_with(dir, disk, build_number, false)
}

fn config_with(dir: &Path, disk: Value, build_number: u64, wipe_metas: bool) -> PathBuf {
    let p = dir.join("installer.json");
    let c = json!({
        "format": "edgeimage-installer-1",
        "name": "t",
        "build_number": build_number,
        "modules": [],
        "wait_seconds": 3,
        "disk": disk,
        "wipe_other_metas": wipe_metas,
        "on_success": "reboot",
        "on_failure": "poweroff",
    });
    fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    p
}

struct Run {
    out: Output,
    records: PathBuf,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
    fn record(&self) -> Value {
        let files: Vec<_> = fs::read_dir(&self.records)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        serde_json::from_slice(&fs::read(&files[0]).unwrap()).unwrap()
    }
}

fn install(b: &Built, root: &Path, cfg: &Path, payload: &Path, tag: &str) -> Run {
    let records = b.dir().join(format!("records-{tag}"));
    let work = b.dir().join(format!("work-{tag}"));
    let out = run(&[
        "install",
        "--config",
        s(cfg),
        "--payload",
        s(payload),
        "--records",
        s(&records),
        "--work",
        s(&work),
        "--system-root",
        s(root),
        "-q",
    ]);
    Run { out, records }
}

/// A simulated host: a USB stick `sda`, a virtio disk `vda` (and `vdb` on request). Device
/// numbers from the experimental range, so none is the real disk the test's files are on.
fn host(b: &Built, extra_virtio: bool) -> FakeSystem {
    let sim = FakeSystem::new(&b.dir().join(if extra_virtio { "root2" } else { "root" }));
    sim.disk(
        "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0",
        "sda",
        "240:32",
        8 * GIB,
        None,
    );
    sim.disk(
        "devices/pci0000:00/0000:00:04.0/virtio1",
        "vda",
        "240:0",
        64 * GIB,
        Some("VDISK-1"),
    );
    if extra_virtio {
        sim.disk(
            "devices/pci0000:00/0000:00:05.0/virtio2",
            "vdb",
            "240:16",
            64 * GIB,
            Some("VDISK-2"),
        );
    }
    sim
}

#[test]
fn installs_onto_the_one_matching_disk_and_records_it() {
    let b = signed();
    let p = payload(&b);
    let sim = host(&b, false);
    let cfg = config(b.dir(), json!({"transports": ["virtio"]}), 0);
    let r = install(&b, &sim.root, &cfg, &p, "ok");
    assert!(r.out.status.success(), "{}", r.text());
    let text = r.text();
    assert!(text.contains("VERIFIED"), "{text}");
    assert!(text.contains("target /dev/vda (virtio"), "{text}");
    assert!(
        text.contains("INSTALLED: t build 0 written to /dev/vda"),
        "{text}"
    );
    // The simulated disk is the image, byte for byte; the stick is untouched.
    let vda = sim.root.join("dev/vda");
    assert_eq!(fs::read(&vda).unwrap(), fs::read(b.raw()).unwrap());
    assert_eq!(fs::metadata(sim.root.join("dev/sda")).unwrap().len(), 0);
    b.verify(&vda, &[]).expect(0, "VERIFIED");
    let rec = r.record();
    assert_eq!(rec["result"], "installed", "{rec}");
    assert_eq!(rec["target"]["serial"], "VDISK-1");
    assert_eq!(rec["key_id"], b.key.id.as_str());
    assert_eq!(
        rec["image_sha256"],
        format!(
            "sha256-1m:{}",
            b.manifest()["image"]["chunk_sha256"].as_str().unwrap()
        )
    );
    assert_eq!(rec["flash"]["result"], "verified");
}

#[test]
fn a_tampered_payload_is_refused_and_no_disk_is_touched() {
    let b = signed();
    let p = payload(&b);
    let zst = p.join("t.raw.zst");
    let mut data = fs::read(&zst).unwrap();
    let at = data.len() / 2;
    data[at] ^= 1;
    fs::write(&zst, data).unwrap();
    let sim = host(&b, false);
    let cfg = config(b.dir(), json!({"transports": ["virtio"]}), 0);
    let r = install(&b, &sim.root, &cfg, &p, "tampered");
    assert_eq!(r.out.status.code(), Some(1), "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("the payload is refused, no disk was touched"),
        "{text}"
    );
    assert!(text.contains("CONTENT MISMATCH"), "{text}");
    assert_eq!(fs::metadata(sim.root.join("dev/vda")).unwrap().len(), 0);
    let rec = r.record();
    assert_eq!(rec["result"], "failed");
    assert!(rec["target"].is_null());
}

#[test]
fn ambiguous_and_unmatched_rules_and_older_builds_are_refused() {
    let b = signed();
    let p = payload(&b);
    let two = host(&b, true);
    let cfg = config(b.dir(), json!({"transports": ["virtio"]}), 0);
    let r = install(&b, &two.root, &cfg, &p, "two");
    assert_eq!(r.out.status.code(), Some(1), "{}", r.text());
    let text = r.text();
    assert!(text.contains("2 disks match the install rules"), "{text}");
    assert!(
        text.contains("/dev/vdb (virtio -, serial VDISK-2, 64.0 GiB): MATCHES"),
        "{text}"
    );
    assert!(text.contains("no disk was touched"), "{text}");
    for d in ["vda", "vdb"] {
        assert_eq!(fs::metadata(two.root.join("dev").join(d)).unwrap().len(), 0);
    }
    // Narrowed by serial, it installs.
    let cfg = config(
        b.dir(),
        json!({"transports": ["virtio"], "serials": ["VDISK-2"]}),
        0,
    );
    let r = install(&b, &two.root, &cfg, &p, "serial");
    assert!(r.out.status.success(), "{}", r.text());
    assert_eq!(fs::metadata(two.root.join("dev/vda")).unwrap().len(), 0);
    assert!(fs::metadata(two.root.join("dev/vdb")).unwrap().len() > 0);

    let one = host(&b, false);
    let cfg = config(b.dir(), json!({"transports": ["nvme"]}), 0);
    let r = install(&b, &one.root, &cfg, &p, "none");
    assert_eq!(r.out.status.code(), Some(1), "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("no disk matches the install rules (transport nvme)"),
        "{text}"
    );
    assert!(
        text.contains("transport virtio is not one of nvme"),
        "{text}"
    );
    assert_eq!(fs::metadata(one.root.join("dev/vda")).unwrap().len(), 0);

    // A stick made for build 5 refuses this build 0 payload.
    let cfg = config(b.dir(), json!({"transports": ["virtio"]}), 5);
    let r = install(&b, &one.root, &cfg, &p, "old");
    assert_eq!(r.out.status.code(), Some(1), "{}", r.text());
    assert!(r.text().contains("ROLLBACK"), "{}", r.text());
    assert_eq!(fs::metadata(one.root.join("dev/vda")).unwrap().len(), 0);
}

#[test]
fn a_configuration_that_would_reboot_after_a_failure_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("installer.json");
    let c = json!({
        "format": "edgeimage-installer-1", "name": "t", "build_number": 0, "modules": [],
        "wait_seconds": 1, "disk": {}, "wipe_other_metas": false,
        "on_success": "reboot", "on_failure": "reboot",
    });
    fs::write(&p, c.to_string()).unwrap();
    let o = run(&["install", "--config", s(&p), "--payload", s(d.path())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("on_failure = reboot would loop"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stale_metas_on_other_disks_are_wiped_when_the_profile_says_so() {
    let b = signed();
    let p = payload(&b);
    let sim = host(&b, true);
    // vdb carries an older Talos install: its META partition would make Talos pick it.
    let vdb = "sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb";
    sim.gpt_partition(vdb, "vdb2", 2, "240:18", 1 << 20, "META");
    sim.gpt_partition(vdb, "vdb3", 3, "240:19", 1 << 20, "STATE");
    let cfg = config_with(
        b.dir(),
        json!({"transports": ["virtio"], "serials": ["VDISK-1"]}),
        0,
        true,
    );
    let r = install(&b, &sim.root, &cfg, &p, "metas");
    assert!(r.out.status.success(), "{}", r.text());
    assert!(
        r.text().contains("wiped stale META on /dev/vdb2"),
        "{}",
        r.text()
    );
    let meta = fs::read(sim.root.join("dev/vdb2")).unwrap();
    assert!(meta.iter().all(|&x| x == 0), "META must be zeroed");
    let state = fs::read(sim.root.join("dev/vdb3")).unwrap();
    assert!(state.iter().all(|&x| x == FILL), "only META is touched");
    assert_eq!(r.record()["metas_wiped"], json!(["/dev/vdb2"]));
}
