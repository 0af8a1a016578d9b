//! `--scratch`: a disk image assembled with host tools (sgdisk, mkfs.fat, mtools, objcopy)
//! instead of `edgeimage build`, in the layout edgeimage produces. It proves the boot harness
//! (QEMU, firmware, modules, init) independently of edgeimage, and helps tell a harness fault
//! from an edgeimage fault.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::fetch::{capture, on_path, run_quiet};
use super::{Paths, Setup};

const MIB: u64 = 1 << 20;
const ADV_BLOCK: usize = 256 * 1024;

/// Talos 1.12 amd64 default command line with the profile's extra arguments applied the way
/// Talos applies them (`console=` replaces the default console, the rest is appended).
pub fn expected_cmdline(extra: &[&str]) -> String {
    let mut args: Vec<String> = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge \
         pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 \
         module.sig_enforce=1"
        .split(' ')
        .map(str::to_string)
        .collect();
    let consoles: Vec<&str> = extra
        .iter()
        .copied()
        .filter(|a| a.starts_with("console="))
        .collect();
    if !consoles.is_empty() {
        let at = args
            .iter()
            .position(|a| a.starts_with("console="))
            .unwrap_or(args.len());
        args.retain(|a| !a.starts_with("console="));
        for (i, c) in consoles.iter().enumerate() {
            args.insert(at + i, c.to_string());
        }
    }
    for a in extra.iter().filter(|a| !a.starts_with("console=")) {
        args.push(a.to_string());
    }
    args.join(" ")
}

/// Builds `<out>/<name>.raw`; returns its path and the command line baked into the UKI.
pub fn build(paths: &Paths, setup: &Setup) -> Result<(std::path::PathBuf, String)> {
    for tool in ["sgdisk", "mkfs.fat", "mcopy", "mmd", "objcopy", "objdump"] {
        if !on_path(tool) {
            bail!("--scratch needs `{tool}` (packages gdisk, dosfstools, mtools, binutils)");
        }
    }
    let work = paths.e2e.join("scratch");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&paths.out)?;
    let extra: Vec<&str> = setup.extra_args.iter().map(String::as_str).collect();
    let cmdline = expected_cmdline(&extra);

    // UKI: the stub plus .osrel, .cmdline, .uname, .linux, .initrd at increasing addresses.
    let stub = paths.assets(setup.arch).join("systemd-stub.efi");
    let mut initrd = fs::read(paths.assets(setup.arch).join("initramfs.xz"))?;
    initrd.resize(initrd.len().div_ceil(4) * 4, 0);
    let osrel = format!(
        "NAME=\"Talos\"\nID=talos\nVERSION_ID={v}\nPRETTY_NAME=\"Talos ({v})\"\n",
        v = setup.talos_version
    );
    let parts: Vec<(&str, Vec<u8>)> = vec![
        (".osrel", osrel.into_bytes()),
        (".cmdline", cmdline.clone().into_bytes()),
        (".uname", setup.kver.clone().into_bytes()),
        (
            ".linux",
            fs::read(paths.assets(setup.arch).join("vmlinuz"))?,
        ),
        (".initrd", initrd),
    ];
    let dump = capture(Command::new("objdump").arg("-h").arg(&stub))?;
    let mut end = 0u64;
    for l in dump.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 7 && f[0].parse::<u32>().is_ok() {
            let size = u64::from_str_radix(f[2], 16)?;
            let vma = u64::from_str_radix(f[3], 16)?;
            end = end.max(vma + size);
        }
    }
    if end == 0 {
        bail!("objdump -h {} lists no sections", stub.display());
    }
    let uki = work.join("uki.efi");
    let mut cmd = Command::new("objcopy");
    let mut vma = end.div_ceil(0x1000) * 0x1000;
    for (name, data) in &parts {
        let f = work.join(name.trim_start_matches('.'));
        fs::write(&f, data)?;
        cmd.arg("--add-section")
            .arg(format!("{name}={}", f.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"))
            .arg("--set-section-flags")
            .arg(format!("{name}=data,readonly"));
        vma = (vma + data.len() as u64).div_ceil(0x1000) * 0x1000;
    }
    run_quiet(cmd.arg(&stub).arg(&uki)).context("objcopy (making the UKI)")?;

    // ESP.
    let esp = work.join("esp.img");
    let esp_bytes = setup.esp_mib * MIB;
    run_quiet(
        Command::new("mkfs.fat")
            .args(["-F", "32", "-n", "EFI", "-i", "12345678", "-C"])
            .arg(&esp)
            .arg((esp_bytes / 1024).to_string()),
    )?;
    let loader = work.join("loader.conf");
    fs::write(
        &loader,
        "# scratch image of cargo xtask e2e --scratch\n\ntimeout 10\n",
    )?;
    let img = format!("{}", esp.display());
    for d in ["::EFI", "::EFI/boot", "::EFI/Linux", "::loader"] {
        run_quiet(Command::new("mmd").args(["-i", &img, d]))?;
    }
    let copies = [
        (
            paths.assets(setup.arch).join("systemd-boot.efi"),
            "::EFI/boot/BOOTX64.efi".to_string(),
        ),
        (
            uki,
            format!("::EFI/Linux/Talos-{}.efi", setup.talos_version),
        ),
        (loader, "::loader/loader.conf".to_string()),
    ];
    for (src, dst) in &copies {
        run_quiet(Command::new("mcopy").args(["-i", &img]).arg(src).arg(dst))?;
    }

    // Disk: GPT with EFI at 1 MiB and META (1 MiB) after it.
    let raw = paths.out.join(format!("{}.raw", setup.name));
    let _ = fs::remove_file(&raw);
    let disk = fs::File::create(&raw)?;
    disk.set_len(setup.disk_mib * MIB)?;
    drop(disk);
    let meta_start = MIB + esp_bytes;
    run_quiet(
        Command::new("sgdisk")
            .arg(format!("--new=1:2048:+{}M", setup.esp_mib))
            .args(["--typecode=1:ef00", "--change-name=1:EFI"])
            .arg(format!("--new=2:{}:+1M", meta_start / 512))
            .args(["--typecode=2:8300", "--change-name=2:META"])
            .arg(&raw),
    )
    .context("sgdisk")?;
    let mut disk = fs::OpenOptions::new().write(true).open(&raw)?;
    disk.seek(SeekFrom::Start(MIB))?;
    std::io::copy(&mut fs::File::open(&esp)?, &mut disk)?;
    let block = adv_block(&setup.meta)?;
    disk.seek(SeekFrom::Start(meta_start))?;
    disk.write_all(&block)?;
    disk.write_all(&block)?;
    disk.flush()?;
    Ok((raw, cmdline))
}

/// One 256 KiB Talos ADV copy.
fn adv_block(meta: &[(u8, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut b = vec![0u8; ADV_BLOCK];
    b[..4].copy_from_slice(&0x5a4b_3c2du32.to_be_bytes());
    let mut off = 4;
    for (tag, v) in meta {
        if off + 8 + v.len() > ADV_BLOCK - 36 {
            bail!("META values do not fit in the ADV block");
        }
        b[off..off + 4].copy_from_slice(&u32::from(*tag).to_be_bytes());
        b[off + 4..off + 8].copy_from_slice(&(v.len() as u32).to_be_bytes());
        b[off + 8..off + 8 + v.len()].copy_from_slice(v);
        off += 8 + v.len();
    }
    b[ADV_BLOCK - 4..].copy_from_slice(&0xa5b4_c3d2u32.to_be_bytes());
    let sum = Sha256::digest(&b);
    b[ADV_BLOCK - 36..ADV_BLOCK - 4].copy_from_slice(&sum);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_replaces_default() {
        let c = expected_cmdline(&["console=ttyS0", "panic=-1"]);
        assert!(c.starts_with("talos.platform=metal console=ttyS0 init_on_alloc=1"));
        assert!(c.ends_with("module.sig_enforce=1 panic=-1"));
        assert!(!c.contains("tty0"));
    }
}
