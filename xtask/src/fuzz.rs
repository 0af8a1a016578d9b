//! `cargo xtask fuzz [TARGET ...] [--seconds N] [--seeds-only] [--jobs J]`: seed corpora
//! for the fuzz targets in `fuzz/`, generated from the project's own fixtures (nothing is
//! committed), then a time-boxed cargo-fuzz run of each target, one after the other.
//!
//! Seeds go to `target/fuzz-corpus/<target>/seed-*` (rewritten on every call; what libFuzzer
//! adds to a corpus directory stays there for the next run). Each run's full output is kept in
//! `target/fuzz-logs/<target>.log`; crashing inputs land in `fuzz/artifacts/<target>/`.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeimage::artifact::manifest::{
    self, BlockMap, BlockRange, ImageInfo, Manifest, MetaBase, PartitionInfo, Provenance, Slot,
    SlotKind, SlotPartition,
};
use edgeimage::compose::cpio::{Entry, Writer};
use edgeimage::compose::fat::{self, FatFile, FatParams, LabelRule};
use edgeimage::compose::gpt::{self as compose_gpt, PartSpec};
use edgeimage::compose::uki::{self, UkiInput, UkiProfile};
use edgeimage::extension::fixtures::{self, Form};
use edgeimage::format::meta::{self, MetaValue};
use edgeimage::layout::Layout;
use edgeimage::sign::{Kdf, SecretKey};
use edgeimage::synthetic::{self, Sizes};
use edgeimage::talos::{Arch, TalosVersion};
use edgeimage::tree::{Node, Tree};

use crate::util;

/// How the OCI fuzz targets wrap layers into an image (shared with them, see the file).
#[path = "../../fuzz/src/oci.rs"]
mod oci;

/// How the FAT fuzz target reads a volume (shared with it, see the file).
#[path = "../../fuzz/src/fat.rs"]
mod fat_input;

/// How the ext4 fuzz target reads a filesystem (shared with it, see the file).
#[path = "../../fuzz/src/ext4.rs"]
mod ext4_input;

/// Every fuzz target of `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 25] = [
    "profile",
    "schematic",
    "machine_config",
    "config_patch",
    "network_config",
    "oci_archive",
    "extension",
    "extension_manifest",
    "manifest",
    "minisign",
    "trust_store",
    "bmap",
    "seek_table",
    "gpt",
    "meta",
    "pe",
    "cpio",
    "squashfs",
    "fat",
    "ext4",
    "initrd",
    "inspect_image",
    "inventory",
    "template",
    "record_log",
];

const HELP: &str = "\
usage: cargo xtask fuzz [TARGET ...] [--seconds N] [--seeds-only] [--jobs J]
                       [--skip-if-unavailable]

Write seed corpora to target/fuzz-corpus/<target>/, then run each fuzz target (all when none
is named) with `cargo +nightly fuzz run` for N seconds (default 60), one after the other.

  --seconds N    libFuzzer's -max_total_time per target
  --seeds-only   only write the seed corpora
  --jobs J       J libFuzzer jobs per target (-jobs=J -workers=J)
  --skip-if-unavailable
                 without the nightly toolchain, say so loudly and exit 0 (not under CI=true)

Exits non-zero when a target crashed (a panic, out-of-memory or timeout), naming the input
libFuzzer saved under fuzz/artifacts/<target>/.
";

struct Options {
    targets: Vec<&'static str>,
    seconds: u64,
    seeds_only: bool,
    jobs: Option<u32>,
    skip_if_unavailable: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        targets: Vec::new(),
        seconds: 60,
        seeds_only: false,
        jobs: None,
        skip_if_unavailable: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seeds-only" => o.seeds_only = true,
            "--skip-if-unavailable" => o.skip_if_unavailable = true,
            "--seconds" | "--jobs" => {
                let v = it
                    .next()
                    .with_context(|| format!("{a} needs a number"))?
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{a} needs a positive whole number"))?;
                if a == "--seconds" {
                    o.seconds = v;
                } else {
                    o.jobs = Some(u32::try_from(v).context("--jobs is too large")?);
                }
            }
            t => match TARGETS.iter().find(|&&k| k == t) {
                Some(&k) if !o.targets.contains(&k) => o.targets.push(k),
                Some(_) => {}
                None => bail!(
                    "unknown fuzz target or option {t:?}; the targets are: {}",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if o.targets.is_empty() {
        o.targets = TARGETS.to_vec();
    }
    Ok(Some(o))
}

pub fn main(args: &[String]) -> Result<()> {
    let Some(o) = parse_args(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let corpus_root = util::target_dir().join("fuzz-corpus");
    for t in &o.targets {
        let dir = corpus_root.join(t);
        let n = write_seeds(t, &dir)?;
        println!("seeds: {n:>2} in {}", dir.display());
    }
    if o.seeds_only {
        return Ok(());
    }
    if let Err(e) = check_nightly() {
        // Skipped loudly, never silently; under CI the smoke run must happen.
        if o.skip_if_unavailable && std::env::var("CI").as_deref() != Ok("true") {
            println!("\n*** FUZZ SMOKE RUN SKIPPED: {e:#} ***\n");
            return Ok(());
        }
        return Err(e);
    }
    ensure_cargo_fuzz()?;
    let fuzz_dir = util::workspace().join("fuzz");
    // One build for all targets (incremental after the first); a single target builds only
    // itself.
    println!("== cargo +nightly fuzz build");
    if o.targets.len() == TARGETS.len() {
        util::run(fuzz_cargo(&fuzz_dir).args(["fuzz", "build"]))?;
    } else {
        for t in &o.targets {
            util::run(fuzz_cargo(&fuzz_dir).args(["fuzz", "build", t]))?;
        }
    }
    let logs = util::target_dir().join("fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut results = Vec::new();
    for t in &o.targets {
        println!("== fuzzing {t} for {} s", o.seconds);
        let r = run_target(t, &fuzz_dir, &corpus_root.join(t), &logs, &o)?;
        println!(
            "   {t}: {} executions in {:.0} s: {}",
            r.executions
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            r.seconds,
            r.verdict()
        );
        results.push((t, r));
    }
    println!(
        "\n{:<20} {:>12} {:>8}  result",
        "target", "executions", "seconds"
    );
    for (t, r) in &results {
        println!(
            "{t:<20} {:>12} {:>8.0}  {}",
            r.executions
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            r.seconds,
            r.verdict()
        );
    }
    let crashed: Vec<String> = results
        .iter()
        .filter(|(_, r)| r.crashed)
        .map(|(t, r)| {
            if r.artifacts.is_empty() {
                format!("{t} (no input saved; see {})", r.log.display())
            } else {
                format!("{t} ({})", r.artifacts.join(", "))
            }
        })
        .collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join("; "));
    }
    Ok(())
}

/// `cargo +nightly` in `fuzz/`, without the toolchain choice of the cargo running xtask.
fn fuzz_cargo(fuzz_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .current_dir(fuzz_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    c
}

fn check_nightly() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .stderr(Stdio::null())
        .output();
    let have = match listed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("nightly")),
        // No rustup: ask cargo directly.
        _ => Command::new("cargo")
            .args(["+nightly", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    };
    if !have {
        bail!(
            "the nightly toolchain is missing (cargo-fuzz needs it): install it with \
             `rustup toolchain install nightly`, or pass --seeds-only"
        );
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = fuzz_cargo(&util::workspace())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        println!("== cargo install cargo-fuzz --locked");
        util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

struct RunResult {
    executions: Option<u64>,
    seconds: f64,
    crashed: bool,
    artifacts: Vec<String>,
    log: PathBuf,
}

impl RunResult {
    fn verdict(&self) -> String {
        match (self.crashed, self.artifacts.as_slice()) {
            (false, _) => "ok".into(),
            (true, []) => format!("CRASH (see {})", self.log.display()),
            (true, a) => format!("CRASH: {}", a.join(", ")),
        }
    }
}

fn run_target(
    target: &str,
    fuzz_dir: &Path,
    corpus: &Path,
    logs: &Path,
    o: &Options,
) -> Result<RunResult> {
    // libFuzzer's -jobs mode writes fuzz-<n>.log into the working directory: give each
    // target its own (target/fuzz-logs/<target>/).
    let work = logs.join(target);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // Inputs are written to scratch directories, which a crash (or the out-of-memory and
    // timeout exits) leaves behind: keep them here, and remove them after the run.
    let tmp = work.join("tmp");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let log = logs.join(format!("{target}.log"));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut c = fuzz_cargo(fuzz_dir);
    c.current_dir(&work)
        .arg("fuzz")
        .arg("run")
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .arg(target)
        .arg(corpus)
        .arg("--")
        .arg(format!("-max_total_time={}", o.seconds))
        .arg("-rss_limit_mb=1024")
        .arg("-timeout=20")
        .arg("-print_final_stats=1");
    if let Some(j) = o.jobs {
        c.arg(format!("-jobs={j}")).arg(format!("-workers={j}"));
    }
    c.env("TMPDIR", &tmp)
        .stdout(out)
        .stderr(err)
        .stdin(Stdio::null());
    let start = Instant::now();
    let status = c
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&tmp);
    // In -jobs mode libFuzzer copies each job's fuzz-<n>.log into its own output as the job
    // ends, so the one log holds everything.
    let text = fs::read_to_string(&log).unwrap_or_default();
    let artifacts = crash_artifacts(&text, &work);
    let crashed = !status.success() || !artifacts.is_empty();
    if crashed {
        // The panic message and the top of the stack, for the terminal; all of it is in the
        // log.
        let lines: Vec<&str> = text.lines().collect();
        let from = lines
            .iter()
            .position(|l| {
                l.contains("panicked at")
                    || l.contains("==ERROR:")
                    || l.contains("ALARM:")
                    || l.contains("out-of-memory")
            })
            .unwrap_or(lines.len().saturating_sub(40));
        for l in lines.iter().skip(from).take(40) {
            println!("   | {l}");
        }
    }
    Ok(RunResult {
        executions: executions(&text),
        seconds,
        crashed,
        artifacts,
        log,
    })
}

/// Executions: the sum of `stat::number_of_executed_units` (one per fuzzing process), else
/// of the `#N DONE` lines, else the last `#N` status line.
fn executions(text: &str) -> Option<u64> {
    let num = |s: &str| {
        s.trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    };
    let stats: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(num)
        .collect();
    if !stats.is_empty() {
        return Some(stats.iter().sum());
    }
    let status = |l: &str| -> Option<(u64, bool)> {
        let rest = l.strip_prefix('#')?;
        let n = num(rest)?;
        Some((n, rest.contains("DONE")))
    };
    let done: Vec<u64> = text
        .lines()
        .filter_map(status)
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect();
    if !done.is_empty() {
        return Some(done.iter().sum());
    }
    text.lines().rev().find_map(status).map(|(n, _)| n)
}

/// Inputs libFuzzer saved for a crash, out-of-memory, timeout or leak (not slow units).
fn crash_artifacts(text: &str, work: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        let Some((_, path)) = l.split_once("Test unit written to ") else {
            continue;
        };
        let path = path.trim();
        let name = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !["crash-", "oom-", "timeout-", "leak-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let p = Path::new(path);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            work.join(p)
        };
        let s = full.display().to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// Write the seeds of `target` into `dir` (`seed-<name>`); returns how many.
fn write_seeds(target: &str, dir: &Path) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let seeds = seeds(target).with_context(|| format!("making the seeds of {target}"))?;
    for (name, data) in &seeds {
        check_seed(target, data)
            .with_context(|| format!("seed {name:?} of {target} is not a valid input"))?;
        let p = dir.join(format!("seed-{name}"));
        fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(seeds.len())
}

type Seeds = Vec<(String, Vec<u8>)>;

fn text_seeds(items: &[(&str, &str)]) -> Seeds {
    items
        .iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect()
}

fn seeds(target: &str) -> Result<Seeds> {
    Ok(match target {
        "profile" => profile_seeds()?,
        "schematic" => text_seeds(&[
            ("empty", "customization: {}\n"),
            (
                "args",
                "customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n",
            ),
            ("meta", "customization:\n  meta:\n    - key: 0xa\n      value: foo\n"),
            ("full", SCHEMATIC_FULL),
            (
                "json",
                "{\"overlay\": {\"name\": \"rpi_generic\", \"image\": \"siderolabs/sbc-raspberrypi\"}}",
            ),
        ]),
        "machine_config" => vec![
            (
                "controlplane".into(),
                edgeimage::config::fixtures::controlplane_yaml().into_bytes(),
            ),
            (
                "worker".into(),
                edgeimage::config::fixtures::worker_yaml().into_bytes(),
            ),
        ],
        "config_patch" => text_seeds(&[
            ("merge", "machine:\n  network:\n    hostname: edge-02\n"),
            (
                "json-patch",
                "- op: replace\n  path: /machine/install/disk\n  value: /dev/sda\n\
                 - op: add\n  path: /machine/network/nameservers\n  value: [1.1.1.1]\n",
            ),
            (
                "document",
                "apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: edgehostlet\n\
                 environment:\n  - TOKEN=replaced\n",
            ),
            (
                "two-documents",
                "machine:\n  install:\n    wipe: true\n---\napiVersion: v1alpha1\n\
                 kind: SideroLinkConfig\napiUrl: https://siderolink.example:8099\n",
            ),
        ]),
        "network_config" => text_seeds(&[
            ("full", NETWORK_FULL),
            ("empty-list", "addresses: []\n"),
            ("empty", "{}\n"),
        ]),
        "oci_archive" => {
            let tmp = tempfile::tempdir()?;
            let mut v = Vec::new();
            for (name, form, arch) in [
                ("oci-amd64", Form::OciTar, Arch::Amd64),
                ("oci-arm64", Form::OciTar, Arch::Arm64),
                ("docker-amd64", Form::DockerSave, Arch::Amd64),
            ] {
                let d = tmp.path().join(name);
                fs::create_dir(&d)?;
                let p = fixtures::write(&fixtures::edgehostlet(), form, &d, arch)?;
                v.push((name.to_string(), fs::read(p)?));
            }
            // Layers the target wraps into an image itself (see fuzz/src/oci.rs).
            let mut one = vec![1u8];
            one.extend_from_slice(&fixtures::tar_bytes(&fixtures::edgehostlet())?);
            v.push(("layer".into(), one));
            let mut two = vec![2u8];
            two.extend_from_slice(&fixtures::tar_bytes(&fixtures::edgehostlet())?);
            two.extend_from_slice(oci::LAYER_SEPARATOR);
            two.extend_from_slice(&fixtures::tar_bytes(&[
                fixtures::Entry::file("rootfs/usr/local/bin/.wh.edgehostlet", b"", 0o644),
                fixtures::Entry::file("rootfs/usr/local/etc/containers/.wh..wh..opq", b"", 0o644),
                fixtures::Entry::Hardlink(
                    "rootfs/usr/local/lib/containers/edgehostlet/again".into(),
                    "rootfs/usr/local/lib/containers/edgehostlet/edgehostlet".into(),
                ),
            ])?);
            v.push(("two-layers".into(), two));
            v
        }
        "extension" => {
            let tmp = tempfile::tempdir()?;
            let mut v = Vec::new();
            for (name, form) in [
                ("tar", Form::Tar),
                ("tar-gz", Form::TarGz),
                ("tar-zst", Form::TarZst),
                ("oci-tar", Form::OciTar),
            ] {
                let p = fixtures::write(&fixtures::edgehostlet(), form, tmp.path(), Arch::Amd64)?;
                v.push((name.to_string(), fs::read(p)?));
            }
            let mut layer = vec![1u8];
            layer.extend_from_slice(&fixtures::tar_bytes(&fixtures::edgehostlet())?);
            v.push(("oci-layer".into(), layer));
            v
        }
        "extension_manifest" => {
            let with_service = format!(
                "{}\0{}",
                fixtures::EDGEHOSTLET_MANIFEST,
                fixtures::EDGEHOSTLET_SERVICE
            );
            vec![
                (
                    "manifest".into(),
                    fixtures::EDGEHOSTLET_MANIFEST.as_bytes().to_vec(),
                ),
                ("manifest-and-service".into(), with_service.into_bytes()),
                (
                    "no-compatibility".into(),
                    b"version: v1alpha1\nmetadata:\n  name: tools\n  version: 2.0.0-rc.1\n  \
                      author: someone\n  description: tools\n  extraInfo: more\n"
                        .to_vec(),
                ),
            ]
        }
        "manifest" => manifest_seeds()?,
        "minisign" => minisign_seeds()?,
        "trust_store" => {
            let id = SecretKey::generate()?.key_id_hex();
            vec![
                ("empty".into(), Vec::new()),
                (
                    "listed".into(),
                    format!("# revoked release keys\n{id}\n0123456789ABCDEF # lost\n").into_bytes(),
                ),
                ("other".into(), b"FEDCBA9876543210\n".to_vec()),
            ]
        }
        "bmap" => bmap_seeds()?,
        "seek_table" => seek_table_seeds()?,
        "gpt" => gpt_seeds()?,
        "meta" => meta_seeds()?,
        "pe" => pe_seeds()?,
        "cpio" => cpio_seeds()?,
        "squashfs" => squashfs_seeds()?,
        "fat" => fat_seeds()?,
        "ext4" => ext4_seeds()?,
        "initrd" => vec![("synthetic".into(), initrd()?)],
        "inspect_image" => inspect_image_seeds()?,
        "inventory" => text_seeds(&[
            (
                "csv-disk-serial",
                "id,disk_serial,hostname,address,token\n\
                 node-1,S3Z1NB0K123456,edge-01,10.0.0.11/24,secret-1\n\
                 node-2,S3Z1NB0K123457,edge-02,10.0.0.12/24,secret-2\n",
            ),
            (
                "csv-quoted",
                "\u{feff}id,host_serial,note\r\n\"node-1\",H1,\"a, b\"\r\nnode-2,H2,\"say \"\"hi\"\"\"\r\n",
            ),
            (
                "json",
                "[{\"id\": \"node-1\", \"hostname\": \"edge-01\", \"gateway\": \"10.0.0.1\"},\n \
                 {\"id\": \"node-2\", \"hostname\": \"edge-02\"}]\n",
            ),
        ]),
        "template" => text_seeds(&[
            (
                "network",
                "addresses:\n  - address: {{ address }}\n    linkName: eth0\nhostnames:\n  \
                 - hostname: {{hostname}}\n",
            ),
            ("fields", "{{id}}-{{ disk_serial }}"),
            ("plain", "no placeholders here\n"),
        ]),
        "record_log" => text_seeds(&[
            (
                "entries",
                "{\"row\":\"node-1\",\"result\":\"verified\",\"disk_serial\":\"S123\",\"time\":\"2025-01-01T10:00:00Z\"}\n\
                 {\"row\":\"node-2\",\"result\":\"failed\",\"disk_serial\":null,\"time\":\"2025-01-01T10:05:00Z\",\"error_kind\":\"write\"}\n",
            ),
            (
                "torn",
                "{\"row\":\"node-1\",\"result\":\"verified\",\"disk_serial\":\"S1\",\"time\":\"2025-01-01T10:00:00Z\"}\n\
                 {\"row\":\"node-3\",\"resu",
            ),
        ]),
        other => bail!("no seeds for {other:?}"),
    })
}

const SCHEMATIC_FULL: &str = "\
customization:
  extraKernelArgs: [-console, 'console=ttyS0,115200']
  meta:
    - {key: 12, value: '{}'}
  systemExtensions:
    officialExtensions: [siderolabs/iscsi-tools]
  bootloader: sd-boot
  secureboot: {enrollKeys: force, includeWellKnownCertificates: true}
  diskImage: {sectorSize: 4096}
overlay:
  image: siderolabs/sbc-rockchip
  name: rock4se
  options:
    a: {z: true}
";

const NETWORK_FULL: &str = "\
addresses:
  - address: 192.168.10.5/24
    linkName: eth0
    family: inet4
    scope: global
    flags: permanent
    layer: platform
links:
  - name: eth0
    logical: false
    up: true
    mtu: 1500
    kind: ''
    type: ether
routes:
  - family: inet4
    dst: ''
    gateway: 192.168.10.1
    outLinkName: eth0
    table: main
    priority: 1024
hostnames:
  - hostname: edge-01
    domainname: example.com
resolvers:
  - dnsServers: [1.1.1.1, 2606:4700:4700::1111]
timeServers:
  - timeServers: [pool.ntp.org]
operators:
  - operator: dhcp4
    linkName: eth1
    requireUp: true
externalIPs: [203.0.113.7]
";

fn profile_seeds() -> Result<Seeds> {
    let mut v = Vec::new();
    let dir = util::workspace().join("profiles");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    for p in names {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("profile")
            .to_string();
        v.push((stem, fs::read(&p)?));
    }
    let pin = |s: &str| format!("{{ sha256 = \"{}\" }}", s.repeat(64));
    v.push((
        "sections".into(),
        format!(
            "name = \"site-a\"\narch = \"arm64\"\ntalos_version = \"v1.12.5\"\n\
             disk_size = \"128MiB\"\nesp_size = \"100MiB\"\nsector_size = 4096\n\
             build_number = 3\nschematic = \"schematic.yaml\"\n\
             [assets]\nsource = \"assets\"\nkernel = {k}\ninitramfs = {k}\n\
             systemd_boot = {k}\nsystemd_stub = {k}\n\
             [kernel_args]\ndefaults = false\nextra = [\"console=ttyAMA0\"]\n\
             [meta]\n\"0x0c\" = \"site-a\"\n\"0x0d\" = {{ file = \"meta.bin\" }}\n\
             [[extensions]]\npath = \"ext.tar\"\nsha256 = \"{e}\"\n\
             [config]\npath = \"machine.yaml\"\npatches = [\"p1.yaml\"]\ndelivery = \"metal-iso\"\n\
             metal_iso_size = \"2MiB\"\n\
             [signing]\nkey = \"keys/release.key\"\npassphrase_env = \"RELEASE_PASS\"\n\
             [[personalize]]\nname = \"network\"\nmeta_key = \"0x0a\"\ntemplate = \"network.tmpl\"\n\
             [[personalize]]\nname = \"config\"\nmetal_iso = true\ntemplate = \"config.tmpl\"\n\
             secret = true\n",
            k = pin("a"),
            e = "b".repeat(64),
        )
        .into_bytes(),
    ));
    v.push((
        "installer".into(),
        format!(
            "name = \"t\"\narch = \"amd64\"\ntalos_version = \"v1.11.0\"\ndisk_size = \"44MiB\"\n\
             esp_size = \"40MiB\"\n[assets]\nsource = \"assets\"\nkernel = {k}\n\
             initramfs = {k}\nsystemd_boot = {k}\nsystemd_stub = {k}\n\
             [installer]\nkernel = {{ path = \"installer/vmlinuz\", sha256 = \"{c}\" }}\n\
             modules = {{ dir = \"modules\", load = [\"virtio_blk\", \"usb-storage\"] }}\n\
             cmdline = [\"console=ttyS0,115200\"]\nwait_seconds = 45\non_success = \"poweroff\"\n\
             on_failure = \"halt\"\n[install]\nwipe_other_metas = true\n[install.disk]\n\
             transports = [\"nvme\", \"virtio\"]\nmin_size = \"8GiB\"\nmax_size = \"4TiB\"\n\
             model = \"Samsung*\"\nserials = [\"S3Z1NB0K123456\"]\n",
            k = pin("c"),
            c = "d".repeat(64),
        )
        .into_bytes(),
    ));
    Ok(v)
}

fn hex64(i: u64) -> String {
    format!("{i:064x}")
}

/// A consistent manifest of an image of `size` bytes with the given partitions (label,
/// offset, size); with `slots`, partition 2 (`META`) holds a META slot.
fn manifest_for(size: u64, parts: &[(&str, u64, u64)], slots: bool) -> Manifest {
    let partitions: Vec<PartitionInfo> = parts
        .iter()
        .enumerate()
        .map(|(i, (label, offset, psize))| PartitionInfo {
            number: i as u32 + 1,
            label: label.to_string(),
            type_guid: compose_gpt::TYPE_LINUX_FS.into(),
            guid: "0fc63daf-8483-4772-8e79-3d69d8477de4".into(),
            offset: *offset,
            size: *psize,
            sha256: hex64(i as u64 + 1),
            slot: slots && *label == meta::META_LABEL,
        })
        .collect();
    let mp_number = partitions.len() as u32 + 1;
    let mut m = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        name: "demo".into(),
        build_number: 7,
        talos_version: "v1.12.5".into(),
        arch: "amd64".into(),
        image: ImageInfo {
            size,
            chunk_sha256: Some(hex64(0xa)),
            sha256: None,
            disk_guid: "8c4f2a8e-6f1e-4d4b-9c1a-2b3c4d5e6f70".into(),
            sector_size: 512,
        },
        partitions,
        manifest_partition: edgeimage::compose::Placed {
            number: mp_number,
            label: edgeimage::compose::MANIFEST_LABEL.into(),
            type_guid: edgeimage::compose::TYPE_MANIFEST.into(),
            guid: "3258b288-ccd2-850d-9b84-e87ef83ec735".into(),
            offset: size.saturating_sub(64 << 10),
            size: 16 << 10,
        },
        block_map: BlockMap {
            block_size: manifest::BLOCK_SIZE,
            mapped_blocks: 3,
            ranges: vec![
                BlockRange {
                    first: 0,
                    last: 1,
                    sha256: hex64(0xc),
                },
                BlockRange {
                    first: 4,
                    last: 4,
                    sha256: hex64(0xd),
                },
            ],
        },
        artifact: None,
        provenance: Provenance {
            edgeimage_version: "0.1.0".into(),
            source_date_epoch: 1_700_000_000,
            profile_sha256: hex64(0xf),
            assets: vec![manifest::InputDigest {
                field: "kernel".into(),
                size: 4096,
                sha256: hex64(0x10),
            }],
            extensions: vec![manifest::ExtensionDigest {
                name: "edgehostlet".into(),
                version: "1.7.1".into(),
                sha256: hex64(0x11),
            }],
            schematic: Some(manifest::SchematicDigest { id: hex64(0x12) }),
            machine_config: Some(manifest::ConfigDigest {
                delivery: "embedded".into(),
                machine_type: "controlplane".into(),
                sha256: hex64(0x13),
            }),
            image_cache: vec![manifest::CachedImageDigest {
                reference: "registry.k8s.io/pause:3.10".into(),
                digest: format!("sha256:{}", hex64(0x14)),
                platform: "linux/amd64".into(),
                size: 321,
            }],
            upgrade_image: Some(manifest::UpgradeImageDigest {
                file: "demo-installer-image.tar".into(),
                size: 4096,
                sha256: hex64(0x15),
                reference: "registry.edge.local/edge/installer:v1.12.5".into(),
                manifest_digest: format!("sha256:{}", hex64(0x16)),
                base_digest: format!("sha256:{}", hex64(0x17)),
            }),
        },
        slots: Vec::new(),
        meta_base: Vec::new(),
    };
    if let Some(p) = m.partitions.iter().find(|p| p.slot) {
        m.slots.push(Slot {
            name: "net".into(),
            kind: SlotKind::Meta,
            meta_key: Some(0x0a),
            partition: SlotPartition {
                number: p.number,
                label: p.label.clone(),
                offset: p.offset,
                size: p.size,
            },
            secret: false,
            template_sha256: hex64(0x14),
        });
        m.meta_base.push(MetaBase {
            key: 0x0c,
            sha256: hex64(0x15),
        });
    }
    m
}

/// The manifest partition's content (no zero padding), signed with a fresh key.
fn manifest_partition(m: &Manifest) -> Result<Vec<u8>> {
    let canon = m.to_canonical()?;
    let key = SecretKey::generate()?;
    let sig = key.sign(&canon, &m.trusted_comment(), "signature from edgeimage")?;
    let text = sig.to_file_text();
    let mut part =
        manifest::encode_partition(&canon, Some(&text), edgeimage::compose::MANIFEST_PART_SIZE)?;
    // encode_partition fills the partition with zeros after the signature: leave them out.
    while part.last() == Some(&0) {
        part.pop();
    }
    Ok(part)
}

fn manifest_seeds() -> Result<Seeds> {
    let parts = [("EFI", 1 << 20, 4 << 20), ("META", 5 << 20, 1 << 20)];
    let plain = manifest_for(10 << 20, &parts, false);
    let slotted = manifest_for(10 << 20, &parts, true);
    let mut unsigned = manifest::encode_partition(&plain.to_canonical()?, None, 1 << 20)?;
    while unsigned.last() == Some(&0) {
        unsigned.pop();
    }
    Ok(vec![
        ("canonical".into(), plain.to_canonical()?),
        ("canonical-slots".into(), slotted.to_canonical()?),
        ("partition-signed".into(), manifest_partition(&slotted)?),
        ("partition-unsigned".into(), unsigned),
    ])
}

fn minisign_seeds() -> Result<Seeds> {
    let key = SecretKey::generate()?;
    let sig = key.sign(b"data", "name=demo build=1", "signature from edgeimage")?;
    let tagged = |tag: u8, text: String| {
        let mut v = vec![tag];
        v.extend_from_slice(text.as_bytes());
        v
    };
    Ok(vec![
        ("signature".into(), tagged(0, sig.to_file_text())),
        ("public-key".into(), tagged(1, key.public().to_file_text())),
        (
            "secret-key".into(),
            tagged(2, key.to_file_text(None, Kdf::Interactive)?),
        ),
        (
            "secret-key-encrypted".into(),
            tagged(
                2,
                key.to_file_text(Some(&b"correct horse"[..]), Kdf::Interactive)?,
            ),
        ),
    ])
}

fn bmap_seeds() -> Result<Seeds> {
    let range = |first, last, i| BlockRange {
        first,
        last,
        sha256: hex64(i),
    };
    Ok(vec![
        (
            "two-ranges".into(),
            edgeimage::artifact::bmap::render(
                "demo.raw",
                10 << 20,
                4096,
                &[range(0, 255, 1), range(2559, 2559, 2)],
            )?
            .into_bytes(),
        ),
        (
            "partial-block".into(),
            edgeimage::artifact::bmap::render("odd.img", 10_000, 4096, &[range(1, 2, 3)])?
                .into_bytes(),
        ),
    ])
}

fn seekable(data: &[u8]) -> Result<Vec<u8>> {
    let mut w = edgeimage::artifact::seekable::SeekableWriter::new(Vec::new(), 3, 1)?;
    w.write_all(data)?;
    Ok(w.finish()?)
}

fn seek_table_seeds() -> Result<Seeds> {
    let pattern: Vec<u8> = (0..(2usize << 20) + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    Ok(vec![
        ("empty".into(), seekable(&[])?),
        ("small".into(), seekable(b"a small seekable zstd file\n")?),
        ("three-frames".into(), seekable(&pattern)?),
    ])
}

/// A partition table (protective MBR, primary and backup GPT) on a disk of `disk_size` bytes.
fn gpt_table(disk_size: u64, block: u64, parts: &[(&str, &str, u64, u64)]) -> Result<Layout> {
    let specs: Vec<PartSpec> = parts
        .iter()
        .map(|(label, ty, first, sectors)| {
            Ok(PartSpec {
                label: label.to_string(),
                type_guid: ty.parse()?,
                first_lba: *first,
                sectors: *sectors,
            })
        })
        .collect::<Result<_>>()?;
    compose_gpt::table(disk_size, &compose_gpt::namespace("fuzz"), &specs, block)
}

fn gpt_seeds() -> Result<Seeds> {
    let mut v = Vec::new();
    for block in [512u64, 4096] {
        let lbas = |bytes: u64| bytes / block;
        let t = gpt_table(
            8 << 20,
            block,
            &[
                ("EFI", compose_gpt::TYPE_EFI, lbas(1 << 20), lbas(4 << 20)),
                (
                    "META",
                    compose_gpt::TYPE_LINUX_FS,
                    lbas(5 << 20),
                    lbas(1 << 20),
                ),
            ],
        )?
        .to_vec()?;
        // The protective MBR, the header and 128 entries of 128 bytes.
        v.push((
            format!("head-{block}"),
            t[..(2 * block + 128 * 128) as usize].to_vec(),
        ));
    }
    Ok(v)
}

fn meta_seeds() -> Result<Seeds> {
    let values = vec![
        MetaValue {
            key: 0x0a,
            value: b"addresses: []\n".to_vec(),
        },
        MetaValue {
            key: 0x0c,
            value: b"demo-site-001".to_vec(),
        },
    ];
    let b = meta::block(&values)?;
    let used: usize = values.iter().map(|v| 8 + v.value.len()).sum();
    let records = &b[4..4 + used];
    let mut v = Vec::new();
    for mode in 0u8..4 {
        let mut s = vec![mode];
        s.extend_from_slice(records);
        v.push((format!("records-{mode}"), s));
    }
    v.push(("no-records".into(), vec![0]));
    Ok(v)
}

/// The synthetic asset set (small sizes), by file name.
fn assets(arch: Arch) -> Result<Vec<(&'static str, Vec<u8>)>> {
    synthetic::asset_set(
        arch,
        Sizes {
            kernel: 8 << 10,
            initramfs: 4 << 10,
        },
    )
}

fn asset<'a>(set: &'a [(&'static str, Vec<u8>)], name: &str) -> Result<&'a [u8]> {
    set.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d.as_slice())
        .with_context(|| format!("the synthetic asset set has no {name}"))
}

/// A UKI of the synthetic stub and kernel around `initrd`, with a reset boot profile.
fn uki_bytes(arch: Arch, initrd: &[u8]) -> Result<Vec<u8>> {
    let set = assets(arch)?;
    let talos = TalosVersion::parse("v1.12.5")?;
    let kernel = Layout::from_bytes(asset(&set, "vmlinuz")?.to_vec());
    let initrd = Layout::from_bytes(initrd.to_vec());
    let cmdline = "console=ttyS0,115200 talos.platform=metal";
    let profiles = [UkiProfile::new(
        edgeimage::talos::RESET_PROFILE_ID,
        Some("Reset"),
        Some(format!("{cmdline} {}", edgeimage::talos::RESET_PROFILE_ARG)),
    )];
    let l = uki::build(&UkiInput {
        stub: asset(&set, "systemd-stub.efi")?,
        osrel: &talos.os_release(),
        cmdline,
        uname: Some(synthetic::KERNEL_RELEASE),
        kernel: &kernel,
        initrd: &initrd,
        profiles: &profiles,
        epoch: 1_700_000_000,
    })?;
    Ok(l.to_vec()?)
}

fn pe_seeds() -> Result<Seeds> {
    let set = assets(Arch::Amd64)?;
    Ok(vec![
        ("kernel".into(), asset(&set, "vmlinuz")?.to_vec()),
        ("stub".into(), asset(&set, "systemd-stub.efi")?.to_vec()),
        ("uki-amd64".into(), uki_bytes(Arch::Amd64, b"initrd")?),
        ("uki-arm64".into(), uki_bytes(Arch::Arm64, b"initrd")?),
    ])
}

fn cpio_seeds() -> Result<Seeds> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.append(Entry::dir("etc", 0o755))?;
    w.append(Entry::file_bytes("etc/hostname", 0o644, b"edge-01\n"))?;
    w.append(Entry::symlink("etc/localtime", "../usr/share/zoneinfo/UTC"))?;
    w.append(Entry::char_device("console", 0o600, 5, 1))?;
    w.append(
        Entry::file_bytes("init", 0o755, b"#!/bin/sh\nexec /sbin/init\n").with_mtime(1_700_000_000),
    )?;
    w.finish()?;
    let set = assets(Arch::Amd64)?;
    let base = zstd::decode_all(asset(&set, "initramfs.xz")?)?;
    Ok(vec![("entries".into(), out), ("synthetic".into(), base)])
}

fn squashfs_seeds() -> Result<Seeds> {
    let mut t = Tree::new();
    for d in [
        "etc",
        "usr",
        "usr/lib",
        "usr/lib/modules",
        "usr/lib/modules/6.12.0",
    ] {
        t.insert(d, Node::dir(0o755));
    }
    t.insert(
        "etc/os-release",
        Node::file(Layout::from_bytes(b"ID=talos\n".to_vec()), 0o644),
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    t.insert(
        "usr/lib/modules/6.12.0/modules.dep",
        Node::file(Layout::from_bytes(big), 0o644),
    );
    t.insert("usr/lib/modules/current", Node::symlink("6.12.0"));
    let mut out = Cursor::new(Vec::new());
    edgeimage::compose::squashfs::write_squashfs(&t, 1_700_000_000, &mut out)?;
    let mut v = vec![("tree".into(), out.into_inner())];
    // A squashfs as Talos's initramfs carries one: a kernel module tree.
    let elf = edgeimage::format::elf::fake_module(
        edgeimage::installer::elf::EM_X86_64,
        &[("name", "dummy"), ("license", "GPL")],
        &["dummy_export"],
        &[],
    );
    let initramfs = synthetic::initramfs_with_modules(
        "usr/lib/modules",
        "6.12.0",
        &[("kernel/drivers/dummy.ko", elf)],
    )?;
    let cpio = zstd::decode_all(&initramfs[..])?;
    let mut sqsh = None;
    edgeimage::format::cpio::read(&mut &cpio[..], &mut |h, body| {
        if h.name == "rootfs.sqsh" {
            let mut b = Vec::new();
            body.read_to_end(&mut b)?;
            sqsh = Some(b);
        }
        Ok(())
    })?;
    if let Some(s) = sqsh {
        v.push(("modules".into(), s));
    }
    Ok(v)
}

/// A UKI `.initrd` as a build makes it: the synthetic base initramfs (zstd cpio), then the
/// extensions archive holding the `edgehostlet` fixture.
fn initrd() -> Result<Vec<u8>> {
    let tmp = tempfile::tempdir()?;
    let talos = TalosVersion::parse("v1.12.5")?;
    let path = fixtures::write(&fixtures::edgehostlet(), Form::Dir, tmp.path(), Arch::Amd64)?;
    let spec = edgeimage::extension::ExtensionInput {
        sha256: edgeimage::extension::input_sha256(&path)?,
        path,
    };
    let ext = edgeimage::extension::load(&spec, Arch::Amd64, &talos)?;
    let archive = edgeimage::compose::initramfs::extensions_archive(&[ext], None, 1_700_000_000)?;
    let set = assets(Arch::Amd64)?;
    let base = Layout::from_bytes(asset(&set, "initramfs.xz")?.to_vec());
    let l = edgeimage::compose::initramfs::compose_initrd(&base, &archive)?;
    Ok(l.to_vec()?)
}

/// The smallest FAT volume (in steps of 64 KiB) holding `files`.
/// FAT volumes written by `compose::fat`: FAT12 (512- and 4096-byte sectors), FAT16 and FAT32,
/// with nested directories, long and Unicode names, an empty file and files of many clusters.
/// Each seed is the volume without its trailing zeros (the target reads them back as zeros),
/// so none is larger than libFuzzer's 1 MiB default input size.
/// Image cache filesystems as the build writes them: a single-platform image and one behind
/// an index, on amd64 and arm64.
fn ext4_seeds() -> Result<Seeds> {
    let dir = tempfile::tempdir()?;
    let mut v = Vec::new();
    for arch in [Arch::Amd64, Arch::Arm64] {
        let (_, mut b) = edgeimage::inspect::cache::sample(
            &[
                ("registry.k8s.io/pause:3.10", false),
                ("host:5000/team/app:v1", true),
            ],
            arch,
            dir.path(),
        )?;
        let end = b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        b.truncate(end);
        if b.len() > 1 << 20 {
            bail!("the {arch} ext4 seed is {} bytes, more than 1 MiB", b.len());
        }
        v.push((format!("cache-{arch}"), b));
    }
    Ok(v)
}

fn fat_seeds() -> Result<Seeds> {
    let bytes = |n: usize, seed: u8| -> Layout {
        Layout::from_bytes(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect::<Vec<u8>>(),
        )
    };
    let files = vec![
        FatFile {
            path: "EFI/boot/BOOTX64.efi".into(),
            content: bytes(9000, 1),
        },
        FatFile {
            path: "EFI/Linux/Talos-v1.12.5.efi".into(),
            content: bytes(40_000, 2),
        },
        FatFile {
            path: "loader/loader.conf".into(),
            content: Layout::from_bytes(b"timeout 10\ndefault talos\n".to_vec()),
        },
        FatFile {
            path: "loader/entries/an entry with a long name.conf".into(),
            content: bytes(700, 3),
        },
        FatFile {
            path: "deep/er/tree/caf\u{e9} \u{20ac}.txt".into(),
            content: bytes(10, 4),
        },
        FatFile {
            path: "config.yaml".into(),
            content: Layout::from_bytes(b"version: v1alpha1\nmachine:\n  type: worker\n".to_vec()),
        },
        FatFile {
            path: "empty".into(),
            content: Layout::new(0),
        },
    ];
    let mut v = Vec::new();
    for (name, size, sector) in [
        ("fat12", 256u64 << 10, 512u64),
        ("fat12-4k-sectors", 1 << 20, 4096),
        ("fat16", 3 << 20, 512),
        ("fat32", fat::min_size(), 512),
    ] {
        let params = FatParams {
            size,
            label: "metal-iso".into(),
            volume_id: 0x1234_5678,
            hidden_sectors: 2048,
            mtime: 1_700_000_000,
            sector_size: sector,
        };
        let mut b = fat::build_fat_dirs(&params, &files, &["records"], LabelRule::AllowLowercase)?
            .to_vec()?;
        let end = b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        b.truncate(end);
        if b.len() > 1 << 20 {
            bail!("the {name} seed is {} bytes, more than 1 MiB", b.len());
        }
        v.push((name.to_string(), b));
    }
    Ok(v)
}

fn smallest_fat(params: &FatParams, files: &[FatFile]) -> Result<Layout> {
    let data: u64 = files
        .iter()
        .map(|f| f.content.len().div_ceil(512) * 512)
        .sum();
    let mut size = (data + (32 << 10)).div_ceil(64 << 10) * (64 << 10);
    loop {
        let p = FatParams {
            size,
            ..params.clone()
        };
        match fat::build_fat_dirs(&p, files, &[], LabelRule::Uppercase) {
            Ok(l) => return Ok(l),
            Err(e) if size >= data * 2 + (8 << 20) => return Err(e),
            Err(_) => size += 64 << 10,
        }
    }
}

/// A small image laid out like a build's (GPT; an ESP with systemd-boot, loader.conf and a
/// UKI whose `.initrd` carries an extension; META; the signed manifest partition), but with
/// partitions only as large as their contents, raw and zstd-compressed.
fn inspect_image_seeds() -> Result<Seeds> {
    const SECTOR: u64 = 512;
    let set = assets(Arch::Amd64)?;
    let uki = uki_bytes(Arch::Amd64, &initrd()?)?;
    let talos = TalosVersion::parse("v1.12.5")?;
    let files = vec![
        FatFile {
            path: edgeimage::compose::esp::loader_path(Arch::Amd64),
            content: Layout::from_bytes(asset(&set, "systemd-boot.efi")?.to_vec()),
        },
        FatFile {
            path: "loader/loader.conf".into(),
            content: Layout::from_bytes(edgeimage::compose::esp::LOADER_CONF.as_bytes().to_vec()),
        },
        FatFile {
            path: edgeimage::compose::esp::uki_path(&talos),
            content: Layout::from_bytes(uki),
        },
    ];
    let esp_first = 64u64;
    let params = FatParams::new(0, "EFI", 0x1234_5678, esp_first as u32, 1_700_000_000);
    let esp = smallest_fat(&params, &files)?;
    let esp_size = esp.len();
    let meta_first = esp_first + esp_size / SECTOR;
    let meta_values = [MetaValue {
        key: 0x0c,
        value: b"demo-site-001".to_vec(),
    }];
    let meta_bytes = meta::partition(&meta_values)?.to_vec()?;
    // One ADV copy: inspect reads no more than the partition holds.
    let meta_size = meta::BLOCK_LEN as u64;
    let mp_first = meta_first + meta_size / SECTOR;
    let mp_size = 16u64 << 10;
    // The backup GPT (128 entries and the header) after the last partition.
    let disk_size = (mp_first * SECTOR + mp_size + 33 * SECTOR).div_ceil(4096) * 4096;
    let esp_off = esp_first * SECTOR;
    let meta_off = meta_first * SECTOR;
    let mp_off = mp_first * SECTOR;
    let mut m = manifest_for(
        disk_size,
        &[("EFI", esp_off, esp_size), ("META", meta_off, meta_size)],
        true,
    );
    m.manifest_partition.offset = mp_off;
    m.manifest_partition.size = mp_size;
    let mp = manifest_partition(&m)?;
    if mp.len() as u64 > mp_size {
        bail!(
            "the seed's manifest partition ({} bytes) is larger than {mp_size}",
            mp.len()
        );
    }
    let mut img = gpt_table(
        disk_size,
        SECTOR,
        &[
            ("EFI", compose_gpt::TYPE_EFI, esp_first, esp_size / SECTOR),
            (
                meta::META_LABEL,
                compose_gpt::TYPE_LINUX_FS,
                meta_first,
                meta_size / SECTOR,
            ),
            (
                edgeimage::compose::MANIFEST_LABEL,
                edgeimage::compose::TYPE_MANIFEST,
                mp_first,
                mp_size / SECTOR,
            ),
        ],
    )?;
    img.put_layout(esp_off, &esp)?;
    img.put_bytes(meta_off, meta_bytes[..meta_size as usize].to_vec())?;
    img.put_bytes(mp_off, mp)?;
    let raw = img.to_vec()?;
    let zst = zstd::bulk::compress(&raw, 19)?;
    // Sanity: what a reader makes of it.
    let tmp = tempfile::tempdir()?;
    let p = tmp.path().join("seed.raw");
    fs::write(&p, &raw)?;
    edgeimage::inspect::inspect(&p).context("inspecting the generated seed image")?;
    Ok(vec![("raw".into(), raw), ("zst".into(), zst)])
}

/// A seed must be an input the target's parser accepts, so the fuzzer starts from real
/// structure: each is read the way its fuzz target reads it.
fn check_seed(target: &str, data: &[u8]) -> Result<()> {
    use edgeimage::format;
    let tmp = tempfile::tempdir()?;
    let put = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = tmp.path().join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, bytes)?;
        Ok(p)
    };
    match target {
        "profile" => {
            // The files the profile fuzz target puts beside the profile.
            put("network.tmpl", b"addresses:\n  - address: {{ address }}\n")?;
            put(
                "config.tmpl",
                b"machine:\n  network:\n    hostname: {{hostname}}\n",
            )?;
            put("meta.bin", b"site-a\n")?;
            edgeimage::profile::Profile::parse(&tmp.path().join("profile.toml"), data)?;
        }
        "schematic" => {
            edgeimage::config::schematic::Schematic::parse(data)?;
        }
        "machine_config" => {
            edgeimage::config::machine::MachineConfig::from_bytes(data.to_vec(), "seed")?;
        }
        "config_patch" => {
            let base = put(
                "machine.yaml",
                edgeimage::config::fixtures::controlplane_yaml().as_bytes(),
            )?;
            let patch = put("patch.yaml", data)?;
            let cfg = edgeimage::config::machine::load(&base, &[patch])?;
            if !cfg.patched() {
                bail!("the patch changed nothing");
            }
        }
        "network_config" => edgeimage::config::network::check_network_config(data)?,
        "oci_archive" => {
            let p = put("image.tar", &oci::oci_input(data, "amd64"))?;
            let opened = ["amd64", "arm64"]
                .iter()
                .filter_map(|a| edgeimage::assets::oci::OciImage::open(&p, a).ok())
                .map(|img| img.merged_tree(&|_| true).map(|t| t.len()))
                .collect::<Result<Vec<usize>>>()?;
            if opened.is_empty() {
                bail!("no image for amd64 or arm64");
            }
        }
        "extension" => {
            let path = put("extension.tar", &oci::oci_input(data, "amd64"))?;
            let spec = edgeimage::extension::ExtensionInput {
                sha256: edgeimage::extension::input_sha256(&path)?,
                path,
            };
            edgeimage::extension::load(&spec, Arch::Amd64, &TalosVersion::parse("v1.12.5")?)?;
        }
        "extension_manifest" => {
            let (manifest, service) = match data.iter().position(|&b| b == 0) {
                Some(i) => (&data[..i], Some(&data[i + 1..])),
                None => (data, None),
            };
            let file = |b: &[u8], mode| Node::file(Layout::from_bytes(b.to_vec()), mode);
            let mut t = Tree::new();
            t.insert("manifest.yaml", file(manifest, 0o644));
            for d in [
                "rootfs",
                "rootfs/usr",
                "rootfs/usr/local",
                "rootfs/usr/local/etc",
                "rootfs/usr/local/etc/containers",
                "rootfs/usr/local/lib",
                "rootfs/usr/local/lib/containers",
                "rootfs/usr/local/lib/containers/edgehostlet",
            ] {
                t.insert(d, Node::dir(0o755));
            }
            if let Some(s) = service {
                t.insert(
                    "rootfs/usr/local/etc/containers/edgehostlet.yaml",
                    file(s, 0o644),
                );
                t.insert(
                    "rootfs/usr/local/lib/containers/edgehostlet/edgehostlet",
                    file(b"#!/bin/sh\n", 0o755),
                );
            }
            edgeimage::extension::from_tree(
                "seed",
                &"0".repeat(64),
                t,
                &TalosVersion::parse("v1.12.5")?,
            )?;
        }
        "manifest" => {
            if data.starts_with(manifest::PARTITION_MAGIC.as_bytes()) {
                let e = manifest::decode_partition(data, "seed")?;
                Manifest::parse(&e.manifest, "seed")?;
                if let Some(s) = e.signature {
                    edgeimage::sign::Signature::parse(&s)?;
                }
            } else {
                Manifest::parse(data, "seed")?;
            }
        }
        "minisign" => {
            let (tag, rest) = data.split_first().context("empty")?;
            let text = std::str::from_utf8(rest)?;
            match tag % 3 {
                0 => {
                    edgeimage::sign::Signature::parse(text)?;
                }
                1 => {
                    edgeimage::sign::PublicKey::parse(text)?;
                }
                _ => {
                    let mut asked = false;
                    let r = SecretKey::parse(text, &mut || {
                        asked = true;
                        Err(anyhow::anyhow!("no passphrase"))
                    });
                    if r.is_err() && !asked {
                        r?;
                    }
                }
            }
        }
        "trust_store" => {
            let key = SecretKey::generate()?.public();
            put("trusted/release.pub", key.to_file_text().as_bytes())?;
            put("revoked", data)?;
            edgeimage::trust::TrustStore::load(tmp.path())?;
        }
        "bmap" => {
            edgeimage::artifact::bmap::parse_bytes(data)?;
        }
        "seek_table" => {
            use edgeimage::artifact::seekable;
            let f = fs::File::open(put("image.raw.zst", data)?)?;
            let table = seekable::read_seek_table(&f, "seed")?.context("no seek table")?;
            let all: Vec<usize> = (0..table.frames.len()).collect();
            seekable::decompress_frames(&f, "seed", &table, &all, 1, &mut |_, _, _| Ok(true))?;
        }
        "gpt" => {
            let g = format::gpt::read_head(data, true)?;
            if g.entries.is_empty() {
                bail!("no partitions");
            }
        }
        "meta" => {
            let (_, records) = data.split_first().context("empty")?;
            let mut b = vec![0u8; meta::BLOCK_LEN];
            b[..4].copy_from_slice(&meta::MAGIC1.to_be_bytes());
            b[4..4 + records.len()].copy_from_slice(records);
            b[meta::BLOCK_LEN - 4..].copy_from_slice(&meta::MAGIC2.to_be_bytes());
            let sum = <sha2::Sha256 as sha2::Digest>::digest(&b);
            b[meta::BLOCK_LEN - 36..meta::BLOCK_LEN - 4].copy_from_slice(&sum);
            if meta::parse(&b).copy != Some(1) {
                bail!("the records do not make a valid ADV block");
            }
        }
        "pe" => {
            edgeimage::pe::PeHeaders::parse(data)?;
            uki::describe(data.len() as u64, &mut |off, buf| {
                let at = off as usize;
                buf.copy_from_slice(
                    data.get(at..at + buf.len())
                        .ok_or(std::io::ErrorKind::UnexpectedEof)?,
                );
                Ok(())
            })?;
        }
        "cpio" => {
            let n = format::cpio::read(&mut &data[..], &mut |_, _| Ok(()))?;
            if n == 0 {
                bail!("no entries");
            }
        }
        "squashfs" => {
            let f = fs::File::open(put("rootfs.sqsh", data)?)?;
            let sq = format::squashfs::Squashfs::open(&f)?;
            let root = sq.inode(sq.root())?;
            if sq.walk(&root)?.is_empty() {
                bail!("an empty tree");
            }
        }
        "ext4" => {
            let done = ext4_input::exercise(data)?;
            if done.resolved < 2 {
                bail!("resolved {} cached images", done.resolved);
            }
        }
        "fat" => {
            let done = fat_input::exercise(data)?;
            if done.failed > 0 || done.files < 3 {
                bail!("read {} files, {} reads failed", done.files, done.failed);
            }
        }
        "initrd" => {
            let i = edgeimage::inspect::initrd::walk(data)?;
            if i.layers.is_empty() || i.extensions_yaml.is_none() {
                bail!("no extension layers");
            }
        }
        "inspect_image" => {
            let i = edgeimage::inspect::inspect(&put("image.raw", data)?)?;
            let signed = i
                .manifest
                .as_ref()
                .is_some_and(|m| m.name.is_some() && m.signed_by.is_some());
            if i.uki.is_none() || i.meta.is_none() || i.layers.is_empty() || !signed {
                bail!("the UKI, META, the extension layers or the signed manifest is missing");
            }
        }
        "inventory" => {
            edgeimage::factory::Inventory::parse(Path::new("inventory.csv"), data)?;
        }
        "template" => {
            edgeimage::personalize::fields(std::str::from_utf8(data)?)?;
        }
        "record_log" => {
            let l = edgeimage::factory::log::read(&put("records.jsonl", data)?)?;
            if l.entries.is_empty() {
                bail!("no entries");
            }
        }
        other => bail!("no check for {other:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TARGETS` names exactly the `[[bin]]` targets of fuzz/Cargo.toml, each with its file.
    #[test]
    fn targets_match_the_fuzz_crate() {
        let fuzz = util::workspace().join("fuzz");
        let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        let mut bins: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "edgeimage-fuzz")
            .collect();
        bins.sort_unstable();
        let mut targets = TARGETS.to_vec();
        targets.sort_unstable();
        assert_eq!(bins, targets);
        for t in TARGETS {
            let f = fuzz.join(format!("fuzz_targets/{t}.rs"));
            assert!(f.is_file(), "{} is missing", f.display());
        }
    }
}
