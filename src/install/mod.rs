//! The offline installer: `edgeimage install`, also run as `/init` of the installer stick's
//! initramfs. It proves the payload's signature, picks the host's disk by the profile's rules,
//! writes and verifies it with the flash engine, records the result on the stick, and
//! reboots into Talos.
//!
//! [`config`] is what the build hands the installer, [`init`] what being PID 1 needs
//! (mounts, modules, power), [`rules`] which disk is the target, [`run`] the flow.

pub mod config;
pub mod init;
pub mod rules;
pub mod run;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use config::{Action, InstallerConfig};

/// Read the installer configuration.
pub fn load_config(path: &Path) -> anyhow::Result<InstallerConfig> {
    use anyhow::Context;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the installer configuration {}", path.display()))?;
    let c: InstallerConfig = serde_json::from_slice(&bytes)
        .with_context(|| format!("the installer configuration {}", path.display()))?;
    if c.format != config::FORMAT {
        anyhow::bail!(
            "{}: format {:?}, this edgeimage reads {:?}",
            path.display(),
            c.format,
            config::FORMAT
        );
    }
    if c.on_failure == Action::Reboot {
        anyhow::bail!(
            "{}: on_failure = reboot would loop; use poweroff or halt",
            path.display()
        );
    }
    Ok(c)
}

/// The installer as PID 1: mount what it needs, load its modules, install, show the verdict,
/// then reboot, power off or halt as the configuration says. Never returns.
pub fn init_main() -> ! {
    let problems = init::mount_basics();
    eprintln!("\nedgeimage {} installer", env!("CARGO_PKG_VERSION"));
    for p in problems {
        eprintln!("edgeimage install: warning: {p}");
    }
    let cfg = match load_config(Path::new(config::CONFIG_PATH)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgeimage install: RESULT failed: {e:#}");
            init::finish(Action::Halt)
        }
    };
    for p in init::load_modules(Path::new(config::MODULES_DIR), &cfg.modules) {
        eprintln!("edgeimage install: warning: {p}");
    }
    let opts = run::InstallOptions {
        config: cfg.clone(),
        payload: run::Payload::Stick,
        records: None,
        system_root: PathBuf::from("/"),
        work: PathBuf::from("/run/edgeimage"),
        style: crate::flash::ui::Style::choose(false, false),
    };
    let report = run::run(&opts, Arc::new(AtomicBool::new(false)));
    let action = if report.ok {
        cfg.on_success
    } else {
        cfg.on_failure
    };
    eprintln!(
        "edgeimage install: RESULT {}; {}",
        report.record.result,
        match action {
            Action::Reboot => "rebooting",
            Action::Poweroff => "powering off",
            Action::Halt => "halted: switch the machine off",
        }
    );
    init::finish(action)
}
