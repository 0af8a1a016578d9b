//! `Schematic::parse`: Image Factory schematic YAML; a parsed schematic must give its ID and
//! its virtual extension.
#![no_main]

use edgeimage::config::schematic::Schematic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Schematic::parse(data) {
        let _ = s.id();
        let _ = s.extension();
        let _ = (
            s.extra_kernel_args(),
            s.meta(),
            s.official_extensions(),
            s.embedded_machine_configuration(),
            s.bootloader(),
            s.overlay(),
            s.sector_size(),
            s.secureboot(),
        );
    }
});
