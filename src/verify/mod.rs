//! `edgeimage verify`: prove that an image, a compressed image, a manifest or a written disk
//! holds exactly what a trusted key signed.
//!
//! Order of the checks, each with its own [`Outcome`] (and exit code):
//!
//! 1. find the manifest and its signature: inside the target (the manifest partition) for
//!    images and disks, next to it (`<name>.manifest.json` + `.minisig`) for compressed images
//!    and manifests, or the file given with `--manifest`; none, or no signature: *unsigned*;
//! 2. the signing key: revoked in the trust store: *revoked key*; not in it: *unknown key*;
//! 3. the signature (strict Ed25519 over the manifest's BLAKE2b-512, then the global
//!    signature over the trusted comment), and the trusted comment naming the manifest's
//!    profile, Talos version and build number: else *bad signature*;
//! 4. `--profile`: media of another profile: *wrong profile*; `--min-build`: an older build
//!    number: *rollback* (together they refuse older builds of the same profile);
//! 5. the content: every range of the block map read from the target and its SHA-256
//!    compared (for compressed images also the compressed file's digest): *content mismatch*,
//!    with partition, byte range, expected and actual digests; a target that cannot be read:
//!    *unreadable target*.
//! 6. personalization slots ([`slots`]): the partitions the block map leaves out because they
//!    differ per device are checked as strictly as a per-device value allows (the base META
//!    values unchanged, nothing else added, every byte as edgeimage encodes it) and each
//!    slot's value is reported by its digest: *content mismatch* naming the key otherwise.
//!
//! Only described ranges (and slot partitions) are read; a reader thread reads while the
//! calling thread hashes.

pub mod slots;
pub mod target;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::artifact::manifest::{self, Manifest};
use crate::artifact::windows::WindowHasher;
use crate::progress::Progress;
use crate::sign::Signature;
use crate::trust::{Lookup, TrustStore};
use target::{AlignedBuf, Kind, Source};

/// How a verification ended. Each has its own exit code (see [`Outcome::exit_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Verified,
    /// Something else went wrong (the trust store, a manifest this version cannot read).
    Error,
    Unsigned,
    UnknownKey,
    RevokedKey,
    BadSignature,
    ContentMismatch,
    UnreadableTarget,
    Rollback,
    WrongProfile,
}

impl Outcome {
    /// The process exit code `edgeimage verify` ends with.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Verified => 0,
            Outcome::Error => 1,
            Outcome::Unsigned => 3,
            Outcome::UnknownKey => 4,
            Outcome::RevokedKey => 5,
            Outcome::BadSignature => 6,
            Outcome::ContentMismatch => 7,
            Outcome::UnreadableTarget => 8,
            Outcome::Rollback => 9,
            Outcome::WrongProfile => 10,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Outcome::Verified => "VERIFIED",
            Outcome::Error => "ERROR",
            Outcome::Unsigned => "UNSIGNED",
            Outcome::UnknownKey => "UNKNOWN KEY",
            Outcome::RevokedKey => "REVOKED KEY",
            Outcome::BadSignature => "BAD SIGNATURE",
            Outcome::ContentMismatch => "CONTENT MISMATCH",
            Outcome::UnreadableTarget => "UNREADABLE",
            Outcome::Rollback => "ROLLBACK",
            Outcome::WrongProfile => "WRONG PROFILE",
        }
    }
}

/// What to verify against.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The trust store directory (`trusted/*.pub`, `revoked`).
    pub trust: PathBuf,
    /// Refuse builds with a smaller build number.
    pub min_build: Option<u64>,
    /// Refuse media built from another profile (the manifest's `name`).
    pub profile: Option<String>,
    /// Use this manifest (its signature next to it) instead of looking for one.
    pub manifest: Option<PathBuf>,
}

/// One range whose bytes differ from the manifest's.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    /// `partition 1 (EFI)`, `the backup GPT`, …
    pub place: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    pub expected: String,
    /// `None`: the bytes are missing (the target is too short).
    pub actual: Option<String>,
    /// The whole compressed file, not a range of the image.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub whole_file: bool,
    /// What differs inside a slot partition (a META key, the metal-iso volume), when the
    /// mismatch is not a block-map range's digest; `start`-`end` is then the partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

/// The result, for people (`verdict`, `details`) and machines (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: PathBuf,
    pub kind: Option<Kind>,
    pub outcome: Outcome,
    pub exit_code: u8,
    /// One line saying what was proven or what failed.
    pub verdict: String,
    /// Where the manifest came from.
    pub manifest_source: Option<String>,
    pub name: Option<String>,
    pub build_number: Option<u64>,
    pub talos_version: Option<String>,
    pub key_id: Option<String>,
    pub key_file: Option<PathBuf>,
    /// SHA-256 of the manifest's bytes (what the signature covers).
    pub manifest_sha256: Option<String>,
    /// Block-map ranges compared.
    pub ranges_checked: u64,
    /// Bytes read from the target for the comparison.
    pub bytes_read: u64,
    pub mismatches: Vec<Mismatch>,
    /// Each personalization slot of the manifest and what the target holds for it (empty
    /// when the manifest has none or no content was read).
    pub slots: Vec<slots::SlotReport>,
    pub seconds: f64,
}

impl Report {
    /// Lines to print after the verdict: each mismatch, then each personalization slot
    /// (its digest and size, never its content).
    pub fn details(&self) -> Vec<String> {
        self.mismatches
            .iter()
            .map(|m| match (&m.what, &m.actual) {
                (Some(what), _) => format!("  {}: {what}", m.place),
                (None, Some(a)) => format!(
                    "  {}: bytes {}-{}: expected sha256 {}, found {}",
                    m.place,
                    m.start,
                    m.end - 1,
                    m.expected,
                    a
                ),
                (None, None) => format!(
                    "  {}: bytes {}-{}: missing (expected sha256 {})",
                    m.place,
                    m.start,
                    m.end - 1,
                    m.expected
                ),
            })
            .chain(self.slots.iter().map(slots::SlotReport::line))
            .collect()
    }
}

/// A manifest found for the target, with its signature text.
struct Found {
    bytes: Vec<u8>,
    signature: Option<String>,
    source: String,
}

/// Why a verification stopped: its outcome and the verdict's text.
pub struct Stop(pub Outcome, pub String);

impl From<(Outcome, String)> for Stop {
    fn from((o, s): (Outcome, String)) -> Stop {
        Stop(o, s)
    }
}

impl Report {
    /// An empty report for `target` (outcome [`Outcome::Error`] until decided).
    pub fn new(target: &Path) -> Report {
        Report {
            target: target.to_path_buf(),
            kind: None,
            outcome: Outcome::Error,
            exit_code: 1,
            verdict: String::new(),
            manifest_source: None,
            name: None,
            build_number: None,
            talos_version: None,
            key_id: None,
            key_file: None,
            manifest_sha256: None,
            ranges_checked: 0,
            bytes_read: 0,
            mismatches: Vec::new(),
            slots: Vec::new(),
            seconds: 0.0,
        }
    }
}

/// Verify `target`. Never fails: every failure is an [`Outcome`] in the report.
pub fn verify(target: &Path, opts: &VerifyOptions, progress: &mut dyn Progress) -> Report {
    let t0 = Instant::now();
    let mut r = Report::new(target);
    let (outcome, verdict) = match run(target, opts, progress, &mut r) {
        Ok(v) => (Outcome::Verified, v),
        Err(Stop(o, v)) => (o, v),
    };
    progress.finish();
    r.outcome = outcome;
    r.exit_code = outcome.exit_code();
    // The target is named once, even when the reason starts with it.
    let shown = target.display().to_string();
    let verdict = verdict
        .strip_prefix(&format!("{shown}: "))
        .unwrap_or(&verdict);
    r.verdict = format!("{}: {shown}: {verdict}", outcome.word());
    r.seconds = t0.elapsed().as_secs_f64();
    r
}

fn unreadable(e: impl std::fmt::Display) -> Stop {
    Stop(Outcome::UnreadableTarget, e.to_string())
}

fn run(
    target: &Path,
    opts: &VerifyOptions,
    progress: &mut dyn Progress,
    r: &mut Report,
) -> Result<String, Stop> {
    let kind = target::classify(target).map_err(|e| unreadable(format!("{e:#}")))?;
    r.kind = Some(kind);
    progress.phase("reading the manifest");
    let (m, signed) = authenticate(target, kind, opts, r)?;
    run_content(target, kind, &m, &signed, progress, r)
}

/// Steps 1-4: find the manifest of `target`, check its signature against the trust store and
/// the `--profile`/`--min-build` rules. Returns the manifest and a sentence saying who signed
/// what; fills the report's manifest fields as it learns them.
pub fn authenticate(
    target: &Path,
    kind: Kind,
    opts: &VerifyOptions,
    r: &mut Report,
) -> Result<(Manifest, String), Stop> {
    let store =
        TrustStore::load(&opts.trust).map_err(|e| Stop(Outcome::Error, format!("{e:#}")))?;
    let found = find_manifest(target, kind, opts.manifest.as_deref())?;
    r.manifest_source = Some(found.source.clone());
    r.manifest_sha256 = Some(hex::encode(Sha256::digest(&found.bytes)));
    let Some(sig_text) = &found.signature else {
        return Err((
            Outcome::Unsigned,
            format!(
                "the manifest ({}) has no signature: the build was not signed; sign it with `edgeimage build --sign-key` or `edgeimage sign`",
                found.source
            ),
        )
            .into());
    };
    let sig = Signature::parse(sig_text).map_err(|e| {
        Stop::from((
            Outcome::BadSignature,
            format!("the signature of {} is unreadable: {e:#}", found.source),
        ))
    })?;
    let key_id = sig.key_id_hex();
    r.key_id = Some(key_id.clone());
    let key = match store.lookup(&key_id) {
        Lookup::Revoked(line) => {
            return Err((
                Outcome::RevokedKey,
                format!(
                    "signed by key {key_id}, which is revoked ({}, line {line})",
                    store.dir.join("revoked").display()
                ),
            )
                .into())
        }
        Lookup::Unknown => {
            return Err((
                Outcome::UnknownKey,
                format!(
                    "signed by key {key_id}, which is not in the trust store {} (trusted: {})",
                    store.dir.join("trusted").display(),
                    store.key_ids().join(", ")
                ),
            )
                .into())
        }
        Lookup::Trusted(k) => k,
    };
    r.key_file = Some(key.path.clone());
    sig.verify(&key.key, &found.bytes).map_err(|e| {
        Stop::from((
            Outcome::BadSignature,
            format!(
                "the signature by key {key_id} does not match the manifest ({}): {e}",
                found.source
            ),
        ))
    })?;
    let m = Manifest::parse(&found.bytes, &found.source)
        .map_err(|e| Stop(Outcome::Error, format!("{e:#}")))?;
    r.name = Some(m.name.clone());
    r.build_number = Some(m.build_number);
    r.talos_version = Some(m.talos_version.clone());
    if sig.trusted_comment != m.trusted_comment() {
        return Err((
            Outcome::BadSignature,
            format!(
                "the signature's trusted comment {:?} does not name this manifest ({:?})",
                sig.trusted_comment,
                m.trusted_comment()
            ),
        )
            .into());
    }
    if let Some(want) = &opts.profile {
        if &m.name != want {
            return Err((
                Outcome::WrongProfile,
                format!(
                    "built from profile {:?} (build {}), not {want:?} (--profile)",
                    m.name, m.build_number
                ),
            )
                .into());
        }
    }
    if let Some(min) = opts.min_build {
        if m.build_number < min {
            return Err((
                Outcome::Rollback,
                format!(
                    "{} build {} is older than the minimum build {min} (--min-build)",
                    m.name, m.build_number
                ),
            )
                .into());
        }
    }
    let signed = format!(
        "{} build {} (Talos {}, {}) signed by key {key_id} ({})",
        m.name,
        m.build_number,
        m.talos_version,
        m.arch,
        key.path.display()
    );
    Ok((m, signed))
}

/// Step 5: the content of `target` against the authenticated manifest.
fn run_content(
    target: &Path,
    kind: Kind,
    m: &Manifest,
    signed: &str,
    progress: &mut dyn Progress,
    r: &mut Report,
) -> Result<String, Stop> {
    let what = match kind {
        Kind::Manifest => {
            let Some(a) = &m.artifact else {
                return Ok(format!(
                    "{signed}; the manifest describes no compressed file"
                ));
            };
            let dir = target.parent().unwrap_or(Path::new("."));
            let file = dir.join(&a.file);
            if !file.exists() {
                return Ok(format!(
                    "{signed}; {} is not next to the manifest, so no content was checked (verify the image or disk itself)",
                    a.file
                ));
            }
            progress.phase("checking the compressed image");
            check_compressed(&file, m, progress, r)?;
            format!("{} ({})", file.display(), Kind::Compressed.as_str())
        }
        Kind::Compressed => {
            progress.phase("checking the compressed image");
            check_compressed(target, m, progress, r)?;
            Kind::Compressed.as_str().to_string()
        }
        Kind::Image | Kind::Device => {
            progress.phase("checking the image's ranges");
            check_ranges(target, kind, m, progress, r)?;
            kind.as_str().to_string()
        }
    };
    if !r.mismatches.is_empty() {
        let ranges: Vec<&Mismatch> = r
            .mismatches
            .iter()
            .filter(|x| !x.whole_file && x.what.is_none())
            .collect();
        let file_bad = r.mismatches.iter().any(|x| x.whole_file);
        let slot_bad: Vec<&Mismatch> = r.mismatches.iter().filter(|x| x.what.is_some()).collect();
        let missing = ranges.iter().filter(|x| x.actual.is_none()).count();
        let differ = ranges.len() - missing;
        let n = m.block_map.ranges.len();
        let mut parts = Vec::new();
        if differ > 0 {
            parts.push(format!("{differ} of {n} ranges differ"));
        }
        if missing > 0 {
            parts.push(format!(
                "{missing} of {n} ranges are missing (the target is shorter than the image: truncated?)"
            ));
        }
        if file_bad {
            parts.push("the compressed file differs from the one the manifest describes".into());
        }
        if let Some(first) = slot_bad.first() {
            let more = match slot_bad.len() {
                1 => String::new(),
                n => format!(" (and {} more slot problems)", n - 1),
            };
            parts.push(format!(
                "in {}: {}{more}",
                first.place,
                first.what.as_deref().unwrap_or_default()
            ));
        }
        let mut what = parts.join(", ");
        if let Some(first) = ranges.first() {
            what.push_str(&format!(
                "; first in {} at bytes {}-{}",
                first.place,
                first.start,
                first.end - 1
            ));
        }
        return Err((Outcome::ContentMismatch, format!("{signed}, but {what}")).into());
    }
    let slots = match r.slots.len() {
        0 => String::new(),
        1 => "; 1 personalization slot (below)".to_string(),
        n => format!("; {n} personalization slots (below)"),
    };
    Ok(format!(
        "{signed}; {} ranges, {} read from the {what}, all match{slots}",
        r.ranges_checked,
        crate::progress::human_bytes(r.bytes_read)
    ))
}

/// The manifest for `target`: `--manifest`, else inside the target, else next to it.
fn find_manifest(target: &Path, kind: Kind, explicit: Option<&Path>) -> Result<Found, Stop> {
    let sidecar = |m: &Path| -> Result<Found, Stop> {
        let bytes = crate::input::read(m, crate::input::Kind::Manifest)
            .map_err(|e| unreadable(format!("{e:#}")))?;
        let sig_path = PathBuf::from(format!("{}.minisig", m.display()));
        let signature = crate::input::read_optional(&sig_path, crate::input::Kind::Signature)
            .and_then(|b| {
                b.map(|b| crate::input::text(b, &sig_path, crate::input::Kind::Signature))
                    .transpose()
            })
            .map_err(|e| unreadable(format!("{e:#}")))?;
        Ok(Found {
            bytes,
            signature,
            source: m.display().to_string(),
        })
    };
    if let Some(m) = explicit {
        return sidecar(m);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let next_to = |suffix: &str| -> Option<PathBuf> {
        let stem = name.strip_suffix(suffix)?;
        let p = target.with_file_name(format!("{stem}.manifest.json"));
        p.exists().then_some(p)
    };
    match kind {
        Kind::Manifest => sidecar(target),
        Kind::Compressed => match next_to(".raw.zst").or_else(|| next_to(".zst")) {
            Some(p) => sidecar(&p),
            None => embedded_in_compressed(target),
        },
        // No manifest partition, or one cut off by truncation: the manifest next to the
        // image still says what every range should hold.
        Kind::Image | Kind::Device => match embedded_in_disk(target, kind) {
            Ok(f) => Ok(f),
            Err(Stop(o @ (Outcome::Unsigned | Outcome::ContentMismatch), why)) => {
                match next_to(".raw") {
                    Some(p) => sidecar(&p),
                    None => Err((o, why).into()),
                }
            }
            Err(e) => Err(e),
        },
    }
}

/// The manifest of `target` and where it came from, read without checking any signature
/// (`flash --allow-unsigned` still uses an unsigned manifest's block map and digests).
pub fn read_manifest_unchecked(
    target: &Path,
    kind: Kind,
    explicit: Option<&Path>,
) -> Result<(Manifest, String), Stop> {
    let found = find_manifest(target, kind, explicit)?;
    let m = Manifest::parse(&found.bytes, &found.source)
        .map_err(|e| Stop(Outcome::Error, format!("{e:#}")))?;
    Ok((m, found.source))
}

/// Locate the manifest partition through the GPT in `head` (the first bytes of the disk).
fn manifest_location(head: &[u8], what: &str) -> Result<(u64, u64), Stop> {
    let no_manifest = |why: String| -> Stop {
        (
            Outcome::Unsigned,
            format!("{what}: no edgeimage manifest: {why}; pass the manifest with --manifest FILE if you have it"),
        )
            .into()
    };
    // CRCs unchecked: the table's bytes are proven against the manifest afterwards, where a
    // changed byte is reported at its range.
    let table =
        crate::format::gpt::read_head(head, false).map_err(|e| no_manifest(format!("{e:#}")))?;
    let entries = &table.entries;
    let ty: uuid::Uuid = crate::compose::TYPE_MANIFEST
        .parse()
        .map_err(|_| no_manifest("bad type constant".into()))?;
    let e = entries
        .iter()
        .find(|e| e.type_guid == ty)
        .or_else(|| table.by_name(crate::compose::MANIFEST_LABEL))
        .ok_or_else(|| {
            no_manifest(format!(
                "the partition table has no {} partition",
                crate::compose::MANIFEST_LABEL
            ))
        })?;
    let block = table.sector_size;
    Ok((
        e.offset(block),
        e.size(block).min(manifest::MAX_PARTITION_READ),
    ))
}

fn decode(data: &[u8], what: &str) -> Result<Found, Stop> {
    let emb = manifest::decode_partition(data, what)
        .map_err(|e| Stop::from((Outcome::Unsigned, format!("{e:#}"))))?;
    Ok(Found {
        bytes: emb.manifest,
        signature: emb.signature,
        source: format!("the manifest inside {what}"),
    })
}

fn embedded_in_disk(target: &Path, kind: Kind) -> Result<Found, Stop> {
    let src = Source::open(target, kind).map_err(|e| unreadable(format!("{e:#}")))?;
    let what = target.display().to_string();
    let head_len = (64 << 10).min(src.size) as usize;
    let head = src
        .read_vec(0, head_len)
        .map_err(|e| unreadable(format!("reading the partition table of {what}: {e}")))?;
    let (off, size) = manifest_location(&head, &what)?;
    if off + size > src.size {
        return Err((
            Outcome::ContentMismatch,
            format!(
                "the manifest partition (bytes {off}-{}) lies past the end of {what} ({} bytes): the image is truncated",
                off + size - 1,
                src.size
            ),
        )
            .into());
    }
    let data = src
        .read_vec(off, size as usize)
        .map_err(|e| unreadable(format!("reading the manifest partition of {what}: {e}")))?;
    decode(&data, &what)
}

fn open_image(path: &Path) -> Result<File, Stop> {
    crate::input::open(path, crate::input::Kind::Image)
        .map(crate::input::Input::into_file)
        .map_err(|e| unreadable(format!("{e:#}")))
}

fn zstd_reader(path: &Path) -> Result<zstd::Decoder<'static, io::BufReader<File>>, Stop> {
    let f = open_image(path)?;
    zstd::Decoder::new(f).map_err(|e| unreadable(format!("{}: {e}", path.display())))
}

fn embedded_in_compressed(target: &Path) -> Result<Found, Stop> {
    let what = target.display().to_string();
    let damaged = |e: io::Error| -> Stop {
        (
            Outcome::ContentMismatch,
            format!("{what}: the compressed image is damaged: {e}"),
        )
            .into()
    };
    let mut dec = zstd_reader(target)?;
    let head = target::read_prefix(&mut dec, 64 << 10).map_err(damaged)?;
    let (off, size) = manifest_location(&head, &what)?;
    let skip = off - head.len() as u64;
    let skipped = io::copy(&mut (&mut dec).take(skip), &mut io::sink()).map_err(damaged)?;
    let data = target::read_prefix(&mut dec, size as usize).map_err(damaged)?;
    if skipped < skip || (data.len() as u64) < size {
        return Err((
            Outcome::ContentMismatch,
            format!("{what}: the compressed image ends before its manifest partition: truncated"),
        )
            .into());
    }
    decode(&data, &what)
}

/// The block map's ranges as byte windows.
fn windows(m: &Manifest) -> Vec<(u64, u64)> {
    m.block_map.ranges.iter().map(|r| m.byte_range(r)).collect()
}

/// Compare what the window hasher measured with the manifest.
fn compare(m: &Manifest, sums: Vec<String>, present_until: u64, r: &mut Report) {
    for (range, got) in m.block_map.ranges.iter().zip(sums) {
        let (a, b) = m.byte_range(range);
        if b > present_until {
            r.mismatches.push(Mismatch {
                place: m.place_of(a),
                start: a,
                end: b,
                expected: range.sha256.clone(),
                actual: None,
                whole_file: false,
                what: None,
            });
        } else {
            r.ranges_checked += 1;
            if got != range.sha256 {
                r.mismatches.push(Mismatch {
                    place: m.place_of(a),
                    start: a,
                    end: b,
                    expected: range.sha256.clone(),
                    actual: Some(got),
                    whole_file: false,
                    what: None,
                });
            }
        }
    }
}

/// Read every range from an image file or a block device (a reader thread, one range per
/// read) and hash the ranges on every core while the next ones are read.
fn check_ranges(
    target: &Path,
    kind: Kind,
    m: &Manifest,
    progress: &mut dyn Progress,
    r: &mut Report,
) -> Result<(), Stop> {
    let src = Source::open(target, kind).map_err(|e| unreadable(format!("{e:#}")))?;
    let wins = windows(m);
    // What the target is too short to hold is missing, not unreadable.
    let present_until = src.size.min(m.image.size);
    let to_read: Vec<(usize, u64, u64)> = wins
        .iter()
        .enumerate()
        .filter(|(_, &(_, b))| b <= present_until)
        .map(|(i, &(a, b))| (i, a, b))
        .collect();
    let total: u64 = to_read.iter().map(|(_, a, b)| b - a).sum();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let piece = (manifest::MAX_RANGE_BLOCKS * manifest::BLOCK_SIZE) as usize;
    let (tx, rx) = sync_channel::<(usize, AlignedBuf)>(workers + 1);
    let rx = std::sync::Mutex::new(rx);
    let (back_tx, back_rx) = sync_channel::<AlignedBuf>(2 * workers + 2);
    for _ in 0..2 * workers + 2 {
        let _ = back_tx.send(AlignedBuf::new(piece));
    }
    let (sum_tx, sum_rx) = std::sync::mpsc::channel::<(usize, String, u64)>();
    let src_ref = &src;
    let rx_ref = &rx;
    let mut sums = vec![String::new(); wins.len()];
    let mut done = 0u64;
    let read = std::thread::scope(|s| {
        let reader = s.spawn(move || -> io::Result<()> {
            for (i, a, b) in to_read {
                let Ok(mut buf) = back_rx.recv() else {
                    return Ok(());
                };
                src_ref.read_at(&mut buf, a, (b - a) as usize)?;
                if tx.send((i, buf)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        for _ in 0..workers {
            let sum_tx = sum_tx.clone();
            let back_tx = back_tx.clone();
            s.spawn(move || loop {
                let next = match rx_ref.lock() {
                    Ok(g) => g.recv(),
                    Err(_) => return,
                };
                let Ok((i, buf)) = next else { return };
                let data = buf.as_slice();
                let sum = hex::encode(Sha256::digest(data));
                let n = data.len() as u64;
                let _ = back_tx.send(buf);
                if sum_tx.send((i, sum, n)).is_err() {
                    return;
                }
            });
        }
        drop(sum_tx);
        drop(back_tx);
        for (i, sum, n) in sum_rx {
            sums[i] = sum;
            done += n;
            progress.bytes(done, total);
        }
        reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reader thread failed")))
    });
    r.bytes_read = done;
    read.map_err(|e| unreadable(format!("reading {}: {e}", target.display())))?;
    compare(m, sums, present_until, r);
    let mut parts = BTreeMap::new();
    for p in m.slot_partitions() {
        let bytes = if p.offset + p.size <= present_until {
            let b = src
                .read_vec(p.offset, p.size as usize)
                .map_err(|e| unreadable(format!("reading {}: {e}", target.display())))?;
            r.bytes_read += p.size;
            Some(b)
        } else {
            None
        };
        parts.insert(p.number, bytes);
    }
    slots::check(m, &parts, r);
    Ok(())
}

/// Collects the bytes of the slot partitions from a stream that arrives in order.
struct SlotCollector {
    /// Partition number, offset, size, and the bytes seen so far.
    parts: Vec<(u32, u64, u64, Vec<u8>)>,
}

impl SlotCollector {
    fn new(m: &Manifest) -> SlotCollector {
        SlotCollector {
            parts: m
                .slot_partitions()
                .into_iter()
                .map(|p| (p.number, p.offset, p.size, Vec::new()))
                .collect(),
        }
    }

    /// Where the last slot partition ends (0 without slots).
    fn end(&self) -> u64 {
        self.parts.iter().map(|p| p.1 + p.2).max().unwrap_or(0)
    }

    /// Feed `data`, which sits at byte `pos` of the stream.
    fn update(&mut self, pos: u64, data: &[u8]) {
        let end = pos + data.len() as u64;
        for (_, off, size, buf) in &mut self.parts {
            let (a, b) = ((*off).max(pos), (*off + *size).min(end));
            if a < b && a == *off + buf.len() as u64 {
                buf.extend_from_slice(&data[(a - pos) as usize..(b - pos) as usize]);
            }
        }
    }

    /// Each partition's bytes, `None` where the stream ended early.
    fn finish(self) -> BTreeMap<u32, Option<Vec<u8>>> {
        self.parts
            .into_iter()
            .map(|(n, _, size, buf)| (n, (buf.len() as u64 == size).then_some(buf)))
            .collect()
    }
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The compressed file's size and digest against the manifest's `artifact`, when it has one.
fn check_artifact(m: &Manifest, what: &str, zsha: &str, zlen: u64, r: &mut Report) {
    r.bytes_read = zlen;
    if let Some(a) = &m.artifact {
        if a.size != zlen || a.sha256 != zsha {
            r.mismatches.push(Mismatch {
                place: format!("the compressed file {what}"),
                start: 0,
                end: zlen.max(1),
                expected: format!("{} ({} bytes)", a.sha256, a.size),
                actual: Some(format!("{zsha} ({zlen} bytes)")),
                whole_file: true,
                what: None,
            });
        }
    }
}

/// [`check_compressed`] for a `.raw.zst` with a seek table (what edgeimage writes): the
/// decompressed size is the table's, and only the frames holding block-map ranges or slot
/// partitions are decompressed (on every core), so a mostly empty disk verifies in the time
/// of its data. The frames in between hold unmapped space, which the manifest leaves
/// don't-care (as on a written disk); the compressed file's digest, when the manifest has
/// it, still covers every byte.
#[allow(clippy::too_many_arguments)]
fn check_seekable(
    f: &File,
    path: &Path,
    table: &crate::artifact::seekable::SeekTable,
    m: &Manifest,
    wins: Vec<(u64, u64)>,
    mut collector: SlotCollector,
    progress: &mut dyn Progress,
    r: &mut Report,
) -> Result<(), Stop> {
    use crate::artifact::seekable;
    let what = path.display().to_string();
    let total = m.image.size;
    let len = table.decompressed_size;
    if len != total {
        return Err((
            Outcome::ContentMismatch,
            format!(
                "{what} decompresses to {len} bytes by its seek table, the manifest says {total}"
            ),
        )
            .into());
    }
    let mut needed: Vec<usize> = wins
        .iter()
        .copied()
        .chain(collector.parts.iter().map(|p| (p.1, p.1 + p.2)))
        .flat_map(|(a, b)| table.frames_overlapping(a, b))
        .collect();
    needed.sort_unstable();
    needed.dedup();
    let mut hasher = WindowHasher::new(wins);
    seekable::decompress_frames(
        f,
        &what,
        table,
        &needed,
        seekable::workers(),
        &mut |_, at, bytes| {
            hasher.update(at, &bytes);
            collector.update(at, &bytes);
            progress.bytes(at + bytes.len() as u64, total);
            Ok(true)
        },
    )
    .map_err(|e| {
        let msg = format!("{e:#}");
        let msg = msg.strip_prefix(&format!("{what}: ")).unwrap_or(&msg);
        Stop::from((
            Outcome::ContentMismatch,
            format!("{what}: the compressed image is damaged: {msg}"),
        ))
    })?;
    // The whole compressed file, for its digest.
    let mut hr = HashingReader {
        inner: f,
        hash: Sha256::new(),
        count: 0,
    };
    io::copy(&mut hr, &mut io::sink()).map_err(|e| unreadable(format!("reading {what}: {e}")))?;
    let (zsha, zlen) = (hex::encode(hr.hash.finalize()), hr.count);
    check_artifact(m, &what, &zsha, zlen, r);
    compare(m, hasher.finish(), len, r);
    slots::check(m, &collector.finish(), r);
    Ok(())
}

/// Decompress a `.raw.zst` (reader thread) and hash the block map's ranges (this thread);
/// the compressed file's own digest is checked when the manifest describes it.
fn check_compressed(
    path: &Path,
    m: &Manifest,
    progress: &mut dyn Progress,
    r: &mut Report,
) -> Result<(), Stop> {
    let f = open_image(path)?;
    let wins = windows(m);
    let mut collector = SlotCollector::new(m);
    let last_needed = wins.last().map_or(0, |w| w.1).max(collector.end());
    let total = m.image.size;
    let what = path.display().to_string();
    match crate::artifact::seekable::read_seek_table(&f, &what) {
        Ok(Some(table)) => {
            return check_seekable(&f, path, &table, m, wins, collector, progress, r);
        }
        Ok(None) => {}
        Err(e) => return Err((Outcome::ContentMismatch, format!("{e:#}")).into()),
    }
    let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(4);
    let result = std::thread::scope(|s| {
        let reader = s.spawn(move || -> io::Result<(u64, String, u64)> {
            let mut hr = HashingReader {
                inner: f,
                hash: Sha256::new(),
                count: 0,
            };
            let mut pos = 0u64;
            {
                // The decoder buffers above the hashing reader: every byte of the file
                // passes the hash exactly once.
                let mut dec = zstd::Decoder::new(&mut hr)?;
                loop {
                    let mut buf = vec![0u8; 1 << 20];
                    let n = crate::layout::read_up_to(&mut dec, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    let at = pos;
                    pos += n as u64;
                    if at < last_needed && tx.send((at, buf)).is_err() {
                        break;
                    }
                }
            }
            // The rest of the compressed file (the digest covers every byte of it).
            io::copy(&mut hr, &mut io::sink())?;
            Ok((pos, hex::encode(hr.hash.finalize()), hr.count))
        });
        let mut hasher = WindowHasher::new(wins.clone());
        for (pos, buf) in rx {
            hasher.update(pos, &buf);
            collector.update(pos, &buf);
            progress.bytes(pos + buf.len() as u64, total);
        }
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the decompressing thread failed")));
        (hasher.finish(), read)
    });
    let (sums, read) = result;
    let (len, zsha, zlen) = match read {
        Ok(v) => v,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.kind() == io::ErrorKind::PermissionDenied =>
        {
            return Err(unreadable(format!("reading {}: {e}", path.display())))
        }
        Err(e) => {
            return Err((
                Outcome::ContentMismatch,
                format!("{}: the compressed image is damaged: {e}", path.display()),
            )
                .into())
        }
    };
    check_artifact(m, &path.display().to_string(), &zsha, zlen, r);
    if len != m.image.size {
        return Err((
            Outcome::ContentMismatch,
            format!(
                "{} decompresses to {len} bytes, the manifest says {}",
                path.display(),
                m.image.size
            ),
        )
            .into());
    }
    compare(m, sums, len, r);
    slots::check(m, &collector.finish(), r);
    Ok(())
}
