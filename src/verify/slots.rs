//! Personalization slots in `verify`: the partitions the block map leaves out because their
//! bytes differ per device (see [`crate::personalize`]), checked as strictly as a per-device
//! value allows, and each slot's value reported by its digest (never its content).
//!
//! - **META** (the partition of every META slot): it must hold a valid ADV copy; every base
//!   value (`meta_base`) present with its digest; no key other than the base keys and the slot
//!   keys; no key twice; and the whole partition exactly as edgeimage encodes those values
//!   (both copies, zeros after them), so no byte of it is left unexplained. Each slot key is
//!   reported present (digest, size) or absent.
//! - **metal-iso**: all zeros (reported absent), or exactly the FAT volume edgeimage makes
//!   for the `config.yaml` it holds (label, volume ID, timestamps, nothing else on it), rebuilt
//!   with [`crate::personalize::metal_iso_partition`] from the signed manifest and compared byte
//!   for byte. `config.yaml` is reported by its digest and size.
//!
//! Any deviation is a content mismatch naming the partition and what differs (the META key).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Mismatch, Report};
use crate::artifact::manifest::{Manifest, PartitionInfo, Slot, SlotKind};
use crate::config::delivery::METAL_ISO_FILE;
use crate::format::{fat, meta};
use crate::personalize::{self, MetalIsoParams};
use crate::profile::MetaValue;

/// What `verify` found in one slot.
#[derive(Clone, Debug, Serialize)]
pub struct SlotReport {
    pub name: String,
    pub kind: SlotKind,
    /// The META key (`0x0a`), for META slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_key: Option<String>,
    /// The value is a secret (only its digest is shown, as for every slot).
    pub secret: bool,
    /// Whether the target holds a value for the slot.
    pub present: bool,
    /// SHA-256 of the value, when present.
    pub sha256: Option<String>,
    /// Size of the value in bytes, when present.
    pub bytes: Option<u64>,
}

impl SlotReport {
    /// The human line `verify` prints for the slot.
    pub fn line(&self) -> String {
        let place = match &self.meta_key {
            Some(k) => format!("META {k}"),
            None => self.kind.as_str().to_string(),
        };
        let secret = if self.secret { ", secret" } else { "" };
        match (&self.sha256, self.bytes) {
            (Some(sha), Some(n)) if self.present => {
                format!(
                    "slot {} ({place}{secret}): {n} bytes sha256 {sha}",
                    self.name
                )
            }
            _ => format!("slot {} ({place}{secret}): absent", self.name),
        }
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Records problems in one slot partition as mismatches.
struct Problems<'a> {
    part: &'a PartitionInfo,
    r: &'a mut Report,
    found: usize,
}

impl Problems<'_> {
    fn add(&mut self, what: String, expected: String, actual: Option<String>) {
        self.found += 1;
        self.r.mismatches.push(Mismatch {
            place: format!("partition {} ({})", self.part.number, self.part.label),
            start: self.part.offset,
            end: self.part.offset + self.part.size,
            expected,
            actual,
            whole_file: false,
            what: Some(what),
        });
    }
}

/// Check every slot partition of `m` and report every slot. `parts` holds each slot
/// partition's bytes by partition number, `None` when the target ends before the partition
/// does.
pub(super) fn check(m: &Manifest, parts: &BTreeMap<u32, Option<Vec<u8>>>, r: &mut Report) {
    let mut values: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for part in m.slot_partitions() {
        let slots: Vec<&Slot> = m
            .slots
            .iter()
            .filter(|s| s.partition.number == part.number)
            .collect();
        let mut p = Problems {
            part,
            r: &mut *r,
            found: 0,
        };
        let Some(Some(bytes)) = parts.get(&part.number) else {
            p.add(
                format!(
                    "the slot partition (bytes {}-{}) is missing: the target is shorter than the image (truncated?)",
                    part.offset,
                    part.offset + part.size - 1
                ),
                "the partition".to_string(),
                None,
            );
            continue;
        };
        match slots.first().map(|s| s.kind) {
            Some(SlotKind::Meta) => {
                let found = check_meta(m, &slots, bytes, &mut p);
                for s in &slots {
                    let v = s.meta_key.and_then(|k| found.get(&k).cloned());
                    values.insert(s.name.clone(), v);
                }
            }
            Some(SlotKind::MetalIso) => {
                let config = check_metal_iso(m, bytes, &mut p);
                for s in &slots {
                    values.insert(s.name.clone(), config.clone());
                }
            }
            None => {}
        }
    }
    r.slots = m
        .slots
        .iter()
        .map(|s| {
            let v = values.get(&s.name).cloned().flatten();
            SlotReport {
                name: s.name.clone(),
                kind: s.kind,
                meta_key: s.meta_key.map(|k| format!("0x{k:02x}")),
                secret: s.secret,
                present: v.is_some(),
                sha256: v.as_deref().map(sha),
                bytes: v.as_ref().map(|v| v.len() as u64),
            }
        })
        .collect();
}

/// Check the META partition; returns the values of the slot keys it holds.
fn check_meta(
    m: &Manifest,
    slots: &[&Slot],
    bytes: &[u8],
    p: &mut Problems,
) -> BTreeMap<u8, Vec<u8>> {
    let parsed = meta::parse(bytes);
    if parsed.copy.is_none() {
        p.add(
            "no valid META copy: Talos would read META as empty and the base values are gone"
                .to_string(),
            "a valid META copy".to_string(),
            Some(sha(bytes)),
        );
        return BTreeMap::new();
    }
    let slot_keys: BTreeSet<u32> = slots
        .iter()
        .filter_map(|s| s.meta_key.map(u32::from))
        .collect();
    let mut seen = BTreeSet::new();
    for (tag, _) in &parsed.values {
        if !seen.insert(*tag) {
            p.add(
                format!("META key 0x{tag:02x} is stored twice"),
                "each key once".to_string(),
                None,
            );
        }
    }
    for b in &m.meta_base {
        match parsed.values.iter().find(|(t, _)| *t == u32::from(b.key)) {
            None => p.add(
                format!("META key 0x{:02x} of the base image is missing", b.key),
                b.sha256.clone(),
                None,
            ),
            Some((_, v)) if sha(v) != b.sha256 => p.add(
                format!(
                    "META key 0x{:02x} differs from the base image's value",
                    b.key
                ),
                b.sha256.clone(),
                Some(sha(v)),
            ),
            Some(_) => {}
        }
    }
    for (tag, v) in &parsed.values {
        let base = m.meta_base.iter().any(|b| u32::from(b.key) == *tag);
        if !base && !slot_keys.contains(tag) {
            p.add(
                format!(
                    "META key 0x{tag:02x} ({} bytes) is neither a base value nor a slot",
                    v.len()
                ),
                "no such key".to_string(),
                Some(sha(v)),
            );
        }
    }
    if p.found == 0 {
        // Every byte of the partition follows from its values: both copies, zeros after.
        let values: Vec<MetaValue> = parsed
            .values
            .iter()
            .filter_map(|(t, v)| {
                u8::try_from(*t).ok().map(|key| MetaValue {
                    key,
                    value: v.clone(),
                })
            })
            .collect();
        let canonical = meta::partition(&values).and_then(|l| Ok(l.to_vec()?));
        match canonical {
            Ok(c) if c == bytes => {}
            Ok(c) => p.add(
                format!(
                    "the META partition is not as edgeimage writes its values (copy {} was read; the other copy or the zeros after them differ)",
                    parsed.copy.unwrap_or(1)
                ),
                sha(&c),
                Some(sha(bytes)),
            ),
            Err(e) => p.add(
                format!("the META values cannot be encoded again: {e:#}"),
                "encodable META values".to_string(),
                Some(sha(bytes)),
            ),
        }
    }
    parsed
        .values
        .into_iter()
        .filter(|(t, _)| slot_keys.contains(t))
        .filter_map(|(t, v)| u8::try_from(t).ok().map(|k| (k, v)))
        .collect()
}

/// Check the metal-iso partition; returns `config.yaml` when it holds one.
fn check_metal_iso(m: &Manifest, bytes: &[u8], p: &mut Problems) -> Option<Vec<u8>> {
    if bytes.iter().all(|&b| b == 0) {
        return None;
    }
    let read = || -> Result<Vec<u8>, String> {
        let vol =
            fat::Volume::from_bytes(bytes).map_err(|e| format!("not a FAT volume ({e:#})"))?;
        let entry = vol
            .find(METAL_ISO_FILE)
            .map_err(|e| format!("{METAL_ISO_FILE} cannot be looked up ({e:#})"))?
            .filter(|e| !e.is_dir)
            .ok_or_else(|| format!("no {METAL_ISO_FILE}"))?;
        vol.read_to_end(&entry, bytes.len() as u64)
            .map_err(|e| format!("{METAL_ISO_FILE} is unreadable ({e:#})"))
    };
    let config = match read() {
        Ok(c) => c,
        Err(why) => {
            p.add(
                format!(
                    "the metal-iso partition is neither all zeros nor a volume with {METAL_ISO_FILE}: {why}"
                ),
                "a metal-iso volume as edgeimage writes it".to_string(),
                Some(sha(bytes)),
            );
            return None;
        }
    };
    let rebuilt = MetalIsoParams::from_manifest(m)
        .and_then(|params| personalize::metal_iso_partition(&params, &config));
    match rebuilt {
        Ok(want) if want == bytes => {}
        Ok(want) => p.add(
            format!(
                "the metal-iso partition holds more or other than {METAL_ISO_FILE} on the volume edgeimage writes (another file, label, timestamp or FAT field)"
            ),
            sha(&want),
            Some(sha(bytes)),
        ),
        Err(e) => p.add(
            format!("the metal-iso volume cannot be made again for its {METAL_ISO_FILE}: {e:#}"),
            "a metal-iso volume as edgeimage writes it".to_string(),
            Some(sha(bytes)),
        ),
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::manifest::{MetaBase, SlotPartition};

    const BASE_VALUE: &[u8] = b"site-17";

    /// A manifest with META (partition 2, slots `net` = 0x0a and `token` = 0x0d, secret) and
    /// metal-iso (partition 3, slot `cfg`), and the base META value 0x0c.
    fn manifest() -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format": "edgeimage-manifest", "version": 1, "name": "t", "build_number": 1,
            "talos_version": "v1.12.5", "arch": "amd64",
            "image": {"size": 5u64 << 20, "sha256": "a".repeat(64), "disk_guid": "G"},
            "partitions": [
                {"number": 2, "label": "META", "type_guid": "T", "guid": "0fc63daf-8483-4772-8e79-3d69d8477de4",
                 "offset": 1u64 << 20, "size": 1u64 << 20, "sha256": "b".repeat(64), "slot": true},
                {"number": 3, "label": "metal-iso", "type_guid": "T", "guid": "12345678-aaaa-8bbb-8ccc-000000000000",
                 "offset": 2u64 << 20, "size": 1u64 << 20, "sha256": "c".repeat(64), "slot": true}
            ],
            "manifest_partition": {"number": 4, "label": "edgeimage-manifest", "type_guid": "T",
                 "guid": "U", "offset": 3u64 << 20, "size": 1u64 << 20},
            "block_map": {"block_size": 4096, "mapped_blocks": 1,
                 "ranges": [{"first": 0, "last": 0, "sha256": "d".repeat(64)}]},
            "provenance": {"edgeimage_version": "0", "source_date_epoch": 1_700_000_000u64,
                 "profile_sha256": "e".repeat(64), "assets": [], "extensions": []}
        }))
        .unwrap();
        let slot = |name: &str, kind, key, number, label: &str, secret| Slot {
            name: name.into(),
            kind,
            meta_key: key,
            partition: SlotPartition {
                number,
                label: label.into(),
                offset: u64::from(number - 1) << 20,
                size: 1 << 20,
            },
            secret,
            template_sha256: "f".repeat(64),
        };
        m.slots = vec![
            slot("net", SlotKind::Meta, Some(0x0a), 2, "META", false),
            slot("token", SlotKind::Meta, Some(0x0d), 2, "META", true),
            slot("cfg", SlotKind::MetalIso, None, 3, "metal-iso", false),
        ];
        m.meta_base = vec![MetaBase {
            key: 0x0c,
            sha256: sha(BASE_VALUE),
        }];
        m.check().unwrap();
        m
    }

    fn meta_bytes(values: &[(u8, &[u8])]) -> Vec<u8> {
        let v: Vec<MetaValue> = values
            .iter()
            .map(|(k, v)| MetaValue {
                key: *k,
                value: v.to_vec(),
            })
            .collect();
        meta::partition(&v).unwrap().to_vec().unwrap()
    }

    fn base_meta() -> Vec<u8> {
        meta_bytes(&[(0x0c, BASE_VALUE)])
    }

    fn iso(config: &[u8]) -> Vec<u8> {
        let m = manifest();
        personalize::metal_iso_partition(&MetalIsoParams::from_manifest(&m).unwrap(), config)
            .unwrap()
    }

    /// Run the check on these partition contents.
    fn run(meta_part: Option<Vec<u8>>, iso_part: Option<Vec<u8>>) -> Report {
        let mut r = Report::new(std::path::Path::new("t.raw"));
        let parts = BTreeMap::from([(2, meta_part), (3, iso_part)]);
        check(&manifest(), &parts, &mut r);
        r
    }

    fn whats(r: &Report) -> Vec<String> {
        r.mismatches
            .iter()
            .map(|m| format!("{}: {}", m.place, m.what.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_base_image_passes_with_slot_keys_absent() {
        let cfg = b"version: v1alpha1\n";
        let r = run(Some(base_meta()), Some(iso(cfg)));
        assert!(r.mismatches.is_empty(), "{:?}", whats(&r));
        let lines: Vec<String> = r.slots.iter().map(SlotReport::line).collect();
        assert_eq!(
            lines,
            [
                "slot net (META 0x0a): absent".to_string(),
                "slot token (META 0x0d, secret): absent".to_string(),
                format!(
                    "slot cfg (metal-iso): {} bytes sha256 {}",
                    cfg.len(),
                    sha(cfg)
                ),
            ]
        );
        assert!(!r.slots[0].present && r.slots[0].sha256.is_none());
        assert_eq!(r.slots[0].meta_key.as_deref(), Some("0x0a"));
        assert!(r.slots[2].meta_key.is_none());
    }

    #[test]
    fn personalized_values_are_reported_by_digest() {
        let dev = personalize::meta_partition(
            &base_meta(),
            &[(0x0a, b"x".to_vec()), (0x0d, b"SECRET-TOKEN".to_vec())],
        )
        .unwrap();
        let r = run(Some(dev), Some(vec![0; 1 << 20]));
        assert!(r.mismatches.is_empty(), "{:?}", whats(&r));
        assert_eq!(
            r.slots[0].line(),
            format!("slot net (META 0x0a): 1 bytes sha256 {}", sha(b"x"))
        );
        assert_eq!(
            r.slots[1].sha256.as_deref(),
            Some(sha(b"SECRET-TOKEN").as_str())
        );
        assert_eq!(r.slots[1].bytes, Some(12));
        assert_eq!(r.slots[2].line(), "slot cfg (metal-iso): absent");
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("SECRET-TOKEN"), "{json}");
        assert!(!r.details().join("\n").contains("SECRET-TOKEN"));
    }

    #[test]
    fn base_keys_changed_missing_or_joined_by_others_are_mismatches() {
        let iso_ok = Some(iso(b"c"));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                meta_bytes(&[(0x0c, b"site-18")]),
                "META key 0x0c differs from the base image's value",
            ),
            (
                meta_bytes(&[]),
                "META key 0x0c of the base image is missing",
            ),
            (
                meta_bytes(&[(0x0c, BASE_VALUE), (0x0e, b"x")]),
                "META key 0x0e (1 bytes) is neither a base value nor a slot",
            ),
            (
                meta_bytes(&[(0x0b, b"x"), (0x0c, BASE_VALUE)]),
                "META key 0x0b (1 bytes) is neither a base value nor a slot",
            ),
            (vec![0; 1 << 20], "no valid META copy"),
            (
                {
                    let mut b = base_meta();
                    b[meta::BLOCK_LEN..2 * meta::BLOCK_LEN].fill(0);
                    b
                },
                "not as edgeimage writes its values (copy 1 was read",
            ),
            (
                {
                    let mut b = base_meta();
                    b[(1 << 20) - 1] = 1;
                    b
                },
                "not as edgeimage writes its values",
            ),
            (
                {
                    // Copy 1 damaged: Talos reads copy 2, but the partition is not canonical.
                    let mut b = base_meta();
                    b[100] ^= 1;
                    b
                },
                "(copy 2 was read",
            ),
            (
                {
                    // A slot key stored twice (the second record hidden behind the first).
                    let mut b = meta::block(&[
                        MetaValue {
                            key: 0x0a,
                            value: b"a".to_vec(),
                        },
                        MetaValue {
                            key: 0x0b,
                            value: b"a".to_vec(),
                        },
                        MetaValue {
                            key: 0x0c,
                            value: BASE_VALUE.to_vec(),
                        },
                    ])
                    .unwrap();
                    b[4 + 9 + 3] = 0x0a;
                    let n = meta::BLOCK_LEN;
                    b[n - 36..n - 4].fill(0);
                    let sum = Sha256::digest(&b);
                    b[n - 36..n - 4].copy_from_slice(&sum);
                    let mut part = b.clone();
                    part.extend_from_slice(&b);
                    part.resize(1 << 20, 0);
                    part
                },
                "META key 0x0a is stored twice",
            ),
        ];
        for (bytes, want) in cases {
            let r = run(Some(bytes), iso_ok.clone());
            let w = whats(&r);
            assert!(
                w.iter()
                    .any(|x| x.starts_with("partition 2 (META): ") && x.contains(want)),
                "wanted {want:?}: {w:?}"
            );
            assert!(r
                .mismatches
                .iter()
                .all(|m| m.start == 1 << 20 && m.end == 2 << 20));
        }
    }

    #[test]
    fn metal_iso_must_be_the_volume_edgeimage_writes_or_zeros() {
        let mut extra = iso(b"c");
        let last = extra.len() - 1;
        extra[last] = 0x55;
        let r = run(Some(base_meta()), Some(extra));
        let w = whats(&r);
        assert!(
            w.len() == 1
                && w[0].contains(
                    "partition 3 (metal-iso): the metal-iso partition holds more or other"
                ),
            "{w:?}"
        );
        assert!(r.slots[2].present, "config.yaml is still reported");
        let r = run(Some(base_meta()), Some(vec![0xaa; 1 << 20]));
        let w = whats(&r);
        assert!(
            w.len() == 1 && w[0].contains("neither all zeros nor"),
            "{w:?}"
        );
        assert!(!r.slots[2].present);
    }

    #[test]
    fn missing_partitions_are_mismatches() {
        let r = run(None, None);
        let w = whats(&r);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains(
                "partition 2 (META): the slot partition (bytes 1048576-2097151) is missing"
            ),
            "{w:?}"
        );
        assert!(r.mismatches.iter().all(|m| m.actual.is_none()));
        assert!(r.slots.iter().all(|s| !s.present));
    }
}
