//! Booting a disk image under OVMF in QEMU with the serial console in a file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use edgeimage::talos::Arch;

use super::fetch::Root;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

pub struct Boot {
    pub serial: PathBuf,
    /// The serial log as text: `\r` removed, escape sequences stripped.
    pub log: String,
    pub wall: Duration,
    pub timed_out: bool,
    pub status: String,
    pub stderr: String,
}

/// Whether KVM may be tried at all; `Err` says why not.
pub fn kvm_candidate() -> Result<(), String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is the kvm_pvm nested hypervisor, which cannot run OVMF".into());
    }
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("/dev/kvm not usable: {e}")),
    }
}

/// A disk attached to the VM.
pub struct Drive<'a> {
    pub file: &'a Path,
    pub bus: Bus,
    /// Writes go to a temporary overlay (the file is not changed).
    pub snapshot: bool,
    /// The serial number the guest sees (virtio and USB).
    pub serial: Option<&'a str>,
    /// The logical (and physical) block size the guest sees (virtio): 512 or 4096.
    pub block_size: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Virtio,
    /// A USB mass-storage stick on an xHCI controller (booted first).
    Usb,
}

/// Boots `disk` (read-only: snapshot=on; `block_size`-byte logical blocks) and waits for QEMU
/// to end or `timeout`. `tag` names the run's files (`serial-<tag>-<accel>.log`).
pub fn boot(
    root: &Root,
    run_dir: &Path,
    disk: &Path,
    tag: &str,
    accel: Accel,
    timeout: Duration,
    block_size: u64,
) -> Result<Boot> {
    let drive = Drive {
        file: disk,
        bus: Bus::Virtio,
        snapshot: true,
        serial: None,
        block_size,
    };
    boot_drives(root, run_dir, &[drive], tag, accel, timeout)
}

/// Boots with `drives` attached and waits for QEMU to end or `timeout`.
pub fn boot_drives(
    root: &Root,
    run_dir: &Path,
    drives: &[Drive],
    tag: &str,
    accel: Accel,
    timeout: Duration,
) -> Result<Boot> {
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let (code, vars_template) = root.firmware();
    let vars = run_dir.join(format!("VARS-{tag}-{}.fd", accel.name()));
    fs::copy(&vars_template, &vars)
        .with_context(|| format!("copying {} to {}", vars_template.display(), vars.display()))?;
    let serial = run_dir.join(format!("serial-{tag}-{}.log", accel.name()));
    let _ = fs::remove_file(&serial);
    let stderr_path = run_dir.join(format!("qemu-{tag}-{}.stderr", accel.name()));
    let stderr_file = fs::File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;

    let mut cmd = Command::new(root.qemu());
    cmd.env("LD_LIBRARY_PATH", root.ld_library_path())
        .arg("-L")
        .arg(root.qemu_data());
    match root.arch {
        // q35 with OVMF; 256 MiB (128 MiB resets after systemd-boot).
        Arch::Amd64 => cmd.args(["-machine", "q35", "-m", "256"]),
        // The virt board with AAVMF; a Cortex-A57 under TCG; the arm64 kernel and its UKI are
        // larger.
        Arch::Arm64 => cmd.args(["-machine", "virt", "-cpu", "cortex-a57", "-m", "512"]),
    };
    cmd.args(["-smp", "1", "-accel", accel.name()])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            qemu_path(&code)
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            qemu_path(&vars)
        ))
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file);
    if drives.iter().any(|d| d.bus == Bus::Usb) {
        cmd.args(["-device", "qemu-xhci,id=xhci"]);
    }
    for (i, d) in drives.iter().enumerate() {
        cmd.arg("-drive").arg(format!(
            "if=none,id=d{i},format=raw,file={}{}",
            qemu_path(d.file),
            if d.snapshot { ",snapshot=on" } else { "" }
        ));
        let serial = d.serial.map(|s| format!(",serial={s}")).unwrap_or_default();
        let blocks = if d.block_size == 512 {
            String::new()
        } else {
            format!(
                ",logical_block_size={0},physical_block_size={0}",
                d.block_size
            )
        };
        cmd.arg("-device").arg(match d.bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=d{i}{serial}{blocks}"),
            Bus::Usb => format!("usb-storage,bus=xhci.0,drive=d{i},bootindex=0{serial}"),
        });
    }
    if accel == Accel::Kvm {
        cmd.args(["-cpu", "host"]);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", root.qemu().display()))?;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for QEMU")? {
            break s.to_string();
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = start.elapsed();
    let raw = fs::read(&serial).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    Ok(Boot {
        serial,
        log: clean(&raw),
        wall,
        timed_out,
        status,
        stderr,
    })
}

/// QEMU's -drive takes commas as separators: double them in file names.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Serial bytes to text: drop `\r`, ANSI/VT escape sequences and other control bytes.
pub fn clean(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == 0x1b {
            // ESC [ params final  |  ESC x
            i += 1;
            if raw.get(i) == Some(&b'[') {
                // CSI: parameters, then a final byte 0x40..=0x7e.
                i += 1;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
            } else {
                // ESC, intermediate bytes 0x20..=0x2f (e.g. `ESC ( B`), final byte.
                while i < raw.len() && (0x20..=0x2f).contains(&raw[i]) {
                    i += 1;
                }
            }
            i += 1;
            continue;
        }
        if c == b'\n' || c == b'\t' || c >= 0x20 {
            out.push(c);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_escapes_and_cr() {
        let s = clean(b"\x1b[2J\x1b[01;01HBdsDxe\r\nEDGEIMAGE-E2E done\r\n\x1b(B");
        assert_eq!(s, "BdsDxe\nEDGEIMAGE-E2E done\n");
    }
}
