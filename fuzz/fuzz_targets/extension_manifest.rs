//! The extension validator (`extension::from_tree`, the rules `load` applies) on a tree whose
//! `manifest.yaml` is the input up to its first NUL byte; what follows the NUL, if anything,
//! is the extension service definition `rootfs/usr/local/etc/containers/edgehostlet.yaml`
//! (its entrypoint present). Checked against Talos v1.9 and v1.12 rules.
#![no_main]

use edgeimage::layout::Layout;
use edgeimage::talos::TalosVersion;
use edgeimage::tree::{Node, Tree};
use libfuzzer_sys::fuzz_target;

const DIRS: [&str; 8] = [
    "rootfs",
    "rootfs/usr",
    "rootfs/usr/local",
    "rootfs/usr/local/etc",
    "rootfs/usr/local/etc/containers",
    "rootfs/usr/local/lib",
    "rootfs/usr/local/lib/containers",
    "rootfs/usr/local/lib/containers/edgehostlet",
];

fn file(data: &[u8], mode: u32) -> Node {
    Node::file(Layout::from_bytes(data.to_vec()), mode)
}

fuzz_target!(|data: &[u8]| {
    let (manifest, service) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let mut tree = Tree::new();
    tree.insert("manifest.yaml", file(manifest, 0o644));
    for d in DIRS {
        tree.insert(d, Node::dir(0o755));
    }
    if let Some(s) = service {
        tree.insert(
            "rootfs/usr/local/etc/containers/edgehostlet.yaml",
            file(s, 0o644),
        );
        tree.insert(
            "rootfs/usr/local/lib/containers/edgehostlet/edgehostlet",
            file(b"#!/bin/sh\n", 0o755),
        );
    }
    let sha = "0".repeat(64);
    for v in ["v1.9.0", "v1.12.5"] {
        if let Ok(talos) = TalosVersion::parse(v) {
            let _ = edgeimage::extension::from_tree("fuzz input", &sha, tree.clone(), &talos);
        }
    }
});
