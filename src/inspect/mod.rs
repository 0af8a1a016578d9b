//! `edgeimage inspect`: read an image back with readers written apart from the writers and
//! bounded for hostile input ([`crate::format::gpt`] for the partition table,
//! [`crate::format::fat`] for the ESP, [`source::Image`] for random access into raw and zstd
//! images) and show what a host would boot.

use std::fmt::Write as _;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::compose::gpt;
use crate::compose::uki;
use crate::format::{fat, meta};

pub mod cache;
pub mod initrd;
pub mod installer;
pub mod source;

use source::Image;

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    /// `raw` or `zstd`.
    pub format: String,
    pub size: u64,
    /// The logical block size the partition table was written for (512 or 4096).
    pub sector_size: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
    pub esp: Option<EspInfo>,
    pub uki: Option<UkiReport>,
    pub meta: Option<MetaInfo>,
    /// System extension layers in the UKI's initrd, in mount order.
    pub layers: Vec<LayerReport>,
    /// The Image Factory schematic ID (from the `schematic` layer).
    pub schematic_id: Option<String>,
    /// How the machine configuration is delivered, and what is safe to show of it.
    pub config: Option<ConfigReport>,
    /// What the manifest partition says (not verified here: `edgeimage verify` does that).
    pub manifest: Option<ManifestSummary>,
    /// An installer image's configuration, payload and records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installer: Option<installer::InstallerInfo>,
    /// What the `IMAGECACHE` partition holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_cache: Option<cache::CacheReport>,
}

/// A partition as the GPT describes it.
#[derive(Debug, Serialize, Clone)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub offset: u64,
    pub size: u64,
}

/// The partitions of a GPT read with [`crate::format::gpt`].
pub fn partitions(g: &crate::format::gpt::Gpt) -> Vec<PartitionInfo> {
    g.entries
        .iter()
        .map(|e| PartitionInfo {
            number: e.number,
            label: e.name.clone(),
            type_guid: e.type_guid.to_string().to_uppercase(),
            guid: e.guid.to_string(),
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            offset: e.offset(g.sector_size),
            size: e.size(g.sector_size),
        })
        .collect()
}

/// The manifest carried inside the image.
#[derive(Debug, Serialize)]
pub struct ManifestSummary {
    pub name: Option<String>,
    pub build_number: Option<u64>,
    pub talos_version: Option<String>,
    /// Block-map ranges and the bytes they cover.
    pub ranges: Option<usize>,
    pub mapped_bytes: Option<u64>,
    /// Key ID of the signature, `None` when unsigned.
    pub signed_by: Option<String>,
    pub trusted_comment: Option<String>,
    /// The personalization slots: parts of the image written per device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<crate::artifact::manifest::Slot>,
    /// Why the manifest could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One extension layer.
#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub image: String,
    pub name: String,
    pub version: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// The machine configuration as `inspect` shows it: never its content.
#[derive(Debug, Serialize)]
pub struct ConfigReport {
    pub delivery: String,
    pub sha256: String,
    /// Machine type and non-secret fields, when the configuration could be read.
    pub machine_type: Option<String>,
    #[serde(flatten)]
    pub info: Option<crate::config::machine::ConfigInfo>,
    /// Whether `security.selinux` is set on the embedded file (squashfs xattrs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EspInfo {
    pub label: String,
    pub files: Vec<FileInfo>,
    pub loader_conf: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct UkiReport {
    /// Path inside the ESP.
    pub path: String,
    #[serde(flatten)]
    pub info: uki::UkiInfo,
    /// The archives inside `.initrd` and what they carry.
    pub initrd: Option<initrd::InitrdInfo>,
}

#[derive(Debug, Serialize)]
pub struct MetaInfo {
    /// Which ADV copy is valid (1 or 2); none means Talos sees an empty META.
    pub copy: Option<u8>,
    pub entries: Vec<MetaEntry>,
}

#[derive(Debug, Serialize)]
pub struct MetaEntry {
    pub key: String,
    pub size: usize,
    /// The value when it is UTF-8 text (never for a secret slot's key).
    pub text: Option<String>,
    /// The personalization slot the key is, per the manifest inside the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// A window of a file (a partition), read sequentially: reads end at the window's end or the
/// file's, whichever comes first.
struct Window<'a> {
    file: &'a Image,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

/// Inspect an image file (`.raw` or `.raw.zst`).
pub fn inspect(path: &Path) -> Result<Inspection> {
    let file = Image::open(path)?;
    let format = file.format().to_string();
    let size = file.len();
    let table = crate::format::gpt::read(size, &mut |off, buf| file.read_exact_at(buf, off))
        .with_context(|| format!("{}: reading the partition table", path.display()))?;
    let disk_guid = table.disk_guid.to_string();
    let sector_size = table.sector_size;
    let partitions = partitions(&table);
    let esp_part = partitions
        .iter()
        .find(|p| p.type_guid == gpt::TYPE_EFI || p.label == "EFI");
    let (esp, uki) = match esp_part {
        Some(p) => {
            let (e, u) = read_esp(&file, p).with_context(|| {
                format!(
                    "{}: partition {} ({}) at bytes {}..{}: reading the FAT filesystem",
                    path.display(),
                    p.number,
                    p.label,
                    p.offset,
                    p.offset + p.size
                )
            })?;
            (Some(e), u)
        }
        None => (None, None),
    };
    let meta = match partitions.iter().find(|p| p.label == meta::META_LABEL) {
        Some(p) => {
            let mut b = vec![0u8; (2 * meta::BLOCK_LEN as u64).min(p.size) as usize];
            file.read_exact_at(&mut b, p.offset).with_context(|| {
                format!("{}: reading META at byte {}", path.display(), p.offset)
            })?;
            let m = meta::parse(&b);
            Some(MetaInfo {
                copy: m.copy,
                entries: m
                    .values
                    .into_iter()
                    .map(|(k, v)| MetaEntry {
                        key: format!("0x{k:02x}"),
                        size: v.len(),
                        text: String::from_utf8(v).ok(),
                        slot: None,
                    })
                    .collect(),
            })
        }
        None => None,
    };
    let layers = uki
        .as_ref()
        .and_then(|u| u.initrd.as_ref())
        .map(layers_of)
        .unwrap_or_default();
    let schematic_id = layers
        .iter()
        .find(|l| l.name == crate::config::schematic::SCHEMATIC_EXTENSION)
        .map(|l| l.version.clone());
    let config = config_of(&file, &partitions, uki.as_ref(), &layers)
        .with_context(|| format!("{}: reading the machine configuration", path.display()))?;
    let image_cache = match partitions
        .iter()
        .find(|p| p.label == crate::compose::IMAGE_CACHE_LABEL)
    {
        Some(p) => {
            let vol = crate::format::ext4::Volume::open(p.size, |off, buf| {
                file.read_exact_at(buf, p.offset + off)
            })
            .and_then(|v| cache::read(&v))
            .with_context(|| {
                format!(
                    "{}: partition {} ({}) at bytes {}..{}: reading the image cache",
                    path.display(),
                    p.number,
                    p.label,
                    p.offset,
                    p.offset + p.size
                )
            })?;
            Some(vol)
        }
        None => None,
    };
    let manifest = partitions
        .iter()
        .find(|p| p.label == crate::compose::MANIFEST_LABEL)
        .map(|p| manifest_of(&file, p));
    // META keys that are slots are named; a secret slot's value is never shown.
    let mut meta = meta;
    if let (Some(mi), Some(ms)) = (meta.as_mut(), manifest.as_ref()) {
        for e in &mut mi.entries {
            if let Some(slot) = ms
                .slots
                .iter()
                .find(|s| s.meta_key.map(|k| format!("0x{k:02x}")).as_deref() == Some(&e.key))
            {
                e.slot = Some(slot.name.clone());
                if slot.secret {
                    e.text = None;
                }
            }
        }
    }
    let installer = installer::is_installer(&partitions)
        .then(|| installer::describe(&file, &partitions, uki.as_ref()));
    // The inline configuration is the configuration itself: never shown.
    let mut uki = uki;
    if let Some(u) = uki.as_mut() {
        let redact = |c: &mut Option<String>| {
            *c = c.as_deref().map(crate::config::delivery::redact_cmdline);
        };
        redact(&mut u.info.cmdline);
        for p in &mut u.info.profiles {
            redact(&mut p.cmdline);
        }
    }
    Ok(Inspection {
        path: path.to_path_buf(),
        format,
        size,
        sector_size,
        disk_guid,
        partitions,
        esp,
        uki,
        meta,
        layers,
        schematic_id,
        config,
        manifest,
        installer,
        image_cache,
    })
}

/// Read the manifest partition: never fatal (a damaged one is reported as a note).
fn manifest_of(file: &Image, p: &PartitionInfo) -> ManifestSummary {
    let mut s = ManifestSummary {
        name: None,
        build_number: None,
        talos_version: None,
        ranges: None,
        mapped_bytes: None,
        signed_by: None,
        trusted_comment: None,
        slots: Vec::new(),
        note: None,
    };
    let mut data = Vec::new();
    let mut w = Window {
        file,
        start: p.offset,
        len: p.size.min(crate::artifact::manifest::MAX_PARTITION_READ),
        pos: 0,
    };
    if let Err(e) = w.read_to_end(&mut data) {
        s.note = Some(format!("unreadable: {e}"));
        return s;
    }
    let what = format!("partition {}", p.number);
    match crate::artifact::manifest::decode_partition(&data, &what) {
        Err(e) => s.note = Some(format!("{e:#}")),
        Ok(emb) => {
            match crate::artifact::manifest::Manifest::parse(&emb.manifest, &what) {
                Ok(m) => {
                    s.name = Some(m.name.clone());
                    s.build_number = Some(m.build_number);
                    s.talos_version = Some(m.talos_version.clone());
                    s.ranges = Some(m.block_map.ranges.len());
                    s.mapped_bytes = Some(m.mapped_bytes());
                    s.slots = m.slots.clone();
                }
                Err(e) => s.note = Some(format!("{e:#}")),
            }
            if let Some(t) = emb.signature {
                match crate::sign::Signature::parse(&t) {
                    Ok(sig) => {
                        s.signed_by = Some(sig.key_id_hex());
                        s.trusted_comment = Some(sig.trusted_comment.clone());
                    }
                    Err(e) => s.note = Some(format!("signature unreadable: {e:#}")),
                }
            }
        }
    }
    s
}

/// The machine configuration in a `talos.config.inline=` argument: base64 of zstd, bounded
/// like a machine configuration file (a zstd bomb stops at the limit).
fn decode_inline(arg: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let packed = base64::engine::general_purpose::STANDARD
        .decode(arg.as_bytes())
        .context("talos.config.inline is not base64")?;
    let max = crate::input::Kind::MachineConfig.max();
    let mut bytes = Vec::new();
    zstd::Decoder::new(&packed[..])
        .and_then(|d| d.take(max + 1).read_to_end(&mut bytes))
        .context("talos.config.inline is not zstd data")?;
    if bytes.len() as u64 > max {
        bail!(
            "talos.config.inline expands past {}, more than a machine configuration may be: \
             this is not a configuration edgeimage wrote",
            crate::progress::human_bytes(max)
        );
    }
    Ok(bytes)
}

/// Layers listed by `extensions.yaml`, with the digests of their squashfs images.
fn layers_of(i: &initrd::InitrdInfo) -> Vec<LayerReport> {
    let Some(yaml) = &i.extensions_yaml else {
        return Vec::new();
    };
    if crate::format::yaml::check_depth(yaml.as_bytes(), crate::format::yaml::MAX_DEPTH).is_err() {
        return Vec::new();
    }
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(yaml) else {
        return Vec::new();
    };
    let text = |v: &serde_norway::Value, k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    doc.get("layers")
        .and_then(|l| l.as_sequence())
        .map(|seq| {
            seq.iter()
                .map(|l| {
                    let image = text(l, "image");
                    let md = l.get("metadata").cloned().unwrap_or_default();
                    let member = i.layers.iter().find(|m| m.name == image);
                    LayerReport {
                        name: text(&md, "name"),
                        version: text(&md, "version"),
                        size: member.map(|m| m.size),
                        sha256: member.map(|m| m.sha256.clone()),
                        image,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Find the machine configuration: the `embedded-config` layer, `talos.config.inline` on the
/// command line, or `config.yaml` on the `metal-iso` partition.
fn config_of(
    file: &Image,
    partitions: &[PartitionInfo],
    uki: Option<&UkiReport>,
    layers: &[LayerReport],
) -> Result<Option<ConfigReport>> {
    use crate::config::delivery::{EMBEDDED_NAME, INLINE_PARAM, METAL_ISO_LABEL};
    use crate::config::machine::MachineConfig;
    let describe = |delivery: &str, bytes: Vec<u8>| -> ConfigReport {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        match MachineConfig::from_bytes(bytes, delivery) {
            Ok(c) => ConfigReport {
                delivery: delivery.to_string(),
                sha256,
                machine_type: Some(c.machine_type().as_str().to_string()),
                info: Some(c.info().clone()),
                note: None,
            },
            Err(e) => ConfigReport {
                delivery: delivery.to_string(),
                sha256,
                machine_type: None,
                info: None,
                note: Some(format!("not a valid machine configuration: {e:#}")),
            },
        }
    };
    if let Some(l) = layers.iter().find(|l| l.name == EMBEDDED_NAME) {
        return Ok(Some(ConfigReport {
            delivery: "embedded".into(),
            sha256: l.version.clone(),
            machine_type: None,
            info: None,
            note: Some(format!(
                "inside layer {} (file mode 0000, security.selinux={})",
                l.image,
                crate::config::delivery::STATE_SELINUX_LABEL
            )),
        }));
    }
    let cmdline = uki.and_then(|u| u.info.cmdline.clone()).unwrap_or_default();
    let prefix = format!("{INLINE_PARAM}=");
    let inline: String = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix(&prefix))
        .collect();
    if !inline.is_empty() {
        let bytes = decode_inline(&inline)?;
        return Ok(Some(describe("inline", bytes)));
    }
    if let Some(p) = partitions.iter().find(|p| p.label == METAL_ISO_LABEL) {
        let place = format!(
            "partition {} ({METAL_ISO_LABEL}) at bytes {}..{}",
            p.number,
            p.offset,
            p.offset.saturating_add(p.size)
        );
        let vol =
            fat_volume(file, p).with_context(|| format!("{place}: not a readable FAT volume"))?;
        let entry = vol
            .find("config.yaml")
            .with_context(|| format!("{place}: looking up config.yaml"))?
            .filter(|e| !e.is_dir)
            .ok_or_else(|| anyhow!("{place}: no config.yaml"))?;
        let mut bytes = Vec::new();
        vol.open_file(&entry)
            .and_then(|f| Ok(f.take(MAX_METAL_ISO_CONFIG).read_to_end(&mut bytes)?))
            .with_context(|| format!("{place}: reading config.yaml"))?;
        return Ok(Some(describe("metal-iso", bytes)));
    }
    Ok(None)
}

/// The most of the metal-iso `config.yaml` read (a machine configuration is far smaller).
const MAX_METAL_ISO_CONFIG: u64 = 4 << 20;

/// The most of `loader/loader.conf` read (systemd-boot's is a few lines).
const MAX_LOADER_CONF: u64 = 64 << 10;

/// The FAT volume on partition `p` of the image.
pub(crate) fn fat_volume<'a>(file: &'a Image, p: &PartitionInfo) -> Result<fat::Volume<'a>> {
    let start = p.offset;
    fat::Volume::open(p.size, move |off, buf| {
        let at = start.checked_add(off).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset past the image's end")
        })?;
        file.read_exact_at(buf, at)
    })
}

fn read_esp(file: &Image, p: &PartitionInfo) -> Result<(EspInfo, Option<UkiReport>)> {
    let vol = fat_volume(file, p)?;
    let label = vol.label()?;
    let entries = vol.walk(&vol.root(), &fat::Limits::default())?;
    let mut found: Vec<&fat::Entry> = entries.iter().filter(|e| !e.is_dir).collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    let files: Vec<FileInfo> = found
        .iter()
        .map(|e| FileInfo {
            path: e.path.clone(),
            size: e.size,
        })
        .collect();
    let loader_conf = match vol.find("loader/loader.conf")? {
        Some(e) if !e.is_dir => {
            Some(String::from_utf8_lossy(&vol.read_to_end(&e, MAX_LOADER_CONF)?).into_owned())
        }
        _ => None,
    };
    let uki_file = found.iter().copied().find(|f| {
        f.path.to_ascii_lowercase().starts_with("efi/linux/")
            && f.path.to_ascii_lowercase().ends_with(".efi")
    });
    let uki = match uki_file {
        Some(u) => {
            let mut f = vol
                .open_file(u)
                .with_context(|| format!("UKI {}", u.path))?;
            let info = uki::describe(u.size, &mut |off, buf| {
                f.read_at(off, buf)
                    .map_err(|e| io::Error::other(format!("{e:#}")))
            })
            .with_context(|| format!("UKI {}", u.path))?;
            let initrd = match info.sections.iter().find(|s| s.name == ".initrd") {
                Some(sec) => {
                    f.seek(SeekFrom::Start(u64::from(sec.file_offset)))?;
                    let section = (&mut f).take(u64::from(sec.virtual_size));
                    Some(
                        initrd::walk(section)
                            .with_context(|| format!("UKI {}: .initrd", u.path))?,
                    )
                }
                None => None,
            };
            Some(UkiReport {
                path: u.path.clone(),
                info,
                initrd,
            })
        }
        None => None,
    };
    Ok((
        EspInfo {
            label,
            files,
            loader_conf,
        },
        uki,
    ))
}

/// Human-readable report.
pub fn render(i: &Inspection) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "image      {} ({}, {} bytes)",
        i.path.display(),
        i.format,
        i.size
    )?;
    writeln!(s, "disk GUID  {}", i.disk_guid)?;
    writeln!(
        s,
        "blocks     {} bytes (the disk's logical block size)",
        i.sector_size
    )?;
    writeln!(s, "partitions")?;
    let width = i
        .partitions
        .iter()
        .map(|p| p.label.len())
        .max()
        .unwrap_or(0);
    for p in &i.partitions {
        writeln!(
            s,
            "  {:>2} {:<width$} {:>12} bytes at {:>12}  type {}  guid {}",
            p.number, p.label, p.size, p.offset, p.type_guid, p.guid
        )?;
    }
    if let Some(e) = &i.esp {
        writeln!(s, "ESP (label {:?})", e.label)?;
        for f in &e.files {
            writeln!(s, "  {:<40} {:>12} bytes", f.path, f.size)?;
        }
    }
    if let Some(u) = &i.uki {
        writeln!(s, "UKI {} ({})", u.path, u.info.machine)?;
        for sec in &u.info.sections {
            writeln!(
                s,
                "  {:<8} vma {:#010x} size {:>10}  file offset {:#010x}",
                sec.name, sec.virtual_address, sec.virtual_size, sec.file_offset
            )?;
        }
        if let Some(c) = &u.info.cmdline {
            writeln!(s, "  cmdline  {c}")?;
        }
        for p in &u.info.profiles {
            let title = p
                .title
                .as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            match (&p.cmdline, p.own_cmdline) {
                (Some(c), true) => writeln!(s, "  profile  {}{title}: cmdline {c}", p.id)?,
                _ => writeln!(s, "  profile  {}{title}: the base cmdline", p.id)?,
            }
        }
        if let Some(v) = &u.info.uname {
            writeln!(s, "  uname    {v}")?;
        }
        if let Some(i) = &u.initrd {
            let kinds: Vec<&str> = i.archives.iter().map(|a| a.compression.as_str()).collect();
            writeln!(
                s,
                "  initrd   {} archive(s): {}",
                i.archives.len(),
                kinds.join(", ")
            )?;
            for l in i.layers.iter().filter(|l| l.name != "rootfs.sqsh") {
                writeln!(
                    s,
                    "  layer    {} {} bytes sha256 {}",
                    l.name, l.size, l.sha256
                )?;
            }
            if i.firmware_files > 0 {
                writeln!(s, "  firmware {} file(s) in the initrd", i.firmware_files)?;
            }
            if let Some(n) = &i.note {
                writeln!(s, "  note     {n}")?;
            }
        }
        if let Some(o) = &u.info.osrel {
            if let Some(line) = o.lines().find(|l| l.starts_with("PRETTY_NAME=")) {
                writeln!(s, "  osrel    {line}")?;
            }
        }
    }
    if !i.layers.is_empty() {
        writeln!(s, "extensions (mount order, last on top)")?;
        for l in &i.layers {
            writeln!(
                s,
                "  {:<7} {:<16} {:<20} {}",
                l.image,
                l.name,
                if l.version.len() > 20 {
                    format!("{}…", &l.version[..16])
                } else {
                    l.version.clone()
                },
                l.sha256
                    .as_deref()
                    .map(|d| format!("sha256 {d}"))
                    .unwrap_or_default()
            )?;
        }
    }
    if let Some(id) = &i.schematic_id {
        writeln!(s, "schematic  {id}")?;
    }
    if let Some(m) = &i.manifest {
        match (&m.name, m.build_number, m.ranges, m.mapped_bytes) {
            (Some(n), Some(b), Some(r), Some(bytes)) => writeln!(
                s,
                "manifest   {n} build {b}, {r} ranges, {} mapped; {}",
                crate::progress::human_bytes(bytes),
                match &m.signed_by {
                    Some(k) => format!("signed by key {k} (check it with `edgeimage verify`)"),
                    None => "UNSIGNED".to_string(),
                }
            )?,
            _ => writeln!(
                s,
                "manifest   {}",
                m.note.as_deref().unwrap_or("unreadable")
            )?,
        }
        if !m.slots.is_empty() {
            writeln!(
                s,
                "personalization slots (written per device; `edgeimage verify` reports their digests)"
            )?;
            let width = m.slots.iter().map(|x| x.name.len()).max().unwrap_or(0);
            for slot in &m.slots {
                writeln!(
                    s,
                    "  {:<width$} {:<9} partition {} ({}){}  template sha256 {}",
                    slot.name,
                    slot.place(),
                    slot.partition.number,
                    slot.partition.label,
                    if slot.secret { ", secret" } else { "" },
                    slot.template_sha256
                )?;
            }
        }
    }
    if let Some(c) = &i.config {
        writeln!(
            s,
            "machine configuration ({}), sha256 {}",
            c.delivery, c.sha256
        )?;
        if let Some(t) = &c.machine_type {
            writeln!(s, "  type     {t}")?;
        }
        if let Some(info) = &c.info {
            for (k, v) in [
                ("cluster", &info.cluster_name),
                ("endpoint", &info.control_plane_endpoint),
                ("hostname", &info.hostname),
                ("install", &info.install_disk),
            ] {
                if let Some(v) = v {
                    writeln!(s, "  {k:<8} {v}")?;
                }
            }
        }
        if let Some(n) = &c.note {
            writeln!(s, "  note     {n}")?;
        }
    }
    if let Some(inst) = &i.installer {
        installer::render(&mut s, inst)?;
    }
    if let Some(c) = &i.image_cache {
        writeln!(
            s,
            "image cache (ext4 {:?}): {} image{}, {} blob{}, {} bytes",
            c.label,
            c.images.len(),
            if c.images.len() == 1 { "" } else { "s" },
            c.blobs,
            if c.blobs == 1 { "" } else { "s" },
            c.blob_bytes
        )?;
        for im in &c.images {
            let state = if im.missing.is_empty() {
                String::new()
            } else {
                format!("  INCOMPLETE: lacks {}", im.missing.join(", "))
            };
            writeln!(s, "  {} {} {}{state}", im.reference, im.kind, im.digest)?;
        }
    }
    if let Some(m) = &i.meta {
        match m.copy {
            Some(c) => writeln!(s, "META (copy {c} valid, {} keys)", m.entries.len())?,
            None => writeln!(s, "META (no valid copy: Talos reads it as empty)")?,
        }
        for e in &m.entries {
            let slot = e
                .slot
                .as_deref()
                .map(|n| format!("  (slot {n})"))
                .unwrap_or_default();
            match &e.text {
                Some(t) if t.len() <= 60 && !t.contains('\n') => {
                    writeln!(s, "  {} = {:?}{slot}", e.key, t)?
                }
                _ => writeln!(s, "  {} = <{} bytes>{slot}", e.key, e.size)?,
            }
        }
    }
    Ok(s)
}

/// Refuse paths that are not images early, with a clear message.
pub fn check_target(path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if md.is_dir() {
        bail!(
            "{} is a directory; give an image file (.raw or .raw.zst)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An inline configuration that is a zstd bomb (a few KiB expanding to GiBs) stops at the
    /// machine configuration limit; a real one decodes.
    #[test]
    fn inline_configuration_bomb_is_bounded() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let real = zstd::encode_all(&b"version: v1alpha1\n"[..], 3).unwrap();
        assert_eq!(decode_inline(&b64(&real)).unwrap(), b"version: v1alpha1\n");
        let mut enc = zstd::Encoder::new(Vec::new(), 19).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        let e = format!("{:#}", decode_inline(&b64(&bomb)).unwrap_err());
        assert!(e.contains("expands past 1.0 MiB"), "{e}");
        let e = format!("{:#}", decode_inline("%%%").unwrap_err());
        assert!(e.contains("not base64"), "{e}");
    }

    /// `extensions.yaml` nested 100,000 deep is not handed to the YAML parser (it took
    /// minutes): no layers are listed, at once.
    #[test]
    fn deeply_nested_extensions_yaml_is_not_parsed() {
        let info = initrd::InitrdInfo {
            extensions_yaml: Some("[".repeat(100_000)),
            ..Default::default()
        };
        assert!(layers_of(&info).is_empty());
    }
}
