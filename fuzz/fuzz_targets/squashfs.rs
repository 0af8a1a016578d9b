//! `format::squashfs::Squashfs` on the input as an image file: open, walk the tree from the
//! root, read every file (up to 1 MiB each) and look paths up.
#![no_main]

use edgeimage::format::squashfs::{Kind, Squashfs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dir) = edgeimage_fuzz::scratch() else {
        return;
    };
    let Some(path) = edgeimage_fuzz::put(dir.path(), "rootfs.sqsh", data) else {
        return;
    };
    let Ok(file) = std::fs::File::open(&path) else {
        return;
    };
    let Ok(fs) = Squashfs::open(&file) else {
        return;
    };
    let Ok(root) = fs.inode(fs.root()) else {
        return;
    };
    let _ = fs.read_dir(&root);
    if let Ok(all) = fs.walk(&root) {
        for (_, inode) in &all {
            if inode.kind == Kind::File {
                let _ = fs.read_file(inode, 1 << 20);
            }
        }
    }
    for p in ["usr/lib/modules", "etc/os-release", "a/b/c"] {
        if let Ok(Some(inode)) = fs.lookup(p) {
            if inode.kind == Kind::File {
                let _ = fs.read_file(&inode, 1 << 20);
            }
        }
    }
});
