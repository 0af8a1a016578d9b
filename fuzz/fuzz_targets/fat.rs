//! `format::fat::Volume` on the input as the start of a FAT volume (the rest reads as zeros):
//! open, label, walk, read every file up to a cap, look up `loader/loader.conf` and others.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeimage_fuzz::fat::exercise(data);
});
