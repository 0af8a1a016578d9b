//! Hostile FAT volumes inside otherwise good images: an ESP whose directories form a cycle,
//! whose FAT chains loop, whose entries name cluster 0, 1 or a cluster past the end (each of
//! which panicked, hung or ate memory with the `fatfs` crate), and a metal-iso slot partition
//! corrupted the same ways, which `verify` reads. Every run of the binary is bounded: a loop
//! that comes back fails the test instead of hanging it.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::watch;
use common::*;
use edgeimage::format::fat::{Entry, FatType, Volume};
use edgeimage::talos::Arch;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// A partition of the manifest: (number, offset, size).
fn partition(m: &Value, label: &str) -> (u64, u64, u64) {
    let p = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no {label} partition in {m:#}"));
    (
        p["number"].as_u64().unwrap(),
        p["offset"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
    )
}

fn entry(vol: &[u8], path: &str) -> Entry {
    Volume::from_bytes(vol)
        .unwrap()
        .find(path)
        .unwrap()
        .unwrap_or_else(|| panic!("no {path} on the volume"))
}

/// Point the directory entry of `e` at `cluster`.
fn set_cluster(vol: &mut [u8], e: &Entry, cluster: u32) {
    let at = e.entry_offset as usize;
    vol[at + 26..at + 28].copy_from_slice(&(cluster as u16).to_le_bytes());
    vol[at + 20..at + 22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
}

/// Set FAT entry `n` to `value` in every FAT of the volume.
fn set_fat(vol: &mut [u8], n: u32, value: u32) {
    let le16 = |at: usize| u64::from(u16::from_le_bytes([vol[at], vol[at + 1]]));
    let bps = le16(11);
    let reserved = le16(14);
    let fats = u64::from(vol[16]);
    let fat_sectors = match le16(22) {
        0 => u64::from(u32::from_le_bytes(vol[36..40].try_into().unwrap())),
        s => s,
    };
    let t = Volume::from_bytes(vol).unwrap().fat_type();
    let n = n as usize;
    for k in 0..fats {
        let base = ((reserved + k * fat_sectors) * bps) as usize;
        match t {
            FatType::Fat32 => {
                vol[base + 4 * n..base + 4 * n + 4].copy_from_slice(&value.to_le_bytes())
            }
            FatType::Fat16 => {
                vol[base + 2 * n..base + 2 * n + 2].copy_from_slice(&(value as u16).to_le_bytes())
            }
            FatType::Fat12 => {
                let at = base + n * 3 / 2;
                let v = value & 0x0FFF;
                if n % 2 == 0 {
                    vol[at] = v as u8;
                    vol[at + 1] = (vol[at + 1] & 0xF0) | (v >> 8) as u8;
                } else {
                    vol[at] = (vol[at] & 0x0F) | ((v & 0x0F) << 4) as u8;
                    vol[at + 1] = (v >> 4) as u8;
                }
            }
        }
    }
}

/// A change to a volume's bytes.
type Patch<'a> = dyn Fn(&mut Vec<u8>) + 'a;

/// A copy of `raw` named `name` with `vol` written at `offset`.
fn with_volume(raw: &Path, dir: &Path, name: &str, offset: u64, vol: &[u8]) -> PathBuf {
    let to = dir.join(name);
    fs::copy(raw, &to).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&to)
        .unwrap()
        .write_all_at(vol, offset)
        .unwrap();
    to
}

/// The UKI's path on the ESP.
fn uki_path(esp: &[u8]) -> String {
    let v = Volume::from_bytes(esp).unwrap();
    let linux = v.find("EFI/Linux").unwrap().unwrap();
    v.list(&linux)
        .unwrap()
        .into_iter()
        .find(|e| !e.is_dir && e.path.to_ascii_lowercase().ends_with(".efi"))
        .expect("a UKI under EFI/Linux")
        .path
}

#[test]
fn inspect_and_verify_refuse_hostile_esps_without_panicking_or_hanging() {
    let b = setup("", true);
    let m = b.manifest();
    let (number, offset, size) = partition(&m, "EFI");
    let good = read_at(&b.raw(), offset, size);
    let vol = Volume::from_bytes(&good).unwrap();
    assert_eq!(vol.fat_type(), FatType::Fat32);
    let clusters = vol.clusters();
    let cluster_size = vol.cluster_size();
    let root = vol.root().first_cluster;
    drop(vol);
    let place = format!("partition {number} (EFI)");
    let uki = uki_path(&good);
    let uki_e = entry(&good, &uki);
    let efi = entry(&good, "EFI");
    let linux = entry(&good, "EFI/Linux");
    let boot = entry(&good, "EFI/boot");
    let n = uki_e.size.div_ceil(cluster_size) as u32;
    assert!(n > 2, "the UKI takes {n} clusters");
    let last = uki_e.first_cluster + n - 1;

    let mut cases: Vec<(String, Vec<u8>, Vec<String>)> = Vec::new();
    let mut case = |name: &str, patch: &dyn Fn(&mut Vec<u8>), words: Vec<String>| {
        let mut v = good.clone();
        patch(&mut v);
        cases.push((name.to_string(), v, words));
    };
    // (a) A directory under EFI/ whose first cluster is the root's, or its parent's.
    case(
        "cycle-root",
        &|v| set_cluster(v, &boot, root),
        vec![
            format!("directory cycle at cluster {root}"),
            "\"EFI/boot\"".into(),
        ],
    );
    case(
        "cycle-parent",
        &|v| set_cluster(v, &linux, efi.first_cluster),
        vec![
            format!("directory cycle at cluster {}", efi.first_cluster),
            "\"EFI/Linux\"".into(),
        ],
    );
    // (b) A directory whose FAT chain loops.
    case(
        "dir-chain-loop",
        &|v| set_fat(v, linux.first_cluster, linux.first_cluster),
        vec![format!(
            "directory \"EFI/Linux\" (from cluster {0}) loops back to cluster {0}",
            linux.first_cluster
        )],
    );
    // (c) A file whose FAT chain loops.
    case(
        "file-chain-loop",
        &|v| set_fat(v, last, uki_e.first_cluster),
        vec![
            format!("UKI {uki}"),
            format!(
                "loops: cluster {last} links back to cluster {}",
                uki_e.first_cluster
            ),
        ],
    );
    // (d) Entries naming cluster 0, 1 or one past the end (fatfs panicked here).
    for c in [0, 1, clusters + 2] {
        case(
            &format!("dir-cluster-{c}"),
            &|v| set_cluster(v, &linux, c),
            vec![format!(
                "directory \"EFI/Linux\" (entry at byte {}) names cluster {c}, not a data cluster",
                linux.entry_offset
            )],
        );
        case(
            &format!("file-cluster-{c}"),
            &|v| set_cluster(v, &uki_e, c),
            vec![format!(
                "file \"{uki}\" (entry at byte {}) names cluster {c}, not a data cluster",
                uki_e.entry_offset
            )],
        );
    }
    let tmp = b.dir().join("hostile");
    fs::create_dir_all(&tmp).unwrap();
    for (name, vol, words) in &cases {
        let img = with_volume(&b.raw(), &tmp, &format!("{name}.raw"), offset, vol);
        let ran = watch::run(&["inspect", img.to_str().unwrap()], &[], LIMIT);
        println!("{name}: {}", ran.stderr.trim_end());
        let mut want: Vec<&str> = words.iter().map(String::as_str).collect();
        want.push(&place);
        want.push("reading the FAT filesystem");
        ran.refused(&want);
        // verify does not read the ESP's files, only its bytes: a mismatch, never a panic.
        let v = b.verify(&img, &[]);
        v.expect(7, "CONTENT MISMATCH");
        fs::remove_file(&img).unwrap();
    }
    // The untouched copy still inspects.
    let img = with_volume(&b.raw(), &tmp, "good.raw", offset, &good);
    let ran = watch::run(&["inspect", img.to_str().unwrap()], &[], LIMIT);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

/// The fixture on a 48 MiB disk with the machine configuration on a metal-iso slot partition.
fn metal_iso_slot_build() -> Built {
    let f = fixture(Arch::Amd64, "");
    let text = fs::read_to_string(&f.profile).unwrap();
    let small = text
        .replace("disk_size = \"128MiB\"", "disk_size = \"48MiB\"")
        .replace("esp_size = \"100MiB\"", "esp_size = \"40MiB\"");
    assert_ne!(small, text);
    let d = f.dir.path();
    let machine = edgeimage::config::fixtures::controlplane_yaml();
    fs::write(d.join("machine.yaml"), &machine).unwrap();
    fs::write(d.join("config.tmpl"), machine + "# device {{ host }}\n").unwrap();
    fs::write(
        &f.profile,
        format!(
            "{small}\n[[personalize]]\nname = \"config\"\nmetal_iso = true\n\
             template = \"config.tmpl\"\n[config]\npath = \"machine.yaml\"\n\
             delivery = \"metal-iso\"\n"
        ),
    )
    .unwrap();
    built_from(f, true)
}

#[test]
fn verify_and_inspect_report_a_hostile_metal_iso_slot() {
    let b = metal_iso_slot_build();
    let m = b.manifest();
    let (number, offset, size) = partition(&m, "metal-iso");
    let good = read_at(&b.raw(), offset, size);
    let vol = Volume::from_bytes(&good).unwrap();
    let clusters = vol.clusters();
    let cluster_size = vol.cluster_size();
    drop(vol);
    let config = entry(&good, "config.yaml");
    let n = config.size.div_ceil(cluster_size) as u32;
    assert!(n > 1, "config.yaml takes {n} clusters");
    let tmp = b.dir().join("hostile");
    fs::create_dir_all(&tmp).unwrap();
    let cases: Vec<(&str, Box<Patch<'_>>, String)> = vec![
        (
            "loop",
            Box::new(|v: &mut Vec<u8>| {
                set_fat(v, config.first_cluster + n - 1, config.first_cluster)
            }),
            format!(
                "loops: cluster {} links back to cluster {}",
                config.first_cluster + n - 1,
                config.first_cluster
            ),
        ),
        (
            "cluster-1",
            Box::new(|v: &mut Vec<u8>| set_cluster(v, &config, 1)),
            "names cluster 1, not a data cluster".to_string(),
        ),
        (
            "past-the-end",
            Box::new(|v: &mut Vec<u8>| set_cluster(v, &config, clusters + 2)),
            format!("names cluster {}, not a data cluster", clusters + 2),
        ),
    ];
    for (name, patch, want) in &cases {
        let mut vol = good.clone();
        patch(&mut vol);
        let img = with_volume(&b.raw(), &tmp, &format!("{name}.raw"), offset, &vol);
        let v = b.verify(&img, &[]);
        let verdict = v.expect(7, "CONTENT MISMATCH");
        println!("{name}: {verdict}");
        assert!(
            verdict.contains(
                "the metal-iso partition is neither all zeros nor a volume with config.yaml"
            ),
            "{name}: {}",
            v.stdout
        );
        assert!(verdict.contains(want.as_str()), "{name}: {}", v.stdout);
        let ran = watch::run(&["inspect", img.to_str().unwrap()], &[], LIMIT);
        ran.refused(&[
            &format!(
                "partition {number} (metal-iso) at bytes {offset}..{}",
                offset + size
            ),
            "reading config.yaml",
            want,
        ]);
    }
}
