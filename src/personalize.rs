//! Personalization slots: one signed base image, written to many devices, each with its own
//! values (host name, addresses, registration data) in Talos META keys or in the `metal-iso`
//! configuration partition, and still verifiable.
//!
//! A profile's `[[personalize]]` entries name the slots: a META key (0x0a, the network
//! configuration, or one of the user keys 0x0c-0x0e) or `config.yaml` of the `metal-iso`
//! partition, each with a template the device's value is rendered from ([`render`]). The build
//! writes the base image as usual (slot keys absent from META, the profile's configuration on
//! `metal-iso`), and its manifest marks each slot (`slots`, `"slot": true` on the partition);
//! the block map leaves slot partitions out, so everything else is still proven byte for byte.
//! For META the manifest also carries the digest of every base value (`meta_base`): a device's
//! META must hold exactly those base values, each unchanged, plus any slot keys.
//!
//! At flash time a flasher takes the base partition from the signed image and calls
//! [`meta_partition`] (base values plus the device's slot values, encoded as the build encodes
//! META) or [`metal_iso_partition`] (the device's `config.yaml` on the same FAT volume the build
//! makes, with [`MetalIsoParams::from_manifest`]), and writes the result over the partition.
//! `edgeimage verify` then checks such a device strictly everywhere else and reports each
//! slot's digest.

use std::collections::BTreeMap;

use crate::template::Piece;
use anyhow::{anyhow, bail, Context, Result};

use crate::artifact::manifest::{Manifest, Slot, SlotKind};
use crate::config::delivery;
use crate::format::meta;
use crate::profile::{MetaValue, META_SIZE};

/// META keys a slot may be: 0x0a (the network configuration) and the user keys 0x0c-0x0e.
pub const META_KEYS: [u8; 4] = [0x0a, 0x0c, 0x0d, 0x0e];

/// Longest slot name.
pub const MAX_NAME: usize = 32;

/// Largest slot partition (`verify` reads a slot partition into memory).
pub const MAX_SLOT_PARTITION: u64 = 64 << 20;

/// Is `key` a META key a slot may be?
pub fn is_meta_key(key: u8) -> bool {
    META_KEYS.contains(&key)
}

/// Is `name` a slot name: 1-32 characters `a-z`, `0-9`, `-`?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Split a template into text and `{{ field }}` placeholders (the one template parser,
/// [`crate::template`]).
fn pieces(template: &str) -> Result<Vec<Piece<'_>>> {
    crate::template::parse(template)
        .map_err(|e| anyhow::anyhow!("line {}, column {}: {}", e.line, e.column, e.message))
}

/// The field names a template uses, sorted, each once. Errors like [`render`] on a malformed
/// placeholder.
pub fn fields(template: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Field { name, .. } => Some(name.to_string()),
            Piece::Text(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Fill in a template: each `{{field}}` (spaces allowed inside the braces) becomes the
/// field's value, verbatim; everything else is copied. There is no other syntax (no escapes, no
/// conditions). A placeholder without its closing `}}`, with something other than a field name
/// inside, or naming a field not in `fields` is an error naming its line and column (values
/// are never part of a message).
pub fn render(template: &str, fields: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    for p in pieces(template)? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Field { name, line, column } => match fields.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    let known: Vec<&str> = fields.keys().map(String::as_str).collect();
                    bail!(
                        "line {line}, column {column}: unknown field {name:?} (the fields given: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    );
                }
            },
        }
    }
    Ok(out)
}

/// The META partition of one device: the base partition's values (taken from the signed
/// image) with the slot `values` added (or replaced), encoded as the build encodes META (both
/// ADV copies, records in ascending key order, zeros to 1 MiB). `meta_partition(base, &[])`
/// gives back a base the build made, byte for byte.
///
/// Refused: a base that is not 1 MiB or holds no valid ADV copy (or a key above 255 or twice),
/// a key that is not a slot key ([`META_KEYS`]), a key given twice, values that do not fit one
/// ADV copy.
pub fn meta_partition(base_partition: &[u8], values: &[(u8, Vec<u8>)]) -> Result<Vec<u8>> {
    if base_partition.len() as u64 != META_SIZE {
        bail!(
            "the base META partition is {} bytes; Talos's META partition is exactly {META_SIZE}: read the whole partition labelled META from the signed image",
            base_partition.len()
        );
    }
    let parsed = meta::parse(base_partition);
    if parsed.copy.is_none() {
        bail!("the base META partition holds no valid ADV copy: read it from the signed image");
    }
    let mut out: Vec<MetaValue> = Vec::with_capacity(parsed.values.len() + values.len());
    for (tag, value) in parsed.values {
        let key = u8::try_from(tag)
            .map_err(|_| anyhow!("the base META partition holds key {tag}, above 255"))?;
        if out.iter().any(|m| m.key == key) {
            bail!("the base META partition holds key 0x{key:02x} twice");
        }
        out.push(MetaValue { key, value });
    }
    for (i, (key, value)) in values.iter().enumerate() {
        if !is_meta_key(*key) {
            bail!(
                "META key 0x{key:02x} is not a personalization key: use 0x0a (network) or 0x0c-0x0e (user keys)"
            );
        }
        if values[..i].iter().any(|(k, _)| k == key) {
            bail!("META key 0x{key:02x} is given twice");
        }
        out.retain(|m| m.key != *key);
        out.push(MetaValue {
            key: *key,
            value: value.clone(),
        });
    }
    out.sort_by_key(|m| m.key);
    let layout = meta::partition(&out)?;
    layout.to_vec().context("encoding the META partition")
}

/// What the `metal-iso` FAT volume of an image is made from, besides `config.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetalIsoParams {
    /// Partition size in bytes.
    pub size: u64,
    /// The FAT volume serial: the first 4 bytes of the partition's GUID.
    pub volume_id: u32,
    /// The partition's first sector (`BPB_HiddSec`).
    pub first_lba: u32,
    /// Every timestamp: the build's `SOURCE_DATE_EPOCH`.
    pub mtime: u64,
    /// The image's logical block size (the FAT's sector size).
    pub sector_size: u64,
}

impl MetalIsoParams {
    /// The parameters of the metal-iso slot of a (signed) manifest: its partition's size,
    /// start and GUID, and the build's `SOURCE_DATE_EPOCH`.
    pub fn from_manifest(m: &Manifest) -> Result<MetalIsoParams> {
        let slot = m
            .slots
            .iter()
            .find(|s| s.kind == SlotKind::MetalIso)
            .ok_or_else(|| {
                anyhow!(
                    "the manifest of {} build {} has no metal-iso slot",
                    m.name,
                    m.build_number
                )
            })?;
        let p = m
            .partitions
            .iter()
            .find(|p| p.number == slot.partition.number)
            .ok_or_else(|| {
                anyhow!(
                    "the manifest's slot {} names partition {}, which partitions does not list",
                    slot.name,
                    slot.partition.number
                )
            })?;
        let guid: uuid::Uuid = p.guid.parse().map_err(|_| {
            anyhow!(
                "the manifest's partition {} ({}) has the GUID {:?}, which is not one",
                p.number,
                p.label,
                p.guid
            )
        })?;
        let sector_size = m.image.sector_size;
        let first_lba = u32::try_from(p.offset / sector_size).map_err(|_| {
            anyhow!(
                "the manifest's partition {} ({}) starts at byte {}, beyond what a FAT volume records",
                p.number,
                p.label,
                p.offset
            )
        })?;
        Ok(MetalIsoParams {
            size: p.size,
            volume_id: crate::compose::volume_id(&guid),
            first_lba,
            mtime: m.provenance.source_date_epoch,
            sector_size,
        })
    }
}

/// The `metal-iso` partition of one device: a FAT volume labelled `metal-iso` holding only
/// `config.yaml` with these bytes, made by the build's own code
/// ([`delivery::metal_iso_fat`]), so the configuration the build delivered gives back the
/// image's partition byte for byte.
pub fn metal_iso_partition(params: &MetalIsoParams, config: &[u8]) -> Result<Vec<u8>> {
    if params.size > MAX_SLOT_PARTITION {
        bail!(
            "the metal-iso partition is {} bytes; slot partitions are at most {MAX_SLOT_PARTITION}",
            params.size
        );
    }
    let layout = delivery::metal_iso_fat(
        config,
        &delivery::MetalIsoGeometry {
            size: params.size,
            epoch: params.mtime,
            volume_id: params.volume_id,
            first_lba: params.first_lba,
            sector_size: params.sector_size,
        },
    )?;
    layout
        .to_vec()
        .context("encoding the metal-iso configuration partition")
}

/// Check a rendered value before it is written: META 0x0a must be a Talos
/// `PlatformNetworkConfig` and the metal-iso slot a machine configuration, checked as the build
/// checks them (messages name YAML paths, never values); user keys take any bytes.
pub fn check_value(slot: &Slot, value: &[u8]) -> Result<()> {
    match (slot.kind, slot.meta_key) {
        (SlotKind::Meta, Some(crate::plan::META_NETWORK)) => {
            crate::config::network::check_network_config(value)
                .with_context(|| format!("slot {} ({})", slot.name, slot.place()))
        }
        (SlotKind::Meta, _) => Ok(()),
        (SlotKind::MetalIso, _) => {
            crate::config::machine::MachineConfig::from_bytes(
                value.to_vec(),
                &format!("slot {}", slot.name),
            )
            .with_context(|| format!("slot {} ({})", slot.name, slot.place()))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::manifest::{MetaBase, SlotPartition};
    use std::io::Read;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn render_fills_fields_with_or_without_spaces() {
        let f = map(&[("host", "edge-7"), ("ip", "10.0.0.7/24"), ("a.b-c_d", "x")]);
        let t = "hostname: {{host}}\naddress: {{ ip }} {{   ip}}\n{{a.b-c_d}}{{host}}";
        assert_eq!(
            render(t, &f).unwrap(),
            "hostname: edge-7\naddress: 10.0.0.7/24 10.0.0.7/24\nxedge-7"
        );
        assert_eq!(fields(t).unwrap(), ["a.b-c_d", "host", "ip"]);
        // Values are copied verbatim, even when they look like placeholders.
        let f2 = map(&[("x", "{{ y }}")]);
        assert_eq!(render("<{{x}}>", &f2).unwrap(), "<{{ y }}>");
        // Text without placeholders, single braces and a lone }} stay as they are.
        assert_eq!(render("a { b } }} c", &f).unwrap(), "a { b } }} c");
        assert_eq!(render("", &BTreeMap::new()).unwrap(), "");
    }

    #[test]
    fn render_refuses_unknown_unterminated_and_malformed_placeholders() {
        let f = map(&[("host", "SECRET-VALUE")]);
        let e = render("a: 1\nb: {{ hots }}\n", &f).unwrap_err().to_string();
        assert!(
            e.contains("line 2, column 4") && e.contains("unknown field \"hots\""),
            "{e}"
        );
        assert!(e.contains("the fields given: host"), "{e}");
        assert!(!e.contains("SECRET-VALUE"), "{e}");
        let e = render("x\n  y {{ host }} {{ host\n", &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 16") && e.contains("never closed"),
            "{e}"
        );
        for bad in [
            "{{}}", "{{ }}", "{{a b}}", "{{ {{x}}", "{{a\nb}}", "{{ho$t}}", "{{\tx}}",
        ] {
            let e = render(bad, &f).unwrap_err().to_string();
            assert!(
                e.contains("line 1, column 1") && e.contains("placeholder"),
                "{bad}: {e}"
            );
        }
        // Columns count characters, not bytes.
        let e = render("äöü {{x}}", &f).unwrap_err().to_string();
        assert!(e.contains("line 1, column 5"), "{e}");
        let e = render("{{x}}", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("(the fields given: none)"), "{e}");
        assert!(fields("{{ a").is_err());
    }

    fn mv(key: u8, v: &[u8]) -> MetaValue {
        MetaValue {
            key,
            value: v.to_vec(),
        }
    }

    #[test]
    fn meta_partition_of_no_values_is_the_base_and_adds_slot_keys() {
        // The base exactly as the build writes it (compose::meta::partition).
        let base = meta::partition(&[mv(0x0b, b"code"), mv(0x0f, b"uuid")])
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(meta_partition(&base, &[]).unwrap(), base);
        let empty = meta::partition(&[]).unwrap().to_vec().unwrap();
        assert_eq!(meta_partition(&empty, &[]).unwrap(), empty);

        let dev =
            meta_partition(&base, &[(0x0c, b"site".to_vec()), (0x0a, b"x".to_vec())]).unwrap();
        let want = meta::partition(&[
            mv(0x0a, b"x"),
            mv(0x0b, b"code"),
            mv(0x0c, b"site"),
            mv(0x0f, b"uuid"),
        ])
        .unwrap()
        .to_vec()
        .unwrap();
        assert_eq!(dev, want);
        let parsed = meta::parse(&dev);
        assert_eq!(parsed.copy, Some(1));
        assert_eq!(
            parsed.values.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [0x0a, 0x0b, 0x0c, 0x0f]
        );
        // A slot key already in the base is replaced.
        let again = meta_partition(&dev, &[(0x0c, b"other".to_vec())]).unwrap();
        let vals = meta::parse(&again).values;
        assert_eq!(vals[2], (0x0c, b"other".to_vec()));
        assert_eq!(vals.len(), 4);
    }

    #[test]
    fn meta_partition_refusals() {
        let base = meta::partition(&[]).unwrap().to_vec().unwrap();
        let e = meta_partition(&base[..1000], &[]).unwrap_err().to_string();
        assert!(
            e.contains("1000 bytes") && e.contains("exactly 1048576"),
            "{e}"
        );
        let e = meta_partition(&vec![0u8; 1 << 20], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no valid ADV copy"), "{e}");
        for k in [0x06u8, 0x0b, 0x0f, 0] {
            let e = meta_partition(&base, &[(k, b"v".to_vec())])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("0x{k:02x} is not a personalization key")),
                "{e}"
            );
        }
        let e = meta_partition(&base, &[(0x0c, b"a".to_vec()), (0x0c, b"b".to_vec())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x0c is given twice"), "{e}");
        let big = vec![b'x'; meta::CAPACITY];
        let e = meta_partition(&base, &[(0x0d, big)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorten"), "{e}");
        // A base whose ADV holds a key twice or a key above 255.
        let mut dup = meta::block(&[mv(0x0c, b"a")]).unwrap();
        let rec = dup[4..13].to_vec();
        dup[13..22].copy_from_slice(&rec);
        reseal(&mut dup);
        let mut part = dup.clone();
        part.resize(1 << 20, 0);
        let e = meta_partition(&part, &[]).unwrap_err().to_string();
        assert!(e.contains("key 0x0c twice"), "{e}");
        let mut wide = meta::block(&[mv(0x0c, b"a")]).unwrap();
        wide[6] = 1; // tag 0x0000010c
        reseal(&mut wide);
        wide.resize(1 << 20, 0);
        let e = meta_partition(&wide, &[]).unwrap_err().to_string();
        assert!(e.contains("key 268, above 255"), "{e}");
    }

    /// Recompute an ADV block's checksum after editing it.
    fn reseal(b: &mut [u8]) {
        use sha2::Digest;
        let n = meta::BLOCK_LEN;
        b[n - 36..n - 4].fill(0);
        let sum = sha2::Sha256::digest(&b[..n]);
        b[n - 36..n - 4].copy_from_slice(&sum);
        assert!(meta::parse_block(&b[..n]).is_some());
    }

    fn manifest_with_metal_iso() -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format": "edgeimage-manifest", "version": 1, "name": "t", "build_number": 3,
            "talos_version": "v1.12.5", "arch": "amd64",
            "image": {"size": 10u64 << 20, "sha256": "a".repeat(64), "disk_guid": "G"},
            "partitions": [
                {"number": 1, "label": "META", "type_guid": "T", "guid": "0fc63daf-8483-4772-8e79-3d69d8477de4",
                 "offset": 1u64 << 20, "size": 1u64 << 20, "sha256": "b".repeat(64), "slot": true},
                {"number": 2, "label": "metal-iso", "type_guid": "T", "guid": "12345678-aaaa-8bbb-8ccc-000000000000",
                 "offset": 2u64 << 20, "size": 1u64 << 20, "sha256": "c".repeat(64), "slot": true}
            ],
            "manifest_partition": {"number": 3, "label": "edgeimage-manifest", "type_guid": "T",
                 "guid": "U", "offset": 3u64 << 20, "size": 1u64 << 20},
            "block_map": {"block_size": 4096, "mapped_blocks": 1,
                 "ranges": [{"first": 0, "last": 0, "sha256": "d".repeat(64)}]},
            "provenance": {"edgeimage_version": "0", "source_date_epoch": 1_700_000_000u64,
                 "profile_sha256": "e".repeat(64), "assets": [], "extensions": []}
        }))
        .unwrap();
        m.slots = vec![
            Slot {
                name: "net".into(),
                kind: SlotKind::Meta,
                meta_key: Some(0x0a),
                partition: SlotPartition {
                    number: 1,
                    label: "META".into(),
                    offset: 1 << 20,
                    size: 1 << 20,
                },
                secret: false,
                template_sha256: "f".repeat(64),
            },
            Slot {
                name: "config".into(),
                kind: SlotKind::MetalIso,
                meta_key: None,
                partition: SlotPartition {
                    number: 2,
                    label: "metal-iso".into(),
                    offset: 2 << 20,
                    size: 1 << 20,
                },
                secret: true,
                template_sha256: "f".repeat(64),
            },
        ];
        m.meta_base = vec![MetaBase {
            key: 0x0c,
            sha256: "0".repeat(64),
        }];
        m.check().unwrap();
        m
    }

    #[test]
    fn metal_iso_partition_is_the_builds_volume_with_the_devices_config() {
        let m = manifest_with_metal_iso();
        let p = MetalIsoParams::from_manifest(&m).unwrap();
        assert_eq!(
            p,
            MetalIsoParams {
                size: 1 << 20,
                volume_id: 0x7856_3412,
                first_lba: 4096,
                mtime: 1_700_000_000,
                sector_size: 512,
            }
        );
        // The build's own partition for a configuration, byte for byte.
        let cfg = crate::config::machine::MachineConfig::from_bytes(
            crate::config::fixtures::controlplane_yaml().into_bytes(),
            "t",
        )
        .unwrap();
        let built = delivery::metal_iso_partition(
            &cfg,
            &delivery::MetalIsoGeometry {
                size: 1 << 20,
                epoch: 1_700_000_000,
                volume_id: 0x7856_3412,
                first_lba: 4096,
                sector_size: 512,
            },
        )
        .unwrap()
        .to_vec()
        .unwrap();
        assert_eq!(metal_iso_partition(&p, cfg.bytes()).unwrap(), built);
        // Another configuration: the same volume with that config.yaml.
        let other = b"version: v1alpha1\nmachine:\n  type: worker\n";
        let dev = metal_iso_partition(&p, other).unwrap();
        assert_eq!(dev.len(), 1 << 20);
        assert_eq!(&dev[43..54], b"metal-iso  ");
        let fs =
            fatfs::FileSystem::new(std::io::Cursor::new(dev), fatfs::FsOptions::new()).unwrap();
        let mut got = Vec::new();
        fs.root_dir()
            .open_file("config.yaml")
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, other);
        // Too big for the partition; no metal-iso slot; a partition too large to be a slot.
        let e = metal_iso_partition(&p, &vec![b'x'; 2 << 20]).unwrap_err();
        assert!(format!("{e:#}").contains("metal-iso"), "{e:#}");
        let mut none = m.clone();
        none.slots.pop();
        let e = MetalIsoParams::from_manifest(&none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no metal-iso slot"), "{e}");
        let huge = MetalIsoParams {
            size: MAX_SLOT_PARTITION + (1 << 20),
            ..p
        };
        let e = metal_iso_partition(&huge, b"x").unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn check_value_checks_network_and_machine_configuration() {
        let m = manifest_with_metal_iso();
        let (net, cfg) = (&m.slots[0], &m.slots[1]);
        let e = check_value(net, b"addresses: 7\n").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("slot net (META 0x0a)"),
            "{e:#}"
        );
        check_value(
            net,
            b"addresses:\n  - address: 10.0.0.7/24\n    linkName: eth0\n    family: inet4\n",
        )
        .unwrap();
        let e = check_value(cfg, b"token: SECRET-VALUE\n").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("slot config (metal-iso)"),
            "{e:#}"
        );
        assert!(!format!("{e:#}").contains("SECRET-VALUE"), "{e:#}");
        check_value(cfg, crate::config::fixtures::controlplane_yaml().as_bytes()).unwrap();
        let user = Slot {
            meta_key: Some(0x0d),
            ..net.clone()
        };
        check_value(&user, b"\xff any bytes").unwrap();
    }

    #[test]
    fn names_and_keys() {
        for ok in ["a", "network", "reg-token-2", &"x".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Net", "a_b", "a.b", " a", &"x".repeat(33), "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(is_meta_key(0x0a) && is_meta_key(0x0e));
        assert!(!is_meta_key(0x0b) && !is_meta_key(0x0f) && !is_meta_key(0x09));
    }
}
