//! `format::cpio::read` of the input as a newc archive, reading every entry's body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let _ = edgeimage::format::cpio::read(&mut r, &mut |h, body| {
        let _ = (h.is_file(), h.is_dir());
        std::io::copy(body, &mut std::io::sink())?;
        Ok(())
    });
});
