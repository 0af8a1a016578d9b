//! What the build hands the installer: `/etc/edgeimage/installer.json` in the installer's
//! initramfs (written by `edgeimage build`, read by `edgeimage install` at boot), and the names
//! of the partitions on the installer stick.

use serde::{Deserialize, Serialize};

/// Path of the configuration inside the installer's initramfs.
pub const CONFIG_PATH: &str = "/etc/edgeimage/installer.json";
/// Directory of the kernel modules inside the installer's initramfs (`<name>.ko`, loaded in
/// the configuration's order).
pub const MODULES_DIR: &str = "/lib/modules";
/// GPT partition name of the payload partition (FAT, volume label [`PAYLOAD_LABEL`]).
pub const PAYLOAD_PARTNAME: &str = "edgeimage-payload";
pub const PAYLOAD_LABEL: &str = "PAYLOAD";
/// GPT partition name of the records partition (FAT, volume label [`RECORDS_LABEL`]); install
/// records are written to `records/` in it.
pub const RECORDS_PARTNAME: &str = "edgeimage-records";
pub const RECORDS_LABEL: &str = "RECORDS";
/// Directory of the trust store inside the payload partition (`trust/trusted/*.pub`,
/// `trust/revoked`).
pub const PAYLOAD_TRUST_DIR: &str = "trust";
/// Kernel command-line word that starts the installer when `edgeimage` runs as `/init`.
pub const CMDLINE_FLAG: &str = "edgeimage.install";

pub const FORMAT: &str = "edgeimage-installer-1";

/// The installer's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallerConfig {
    /// [`FORMAT`].
    pub format: String,
    /// The profile's name (the payload is `<name>.raw.zst` with `<name>.manifest.json` and
    /// `<name>.manifest.json.minisig` next to it).
    pub name: String,
    /// The payload's build number: the installer refuses a payload older than this (the
    /// stick cannot be given an older image than it was built for).
    pub build_number: u64,
    /// Module files under [`MODULES_DIR`], in load order (dependencies first).
    pub modules: Vec<String>,
    /// How long to wait for the payload partition and the target disk to appear.
    pub wait_seconds: u64,
    /// Which disk to install to.
    pub disk: DiskRules,
    /// Remove Talos's META partition content from every other disk that has one (so Talos
    /// does not pick a stale system disk).
    pub wipe_other_metas: bool,
    /// What to do after a verified install.
    pub on_success: Action,
    /// What to do after a failure (never a reboot: no reboot loops).
    pub on_failure: Action,
}

/// Rules selecting the target disk; every rule given must hold; exactly one disk may match.
/// The installer stick itself is never a candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRules {
    /// Allowed transports (`nvme`, `sata`, `mmc`, `virtio`, `scsi`, `usb`); empty: any but
    /// `usb` and `loop`.
    #[serde(default)]
    pub transports: Vec<String>,
    /// Smallest and largest disk size in bytes.
    #[serde(default)]
    pub min_size: Option<u64>,
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Shell-style pattern (`*`, `?`) the model must match.
    #[serde(default)]
    pub model: Option<String>,
    /// The serial must be one of these.
    #[serde(default)]
    pub serials: Vec<String>,
    /// Exactly this `/dev/disk/by-id/…` link (or its name under that directory).
    #[serde(default)]
    pub by_id: Option<String>,
}

/// Power action at the end of an install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Reboot,
    Poweroff,
    /// Stop and show the verdict until someone switches the machine off.
    Halt,
}
