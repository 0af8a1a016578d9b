//! Hardware profiles: the TOML files under `profiles/` that say what to build.
//!
//! Parsing is strict (unknown fields are errors) and every error names the profile file, the
//! field and what is allowed. Relative paths in a profile are relative to the profile file.
//! See the README's "Profile reference" for the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use serde::Deserialize;

use crate::talos::{Arch, Cmdline, TalosVersion};

pub mod image_cache;
pub mod installer;
pub mod personalize;
pub mod upgrade_image;

pub use image_cache::{CacheImage, ImageCacheSpec};
pub use installer::InstallerSpec;
pub use personalize::{SlotSpec, SlotTarget};
pub use upgrade_image::UpgradeImageSpec;

/// The profile as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    arch: Arch,
    talos_version: String,
    disk_size: Size,
    esp_size: Option<Size>,
    sector_size: Option<u64>,
    kernel_version: Option<String>,
    assets: RawAssets,
    #[serde(default)]
    kernel_args: RawKernelArgs,
    #[serde(default)]
    meta: BTreeMap<String, RawMetaValue>,
    #[serde(default)]
    extensions: Vec<RawPinnedFile>,
    config: Option<RawConfig>,
    network: Option<PathBuf>,
    schematic: Option<PathBuf>,
    #[serde(default)]
    build_number: u64,
    signing: Option<RawSigning>,
    installer: Option<installer::RawInstaller>,
    install: Option<installer::RawInstall>,
    image_cache: Option<image_cache::RawImageCache>,
    upgrade_image: Option<upgrade_image::RawUpgradeImage>,
    #[serde(default)]
    personalize: Vec<personalize::RawSlot>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key: PathBuf,
    passphrase_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinnedFile {
    path: PathBuf,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    path: PathBuf,
    #[serde(default)]
    patches: Vec<PathBuf>,
    delivery: String,
    metal_iso_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssets {
    source: Option<PathBuf>,
    kernel: RawPin,
    initramfs: RawPin,
    systemd_boot: RawPin,
    systemd_stub: RawPin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    path: Option<String>,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernelArgs {
    #[serde(default = "yes")]
    defaults: bool,
    #[serde(default)]
    extra: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for RawKernelArgs {
    fn default() -> Self {
        RawKernelArgs {
            defaults: true,
            extra: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMetaValue {
    Text(String),
    File { file: PathBuf },
}

/// One boot asset: where to find it inside the asset source, and its pinned digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetPin {
    /// Field name in the profile (`kernel`, `initramfs`, …) for messages.
    pub field: &'static str,
    /// Path relative to the asset source (a directory, or `usr/install/<arch>/` in an image).
    pub path: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// The four boot assets.
#[derive(Clone, Debug)]
pub struct Assets {
    /// Directory or OCI archive, if the profile names one (`--assets` overrides it).
    pub source: Option<PathBuf>,
    pub kernel: AssetPin,
    pub initramfs: AssetPin,
    pub systemd_boot: AssetPin,
    pub systemd_stub: AssetPin,
}

impl Assets {
    pub fn all(&self) -> [&AssetPin; 4] {
        [
            &self.kernel,
            &self.initramfs,
            &self.systemd_boot,
            &self.systemd_stub,
        ]
    }
}

pub use crate::format::meta::{MetaValue, META_SIZE};

/// A system extension input (directory or archive) and its pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionPin {
    pub path: PathBuf,
    pub sha256: String,
}

pub use crate::config::delivery::Delivery;

const DELIVERIES: &str = "\"embedded\", \"inline\" or \"metal-iso\"";

fn parse_delivery(s: &str) -> Option<Delivery> {
    [Delivery::Embedded, Delivery::Inline, Delivery::MetalIso]
        .into_iter()
        .find(|d| d.as_str() == s)
}

/// The machine configuration the profile names.
#[derive(Clone, Debug)]
pub struct ConfigSpec {
    pub path: PathBuf,
    pub patches: Vec<PathBuf>,
    pub delivery: Delivery,
    /// Size of the `metal-iso` partition (metal-iso delivery).
    pub metal_iso_size: u64,
}

/// Default size of the `metal-iso` partition.
pub use crate::config::delivery::METAL_ISO_DEFAULT_SIZE as METAL_ISO_SIZE;

/// A validated profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The profile file.
    pub path: PathBuf,
    /// SHA-256 of the profile file's bytes.
    pub sha256: String,
    pub name: String,
    pub arch: Arch,
    pub talos: TalosVersion,
    pub disk_size: u64,
    pub esp_size: u64,
    /// `sector_size`: the disk's logical block size the image is made for (512 or 4096;
    /// `None`: not set, 512 unless the schematic says otherwise).
    pub sector_size: Option<u64>,
    pub kernel_version: Option<String>,
    pub assets: Assets,
    /// The kernel command line (defaults merged with the extras by Talos's rules).
    pub cmdline: String,
    /// Whether Talos's default kernel arguments are used, and the profile's extras (the
    /// command line is recomputed when a schematic or the configuration adds arguments).
    pub default_args: bool,
    pub extra_args: Vec<String>,
    pub meta: Vec<MetaValue>,
    pub extensions: Vec<ExtensionPin>,
    pub config: Option<ConfigSpec>,
    /// PlatformNetworkConfig YAML for META key 0x0a.
    pub network: Option<PathBuf>,
    /// Image Factory schematic YAML.
    pub schematic: Option<PathBuf>,
    /// Release counter, raised for every release of this profile; signed into the manifest
    /// so that `verify --min-build` can refuse older media.
    pub build_number: u64,
    /// The secret key `edgeimage build` signs with when no `--sign-key` is given.
    pub signing: Option<Signing>,
    /// `[installer]` (with `[install]`): also build an installer stick image.
    pub installer: Option<InstallerSpec>,
    /// `[image_cache]`: the container images the node's local image cache holds.
    pub image_cache: Option<ImageCacheSpec>,
    /// `[upgrade_image]`: the Talos installer image made for this profile.
    pub upgrade_image: Option<UpgradeImageSpec>,
    /// `[[personalize]]`: personalization slots, written per device at flash time.
    pub personalize: Vec<SlotSpec>,
}

/// `[signing]`: which key signs the profile's builds.
#[derive(Clone, Debug)]
pub struct Signing {
    /// A minisign secret key file (never inside the repository).
    pub key: PathBuf,
    /// Name of the environment variable holding its passphrase.
    pub passphrase_env: Option<String>,
}

/// The fixed partitions besides the ESP: the first MiB (MBR + primary GPT), META, the
/// manifest partition, and the last MiB (backup GPT; the image end is kept 1 MiB-aligned).
/// Size of the partition that carries the signed manifest.
pub const MANIFEST_PART_SIZE: u64 = 1 << 20;
const ALIGN: u64 = 1 << 20;

impl Profile {
    /// Read and validate a profile file.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = crate::input::read(path, crate::input::Kind::Profile)?;
        Self::parse(path, &text)
    }

    /// Validate profile text; `path` locates relative paths and names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Profile> {
        let p = path.display();
        let text = std::str::from_utf8(bytes).map_err(|e| {
            anyhow!(
                "profile {p}: not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            )
        })?;
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            // toml's own rendering quotes the offending line; name the place and the rule only.
            let at = match e.span() {
                Some(s) => {
                    let (line, col) = crate::input::line_col(bytes, s.start);
                    // The key on that line, when it is a plain name (never a value).
                    let key = text
                        .lines()
                        .nth(line - 1)
                        .and_then(|l| l.split_once('='))
                        .map(|(k, _)| k.trim())
                        .filter(|k| {
                            !k.is_empty()
                                && k.len() <= 64
                                && k.chars().all(|c| {
                                    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
                                })
                        })
                        .map(|k| format!(", field `{k}`"))
                        .unwrap_or_default();
                    format!(" at line {line}, column {col}{key}")
                }
                None => String::new(),
            };
            anyhow!(
                "profile {p}: not a valid profile{at}: {}",
                crate::input::redact(e.message())
            )
        })?;
        let field_err = |field: &str, msg: String| anyhow!("profile {p}: field `{field}`: {msg}");

        if !valid_name(&raw.name) {
            return Err(field_err(
                "name",
                format!(
                    "{:?} is not allowed: use 1-63 characters a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                    raw.name
                ),
            ));
        }
        let talos = TalosVersion::parse(&raw.talos_version)
            .map_err(|e| field_err("talos_version", e.to_string()))?;
        let disk_size = parse_size(&raw.disk_size).map_err(|e| field_err("disk_size", e))?;
        if disk_size > crate::layout::MAX_DISK_SIZE {
            return Err(field_err(
                "disk_size",
                format!(
                    "{} GiB is more than the {} GiB edgeimage makes (the most a seek table of \
                     .raw.zst describes); an image only needs room for its partitions, as Talos \
                     grows them to the disk it is installed on: use the size of the smallest \
                     target disk or less",
                    disk_size >> 30,
                    crate::layout::MAX_DISK_SIZE >> 30
                ),
            ));
        }
        let esp_size = match &raw.esp_size {
            Some(s) => parse_size(s).map_err(|e| field_err("esp_size", e))?,
            None => talos.default_esp_size(),
        };
        for (field, v) in [("disk_size", disk_size), ("esp_size", esp_size)] {
            if v == 0 || v % ALIGN != 0 {
                return Err(field_err(
                    field,
                    format!("{v} bytes is not a positive multiple of 1 MiB (partitions are 1 MiB-aligned)"),
                ));
            }
        }
        let needed = ALIGN + esp_size + META_SIZE + MANIFEST_PART_SIZE + ALIGN;
        if disk_size < needed {
            return Err(field_err(
                "disk_size",
                format!(
                    "the partitions do not fit: {} MiB needed (1 MiB GPT + {} MiB ESP + 1 MiB META + 1 MiB manifest + 1 MiB backup GPT) but disk_size is {} MiB; raise disk_size or lower esp_size",
                    needed >> 20,
                    esp_size >> 20,
                    disk_size >> 20
                ),
            ));
        }
        if let Some(n) = raw.sector_size {
            if n != 512 && n != 4096 {
                return Err(field_err(
                    "sector_size",
                    format!("{n} is not a logical block size edgeimage writes: use 512 or 4096"),
                ));
            }
        }
        if let Some(kv) = &raw.kernel_version {
            if kv.is_empty() || kv.len() > 64 || !kv.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(field_err(
                    "kernel_version",
                    format!("{kv:?} is not a kernel release string like \"6.12.18-talos\""),
                ));
            }
        }

        let base = path.parent().unwrap_or(Path::new("."));
        let pin = |field: &'static str, default: &str, raw: &RawPin| -> Result<AssetPin> {
            let f = format!("assets.{field}");
            let sha = raw.sha256.to_ascii_lowercase();
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field_err(
                    &format!("{f}.sha256"),
                    format!(
                        "{:?} is not a SHA-256 digest: 64 hex digits expected",
                        raw.sha256
                    ),
                ));
            }
            let path = raw.path.clone().unwrap_or_else(|| default.to_string());
            if path.is_empty()
                || path.starts_with('/')
                || path.split('/').any(|c| c == ".." || c.is_empty())
            {
                return Err(field_err(
                    &format!("{f}.path"),
                    format!(
                        "{path:?} must be a relative path inside the asset source, without '..'"
                    ),
                ));
            }
            Ok(AssetPin {
                field,
                path,
                sha256: sha,
            })
        };
        let assets = Assets {
            source: raw.assets.source.as_ref().map(|s| base.join(s)),
            kernel: pin("kernel", "vmlinuz", &raw.assets.kernel)?,
            initramfs: pin("initramfs", "initramfs.xz", &raw.assets.initramfs)?,
            systemd_boot: pin("systemd_boot", "systemd-boot.efi", &raw.assets.systemd_boot)?,
            systemd_stub: pin("systemd_stub", "systemd-stub.efi", &raw.assets.systemd_stub)?,
        };

        for (i, a) in raw.kernel_args.extra.iter().enumerate() {
            if a.bytes().any(|b| b.is_ascii_control()) {
                return Err(field_err(
                    &format!("kernel_args.extra[{i}]"),
                    "contains a control character".to_string(),
                ));
            }
        }
        let cmdline = kernel_cmdline(
            &talos,
            raw.arch,
            raw.kernel_args.defaults,
            &[&raw.kernel_args.extra],
        )
        .map_err(|e| field_err("kernel_args", e))?;

        let mut meta = Vec::new();
        for (k, v) in &raw.meta {
            let key = parse_meta_key(k).map_err(|e| field_err(&format!("meta.{k}"), e))?;
            let value = match v {
                RawMetaValue::Text(t) => t.as_bytes().to_vec(),
                RawMetaValue::File { file } => {
                    let f = base.join(file);
                    crate::input::read(&f, crate::input::Kind::MetaValue)
                        .map_err(|e| field_err(&format!("meta.{k}.file"), format!("{e:#}")))?
                }
            };
            if meta.iter().any(|m: &MetaValue| m.key == key) {
                return Err(field_err(
                    &format!("meta.{k}"),
                    format!("key 0x{key:02x} is given twice"),
                ));
            }
            meta.push(MetaValue { key, value });
        }
        meta.sort_by_key(|m| m.key);
        crate::format::meta::check_capacity(&meta).map_err(|e| field_err("meta", e.to_string()))?;

        let mut extensions = Vec::new();
        for (i, e) in raw.extensions.iter().enumerate() {
            let sha = e.sha256.to_ascii_lowercase();
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field_err(
                    &format!("extensions[{i}].sha256"),
                    format!(
                        "{:?} is not a SHA-256 digest: 64 hex digits expected",
                        e.sha256
                    ),
                ));
            }
            extensions.push(ExtensionPin {
                path: base.join(&e.path),
                sha256: sha,
            });
        }
        let config = match &raw.config {
            None => None,
            Some(c) => {
                let delivery = parse_delivery(&c.delivery).ok_or_else(|| {
                    field_err(
                        "config.delivery",
                        format!("{:?} is not a delivery: use {}", c.delivery, DELIVERIES),
                    )
                })?;
                let metal_iso_size = match &c.metal_iso_size {
                    Some(s) => parse_size(s).map_err(|e| field_err("config.metal_iso_size", e))?,
                    None => METAL_ISO_SIZE,
                };
                if metal_iso_size % ALIGN != 0 || metal_iso_size == 0 {
                    return Err(field_err(
                        "config.metal_iso_size",
                        format!("{metal_iso_size} bytes is not a positive multiple of 1 MiB"),
                    ));
                }
                if delivery == Delivery::Embedded && talos.minor < 12 {
                    return Err(field_err(
                        "config.delivery",
                        format!(
                            "\"embedded\" needs Talos v1.12 or later (the profile has {}); use \"metal-iso\" or \"inline\"",
                            talos.tag
                        ),
                    ));
                }
                Some(ConfigSpec {
                    path: base.join(&c.path),
                    patches: c.patches.iter().map(|p| base.join(p)).collect(),
                    delivery,
                    metal_iso_size,
                })
            }
        };
        if let Some(c) = &config {
            if c.delivery == Delivery::MetalIso {
                let needed = needed + c.metal_iso_size;
                if disk_size < needed {
                    return Err(field_err(
                        "disk_size",
                        format!(
                            "the partitions do not fit: {} MiB needed with the {} MiB metal-iso partition, but disk_size is {} MiB",
                            needed >> 20,
                            c.metal_iso_size >> 20,
                            disk_size >> 20
                        ),
                    ));
                }
            }
        }

        let signing = match raw.signing {
            None => None,
            Some(sg) => {
                if let Some(v) = &sg.passphrase_env {
                    let ok = !v.is_empty()
                        && !v.starts_with(|c: char| c.is_ascii_digit())
                        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(field_err(
                            "signing.passphrase_env",
                            format!(
                                "{v:?} is not an environment variable name (letters, digits, '_'; not starting with a digit)"
                            ),
                        ));
                    }
                }
                Some(Signing {
                    key: base.join(sg.key),
                    passphrase_env: sg.passphrase_env,
                })
            }
        };

        let installer = installer::parse(
            raw.installer,
            raw.install,
            base,
            raw.arch,
            &talos,
            &field_err,
        )?;

        let image_cache = image_cache::parse(raw.image_cache, base, &field_err)?;
        let upgrade_image = upgrade_image::parse(raw.upgrade_image, base, &field_err)?;

        let personalize = personalize::parse(
            raw.personalize,
            base,
            &meta,
            raw.network.is_some(),
            config.as_ref(),
            &field_err,
        )?;

        use sha2::Digest;
        Ok(Profile {
            path: path.to_path_buf(),
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            name: raw.name,
            arch: raw.arch,
            talos,
            disk_size,
            esp_size,
            sector_size: raw.sector_size,
            kernel_version: raw.kernel_version,
            assets,
            cmdline,
            default_args: raw.kernel_args.defaults,
            extra_args: raw.kernel_args.extra,
            meta,
            extensions,
            config,
            network: raw.network.map(|n| base.join(n)),
            schematic: raw.schematic.map(|n| base.join(n)),
            build_number: raw.build_number,
            signing,
            installer,
            image_cache,
            upgrade_image,
            personalize,
        })
    }

    /// The command line with more argument lists applied after the profile's defaults, in
    /// order (e.g. a schematic's `extraKernelArgs`, then the profile's `extra`, then config
    /// delivery arguments). Errors when it does not fit the kernel's buffer.
    pub fn cmdline_with(
        &self,
        before_extra: &[String],
        after_extra: &[String],
    ) -> std::result::Result<String, String> {
        kernel_cmdline(
            &self.talos,
            self.arch,
            self.default_args,
            &[before_extra, &self.extra_args, after_extra],
        )
    }
}

/// The most extra kernel arguments read (one-byte arguments and spaces fill 2047 bytes with
/// 1024).
pub const MAX_EXTRA_ARGS: usize = 1024;

/// Talos's defaults (if wanted), then each list of extra arguments in order, by Talos's rules.
pub fn kernel_cmdline(
    talos: &TalosVersion,
    arch: Arch,
    defaults: bool,
    extras: &[&[String]],
) -> std::result::Result<String, String> {
    // A command line of at most 2047 bytes holds at most 1024 arguments: more is refused before
    // they are merged (merging compares each with those before it).
    let count: usize = extras.iter().map(|e| e.len()).sum();
    if count > MAX_EXTRA_ARGS {
        return Err(format!(
            "{count} extra kernel arguments, more than the {MAX_EXTRA_ARGS} a {}-byte command line can hold",
            arch.max_cmdline()
        ));
    }
    let mut c = if defaults {
        Cmdline::parse(&talos.default_kernel_args(arch))
    } else {
        Cmdline::default()
    };
    c.apply_extra(&extras.concat());
    let s = c.to_string();
    check_cmdline(&s, arch)?;
    Ok(s)
}

/// The command line must fit the kernel's buffer ([`Arch::max_cmdline`]): the kernel cuts a
/// longer one off without a word.
pub fn check_cmdline(cmdline: &str, arch: Arch) -> std::result::Result<(), String> {
    let max = arch.max_cmdline();
    if cmdline.len() > max {
        return Err(format!(
            "the kernel command line is {} bytes, over the {arch} kernel's limit of {max} bytes \
             (COMMAND_LINE_SIZE {}; the kernel would cut the rest off); remove extra arguments",
            cmdline.len(),
            max + 1
        ));
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

fn parse_size(s: &Size) -> std::result::Result<u64, String> {
    let text = match s {
        Size::Bytes(n) => return Ok(*n),
        Size::Text(t) => t.trim(),
    };
    let allowed = "use bytes or a number with KiB, MiB, GiB or TiB, e.g. \"2GiB\"";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size: {allowed}"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => {
            return Err(format!(
                "unit {other:?} in {text:?} is not allowed: {allowed}"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A META key as the profile writes it: 1-255, decimal or `0x`-hex, not one of Talos's own
/// keys 0x06-0x09.
pub(crate) fn parse_meta_key(k: &str) -> std::result::Result<u8, String> {
    let n = match k.strip_prefix("0x").or_else(|| k.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => k.parse::<u32>(),
    }
    .map_err(|_| format!("{k:?} is not a META key: use a number 1-255, decimal or 0x-hex"))?;
    match n {
        1..=255 => {}
        _ => return Err(format!("key {k} is outside 1-255")),
    }
    if let Some(why) = crate::format::meta::refuse_key(n as u8) {
        return Err(why);
    }
    Ok(n as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn profile(body: &str) -> String {
        format!(
            "name = \"t\"\narch = \"amd64\"\ntalos_version = \"v1.12.5\"\ndisk_size = \"3GiB\"\n{body}\n\
             [assets]\nkernel = {{ sha256 = \"{ZERO}\" }}\ninitramfs = {{ sha256 = \"{ZERO}\" }}\n\
             systemd_boot = {{ sha256 = \"{ZERO}\" }}\nsystemd_stub = {{ sha256 = \"{ZERO}\" }}\n"
        )
    }

    fn err(text: &str) -> String {
        format!(
            "{:#}",
            Profile::parse(Path::new("p/x.toml"), text.as_bytes()).unwrap_err()
        )
    }

    #[test]
    fn valid_profile_has_defaults() {
        let p = Profile::parse(Path::new("p/x.toml"), profile("").as_bytes()).unwrap();
        assert_eq!(p.esp_size, 2101 << 20);
        assert_eq!(p.disk_size, 3 << 30);
        assert_eq!(p.assets.kernel.path, "vmlinuz");
        assert!(p.cmdline.starts_with("talos.platform=metal console=tty0 "));
        assert!(p.meta.is_empty());
    }

    #[test]
    fn extra_args_and_meta() {
        let text = profile(
            "[kernel_args]\nextra = [\"console=ttyS0\", \"-selinux\", \"talos.dashboard.disabled=1\"]\n\
             [meta]\n\"0x0c\" = \"hello\"\n\"13\" = \"x\"\n",
        );
        let p = Profile::parse(Path::new("x.toml"), text.as_bytes()).unwrap();
        assert!(p
            .cmdline
            .starts_with("talos.platform=metal console=ttyS0 init_on_alloc=1"));
        assert!(!p.cmdline.contains("selinux"));
        assert!(p.cmdline.ends_with("talos.dashboard.disabled=1"));
        assert_eq!(
            p.meta[0],
            MetaValue {
                key: 0x0c,
                value: b"hello".to_vec()
            }
        );
        assert_eq!(p.meta[1].key, 0x0d);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(&profile("colour = \"blue\""));
        assert!(
            e.contains("p/x.toml") && e.contains("unknown field `colour`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_field_and_allowed() {
        let e = err(&profile("").replace("amd64", "riscv64"));
        assert!(
            e.contains("p/x.toml") && e.contains("riscv64") && e.contains("amd64"),
            "{e}"
        );
        let e = err(&profile("").replace("v1.12.5", "v1.6.0"));
        assert!(
            e.contains("`talos_version`") && e.contains("v1.8.0 to v1.14.x"),
            "{e}"
        );
        let e = err(&profile("").replace("3GiB", "3GB"));
        assert!(e.contains("`disk_size`") && e.contains("MiB"), "{e}");
        let e = err(&profile("").replace(ZERO, "abc"));
        assert!(
            e.contains("`assets.kernel.sha256`") && e.contains("64 hex"),
            "{e}"
        );
        let e = err(&profile("").replace("name = \"t\"", "name = \"Bad Name\""));
        assert!(e.contains("`name`"), "{e}");
        let e = err(&profile("[meta]\n\"0x07\" = \"x\""));
        assert!(e.contains("`meta.0x07`") && e.contains("reserved"), "{e}");
        let e = err(&profile("[meta]\n\"300\" = \"x\""));
        assert!(e.contains("outside 1-255"), "{e}");
    }

    #[test]
    fn partitions_must_fit_disk() {
        let e = err(&profile("").replace("3GiB", "2GiB"));
        assert!(
            e.contains("`disk_size`") && e.contains("do not fit") && e.contains("2105 MiB needed"),
            "{e}"
        );
        let ok = profile("esp_size = \"100MiB\"").replace("3GiB", "104MiB");
        let e = err(&profile("esp_size = \"100MiB\"").replace("3GiB", "103MiB"));
        assert!(e.contains("104 MiB needed"), "{e}");
        Profile::parse(Path::new("x.toml"), ok.as_bytes()).unwrap();
    }

    /// A disk of 1000 TiB used to build for days behind a frozen progress bar.
    #[test]
    fn disk_size_has_an_upper_bound() {
        let e = err(&profile("").replace("3GiB", "1000TiB"));
        assert!(
            e.contains("`disk_size`") && e.contains("1024000 GiB is more than the 4096 GiB"),
            "{e}"
        );
        let e = err(&profile("").replace("\"3GiB\"", "9223372036854775807"));
        assert!(e.contains("`disk_size`") && e.contains("more than"), "{e}");
        let e = err(&profile("").replace("3GiB", "99999999999TiB"));
        assert!(e.contains("`disk_size`") && e.contains("too large"), "{e}");
        Profile::parse(
            Path::new("x.toml"),
            profile("").replace("3GiB", "4TiB").as_bytes(),
        )
        .unwrap();
    }

    /// The kernel keeps 2047 bytes of command line on amd64 and on arm64 (COMMAND_LINE_SIZE
    /// 2048 in `arch/x86/include/asm/setup.h` and `arch/arm64/include/uapi/asm/setup.h`), not
    /// 4095: a command line of 2048 to 4095 bytes used to be accepted and cut off at boot.
    #[test]
    fn long_cmdline_is_refused_at_the_kernels_limit() {
        for arch in ["amd64", "arm64"] {
            let base = profile("").replace("amd64", arch);
            let defaults = Profile::parse(Path::new("x.toml"), base.as_bytes())
                .unwrap()
                .cmdline
                .len();
            // One extra argument `x=aaa…` filling the line to exactly `n` bytes.
            let with = |n: usize| {
                let fill = "a".repeat(n - defaults - 3);
                profile(&format!("[kernel_args]\nextra = [\"x={fill}\"]")).replace("amd64", arch)
            };
            let p = Profile::parse(Path::new("x.toml"), with(2047).as_bytes()).unwrap();
            assert_eq!(p.cmdline.len(), 2047, "{arch}");
            let e = err(&with(2048));
            assert!(
                e.contains("field `kernel_args`")
                    && e.contains("2048 bytes")
                    && e.contains(&format!("the {arch} kernel's limit of 2047 bytes"))
                    && e.contains("remove extra arguments"),
                "{arch}: {e}"
            );
        }
    }

    #[test]
    fn extensions_config_and_schematic_fields() {
        let text = profile(&format!(
            "network = \"net.yaml\"\nschematic = \"s.yaml\"\n\
             [[extensions]]\npath = \"ext/edgehostlet.tar\"\nsha256 = \"{ZERO}\"\n\
             [config]\npath = \"machine.yaml\"\npatches = [\"p1.yaml\"]\ndelivery = \"metal-iso\"\n"
        ));
        let p = Profile::parse(Path::new("dir/x.toml"), text.as_bytes()).unwrap();
        assert_eq!(p.extensions[0].path, Path::new("dir/ext/edgehostlet.tar"));
        let c = p.config.unwrap();
        assert_eq!(c.delivery, Delivery::MetalIso);
        assert_eq!(c.patches, [Path::new("dir/p1.yaml")]);
        assert_eq!(c.metal_iso_size, METAL_ISO_SIZE);
        assert_eq!(p.network.as_deref(), Some(Path::new("dir/net.yaml")));
        assert_eq!(p.schematic.as_deref(), Some(Path::new("dir/s.yaml")));
    }

    #[test]
    fn bad_delivery_and_version_are_named() {
        let e = err(&profile("[config]\npath = \"m.yaml\"\ndelivery = \"usb\""));
        assert!(
            e.contains("`config.delivery`") && e.contains("metal-iso"),
            "{e}"
        );
        let old = profile("[config]\npath = \"m.yaml\"\ndelivery = \"embedded\"")
            .replace("v1.12.5", "v1.11.3");
        let e = err(&old);
        assert!(e.contains("needs Talos v1.12"), "{e}");
        let e = err(&profile("[[extensions]]\npath = \"x\"\nsha256 = \"12\""));
        assert!(e.contains("`extensions[0].sha256`"), "{e}");
    }

    #[test]
    fn cmdline_with_adds_lists_in_order() {
        let p = Profile::parse(
            Path::new("x.toml"),
            profile("[kernel_args]\nextra = [\"b=2\"]").as_bytes(),
        )
        .unwrap();
        let c = p
            .cmdline_with(&["a=1".into(), "-pti".into()], &["c=3".into()])
            .unwrap();
        assert!(c.ends_with("a=1 b=2 c=3") && !c.contains("pti"), "{c}");
        let long = vec!["x".repeat(5000)];
        assert!(p.cmdline_with(&[], &long).unwrap_err().contains("limit"));
    }

    #[test]
    fn meta_file_missing_is_named() {
        let e = err(&profile("[meta]\n\"0x0a\" = { file = \"nope.yaml\" }"));
        assert!(
            e.contains("`meta.0x0a.file`") && e.contains("p/nope.yaml"),
            "{e}"
        );
    }
}
