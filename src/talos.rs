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

    /// Talos's default kernel command line for this version and architecture:
    /// `talos.platform=metal`, the console arguments, then the hardening defaults.
    pub fn default_kernel_args(&self, arch: Arch) -> Vec<String> {
        let mut args = vec!["talos.platform=metal".to_string()];
        match arch {
            Arch::Amd64 => args.push("console=tty0".into()),
            Arch::Arm64 => args.extend(["console=ttyAMA0".into(), "console=tty0".into()]),
        }
        // The hardening defaults, as Talos's kernel.DefaultArgs changed over releases.
        let m = self.minor;
        let mut defaults: Vec<&str> = Vec::new();
        if m <= 13 {
            defaults.push("init_on_alloc=1");
        }
        defaults.extend(["slab_nomerge", "pti=on", "consoleblank=0"]);
        if m <= 13 {
            defaults.push("nvme_core.io_timeout=4294967295");
        }
        defaults.push("printk.devkmsg=on");
        if m <= 10 {
            defaults.extend(["ima_template=ima-ng", "ima_appraise=fix", "ima_hash=sha512"]);
        }
        if m >= 10 {
            defaults.push("selinux=1");
        }
        if m >= 12 {
            defaults.extend(["module.sig_enforce=1", "proc_mem.force_override=never"]);
        }
        args.extend(defaults.iter().map(|s| s.to_string()));
        args
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

/// Longest kernel command line accepted (the kernel's buffer is 4 KiB including the NUL).
pub const MAX_CMDLINE: usize = 4095;

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

    #[test]
    fn defaults_by_version() {
        let v = TalosVersion::parse("v1.12.5").unwrap();
        assert_eq!(
            Cmdline::parse(&v.default_kernel_args(Arch::Amd64)).to_string(),
            "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 \
             nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 module.sig_enforce=1 \
             proc_mem.force_override=never"
        );
        let v = TalosVersion::parse("v1.14.0").unwrap();
        assert_eq!(
            Cmdline::parse(&v.default_kernel_args(Arch::Arm64)).to_string(),
            "talos.platform=metal console=ttyAMA0 console=tty0 slab_nomerge pti=on consoleblank=0 \
             printk.devkmsg=on selinux=1 module.sig_enforce=1 proc_mem.force_override=never"
        );
        let v = TalosVersion::parse("v1.10.3").unwrap();
        assert!(v
            .default_kernel_args(Arch::Amd64)
            .contains(&"ima_hash=sha512".to_string()));
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
