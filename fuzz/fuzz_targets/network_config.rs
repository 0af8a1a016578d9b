//! `check_network_config`: META network configuration YAML (PlatformNetworkConfig).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeimage::config::network::check_network_config(data);
});
