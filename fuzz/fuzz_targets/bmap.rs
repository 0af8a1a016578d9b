//! `bmap::parse_bytes`: a bmaptool block map (XML), with the ranges' byte spans.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = edgeimage::artifact::bmap::parse_bytes(data) {
        let _ = b.mapped_bytes();
        for r in &b.ranges {
            let _ = b.byte_range(r);
        }
    }
});
