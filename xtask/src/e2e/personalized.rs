//! A personalized disk, end to end: the `e2e-metal-iso` image built with a metal-iso
//! personalization slot (the delivered configuration as a template, its host name a
//! `{{ host }}` placeholder), written by `edgeimage flash --inventory` with one inventory row,
//! then booted: the stand-in init must find that row's host name in the configuration on the
//! `metal-iso` partition, and the edgehostlet entrypoint must print it.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::qemu::Accel;
use super::{fetch, Opts, Paths, PATCHED_HOSTNAME, VARIANTS};

/// The host name the inventory row gives the device.
const DEVICE_HOST: &str = "e2e-pers-01";

/// `config.yaml` of the metal-iso partition of `raw`, read with mtools.
fn metal_iso_config(raw: &Path) -> Result<String> {
    let gpt = edgeimage::format::gpt::read_file(&fs::File::open(raw)?)?;
    let (offset, _) = gpt
        .place_of(edgeimage::config::delivery::METAL_ISO_LABEL)
        .context("the image has no metal-iso partition")?;
    fetch::capture(Command::new("mtype").args([
        "-i",
        &format!("{}@@{offset}", raw.display()),
        "::config.yaml",
    ]))
}

pub(super) fn run(
    paths: &Paths,
    root: &fetch::Root,
    bin: &Path,
    accel: Accel,
    opts: &Opts,
) -> Result<f64> {
    let keys = paths.e2e.join("keys");
    crate::util::run(
        Command::new(bin)
            .args([
                "key",
                "generate",
                "--name",
                "pers",
                "--unencrypted",
                "--force",
                "--out",
            ])
            .arg(&keys),
    )?;
    let trust = paths.e2e.join("trust-pers");
    fs::create_dir_all(trust.join("trusted"))?;
    fs::copy(keys.join("pers.pub"), trust.join("trusted/pers.pub"))?;
    let setup = super::setup_for("e2e-pers", root, 512);
    let variant = &VARIANTS[1];
    let inputs = super::write_inputs(paths, variant, root)?;

    // The base build gives the delivered configuration; its host name becomes a placeholder.
    let profile = super::write_profile(paths, &setup, Some(&inputs))?;
    let (base_raw, _) = super::build_with_edgeimage(paths, bin, &setup, &profile, Some(variant))?;
    let base_config = metal_iso_config(&base_raw)?;
    let template = base_config.replace(
        &format!("hostname: {PATCHED_HOSTNAME}"),
        "hostname: {{ host }}",
    );
    if template == base_config {
        bail!("the delivered configuration has no `hostname: {PATCHED_HOSTNAME}` line");
    }
    fs::write(paths.e2e.join("pers-config.tmpl"), &template)?;
    let mut text = fs::read_to_string(&profile)?;
    text.push_str(&format!(
        "\n[signing]\nkey = \"{}\"\n\n[[personalize]]\nname = \"config\"\nmetal_iso = true\ntemplate = \"pers-config.tmpl\"\n",
        keys.join("pers.key").display()
    ));
    fs::write(&profile, text)?;
    let (_, mut expect) = super::build_with_edgeimage(paths, bin, &setup, &profile, Some(variant))?;

    // One device, its row's host name rendered into the configuration.
    let inventory = paths.e2e.join("pers-inventory.csv");
    fs::write(&inventory, format!("id,host\ndevice-1,{DEVICE_HOST}\n"))?;
    let log = paths.run.join("pers-line.jsonl");
    let _ = fs::remove_file(&log);
    let disk = paths.run.join("pers-disk.raw");
    let _ = fs::remove_file(&disk);
    let zst = paths.set("e2e-pers").join("e2e-pers.raw.zst");
    let o = Command::new(bin)
        .arg("flash")
        .arg(&zst)
        .arg("--trust")
        .arg(&trust)
        .arg("--inventory")
        .arg(&inventory)
        .arg("--personalize")
        .arg(&profile)
        .arg("--record")
        .arg(&log)
        .arg("-t")
        .arg(&disk)
        .output()?;
    if !o.status.success() {
        bail!(
            "edgeimage flash --inventory failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let rendered = template.replace("{{ host }}", DEVICE_HOST);
    let sha = hex::encode(Sha256::digest(rendered.as_bytes()));
    if metal_iso_config(&disk)? != rendered {
        bail!("the written metal-iso config.yaml is not the rendered template");
    }
    println!(
        "e2e: personalized disk {} (row device-1, host {DEVICE_HOST}, config sha256 {sha})",
        disk.display()
    );
    if let Some(c) = expect.config.as_mut() {
        c.sha256 = sha;
        c.hostname = Some(DEVICE_HOST.to_string());
    }
    expect.edgehostlet_hostname = Some(DEVICE_HOST.to_string());
    let boot = super::qemu::boot(
        root,
        &paths.run,
        &disk,
        "personalized",
        accel,
        opts.timeout,
        512,
    )?;
    super::check(&boot, &setup, &expect)?;
    Ok(boot.wall.as_secs_f64())
}
