//! What depends on the Talos version and architecture: supported range, default ESP size,
//! default kernel arguments, and Talos's rule for merging extra kernel arguments.
//!
//! Facts from Talos's `quirks.go` and `pkg/imager` (see the README's "Formats" section). Every
//! version-dependent value lives here, so a new Talos release is a change in one place.

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Target architecture of the media.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// PE/COFF `Machine` value of EFI binaries for this architecture.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    }

    /// The removable-media boot path name firmware looks for (`EFI/BOOT/BOOT<X>.EFI`).
    pub fn efi_boot_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "BOOTX64.efi",
            Arch::Arm64 => "BOOTAA64.efi",
        }
    }

    pub fn from_pe_machine(m: u16) -> Option<Arch> {
        match m {
            0x8664 => Some(Arch::Amd64),
            0xaa64 => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            other => bail!("unsupported architecture {other:?} (expected \"amd64\" or \"arm64\")"),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Talos's version-dependent behaviour as its `quirks.go` names it (the functions of
/// `pkg/machinery/imager/quirks/quirks.go`, keyed by the version the image is for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quirks {
    /// `SupportsIMA`: before v1.11.0 (`ima_template=ima-ng ima_appraise=fix ima_hash=sha512`).
    pub ima: bool,
    /// `SupportsSELinux`: from v1.10.0 (`selinux=1`).
    pub selinux: bool,
    /// `SupportsDisablingModuleSignatureVerification`: from v1.12.0 (`module.sig_enforce=1`).
    pub module_sig_enforce: bool,
    /// `ProcMemOverrideNever`: from v1.13.0 (`proc_mem.force_override=never`).
    pub proc_mem_override_never: bool,
    /// `DropInitOnAllocInArgs`: from v1.14.0 (`init_on_alloc=1` no longer a default).
    pub drop_init_on_alloc: bool,
    /// `NvmeCoreIoTimeoutAWSOnly`: from v1.14.0 (`nvme_core.io_timeout=4294967295` only on
    /// AWS, not on metal).
    pub nvme_io_timeout_aws_only: bool,
    /// `SupportsUKIProfiles`: from v1.10.0 (multi-profile UKIs).
    pub uki_profiles: bool,
}

/// A boot profile of a multi-profile UKI (see [`TalosVersion::boot_profiles`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootProfile {
    pub id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<&'static str>,
    /// Its own command line, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// ID of the profile that wipes STATE and EPHEMERAL and boots into maintenance mode.
pub const RESET_PROFILE_ID: &str = "reset-maintenance";
/// The argument the reset profile adds to the command line.
pub const RESET_PROFILE_ARG: &str = "talos.experimental.wipe=system:EPHEMERAL,STATE";

/// Oldest and newest supported minor versions of Talos 1.x.
pub const MIN_MINOR: u32 = 8;
pub const MAX_MINOR: u32 = 14;

/// A Talos version as written in the profile (`v1.12.5`, `v1.12.5-stackit.v1.7.1`), with the
/// numeric core that version rules use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TalosVersion {
    /// As written (with a leading `v`): used for file names and os-release.
    pub tag: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl TalosVersion {
    /// Parse `vMAJOR.MINOR.PATCH[-pre][+build]` and check it is a supported release.
    pub fn parse(s: &str) -> Result<Self> {
        let allowed = format!("v1.{MIN_MINOR}.0 to v1.{MAX_MINOR}.x, e.g. \"v1.12.5\"");
        let Some(rest) = s.strip_prefix('v') else {
            bail!("{s:?} is not a Talos version: expected {allowed}");
        };
        let core = rest.split(['-', '+']).next().unwrap_or_default();
        let nums: Vec<&str> = core.split('.').collect();
        let parsed: Option<Vec<u32>> = nums.iter().map(|n| n.parse().ok()).collect();
        let (major, minor, patch) = match parsed.as_deref() {
            Some([a, b, c]) if nums.iter().all(|n| !n.is_empty()) => (*a, *b, *c),
            _ => bail!("{s:?} is not a Talos version: expected {allowed}"),
        };
        if s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b))
        {
            bail!("{s:?} has characters a Talos version cannot have: expected {allowed}");
        }
        if major != 1 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
            bail!("Talos {s} is not supported: supported are {allowed}");
        }
        Ok(Self {
            tag: s.to_string(),
            major,
            minor,
            patch,
        })
    }

    /// Default EFI system partition size (Talos ≥ 1.11: 2101 MiB; earlier: 1101 MiB).
    pub fn default_esp_size(&self) -> u64 {
        if self.minor >= 11 {
            2101 << 20
        } else {
            1101 << 20
        }
    }

    /// Talos's default kernel command line for this version and architecture, in the order
    /// Talos's imager assembles it (`pkg/imager/imager.go`, `(*Imager).buildCmdline`):
    /// `talos.platform=metal`, the metal platform's console arguments
    /// (`platform/metal/metal.go`, `(*Metal).KernelArgs`: `console=tty0` on amd64,
    /// `console=ttyAMA0 console=tty0` on arm64), then `kernel.DefaultArgs(quirks)`
    /// (`pkg/machinery/kernel/kernel.go`), whose entries depend on quirks of the *target*
    /// version (`pkg/machinery/imager/quirks/quirks.go`), see [`Quirks`].
    pub fn default_kernel_args(&self, arch: Arch) -> Vec<String> {
        let q = self.quirks();
        let mut args = vec!["talos.platform=metal"];
        match arch {
            Arch::Amd64 => args.push("console=tty0"),
            Arch::Arm64 => args.extend(["console=ttyAMA0", "console=tty0"]),
        }
        // kernel.DefaultArgs, entry by entry.
        if !q.drop_init_on_alloc {
            args.push("init_on_alloc=1");
        }
        args.extend(["slab_nomerge", "pti=on", "consoleblank=0"]);
        if !q.nvme_io_timeout_aws_only {
            args.push("nvme_core.io_timeout=4294967295");
        }
        args.push("printk.devkmsg=on");
        if q.ima {
            args.extend(["ima_template=ima-ng", "ima_appraise=fix", "ima_hash=sha512"]);
        }
        if q.selinux {
            args.push("selinux=1");
        }
        if q.module_sig_enforce {
            args.push("module.sig_enforce=1");
        }
        if q.proc_mem_override_never {
            args.push("proc_mem.force_override=never");
        }
        args.into_iter().map(str::to_string).collect()
    }

    /// The quirks of this (target) version that edgeimage follows. Talos's quirks compare
    /// `major.minor.patch` only; every threshold below is a `.0` release, so the minor number
    /// decides.
    pub fn quirks(&self) -> Quirks {
        let m = self.minor;
        Quirks {
            ima: m <= 10,
            selinux: m >= 10,
            module_sig_enforce: m >= 12,
            proc_mem_override_never: m >= 13,
            drop_init_on_alloc: m >= 14,
            nvme_io_timeout_aws_only: m >= 14,
            uki_profiles: m >= 10,
        }
    }

    /// The boot profiles of a disk image's UKI for this version, with the command line each
    /// boots (`None`: the base one). From v1.10.0 (`SupportsUKIProfiles`), Talos's imager
    /// (`pkg/imager/imager.go`, `buildUKI`) adds `main` (no sections of its own) and
    /// `reset-maintenance`, titled "Reset to maintenance mode", booting the base command line
    /// plus `talos.experimental.wipe=system:EPHEMERAL,STATE`; before, a UKI has no profiles.
    pub fn boot_profiles(&self, cmdline: &str) -> Vec<BootProfile> {
        if !self.quirks().uki_profiles {
            return Vec::new();
        }
        vec![
            BootProfile {
                id: "main",
                title: None,
                cmdline: None,
            },
            BootProfile {
                id: RESET_PROFILE_ID,
                title: Some("Reset to maintenance mode"),
                cmdline: Some(format!("{cmdline} {RESET_PROFILE_ARG}")),
            },
        ]
    }

    /// Mode of `usr/local/etc/talos/config.yaml` in the `embedded-config` extension
    /// (`pkg/imager/embed.go`, `BuildEmbeddedConfigExtension`: the tar header's `Mode` is
    /// `0o000` up to v1.12.x and `0o400` from v1.13.0 on).
    pub fn embedded_config_mode(&self) -> u32 {
        if self.minor >= 13 {
            0o400
        } else {
            0o000
        }
    }

    /// The os-release text Talos puts into the UKI's `.osrel` section.
    pub fn os_release(&self) -> String {
        format!(
            "NAME=\"Talos\"\nID=talos\nVERSION_ID={v}\nPRETTY_NAME=\"Talos ({v})\"\n\
             HOME_URL=\"https://www.talos.dev/\"\n\
             BUG_REPORT_URL=\"https://github.com/siderolabs/talos/issues\"\n\
             VENDOR_NAME=\"Sidero Labs\"\nVENDOR_URL=\"https://www.siderolabs.com/\"\n",
            v = self.tag
        )
    }
}

impl fmt::Display for TalosVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag)
    }
}

impl Arch {
    /// The longest kernel command line the kernel keeps whole, in bytes: `COMMAND_LINE_SIZE`
    /// minus its NUL. Longer command lines are cut off silently (x86: the boot protocol's
    /// `cmdline_size` field is `COMMAND_LINE_SIZE - 1`; arm64: `early_init_dt_scan_chosen`
    /// copies at most `COMMAND_LINE_SIZE` bytes with `strscpy`), so Talos would see half a
    /// `talos.config.inline=` value and fail to decode it.
    ///
    /// - x86: `COMMAND_LINE_SIZE` is 2048 (`arch/x86/include/asm/setup.h`);
    /// - arm64: 2048 (`arch/arm64/include/uapi/asm/setup.h`, read in the Linux 6.1, 6.12 and
    ///   7.2 headers: every kernel Talos v1.8 to v1.14 ships lies between them).
    pub fn max_cmdline(self) -> usize {
        match self {
            Arch::Amd64 => 2047,
            Arch::Arm64 => 2047,
        }
    }
}

/// A kernel command line as Talos models it: keys in first-seen order, each with its values
/// (`""` for a bare flag). Printing groups a key's values at the key's position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    params: Vec<(String, Vec<String>)>,
}

fn split_arg(arg: &str) -> (&str, &str) {
    arg.split_once('=').unwrap_or((arg, ""))
}

impl Cmdline {
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Self {
        let mut c = Self::default();
        for a in args {
            for field in a.as_ref().split_whitespace() {
                let (k, v) = split_arg(field);
                c.append(k, v);
            }
        }
        c
    }

    fn append(&mut self, key: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some((_, vals)) => vals.push(value.to_string()),
            None => self.params.push((key.to_string(), vec![value.to_string()])),
        }
    }

    /// Apply extra arguments with Talos's rules (the imager's `AppendAll` with
    /// `WithOverwriteArgs("console")`, `WithOverwriteArgs("talos.platform")` and
    /// `WithDeleteNegatedArgs()`), in order:
    /// - `-name` removes every value of `name`; `-name=value` removes that one value;
    /// - the first `console=`/`talos.platform=` among the extras replaces the existing values
    ///   (keeping the key's position); later ones add to it;
    /// - any other argument adds a value to its key (a new key goes at the end).
    pub fn apply_extra<S: AsRef<str>>(&mut self, extra: &[S]) {
        const OVERWRITE: [&str; 2] = ["console", "talos.platform"];
        let mut overwritten: Vec<String> = Vec::new();
        for a in extra {
            for field in a.as_ref().split_whitespace() {
                if let Some(neg) = field.strip_prefix('-') {
                    let (k, v) = split_arg(neg);
                    let whole = !neg.contains('=');
                    if let Some(i) = self.params.iter().position(|(pk, _)| pk == k) {
                        if whole {
                            self.params.remove(i);
                        } else {
                            self.params[i].1.retain(|x| x != v);
                            if self.params[i].1.is_empty() {
                                self.params.remove(i);
                            }
                        }
                    }
                    continue;
                }
                let (k, v) = split_arg(field);
                if OVERWRITE.contains(&k) && !overwritten.iter().any(|o| o == k) {
                    overwritten.push(k.to_string());
                    if let Some((_, vals)) = self.params.iter_mut().find(|(pk, _)| pk == k) {
                        vals.clear();
                    }
                }
                self.append(k, v);
            }
        }
    }

    /// Every value of `key`.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

impl fmt::Display for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, vals) in &self.params {
            for v in vals {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                if v.is_empty() {
                    f.write_str(k)?;
                } else {
                    write!(f, "{k}={v}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(initial: &str, extra: &[&str]) -> String {
        let mut c = Cmdline::parse(&[initial]);
        c.apply_extra(extra);
        c.to_string()
    }

    /// The cases of Talos's own cmdline tests that use the imager's options.
    #[test]
    fn talos_merge_rules() {
        let base = "console=tty0 console=ttyS0 root=/dev/sdb";
        assert_eq!(
            applied(base, &["console=tty0", "console=ttyS1,115200", "nogui"]),
            "console=tty0 console=ttyS1,115200 root=/dev/sdb nogui"
        );
        assert_eq!(applied(base, &["-console", "nogui"]), "root=/dev/sdb nogui");
        assert_eq!(
            applied(
                "console=tty0 console=ttyS0,9600 root=/dev/sdb",
                &["-console=ttyS0,9600", "nogui"]
            ),
            "console=tty0 root=/dev/sdb nogui"
        );
        assert_eq!(
            applied(base, &["-console=tty0", "nogui"]),
            "console=ttyS0 root=/dev/sdb nogui"
        );
        assert_eq!(
            applied(base, &["-console", "nogui", "console=ttyAMA0"]),
            "root=/dev/sdb nogui console=ttyAMA0"
        );
        assert_eq!(
            applied(base, &["-console=tty0", "nogui", "console=ttyAMA0"]),
            "console=ttyAMA0 root=/dev/sdb nogui"
        );
        assert_eq!(
            applied(
                "ip=dhcp root=/dev/sdc",
                &["root=/dev/sda", "this=that=those"]
            ),
            "ip=dhcp root=/dev/sdc root=/dev/sda this=that=those"
        );
    }

    /// The whole default command line for every supported minor version and both
    /// architectures, as Talos's imager writes it for a metal disk image: the expected strings
    /// of `pkg/imager/imager_test.go` (release-1.14, targets 1.8.0, 1.10.1, 1.11.0, 1.13.0,
    /// 1.14.0), and for v1.9 and v1.12 `kernel.DefaultArgs` read at v1.9.6 and v1.12.5.
    /// `proc_mem.force_override=never` starts at v1.13.0 (`ProcMemOverrideNever`), not v1.12.
    #[test]
    fn defaults_by_version() {
        let v18 = "init_on_alloc=1 slab_nomerge pti=on consoleblank=0 \
                   nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng \
                   ima_appraise=fix ima_hash=sha512";
        let v11 = "init_on_alloc=1 slab_nomerge pti=on consoleblank=0 \
                   nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1";
        let table = [
            ("v1.8.4", v18.to_string()),
            ("v1.9.6", v18.to_string()),
            ("v1.10.1", format!("{v18} selinux=1")),
            ("v1.11.0", v11.to_string()),
            ("v1.12.5", format!("{v11} module.sig_enforce=1")),
            (
                "v1.13.0",
                format!("{v11} module.sig_enforce=1 proc_mem.force_override=never"),
            ),
            (
                "v1.14.0",
                "slab_nomerge pti=on consoleblank=0 printk.devkmsg=on selinux=1 \
                 module.sig_enforce=1 proc_mem.force_override=never"
                    .to_string(),
            ),
        ];
        for (tag, defaults) in table {
            let v = TalosVersion::parse(tag).unwrap();
            for (arch, console) in [
                (Arch::Amd64, "console=tty0"),
                (Arch::Arm64, "console=ttyAMA0 console=tty0"),
            ] {
                assert_eq!(
                    Cmdline::parse(&v.default_kernel_args(arch)).to_string(),
                    format!("talos.platform=metal {console} {defaults}"),
                    "{tag} {arch}"
                );
            }
        }
        // A suffix does not change the quirks (Talos compares major.minor.patch).
        assert_eq!(
            TalosVersion::parse("v1.12.5-stackit.v1.7.1")
                .unwrap()
                .default_kernel_args(Arch::Amd64),
            TalosVersion::parse("v1.12.0")
                .unwrap()
                .default_kernel_args(Arch::Amd64)
        );
        let v = TalosVersion::parse("v1.10.3").unwrap();
        assert_eq!(v.default_esp_size(), 1101 << 20);
        assert_eq!(
            TalosVersion::parse("v1.11.0").unwrap().default_esp_size(),
            2101 << 20
        );
    }

    #[test]
    fn version_parsing() {
        let v = TalosVersion::parse("v1.12.5-stackit.v1.7.1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 12, 5));
        assert_eq!(v.tag, "v1.12.5-stackit.v1.7.1");
        for bad in [
            "1.12.5",
            "v1.12",
            "v1.7.0",
            "v2.0.0",
            "v1.15.0",
            "v1.12.x",
            "v1..3",
            "v1.12.5 x",
        ] {
            let e = TalosVersion::parse(bad).unwrap_err().to_string();
            assert!(e.contains("v1.8.0 to v1.14.x"), "{bad}: {e}");
        }
    }
}
