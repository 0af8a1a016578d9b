//! `OciImage::open` on the input as a tar (OCI layout or `docker save`), for both
//! architectures, then `merged_tree` keeping every path; and `open_pinned` (the image cache's
//! reader) pinned to the manifest `OciImage::open` chose. An input starting with 0x01 or 0x02
//! is one or two image layers, wrapped into an amd64 OCI layout with matching digests (see
//! `edgeimage_fuzz::oci_input`).
#![no_main]

use std::io::Read;

use edgeimage::assets::oci::{EntryKind, OciImage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let archive = edgeimage_fuzz::oci_input(data, "amd64");
    let Some(path) = edgeimage_fuzz::put(dir.path(), "image.tar", &archive) else {
        return;
    };
    for arch in ["amd64", "arm64"] {
        let Ok(img) = OciImage::open(&path, arch) else {
            continue;
        };
        if let Some(d) = img.manifest_digest() {
            if let Ok(a) = arch.parse() {
                let _ = edgeimage::assets::oci::pinned::open_pinned(&path, d, a);
            }
        }
        let _ = (
            img.layer_count(),
            img.platform(),
            img.manifest_digest(),
            img.config_json().len(),
            img.archive_path(),
        );
        let Ok(tree) = img.merged_tree(&|_| true) else {
            continue;
        };
        for entry in tree.entries.values() {
            if let EntryKind::File { content, size } = &entry.kind {
                let mut sink = Vec::new();
                let _ = content.region(0, *size).read_to_end(&mut sink);
            }
        }
    }
});
