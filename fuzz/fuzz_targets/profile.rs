//! `Profile::parse`: profile TOML, validated as `edgeimage build` reads it. The profile's
//! directory (a scratch directory) holds the files a profile may name and `parse` reads:
//! `network.tmpl` and `config.tmpl` (personalization templates) and `meta.bin` (a META
//! value given as a file).
#![no_main]

use edgeimage::profile::Profile;
use libfuzzer_sys::fuzz_target;

const FILES: [(&str, &[u8]); 3] = [
    (
        "network.tmpl",
        b"addresses:\n  - address: {{ address }}\n    linkName: eth0\n",
    ),
    (
        "config.tmpl",
        b"machine:\n  network:\n    hostname: {{hostname}}\n",
    ),
    ("meta.bin", b"site-a\n"),
];

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    for (name, bytes) in FILES {
        if edgeimage_fuzz::put(dir.path(), name, bytes).is_none() {
            return;
        }
    }
    let path = dir.path().join("profile.toml");
    if let Ok(p) = Profile::parse(&path, data) {
        let _ = format!("{p:?}");
    }
});
