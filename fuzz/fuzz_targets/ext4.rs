//! `format::ext4::Volume` on the input as the start of an ext4 filesystem (the rest reads as
//! zeros): open, read it as `inspect` reads an image cache, list the root, read its files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeimage_fuzz::ext4::exercise(data);
});
