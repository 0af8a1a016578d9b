//! `gpt::read_head` on the input as the first bytes of a disk, with and without the CRC
//! checks, and the partitions as `inspect` lists them.
#![no_main]

use edgeimage::format::gpt::read_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for check_crc in [true, false] {
        if let Ok(g) = read_head(data, check_crc) {
            let _ = edgeimage::inspect::partitions(&g);
            let _ = g.place_of("EFI");
            let _ = g.by_name("META");
        }
    }
});
