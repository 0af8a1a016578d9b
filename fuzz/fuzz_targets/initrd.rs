//! `inspect::initrd::walk`: a UKI's `.initrd` (concatenated newc archives, plain, zstd or
//! gzip, with zero padding between them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeimage::inspect::initrd::walk(data);
});
