//! A deterministic writer for "newc" (SVR4, magic `070701`) cpio archives, the format the Linux
//! kernel unpacks as an initramfs and the one Talos system extensions are packed in.
//!
//! The writer is generic: it knows nothing about Talos. Each [`Entry`] carries its path
//! (relative, without a leading `./` or `/`), its mode (file type bits and permissions), owner,
//! mtime and either nothing (directories, device nodes, FIFOs), a symlink target, or file data
//! streamed from a [`Read`] whose length is known up front.
//!
//! Determinism: the output depends only on the entries and their order. Inode numbers are
//! assigned sequentially from 1 in the order entries are written, every entry has one link (two
//! for directories), device numbers of the archive itself (`dev_major`/`dev_minor`) are 0 and
//! checksums are 0. Callers decide the order, or sort with [`sort`]. Hard links are never
//! written.
//!
//! Layout of one member: a 110-byte ASCII header (magic then 13 fields of 8 upper-case hex
//! digits), the path with a terminating NUL, zero padding to a multiple of 4 bytes (counted from
//! the start of the header), the data, zero padding to a multiple of 4. The archive ends with a
//! member named `TRAILER!!!`; its total length is therefore a multiple of 4.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// Named pipe.
pub const S_IFIFO: u32 = 0o010000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// What follows the header of an entry.
pub enum Body<'a> {
    /// No data: directories, device nodes, FIFOs.
    Empty,
    /// The target of a symbolic link (stored as the data, without a NUL).
    Symlink(String),
    /// File contents: exactly `len` bytes are read from `reader` while writing.
    Data {
        /// Number of bytes the reader must yield.
        len: u64,
        /// Source of the bytes; read in a streaming fashion, never buffered whole.
        reader: Box<dyn Read + 'a>,
    },
}

impl fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Symlink(t) => f.debug_tuple("Symlink").field(t).finish(),
            Body::Data { len, .. } => f.debug_struct("Data").field("len", len).finish(),
        }
    }
}

/// One archive member.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Relative path, `/`-separated, no leading `/` or `./`, no `.` or `..` components.
    pub path: String,
    /// File type bits and permission bits, as in `st_mode`.
    pub mode: u32,
    /// Owner user id (callers building Talos media pass 0).
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time in seconds since the epoch (must fit in 32 bits).
    pub mtime: u64,
    /// Major device number for character and block devices, else 0.
    pub rdev_major: u32,
    /// Minor device number for character and block devices, else 0.
    pub rdev_minor: u32,
    /// Contents.
    pub body: Body<'a>,
}

impl<'a> Entry<'a> {
    /// A directory with the given permission bits, owned by 0:0, mtime 0.
    pub fn dir(path: impl Into<String>, perm: u32) -> Self {
        Self::new(path, S_IFDIR | (perm & 0o7777), Body::Empty)
    }

    /// A regular file whose `len` bytes come from `reader`.
    pub fn file(path: impl Into<String>, perm: u32, len: u64, reader: impl Read + 'a) -> Self {
        Self::new(
            path,
            S_IFREG | (perm & 0o7777),
            Body::Data {
                len,
                reader: Box::new(reader),
            },
        )
    }

    /// A regular file from an in-memory byte slice.
    pub fn file_bytes(path: impl Into<String>, perm: u32, data: &'a [u8]) -> Self {
        Self::file(path, perm, data.len() as u64, data)
    }

    /// A symbolic link (mode 0777) pointing at `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::new(path, S_IFLNK | 0o777, Body::Symlink(target.into()))
    }

    /// A character device node, e.g. `/dev/console` is 5:1.
    pub fn char_device(path: impl Into<String>, perm: u32, major: u32, minor: u32) -> Self {
        let mut e = Self::new(path, S_IFCHR | (perm & 0o7777), Body::Empty);
        e.rdev_major = major;
        e.rdev_minor = minor;
        e
    }

    /// An entry with explicit mode and body, owned by 0:0, mtime 0, rdev 0:0.
    pub fn new(path: impl Into<String>, mode: u32, body: Body<'a>) -> Self {
        Entry {
            path: path.into(),
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            rdev_major: 0,
            rdev_minor: 0,
            body,
        }
    }

    /// Sets the modification time.
    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    /// Sets the owner.
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// Sorts entries into a canonical order: by path, compared component by component as bytes, so
/// that a directory precedes its contents and its contents follow it directly.
pub fn sort(entries: &mut [Entry<'_>]) {
    entries.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
}

/// An error while writing an archive, naming the entry it concerns.
#[derive(Debug)]
pub struct CpioError {
    /// Path of the entry (or `TRAILER!!!`).
    pub path: String,
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    InvalidPath(&'static str),
    Duplicate,
    ModeBodyMismatch(&'static str),
    TooLarge(&'static str, u64),
    ShortRead { expected: u64, got: u64 },
    LongRead { expected: u64 },
    Io(io::Error),
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpio entry {:?}: ", self.path)?;
        match &self.kind {
            ErrorKind::InvalidPath(why) => write!(f, "invalid path: {why}"),
            ErrorKind::Duplicate => f.write_str("path already written to this archive"),
            ErrorKind::ModeBodyMismatch(why) => write!(f, "mode does not match contents: {why}"),
            ErrorKind::TooLarge(what, v) => {
                write!(f, "{what} {v} does not fit the 32-bit newc field")
            }
            ErrorKind::ShortRead { expected, got } => write!(
                f,
                "data source ended after {got} of the announced {expected} bytes"
            ),
            ErrorKind::LongRead { expected } => write!(
                f,
                "data source holds more than the announced {expected} bytes"
            ),
            ErrorKind::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CpioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn err(path: &str, kind: ErrorKind) -> CpioError {
    CpioError {
        path: path.to_string(),
        kind,
    }
}

fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty");
    }
    if path.starts_with('/') {
        return Err("absolute (must be relative, without a leading '/')");
    }
    if path.ends_with('/') {
        return Err("trailing '/'");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path == TRAILER {
        return Err("reserved for the archive trailer");
    }
    for c in path.split('/') {
        match c {
            "" => return Err("empty component ('//')"),
            "." => return Err("'.' component (write paths without './')"),
            ".." => return Err("'..' component"),
            _ => {}
        }
    }
    Ok(())
}

fn pad4(n: u64) -> usize {
    ((4 - (n % 4)) % 4) as usize
}

/// Streams entries into a newc archive.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
    seen: HashSet<String>,
}

impl<W: Write> Writer<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            next_ino: 1,
            offset: 0,
            seen: HashSet::new(),
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Appends one entry.
    pub fn append(&mut self, entry: Entry<'_>) -> Result<(), CpioError> {
        let Entry {
            path,
            mode,
            uid,
            gid,
            mtime,
            rdev_major,
            rdev_minor,
            body,
        } = entry;
        check_path(&path).map_err(|why| err(&path, ErrorKind::InvalidPath(why)))?;
        let ftype = mode & S_IFMT;
        if mode & !(S_IFMT | 0o7777) != 0 {
            return Err(err(&path, ErrorKind::ModeBodyMismatch("unknown mode bits")));
        }
        let filesize: u64 = match (&body, ftype) {
            (Body::Empty, S_IFDIR | S_IFCHR | S_IFBLK | S_IFIFO) => 0,
            (Body::Symlink(t), S_IFLNK) => {
                if t.is_empty() || t.contains('\0') {
                    return Err(err(
                        &path,
                        ErrorKind::ModeBodyMismatch("symlink target empty or contains NUL"),
                    ));
                }
                t.len() as u64
            }
            (Body::Data { len, .. }, S_IFREG) => *len,
            (Body::Empty, S_IFREG) => 0,
            (Body::Empty, _) => {
                return Err(err(
                    &path,
                    ErrorKind::ModeBodyMismatch("no contents given for this file type"),
                ))
            }
            (Body::Symlink(_), _) => {
                return Err(err(
                    &path,
                    ErrorKind::ModeBodyMismatch("a symlink target needs mode S_IFLNK"),
                ))
            }
            (Body::Data { .. }, _) => {
                return Err(err(
                    &path,
                    ErrorKind::ModeBodyMismatch("file data needs mode S_IFREG"),
                ))
            }
        };
        if (rdev_major, rdev_minor) != (0, 0) && !matches!(ftype, S_IFCHR | S_IFBLK) {
            return Err(err(
                &path,
                ErrorKind::ModeBodyMismatch("device numbers on a non-device entry"),
            ));
        }
        let filesize32 = u32::try_from(filesize)
            .map_err(|_| err(&path, ErrorKind::TooLarge("file size", filesize)))?;
        let mtime32 =
            u32::try_from(mtime).map_err(|_| err(&path, ErrorKind::TooLarge("mtime", mtime)))?;
        if self.seen.contains(&path) {
            return Err(err(&path, ErrorKind::Duplicate));
        }
        let ino = self.next_ino;
        let nlink = if ftype == S_IFDIR { 2 } else { 1 };
        let fields = [
            ino, mode, uid, gid, nlink, mtime32, filesize32, 0, 0, rdev_major, rdev_minor,
        ];
        self.write_header(&path, &fields)?;
        match body {
            Body::Empty => {}
            Body::Symlink(t) => self.write_raw(&path, t.as_bytes())?,
            Body::Data { len, reader } => self.copy_data(&path, len, reader)?,
        }
        self.write_raw(&path, &[0u8; 3][..pad4(filesize)])?;
        self.next_ino = self.next_ino.checked_add(1).ok_or_else(|| {
            err(
                &path,
                ErrorKind::TooLarge("inode number", u64::from(ino) + 1),
            )
        })?;
        self.seen.insert(path);
        Ok(())
    }

    /// Writes every entry in order.
    pub fn append_all<'a>(
        &mut self,
        entries: impl IntoIterator<Item = Entry<'a>>,
    ) -> Result<(), CpioError> {
        entries.into_iter().try_for_each(|e| self.append(e))
    }

    /// Writes the trailer, flushes and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        let fields = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        self.write_header(TRAILER, &fields)?;
        // Every member is already padded; keep the guarantee explicit.
        let pad = pad4(self.offset);
        self.write_raw(TRAILER, &[0u8; 3][..pad])?;
        self.out
            .flush()
            .map_err(|e| err(TRAILER, ErrorKind::Io(e)))?;
        Ok(self.out)
    }

    /// `fields` are ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    /// rdevminor; namesize and check are filled in here.
    fn write_header(&mut self, path: &str, fields: &[u32; 11]) -> Result<(), CpioError> {
        let namesize = path.len() as u64 + 1;
        let namesize32 = u32::try_from(namesize)
            .map_err(|_| err(path, ErrorKind::TooLarge("name size", namesize)))?;
        let mut h = Vec::with_capacity(HEADER_LEN + path.len() + 4);
        h.extend_from_slice(MAGIC);
        for v in fields.iter().chain([namesize32, 0].iter()) {
            h.extend_from_slice(format!("{v:08X}").as_bytes());
        }
        debug_assert_eq!(h.len(), HEADER_LEN);
        h.extend_from_slice(path.as_bytes());
        h.push(0);
        let pad = pad4(h.len() as u64);
        h.extend_from_slice(&[0u8; 3][..pad]);
        self.write_raw(path, &h)
    }

    fn write_raw(&mut self, path: &str, buf: &[u8]) -> Result<(), CpioError> {
        self.out
            .write_all(buf)
            .map_err(|e| err(path, ErrorKind::Io(e)))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn copy_data(
        &mut self,
        path: &str,
        len: u64,
        reader: Box<dyn Read + '_>,
    ) -> Result<(), CpioError> {
        let mut limited = reader.take(len);
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(path, ErrorKind::Io(e))),
            };
            self.write_raw(path, &buf[..n])?;
            got += n as u64;
        }
        if got != len {
            return Err(err(path, ErrorKind::ShortRead { expected: len, got }));
        }
        // The source must not hold more than announced: a longer file means the caller's
        // length (and so the archive) is wrong.
        let mut reader = limited.into_inner();
        let mut probe = [0u8; 1];
        loop {
            match reader.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(err(path, ErrorKind::LongRead { expected: len })),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(path, ErrorKind::Io(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<Entry<'static>> {
        let big: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        vec![
            Entry::dir("bin", 0o755).with_mtime(1_700_000_000),
            Entry::file_bytes("bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
                .with_mtime(1_700_000_001),
            Entry::symlink("bin/sh", "hello"),
            Entry::dir("dev", 0o755),
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry::file_bytes("empty", 0o644, b""),
            Entry::file("big.bin", 0o640, big.len() as u64, big).with_owner(1000, 100),
            Entry::file_bytes("odd", 0o600, b"abc"),
        ]
    }

    fn archive(entries: Vec<Entry<'_>>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.append_all(entries).expect("append");
        w.finish().expect("finish")
    }

    fn hex8(b: &[u8], field: usize) -> u32 {
        let s = std::str::from_utf8(&b[6 + 8 * field..6 + 8 * field + 8]).expect("ascii");
        u32::from_str_radix(s, 16).expect("hex")
    }

    fn have_cpio() -> bool {
        Command::new("cpio")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn header_bytes_exact() {
        let a = archive(vec![
            Entry::file_bytes("ab", 0o644, b"xyz").with_mtime(0x12345678)
        ]);
        let expect_header = b"070701\
00000001\
000081A4\
00000000\
00000000\
00000001\
12345678\
00000003\
00000000\
00000000\
00000000\
00000000\
00000003\
00000000";
        assert_eq!(&a[..110], &expect_header[..]);
        // name "ab\0" then pad: 110 + 3 = 113 -> 116.
        assert_eq!(&a[110..116], b"ab\0\0\0\0");
        assert_eq!(&a[116..120], b"xyz\0");
        let t = &a[120..];
        assert_eq!(&t[..6], b"070701");
        assert_eq!(hex8(t, 0), 0, "trailer ino");
        assert_eq!(hex8(t, 1), 0, "trailer mode");
        assert_eq!(hex8(t, 4), 1, "trailer nlink");
        assert_eq!(hex8(t, 11), 11, "trailer namesize");
        assert_eq!(&t[110..121], b"TRAILER!!!\0");
        // 110 + 11 = 121 -> 124
        assert_eq!(t.len(), 124);
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn device_and_symlink_fields() {
        let a = archive(vec![
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry::symlink("sh", "busybox"),
        ]);
        assert_eq!(hex8(&a, 0), 1);
        assert_eq!(hex8(&a, 1), 0o020600);
        assert_eq!(hex8(&a, 6), 0, "filesize");
        assert_eq!(hex8(&a, 9), 5, "rdevmajor");
        assert_eq!(hex8(&a, 10), 1, "rdevminor");
        // 110 + 12 ("dev/console\0") = 122 -> 124
        let s = &a[124..];
        assert_eq!(hex8(s, 0), 2, "sequential inode");
        assert_eq!(hex8(s, 1), 0o120777);
        assert_eq!(hex8(s, 6), 7);
        // 110 + 3 = 113 -> 116, then "busybox" + 1 pad
        assert_eq!(&s[116..124], b"busybox\0");
    }

    #[test]
    fn deterministic() {
        assert_eq!(archive(sample()), archive(sample()));
    }

    #[test]
    fn sort_puts_parents_first() {
        let mut v = vec![
            Entry::file_bytes("a-b", 0o644, b""),
            Entry::file_bytes("a/z", 0o644, b""),
            Entry::dir("a", 0o755),
            Entry::file_bytes("a/b", 0o644, b""),
            Entry::file_bytes("0", 0o644, b""),
        ];
        sort(&mut v);
        let names: Vec<&str> = v.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["0", "a", "a/b", "a/z", "a-b"]);
    }

    #[test]
    fn errors_name_the_path() {
        let mut w = Writer::new(Vec::new());
        let e = w
            .append(Entry::file_bytes("./x", 0o644, b""))
            .expect_err("./ rejected");
        assert_eq!(e.path, "./x");
        assert!(e.to_string().contains("./x"), "{e}");
        for bad in ["/abs", "", "a//b", "a/../b", "a/", "TRAILER!!!"] {
            assert!(
                w.append(Entry::file_bytes(bad, 0o644, b"")).is_err(),
                "{bad}"
            );
        }
        let e = w
            .append(Entry::file("short", 0o644, 10, &b"abc"[..]))
            .expect_err("short read");
        assert!(e.to_string().contains("short"), "{e}");
        assert!(e.to_string().contains("3 of the announced 10"), "{e}");
        let mut w = Writer::new(Vec::new());
        let e = w
            .append(Entry::file("long", 0o644, 2, &b"abc"[..]))
            .expect_err("long read");
        assert!(e.to_string().contains("long"), "{e}");
        let mut w = Writer::new(Vec::new());
        w.append(Entry::dir("d", 0o755)).expect("first");
        assert!(w.append(Entry::dir("d", 0o755)).is_err(), "duplicate");
        assert!(w
            .append(Entry::new("m", S_IFLNK | 0o777, Body::Empty))
            .is_err());
        assert!(w
            .append(Entry::file_bytes("t", 0o644, b"").with_mtime(1 << 33))
            .is_err());
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let e = w
            .append(Entry::file("f", 0o644, 5, Failing))
            .expect_err("io");
        assert!(
            e.to_string().contains("\"f\"") && e.to_string().contains("boom"),
            "{e}"
        );
    }

    fn run_cpio(dir: &Path, args: &[&str], input: &[u8]) -> String {
        use std::io::Write as _;
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cpio");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("feed cpio");
        let out = child.wait_with_output().expect("cpio output");
        assert!(
            out.status.success(),
            "cpio {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn real_cpio_lists_entries() {
        if !have_cpio() {
            eprintln!("cpio tool not installed; skipping");
            return;
        }
        let a = archive(sample());
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run_cpio(dir.path(), &["-itvn", "--quiet"], &a);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 8, "{out}");
        let check = |i: usize, perms: &str, owner: &str, name: &str| {
            let l = lines[i];
            assert!(l.starts_with(perms), "line {i}: {l}");
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(
                cols[2],
                owner.split(':').next().expect("uid"),
                "line {i}: {l}"
            );
            assert_eq!(
                cols[3],
                owner.split(':').nth(1).expect("gid"),
                "line {i}: {l}"
            );
            assert!(l.contains(name), "line {i}: {l}");
        };
        check(0, "drwxr-xr-x", "0:0", "bin");
        check(1, "-rwxr-xr-x", "0:0", "bin/hello");
        check(2, "lrwxrwxrwx", "0:0", "bin/sh -> hello");
        check(3, "drwxr-xr-x", "0:0", "dev");
        check(4, "crw-------", "0:0", "dev/console");
        assert!(
            lines[4].contains("5,") && lines[4].contains(" 1 "),
            "{}",
            lines[4]
        );
        check(5, "-rw-r--r--", "0:0", "empty");
        check(6, "-rw-r-----", "1000:100", "big.bin");
        assert!(lines[6].contains("200003"), "{}", lines[6]);
        check(7, "-rw-------", "0:0", "odd");
    }

    #[test]
    fn real_cpio_extracts_data() {
        if !have_cpio() {
            eprintln!("cpio tool not installed; skipping");
            return;
        }
        // No device node here: creating one needs privileges.
        let entries: Vec<Entry<'static>> = sample()
            .into_iter()
            .filter(|e| e.mode & S_IFMT != S_IFCHR)
            .collect();
        let a = archive(entries);
        let dir = tempfile::tempdir().expect("tempdir");
        run_cpio(
            dir.path(),
            &[
                "-idm",
                "--quiet",
                "--no-absolute-filenames",
                "--no-preserve-owner",
            ],
            &a,
        );
        let p = dir.path();
        assert_eq!(
            std::fs::read(p.join("bin/hello")).expect("hello"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read_link(p.join("bin/sh")).expect("link"),
            Path::new("hello")
        );
        let big: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(std::fs::read(p.join("big.bin")).expect("big"), big);
        assert_eq!(std::fs::read(p.join("odd")).expect("odd"), b"abc");
        assert_eq!(std::fs::read(p.join("empty")).expect("empty"), b"");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p.join("bin/hello")).expect("meta");
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!(m.mtime(), 1_700_000_001);
    }
}
