//! edgeimage's depmod against kmod's `depmod` on the same module tree (modules made in code:
//! ELF objects with exports, needs, aliases and soft dependencies, some compressed, an
//! `extras/` module replacing a base one), and kmod's `modprobe` reading edgeimage's binary
//! indexes. A tree where every module but the `extras/` ones is listed in `modules.order` has
//! one module order in both tools, so every file must be byte for byte kmod's, but for
//! `modules.symbols`, whose line order is kmod's hash order (compared as sets).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;
use edgeimage::format::elf::fake_module;
use edgeimage::kmod::depmod::Depmod;

const KVER: &str = "6.18.15-talos";

/// (relative path, modinfo, exports, needs)
type Spec = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
    Vec<&'static str>,
);

fn specs() -> Vec<Spec> {
    vec![
        (
            "kernel/lib/crc-itu-t.ko",
            vec![],
            vec!["crc_itu_t"],
            vec!["printk"],
        ),
        (
            "kernel/lib/libcrc32c.ko",
            vec![("softdep", "pre: crc32c")],
            vec!["crc32c", "crc32c_impl"],
            vec![],
        ),
        ("kernel/crypto/xor.ko", vec![], vec!["xor_blocks"], vec![]),
        (
            "kernel/lib/raid6/raid6_pq.ko.xz",
            vec![],
            vec!["raid6_call", "raid6_empty_zero_page"],
            vec!["xor_blocks"],
        ),
        (
            "kernel/drivers/md/md-mod.ko.zst",
            vec![
                ("alias", "block-major-9-*"),
                ("alias", "md"),
                ("alias", "devname:md0"),
                ("alias", "block-major-9-0"),
            ],
            vec!["md_run", "md_error"],
            vec![],
        ),
        (
            "kernel/drivers/md/raid456.ko",
            vec![
                ("alias", "raid5"),
                ("alias", "md-level-6"),
                ("alias", "md-personality-[4-5]"),
            ],
            vec!["raid5_set_cache_size"],
            vec![
                "md_run",
                "raid6_call",
                "xor_blocks",
                "crc32c",
                "!maybe_missing",
            ],
        ),
        (
            "kernel/drivers/md/dm-mod.ko",
            vec![
                ("alias", "devname:mapper/control"),
                ("alias", "char-major-10-236"),
            ],
            vec!["dm_register_target"],
            vec![],
        ),
        (
            "kernel/drivers/md/dm-raid.ko",
            vec![("alias", "dm-raid4")],
            vec![],
            vec!["dm_register_target", "md_error", "raid5_set_cache_size"],
        ),
        // A base module an extension replaces (extras/ wins), and the extension's own.
        (
            "kernel/net/drbd.ko",
            vec![("alias", "block-major-147-*")],
            vec!["drbd_old"],
            vec![],
        ),
        (
            "extras/drbd.ko.xz",
            vec![
                ("alias", "block-major-147-*"),
                ("alias", "net-pf-16-proto-16-family-drbd"),
            ],
            vec!["drbd_new"],
            vec!["crc32c", "crc_itu_t"],
        ),
        (
            "extras/drbd_transport_tcp.ko",
            vec![],
            vec![],
            vec!["drbd_new", "dm_register_target"],
        ),
    ]
}

fn write_tree(root: &Path, specs: &[Spec], order: &str) {
    let base = root.join("lib/modules").join(KVER);
    for (rel, info, exports, needs) in specs {
        let p = base.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let elf = fake_module(62, info, exports, needs);
        let data = if rel.ends_with(".xz") {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            std::io::Write::write_all(&mut e, &elf).unwrap();
            e.finish().unwrap()
        } else if rel.ends_with(".zst") {
            zstd::encode_all(&elf[..], 3).unwrap()
        } else {
            elf
        };
        fs::write(p, data).unwrap();
    }
    fs::write(base.join("modules.order"), order).unwrap();
    fs::write(
        base.join("modules.builtin"),
        "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n",
    )
    .unwrap();
    fs::write(
        base.join("modules.builtin.modinfo"),
        b"ext4.alias=fs-ext4\0ext4.license=GPL\0crc32c_generic.alias=crypto-crc32c\0",
    )
    .unwrap();
}

fn ours(specs: &[Spec], order: &str, root: &Path) -> BTreeMap<String, Vec<u8>> {
    let base = root.join("lib/modules").join(KVER);
    let mut d = Depmod::default();
    let mut rels: Vec<&str> = specs.iter().map(|s| s.0).collect();
    rels.sort();
    for rel in rels {
        let data = fs::read(base.join(rel)).unwrap();
        let elf = edgeimage::kmod::decompress(rel, &data[..]).unwrap();
        d.add(rel, &elf).unwrap();
    }
    let builtin = fs::read_to_string(base.join("modules.builtin")).unwrap();
    let modinfo = fs::read(base.join("modules.builtin.modinfo")).unwrap();
    d.outputs(order, &builtin, &modinfo)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn depmod_agrees_with_kmod_byte_for_byte() {
    if !have("depmod") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let order: String = specs
        .iter()
        .filter(|s| !s.0.starts_with("extras/"))
        .map(|s| {
            let p = s.0.trim_end_matches(".xz").trim_end_matches(".zst");
            format!("{p}\n")
        })
        .collect();
    // One extras module: its place after the ordered ones is the same in both tools.
    let specs: Vec<Spec> = specs
        .into_iter()
        .filter(|s| s.0 != "extras/drbd_transport_tcp.ko")
        .collect();
    write_tree(dir.path(), &specs, &order);
    kmod_depmod(dir.path(), KVER);
    let ours: Vec<(String, Vec<u8>)> = ours(&specs, &order, dir.path()).into_iter().collect();
    assert_same_as_kmod(&ours, &dir.path().join("lib/modules").join(KVER));
}

/// With several `extras/` modules (whose order kmod takes from a hash) the lines may come in
/// another order, but every module has the same dependencies; and kmod's `modprobe` reads
/// edgeimage's binary indexes: it resolves an alias (`modules.alias.bin`) and lists what it
/// would load, dependencies first (`modules.dep.bin`), as it does with kmod's own files.
#[test]
fn same_dependencies_and_modprobe_reads_our_indexes() {
    if !have("depmod") || !have("modprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    write_tree(
        dir.path(),
        &specs,
        "kernel/crypto/xor.ko\nkernel/lib/raid6/raid6_pq.ko\n",
    );
    kmod_depmod(dir.path(), KVER);
    let base = dir.path().join("lib/modules").join(KVER);
    let deps = |text: &str| -> BTreeMap<String, Vec<String>> {
        text.lines()
            .map(|l| {
                let (m, d) = l.split_once(':').unwrap();
                let mut d: Vec<String> = d.split_whitespace().map(str::to_string).collect();
                d.sort();
                (m.to_string(), d)
            })
            .collect()
    };
    let mine = ours(
        &specs,
        "kernel/crypto/xor.ko\nkernel/lib/raid6/raid6_pq.ko\n",
        dir.path(),
    );
    let kmod_dep = fs::read_to_string(base.join("modules.dep")).unwrap();
    let our_dep = String::from_utf8(mine["modules.dep"].clone()).unwrap();
    assert_eq!(deps(&our_dep), deps(&kmod_dep));
    // Every line loads from the right: each module before the modules it needs.
    let table = deps(&our_dep);
    for line in our_dep.lines() {
        let list: Vec<&str> = line.split_once(':').unwrap().1.split_whitespace().collect();
        for (i, m) in list.iter().enumerate() {
            for needed in &table[*m] {
                let j = list.iter().position(|x| x == needed).unwrap();
                assert!(j > i, "{line}: {m} must come before {needed}");
            }
        }
    }
    // kmod's modprobe on edgeimage's files.
    let show = |args: &[&str]| -> String {
        let o = tool("modprobe")
            .arg("-d")
            .arg(dir.path())
            .args(["-S", KVER])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "modprobe {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let kmod_view = show(&["--show-depends", "drbd_transport_tcp"]);
    for (name, data) in &mine {
        fs::write(base.join(name), data).unwrap();
    }
    let our_view = show(&["--show-depends", "drbd_transport_tcp"]);
    assert_eq!(our_view, kmod_view);
    let loads: Vec<&str> = our_view
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| p.trim().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(loads.last(), Some(&"drbd_transport_tcp.ko"), "{our_view}");
    assert!(
        loads.contains(&"drbd.ko.xz") && !our_view.contains("kernel/net/drbd.ko"),
        "{our_view}"
    );
    let raid = show(&["--show-depends", "md-level-6"]);
    assert!(raid.trim_end().ends_with("raid456.ko"), "{raid}");
}
