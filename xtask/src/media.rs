//! `cargo xtask demo` and `cargo xtask media`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use edgeimage::synthetic::{self, Sizes};
use edgeimage::talos::Arch;

use crate::util;

/// SOURCE_DATE_EPOCH for builds that do not set one: fixed, so the demo is reproducible.
const DEFAULT_EPOCH: &str = "1700000000";

/// Generate the synthetic (NOT BOOTABLE) asset set the demo profile pins, the `edgehostlet`
/// fixture extension (a directory) and a machine configuration with fake secrets.
pub fn demo_assets() -> Result<PathBuf> {
    let root = util::target_dir().join("demo-assets");
    let dir = root.join("amd64");
    synthetic::write_asset_set(&dir, Arch::Amd64, Sizes::default())?;
    let ext = root.join("edgehostlet");
    if ext.exists() {
        std::fs::remove_dir_all(&ext).with_context(|| format!("removing {}", ext.display()))?;
    }
    edgeimage::extension::fixtures::write_dir(
        &edgeimage::extension::fixtures::edgehostlet(),
        &ext,
    )?;
    let cfg = root.join("machine.yaml");
    std::fs::write(&cfg, edgeimage::config::fixtures::controlplane_yaml())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600))?;
    Ok(dir)
}

fn build(bin: &PathBuf, profile: &PathBuf, out: &PathBuf, key: Option<&PathBuf>) -> Result<()> {
    let epoch = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| DEFAULT_EPOCH.into());
    let mut c = Command::new(bin);
    c.arg("build")
        .arg("--profile")
        .arg(profile)
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch);
    if let Some(k) = key {
        c.arg("--sign-key").arg(k);
    }
    util::run(&mut c)
}

/// The demo's signing key (`target/demo-keys/demo.key`, unencrypted, made once) and a trust
/// store holding its public key (`target/demo-trust/trusted/demo.pub`). A release key is
/// made the same way, with a passphrase, and kept offline.
fn demo_key(bin: &PathBuf) -> Result<(PathBuf, PathBuf)> {
    let keys = util::target_dir().join("demo-keys");
    let key = keys.join("demo.key");
    let public = keys.join("demo.pub");
    if !key.exists() || !public.exists() {
        println!(
            "== edgeimage key generate --name demo --out {} --unencrypted",
            keys.display()
        );
        util::run(
            Command::new(bin)
                .args([
                    "key",
                    "generate",
                    "--name",
                    "demo",
                    "--unencrypted",
                    "--force",
                    "--out",
                ])
                .arg(&keys),
        )?;
    }
    let trust = util::target_dir().join("demo-trust");
    std::fs::create_dir_all(trust.join("trusted"))
        .with_context(|| format!("creating {}", trust.display()))?;
    std::fs::copy(&public, trust.join("trusted/demo.pub"))
        .with_context(|| format!("copying {} into {}", public.display(), trust.display()))?;
    Ok((key, trust))
}

pub fn demo(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask demo (no options)");
    }
    let assets = demo_assets()?;
    println!(
        "== synthetic asset set in {} (NOT BOOTABLE: shapes only, for the demo)",
        assets.display()
    );
    let bin = util::edgeimage_bin()?;
    let (key, trust) = demo_key(&bin)?;
    let out = util::target_dir().join("media");
    let profile = util::workspace().join("profiles/demo.toml");
    println!(
        "== edgeimage build --profile profiles/demo.toml --out {} --sign-key {}",
        out.display(),
        key.display()
    );
    build(&bin, &profile, &out, Some(&key))?;
    let image = out.join("demo/demo.raw.zst");
    println!("\n== edgeimage inspect {}", image.display());
    util::run(Command::new(&bin).arg("inspect").arg(&image))?;
    println!(
        "\n== edgeimage verify {} --trust {}",
        image.display(),
        trust.display()
    );
    util::run(
        Command::new(&bin)
            .arg("verify")
            .arg(&image)
            .arg("--trust")
            .arg(&trust),
    )?;
    // Write it to two "disks" (files) at once, as a line would to sticks, and prove one.
    let disks = [out.join("demo-disk-1.img"), out.join("demo-disk-2.img")];
    println!(
        "\n== edgeimage flash {} --trust {} -t {} -t {} --record {}",
        image.display(),
        trust.display(),
        disks[0].display(),
        disks[1].display(),
        out.join("demo-flash.jsonl").display()
    );
    util::run(
        Command::new(&bin)
            .arg("flash")
            .arg(&image)
            .arg("--trust")
            .arg(&trust)
            .arg("-t")
            .arg(&disks[0])
            .arg("-t")
            .arg(&disks[1])
            .arg("--record")
            .arg(out.join("demo-flash.jsonl")),
    )?;
    println!("\n== edgeimage verify {}", disks[1].display());
    util::run(
        Command::new(&bin)
            .arg("verify")
            .arg(&disks[1])
            .arg("--trust")
            .arg(&trust),
    )?;
    println!(
        "\nThe demo image uses synthetic assets and does not boot. `cargo xtask e2e` boots a real one;\n\
         the README says how to point a profile at real Talos assets."
    );
    Ok(())
}

pub fn media(args: &[String]) -> Result<()> {
    let ws = util::workspace();
    let profiles: Vec<PathBuf> = match args {
        [flag] if flag == "--all" => {
            let mut v: Vec<PathBuf> = std::fs::read_dir(ws.join("profiles"))
                .context("listing profiles/")?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            v.sort();
            v
        }
        [flag, name] if flag == "--profile" => {
            vec![edgeimage::build::profile_path(&ws, name)]
        }
        _ => bail!("usage: cargo xtask media --profile NAME|FILE | --all"),
    };
    demo_assets()?;
    let bin = util::edgeimage_bin()?;
    let out = util::target_dir().join("media");
    let mut failed = Vec::new();
    for p in &profiles {
        println!("== {}", p.display());
        if let Err(e) = build(&bin, p, &out, None) {
            eprintln!("   failed: {e:#}");
            failed.push(p.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} profiles failed: {}",
            failed.len(),
            profiles.len(),
            failed.join(", ")
        );
    }
    println!("media in {}", out.display());
    Ok(())
}
