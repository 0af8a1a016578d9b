//! Loading every input form, and refusing hostile extensions.

use std::collections::BTreeSet;
use std::path::Path;

use super::fixtures::{self, Entry, Form};
use super::*;
use crate::talos::Arch;
use crate::tree::NodeKind;

fn talos(s: &str) -> TalosVersion {
    TalosVersion::parse(s).unwrap()
}

fn write(entries: &[Entry], form: Form) -> (tempfile::TempDir, ExtensionInput) {
    let d = tempfile::tempdir().unwrap();
    let path = fixtures::write(entries, form, d.path(), Arch::Amd64).unwrap();
    let sha256 = input_sha256(&path).unwrap();
    (d, ExtensionInput { path, sha256 })
}

fn load_as(entries: &[Entry], form: Form, version: &str) -> anyhow::Result<Extension> {
    let (_d, input) = write(entries, form);
    load(&input, Arch::Amd64, &talos(version))
}

fn refusal(entries: &[Entry], form: Form, version: &str) -> String {
    match load_as(entries, form, version) {
        Ok(_) => panic!("accepted"),
        Err(e) => format!("{e:#}"),
    }
}

/// The problems of a refusal as `<path inside>: <rule>` (the origin prefix removed).
fn rules(msg: &str) -> Vec<String> {
    msg.lines()
        .skip(1)
        .map(|l| l.trim().split_once(": ").unwrap().1.to_string())
        .collect()
}

fn assert_one(msg: &str, needle: &str) {
    let r = rules(msg);
    assert_eq!(r.len(), 1, "expected exactly one problem: {msg}");
    assert!(r[0].contains(needle), "{needle:?} not in {msg}");
}

fn replace(entries: Vec<Entry>, path: &str, data: &str) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|e| match e {
            Entry::File(p, _, m) if p == path => Entry::File(p, data.as_bytes().to_vec(), m),
            e => e,
        })
        .collect()
}

fn with_manifest(text: &str) -> Vec<Entry> {
    replace(fixtures::edgehostlet(), "manifest.yaml", text)
}

fn with_service(text: &str) -> Vec<Entry> {
    replace(
        fixtures::edgehostlet(),
        "rootfs/usr/local/etc/containers/edgehostlet.yaml",
        text,
    )
}

fn plus(extra: Vec<Entry>) -> Vec<Entry> {
    fixtures::edgehostlet_with(extra)
}

type Snapshot = Vec<(String, &'static str, u32, Vec<u8>)>;

fn snapshot(t: &Tree) -> Snapshot {
    t.entries
        .iter()
        .map(|(p, n)| {
            let payload = match &n.kind {
                NodeKind::File(l) => l.to_vec().unwrap(),
                NodeKind::Symlink(s) => s.clone().into_bytes(),
                _ => Vec::new(),
            };
            let mode = if matches!(n.kind, NodeKind::Symlink(_)) {
                0
            } else {
                n.mode
            };
            (p.clone(), n.kind.describe(), mode, payload)
        })
        .collect()
}

#[test]
fn every_form_loads_to_the_same_tree() {
    let entries = fixtures::edgehostlet();
    let mut first: Option<Snapshot> = None;
    for form in Form::ALL {
        let ext = load_as(&entries, form, "v1.12.5").unwrap_or_else(|e| panic!("{form:?}: {e:#}"));
        assert_eq!(ext.metadata.name, "edgehostlet");
        assert_eq!(ext.metadata.version, "1.7.1");
        assert_eq!(ext.metadata.compatibility.as_deref(), Some(">= v1.8.0"));
        assert_eq!(ext.metadata.extra_info, None);
        let snap = snapshot(&ext.rootfs);
        let script = snap
            .iter()
            .find(|e| e.0 == "usr/local/lib/containers/edgehostlet/edgehostlet")
            .unwrap();
        assert_eq!(script.2, 0o755);
        assert_eq!(script.3, fixtures::EDGEHOSTLET_SCRIPT.as_bytes());
        match &first {
            None => first = Some(snap),
            Some(f) => assert_eq!(f, &snap, "{form:?} differs from the directory form"),
        }
    }
    let paths: Vec<String> = first.unwrap().into_iter().map(|e| e.0).collect();
    assert!(paths.contains(&"usr/local/bin/edgehostlet".to_string()));
    assert!(!paths
        .iter()
        .any(|p| p.starts_with("rootfs") || p == "manifest.yaml"));
}

#[test]
fn older_talos_and_hard_links_in_tars() {
    // A hard link to a file of the archive becomes that file.
    let e = plus(vec![Entry::Hardlink(
        "rootfs/usr/local/bin/again".into(),
        "rootfs/usr/local/lib/containers/edgehostlet/edgehostlet".into(),
    )]);
    let ext = load_as(&e, Form::Tar, "v1.8.0").unwrap();
    let n = &ext.rootfs.entries["usr/local/bin/again"];
    match &n.kind {
        NodeKind::File(l) => {
            assert_eq!(l.to_vec().unwrap(), fixtures::EDGEHOSTLET_SCRIPT.as_bytes())
        }
        k => panic!("{k:?}"),
    }
    // Firmware: lib/firmware before 1.10, usr/lib/firmware from 1.10.
    let old = plus(vec![
        Entry::dir("rootfs/lib"),
        Entry::dir("rootfs/lib/firmware"),
        Entry::file("rootfs/lib/firmware/x.bin", "fw", 0o644),
    ]);
    load_as(&old, Form::Tar, "v1.9.4").unwrap();
    let msg = refusal(&old, Form::Tar, "v1.10.0");
    assert!(
        msg.contains("rootfs/lib/firmware/x.bin: not an allowed path"),
        "{msg}"
    );
    assert!(
        msg.contains("rootfs/lib: Talos v1.10.0 has a merged /usr"),
        "{msg}"
    );
    let new = plus(vec![Entry::file(
        "rootfs/usr/lib/firmware/x.bin",
        "fw",
        0o644,
    )]);
    load_as(&new, Form::Tar, "v1.12.0").unwrap();
    let msg = refusal(&new, Form::Tar, "v1.9.0");
    assert_one(&msg, "not an allowed path");
}

#[test]
fn pins() {
    let (d, mut input) = write(&fixtures::edgehostlet(), Form::TarGz);
    let good = input.sha256.clone();
    input.sha256 = "0".repeat(64);
    let e = format!(
        "{:#}",
        load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
    );
    assert!(
        e.contains(&good) && e.contains(&"0".repeat(64)) && e.contains("update the `sha256`"),
        "{e}"
    );
    input.sha256 = good.to_uppercase();
    let e = format!(
        "{:#}",
        load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
    );
    assert!(e.contains("64 lowercase hex"), "{e}");
    drop(d);

    // A directory pin covers contents, modes and symlink targets, not owners or times.
    let (d, input) = write(&fixtures::edgehostlet(), Form::Dir);
    let script = input
        .path
        .join("rootfs/usr/local/lib/containers/edgehostlet/edgehostlet");
    let before = input_sha256(&input.path).unwrap();
    assert_eq!(before, input.sha256);
    let f = std::fs::File::options().write(true).open(&script).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    drop(f);
    assert_eq!(input_sha256(&input.path).unwrap(), before);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    let after_mode = input_sha256(&input.path).unwrap();
    assert_ne!(after_mode, before);
    std::fs::write(&script, "#!/bin/sh\necho changed\n").unwrap();
    assert_ne!(input_sha256(&input.path).unwrap(), after_mode);
    let e = format!(
        "{:#}",
        load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
    );
    assert!(e.contains("sha256 mismatch") && e.contains(&before), "{e}");
    drop(d);
}

#[test]
fn tree_digest_matches_its_documentation() {
    use sha2::{Digest, Sha256};
    let mut t = Tree::new();
    t.insert("a", crate::tree::Node::dir(0o755));
    t.insert(
        "a/f",
        crate::tree::Node::file(crate::layout::Layout::from_bytes(b"hi".to_vec()), 0o644),
    );
    t.insert("a/l", crate::tree::Node::symlink("f"));
    let mut h = Sha256::new();
    h.update(b"edgeimage-tree-v1\n");
    h.update(b"a\0d\x000755\0");
    h.update(b"a/f\0f\x000644\x002\0hi");
    h.update(b"a/l\0l\x000777\0f\0");
    assert_eq!(tree_sha256(&t).unwrap(), hex::encode(h.finalize()));
}

fn listing(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.insert(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn dotdot_paths_are_refused_and_never_written() {
    let marker = format!("escape-{}", std::process::id());
    let e = plus(vec![Entry::file(&format!("../../{marker}"), "boom", 0o644)]);
    for form in [Form::Tar, Form::TarGz, Form::TarZst] {
        let (d, input) = write(&e, form);
        let before = listing(d.path());
        let msg = format!(
            "{:#}",
            load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
        );
        assert_one(&msg, "climbs out of the tree");
        assert!(msg.contains(&format!("../../{marker}: ")), "{msg}");
        assert_eq!(listing(d.path()), before);
        for p in [
            d.path().join(&marker),
            d.path().parent().unwrap().join(&marker),
            std::env::current_dir()
                .unwrap()
                .join("..")
                .join("..")
                .join(&marker),
        ] {
            assert!(!p.exists(), "{} was written", p.display());
        }
    }
    // In an OCI layer, the image reader refuses the whole image.
    let msg = refusal(&e, Form::OciTar, "v1.12.5");
    assert!(msg.contains(".."), "{msg}");
    // The directory fixture writer refuses it too.
    let d = tempfile::tempdir().unwrap();
    assert!(fixtures::write(&e, Form::Dir, d.path(), Arch::Amd64).is_err());
    assert!(!d.path().parent().unwrap().join(&marker).exists());
}

#[test]
fn hostile_entries_each_have_their_own_message() {
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (
            plus(vec![Entry::file("/rootfs/usr/local/x", "x", 0o644)]),
            "absolute path in the archive",
        ),
        (
            plus(vec![Entry::symlink(
                "rootfs/usr/local/bin/shadow",
                "/etc/shadow",
            )]),
            "symlink target \"/etc/shadow\" resolves to /etc/shadow, outside the paths",
        ),
        (
            plus(vec![Entry::symlink(
                "rootfs/usr/local/bin/up",
                "../../../../../etc/passwd",
            )]),
            "symlink target \"../../../../../etc/passwd\" escapes the extension's rootfs",
        ),
        (
            plus(vec![Entry::symlink(
                "rootfs/usr/local/bin/rel",
                "../../../etc/passwd",
            )]),
            "resolves to /etc/passwd, outside the paths",
        ),
        (
            plus(vec![Entry::Hardlink(
                "rootfs/usr/local/bin/h".into(),
                "../../etc/passwd".into(),
            )]),
            "hard link target \"../../etc/passwd\" lies outside the tree",
        ),
        (
            plus(vec![Entry::Hardlink(
                "rootfs/usr/local/bin/h".into(),
                "/etc/passwd".into(),
            )]),
            "lies outside the tree",
        ),
        (
            plus(vec![Entry::Hardlink(
                "rootfs/usr/local/bin/h".into(),
                "rootfs/usr/local/bin/nothing".into(),
            )]),
            "is not a regular file of the archive",
        ),
        (
            plus(vec![Entry::CharDevice("rootfs/usr/local/mem".into(), 1, 1)]),
            "special files are not allowed (this is a character device)",
        ),
        (
            plus(vec![Entry::Fifo("rootfs/usr/local/pipe".into())]),
            "special files are not allowed (this is a fifo)",
        ),
        (
            plus(vec![Entry::file("rootfs/usr/local/bin/ww", "x", 0o666)]),
            "world-writable file (mode 0666)",
        ),
        (
            plus(vec![Entry::Dir("rootfs/usr/local/tmp".into(), 0o1777)]),
            "world-writable directory (mode 1777)",
        ),
        (
            plus(vec![
                Entry::dir("rootfs/etc"),
                Entry::file("rootfs/etc/passwd", "root::0:0::/:/bin/sh\n", 0o644),
            ]),
            "not an allowed path: on Talos v1.12.5 an extension may hold files and symlinks \
             only under /etc/cri/conf.d, /usr/lib/firmware, /usr/lib/modules, \
             /usr/lib/ld-linux-x86-64.so.2, /usr/lib/ld-linux-aarch64.so.1, /usr/bin/ldconfig, \
             /usr/lib/udev/rules.d, /usr/local, /usr/share/glvnd, /usr/share/egl, /etc/vulkan",
        ),
        (
            plus(vec![Entry::file("rootfs/usr/localx/y", "x", 0o644)]),
            "not an allowed path",
        ),
        (
            plus(vec![Entry::dir("rootfs/boot")]),
            "nothing may be under /boot",
        ),
        (
            plus(vec![Entry::file("rootfs/lib64/libc.so.6", "x", 0o755)]),
            "nothing may be under /lib64",
        ),
        (
            plus(vec![Entry::file("README.md", "hi", 0o644)]),
            "only `manifest.yaml` and `rootfs/` may be at the top",
        ),
    ];
    let mut seen = BTreeSet::new();
    for (entries, needle) in &cases {
        let msg = refusal(entries, Form::Tar, "v1.12.5");
        assert_one(&msg, needle);
        assert!(
            seen.insert(rules(&msg)[0].clone()),
            "duplicate message {msg}"
        );
    }
}

#[test]
fn hostile_directories() {
    // Directory inputs: symlinks are read, never followed; fifos are not opened.
    for (extra, needle) in [
        (
            vec![Entry::symlink("rootfs/usr/local/bin/shadow", "/etc/shadow")],
            "resolves to /etc/shadow",
        ),
        (
            vec![Entry::symlink(
                "rootfs/usr/local/etc/containers/x.yaml",
                "/etc/shadow",
            )],
            "a service definition must be a regular file, not a symlink",
        ),
        (
            vec![Entry::Fifo("rootfs/usr/local/pipe".into())],
            "special files are not allowed (this is a fifo)",
        ),
        (
            vec![Entry::file("rootfs/usr/local/bin/ww", "x", 0o666)],
            "world-writable file",
        ),
    ] {
        let msg = refusal(&plus(extra), Form::Dir, "v1.12.5");
        assert!(
            rules(&msg).iter().any(|r| r.contains(needle)),
            "{needle:?} not in {msg}"
        );
    }
}

const GOOD_METADATA: &str = "metadata:
  name: edgehostlet
  version: 1.7.1
  author: STACKIT
  description: Edge host agent
";

#[test]
fn manifest_rules() {
    let cases = [
        (
            format!("version: v1alpha1\n{GOOD_METADATA}  compatibility:\n    talos:\n      version: \">= banana\"\n"),
            "metadata.compatibility.talos.version: \">= banana\" is not a valid version range",
        ),
        (
            format!("version: v1alpha1\n{GOOD_METADATA}  compatibility:\n    talos:\n      version: \">= v1.13.0\"\n"),
            "the range \">= v1.13.0\" excludes Talos v1.12.5 (checked as 1.12.5)",
        ),
        (
            format!("version: v1alpha1\n{GOOD_METADATA}  homepage: https://example.invalid\n"),
            "metadata.homepage: unknown field",
        ),
        (
            format!("version: v1alpha1\nkind: Extension\n{GOOD_METADATA}"),
            "kind: unknown field",
        ),
        (
            format!("version: v1alpha2\n{GOOD_METADATA}"),
            "unsupported manifest version \"v1alpha2\"",
        ),
        (GOOD_METADATA.to_string(), "version: required"),
        (
            "version: v1alpha1\nmetadata:\n  name: Edge Hostlet\n  version: 1.0.0\n  author: a\n  description: d\n".to_string(),
            "metadata.name: \"Edge Hostlet\" must match",
        ),
        (
            "version: v1alpha1\nmetadata:\n  name: x\n  version: [1]\n  author: a\n  description: d\n".to_string(),
            "metadata.version: must be a string",
        ),
        ("version: [".to_string(), "is not valid YAML"),
    ];
    for (text, needle) in &cases {
        let msg = refusal(&with_manifest(text), Form::Tar, "v1.12.5");
        assert_one(&msg, needle);
        assert!(msg.contains(": manifest.yaml: "), "{msg}");
    }
    // Missing fields are all reported.
    let msg = refusal(
        &with_manifest("version: v1alpha1\nmetadata:\n  name: x\n"),
        Form::Tar,
        "v1.12.5",
    );
    let r = rules(&msg);
    assert_eq!(r.len(), 3, "{msg}");
    for f in ["version", "author", "description"] {
        assert!(
            r.contains(&format!("manifest.yaml: metadata.{f}: required")),
            "{msg}"
        );
    }
    // Compatible ranges and extraInfo.
    let ext = load_as(
        &with_manifest(&format!(
            "version: v1alpha1\n{GOOD_METADATA}  extraInfo: more\n  compatibility:\n    talos:\n      version: \">= v1.10.0 < v1.13.0 || 1.8.x\"\n"
        )),
        Form::Tar,
        "v1.12.5-stackit.v1.7.1",
    )
    .unwrap();
    assert_eq!(ext.metadata.extra_info.as_deref(), Some("more"));
    load_as(
        &with_manifest(&format!("version: v1alpha1\n{GOOD_METADATA}  compatibility:\n    talos:\n      version: \">= v1.10.0 < v1.13.0 || 1.8.x\"\n")),
        Form::Tar,
        "v1.8.3",
    )
    .unwrap();
}

#[test]
fn service_rules() {
    let base = |s: &str| format!("name: edgehostlet\ncontainer:\n  entrypoint: ./edgehostlet\n{s}");
    let cases = [
        (
            "name: edgehostlet\ncontainer:\n  entrypoint: ./nothere\nrestart: always\n".to_string(),
            "container.entrypoint: \"./nothere\" is missing: no file rootfs/usr/local/lib/containers/edgehostlet/nothere",
        ),
        (
            "name: edgehostlet\ncontainer:\n  args: [x]\nrestart: always\n".to_string(),
            "container.entrypoint: required",
        ),
        (
            "name: edgehostlet\ncontainer:\n  entrypoint: ../../../../bin/sh\nrestart: always\n".to_string(),
            "does not name a file inside the container root",
        ),
        (base("restart: sometimes\n"), "restart: sometimes is not one of always, never, untilSuccess"),
        (base(""), "restart: required"),
        (
            base("depends:\n  - service: cri\n    time: true\nrestart: always\n"),
            "depends[0]: sets service and time: each item must set exactly one of",
        ),
        (base("depends:\n  - {}\nrestart: always\n"), "depends[0]: no dependency specified"),
        (
            base("depends:\n  - path: relative/x\nrestart: always\n"),
            "depends[0].path: \"relative/x\" is not absolute",
        ),
        (
            base("depends:\n  - network: [addresses, moon]\nrestart: always\n"),
            "depends[0].network: moon is not one of",
        ),
        (base("depends:\n  - time: false\nrestart: always\n"), "depends[0].time: must be true"),
        (base("restart: always\nuser: root\n"), "user: unknown field"),
        (
            "name: other\ncontainer:\n  entrypoint: ./edgehostlet\nrestart: always\n".to_string(),
            "name: \"other\" must equal the file name's stem \"edgehostlet\"",
        ),
        (
            "name: Edge\ncontainer:\n  entrypoint: ./edgehostlet\nrestart: always\n".to_string(),
            "name: \"Edge\" must match ^[-_a-z0-9]+$",
        ),
        (
            base("  privileged: true\nrestart: always\n"),
            "container.privileged: unknown field",
        ),
        (
            base("  security:\n    writeableSysfs: yes please\nrestart: always\n"),
            "container.security.writeableSysfs: must be true or false",
        ),
    ];
    for (text, needle) in &cases {
        let msg = refusal(&with_service(text), Form::Tar, "v1.12.5");
        assert_one(&msg, needle);
        assert!(
            msg.contains(": rootfs/usr/local/etc/containers/edgehostlet.yaml: "),
            "{msg}"
        );
    }
    // A full, valid definition with every field.
    let full = "name: edgehostlet
container:
  entrypoint: ./edgehostlet
  args: [--flag]
  environment: [KEY=VALUE]
  environmentFile: /var/etc/env
  mounts:
    - source: /var/lib/x
      destination: /var/lib/x
      type: bind
      options: [rbind, rw]
  security:
    writeableSysfs: true
    maskedPaths: [/proc/kcore]
    readonlyPaths: [/proc/sys]
    writeableRootfs: false
    rootfsPropagation: shared
depends:
  - service: cri
  - path: /system/run/machined/machined.sock
  - network: [addresses, connectivity, hostname, etcfiles]
  - time: true
  - configuration: true
restart: always
logToConsole: false
";
    load_as(&with_service(full), Form::Tar, "v1.12.5").unwrap();
    // A non-executable entrypoint.
    let e: Vec<Entry> = fixtures::edgehostlet()
        .into_iter()
        .map(|e| match e {
            Entry::File(p, d, _) if p.ends_with("edgehostlet/edgehostlet") => {
                Entry::File(p, d, 0o644)
            }
            e => e,
        })
        .collect();
    assert_one(
        &refusal(&e, Form::Tar, "v1.12.5"),
        "is not executable (mode 0644)",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut e = with_manifest(&format!("version: v1\n{GOOD_METADATA}  extra: 1\n"));
    e.push(Entry::file("EXTRA", "x", 0o644));
    e.push(Entry::file("rootfs/usr/local/bin/ww", "x", 0o666));
    e.push(Entry::symlink("rootfs/usr/local/bin/s", "/etc/shadow"));
    e.push(Entry::CharDevice("rootfs/usr/local/mem".into(), 1, 1));
    e.push(Entry::file("../x", "x", 0o644));
    let (_d, input) = write(&e, Form::Tar);
    let origin = input.path.display().to_string();
    let msg = format!(
        "{:#}",
        load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
    );
    assert!(
        msg.starts_with(&format!("extension {origin} is refused (7 problems):")),
        "{msg}"
    );
    for line in msg.lines().skip(1) {
        assert!(line.starts_with(&format!("  {origin}: ")), "{line}");
    }
    for needle in [
        ": ../x: the path climbs out",
        ": EXTRA: only `manifest.yaml`",
        ": manifest.yaml: version: unsupported manifest version \"v1\"",
        ": manifest.yaml: metadata.extra: unknown field",
        ": rootfs/usr/local/bin/ww: world-writable file",
        ": rootfs/usr/local/bin/s: symlink target",
        ": rootfs/usr/local/mem: special files",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn missing_parts_and_odd_inputs() {
    let msg = refusal(
        &[Entry::file(
            "manifest.yaml",
            fixtures::EDGEHOSTLET_MANIFEST,
            0o644,
        )],
        Form::Tar,
        "v1.12.5",
    );
    assert_one(&msg, "rootfs/: missing");
    let msg = refusal(&[Entry::dir("rootfs")], Form::Tar, "v1.12.5");
    assert_one(&msg, "manifest.yaml: missing");
    // Not an archive at all.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("junk");
    std::fs::write(&p, b"hello, this is not a tar").unwrap();
    let input = ExtensionInput {
        sha256: input_sha256(&p).unwrap(),
        path: p,
    };
    let e = format!(
        "{:#}",
        load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
    );
    assert!(e.contains("not a directory, tar"), "{e}");
    // An OCI image for another architecture.
    let (_d, input) = write(&fixtures::edgehostlet(), Form::OciTar);
    let e = format!(
        "{:#}",
        load(&input, Arch::Arm64, &talos("v1.12.5")).unwrap_err()
    );
    assert!(e.contains("arm64"), "{e}");
}

#[test]
fn from_tree_validates_in_memory_trees() {
    let (_d, input) = write(&fixtures::edgehostlet(), Form::Tar);
    let ext = load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap();
    let mut t = Tree::new();
    t.insert(
        "manifest.yaml",
        crate::tree::Node::file(
            crate::layout::Layout::from_bytes(fixtures::EDGEHOSTLET_MANIFEST.as_bytes().to_vec()),
            0o644,
        ),
    );
    for (p, n) in ext.rootfs.entries {
        t.insert(format!("rootfs/{p}"), n);
    }
    let again = from_tree("virtual", "-", t, &talos("v1.12.5")).unwrap();
    assert_eq!(again.metadata, ext.metadata);
    assert_eq!(again.origin, "virtual");
}

/// Talos's YAML decoder puts any plain scalar into a string field as written
/// (`pkg/machinery/extensions/metadata.go`, decoded with yaml.v3 / yaml/v4 `Decode`), so an
/// unquoted numeric `metadata.version` is accepted with its text kept exactly.
#[test]
fn unquoted_numeric_metadata_is_taken_as_written() {
    for (written, text) in [
        ("1.20", "1.20"),
        ("1", "1"),
        ("0x1F", "0x1F"),
        ("2.0e1", "2.0e1"),
    ] {
        let m = format!(
            "version: v1alpha1\nmetadata:\n  name: x\n  version: {written}\n  author: 42\n  description: true\n"
        );
        let ext = load_as(&with_manifest(&m), Form::Tar, "v1.12.5").unwrap();
        assert_eq!(ext.metadata.version, text);
        assert_eq!(ext.metadata.author, "42");
        assert_eq!(ext.metadata.description, "true");
    }
}

/// The manifest of Talos's validator fixtures (`pkg/machinery/extensions/testdata/*`), written
/// here from its description: name, an unquoted version with a date, a folded description,
/// a `>= v1.0.0` range.
const TALOS_FIXTURE_MANIFEST: &str = "version: v1alpha1
metadata:
  name: gvisor
  version: 20220117.0-v1.0.0
  author: Andrew Rynhard
  description: >
    This system extension provides gVisor using containerd's runtime handler.
  compatibility:
    talos:
      version: \">= v1.0.0\"
";

/// The "good" extension of Talos's own validator tests (`TestLoadValidate`, v1.10 … v1.14):
/// firmware, the glibc loader at `/usr/lib/ld-linux-x86-64.so.2` (allowed from v1.10), a
/// library and a relative symlink to it. v1.8/v1.9 had the `/lib`, `/lib64` forms.
#[test]
fn talos_validator_good_extension_is_accepted() {
    let merged = vec![
        Entry::file("manifest.yaml", TALOS_FIXTURE_MANIFEST, 0o644),
        Entry::file("rootfs/usr/lib/firmware/amd/cpu", "", 0o644),
        Entry::file("rootfs/usr/lib/ld-linux-x86-64.so.2", "", 0o644),
        Entry::file("rootfs/usr/local/lib/a.so", "", 0o644),
        Entry::symlink("rootfs/usr/local/lib/a.so.1", "a.so"),
    ];
    for v in ["v1.10.0", "v1.11.6", "v1.12.5", "v1.13.9", "v1.14.0"] {
        let ext = load_as(&merged, Form::Tar, v).unwrap_or_else(|e| panic!("{v}: {e:#}"));
        assert_eq!(ext.metadata.name, "gvisor");
        assert_eq!(ext.metadata.version, "20220117.0-v1.0.0");
        assert_eq!(
            ext.metadata.description,
            "This system extension provides gVisor using containerd's runtime handler.\n"
        );
    }
    let old = vec![
        Entry::file("manifest.yaml", TALOS_FIXTURE_MANIFEST, 0o644),
        Entry::file("rootfs/lib/firmware/amd/cpu", "", 0o644),
        Entry::file("rootfs/lib64/ld-linux-x86-64.so.2", "", 0o644),
        Entry::file("rootfs/usr/local/lib/a.so", "", 0o644),
        Entry::symlink("rootfs/usr/local/lib/a.so.1", "a.so"),
    ];
    for v in ["v1.8.4", "v1.9.6"] {
        load_as(&old, Form::Tar, v).unwrap_or_else(|e| panic!("{v}: {e:#}"));
    }
    // Each is refused on the other side of the usr merge.
    assert!(refusal(&merged, Form::Tar, "v1.9.6").contains("not an allowed path"));
    assert!(refusal(&old, Form::Tar, "v1.10.0").contains("not an allowed path"));
}

/// The "bad" extensions of Talos's `TestValidateFailures` (v1.10 … v1.14), each refused with
/// a message of its own.
#[test]
fn talos_validator_bad_extensions_are_refused() {
    let manifest = || Entry::file("manifest.yaml", TALOS_FIXTURE_MANIFEST, 0o644);
    let cases: Vec<(&str, Vec<Entry>, Vec<&str>)> = vec![
        (
            // Talos: `unexpected file "a"`.
            "wrongfiles",
            vec![Entry::file("a", "", 0o644)],
            vec![
                "a: only `manifest.yaml` and `rootfs/` may be at the top",
                "manifest.yaml: missing",
                "rootfs/: missing",
            ],
        ),
        (
            // Talos: `unsupported manifest version: ""`.
            "emptymanifest",
            vec![Entry::file("manifest.yaml", "---\n", 0o644)],
            vec!["manifest.yaml: is empty", "rootfs/: missing"],
        ),
        (
            // Talos: `extension rootfs is missing`.
            "norootfs",
            vec![manifest()],
            vec!["rootfs/: missing"],
        ),
        (
            // Talos: `path "/boot/vmlinuz" is not allowed in extensions`.
            "badpaths",
            vec![manifest(), Entry::file("rootfs/boot/vmlinuz", "", 0o644)],
            vec!["rootfs/boot/vmlinuz: nothing may be under /boot"],
        ),
        (
            // Talos: `path "/usr/lib64/a.so" is not allowed in extensions`.
            "usrmerge",
            vec![manifest(), Entry::file("rootfs/usr/lib64/a.so", "", 0o644)],
            vec!["rootfs/usr/lib64/a.so: nothing may be under /usr/lib64"],
        ),
    ];
    for (name, entries, want) in cases {
        let msg = refusal(&entries, Form::Tar, "v1.12.5");
        let got: Vec<String> = msg
            .lines()
            .skip(1)
            .map(|l| l.trim().split_once(": ").unwrap().1.to_string())
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: {msg}");
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "{name}: {w:?} not in {msg}"
            );
        }
    }
}

/// The allowed paths per Talos version, exactly Talos's `AllowedPaths`: the glibc loader and
/// `ldconfig` from v1.10, the aarch64 loader from v1.12, `ld.so.conf`/`ld.so.cache`, the
/// NVIDIA tools and `nvme` from v1.13 (the glibc and NVIDIA container toolkit extensions ship
/// these). Single files are files, not prefixes: `/usr/bin/nvme-cli` stays refused.
#[test]
fn allowed_paths_follow_each_talos_version() {
    let file = |p: &str| plus(vec![Entry::file(&format!("rootfs/{p}"), "x", 0o755)]);
    // (path, first minor version that allows it)
    let table: [(&str, u32); 13] = [
        ("usr/lib/ld-linux-x86-64.so.2", 10),
        ("usr/bin/ldconfig", 10),
        ("usr/lib/ld-linux-aarch64.so.1", 12),
        ("etc/ld.so.conf", 13),
        ("etc/ld.so.cache", 13),
        ("usr/bin/nvidia-modprobe", 13),
        ("usr/bin/nvidia-pcc", 13),
        ("usr/bin/nvidia-smi", 13),
        ("usr/bin/nvidia-ctk", 13),
        ("usr/bin/nvidia-cdi-hook", 13),
        ("usr/bin/nvme", 13),
        ("usr/share/glvnd/egl_vendor.d/10_nvidia.json", 8),
        ("etc/vulkan/icd.d/nvidia_icd.json", 8),
    ];
    for (path, from) in table {
        for minor in 10..=14 {
            let v = format!("v1.{minor}.0");
            let r = load_as(&file(path), Form::Tar, &v);
            assert_eq!(r.is_ok(), minor >= from, "{path} on {v}: {r:?}");
        }
    }
    // The glibc extension's links (siderolabs/extensions misc/glibc: the loader and ldconfig
    // point into /usr/local) on v1.13.
    let glibc = plus(vec![
        Entry::file("rootfs/etc/ld.so.conf", "/usr/local/lib\n", 0o644),
        Entry::file("rootfs/usr/local/lib/ld-linux-x86-64.so.2", "ld", 0o755),
        Entry::file("rootfs/usr/local/sbin/ldconfig", "ldconfig", 0o755),
        Entry::symlink(
            "rootfs/usr/lib/ld-linux-x86-64.so.2",
            "/usr/local/lib/ld-linux-x86-64.so.2",
        ),
        Entry::symlink("rootfs/usr/bin/ldconfig", "/usr/local/sbin/ldconfig"),
        Entry::symlink("rootfs/usr/local/lib64", "lib/"),
    ]);
    load_as(&glibc, Form::Tar, "v1.13.9").unwrap();
    let msg = refusal(&glibc, Form::Tar, "v1.12.5");
    assert_one(&msg, "rootfs/etc/ld.so.conf: not an allowed path");
    // Before v1.10: /sbin/ldconfig (v1.9 on) and the /lib64 loader; udev rules moved in v1.9.
    load_as(&file("sbin/ldconfig"), Form::Tar, "v1.9.0").unwrap();
    refusal(&file("sbin/ldconfig"), Form::Tar, "v1.8.4");
    load_as(&file("lib64/ld-linux-x86-64.so.2"), Form::Tar, "v1.8.4").unwrap();
    load_as(&file("usr/etc/udev/rules.d/99.rules"), Form::Tar, "v1.8.4").unwrap();
    refusal(&file("usr/etc/udev/rules.d/99.rules"), Form::Tar, "v1.9.0");
    load_as(&file("usr/lib/udev/rules.d/99.rules"), Form::Tar, "v1.9.0").unwrap();
    // Whole path components: names that merely start with an allowed path stay refused.
    for p in [
        "usr/bin/nvme-cli",
        "etc/ld.so.conf.d/x.conf",
        "usr/localx/y",
    ] {
        assert_one(
            &refusal(&file(p), Form::Tar, "v1.14.0"),
            "not an allowed path",
        );
    }
}

/// The cases of Talos's `pkg/machinery/extensions/services` tests (v1.10 … v1.14), as service
/// definitions of an extension: `testdata/hello.yaml` (`TestUnmarshal`) is accepted; the
/// `TestValidate` cases "empty", "invalid name" and "invalid deps" are refused with one message
/// per problem Talos reports.
#[test]
fn talos_service_validator_cases() {
    let with = |name: &str, spec: &str| {
        plus(vec![
            Entry::file(
                &format!("rootfs/usr/local/etc/containers/{name}.yaml"),
                spec,
                0o644,
            ),
            Entry::dir(&format!("rootfs/usr/local/lib/containers/{name}")),
            Entry::file(
                &format!("rootfs/usr/local/lib/containers/{name}/hello-world"),
                "#!/bin/sh\n",
                0o755,
            ),
        ])
    };
    let hello = "name: hello
container:
  entrypoint: hello-world
  args:
    - --development
    - --log=debug
  mounts:
    - source: /var/lib/example
      destination: /var/lib/example
      type: bind
      options:
        - rbind
        - ro
depends:
  - service: cri
  - path: /system/run/machined/machined.sock
  - network:
      - addresses
restart: never
";
    load_as(&with("hello", hello), Form::Tar, "v1.12.5").unwrap();
    let cases: [(&str, &str, &[&str]); 3] = [
        // Talos: name "" is invalid; restart kind is invalid; container endpoint can't be empty.
        ("empty", "{}\n", &["name: required", "restart: required", "container: required"]),
        // Talos: name "FOO" is invalid.
        (
            "FOO",
            "name: FOO\ncontainer:\n  entrypoint: hello-world\nrestart: always\n",
            &["name: \"FOO\" must match ^[-_a-z0-9]+$"],
        ),
        // Talos: no dependency specified; path is not absolute; invalid network dependency;
        // more than a single dependency is set.
        (
            "foo",
            "name: foo\ncontainer:\n  entrypoint: hello-world\nrestart: always\ndepends:\n  - {}\n  \
             - path: ./somefile\n  - network: [bogus]\n  - network: [addresses]\n    path: /foo\n",
            &[
                "depends[0]: no dependency specified",
                "depends[1].path: \"./somefile\" is not absolute",
                "depends[2].network: bogus is not one of",
                "depends[3]: sets path and network: each item must set exactly one of",
            ],
        ),
    ];
    for (name, spec, wants) in cases {
        let msg = refusal(&with(name, spec), Form::Tar, "v1.12.5");
        for w in wants {
            assert!(
                rules(&msg).iter().any(|r| r.contains(w)),
                "{name}: {w:?} not in {msg}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Bounds: depth, decompression, entries
// ------------------------------------------------------------------------------------------

use crate::assets::oci::fixtures as ox;

/// An extension tar (manifest, rootfs, then `extra` entries as raw tar bytes), in `form`
/// (`Tar`, `TarGz` or `TarZst`), written to a file; its input with the right pin.
fn raw_extension(extra: &[u8], form: Form) -> (tempfile::TempDir, ExtensionInput) {
    let mut tar = fixtures::tar_bytes(&fixtures::edgehostlet()).unwrap();
    tar.truncate(tar.len() - 1024); // drop the end marker
    tar.extend_from_slice(extra);
    tar.extend(ox::tar_end());
    let data = match form {
        Form::Tar => tar,
        Form::TarZst => zstd::encode_all(&tar[..], 19).unwrap(),
        Form::TarGz => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        }
        other => panic!("{other:?}"),
    };
    raw_file(&data)
}

fn raw_file(data: &[u8]) -> (tempfile::TempDir, ExtensionInput) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("x.tar");
    std::fs::write(&path, data).unwrap();
    let sha256 = input_sha256(&path).unwrap();
    (d, ExtensionInput { path, sha256 })
}

fn load_err(input: &ExtensionInput) -> String {
    format!(
        "{:#}",
        load(input, Arch::Amd64, &talos("v1.12.5")).unwrap_err()
    )
}

#[test]
fn a_deep_directory_in_a_tiny_archive_is_refused_before_the_tree_is_built() {
    let deep = "rootfs/usr/local/".to_string() + &"a/".repeat(60_000);
    let entry = ox::entry(deep.as_bytes(), tar::EntryType::Directory, b"");
    for form in [Form::TarZst, Form::TarGz, Form::Tar] {
        let (_d, input) = raw_extension(&entry, form);
        let e = load_err(&input);
        assert!(
            e.contains(&format!("extension {}: entry ", input.path.display()))
                && e.contains("its path nests 60003 levels deep, more than the 64-level limit"),
            "{form:?}: {e}"
        );
        assert!(!e.contains("a/a/a/a"), "{e}");
    }
    let (_d, input) = raw_extension(&entry, Form::TarZst);
    assert!(std::fs::metadata(&input.path).unwrap().len() < 4096);

    // 65 levels are refused, 64 pass the cap (and meet the validator).
    let at = |n: usize| "rootfs/usr/local/".to_string() + &"a/".repeat(n - 3);
    let (_d, input) = raw_extension(
        &ox::entry(at(65).as_bytes(), tar::EntryType::Directory, b""),
        Form::Tar,
    );
    assert!(load_err(&input).contains("nests 65 levels deep"));
    let (_d, input) = raw_extension(
        &ox::entry(at(64).as_bytes(), tar::EntryType::Directory, b""),
        Form::Tar,
    );
    load(&input, Arch::Amd64, &talos("v1.12.5")).unwrap();
}

#[test]
fn deep_directories_and_images_are_refused_too() {
    // A directory input.
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("ext");
    fixtures::write_dir(&fixtures::edgehostlet(), &root).unwrap();
    let deep = root.join("rootfs/usr/local").join("a/".repeat(70));
    std::fs::create_dir_all(&deep).unwrap();
    let e = format!("{:#}", input_sha256(&root).unwrap_err());
    assert!(
        e.contains("nests 65 levels deep, more than the 64-level limit"),
        "{e}"
    );
    // An OCI image holding the extension tree.
    let mut tree = fixtures::edgehostlet();
    tree.push(Entry::dir(&format!("rootfs/usr/local/{}", "b/".repeat(20))));
    let mut tar = fixtures::tar_bytes(&tree).unwrap();
    tar.truncate(tar.len() - 1024);
    let deep = "rootfs/usr/local/".to_string() + &"a/".repeat(70);
    tar.extend(ox::entry(deep.as_bytes(), tar::EntryType::Directory, b""));
    tar.extend(ox::tar_end());
    let members = ox::oci_members(Arch::Amd64, &[ox::Layer::new(&tar, tar.clone())]).unwrap();
    let (_d, input) = raw_file(&ox::outer_tar(&members).unwrap());
    let e = load_err(&input);
    assert!(
        e.contains("nests 73 levels deep, more than the 64-level limit"),
        "{e}"
    );
}

#[test]
fn a_compressed_extension_expands_only_so_far() {
    let head = ox::entry_header(
        b"rootfs/usr/local/bin/big",
        tar::EntryType::Regular,
        3 << 30,
    );
    let mut tar = fixtures::tar_bytes(&fixtures::edgehostlet()).unwrap();
    tar.truncate(tar.len() - 1024);
    tar.extend(head);
    let bomb = ox::ZstdFrame::new().raw(&tar).repeat(0, 3 << 30).finish();
    let (_d, input) = raw_file(&bomb);
    let t = std::time::Instant::now();
    let e = load_err(&input);
    assert!(
        e.contains(
            "its header claims 3221225472 bytes of data, reaching past 256.0 MiB, the \
             most a compressed extension of"
        ),
        "{e}"
    );
    // A hang guard, not a performance claim (`cargo xtask bench` measures time).
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    let gz = ox::gzip_with_zeros(&tar, 4 << 20).unwrap();
    let (_d, input) = raw_file(&gz);
    assert!(load_err(&input).contains("reaching past 256.0 MiB"));
}
