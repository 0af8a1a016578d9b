//! `cargo xtask bench build`: whole-process time, CPU time and peak memory of `edgeimage build`
//! against the same composition done with the usual tools (objcopy for the UKI, mkfs.fat +
//! mtools for the ESP, sgdisk for the GPT, dd for placing partitions, zstd for compression),
//! on the same synthetic inputs, in one run. Prints a Markdown table for the README.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeimage::synthetic::{self, Sizes};
use edgeimage::talos::Arch;

use crate::util;

/// Resources one command used.
#[derive(Clone, Copy, Default)]
struct Usage {
    wall: f64,
    cpu: f64,
    max_rss_kib: i64,
}

impl Usage {
    fn add(&mut self, o: Usage) {
        self.wall += o.wall;
        self.cpu += o.cpu;
        self.max_rss_kib = self.max_rss_kib.max(o.max_rss_kib);
    }
}

/// Run a command and measure it with wait4 (rusage of exactly that child).
fn measure(cmd: &mut Command) -> Result<Usage> {
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

fn tool(name: &str) -> Result<Command> {
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

const USAGE: &str = "usage: cargo xtask bench build|verify [--runs N]";

pub fn main(args: &[String]) -> Result<()> {
    if let [sub, dir] = args {
        if sub == "_assets" {
            return write_assets(Path::new(dir));
        }
        if sub == "_verify_assets" {
            return write_verify_assets(Path::new(dir));
        }
    }
    if args.first().map(String::as_str) == Some("verify") {
        return verify(runs_of(&args[1..])?);
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
    let bin = util::edgeimage_bin()?;
    let mut results: Vec<(String, Usage, u64)> = Vec::new();
    for (label, raw, profile) in [
        ("edgeimage build (.raw.zst)", false, &profile),
        ("edgeimage build --raw (.raw.zst + .raw)", true, &profile),
        ("edgeimage build + 50 MiB extension", false, &profile_ext),
    ] {
        let mut best: Option<Usage> = None;
        for _ in 0..runs {
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
            let u = measure(&mut c)?;
            if best.is_none_or(|b| u.wall < b.wall) {
                best = Some(u);
            }
        }
        let size = fs::metadata(work.join("out-edgeimage/bench.raw.zst"))?.len();
        results.push((label.to_string(), best.unwrap_or_default(), size));
    }
    let mut ext_peer: Option<Usage> = None;
    for _ in 0..runs {
        let u = peer_extension(&work, &ext_dir)?;
        if ext_peer.is_none_or(|b| u.wall < b.wall) {
            ext_peer = Some(u);
        }
    }
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
    let ext_peer = ext_peer.unwrap_or_default();
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
        [flag, n] if flag == "--runs" => n.parse().context("--runs N"),
        [] => Ok(3),
        _ => bail!("{USAGE}"),
    }
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

/// `cargo xtask bench verify`: `edgeimage verify` of a signed 2 GiB image holding ~600 MB of
/// data (as a file, as a loop device, compressed) against `sha256sum` of the whole image and
/// against just reading the mapped bytes once (`dd` of the UKI's extent).
fn verify(runs: usize) -> Result<()> {
    let work = util::target_dir().join("bench-verify");
    let _ = fs::remove_dir_all(&work);
    let assets = work.join("assets");
    util::run(
        Command::new(std::env::current_exe()?)
            .args(["bench", "_verify_assets"])
            .arg(&assets),
    )?;
    let pin = |n: &str| sha256_file(&assets.join(n));
    let profile = work.join("bench.toml");
    fs::write(
        &profile,
        format!(
            "name = \"bench\"\narch = \"amd64\"\ntalos_version = \"v1.12.5\"\ndisk_size = \"2110MiB\"\n\
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
    let raw = out.join("bench.raw");
    let zst = out.join("bench.raw.zst");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("bench.manifest.json"))?)?;
    let ranges = manifest["block_map"]["ranges"]
        .as_array()
        .context("block map")?;
    let mapped: u64 = ranges
        .iter()
        .map(|r| {
            let f = r["first"].as_u64().unwrap_or(0);
            let l = r["last"].as_u64().unwrap_or(0);
            (l - f + 1) * 4096
        })
        .sum();
    let image_size = manifest["image"]["size"].as_u64().unwrap_or(0);
    // The UKI is one contiguous extent in the ESP: read the mapped bytes' span once with dd.
    let first = ranges
        .iter()
        .filter_map(|r| r["first"].as_u64())
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
        let mut best: Option<Usage> = None;
        for _ in 0..runs {
            if cold {
                drop_caches();
            }
            let u = measure(&mut c)?;
            if best.is_none_or(|b| u.wall < b.wall) {
                best = Some(u);
            }
        }
        rows.push((label, best.unwrap_or_default()));
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
    let meta = edgeimage::compose::meta::block(&[edgeimage::profile::MetaValue {
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
