//! `edgeimage station`: disks appearing over time (loop devices the test creates while the
//! station runs) are written and verified as they arrive; a disk present at start and one on a
//! port no rule allows are left alone; an untrusted image stops the station at once.
//!
//! Loop devices need root; without them the test says SKIPPED and checks only the refusals.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn disks_arriving_over_time_are_written_the_one_present_at_start_is_not() {
    let b = signed();
    let size = fs::metadata(b.raw()).unwrap().len();
    let dir = b.dir();
    let present = dir.join("present.img");
    fs::File::create(&present).unwrap().set_len(size).unwrap();
    let Some(before) = Loop::new(&present) else {
        eprintln!("SKIPPED (loop devices): losetup failed");
        return;
    };
    let rec = dir.join("station.jsonl");
    let mut child = Command::new(bin())
        .args(["station", s(&b.zst()), "--trust", s(&b.trust)])
        .args([
            "--ports",
            "transport:loop",
            "--count",
            "3",
            "--idle-exit",
            "60",
            "--json",
        ])
        .args(["--record", s(&rec)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<Value> = Vec::new();
    let mut next = |events: &mut Vec<Value>| -> Value {
        let l = lines.next().expect("station ended early").unwrap();
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
        events.push(v.clone());
        v
    };
    // Wait until it watches, then plug three disks in, one after another.
    loop {
        if next(&mut events)["event"] == "station-start" {
            break;
        }
    }
    let mut devs = Vec::new();
    for i in 0..3 {
        let f = dir.join(format!("arrive{i}.img"));
        fs::File::create(&f)
            .unwrap()
            .set_len(size + (1 << 20))
            .unwrap();
        let dev = Loop::new(&f).expect("losetup");
        let name = dev.0.clone();
        devs.push(dev);
        loop {
            let e = next(&mut events);
            if e["event"] == "arrived" && e["disk"] == name.as_str() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    loop {
        let e = next(&mut events);
        if e["event"] == "station-done" {
            assert_eq!(e["written"], 3, "{events:?}");
            assert_eq!(e["failed"], 0, "{events:?}");
            break;
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    for dev in &devs {
        b.verify(dev.path(), &[]).expect(0, "VERIFIED");
    }
    // The disk present at start was never touched.
    assert!(fs::read(&present).unwrap().iter().all(|&x| x == 0));
    drop(devs);
    assert!(status.success(), "{err}");
    let start = events
        .iter()
        .find(|e| e["event"] == "station-start")
        .unwrap();
    assert!(
        start["present"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| before.0.ends_with(p.as_str().unwrap())),
        "{start}"
    );
    let finished: Vec<&Value> = events.iter().filter(|e| e["event"] == "finished").collect();
    assert_eq!(finished.len(), 3, "{events:?}");
    assert!(finished.iter().all(|e| e["ok"] == true));
    let recs: Vec<Value> = fs::read_to_string(&rec)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r["result"] == "verified"));
}

#[test]
fn an_untrusted_image_or_no_port_rule_stops_the_station_at_once() {
    let b = signed();
    let other = new_key(&b.dir().join("k2"), "other");
    let t2 = b.dir().join("t2");
    fs::create_dir_all(t2.join("trusted")).unwrap();
    fs::copy(&other.public, t2.join("trusted/o.pub")).unwrap();
    let o = run(&[
        "station",
        s(&b.zst()),
        "--trust",
        s(&t2),
        "--ports",
        "transport:usb",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not in the trust store"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "station",
        s(&b.zst()),
        "--trust",
        s(&b.trust),
        "--ports",
        "usb",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("transport:NAME"), "{}", stderr(&o));
}
