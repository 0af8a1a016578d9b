//! `cargo xtask bench cache`: `edgeimage build` of an image with a ~1 GiB image cache (nine
//! OCI layouts, each layer blob half incompressible, half text) against the same cache put
//! into a filesystem image the usual way (`mkfs.ext4 -d` of the cache tree, then `zstd -T0`),
//! in one run: whole-process wall time, CPU time and peak memory. Prints Markdown tables for
//! the README.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use edgeimage::imagecache::fixtures::{CONFIG_PATCH, CONTROL_PLANE_1_12_5};
use edgeimage::synthetic::{self, Sizes};
use edgeimage::talos::Arch;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bench::{best_of, measure, tool, Usage};
use crate::util;

/// Bytes of each layer blob: half incompressible, half text.
const BLOB: usize = 114 << 20;
const CHUNK: usize = 2 << 20;

/// In `dir` (run as a child process, so its memory is not the measured children's): the
/// asset set, nine OCI layout directories `images/<i>/`, the configuration and its patch,
/// the profile `bench-cache.toml`, and the same cache as Talos's tree in `tree/` (blobs hard
/// linked) for the peer.
pub fn write_inputs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let digests = synthetic::write_asset_set(
        &dir.join("assets"),
        Arch::Amd64,
        Sizes {
            kernel: 8 << 20,
            initramfs: 24 << 20,
        },
    )?;
    let pin = |n: &str| {
        digests
            .iter()
            .find(|(f, _)| f == n)
            .map(|x| x.1.clone())
            .unwrap_or_default()
    };
    fs::write(
        dir.join("machine.yaml"),
        edgeimage::config::fixtures::controlplane_yaml(),
    )?;
    fs::write(dir.join("cache.yaml"), CONFIG_PATCH)?;
    let mut toml = format!(
        "name = \"bench-cache\"\narch = \"amd64\"\ntalos_version = \"v1.12.5\"\n\
         disk_size = \"1400MiB\"\nesp_size = \"100MiB\"\n\
         [assets]\nsource = \"assets\"\nkernel = {{ sha256 = \"{}\" }}\ninitramfs = {{ sha256 = \"{}\" }}\n\
         systemd_boot = {{ sha256 = \"{}\" }}\nsystemd_stub = {{ sha256 = \"{}\" }}\n\
         [config]\npath = \"machine.yaml\"\npatches = [\"cache.yaml\"]\ndelivery = \"embedded\"\n\
         [image_cache]\n",
        pin("vmlinuz"),
        pin("initramfs.xz"),
        pin("systemd-boot.efi"),
        pin("systemd-stub.efi"),
    );
    let tree = dir.join("tree");
    for (i, reference) in CONTROL_PLANE_1_12_5.iter().enumerate() {
        let layout = dir.join(format!("images/{i}"));
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        // The layer: streamed to a file and hashed, never held whole.
        let tmp = blobs.join("layer.tmp");
        let mut f = std::io::BufWriter::new(fs::File::create(&tmp)?);
        let mut h = Sha256::new();
        let mut n = 0usize;
        while n < BLOB {
            let chunk = if n < BLOB / 2 {
                synthetic::filler(&format!("layer-{i}-{n}"), CHUNK)
            } else {
                crate::bench::words(&format!("layer-{i}-{n}"), CHUNK)
            };
            h.update(&chunk);
            f.write_all(&chunk)?;
            n += CHUNK;
        }
        f.flush()?;
        drop(f);
        let layer_hex = hex::encode(h.finalize());
        fs::rename(&tmp, blobs.join(&layer_hex))?;
        let put = |data: &[u8]| -> Result<String> {
            let hex = hex::encode(Sha256::digest(data));
            fs::write(blobs.join(&hex), data)?;
            Ok(hex)
        };
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
        }))?;
        let config_hex = put(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_hex}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_hex}"),
                "size": BLOB,
            }],
        }))?;
        let manifest_hex = put(&manifest)?;
        fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{manifest_hex}"),
                    "size": manifest.len(),
                }],
            }))?,
        )?;
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        toml.push_str(&format!(
            "\n[[image_cache.images]]\nreference = \"{reference}\"\ndigest = \"sha256:{manifest_hex}\"\narchive = \"images/{i}\"\n"
        ));
        // Talos's tree (what `talosctl images cache-create --layout=flat` writes).
        let r = edgeimage::format::reference::Reference::parse(reference)?;
        let mdir = tree.join(r.cache_dir());
        fs::create_dir_all(mdir.join("reference"))?;
        fs::create_dir_all(mdir.join("digest"))?;
        fs::create_dir_all(tree.join("blob"))?;
        fs::write(
            mdir.join("reference")
                .join(r.tag.as_deref().unwrap_or("latest")),
            &manifest,
        )?;
        fs::write(
            mdir.join("digest").join(format!("sha256-{manifest_hex}")),
            &manifest,
        )?;
        for hex in [&layer_hex, &config_hex] {
            fs::hard_link(blobs.join(hex), tree.join(format!("blob/sha256-{hex}")))?;
        }
    }
    fs::write(dir.join("bench-cache.toml"), toml)?;
    Ok(())
}

/// Bytes of all files below `dir`.
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        total += if t.is_dir() {
            tree_bytes(&e.path())?
        } else {
            e.metadata()?.len()
        };
    }
    Ok(total)
}

/// The peer: the cache tree into an ext4 image with `mkfs.ext4 -d`, then `zstd -T0`.
fn peer(work: &Path, tree: &Path, size_mib: u64) -> Result<(Usage, u64)> {
    let img = work.join("peer-cache.img");
    let _ = fs::remove_file(&img);
    let _ = fs::remove_file(work.join("peer-cache.img.zst"));
    let mut total = Usage::default();
    total.add(measure(
        tool("mkfs.ext4")?
            .args(["-q", "-F", "-L", "IMAGECACHE", "-d"])
            .arg(tree)
            .arg(&img)
            .arg(format!("{size_mib}M")),
    )?);
    total.add(measure(
        tool("zstd")?
            .args(["-q", "-T0", "-f"])
            .arg(&img)
            .arg("-o")
            .arg(work.join("peer-cache.img.zst")),
    )?);
    Ok((total, fs::metadata(work.join("peer-cache.img.zst"))?.len()))
}

pub fn run(runs: usize) -> Result<()> {
    let work = util::target_dir().join("bench-cache");
    let _ = fs::remove_dir_all(&work);
    util::run(
        Command::new(std::env::current_exe()?)
            .args(["bench", "_cache_inputs"])
            .arg(&work),
    )?;
    let bin: PathBuf = util::edgeimage_bin()?;
    let cache_bytes = tree_bytes(&work.join("tree"))?;
    let out = work.join("out");
    let ours = best_of(runs, || {
        let _ = fs::remove_dir_all(&out);
        measure(
            Command::new(&bin)
                .args(["build", "-q", "--profile"])
                .arg(work.join("bench-cache.toml"))
                .arg("--out")
                .arg(&out)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        )
    })?;
    let zst = out.join("bench-cache/bench-cache.raw.zst");
    let ours_size = fs::metadata(&zst)
        .with_context(|| format!("{}", zst.display()))?
        .len();
    let size_mib = (cache_bytes + cache_bytes / 16) / (1 << 20) + 32;
    let mut best: Option<(Usage, u64)> = None;
    for _ in 0..runs {
        let r = peer(&work, &work.join("tree"), size_mib)?;
        if best.as_ref().is_none_or(|b| r.0.wall < b.0.wall) {
            best = Some(r);
        }
    }
    let (peer, peer_size) = best.context("no run")?;
    println!(
        "\nInputs: nine OCI layouts, {} MiB of blobs (each layer half incompressible, half text); best of {runs} runs; {} cores.\n",
        cache_bytes >> 20,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| making the cache | wall s | CPU s | peak RSS MiB | .zst bytes | wall vs edgeimage |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| edgeimage build (whole image: cache checked and written, ESP, UKI, manifest, .bmap) | {:.2} | {:.2} | {:.0} | {ours_size} | 1.00x |",
        ours.wall,
        ours.cpu,
        ours.max_rss_kib as f64 / 1024.0
    );
    println!(
        "| mkfs.ext4 -d (cache tree, {size_mib} MiB) + zstd -T0 (cache partition only) | {:.2} | {:.2} | {:.0} | {peer_size} | {:.2}x |",
        peer.wall,
        peer.cpu,
        peer.max_rss_kib as f64 / 1024.0,
        peer.wall / ours.wall
    );
    Ok(())
}
