//! The ext4 writer against e2fsprogs: `e2fsck -fn` finds nothing, `debugfs` lists and reads
//! back every file, for small trees, many files (inodes in several groups, directories of
//! several blocks) and a file spread over more groups than an inode holds extents for.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{have, tool};
use edgeimage::compose::ext4::{build, Ext4Input, Size};
use edgeimage::layout::{Fill, Layout, SharedFile};
use edgeimage::tree::{Node, Tree};

/// Write a layout to a sparse file (zero extents are left as holes of the new file).
fn write_image(l: &Layout, path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(l.len()).unwrap();
    for e in l.extents() {
        match &e.fill {
            Fill::Bytes(b) => f.write_all_at(b, e.offset).unwrap(),
            Fill::File(src, at) => {
                let mut buf = vec![0u8; e.len as usize];
                src.read_exact_at(&mut buf, *at).unwrap();
                f.write_all_at(&buf, e.offset).unwrap();
            }
            Fill::Zero => {}
        }
    }
}

fn fsck(img: &Path) {
    let o = tool("e2fsck").arg("-fn").arg(img).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "e2fsck -fn: {text}");
}

fn debugfs(img: &Path, req: &str) -> Vec<u8> {
    let o = tool("debugfs")
        .arg("-R")
        .arg(req)
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs {req}: {:?}", o);
    o.stdout
}

fn input(tree: &Tree, size: Size) -> Ext4Input<'_> {
    Ext4Input {
        tree,
        label: "IMAGECACHE",
        uuid: *b"0123456789abcdef",
        epoch: 1_750_000_000,
        size,
        spare_inodes: 32,
    }
}

#[test]
fn small_tree_passes_e2fsck_and_reads_back() {
    if !have("e2fsck") || !have("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::new();
    let mut expect = Vec::new();
    for (i, p) in [
        "blob/sha256-aa",
        "blob/sha256-bb",
        "manifests/registry.k8s.io/kube-apiserver/reference/v1.34.1",
        "manifests/registry.k8s.io/kube-apiserver/digest/sha256-cc",
        "manifests/docker.io/library/busybox/reference/latest",
        "empty",
    ]
    .iter()
    .enumerate()
    {
        let content: Vec<u8> = if *p == "empty" {
            Vec::new()
        } else {
            (0..(i * 3001 + 17)).map(|b| (b * 7 + i) as u8).collect()
        };
        t.insert(*p, Node::file(Layout::from_bytes(content.clone()), 0o644));
        expect.push((p.to_string(), content));
    }
    let e = build(&input(&t, Size::Fit { free: 1 << 20 })).unwrap();
    assert!(e.free_blocks >= 256, "{} blocks free", e.free_blocks);
    let img = dir.path().join("fs.img");
    write_image(&e.layout, &img);
    fsck(&img);
    let ls = String::from_utf8(debugfs(&img, "ls -p /")).unwrap();
    for name in ["blob", "manifests", "lost+found", "empty"] {
        assert!(
            ls.contains(&format!("/{name}/")),
            "{name} missing from {ls}"
        );
    }
    for (p, content) in &expect {
        assert_eq!(&debugfs(&img, &format!("cat /{p}")), content, "{p}");
    }
    let stats = String::from_utf8(debugfs(&img, "stats")).unwrap();
    assert!(
        stats.contains("Filesystem volume name:   IMAGECACHE"),
        "{stats}"
    );
    assert!(stats.contains("extent"), "{stats}");
}

#[test]
fn many_files_and_a_fragmented_big_file() {
    if !have("e2fsck") || !have("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The big file: 700 MiB, mapped only at a few places (its holes must read as zeros).
    let src = dir.path().join("src.bin");
    let mut f = std::fs::File::create(&src).unwrap();
    f.write_all(&[0x5A; 4096]).unwrap();
    drop(f);
    let shared = SharedFile::new(std::fs::File::open(&src).unwrap(), &src);
    let big_len = 700u64 << 20;
    let mut big = Layout::new(big_len);
    for at in [0u64, 200 << 20, big_len - 4096] {
        big.put_file(at, shared.clone(), 0, 4096).unwrap();
    }
    let mut t = Tree::new();
    t.insert("big", Node::file(big, 0o644));
    for i in 0..2500u32 {
        t.insert(
            format!("many/sha256-{i:060x}"),
            Node::file(Layout::from_bytes(i.to_le_bytes().to_vec()), 0o644),
        );
    }
    // 900 MiB exactly: the big file crosses five groups.
    let e = build(&input(&t, Size::Exact(900 << 20))).unwrap();
    let img = dir.path().join("fs.img");
    write_image(&e.layout, &img);
    fsck(&img);
    let stat = String::from_utf8(debugfs(&img, "stat /big")).unwrap();
    assert!(stat.contains("Size: 734003200"), "{stat}");
    // Six runs: more than the inode holds, so one extent leaf block (ETB0).
    assert!(stat.contains("(ETB0)"), "{stat}");
    let ls = debugfs(&img, "ls /many");
    assert_eq!(
        String::from_utf8_lossy(&ls).matches("sha256-").count(),
        2500
    );
    assert_eq!(
        debugfs(&img, &format!("cat /many/sha256-{:060x}", 1234)),
        1234u32.to_le_bytes()
    );
    let dump = dir.path().join("big.out");
    debugfs(&img, &format!("dump /big {}", dump.display()));
    let got = std::fs::File::open(&dump).unwrap();
    let mut b = vec![0u8; 4096];
    for (at, want) in [
        (0u64, 0x5A),
        (100 << 20, 0),
        (200 << 20, 0x5A),
        (big_len - 4096, 0x5A),
    ] {
        got.read_exact_at(&mut b, at).unwrap();
        assert!(b.iter().all(|&x| x == want), "byte at {at}");
    }
}

#[test]
fn an_exact_size_with_a_short_last_group() {
    if !have("e2fsck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::new();
    t.insert("a", Node::file(Layout::from_bytes(vec![1u8; 10000]), 0o644));
    // 128 MiB + 8 KiB: the 2-block tail cannot hold its group's metadata and stays outside.
    let e = build(&input(&t, Size::Exact((128 << 20) + 8192))).unwrap();
    assert_eq!(e.blocks, 32768);
    let img = dir.path().join("fs.img");
    write_image(&e.layout, &img);
    fsck(&img);
}

/// The reader (`format::ext4`, what `inspect` reads an image cache with) on filesystems
/// `mkfs.ext4 -d` makes with its default features (64bit, flex_bg, metadata_csum, hashed
/// directories) and 1 KiB blocks.
#[test]
fn the_reader_reads_what_mkfs_ext4_writes() {
    if !have("mkfs.ext4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut files = Vec::new();
    for i in 0..300u32 {
        let p = format!("blob/sha256-{i:064x}");
        let data: Vec<u8> = (0..(i * 997 % 70_000)).map(|b| (b ^ i) as u8).collect();
        files.push((p, data));
    }
    files.push((
        "manifests/registry.k8s.io/pause/reference/3.10".into(),
        b"{}".to_vec(),
    ));
    for (p, d) in &files {
        let path = src.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    }
    for (opts, size) in [(&[][..], "32M"), (&["-b", "1024"][..], "32M")] {
        let img = dir.path().join("mkfs.img");
        let _ = std::fs::remove_file(&img);
        let o = tool("mkfs.ext4")
            .args(["-q", "-F", "-L", "IMAGECACHE", "-d"])
            .arg(&src)
            .args(opts)
            .arg(&img)
            .arg(size)
            .output()
            .unwrap();
        assert!(o.status.success(), "mkfs.ext4: {o:?}");
        let f = std::fs::File::open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        let vol = edgeimage::format::ext4::Volume::open(len, |off, buf| f.read_exact_at(buf, off))
            .unwrap();
        assert_eq!(vol.label(), "IMAGECACHE");
        let blob = vol.find("blob").unwrap().unwrap();
        assert_eq!(vol.list(&blob).unwrap().len(), 300);
        for (p, d) in &files {
            let i = vol
                .find(p)
                .unwrap()
                .unwrap_or_else(|| panic!("{p} not found"));
            assert_eq!(&vol.read(&i, 1 << 20).unwrap(), d, "{p} ({opts:?})");
        }
    }
}
