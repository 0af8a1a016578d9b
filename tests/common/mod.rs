//! Shared helpers for the integration tests: synthetic inputs, profiles, running the binary,
//! and the independent tools that check our output.
#![allow(dead_code)]

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
