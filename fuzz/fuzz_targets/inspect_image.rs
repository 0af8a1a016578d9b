//! `inspect::inspect` on the input as an image file (raw, or zstd-compressed): GPT, the ESP's
//! FAT filesystem, the UKI (PE) and its `.initrd` (cpio), META and the manifest partition
//! together; a successful inspection is also rendered.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let Some(path) = edgeimage_fuzz::put(dir.path(), "image.raw", data) else {
        return;
    };
    if let Ok(i) = edgeimage::inspect::inspect(&path) {
        let _ = edgeimage::inspect::render(&i);
    }
});
