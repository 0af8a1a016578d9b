//! Shared helpers for the integration tests: synthetic inputs, profiles, running the binary,
//! and the independent tools that check our output.
#![allow(dead_code)]

pub mod watch;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgeimage::synthetic::{self, Sizes};
use edgeimage::talos::Arch;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgeimage")
}

/// Run `edgeimage` with args, with a fixed SOURCE_DATE_EPOCH.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("running edgeimage")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Is an external tool available? In CI it must be; elsewhere a missing tool skips loudly.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"
        ))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{tool} is required in CI (install it: see .ci/run)");
        }
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

pub fn tool(name: &str) -> Command {
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Command::new(p);
        }
    }
    Command::new(name)
}

/// A synthetic asset set and a profile for it in `dir`; returns the profile path.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub profile: PathBuf,
    pub digests: Vec<(String, String)>,
}

pub fn digest(digests: &[(String, String)], name: &str) -> String {
    digests.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

pub fn fixture(arch: Arch, extra_toml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets");
    let digests = synthetic::write_asset_set(
        &assets,
        arch,
        Sizes {
            kernel: 1 << 20,
            initramfs: 2 << 20,
        },
    )
    .unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, profile_text(arch, &digests, extra_toml)).unwrap();
    Fixture {
        dir,
        profile,
        digests,
    }
}

pub fn profile_text(arch: Arch, digests: &[(String, String)], extra_toml: &str) -> String {
    format!(
        "name = \"t\"\narch = \"{arch}\"\ntalos_version = \"v1.12.5\"\ndisk_size = \"128MiB\"\nesp_size = \"100MiB\"\n{extra_toml}\n\
         [assets]\nsource = \"assets\"\n\
         kernel = {{ sha256 = \"{}\" }}\ninitramfs = {{ sha256 = \"{}\" }}\n\
         systemd_boot = {{ sha256 = \"{}\" }}\nsystemd_stub = {{ sha256 = \"{}\" }}\n",
        digest(digests, "vmlinuz"),
        digest(digests, "initramfs.xz"),
        digest(digests, "systemd-boot.efi"),
        digest(digests, "systemd-stub.efi"),
    )
}

/// The output set `edgeimage build --out out` writes for profile `name`: `out/<name>/`.
pub fn set_of(out: &Path, name: &str) -> PathBuf {
    out.join(name)
}

/// The output set of the fixtures' profile `t` in `out`: `out/t/`.
pub fn set_dir(out: &Path) -> PathBuf {
    set_of(out, "t")
}

/// Run `edgeimage build` of the fixture's profile into `out`, successful or not.
pub fn try_build(f: &Fixture, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "build",
        "--profile",
        f.profile.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Build the fixture's profile into `out`; panics with stderr on failure.
pub fn build(f: &Fixture, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["-q"];
    args.extend_from_slice(extra);
    let o = try_build(f, out, &args);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    o
}

// ---------------------------------------------------------------------------------------------
// Signed builds: keys, a trust store, a build.

/// A key pair made by `edgeimage key generate --unencrypted`.
pub struct Key {
    pub secret: PathBuf,
    pub public: PathBuf,
    /// 16 hex digits, as minisign prints it.
    pub id: String,
}

pub fn new_key(dir: &Path, name: &str) -> Key {
    fs::create_dir_all(dir).unwrap();
    let o = run(&[
        "key",
        "generate",
        "--name",
        name,
        "--out",
        dir.to_str().unwrap(),
        "--unencrypted",
    ]);
    assert!(o.status.success(), "key generate: {}", stderr(&o));
    let public = dir.join(format!("{name}.pub"));
    assert_eq!(
        comment_key_id(&public).len(),
        16,
        "edgeimage writes 16 digits"
    );
    key_of(dir.join(format!("{name}.key")), public)
}

/// The key ID as a `.pub` file's comment line prints it: minisign prints it without leading
/// zeros (`%" PRIX64`), edgeimage with them.
pub fn comment_key_id(public: &Path) -> String {
    let text = fs::read_to_string(public).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("untrusted comment: minisign public key "))
        .unwrap_or_else(|| panic!("{}: unexpected first line: {text}", public.display()))
        .trim()
        .to_string()
}

/// A key pair; its ID as 16 hex digits (as edgeimage prints it).
pub fn key_of(secret: PathBuf, public: PathBuf) -> Key {
    let printed = comment_key_id(&public);
    let id = u64::from_str_radix(&printed, 16)
        .map(|n| format!("{n:016X}"))
        .unwrap_or_else(|e| panic!("{}: key ID {printed:?}: {e}", public.display()));
    Key { secret, public, id }
}

/// A build in a temporary directory, with its trust store.
pub struct Built {
    pub f: Fixture,
    /// `out/`, the build's `--out` directory.
    pub out: PathBuf,
    /// `out/t/`, the output set: t.raw, t.raw.zst, t.manifest.json(.minisig), t.bmap.
    pub set: PathBuf,
    /// `trust/`: `trusted/release.pub`.
    pub trust: PathBuf,
    /// The key in the trust store (`keys/release.key`); it signed the build if `signed`.
    pub key: Key,
}

impl Built {
    pub fn dir(&self) -> &Path {
        self.f.dir.path()
    }
    pub fn raw(&self) -> PathBuf {
        self.set.join("t.raw")
    }
    pub fn zst(&self) -> PathBuf {
        self.set.join("t.raw.zst")
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.set.join("t.manifest.json")
    }
    pub fn minisig(&self) -> PathBuf {
        self.set.join("t.manifest.json.minisig")
    }
    pub fn bmap(&self) -> PathBuf {
        self.set.join("t.bmap")
    }
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.manifest_path()).unwrap()).unwrap()
    }
}

/// The common fixture on a smaller disk (44 MiB, ESP 40 MiB): the same layout, built and read
/// in a third of the time.
pub fn small_fixture(extra_toml: &str) -> Fixture {
    let f = fixture(Arch::Amd64, extra_toml);
    let text = fs::read_to_string(&f.profile).unwrap();
    let small = text
        .replace("disk_size = \"128MiB\"", "disk_size = \"44MiB\"")
        .replace("esp_size = \"100MiB\"", "esp_size = \"40MiB\"");
    assert_ne!(small, text, "the fixture's sizes moved: {text}");
    fs::write(&f.profile, small).unwrap();
    f
}

/// Fixture + trust store with a fresh key + `build --raw` (signed with that key if `signed`).
pub fn setup(extra_toml: &str, signed: bool) -> Built {
    built_from(small_fixture(extra_toml), signed)
}

/// A trust store with a fresh key, and `build --raw` of `f` (signed with that key if
/// `signed`).
pub fn built_from(f: Fixture, signed: bool) -> Built {
    let key = new_key(&f.dir.path().join("keys"), "release");
    let trust = f.dir.path().join("trust");
    fs::create_dir_all(trust.join("trusted")).unwrap();
    fs::copy(&key.public, trust.join("trusted/release.pub")).unwrap();
    let out = f.dir.path().join("out");
    let secret = key.secret.to_str().unwrap().to_string();
    if signed {
        build(&f, &out, &["--raw", "--sign-key", &secret]);
    } else {
        build(&f, &out, &["--raw"]);
    }
    let set = set_dir(&out);
    Built {
        f,
        out,
        set,
        trust,
        key,
    }
}

pub fn signed() -> Built {
    setup("", true)
}

/// What `edgeimage verify -q` said.
pub struct Verified {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Verified {
    pub fn verdict(&self) -> &str {
        self.stdout.lines().next().unwrap_or("")
    }
    /// The lines after the verdict.
    pub fn details(&self) -> Vec<&str> {
        self.stdout.lines().skip(1).collect()
    }
    /// Exit code and verdict word; returns the verdict line.
    pub fn expect(&self, code: i32, word: &str) -> &str {
        assert_eq!(
            self.code, code,
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.verdict().starts_with(&format!("{word}: ")),
            "verdict should start with {word:?}:\n{}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self.verdict()
    }
}

pub fn verify_with(trust: &Path, target: &Path, extra: &[&str]) -> Verified {
    let mut args = vec![
        "verify",
        target.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "-q",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    Verified {
        code: o.status.code().expect("verify was killed by a signal"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: stderr(&o),
    }
}

impl Built {
    /// `edgeimage verify -q` of `target` against this build's trust store.
    pub fn verify(&self, target: &Path, extra: &[&str]) -> Verified {
        verify_with(&self.trust, target, extra)
    }
}

// ---------------------------------------------------------------------------------------------
// A simulated system: sysfs, /proc and /dev as plain files under a directory, for
// `--system-root` / `system_root` (disks are regular files there).

/// What [`FakeSystem::gpt_partition`] fills a partition with.
pub const FILL: u8 = 0x5a;

pub struct FakeSystem {
    pub root: PathBuf,
}

impl FakeSystem {
    pub fn new(root: &Path) -> FakeSystem {
        let s = FakeSystem {
            root: root.to_path_buf(),
        };
        s.file("proc/self/mountinfo", "");
        s.file("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
        fs::create_dir_all(root.join("sys/block")).unwrap();
        s
    }

    pub fn file(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// A whole disk `name` under `sys/<parent>/block/<name>` (the parent's path decides the
    /// transport: `…/virtio1` virtio, `devices/virtual` none), `bytes` long, with an optional
    /// serial; `/dev/<name>` is an empty regular file. Returns the disk's sysfs directory
    /// (relative to the root).
    pub fn disk(
        &self,
        parent: &str,
        name: &str,
        dev: &str,
        bytes: u64,
        serial: Option<&str>,
    ) -> String {
        let dir = format!("sys/{parent}/block/{name}");
        self.file(&format!("{dir}/dev"), &format!("{dev}\n"));
        self.file(&format!("{dir}/size"), &format!("{}\n", bytes / 512));
        self.file(&format!("{dir}/ro"), "0\n");
        self.file(&format!("{dir}/removable"), "0\n");
        self.file(&format!("{dir}/queue/logical_block_size"), "512\n");
        if let Some(s) = serial {
            self.file(&format!("{dir}/serial"), &format!("{s}\n"));
        }
        let up = "../";
        std::os::unix::fs::symlink(
            format!("{up}{}", &dir[4..]),
            self.root.join(format!("sys/block/{name}")),
        )
        .unwrap();
        self.file(&format!("dev/{name}"), "");
        dir
    }

    /// A partition `name` (number `n`) of the disk at sysfs directory `disk`, with its GPT
    /// name in `uevent` (and `/sys/class/block/<name>`), `/dev/<name>` holding `bytes` of
    /// [`FILL`].
    pub fn gpt_partition(
        &self,
        disk: &str,
        name: &str,
        n: u32,
        dev: &str,
        bytes: u64,
        partname: &str,
    ) {
        self.partition(disk, name, n, dev, bytes);
        let (maj, min) = dev.split_once(':').unwrap();
        self.file(
            &format!("{disk}/{name}/uevent"),
            &format!("MAJOR={maj}\nMINOR={min}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={partname}\n"),
        );
        fs::create_dir_all(self.root.join("sys/class/block")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../{}/{name}", &disk[4..]),
            self.root.join(format!("sys/class/block/{name}")),
        )
        .unwrap();
        fs::write(
            self.root.join(format!("dev/{name}")),
            vec![FILL; bytes as usize],
        )
        .unwrap();
    }

    /// A partition `name` (number `n`) of the disk at sysfs directory `disk`.
    pub fn partition(&self, disk: &str, name: &str, n: u32, dev: &str, bytes: u64) {
        let dir = format!("{disk}/{name}");
        self.file(&format!("{dir}/dev"), &format!("{dev}\n"));
        self.file(&format!("{dir}/size"), &format!("{}\n", bytes / 512));
        self.file(&format!("{dir}/partition"), &format!("{n}\n"));
        self.file(&format!("{dir}/ro"), "0\n");
        self.file(&format!("dev/{name}"), "");
    }
}

// ---------------------------------------------------------------------------------------------
// Files, loop devices, tmpfs mounts.

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sparse file of `size` bytes.
pub fn sparse(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

pub fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Copy `len` bytes at `offset` of `image` into a new sparse file `to`.
pub fn extract(image: &Path, offset: u64, len: u64, to: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(image).unwrap();
    let out = fs::File::create(to).unwrap();
    out.set_len(len).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], offset + pos).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], pos).unwrap();
        }
        pos += n as u64;
    }
}

pub fn inspect_json(image: &Path) -> serde_json::Value {
    let o = run(&["inspect", image.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A loop device on a file, detached when dropped (also when the test fails).
pub struct Loop(pub String);

impl Loop {
    /// Attach `file` read-write; `None` (SKIPPED, loudly) where loop devices are not allowed,
    /// outside CI.
    pub fn new(file: &Path) -> Option<Loop> {
        Self::attach(file, &[])
    }

    /// Attach `file` read-only.
    pub fn read_only(file: &Path) -> Option<Loop> {
        Self::attach(file, &["-r"])
    }

    /// Attach `file` read-write with `block`-byte logical blocks (`losetup -b`).
    pub fn with_block_size(file: &Path, block: u32) -> Option<Loop> {
        Self::attach(file, &["-b", &block.to_string()])
    }

    fn attach(file: &Path, extra: &[&str]) -> Option<Loop> {
        if !have("losetup") {
            return None;
        }
        let o = tool("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(file)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let dev = out.lines().last().unwrap_or("").trim().to_string();
        if !o.status.success() || !dev.starts_with("/dev/loop") {
            let why = format!("losetup -f --show failed: {}{out}", stderr(&o));
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: loop device: {why}");
            return None;
        }
        Some(Loop(dev))
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        match tool("losetup").args(["-d", &self.0]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("losetup -d {}: {}", self.0, stderr(&o)),
            Err(e) => eprintln!("losetup -d {}: {e}", self.0),
        }
    }
}

/// A tmpfs of `size` (e.g. `2m`) mounted on `dir`, unmounted when dropped; `None` (SKIPPED)
/// where mounting is not allowed.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!(
                "SKIPPED (tmpfs): mount failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Copy `inner` out of the ESP of the raw image `raw` (the ESP at 1 MiB, `esp_mib` MiB long)
/// with mtools' `mcopy` into `to`.
pub fn esp_file(raw: &Path, esp_mib: u64, inner: &str, to: &Path) {
    let esp = to.with_extension("esp.img");
    extract(raw, 1 << 20, esp_mib << 20, &esp);
    let o = tool("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i", esp.to_str().unwrap(), &format!("::/{inner}")])
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success(), "mcopy: {}", stderr(&o));
    let _ = fs::remove_file(esp);
}

/// The archive `edgeimage build` appended to the base initramfs `base` inside the UKI `uki`:
/// its `.initrd` section (`objcopy`), past the base (4-byte padded), decompressed with
/// `zstd` and unpacked with `cpio` into `dir`.
pub fn unpack_appended(uki: &Path, base: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let initrd = dir.join("initrd");
    let o = tool("objcopy")
        .args(["-O", "binary", "--only-section=.initrd"])
        .arg(uki)
        .arg(&initrd)
        .output()
        .unwrap();
    assert!(o.status.success(), "objcopy: {}", stderr(&o));
    let all = fs::read(&initrd).unwrap();
    let at = (fs::metadata(base).unwrap().len() as usize).div_ceil(4) * 4;
    fs::write(dir.join("appended.zst"), &all[at..]).unwrap();
    let o = tool("sh")
        .arg("-c")
        .arg("zstd -dcq appended.zst | cpio -idm --quiet")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "zstd | cpio: {}", stderr(&o));
}

/// Write `entries` as an extension in `form` under the fixture's directory `name`; returns
/// the profile's `[[extensions]]` section pinning it (the path relative to the profile, so the
/// profile's bytes do not depend on where the test runs).
pub fn extension(
    f: &Fixture,
    entries: &[edgeimage::extension::fixtures::Entry],
    form: edgeimage::extension::fixtures::Form,
    name: &str,
) -> String {
    let dir = f.dir.path().join(name);
    fs::create_dir_all(&dir).unwrap();
    let path = edgeimage::extension::fixtures::write(entries, form, &dir, Arch::Amd64).unwrap();
    let pin = edgeimage::extension::input_sha256(&path).unwrap();
    let rel = path.strip_prefix(f.profile.parent().unwrap()).unwrap();
    format!(
        "[[extensions]]\npath = \"{}\"\nsha256 = \"{pin}\"\n",
        rel.display()
    )
}

/// Append sections to the fixture's profile.
pub fn add(f: &Fixture, text: &str) {
    let mut p = fs::read_to_string(&f.profile).unwrap();
    p.push('\n');
    p.push_str(text);
    fs::write(&f.profile, p).unwrap();
}

/// Replace the fixture's asset `name` with `data` and pin the new bytes in its profile.
pub fn replace_asset(f: &Fixture, name: &str, data: &[u8]) {
    use sha2::{Digest, Sha256};
    let old = digest(&f.digests, name);
    fs::write(f.dir.path().join("assets").join(name), data).unwrap();
    let text = fs::read_to_string(&f.profile)
        .unwrap()
        .replace(&old, &hex::encode(Sha256::digest(data)));
    fs::write(&f.profile, text).unwrap();
}

/// kmod's `depmod --all` over `<basedir>/lib/modules/<kver>` with Talos's configuration
/// (`search extras built-in`).
pub fn kmod_depmod(basedir: &Path, kver: &str) {
    let conf = basedir.join("extra-modules.conf");
    fs::write(&conf, "search extras built-in\n").unwrap();
    let o = tool("depmod")
        .args(["--all", "--basedir"])
        .arg(basedir)
        .arg("--config")
        .arg(&conf)
        .arg(kver)
        .output()
        .unwrap();
    assert!(o.status.success(), "depmod: {}", stderr(&o));
}

/// Each of `ours` (file name, bytes) equals kmod's file of that name in `kmod_dir`, byte for
/// byte; `modules.symbols` as a set of lines (kmod writes it in hash order).
pub fn assert_same_as_kmod(ours: &[(String, Vec<u8>)], kmod_dir: &Path) {
    for (name, data) in ours {
        let kmod = fs::read(kmod_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "modules.symbols" {
            let sorted = |b: &[u8]| {
                let mut l: Vec<String> = String::from_utf8_lossy(b)
                    .lines()
                    .map(str::to_string)
                    .collect();
                l.sort();
                l
            };
            assert_eq!(sorted(data), sorted(&kmod), "{name}");
        } else {
            assert!(
                *data == kmod,
                "{name} differs from kmod's:\nours:\n{}\nkmod:\n{}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(&kmod)
            );
        }
    }
}

/// The text of the README's section `## <title>`, up to the next `## ` heading.
pub fn readme_section(title: &str) -> String {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    readme
        .split(&format!("## {title}\n"))
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("README has no section {title:?}"))
        .to_string()
}
