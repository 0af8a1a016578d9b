//! The extension loader (`extension::load`, pinned with `input_sha256`) on the input as a
//! tar file (read by content: plain, gzip, zstd, OCI layout or `docker save`), and, when the
//! input is not compressed already, on its zstd-compressed copy as a `.tar.zst`. An input
//! starting with 0x01 or 0x02 is one or two image layers holding the extension tree, wrapped
//! into an amd64 OCI layout with matching digests (see `edgeimage_fuzz::oci_input`).
#![no_main]

use std::path::Path;

use edgeimage::extension::{input_sha256, load, ExtensionInput};
use edgeimage::talos::{Arch, TalosVersion};
use libfuzzer_sys::fuzz_target;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn load_one(path: &Path, talos: &TalosVersion) {
    let Ok(sha256) = input_sha256(path) else {
        return;
    };
    let spec = ExtensionInput {
        path: path.to_path_buf(),
        sha256,
    };
    if let Ok(ext) = load(&spec, Arch::Amd64, talos) {
        let _ = edgeimage::extension::tree_sha256(&ext.rootfs);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(talos) = TalosVersion::parse("v1.12.5") else {
        return;
    };
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    if matches!(data.first(), Some(1 | 2)) {
        let archive = edgeimage_fuzz::oci_input(data, "amd64");
        if let Some(p) = edgeimage_fuzz::put(dir.path(), "extension.oci.tar", &archive) {
            load_one(&p, &talos);
        }
        return;
    }
    if let Some(p) = edgeimage_fuzz::put(dir.path(), "extension.tar", data) {
        load_one(&p, &talos);
    }
    if !data.starts_with(&ZSTD_MAGIC) && !data.starts_with(&GZIP_MAGIC) {
        let Ok(z) = zstd::bulk::compress(data, 1) else {
            return;
        };
        if let Some(p) = edgeimage_fuzz::put(dir.path(), "extension.tar.zst", &z) {
            load_one(&p, &talos);
        }
    }
});
