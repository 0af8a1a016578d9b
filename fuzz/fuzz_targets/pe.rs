//! The PE/UKI reader: `pe::PeHeaders::parse` of the input, then `compose::uki::describe` (the
//! sections, `.cmdline`, `.osrel`, `.uname`, boot profiles) reading the input as the file.
#![no_main]

use edgeimage::pe::{Checksum, PeHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = PeHeaders::parse(data) {
        let _ = h.checksum_offset();
        for name in [".linux", ".initrd", ".cmdline", ".profile"] {
            if let Some(s) = h.section(name) {
                let _ = (s.virtual_end(), s.raw_end(), s.to_bytes());
            }
        }
        let mut c = Checksum::default();
        c.update(data);
        let _ = c.finish();
    }
    let _ = edgeimage::compose::uki::describe(data.len() as u64, &mut |off, buf| {
        let start = usize::try_from(off).map_err(std::io::Error::other)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= data.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    });
});
