//! Extensions that carry kernel modules, through `edgeimage build`: the combined
//! `modules.dep` layer made as Talos's imager makes it (the base initramfs's module tree and
//! the extensions' modules, `depmod` with `search extras built-in`, every `modules.*` file in
//! a squashfs named `modules.dep.sqsh`, listed last), checked against kmod's own `depmod -b`
//! over the same merged tree, `unsquashfs` and `cpio`; and the refusals.

mod common;

use std::fs;

use common::*;
use edgeimage::extension::fixtures::{self as xf, Entry, Form};
use edgeimage::format::elf::fake_module;
use edgeimage::kmod::SIGNATURE_MARKER;
use edgeimage::talos::Arch;

const KVER: &str = "6.18.15-talos";

/// A fake module with a (fake) appended signature: signed as far as the build can tell.
fn signed(info: &[(&str, &str)], exports: &[&str], needs: &[&str]) -> Vec<u8> {
    let mut m = fake_module(62, info, exports, needs);
    m.extend_from_slice(&[0u8; 64]);
    m.extend_from_slice(SIGNATURE_MARKER);
    m
}

/// The base module tree of the synthetic Talos: three modules, a `modules.order` and the
/// built-in lists.
fn base_tree() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("kernel/net/llc/llc.ko", signed(&[], &["llc_add_pack"], &[])),
        (
            "kernel/net/802/stp.ko",
            signed(&[], &["stp_proto_register"], &["llc_add_pack"]),
        ),
        (
            "kernel/net/802/garp.ko",
            signed(
                &[("alias", "net-garp")],
                &["garp_init_applicant"],
                &["stp_proto_register", "llc_add_pack"],
            ),
        ),
        (
            "modules.order",
            b"kernel/net/llc/llc.ko\nkernel/net/802/stp.ko\nkernel/net/802/garp.ko\n".to_vec(),
        ),
        ("modules.builtin", b"kernel/fs/ext4/ext4.ko\n".to_vec()),
        ("modules.builtin.modinfo", b"ext4.alias=fs-ext4\0".to_vec()),
    ]
}

/// An extension carrying `extras/8021q.ko`, which needs a base module's symbol.
fn module_extension(kver: &str, module: Vec<u8>) -> Vec<Entry> {
    xf::edgehostlet_with(vec![
        Entry::dir("rootfs/usr/lib"),
        Entry::dir("rootfs/usr/lib/modules"),
        Entry::dir(&format!("rootfs/usr/lib/modules/{kver}")),
        Entry::dir(&format!("rootfs/usr/lib/modules/{kver}/extras")),
        Entry::file(
            &format!("rootfs/usr/lib/modules/{kver}/extras/8021q.ko"),
            module,
            0o644,
        ),
    ])
}

fn q8021() -> Vec<u8> {
    signed(
        &[("alias", "rtnl-link-vlan")],
        &["vlan_dev_real_dev"],
        &["garp_init_applicant", "printk"],
    )
}

fn fixture_with(ext: Vec<Entry>) -> Fixture {
    let f = fixture(Arch::Amd64, "");
    let initramfs =
        edgeimage::synthetic::initramfs_with_modules("usr/lib/modules", KVER, &base_tree())
            .unwrap();
    replace_asset(&f, "initramfs.xz", &initramfs);
    add(&f, &extension(&f, &ext, Form::Tar, "ext"));
    f
}

#[test]
fn modules_dep_layer_matches_kmods_depmod() {
    let f = fixture_with(module_extension(KVER, q8021()));
    let out = f.dir.path().join("out");
    build(&f, &out, &["--raw"]);
    let j = inspect_json(&set_dir(&out).join("t.raw"));
    let layers: Vec<(String, String, String)> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            (s("image"), s("name"), s("version"))
        })
        .collect();
    assert_eq!(
        layers,
        [
            ("0.sqsh".into(), "edgehostlet".into(), "1.7.1".into()),
            ("modules.dep.sqsh".into(), "modules.dep".into(), KVER.into()),
        ]
    );
    if !["mcopy", "objcopy", "zstd", "cpio", "unsquashfs", "depmod"]
        .iter()
        .all(|t| have(t))
    {
        return;
    }
    let work = f.dir.path().join("work");
    let uki = work.join("uki.efi");
    fs::create_dir_all(&work).unwrap();
    esp_file(
        &set_dir(&out).join("t.raw"),
        100,
        "EFI/Linux/Talos-v1.12.5.efi",
        &uki,
    );
    unpack_appended(&uki, &f.dir.path().join("assets/initramfs.xz"), &work);
    let yaml = fs::read_to_string(work.join("extensions.yaml")).unwrap();
    assert!(
        yaml.ends_with(&format!(
            "    - image: modules.dep.sqsh\n      metadata:\n        name: modules.dep\n        \
             version: {KVER}\n        author: Talos Machinery\n        description: Combined \
             modules.dep for all extensions\n        compatibility:\n            talos:\n                \
             version: \"\"\n"
        )),
        "{yaml}"
    );
    // The layer: every modules.* file, no module.
    let layer = work.join("layer");
    let o = tool("unsquashfs")
        .args(["-n", "-d"])
        .arg(&layer)
        .arg(work.join("modules.dep.sqsh"))
        .output()
        .unwrap();
    assert!(o.status.success(), "unsquashfs: {}", stderr(&o));
    let ours = layer.join("usr/lib/modules").join(KVER);
    let mut names: Vec<String> = fs::read_dir(&ours)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "modules.alias",
            "modules.alias.bin",
            "modules.builtin",
            "modules.builtin.alias.bin",
            "modules.builtin.bin",
            "modules.builtin.modinfo",
            "modules.dep",
            "modules.dep.bin",
            "modules.devname",
            "modules.order",
            "modules.softdep",
            "modules.symbols",
            "modules.symbols.bin"
        ]
    );
    // kmod's depmod over the same merged tree: base modules, then the extension's on top.
    let tree = work.join("kmod");
    let kdir = tree.join("lib/modules").join(KVER);
    for (rel, data) in base_tree() {
        let p = kdir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    fs::create_dir_all(kdir.join("extras")).unwrap();
    fs::write(kdir.join("extras/8021q.ko"), q8021()).unwrap();
    kmod_depmod(&tree, KVER);
    let mine: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), fs::read(ours.join(n)).unwrap()))
        .collect();
    assert_same_as_kmod(&mine, &kdir);
    assert_eq!(
        fs::read_to_string(ours.join("modules.dep"))
            .unwrap()
            .lines()
            .last(),
        Some("extras/8021q.ko: kernel/net/802/garp.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko")
    );
}

#[test]
fn unsigned_or_foreign_modules_are_refused() {
    let fails = |f: &Fixture, want: &[&str]| {
        let o = try_build(f, &f.dir.path().join("out"), &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        for w in want {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
    };
    // Talos v1.12 enforces module signatures: an unsigned module would never load.
    let unsigned = fake_module(62, &[], &["vlan_dev_real_dev"], &["garp_init_applicant"]);
    let f = fixture_with(module_extension(KVER, unsigned.clone()));
    fails(
        &f,
        &[
            "extras/8021q.ko is not signed",
            "module.sig_enforce=1",
            "-module.sig_enforce",
        ],
    );
    // Without enforcement it builds.
    let text = fs::read_to_string(&f.profile).unwrap().replacen(
        "[assets]",
        "[kernel_args]\nextra = [\"-module.sig_enforce\"]\n[assets]",
        1,
    );
    fs::write(&f.profile, text).unwrap();
    build(&f, &f.dir.path().join("out"), &[]);
    // Modules for another kernel than the base initramfs's.
    let f = fixture_with(module_extension("6.12.1-other", q8021()));
    fails(
        &f,
        &[
            "carries modules for kernel 6.12.1-other",
            &format!("base initramfs's kernel is {KVER}"),
        ],
    );
    // A base initramfs without a module tree.
    let f = fixture(Arch::Amd64, "");
    add(
        &f,
        &extension(&f, &module_extension(KVER, q8021()), Form::Tar, "ext"),
    );
    fails(&f, &["rootfs.sqsh", "not a squashfs"]);
}

/// arm64 kernels carry no release string in a header: the UKI's `.uname` is then the base
/// initramfs's kernel release (its module directory), as Talos's arm64 UKIs have
/// `constants.DefaultKernelVersion` there.
#[test]
fn arm64_uname_from_the_base_module_tree() {
    let f = fixture(Arch::Arm64, "");
    let j = {
        let out = f.dir.path().join("out0");
        build(&f, &out, &[]);
        inspect_json(&set_dir(&out).join("t.raw.zst"))
    };
    assert!(
        j["uki"]["uname"].is_null(),
        "synthetic base without modules: no .uname"
    );
    let initramfs =
        edgeimage::synthetic::initramfs_with_modules("usr/lib/modules", KVER, &base_tree())
            .unwrap();
    replace_asset(&f, "initramfs.xz", &initramfs);
    let out = f.dir.path().join("out");
    build(&f, &out, &[]);
    assert_eq!(
        inspect_json(&set_dir(&out).join("t.raw.zst"))["uki"]["uname"],
        KVER
    );
}
