//! `seekable::read_seek_table` on the input as a file, then `decompress_frames` of every
//! frame on one worker.
#![no_main]

use edgeimage::artifact::seekable::{decompress_frames, read_seek_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let Some(path) = edgeimage_fuzz::put(dir.path(), "image.raw.zst", data) else {
        return;
    };
    let Ok(f) = std::fs::File::open(&path) else {
        return;
    };
    let Ok(Some(table)) = read_seek_table(&f, "fuzz input") else {
        return;
    };
    let _ = table.frames_overlapping(0, table.decompressed_size);
    let _ = table.frames_overlapping(table.decompressed_size / 2, u64::MAX);
    let all: Vec<usize> = (0..table.frames.len()).collect();
    let _ = decompress_frames(&f, "fuzz input", &table, &all, 1, &mut |_, _, _| Ok(true));
});
