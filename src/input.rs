//! The one way a file from outside is opened.
//!
//! Every file edgeimage reads that it did not write itself (profiles, machine configurations,
//! patches, schematics, assets, archives, keys, signatures, trust stores, block maps,
//! inventories, record logs, images) goes through [`open`] (or [`open_beneath`] for a file
//! found inside an input directory). It
//!
//! - refuses anything but a regular file (a FIFO, a socket, `/dev/zero`, a directory), checked
//!   with `stat` before the file is opened and again with `fstat` on the descriptor, which is
//!   opened non-blocking, so neither a FIFO nor a device with side effects on open can stall
//!   or be touched; block devices only where a disk is what is asked for ([`Kind::Disk`]);
//! - bounds the size per kind of input ([`Kind::max`], listed in the README), before reading,
//!   and bounds every read by it, so a file that grows while it is read is refused too;
//! - inside an input directory (a trust store, an unpacked image layout), never follows a
//!   symbolic link: every component under the directory is opened with `O_NOFOLLOW`;
//! - never quotes what it read in an error: messages name the file, its kind and sizes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What a file is: each kind has its own size limit and its own words in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Profile,
    MachineConfig,
    ConfigPatch,
    Schematic,
    NetworkConfig,
    MetaValue,
    Template,
    /// A boot asset (kernel, initramfs, systemd-boot, systemd-stub) or a module tree file.
    Asset,
    /// A container image archive (`docker save`, OCI layout tar), read in place.
    ImageArchive,
    /// A file of an unpacked image layout or `docker save` directory.
    ImageBlob,
    /// A system extension archive or a file of an extension directory.
    Extension,
    PublicKey,
    SecretKey,
    Signature,
    /// A trust store's `revoked` list.
    Revoked,
    Manifest,
    BlockMap,
    Inventory,
    /// A JSON-lines record log (`flash --record`, `station`): read as a stream.
    RecordLog,
    /// The static `edgeimage` binary an installer stick runs.
    InstallerBinary,
    /// An image (`.raw`, `.raw.zst`) given to `inspect`, `verify` or `flash`.
    Image,
    /// An image or a written disk (a block device), given to `verify`.
    Disk,
}

impl Kind {
    /// Every kind, in the order the README's table lists them.
    pub const ALL: [Kind; 22] = [
        Kind::Profile,
        Kind::MachineConfig,
        Kind::ConfigPatch,
        Kind::Schematic,
        Kind::NetworkConfig,
        Kind::MetaValue,
        Kind::Template,
        Kind::Asset,
        Kind::ImageArchive,
        Kind::ImageBlob,
        Kind::Extension,
        Kind::PublicKey,
        Kind::SecretKey,
        Kind::Signature,
        Kind::Revoked,
        Kind::Manifest,
        Kind::BlockMap,
        Kind::Inventory,
        Kind::RecordLog,
        Kind::InstallerBinary,
        Kind::Image,
        Kind::Disk,
    ];

    /// The words for this kind in messages ("machine configuration").
    pub fn what(self) -> &'static str {
        match self {
            Kind::Profile => "profile",
            Kind::MachineConfig => "machine configuration",
            Kind::ConfigPatch => "configuration patch",
            Kind::Schematic => "schematic",
            Kind::NetworkConfig => "network configuration",
            Kind::MetaValue => "META value file",
            Kind::Template => "template",
            Kind::Asset => "boot asset",
            Kind::ImageArchive => "image archive",
            Kind::ImageBlob => "image layout file",
            Kind::Extension => "system extension",
            Kind::PublicKey => "public key",
            Kind::SecretKey => "secret key",
            Kind::Signature => "signature",
            Kind::Revoked => "revocation list",
            Kind::Manifest => "manifest",
            Kind::BlockMap => "block map",
            Kind::Inventory => "inventory",
            Kind::RecordLog => "record log",
            Kind::InstallerBinary => "installer binary",
            Kind::Image => "image",
            Kind::Disk => "image or disk",
        }
    }

    /// The largest file of this kind that is read.
    pub fn max(self) -> u64 {
        match self {
            // Text a person writes: far more than any real one.
            Kind::Profile | Kind::MachineConfig | Kind::ConfigPatch | Kind::Schematic => MIB,
            Kind::Template | Kind::Revoked => MIB,
            // A META value (and so a network configuration stored in one) must fit META.
            Kind::NetworkConfig | Kind::MetaValue => crate::format::meta::META_SIZE,
            Kind::Asset => GIB,
            Kind::ImageArchive => 64 * GIB,
            Kind::ImageBlob => 16 * GIB,
            Kind::Extension => 4 * GIB,
            Kind::PublicKey | Kind::SecretKey | Kind::Signature => 64 * KIB,
            Kind::Manifest => crate::artifact::manifest::MAX_PARTITION_READ,
            Kind::BlockMap => 64 * MIB,
            Kind::Inventory => 64 * MIB,
            Kind::RecordLog => 16 * GIB,
            Kind::InstallerBinary => 256 * MIB,
            Kind::Image => crate::layout::MAX_DISK_SIZE,
            // Only the ranges an image maps are read from a disk, whatever its size.
            Kind::Disk => 1 << 60,
        }
    }

    /// Whether a block device is acceptable (a written disk).
    fn allows_device(self) -> bool {
        matches!(self, Kind::Disk)
    }
}

/// An opened input: a regular file (or, for [`Kind::Disk`], a block device) and its size.
#[derive(Debug)]
pub struct Input {
    file: File,
    path: PathBuf,
    kind: Kind,
    len: u64,
    device: bool,
}

impl Input {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size (of the file, or of the block device).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_device(&self) -> bool {
        self.device
    }

    /// A reader of the whole input that fails (instead of reading on) when the file holds
    /// more than its kind allows.
    pub fn reader(self) -> Bounded<File> {
        Bounded {
            max: self.kind.max(),
            inner: self.file,
            read: 0,
            path: self.path,
            kind: self.kind,
        }
    }

    /// The whole content (at most [`Kind::max`] bytes).
    pub fn read_all(self) -> Result<Vec<u8>> {
        let cap = self.len.min(self.kind.max()) as usize;
        let path = self.path.clone();
        let what = self.kind.what();
        let mut out = Vec::with_capacity(cap);
        self.reader()
            .read_to_end(&mut out)
            .with_context(|| format!("reading {what} {}", path.display()))?;
        Ok(out)
    }
}

/// A reader that refuses to read past a kind's limit.
pub struct Bounded<R> {
    inner: R,
    read: u64,
    max: u64,
    path: PathBuf,
    kind: Kind,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte past the limit, to tell "exactly the limit" from "more".
        let room = (self.max + 1).saturating_sub(self.read);
        let n = (buf.len() as u64).min(room) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(too_large_io(&self.path, self.kind));
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.read += got as u64;
        if self.read > self.max {
            return Err(too_large_io(&self.path, self.kind));
        }
        Ok(got)
    }
}

fn too_large_io(path: &Path, kind: Kind) -> io::Error {
    io::Error::other(format!(
        "{} grew past the {} limit for a {} while it was read",
        path.display(),
        crate::progress::human_bytes(kind.max()),
        kind.what()
    ))
}

/// Open `path` (a path the user named; a symbolic link there is followed) as a `kind`.
pub fn open(path: &Path, kind: Kind) -> Result<Input> {
    let meta = std::fs::metadata(path).map_err(|e| not_opened(path, kind, &e))?;
    check_type(path, kind, &meta.file_type())?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| not_opened(path, kind, &e))?;
    finish(file, path, kind)
}

/// Open `rel` inside the input directory `dir` as a `kind`, following no symbolic link below
/// `dir` (a member that is, or passes through, a symlink is refused) and no `..`.
/// `Ok(None)` when it does not exist.
pub fn open_beneath(dir: &Path, rel: &Path, kind: Kind) -> Result<Option<Input>> {
    let shown = dir.join(rel);
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => bail!(
                "{}: a {} must lie inside {} (no absolute path, no \"..\")",
                shown.display(),
                kind.what(),
                dir.display()
            ),
        }
    }
    let Some((last, dirs)) = parts.split_last() else {
        bail!(
            "{}: names a directory, not a {}",
            shown.display(),
            kind.what()
        );
    };
    let mut at = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| not_opened(dir, kind, &e))?;
    for d in dirs {
        match openat(&at, d, libc::O_DIRECTORY | libc::O_NOFOLLOW) {
            Ok(f) => at = f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refused_below(&shown, dir, kind, e)),
        }
    }
    // Refuse a FIFO or device by its type before opening it (fstatat, no symlink followed).
    let name = std::ffi::CString::new(last.as_encoded_bytes())
        .map_err(|_| anyhow!("{}: a name with a NUL byte", shown.display()))?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `at` is an open directory, `name` a NUL-terminated string, `st` writable.
    let rc = unsafe {
        libc::fstatat(
            at.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(not_opened(&shown, kind, &e));
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        bail!(
            "{}: is a symbolic link; links inside {} are never followed: put the {} itself there",
            shown.display(),
            dir.display(),
            kind.what()
        );
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!(
            "{}: is a {}, not a regular file: a {} must be a regular file",
            shown.display(),
            mode_name(st.st_mode),
            kind.what()
        );
    }
    let file = openat(
        &at,
        last,
        libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(|e| refused_below(&shown, dir, kind, e))?;
    finish(file, &shown, kind).map(Some)
}

/// Read all of `path` as a `kind`.
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>> {
    open(path, kind)?.read_all()
}

/// Read all of `path` as UTF-8 text; an error says where the first invalid byte is, never
/// what the text holds.
pub fn read_text(path: &Path, kind: Kind) -> Result<String> {
    text(read(path, kind)?, path, kind)
}

/// `bytes` of `path` as UTF-8, or an error naming the byte offset.
pub fn text(bytes: Vec<u8>, path: &Path, kind: Kind) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {}): not a {}",
            path.display(),
            e.utf8_error().valid_up_to(),
            kind.what()
        )
    })
}

/// Read `path` as a `kind` if it exists (`Ok(None)` when it does not).
pub fn read_optional(path: &Path, kind: Kind) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        _ => read(path, kind).map(Some),
    }
}

/// A parser's message about a file that is not ours, safe to show: every `"…"` span (a value
/// from the file) is replaced by `"…"`, a `` `…` `` span is kept only when it is a short name
/// (a field name such as `` `kernel_args` ``), and a trailing location the caller prints
/// itself (" at line …") is dropped. Parsers quote what they choke on; the file may be a
/// secret (a machine configuration, or `/etc/shadow` named by mistake).
pub fn redact(msg: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<(char, String)> = None;
    for c in msg.chars() {
        match &mut quote {
            Some((q, held)) if c == *q => {
                let name_like = *q == '`'
                    && !held.is_empty()
                    && held.len() <= 64
                    && held
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                out.push(*q);
                out.push_str(if name_like { held } else { "…" });
                out.push(*q);
                quote = None;
            }
            Some((_, held)) => held.push(c),
            None if c == '"' || c == '`' => quote = Some((c, String::new())),
            None => out.push(c),
        }
    }
    if let Some((q, _)) = quote {
        out.push(q);
        out.push('…');
    }
    let out = out.replace('\n', " ");
    match out.find(" at line ") {
        Some(i) => out[..i].trim_end().to_string(),
        None => out.trim_end().to_string(),
    }
}

/// 1-based line and column of byte `offset` of `text` (for parsers that give byte spans).
pub fn line_col(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, offset.min(text.len()) - start + 1)
}

fn openat(dir: &File, name: &std::ffi::OsStr, flags: i32) -> io::Result<File> {
    use std::os::unix::io::FromRawFd;
    let name = std::ffi::CString::new(name.as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is an open directory and `name` a NUL-terminated string; the returned
    // descriptor is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is not owned elsewhere.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn refused_below(shown: &Path, dir: &Path, kind: Kind, e: io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
        anyhow!(
            "{}: passes through a symbolic link or a file; links inside {} are never followed: \
             put the {} itself there",
            shown.display(),
            dir.display(),
            kind.what()
        )
    } else {
        not_opened(shown, kind, &e)
    }
}

fn not_opened(path: &Path, kind: Kind, e: &io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        io::ErrorKind::NotFound => "check the path",
        io::ErrorKind::PermissionDenied => "check its permissions",
        _ => "check the file",
    };
    anyhow!(
        "cannot read the {} {}: {e}; {hint}",
        kind.what(),
        path.display()
    )
}

fn mode_name(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "FIFO (named pipe)",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        _ => "special file",
    }
}

fn type_name(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "FIFO (named pipe)"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

fn check_type(path: &Path, kind: Kind, t: &std::fs::FileType) -> Result<()> {
    if t.is_file() || (t.is_block_device() && kind.allows_device()) {
        return Ok(());
    }
    let want = if kind.allows_device() {
        "a regular file or a block device"
    } else {
        "a regular file"
    };
    bail!(
        "{}: is a {}, not {want}: give the {} as {want}",
        path.display(),
        type_name(t),
        kind.what()
    )
}

/// Checks on the opened descriptor: the type again (the path may have changed since `stat`),
/// the size against the limit; then the descriptor is made blocking again.
fn finish(file: File, path: &Path, kind: Kind) -> Result<Input> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?;
    check_type(path, kind, &meta.file_type())?;
    let device = meta.file_type().is_block_device();
    let len = if device {
        use std::io::Seek;
        (&file)
            .seek(io::SeekFrom::End(0))
            .with_context(|| format!("reading the size of {}", path.display()))?
    } else {
        meta.len()
    };
    if len > kind.max() {
        bail!(
            "{}: is {}, more than the {} limit for a {}: this is not a {} edgeimage reads \
             (limits: README, \"Input limits\")",
            path.display(),
            crate::progress::human_bytes(len),
            crate::progress::human_bytes(kind.max()),
            kind.what(),
            kind.what()
        );
    }
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    if device {
        use std::io::Seek;
        (&file)
            .seek(io::SeekFrom::Start(0))
            .with_context(|| format!("seeking {}", path.display()))?;
    }
    Ok(Input {
        file,
        path: path.to_path_buf(),
        kind,
        len,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = fifo(d.path(), "pipe");
        let e = format!("{:#}", read(&p, Kind::ConfigPatch).unwrap_err());
        assert!(
            e.contains("is a FIFO (named pipe), not a regular file")
                && e.contains("configuration patch"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            read(Path::new("/dev/zero"), Kind::Asset).unwrap_err()
        );
        assert!(e.contains("is a character device"), "{e}");
        let e = format!("{:#}", read(d.path(), Kind::Profile).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        // Beneath a directory too.
        let e = format!(
            "{:#}",
            open_beneath(d.path(), Path::new("pipe"), Kind::ImageBlob).unwrap_err()
        );
        assert!(e.contains("FIFO"), "{e}");
    }

    #[test]
    fn sizes_are_bounded_before_and_while_reading() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.pub");
        std::fs::write(&p, vec![b'a'; (Kind::PublicKey.max() + 1) as usize]).unwrap();
        let e = format!("{:#}", read(&p, Kind::PublicKey).unwrap_err());
        assert!(
            e.contains("more than the 64.0 KiB limit for a public key"),
            "{e}"
        );
        assert!(!e.contains("aaaa"), "{e}");
        std::fs::write(&p, b"ok").unwrap();
        assert_eq!(read(&p, Kind::PublicKey).unwrap(), b"ok");
        // A reader that is handed more than the limit refuses to go on.
        let mut b = Bounded {
            inner: io::repeat(0),
            read: 0,
            max: 10,
            path: p.clone(),
            kind: Kind::PublicKey,
        };
        let mut sink = Vec::new();
        let e = b.read_to_end(&mut sink).unwrap_err();
        assert!(e.to_string().contains("grew past"), "{e}");
        assert!(sink.len() <= 11);
    }

    #[test]
    fn symlinks_beneath_an_input_directory_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"root:x:0:0").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/real"), b"fine").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("linkdir")).unwrap();
        let got = open_beneath(d.path(), Path::new("sub/real"), Kind::ImageBlob)
            .unwrap()
            .unwrap()
            .read_all()
            .unwrap();
        assert_eq!(got, b"fine");
        for rel in ["link", "linkdir/secret"] {
            let e = format!(
                "{:#}",
                open_beneath(d.path(), Path::new(rel), Kind::ImageBlob).unwrap_err()
            );
            assert!(e.contains("never followed"), "{rel}: {e}");
            assert!(!e.contains("root:x"), "{e}");
        }
        for rel in ["../x", "/etc/passwd"] {
            let e = format!(
                "{:#}",
                open_beneath(d.path(), Path::new(rel), Kind::ImageBlob).unwrap_err()
            );
            assert!(e.contains("must lie inside"), "{rel}: {e}");
        }
        assert!(
            open_beneath(d.path(), Path::new("sub/none"), Kind::ImageBlob)
                .unwrap()
                .is_none()
        );
        // A named path (not beneath) may be a link: the user chose it.
        assert_eq!(
            read(&d.path().join("link"), Kind::Revoked).unwrap(),
            b"root:x:0:0"
        );
    }

    #[test]
    fn parser_messages_keep_names_and_drop_values() {
        assert_eq!(
            redact("duplicate entry with key \"s3cr3t\" at line 2 column 1"),
            "duplicate entry with key \"…\""
        );
        assert_eq!(
            redact("unknown field `kernal_args`, expected `name`"),
            "unknown field `kernal_args`, expected `name`"
        );
        assert_eq!(redact("bad `x y` and \"open"), "bad `…` and \"…");
        assert_eq!(line_col(b"ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_col(b"ab", 99), (1, 3));
    }

    #[test]
    fn text_errors_give_the_offset_not_the_content() {
        let e = format!(
            "{:#}",
            text(
                b"secret\xffmore".to_vec(),
                Path::new("x.yaml"),
                Kind::Schematic
            )
            .unwrap_err()
        );
        assert!(e.contains("offset 6") && !e.contains("secret"), "{e}");
    }
}
