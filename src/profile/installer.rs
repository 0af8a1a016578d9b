//! The profile's `[installer]` and `[install]` sections: the installer stick `edgeimage build`
//! makes next to the disk image, and the rules the installer picks the host's disk by.
//!
//! Parsed as strictly as the rest of the profile: unknown fields are errors, and every error
//! names the profile file, the field and what is allowed. Paths are relative to the profile.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use serde::Deserialize;

use super::{check_cmdline, parse_size, Size};
use crate::install::config::{Action, DiskRules, CMDLINE_FLAG};
use crate::talos::{Arch, TalosVersion};

/// `[installer]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstaller {
    kernel: Option<RawKernel>,
    modules: Option<RawModules>,
    cmdline: Option<Vec<String>>,
    binary: Option<PathBuf>,
    trust: Option<PathBuf>,
    wait_seconds: Option<u64>,
    on_success: Option<String>,
    on_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    path: PathBuf,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModules {
    dir: PathBuf,
    load: Vec<String>,
}

/// `[install]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstall {
    #[serde(default)]
    wipe_other_metas: bool,
    disk: Option<RawDisk>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    #[serde(default)]
    transports: Vec<String>,
    min_size: Option<Size>,
    max_size: Option<Size>,
    model: Option<String>,
    #[serde(default)]
    serials: Vec<String>,
    by_id: Option<String>,
}

/// A kernel for the installer, outside the asset source, and its pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFile {
    pub path: PathBuf,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// Kernel modules the installer loads before it looks for disks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModulesSpec {
    /// A `lib/modules/<kver>` tree, or any directory holding `<name>.ko` (`.ko.xz`,
    /// `.ko.zst`, `.ko.gz`) files.
    pub dir: PathBuf,
    /// Module names (`-` and `_` are the same, as for the kernel), in the order given.
    pub load: Vec<String>,
}

/// `[installer]` with `[install]`: everything the installer stick is made from.
#[derive(Clone, Debug)]
pub struct InstallerSpec {
    /// The installer's kernel; `None`: the disk image's kernel asset.
    pub kernel: Option<KernelFile>,
    pub modules: Option<ModulesSpec>,
    /// The installer UKI's command line, ending with [`CMDLINE_FLAG`].
    pub cmdline: String,
    /// The static `edgeimage` that runs as `/init`; `None`: `--installer-binary`, else the
    /// running executable.
    pub binary: Option<PathBuf>,
    /// A trust store directory (`trusted/*.pub`, `revoked`) copied to the stick; `None`: a
    /// store holding only the signing key's public key.
    pub trust: Option<PathBuf>,
    /// How long the installer waits for the payload and the target disk.
    pub wait_seconds: u64,
    pub on_success: Action,
    pub on_failure: Action,
    /// `[install] wipe_other_metas`.
    pub wipe_other_metas: bool,
    /// `[install.disk]`: sizes in bytes.
    pub disk: DiskRules,
}

/// Default of `wait_seconds`.
pub const DEFAULT_WAIT_SECONDS: u64 = 30;
/// Largest `wait_seconds` accepted (an hour).
pub const MAX_WAIT_SECONDS: u64 = 3600;
/// Transports `[install.disk] transports` may name.
pub const TRANSPORTS: [&str; 6] = ["nvme", "sata", "mmc", "virtio", "scsi", "usb"];
const BY_ID_DIR: &str = "/dev/disk/by-id/";

/// Validate `[installer]` and `[install]`; `field_err(field, message)` makes the error that
/// names the profile file.
pub(super) fn parse(
    installer: Option<RawInstaller>,
    install: Option<RawInstall>,
    base: &Path,
    arch: Arch,
    talos: &TalosVersion,
    field_err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Option<InstallerSpec>> {
    let Some(raw) = installer else {
        if install.is_some() {
            return Err(field_err(
                "install",
                "the install rules are for the installer stick, but the profile has no [installer] section; add [installer] or remove [install]".into(),
            ));
        }
        return Ok(None);
    };
    let install = install.unwrap_or_default();

    let kernel = match raw.kernel {
        None => None,
        Some(k) => {
            let sha = k.sha256.to_ascii_lowercase();
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field_err(
                    "installer.kernel.sha256",
                    format!(
                        "{:?} is not a SHA-256 digest: 64 hex digits expected",
                        k.sha256
                    ),
                ));
            }
            Some(KernelFile {
                path: base.join(k.path),
                sha256: sha,
            })
        }
    };

    let modules = match raw.modules {
        None => None,
        Some(m) => {
            let mut load: Vec<String> = Vec::new();
            for (i, name) in m.load.iter().enumerate() {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(field_err(
                        &format!("installer.modules.load[{i}]"),
                        format!(
                            "{name:?} is not a kernel module name: use letters, digits, '_' and '-' (e.g. \"virtio_blk\"), without .ko"
                        ),
                    ));
                }
                let norm = name.replace('-', "_");
                if load.contains(&norm) {
                    return Err(field_err(
                        &format!("installer.modules.load[{i}]"),
                        format!("module {name:?} is listed twice"),
                    ));
                }
                load.push(norm);
            }
            Some(ModulesSpec {
                dir: base.join(m.dir),
                load,
            })
        }
    };

    let mut args = match raw.cmdline {
        Some(a) => a,
        None => talos
            .default_kernel_args(arch)
            .into_iter()
            .filter(|a| a.starts_with("console="))
            .collect(),
    };
    for (i, a) in args.iter().enumerate() {
        if a.is_empty() || a.bytes().any(|b| b.is_ascii_control() || b == b' ') || !a.is_ascii() {
            return Err(field_err(
                &format!("installer.cmdline[{i}]"),
                format!(
                    "{a:?} is not one kernel argument: printable ASCII without spaces expected"
                ),
            ));
        }
    }
    if !args.iter().any(|a| a == CMDLINE_FLAG) {
        args.push(CMDLINE_FLAG.to_string());
    }
    let cmdline = args.join(" ");
    check_cmdline(&cmdline, arch).map_err(|e| field_err("installer.cmdline", e))?;

    let wait_seconds = raw.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if wait_seconds > MAX_WAIT_SECONDS {
        return Err(field_err(
            "installer.wait_seconds",
            format!("{wait_seconds} is more than {MAX_WAIT_SECONDS} seconds; use 0 to {MAX_WAIT_SECONDS}"),
        ));
    }
    let on_success = match raw.on_success.as_deref() {
        None => Action::Reboot,
        Some(s) => parse_action(s).ok_or_else(|| {
            field_err(
                "installer.on_success",
                format!("{s:?} is not an action: use \"reboot\", \"poweroff\" or \"halt\""),
            )
        })?,
    };
    let on_failure = match raw.on_failure.as_deref() {
        None => Action::Poweroff,
        Some(s) => match parse_action(s) {
            Some(Action::Reboot) => {
                return Err(field_err(
                    "installer.on_failure",
                    "\"reboot\" is not allowed: a failed install that reboots boots the stick again and fails again, in a loop; use \"poweroff\" or \"halt\"".into(),
                ))
            }
            Some(a) => a,
            None => {
                return Err(field_err(
                    "installer.on_failure",
                    format!("{s:?} is not an action: use \"poweroff\" or \"halt\""),
                ))
            }
        },
    };

    let disk = parse_disk(install.disk.unwrap_or_default(), field_err)?;
    Ok(Some(InstallerSpec {
        kernel,
        modules,
        cmdline,
        binary: raw.binary.map(|b| base.join(b)),
        trust: raw.trust.map(|t| base.join(t)),
        wait_seconds,
        on_success,
        on_failure,
        wipe_other_metas: install.wipe_other_metas,
        disk,
    }))
}

fn parse_action(s: &str) -> Option<Action> {
    match s {
        "reboot" => Some(Action::Reboot),
        "poweroff" => Some(Action::Poweroff),
        "halt" => Some(Action::Halt),
        _ => None,
    }
}

fn parse_disk(
    raw: RawDisk,
    field_err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<DiskRules> {
    let mut transports: Vec<String> = Vec::new();
    for (i, t) in raw.transports.iter().enumerate() {
        let f = format!("install.disk.transports[{i}]");
        if !TRANSPORTS.contains(&t.as_str()) {
            return Err(field_err(
                &f,
                format!("{t:?} is not a transport: use {}", TRANSPORTS.join(", ")),
            ));
        }
        if transports.contains(t) {
            return Err(field_err(&f, format!("{t:?} is listed twice")));
        }
        transports.push(t.clone());
    }
    let size = |field: &str, s: &Option<Size>| -> Result<Option<u64>> {
        match s {
            None => Ok(None),
            Some(s) => {
                let v = parse_size(s).map_err(|e| field_err(field, e))?;
                if v == 0 {
                    return Err(field_err(
                        field,
                        "a disk size must be more than 0 bytes".into(),
                    ));
                }
                Ok(Some(v))
            }
        }
    };
    let min_size = size("install.disk.min_size", &raw.min_size)?;
    let max_size = size("install.disk.max_size", &raw.max_size)?;
    if let (Some(lo), Some(hi)) = (min_size, max_size) {
        if lo > hi {
            return Err(field_err(
                "install.disk.min_size",
                format!("{lo} bytes is more than max_size ({hi} bytes): no disk could match"),
            ));
        }
    }
    let text_ok = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if let Some(m) = &raw.model {
        if !text_ok(m) {
            return Err(field_err(
                "install.disk.model",
                format!("{m:?} is not a model pattern: 1-256 characters without control characters (`*` and `?` match any text and any one character)"),
            ));
        }
    }
    for (i, s) in raw.serials.iter().enumerate() {
        if !text_ok(s) || s.trim() != s {
            return Err(field_err(
                &format!("install.disk.serials[{i}]"),
                format!("{s:?} is not a serial number: 1-256 characters, no control characters, no leading or trailing spaces"),
            ));
        }
    }
    if let Some(b) = &raw.by_id {
        let name = b.strip_prefix(BY_ID_DIR).unwrap_or(b);
        if !text_ok(name) || name.contains('/') || name == "." || name == ".." {
            return Err(field_err(
                "install.disk.by_id",
                format!("{b:?} is not a link under {BY_ID_DIR}: give its name (e.g. \"nvme-Samsung_SSD_980_S64DNX0R123456\") or its full path"),
            ));
        }
    }
    Ok(DiskRules {
        transports,
        min_size,
        max_size,
        model: raw.model,
        serials: raw.serials,
        by_id: raw.by_id,
    })
}

/// `anyhow!` with the profile path, for callers outside the profile parser.
pub fn profile_error(profile: &Path, field: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("profile {}: field `{field}`: {msg}", profile.display())
}

#[cfg(test)]
mod tests {
    use crate::install::config::Action;
    use crate::profile::Profile;
    use std::path::Path;

    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn profile(arch: &str, tables: &str) -> String {
        format!(
            "name = \"t\"\narch = \"{arch}\"\ntalos_version = \"v1.12.5\"\ndisk_size = \"3GiB\"\n\
             [assets]\nkernel = {{ sha256 = \"{ZERO}\" }}\ninitramfs = {{ sha256 = \"{ZERO}\" }}\n\
             systemd_boot = {{ sha256 = \"{ZERO}\" }}\nsystemd_stub = {{ sha256 = \"{ZERO}\" }}\n{tables}"
        )
    }

    fn parse(tables: &str) -> Result<Profile, String> {
        Profile::parse(Path::new("p/x.toml"), profile("amd64", tables).as_bytes())
            .map_err(|e| format!("{e:#}"))
    }

    fn err(tables: &str) -> String {
        parse(tables).unwrap_err()
    }

    #[test]
    fn full_sections_parse() {
        let p = parse(&format!(
            "[installer]\nkernel = {{ path = \"inst/vmlinuz\", sha256 = \"{}\" }}\n\
             modules = {{ dir = \"mods\", load = [\"virtio-blk\", \"nvme\"] }}\n\
             cmdline = [\"console=ttyS0\"]\nbinary = \"bin/edgeimage\"\ntrust = \"signing/\"\n\
             wait_seconds = 5\non_success = \"halt\"\non_failure = \"halt\"\n\
             [install]\nwipe_other_metas = true\n\
             [install.disk]\ntransports = [\"nvme\", \"sata\"]\nmin_size = \"8GiB\"\nmax_size = 4398046511104\n\
             model = \"Samsung*\"\nserials = [\"S3Z\"]\nby_id = \"/dev/disk/by-id/nvme-x\"\n",
            "AB".repeat(32)
        ))
        .unwrap();
        let i = p.installer.unwrap();
        let k = i.kernel.unwrap();
        assert_eq!(k.path, Path::new("p/inst/vmlinuz"));
        assert_eq!(k.sha256, "ab".repeat(32));
        let m = i.modules.unwrap();
        assert_eq!(m.dir, Path::new("p/mods"));
        assert_eq!(m.load, ["virtio_blk", "nvme"]);
        assert_eq!(i.cmdline, "console=ttyS0 edgeimage.install");
        assert_eq!(i.binary.as_deref(), Some(Path::new("p/bin/edgeimage")));
        assert_eq!(i.trust.as_deref(), Some(Path::new("p/signing/")));
        assert_eq!(i.wait_seconds, 5);
        assert_eq!((i.on_success, i.on_failure), (Action::Halt, Action::Halt));
        assert!(i.wipe_other_metas);
        assert_eq!(i.disk.transports, ["nvme", "sata"]);
        assert_eq!(i.disk.min_size, Some(8 << 30));
        assert_eq!(i.disk.max_size, Some(4 << 40));
        assert_eq!(i.disk.model.as_deref(), Some("Samsung*"));
        assert_eq!(i.disk.serials, ["S3Z"]);
        assert_eq!(i.disk.by_id.as_deref(), Some("/dev/disk/by-id/nvme-x"));
    }

    #[test]
    fn defaults() {
        let i = parse("[installer]\n").unwrap().installer.unwrap();
        assert_eq!(i.cmdline, "console=tty0 edgeimage.install");
        assert_eq!(i.wait_seconds, super::DEFAULT_WAIT_SECONDS);
        assert_eq!(
            (i.on_success, i.on_failure),
            (Action::Reboot, Action::Poweroff)
        );
        assert!(!i.wipe_other_metas);
        assert_eq!(i.disk, Default::default());
        assert!(i.kernel.is_none() && i.modules.is_none() && i.binary.is_none());
        let arm = Profile::parse(
            Path::new("x.toml"),
            profile("arm64", "[installer]\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(
            arm.installer.unwrap().cmdline,
            "console=ttyAMA0 console=tty0 edgeimage.install"
        );
        // The flag given by hand is not repeated; no installer without the section.
        let i = parse("[installer]\ncmdline = [\"edgeimage.install\", \"quiet\"]\n")
            .unwrap()
            .installer
            .unwrap();
        assert_eq!(i.cmdline, "edgeimage.install quiet");
        assert!(parse("").unwrap().installer.is_none());
    }

    #[test]
    fn refusals_name_the_field() {
        for (tables, want) in [
            ("[installer]\ncolour = 1\n", "unknown field `colour`"),
            (
                "[install]\nwipe_other_metas = true\n",
                "field `install`: the install rules",
            ),
            (
                "[installer]\n[install.disk]\nsize = 1\n",
                "unknown field `size`",
            ),
            (
                "[installer]\non_failure = \"reboot\"\n",
                "`installer.on_failure`: \"reboot\" is not allowed",
            ),
            (
                "[installer]\non_failure = \"explode\"\n",
                "`installer.on_failure`: \"explode\" is not an action",
            ),
            (
                "[installer]\non_success = \"sleep\"\n",
                "`installer.on_success`: \"sleep\"",
            ),
            (
                "[installer]\nwait_seconds = 7200\n",
                "`installer.wait_seconds`",
            ),
            (
                "[installer]\ncmdline = [\"a b\"]\n",
                "`installer.cmdline[0]`",
            ),
            (
                "[installer]\nkernel = { path = \"k\", sha256 = \"12\" }\n",
                "`installer.kernel.sha256`",
            ),
            (
                "[installer]\nkernel = { path = \"k\" }\n",
                "missing field `sha256`",
            ),
            (
                "[installer]\nmodules = { dir = \"m\", load = [\"x.ko\"] }\n",
                "`installer.modules.load[0]`",
            ),
            (
                "[installer]\nmodules = { dir = \"m\", load = [\"a-b\", \"a_b\"] }\n",
                "`installer.modules.load[1]`: module \"a_b\" is listed twice",
            ),
            (
                "[installer]\n[install.disk]\ntransports = [\"floppy\"]\n",
                "`install.disk.transports[0]`",
            ),
            (
                "[installer]\n[install.disk]\ntransports = [\"usb\", \"usb\"]\n",
                "listed twice",
            ),
            (
                "[installer]\n[install.disk]\nmin_size = \"8GB\"\n",
                "`install.disk.min_size`: unit \"GB\"",
            ),
            (
                "[installer]\n[install.disk]\nmax_size = 0\n",
                "`install.disk.max_size`",
            ),
            (
                "[installer]\n[install.disk]\nmin_size = \"2GiB\"\nmax_size = \"1GiB\"\n",
                "more than max_size",
            ),
            (
                "[installer]\n[install.disk]\nmodel = \"\"\n",
                "`install.disk.model`",
            ),
            (
                "[installer]\n[install.disk]\nserials = [\"S3Z \"]\n",
                "`install.disk.serials[0]`",
            ),
            (
                "[installer]\n[install.disk]\nby_id = \"../sda\"\n",
                "`install.disk.by_id`",
            ),
        ] {
            let e = err(tables);
            assert!(e.contains("p/x.toml") && e.contains(want), "{tables}: {e}");
        }
        let long = format!("[installer]\ncmdline = [\"x={}\"]\n", "a".repeat(4100));
        assert!(err(&long).contains("`installer.cmdline`: the kernel command line"));
    }
}
