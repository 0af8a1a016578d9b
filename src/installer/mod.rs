//! The installer image `<name>-installer.raw.zst`: a USB stick that boots into
//! `edgeimage install`, which writes the signed disk image it carries to the host's own disk.
//! `edgeimage build` makes it after the disk image when the profile has an `[installer]`
//! section, from the build's own outputs, byte for byte.
//!
//! | partition (GPT name) | type | content |
//! |---|---|---|
//! | `EFI` | ESP | FAT32 labelled `EFI`: systemd-boot as the removable-media loader, `loader/loader.conf` (`timeout 0`), the installer UKI at [`UKI_PATH`] |
//! | [`PAYLOAD_PARTNAME`] | basic data | FAT labelled [`PAYLOAD_LABEL`]: `<name>.raw.zst`, `<name>.manifest.json`, `<name>.manifest.json.minisig`, `trust/trusted/*.pub`, `trust/revoked` |
//! | [`RECORDS_PARTNAME`] | basic data | FAT labelled [`RECORDS_LABEL`], [`RECORDS_SIZE`]: an empty `records/` the installer writes to |
//!
//! The ESP and the payload partition are the smallest FAT volumes that hold their files (the
//! ESP at least FAT32's minimum); everything is 1 MiB-aligned, the backup GPT sits in the last
//! MiB, and GUIDs derive from the namespace [`namespace`], so rebuilds are byte-identical and
//! no GUID equals one of the disk image's (both disks can be in one machine).
//!
//! The installer UKI is made like the disk image's ([`crate::compose::uki`]) from the
//! profile's `systemd-stub.efi`, the installer kernel (`[installer] kernel`, else the disk
//! image's), the command line `[installer] cmdline` + `edgeimage.install`
//! ([`crate::install::config::CMDLINE_FLAG`]), and an initramfs: a
//! zstd-compressed newc cpio holding `/init` (the static `edgeimage`), [`CONFIG_PATH`] (the
//! [`InstallerConfig`]), the kernel modules under [`MODULES_DIR`], `/dev/console` and the
//! empty `/dev`, `/proc`, `/sys`, `/run`, `/tmp`, every entry owned 0:0 with mtime
//! `SOURCE_DATE_EPOCH`.

pub mod elf;
pub mod modules;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::artifact::{self, Outputs};
use crate::assets::{self, Asset, BootAssets};
use crate::compose::cpio::{self, Entry};
use crate::compose::fat::{self, FatFile, FatParams, LabelRule};
use crate::compose::{self, esp, gpt, uki, Placed, FIRST_OFFSET, TYPE_BASIC_DATA};
use crate::install::config::{
    InstallerConfig, CONFIG_PATH, FORMAT, MODULES_DIR, PAYLOAD_LABEL, PAYLOAD_PARTNAME,
    PAYLOAD_TRUST_DIR, RECORDS_LABEL, RECORDS_PARTNAME,
};
use crate::layout::{Layout, SharedFile};
use crate::profile::{InstallerSpec, Profile};
use crate::progress::Progress;
use crate::sign::SecretKey;
use crate::trust::{Lookup, TrustStore};

/// Where the installer UKI lies in the ESP (systemd-boot finds it there by itself).
pub const UKI_PATH: &str = "EFI/Linux/edgeimage-installer.efi";
/// `loader/loader.conf` of the installer's ESP: its one entry boots at once (hold a key at
/// power-on for systemd-boot's menu).
pub const LOADER_CONF: &str =
    "# systemd-boot configuration written by edgeimage (installer)\n\ntimeout 0\n";
/// Size of the records partition.
pub const RECORDS_SIZE: u64 = 16 << 20;
/// Directory of the install records on the records partition.
pub const RECORDS_DIR: &str = "records";
/// zstd level of the installer's initramfs (the binary is most of it; higher levels gain
/// little for much more time).
pub const INITRAMFS_ZSTD_LEVEL: i32 = 9;
/// The smallest payload partition.
const MIB: u64 = 1 << 20;

/// File name stem of the installer image of profile `name`: `<name>-installer`.
pub fn image_stem(name: &str) -> String {
    format!("{name}-installer")
}

/// The GUID namespace of a profile's installer image. The profile's name is followed by
/// `/installer`, which no profile name contains, so no disk image shares it.
pub fn namespace(name: &str) -> [u8; 16] {
    gpt::namespace(&format!("{name}/installer"))
}

/// The static `edgeimage` that runs as `/init`.
struct Binary {
    file: SharedFile,
    len: u64,
    sha256: String,
    path: PathBuf,
}

/// The installer's inputs, read and checked before the disk image is built, so a bad
/// `[installer]` costs no build.
pub struct Prepared {
    binary: Binary,
    /// The installer's own kernel and its release, if the profile names one.
    kernel: Option<(Asset, Option<String>)>,
    modules: Vec<modules::Module>,
    /// Trust store files: path inside the payload partition, content.
    trust: Vec<(String, Vec<u8>)>,
}

/// Read and check the installer's inputs: the static binary (`binary_override`, else
/// `[installer] binary`, else the running executable), the kernel, the modules and the trust
/// store, which must trust `key` (the key that signs the payload).
pub fn prepare(
    profile: &Profile,
    spec: &InstallerSpec,
    binary_override: Option<&Path>,
    key: &SecretKey,
) -> Result<Prepared> {
    let binary = load_binary(profile, spec, binary_override)?;
    let kernel = match &spec.kernel {
        Some(k) => Some(assets::load_kernel_file(
            "installer.kernel",
            &k.path,
            &k.sha256,
            profile,
        )?),
        None => None,
    };
    let modules = match &spec.modules {
        Some(m) => modules::resolve(m, &profile.path)?,
        None => Vec::new(),
    };
    let trust = trust_files(profile, spec, key)?;
    Ok(Prepared {
        binary,
        kernel,
        modules,
        trust,
    })
}

fn load_binary(
    profile: &Profile,
    spec: &InstallerSpec,
    binary_override: Option<&Path>,
) -> Result<Binary> {
    let hint = "the installer runs it as /init, where no dynamic loader or libraries exist: \
                run `cargo xtask dist` and pass --installer-binary PATH (or set [installer] binary) \
                to the static edgeimage it builds";
    let (path, source) = match (binary_override, &spec.binary) {
        (Some(p), _) => (p.to_path_buf(), "--installer-binary".to_string()),
        (None, Some(p)) => (
            p.clone(),
            format!(
                "profile {}: field `installer.binary`",
                profile.path.display()
            ),
        ),
        (None, None) => (
            std::env::current_exe().with_context(|| {
                format!("cannot find the running executable for the installer; {hint}")
            })?,
            "the running edgeimage (no --installer-binary, no [installer] binary)".to_string(),
        ),
    };
    let input = crate::input::open(&path, crate::input::Kind::InstallerBinary)
        .with_context(|| source.clone())?;
    let len = input.len();
    let file = input.into_file();
    let info =
        elf::read(&file).map_err(|why| anyhow!("{source}: {}: {why}; {hint}", path.display()))?;
    let want = elf::machine_of(profile.arch);
    if info.machine != want {
        bail!(
            "{source}: {} is an ELF executable for machine {} but the profile's arch is {} (machine {want}); give the {} build of edgeimage",
            path.display(),
            info.machine,
            profile.arch,
            profile.arch
        );
    }
    if let Some(interp) = &info.interpreter {
        bail!(
            "{source}: {} is dynamically linked (ELF interpreter {interp}); {hint}",
            path.display()
        );
    }
    let file = SharedFile::new(file, &path);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], off)
            .with_context(|| format!("{source}: reading {}", path.display()))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Binary {
        file,
        len,
        sha256: hex::encode(h.finalize()),
        path,
    })
}

/// The trust store files for the payload partition: the profile's `[installer] trust`
/// directory (which must trust the signing key), else the signing key's public key alone.
fn trust_files(
    profile: &Profile,
    spec: &InstallerSpec,
    key: &SecretKey,
) -> Result<Vec<(String, Vec<u8>)>> {
    let id = key.key_id_hex();
    let Some(dir) = &spec.trust else {
        return Ok(vec![(
            format!("{PAYLOAD_TRUST_DIR}/trusted/{id}.pub"),
            key.public().to_file_text().into_bytes(),
        )]);
    };
    let field = format!(
        "profile {}: field `installer.trust`",
        profile.path.display()
    );
    let store = TrustStore::load(dir).map_err(|e| anyhow!("{field}: {e:#}"))?;
    match store.lookup(&id) {
        Lookup::Trusted(_) => {}
        Lookup::Revoked(line) => bail!(
            "{field}: {}/revoked line {line} revokes the signing key {id}: the installer would refuse its own payload; sign with a trusted key or use another trust store",
            dir.display()
        ),
        Lookup::Unknown => bail!(
            "{field}: the trust store {} does not trust the signing key {id} (it trusts {}): the installer would refuse its own payload; add the key's .pub under trusted/ or sign with a trusted key",
            dir.display(),
            store.key_ids().join(", ")
        ),
    }
    Ok(store
        .files()
        .iter()
        .map(|(rel, data)| (format!("{PAYLOAD_TRUST_DIR}/{rel}"), data.clone()))
        .collect())
}

/// The build's outputs the installer carries.
pub struct Payload<'a> {
    /// `<name>.raw.zst` as written.
    pub image: &'a Path,
    /// Its size as written (checked again when it is opened).
    pub image_size: u64,
    /// `<name>.manifest.json`, the bytes written.
    pub manifest: &'a [u8],
    /// `<name>.manifest.json.minisig`, the text written.
    pub signature: &'a str,
}

/// Where the installer image goes and how.
pub struct Target<'a> {
    pub out_dir: &'a Path,
    /// Also write `<name>-installer.raw`.
    pub raw: bool,
    /// The payload carries a machine configuration: the files are mode 0600.
    pub secret: bool,
    pub epoch: u64,
}

/// What was built.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstallerReport {
    pub outputs: Outputs,
    pub partitions: Vec<Placed>,
    /// The installer UKI's command line.
    pub cmdline: String,
    pub uki_size: u64,
    /// Size of the compressed initramfs.
    pub initramfs_size: u64,
    /// Where the installer kernel came from and its digest.
    pub kernel: String,
    pub kernel_sha256: String,
    /// The `/init` binary and its digest.
    pub binary: PathBuf,
    pub binary_sha256: String,
    /// The configuration in the initramfs.
    pub config: InstallerConfig,
    /// The files of the payload partition and their sizes.
    pub payload: Vec<PayloadFile>,
}

/// One file of the payload partition.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PayloadFile {
    pub path: String,
    pub size: u64,
}

/// Compose and write the installer image. `assets` are the disk image's checked boot assets
/// (systemd-boot, the stub, and the default kernel).
pub fn build(
    profile: &Profile,
    spec: &InstallerSpec,
    prepared: &Prepared,
    a: &BootAssets,
    payload: &Payload,
    target: &Target,
    progress: &mut dyn Progress,
) -> Result<InstallerReport> {
    progress.phase("composing the installer");
    let epoch = target.epoch;
    let name = &profile.name;
    let config = InstallerConfig {
        format: FORMAT.to_string(),
        name: name.clone(),
        build_number: profile.build_number,
        modules: prepared.modules.iter().map(|m| m.file_name()).collect(),
        wait_seconds: spec.wait_seconds,
        disk: spec.disk.clone(),
        wipe_other_metas: spec.wipe_other_metas,
        on_success: spec.on_success,
        on_failure: spec.on_failure,
    };
    let mut json = serde_json::to_vec_pretty(&config)?;
    json.push(b'\n');
    let initrd = initramfs(&prepared.binary, &json, &prepared.modules, epoch)
        .context("packing the installer's initramfs")?;
    let initramfs_size = initrd.len();

    let stub = assets::read_all(&a.systemd_stub, compose::STUB_LIMIT)?;
    let (kernel, uname) = match &prepared.kernel {
        Some((k, release)) => (k, release.as_deref()),
        None => (&a.kernel, a.kernel_version.as_deref()),
    };
    let mut kernel_layout = Layout::new(kernel.len);
    kernel_layout.put_file(0, kernel.file.clone(), 0, kernel.len)?;
    let osrel = os_release(profile);
    let uki = uki::build(&uki::UkiInput {
        stub: &stub,
        osrel: &osrel,
        cmdline: &spec.cmdline,
        uname,
        kernel: &kernel_layout,
        initrd: &initrd,
        // The installer boots one way only.
        profiles: &[],
        epoch,
    })
    .with_context(|| {
        format!(
            "assembling the installer UKI from {}",
            a.systemd_stub.origin
        )
    })?;
    let uki_size = uki.len();

    let ns = namespace(name);
    let guid = |label: &str| gpt::guid_v8(&ns, label);
    let mut boot = Layout::new(a.systemd_boot.len);
    boot.put_file(0, a.systemd_boot.file.clone(), 0, a.systemd_boot.len)?;
    let esp_layout = esp::build(esp::EspInput {
        size: None,
        // A USB stick: 512-byte blocks.
        first_lba: FIRST_OFFSET / gpt::SECTOR,
        sector_size: gpt::SECTOR,
        volume_id: compose::volume_id(&guid(esp::LABEL)),
        epoch,
        arch: profile.arch,
        uki_path: UKI_PATH.to_string(),
        loader_conf: LOADER_CONF,
        systemd_boot: boot,
        uki,
    })
    .context("composing the installer's ESP")?;

    let payload_offset = FIRST_OFFSET + esp_layout.len();
    let (files, listed) = payload_files(name, payload, &prepared.trust)?;
    let payload_layout = fat::build_smallest(
        &FatParams::new(
            0,
            PAYLOAD_LABEL,
            compose::volume_id(&guid(PAYLOAD_PARTNAME)),
            sector_u32(payload_offset)?,
            epoch,
        ),
        &files,
        &[],
        LabelRule::Uppercase,
        MIB,
    )
    .context("composing the installer's payload partition")?;

    let records_offset = payload_offset + payload_layout.len();
    let records_layout = fat::build_fat_dirs(
        &FatParams::new(
            RECORDS_SIZE,
            RECORDS_LABEL,
            compose::volume_id(&guid(RECORDS_PARTNAME)),
            sector_u32(records_offset)?,
            epoch,
        ),
        &[],
        &[RECORDS_DIR],
        LabelRule::Uppercase,
    )
    .context("composing the installer's records partition")?;

    // The last MiB holds the backup GPT.
    let disk_size = records_offset + RECORDS_SIZE + MIB;
    let (layout, placed) = compose::place_partitions(
        disk_size,
        &ns,
        &[
            (esp::LABEL, gpt::TYPE_EFI, &esp_layout),
            (PAYLOAD_PARTNAME, TYPE_BASIC_DATA, &payload_layout),
            (RECORDS_PARTNAME, TYPE_BASIC_DATA, &records_layout),
        ],
        gpt::SECTOR,
    )?;

    progress.phase("writing the installer image");
    let total = layout.len();
    let spec_out = artifact::ImageSpec {
        layout: &layout,
        partitions: placed.iter().map(|p| (p.offset, p.size)).collect(),
        // Nothing is written late: an empty region at the end.
        late: (total, 0),
        slots: Vec::new(),
    };
    let (outputs, _) = artifact::write_image(
        &spec_out,
        target.out_dir,
        &image_stem(name),
        target.raw,
        target.secret,
        &mut |_| Ok(Vec::new()),
        &mut |done, all| progress.bytes(done, all),
    )?;
    Ok(InstallerReport {
        outputs,
        partitions: placed,
        cmdline: spec.cmdline.clone(),
        uki_size,
        initramfs_size,
        kernel: kernel.origin.clone(),
        kernel_sha256: kernel.sha256.clone(),
        binary: prepared.binary.path.clone(),
        binary_sha256: prepared.binary.sha256.clone(),
        config,
        payload: listed,
    })
}

/// The LBA of a byte offset as a FAT boot sector stores it.
fn sector_u32(offset: u64) -> Result<u32> {
    u32::try_from(offset / gpt::SECTOR).map_err(|_| {
        anyhow!(
            "a partition at byte {offset} starts beyond the 2 TiB a FAT boot sector can describe"
        )
    })
}

/// The payload partition's files: the image (a region of the written file), the manifest, its
/// signature, the trust store.
fn payload_files(
    name: &str,
    payload: &Payload,
    trust: &[(String, Vec<u8>)],
) -> Result<(Vec<FatFile>, Vec<PayloadFile>)> {
    let file = File::open(payload.image)
        .with_context(|| format!("opening the built image {}", payload.image.display()))?;
    let len = file.metadata()?.len();
    if len != payload.image_size {
        bail!(
            "{} is {len} bytes, but {} were written: it changed after it was built; build again",
            payload.image.display(),
            payload.image_size
        );
    }
    let mut image = Layout::new(len);
    image.put_file(0, SharedFile::new(file, payload.image), 0, len)?;
    let mut files = vec![
        FatFile {
            path: format!("{name}.raw.zst"),
            content: image,
        },
        FatFile {
            path: format!("{name}.manifest.json"),
            content: Layout::from_bytes(payload.manifest.to_vec()),
        },
        FatFile {
            path: format!("{name}.manifest.json.minisig"),
            content: Layout::from_bytes(payload.signature.as_bytes().to_vec()),
        },
    ];
    for (path, data) in trust {
        files.push(FatFile {
            path: path.clone(),
            content: Layout::from_bytes(data.clone()),
        });
    }
    let listed = files
        .iter()
        .map(|f| PayloadFile {
            path: f.path.clone(),
            size: f.content.len(),
        })
        .collect();
    Ok((files, listed))
}

/// The installer UKI's `.osrel`: systemd-boot shows `PRETTY_NAME` in its menu.
pub fn os_release(profile: &Profile) -> String {
    format!(
        "NAME=\"edgeimage installer\"\nID=edgeimage-installer\nVERSION_ID={}\nPRETTY_NAME=\"edgeimage installer: {} build {} (Talos {})\"\n",
        profile.build_number, profile.name, profile.build_number, profile.talos.tag
    )
}

/// The zstd-compressed newc initramfs, written to an anonymous temporary file.
fn initramfs(
    binary: &Binary,
    config_json: &[u8],
    modules: &[modules::Module],
    epoch: u64,
) -> Result<Layout> {
    let config_path = CONFIG_PATH.trim_start_matches('/');
    let modules_dir = MODULES_DIR.trim_start_matches('/');
    let mut files: Vec<(String, &[u8])> = vec![(config_path.to_string(), config_json)];
    for m in modules {
        files.push((format!("{modules_dir}/{}", m.file_name()), &m.data));
    }
    // The mount points the installer uses, the modules' directory, every file's parents.
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut add = |dir: &str| {
        let mut p = dir;
        loop {
            dirs.insert(p.to_string());
            match p.rsplit_once('/') {
                Some((parent, _)) => p = parent,
                None => break,
            }
        }
    };
    for d in ["dev", "proc", "sys", "run", "tmp", modules_dir] {
        add(d);
    }
    for (path, _) in &files {
        if let Some((parent, _)) = path.rsplit_once('/') {
            add(parent);
        }
    }

    let mut init = Layout::new(binary.len);
    init.put_file(0, binary.file.clone(), 0, binary.len)?;
    let mut entries: Vec<Entry> = dirs
        .iter()
        .map(|d| Entry::dir(d.clone(), if d == "tmp" { 0o1777 } else { 0o755 }).with_mtime(epoch))
        .collect();
    entries.push(Entry::char_device("dev/console", 0o600, 5, 1).with_mtime(epoch));
    entries.push(Entry::file("init", 0o755, binary.len, init.reader()).with_mtime(epoch));
    for (path, data) in &files {
        entries.push(Entry::file_bytes(path.clone(), 0o644, data).with_mtime(epoch));
    }
    cpio::sort(&mut entries);

    let file = tempfile::tempfile().context("creating a temporary file for the initramfs")?;
    let enc = zstd::stream::Encoder::new(BufWriter::new(&file), INITRAMFS_ZSTD_LEVEL)
        .context("starting zstd")?;
    let mut w = cpio::Writer::new(enc);
    w.append_all(entries)?;
    let enc = w.finish()?;
    let mut out = enc.finish().context("compressing the initramfs")?;
    out.flush().context("writing the initramfs")?;
    drop(out);
    let len = file.metadata()?.len();
    let mut l = Layout::new(len);
    l.put_file(0, SharedFile::new(file, "<installer initramfs>"), 0, len)?;
    Ok(l)
}
