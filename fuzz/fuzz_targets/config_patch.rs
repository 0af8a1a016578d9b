//! `config::machine::load` with a valid base configuration and the input as its one patch
//! (a JSON patch list, or mappings to merge).
#![no_main]

use std::path::PathBuf;

use edgeimage::config::{fixtures, machine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let base = fixtures::controlplane_yaml();
    let (Some(base), Some(patch)) = (
        edgeimage_fuzz::put(dir.path(), "machine.yaml", base.as_bytes()),
        edgeimage_fuzz::put(dir.path(), "patch.yaml", data),
    ) else {
        return;
    };
    let patches: [PathBuf; 1] = [patch];
    if let Ok(cfg) = machine::load(&base, &patches) {
        let _ = (
            cfg.bytes().len(),
            cfg.machine_type(),
            cfg.patched(),
            cfg.info(),
        );
    }
});
