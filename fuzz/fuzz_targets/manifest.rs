//! `Manifest::parse` (canonical JSON, consistency checks) and `decode_partition` (the
//! manifest partition's header), then what `inspect` reads from a decoded partition.
#![no_main]

use edgeimage::artifact::manifest::{decode_partition, Manifest};
use edgeimage::personalize::MetalIsoParams;
use edgeimage::sign::Signature;
use libfuzzer_sys::fuzz_target;

fn use_manifest(m: &Manifest) {
    let _ = m.mapped_bytes();
    let _ = m.trusted_comment();
    let _ = m.slot_partitions();
    let _ = m.for_partition().to_canonical();
    for r in &m.block_map.ranges {
        let (a, _) = m.byte_range(r);
        let _ = m.place_of(a);
    }
    for p in &m.partitions {
        let _ = m.place_of(p.offset);
    }
    let _ = MetalIsoParams::from_manifest(m);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data, "fuzz input") {
        use_manifest(&m);
    }
    if let Ok(e) = decode_partition(data, "fuzz input") {
        if let Ok(m) = Manifest::parse(&e.manifest, "fuzz input") {
            use_manifest(&m);
        }
        if let Some(s) = e.signature {
            let _ = Signature::parse(&s);
        }
    }
});
