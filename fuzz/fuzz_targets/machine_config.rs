//! `MachineConfig::from_bytes`: a Talos machine configuration; an accepted one is also made
//! into the embedded-config extension and the inline kernel argument.
#![no_main]

use edgeimage::config::delivery;
use edgeimage::config::machine::MachineConfig;
use edgeimage::talos::{Arch, TalosVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = MachineConfig::from_bytes(data.to_vec(), "fuzz input") else {
        return;
    };
    let _ = (
        cfg.sha256(),
        cfg.machine_type(),
        cfg.info(),
        format!("{cfg:?}"),
    );
    if let Ok(talos) = TalosVersion::parse("v1.12.5") {
        let _ = delivery::embedded_extension(&cfg, &talos);
    }
    let _ = delivery::inline_args(&cfg, "console=ttyS0", Arch::Amd64, 0);
});
