//! `cargo xtask bench build`: whole-process time, CPU time and peak memory of `edgeimage build`
//! against the same composition done with the usual tools (objcopy for the UKI, mkfs.fat +
//! mtools for the ESP, sgdisk for the GPT, dd for placing partitions, zstd for compression),
//! on the same synthetic inputs, in one run. Prints a Markdown table for the README.
//! `bench verify` and `bench flash` do the same for `edgeimage verify` and `edgeimage flash`;
//! `bench cache` (`bench_cache.rs`) for a build with an image cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeimage::synthetic::{self, Sizes};
use edgeimage::talos::Arch;

use crate::util;

/// Resources one command used.
#[derive(Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) max_rss_kib: i64,
}

impl Usage {
    pub(crate) fn add(&mut self, o: Usage) {
        self.wall += o.wall;
        self.cpu += o.cpu;
        self.max_rss_kib = self.max_rss_kib.max(o.max_rss_kib);
    }
}

/// Run a command and measure it with wait4 (rusage of exactly that child).
pub(crate) fn measure(cmd: &mut Command) -> Result<Usage> {
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = t.elapsed().as_secs_f64();
    if r != pid {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed (status {status})");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss,
    })
}

pub(crate) fn tool(name: &str) -> Result<Command> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(Command::new(p));
        }
    }
    bail!("`{name}` is needed for the comparison (Debian packages gdisk, dosfstools, mtools, binutils, zstd)")
}

/// Generate the ~100 MB synthetic asset set (run in a child process, so the memory it takes
/// does not show up as the measured children's peak: Linux counts a child's memory high-water
/// mark from the fork, before exec).
fn write_assets(dir: &Path) -> Result<()> {
    synthetic::write_asset_set(
        dir,
        Arch::Amd64,
        Sizes {
            kernel: 20 << 20,
            initramfs: 80 << 20,
        },
    )?;
    // A 50 MiB extension: the edgehostlet fixture plus 25 MiB of incompressible and 25 MiB of
    // compressible (repetitive text) payload, as a plain directory.
    use edgeimage::extension::fixtures::{self as xf, Entry};
    let text: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("line {i} of an agent's bundled data file\n").into_bytes())
        .take(25 << 20)
        .collect();
    let entries = xf::edgehostlet_with(vec![
        Entry::file(
            "rootfs/usr/local/lib/containers/edgehostlet/payload.bin",
            synthetic::filler("bench-extension", 25 << 20),
            0o644,
        ),
        Entry::file(
            "rootfs/usr/local/lib/containers/edgehostlet/data.txt",
            text,
            0o644,
        ),
    ]);
    xf::write_dir(&entries, &dir.join("ext"))?;
    Ok(())
}

const USAGE: &str = "usage: cargo xtask bench build|verify|flash|cache [--runs N]";

pub fn main(args: &[String]) -> Result<()> {
    if let [sub, dir] = args {
        if sub == "_assets" {
            return write_assets(Path::new(dir));
        }
        if sub == "_verify_assets" {
            return write_verify_assets(Path::new(dir));
        }
        if sub == "_flash_assets" {
            return write_flash_assets(Path::new(dir));
        }
        if sub == "_cache_inputs" {
            return crate::bench_cache::write_inputs(Path::new(dir));
        }
    }
    match args.first().map(String::as_str) {
        Some("verify") => return verify(runs_of(&args[1..])?),
        Some("flash") => return flash(runs_of(&args[1..])?),
        Some("cache") => return crate::bench_cache::run(runs_of(&args[1..])?),
        _ => {}
    }
    if args.first().map(String::as_str) != Some("build") {
        bail!("{USAGE}");
    }
    let runs = runs_of(&args[1..])?;
    let work = util::target_dir().join("bench");
    let _ = fs::remove_dir_all(&work);
    let assets = work.join("assets");
    // About 100 MB of assets, like a real Talos release with extensions.
    util::run(
        Command::new(std::env::current_exe()?)
            .args(["bench", "_assets"])
            .arg(&assets),
    )?;
    let digests: Vec<(String, String)> = [
        "vmlinuz",
        "initramfs.xz",
        "systemd-boot.efi",
        "systemd-stub.efi",
    ]
    .iter()
    .map(|n| Ok((n.to_string(), sha256_file(&assets.join(n))?)))
    .collect::<Result<_>>()?;
    let pin = |n: &str| {
        digests
            .iter()
            .find(|(f, _)| f == n)
            .map(|x| x.1.clone())
            .unwrap_or_default()
    };
    let profile = work.join("bench.toml");
    fs::write(
        &profile,
        format!(
            "name = \"bench\"\narch = \"amd64\"\ntalos_version = \"v1.12.5\"\ndisk_size = \"2110MiB\"\n\
             [assets]\nsource = \"assets\"\nkernel = {{ sha256 = \"{}\" }}\ninitramfs = {{ sha256 = \"{}\" }}\n\
             systemd_boot = {{ sha256 = \"{}\" }}\nsystemd_stub = {{ sha256 = \"{}\" }}\n\
             [meta]\n\"0x0c\" = \"bench\"\n{}",
            pin("vmlinuz"),
            pin("initramfs.xz"),
            pin("systemd-boot.efi"),
            pin("systemd-stub.efi"),
            ""
        ),
    )?;
    let ext_dir = assets.join("ext");
    let ext_pin = edgeimage::extension::input_sha256(&ext_dir)?;
    let profile_ext = work.join("bench-ext.toml");
    fs::write(
        &profile_ext,
        fs::read_to_string(&profile)?
            + &format!("[[extensions]]\npath = \"assets/ext\"\nsha256 = \"{ext_pin}\"\n"),
    )?;
    // The same data on a 1 TiB disk: unwritten space must cost next to nothing.
    let profile_tib = work.join("bench-tib.toml");
    fs::write(
        &profile_tib,
        fs::read_to_string(&profile)?.replace("disk_size = \"2110MiB\"", "disk_size = \"1TiB\""),
    )?;
    let bin = util::edgeimage_bin()?;
    let mut results: Vec<(String, Usage, u64)> = Vec::new();
    for (label, raw, profile) in [
        ("edgeimage build (.raw.zst)", false, &profile),
        ("edgeimage build --raw (.raw.zst + .raw)", true, &profile),
        ("edgeimage build + 50 MiB extension", false, &profile_ext),
        (
            "edgeimage build, disk_size 1 TiB (same data)",
            false,
            &profile_tib,
        ),
    ] {
        let best = best_of(runs, || {
            let out = work.join("out-edgeimage");
            let _ = fs::remove_dir_all(&out);
            let mut c = Command::new(&bin);
            c.args(["build", "-q", "--profile"])
                .arg(profile)
                .arg("--out")
                .arg(&out);
            if raw {
                c.arg("--raw");
            }
            c.env("SOURCE_DATE_EPOCH", "1700000000");
            measure(&mut c)
        })?;
        let size = fs::metadata(work.join("out-edgeimage/bench/bench.raw.zst"))?.len();
        results.push((label.to_string(), best, size));
    }
    let ext_peer = best_of(runs, || peer_extension(&work, &ext_dir))?;
    let mut best: Option<(Usage, Vec<(String, Usage)>)> = None;
    for _ in 0..runs {
        let (total, steps) = peer_pipeline(&work, &assets)?;
        if best.as_ref().is_none_or(|b| total.wall < b.0.wall) {
            best = Some((total, steps));
        }
    }
    let (peer, steps) = best.context("no run")?;
    let peer_size = fs::metadata(work.join("peer/bench.raw.zst"))?.len();
    let ed = results[0].1;
    println!("\nInputs: 2110 MiB image, 2101 MiB FAT32 ESP, ~100 MB of assets (20 MiB kernel, 80 MiB initramfs); best of {runs} runs; {} cores.\n", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "| composition | wall s | CPU s | peak RSS MiB | .raw.zst bytes | wall vs edgeimage |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, u, size) in &results {
        println!(
            "| {label} | {:.2} | {:.2} | {:.0} | {size} | {:.2}x |",
            u.wall,
            u.cpu,
            u.max_rss_kib as f64 / 1024.0,
            u.wall / ed.wall
        );
    }
    println!(
        "| sgdisk + mkfs.fat + mcopy + objcopy + dd + zstd -T0 | {:.2} | {:.2} | {:.0} | {peer_size} | {:.2}x |",
        peer.wall, peer.cpu, peer.max_rss_kib as f64 / 1024.0, peer.wall / ed.wall
    );
    let ext = results[2].1;
    println!("\nA 50 MiB extension (25 MiB incompressible, 25 MiB text): what it adds to a build, against\nmksquashfs -comp zstd -Xcompression-level 18 + cpio -o -H newc + zstd -T0 -18 alone:\n");
    println!("| packing the extension | wall s | CPU s |");
    println!("|---|---:|---:|");
    println!(
        "| edgeimage (build with it minus build without) | {:.2} | {:.2} |",
        ext.wall - ed.wall,
        ext.cpu - ed.cpu
    );
    println!(
        "| mksquashfs + cpio + zstd | {:.2} | {:.2} |",
        ext_peer.wall, ext_peer.cpu
    );
    println!("\nPeer pipeline steps:\n");
    println!("| step | wall s | CPU s | peak RSS MiB |");
    println!("|---|---:|---:|---:|");
    for (s, u) in &steps {
        println!(
            "| {s} | {:.2} | {:.2} | {:.0} |",
            u.wall,
            u.cpu,
            u.max_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}

fn runs_of(args: &[String]) -> Result<usize> {
    match args {
        [flag, n] if flag == "--runs" => match n.parse() {
            Ok(0) | Err(_) => bail!("--runs N: a number of at least 1"),
            Ok(n) => Ok(n),
        },
        [] => Ok(3),
        _ => bail!("{USAGE}"),
    }
}

/// The fastest (by wall time) of `runs` measurements.
pub(crate) fn best_of(runs: usize, mut one: impl FnMut() -> Result<Usage>) -> Result<Usage> {
    let mut best: Option<Usage> = None;
    for _ in 0..runs {
        let u = one()?;
        if best.is_none_or(|b| u.wall < b.wall) {
            best = Some(u);
        }
    }
    best.context("no run")
}

/// Assets for the verify benchmark: about 600 MB of incompressible data (a 100 MiB kernel and
/// a 472 MiB initramfs), so the UKI fills 600 MB of a 2 GiB image.
fn write_verify_assets(dir: &Path) -> Result<()> {
    synthetic::write_asset_set(
        dir,
        Arch::Amd64,
        Sizes {
            kernel: 100 << 20,
            initramfs: 472 << 20,
        },
    )?;
    Ok(())
}

/// Try to empty the page cache (needs root and a writable /proc/sys); says whether it did.
fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// A signed image built (with `--raw`) from a synthetic asset set, and what flashing and
/// verifying it need.
struct Signed {
    bin: PathBuf,
    /// A trust store holding the signing key.
    trust: PathBuf,
    /// The output set `out/bench/`: `bench.raw`, `bench.raw.zst`, `bench.bmap`,
    /// `bench.manifest.json` and its `.minisig`.
    out: PathBuf,
    image_size: u64,
    /// The manifest's block map: first and last 4 KiB block of each range.
    ranges: Vec<(u64, u64)>,
    mapped: u64,
}

/// In `work`: the asset set the `cargo xtask bench <assets_cmd>` child writes, a profile with
/// these assets and `layout` (its `disk_size`/`esp_size` lines), a fresh unencrypted key and a
/// trust store with it, and `edgeimage build --raw --sign-key` of the profile.
fn signed_image(work: &Path, assets_cmd: &str, layout: &str) -> Result<Signed> {
    let assets = work.join("assets");
    util::run(
        Command::new(std::env::current_exe()?)
            .args(["bench", assets_cmd])
            .arg(&assets),
    )?;
    let pin = |n: &str| sha256_file(&assets.join(n));
    let profile = work.join("bench.toml");
    fs::write(
        &profile,
        format!(
            "name = \"bench\"\narch = \"amd64\"\ntalos_version = \"v1.12.5\"\n{layout}\
             build_number = 1\n[assets]\nsource = \"assets\"\nkernel = {{ sha256 = \"{}\" }}\n\
             initramfs = {{ sha256 = \"{}\" }}\nsystemd_boot = {{ sha256 = \"{}\" }}\n\
             systemd_stub = {{ sha256 = \"{}\" }}\n",
            pin("vmlinuz")?,
            pin("initramfs.xz")?,
            pin("systemd-boot.efi")?,
            pin("systemd-stub.efi")?,
        ),
    )?;
    let bin = util::edgeimage_bin()?;
    let keys = work.join("keys");
    util::run(
        Command::new(&bin)
            .args([
                "key",
                "generate",
                "--name",
                "bench",
                "--unencrypted",
                "--out",
            ])
            .arg(&keys),
    )?;
    let trust = work.join("trust");
    fs::create_dir_all(trust.join("trusted"))?;
    fs::copy(keys.join("bench.pub"), trust.join("trusted/bench.pub"))?;
    let out = work.join("out");
    util::run(
        Command::new(&bin)
            .args(["build", "-q", "--raw", "--profile"])
            .arg(&profile)
            .arg("--out")
            .arg(&out)
            .arg("--sign-key")
            .arg(keys.join("bench.key"))
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    )?;
    let out = out.join("bench");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("bench.manifest.json"))?)?;
    let ranges: Vec<(u64, u64)> = manifest["block_map"]["ranges"]
        .as_array()
        .context("block map")?
        .iter()
        .map(|r| {
            (
                r["first"].as_u64().unwrap_or(0),
                r["last"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mapped = ranges.iter().map(|(f, l)| (l - f + 1) * 4096).sum();
    Ok(Signed {
        bin,
        trust,
        out,
        image_size: manifest["image"]["size"].as_u64().unwrap_or(0),
        ranges,
        mapped,
    })
}

/// `cargo xtask bench verify`: `edgeimage verify` of a signed 2 GiB image holding ~600 MB of
/// data (as a file, as a loop device, compressed) against `sha256sum` of the whole image and
/// against just reading the mapped bytes once (`dd` of the UKI's extent).
fn verify(runs: usize) -> Result<()> {
    let work = util::target_dir().join("bench-verify");
    let _ = fs::remove_dir_all(&work);
    let Signed {
        bin,
        trust,
        out,
        image_size,
        ranges,
        mapped,
    } = signed_image(&work, "_verify_assets", "disk_size = \"2110MiB\"\n")?;
    let raw = out.join("bench.raw");
    let zst = out.join("bench.raw.zst");
    // The UKI is one contiguous extent in the ESP: read the mapped bytes' span once with dd.
    let first = ranges
        .iter()
        .map(|r| r.0)
        .filter(|&f| f >= 256)
        .min()
        .unwrap_or(0);
    let loopdev = Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&raw)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let cold = drop_caches();
    let mut rows: Vec<(String, Usage)> = Vec::new();
    let mut cases: Vec<(String, Command)> = Vec::new();
    let verify_cmd = |target: &Path| {
        let mut c = Command::new(&bin);
        c.args(["verify", "-q", "--trust"]).arg(&trust).arg(target);
        c
    };
    cases.push(("edgeimage verify bench.raw".into(), verify_cmd(&raw)));
    if let Some(l) = &loopdev {
        cases.push((
            "edgeimage verify /dev/loopN (O_DIRECT)".into(),
            verify_cmd(Path::new(l)),
        ));
    }
    cases.push(("edgeimage verify bench.raw.zst".into(), verify_cmd(&zst)));
    let mut sha = tool("sha256sum")?;
    sha.arg(&raw);
    cases.push(("sha256sum bench.raw (whole image)".into(), sha));
    let mut dd = tool("dd")?;
    dd.arg(format!("if={}", raw.display()))
        .arg("of=/dev/null")
        .arg("bs=4M")
        .arg(format!("skip={}", first * 4096))
        .arg(format!("count={mapped}"))
        .arg("iflag=skip_bytes,count_bytes")
        .arg("status=none");
    cases.push((
        "dd of the mapped bytes to /dev/null (reading only)".into(),
        dd,
    ));
    for (label, mut c) in cases {
        let best = best_of(runs, || {
            if cold {
                drop_caches();
            }
            measure(&mut c)
        })?;
        rows.push((label, best));
    }
    if let Some(l) = &loopdev {
        let _ = Command::new("losetup").arg("-d").arg(l).status();
    }
    println!(
        "\nImage: {} MiB, {} mapped ranges holding {} MiB; best of {runs} runs; {} cores; page cache {}.\n",
        image_size >> 20,
        ranges.len(),
        mapped >> 20,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if cold { "dropped before every run" } else { "warm (dropping it needs root)" }
    );
    println!("| command | wall s | CPU s | peak RSS MiB | MB/s of mapped data |");
    println!("|---|---:|---:|---:|---:|");
    for (label, u) in &rows {
        println!(
            "| {label} | {:.2} | {:.2} | {:.0} | {:.0} |",
            u.wall,
            u.cpu,
            u.max_rss_kib as f64 / 1024.0,
            mapped as f64 / 1e6 / u.wall
        );
    }
    Ok(())
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut fs::File::open(p)?, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Squashfs + cpio + zstd of the extension with the usual tools (what Talos's imager runs).
fn peer_extension(work: &Path, ext: &Path) -> Result<Usage> {
    let dir = work.join("peer-ext");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut total = Usage::default();
    total.add(measure(
        tool("mksquashfs")?
            .arg(ext.join("rootfs"))
            .arg(dir.join("0.sqsh"))
            .args([
                "-comp",
                "zstd",
                "-Xcompression-level",
                "18",
                "-all-root",
                "-noappend",
                "-quiet",
            ])
            .args(["-mkfs-time", "1700000000", "-all-time", "1700000000"]),
    )?);
    fs::write(dir.join("extensions.yaml"), "layers: []\n")?;
    total.add(measure(Command::new("sh").arg("-c").arg(format!(
        "cd {} && printf '0.sqsh\\nextensions.yaml\\n' | cpio -o -H newc --owner 0:0 --quiet > ext.cpio",
        dir.display()
    )))?);
    total.add(measure(
        tool("zstd")?
            .args(["-q", "-T0", "-18", "-f"])
            .arg(dir.join("ext.cpio")),
    )?);
    Ok(total)
}

/// The same image with the usual tools. Returns the total and each step.
fn peer_pipeline(work: &Path, assets: &Path) -> Result<(Usage, Vec<(String, Usage)>)> {
    let dir = work.join("peer");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut steps: Vec<(String, Usage)> = Vec::new();
    let p = |n: &str| dir.join(n);
    let a = |n: &str| assets.join(n);
    // UKI sections as files (content the same as edgeimage's; their making is not timed).
    let version = edgeimage::talos::TalosVersion::parse("v1.12.5")?;
    fs::write(p("osrel"), version.os_release())?;
    let cmdline = edgeimage::talos::Cmdline::parse(&version.default_kernel_args(Arch::Amd64));
    fs::write(p("cmdline"), cmdline.to_string())?;
    fs::write(p("uname"), synthetic::KERNEL_RELEASE)?;
    fs::write(p("loader.conf"), edgeimage::compose::esp::LOADER_CONF)?;
    let meta = edgeimage::format::meta::block(&[edgeimage::profile::MetaValue {
        key: 0x0c,
        value: b"bench".to_vec(),
    }])?;
    fs::write(p("meta"), [&meta[..], &meta[..]].concat())?;
    let kernel_len = fs::metadata(a("vmlinuz"))?.len();
    let vma = |off: u64| format!("{:#x}", 0x10000 + off);
    let mut objcopy = tool("objcopy")?;
    let mut off = 0u64;
    for (name, file, len) in [
        (".osrel", p("osrel"), 4096),
        (".cmdline", p("cmdline"), 4096),
        (".uname", p("uname"), 4096),
        (".linux", a("vmlinuz"), kernel_len),
        (".initrd", a("initramfs.xz"), 0),
    ] {
        objcopy
            .arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={}", vma(off)));
        off += len.div_ceil(4096) * 4096;
    }
    objcopy.arg(a("systemd-stub.efi")).arg(p("uki.efi"));
    steps.push(("objcopy (UKI)".into(), measure(&mut objcopy)?));
    let esp_kib = (2101u64 << 20) / 1024;
    steps.push((
        "mkfs.fat -F 32 (ESP file)".into(),
        measure(
            tool("mkfs.fat")?
                .args(["-F", "32", "-n", "EFI", "-i", "12345678", "-C"])
                .arg(p("esp.img"))
                .arg(esp_kib.to_string()),
        )?,
    ));
    let img = p("esp.img").display().to_string();
    let mut mtools = Usage::default();
    for d in ["::EFI", "::EFI/boot", "::EFI/Linux", "::loader"] {
        mtools.add(measure(tool("mmd")?.args(["-i", &img, d]))?);
    }
    for (src, dst) in [
        (a("systemd-boot.efi"), "::EFI/boot/BOOTX64.efi"),
        (p("uki.efi"), "::EFI/Linux/Talos-v1.12.5.efi"),
        (p("loader.conf"), "::loader/loader.conf"),
    ] {
        mtools.add(measure(
            tool("mcopy")?.args(["-i", &img]).arg(src).arg(dst),
        )?);
    }
    steps.push(("mmd + mcopy (ESP files)".into(), mtools));
    let raw = p("bench.raw");
    steps.push((
        "truncate + sgdisk (GPT)".into(),
        measure(Command::new("sh").arg("-c").arg(format!(
            "truncate -s 2110M {r} && sgdisk --disk-guid=R --new=1:2048:+2101M --typecode=1:ef00 --change-name=1:EFI \
             --new=2:0:+1M --typecode=2:8300 --change-name=2:META {r}",
            r = raw.display()
        )))?,
    ));
    let mut dd = Usage::default();
    dd.add(measure(
        Command::new("dd")
            .arg(format!("if={img}"))
            .arg(format!("of={}", raw.display()))
            .args([
                "bs=4M",
                "seek=1M",
                "oflag=seek_bytes",
                "conv=notrunc,sparse",
                "status=none",
            ]),
    )?);
    dd.add(measure(
        Command::new("dd")
            .arg(format!("if={}", p("meta").display()))
            .arg(format!("of={}", raw.display()))
            .arg(format!("seek={}", (1u64 << 20) + (2101u64 << 20)))
            .args(["oflag=seek_bytes", "conv=notrunc", "status=none"]),
    )?);
    steps.push(("dd (place ESP and META)".into(), dd));
    steps.push((
        "zstd -T0 -3".into(),
        measure(
            tool("zstd")?
                .args(["-q", "-T0", "-3", "-f"])
                .arg(&raw)
                .arg("-o")
                .arg(p("bench.raw.zst")),
        )?,
    ));
    let mut total = Usage::default();
    for (_, u) in &steps {
        total.add(*u);
    }
    Ok((total, steps))
}

/// Deterministic text that zstd -3 compresses about 3.5x: numbered lines of eight words, each
/// drawn from a 64-word vocabulary by a byte of [`synthetic::filler`] (neither zeros nor one
/// repeated line, which compress 50x and more).
pub(crate) fn words(seed: &str, len: usize) -> Vec<u8> {
    const WORDS: [&str; 64] = [
        "the", "of", "and", "to", "in", "is", "it", "for", "on", "with", "as", "was", "at", "by",
        "an", "be", "this", "from", "or", "are", "have", "not", "but", "they", "which", "will",
        "one", "all", "would", "there", "what", "about", "when", "make", "can", "time", "just",
        "know", "take", "into", "year", "some", "could", "other", "than", "then", "only", "over",
        "also", "after", "node", "edge", "disk", "boot", "image", "kernel", "module", "config",
        "state", "event", "block", "device", "agent", "network",
    ];
    let picks = synthetic::filler(seed, len / 4);
    let mut picks = picks.iter().cycle();
    let mut out = Vec::with_capacity(len + 128);
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{line:08}").as_bytes());
        for _ in 0..8 {
            let w = picks.next().map_or(0, |b| usize::from(b & 63));
            out.push(b' ');
            out.extend_from_slice(WORDS[w].as_bytes());
        }
        out.extend_from_slice(b".\n");
        line += 1;
    }
    out.truncate(len);
    out
}

/// Assets for the flash benchmark: 300 MiB incompressible (a 280 MiB initramfs and a 20 MiB
/// kernel `.text`) and 300 MiB of text (the kernel's `.rodata`), all of it in the UKI. The
/// set's own kernel (empty here: its filler is incompressible) is replaced by that one.
fn write_flash_assets(dir: &Path) -> Result<()> {
    synthetic::write_asset_set(
        dir,
        Arch::Amd64,
        Sizes {
            kernel: 0,
            initramfs: 280 << 20,
        },
    )?;
    let kernel = synthetic::pe_image(
        Arch::Amd64.pe_machine(),
        &[
            (".text", synthetic::filler("bench-flash-kernel", 20 << 20)),
            (".rodata", words("bench-flash-text", 300 << 20)),
        ],
        Some(synthetic::KERNEL_RELEASE),
    );
    fs::write(dir.join("vmlinuz"), kernel)?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    File,
    Loop,
    /// Loop devices on files in RAM (/dev/shm), each limited to [`STICK_BPS`] of reads and of
    /// writes by the block I/O controller: independent devices of a known speed, like USB
    /// sticks, which one virtual disk shared by every target cannot stand for.
    Stick,
}

/// Read and write speed of a simulated stick (a fast USB 3 stick).
const STICK_BPS: u64 = 200 << 20;

/// A block-I/O cgroup whose per-device limits apply to the commands run in it (cgroup v1
/// `blkio.throttle.*_bps_device`, or v2 `io.max`).
struct Throttle {
    dir: PathBuf,
    v2: bool,
}

impl Throttle {
    fn new() -> Result<Throttle> {
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        let (dir, v2) = if v1.join("blkio.throttle.write_bps_device").exists() {
            (v1.join("edgeimage-bench"), false)
        } else {
            let root = Path::new("/sys/fs/cgroup");
            let _ = fs::write(root.join("cgroup.subtree_control"), "+io");
            (root.join("edgeimage-bench"), true)
        };
        if !dir.exists() {
            fs::create_dir(&dir)
                .with_context(|| format!("creating the cgroup {} (needs root)", dir.display()))?;
        }
        let t = Throttle { dir, v2 };
        if t.v2 && !t.dir.join("io.max").exists() {
            bail!("the io controller is not available in {}", t.dir.display());
        }
        Ok(t)
    }

    /// Limit reads and writes of device `maj_min` ("7:3") to `bps` for commands in the group.
    fn limit(&self, maj_min: &str, bps: u64) -> Result<()> {
        if self.v2 {
            fs::write(
                self.dir.join("io.max"),
                format!("{maj_min} rbps={bps} wbps={bps}\n"),
            )?;
        } else {
            for f in ["read_bps_device", "write_bps_device"] {
                fs::write(
                    self.dir.join(format!("blkio.throttle.{f}")),
                    format!("{maj_min} {bps}\n"),
                )
                .with_context(|| format!("limiting {maj_min} in {}", self.dir.display()))?;
            }
        }
        Ok(())
    }

    /// `c`, started inside the group (a shell that joins it, then execs `c`).
    fn wrap(&self, c: &Command) -> Command {
        let mut w = Command::new("sh");
        w.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(c.get_program())
            .args(c.get_args());
        w
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The targets of one run, made fresh: paths of files that do not exist yet, or loop devices on
/// new sparse files of the image's size. The loop devices do direct I/O on their files, so what
/// is read back from them comes from the disk, not from the page cache of the file behind them.
/// Dropping the targets detaches the devices and deletes the files.
struct Targets {
    dir: PathBuf,
    paths: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Targets {
    fn new(
        dir: &Path,
        kind: Kind,
        n: usize,
        size: u64,
        throttle: Option<&Throttle>,
    ) -> Result<Targets> {
        let dir = if kind == Kind::Stick {
            PathBuf::from("/dev/shm/edgeimage-bench-sticks")
        } else {
            dir.to_path_buf()
        };
        let dir = dir.as_path();
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let mut t = Targets {
            dir: dir.to_path_buf(),
            paths: Vec::new(),
            loops: Vec::new(),
        };
        for i in 0..n {
            let file = dir.join(format!("target{i}.img"));
            if kind == Kind::File {
                t.paths.push(file);
                continue;
            }
            fs::File::create(&file)?.set_len(size)?;
            // Files in RAM need no direct I/O (there is no page cache in between to fool).
            let direct = if kind == Kind::Stick {
                "--direct-io=off"
            } else {
                "--direct-io=on"
            };
            let o = tool("losetup")?
                .args(["-f", "--show", direct])
                .arg(&file)
                .output()
                .context("running losetup")?;
            if !o.status.success() {
                bail!(
                    "losetup -f --show {direct} {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            t.paths.push(PathBuf::from(&dev));
            t.loops.push(dev.clone());
            if let Some(th) = throttle {
                let name = dev.trim_start_matches("/dev/");
                let maj_min = fs::read_to_string(format!("/sys/block/{name}/dev"))?;
                th.limit(maj_min.trim(), STICK_BPS)?;
            }
        }
        Ok(t)
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        for l in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(l).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `cargo xtask bench flash`: `edgeimage flash` (write and read-back verification) of a signed
/// 4 GiB image holding 600 MiB of data, to one target and to four at once, against
/// `bmaptool copy` with the image's block map and against `zstd -dc | dd`, on sparse files and
/// on loop devices.
fn flash(runs: usize) -> Result<()> {
    let work = util::target_dir().join("bench-flash");
    let _ = fs::remove_dir_all(&work);
    let img = signed_image(
        &work,
        "_flash_assets",
        "disk_size = \"4096MiB\"\nesp_size = \"4092MiB\"\n",
    )?;
    let zst = img.out.join("bench.raw.zst");
    let raw = img.out.join("bench.raw");
    let bmap = img.out.join("bench.bmap");
    let zst_size = fs::metadata(&zst)?.len();
    let cold = drop_caches();
    let flash_cmd = |targets: &[PathBuf]| {
        let mut c = Command::new(&img.bin);
        c.args(["flash", "-q", "-y", "--trust"])
            .arg(&img.trust)
            .arg(&zst);
        for t in targets {
            c.arg("-t").arg(t);
        }
        c
    };
    let bmaptool = |source: &Path, targets: &[PathBuf]| -> Result<Command> {
        let mut c = tool("bmaptool")?;
        c.args(["-q", "copy", "--bmap"])
            .arg(&bmap)
            .arg(source)
            .args(targets);
        Ok(c)
    };
    let mut rows: Vec<(String, &str, Usage)> = Vec::new();
    let mut ratios: Vec<String> = Vec::new();
    let stick = format!("simulated stick ({} MiB/s)", STICK_BPS >> 20);
    let sticks = format!("4 simulated sticks ({} MiB/s each)", STICK_BPS >> 20);
    for (kind, one, four) in [
        (Kind::File, "sparse file", "4 sparse files"),
        (Kind::Loop, "loop device (direct I/O)", "4 loop devices"),
        (Kind::Stick, stick.as_str(), sticks.as_str()),
    ] {
        let throttle = if kind == Kind::Stick {
            match Throttle::new() {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("\n!!! {e:#}\n!!! NO BLOCK I/O CGROUP: the simulated-stick rows are SKIPPED\n");
                    ratios.push(format!("{one}: SKIPPED (no block I/O cgroup)"));
                    continue;
                }
            }
        } else {
            None
        };
        if kind != Kind::File {
            if let Err(e) = Targets::new(
                &work.join("targets"),
                kind,
                1,
                img.image_size,
                throttle.as_ref(),
            ) {
                eprintln!("\n!!! {e:#}\n!!! NO LOOP DEVICE: the {one} rows are SKIPPED\n");
                ratios.push(format!("{one}: SKIPPED (losetup failed)"));
                continue;
            }
        }
        let dd = match kind {
            Kind::File => "bs=4M iflag=fullblock conv=sparse,fsync",
            Kind::Loop | Kind::Stick => "bs=4M iflag=fullblock oflag=direct conv=fsync",
        };
        type Make<'a> = Box<dyn Fn(&[PathBuf]) -> Result<Command> + 'a>;
        let cases: Vec<(String, usize, Make)> = vec![
            (
                "edgeimage flash (write + read-back verify)".into(),
                1,
                Box::new(|t| Ok(flash_cmd(t))),
            ),
            (
                "edgeimage flash, 4 targets at once".into(),
                4,
                Box::new(|t| Ok(flash_cmd(t))),
            ),
            (
                "bmaptool copy --bmap bench.bmap bench.raw.zst".into(),
                1,
                Box::new(|t| bmaptool(&zst, t)),
            ),
            (
                "bmaptool copy --bmap bench.bmap bench.raw".into(),
                1,
                Box::new(|t| bmaptool(&raw, t)),
            ),
            (
                format!("zstd -dc bench.raw.zst \\| dd {dd}"),
                1,
                Box::new(|t| {
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(format!("zstd -dcq \"$1\" | dd of=\"$2\" {dd} status=none"))
                        .arg("sh")
                        .arg(&zst)
                        .args(t);
                    Ok(c)
                }),
            ),
        ];
        let mut got = Vec::new();
        for (label, n, make) in &cases {
            let u = best_of(runs, || {
                let t = Targets::new(
                    &work.join("targets"),
                    kind,
                    *n,
                    img.image_size,
                    throttle.as_ref(),
                )?;
                let mut c = make(&t.paths)?;
                if let Some(th) = &throttle {
                    c = th.wrap(&c);
                }
                if cold {
                    drop_caches();
                }
                measure(&mut c)
            })?;
            got.push(u);
            rows.push((label.clone(), if *n == 1 { one } else { four }, u));
        }
        let r = |i: usize, j: usize| got[i].wall / got[j].wall;
        ratios.push(format!(
            "{one}: bmaptool (.zst) / edgeimage {:.2}x, 4 targets / 1 target {:.2}x, zstd \\| dd / edgeimage {:.2}x",
            r(2, 0),
            r(1, 0),
            r(4, 0)
        ));
    }
    println!(
        "\nImage: {} MiB, {} mapped ranges holding {} MiB (about half incompressible, half text), \
         bench.raw.zst {} MiB; best of {runs} runs; {} cores; page cache {}.\n",
        img.image_size >> 20,
        img.ranges.len(),
        img.mapped >> 20,
        zst_size >> 20,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if cold {
            "dropped before every run"
        } else {
            "warm (dropping it needs root)"
        }
    );
    println!("| command | target | wall s | CPU s | peak RSS MiB | wall vs edgeimage flash |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut base = 0.0;
    for (label, target, u) in &rows {
        if label.starts_with("edgeimage flash (") {
            base = u.wall;
        }
        println!(
            "| {label} | {target} | {:.2} | {:.2} | {:.0} | {:.2}x |",
            u.wall,
            u.cpu,
            u.max_rss_kib as f64 / 1024.0,
            u.wall / base
        );
    }
    println!(
        "\nRatios of wall time (goals: bmaptool / edgeimage >= 3x, 4 targets / 1 target <= 1.5x): {}.",
        ratios.join("; ")
    );
    Ok(())
}
