//! Reading a newc cpio archive (the initramfs format, "070701"/"070702" headers) as a stream:
//! each entry's header is parsed and its body handed to a visitor as a reader limited to the
//! entry's size; what the visitor leaves unread is skipped. Names are bounded (4 KiB), sizes
//! are only ever skipped or read through a limit, so a hostile archive costs no more memory
//! than its visitor chooses to spend. Writing is [`crate::compose::cpio`].

use std::io::{self, Read};

use anyhow::{bail, Context, Result};

/// The longest entry name read (Linux's `PATH_MAX`).
pub const MAX_NAME: u64 = 4096;

/// One entry's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The name as stored (no leading `/` is added or removed).
    pub name: String,
    pub mode: u32,
    pub size: u64,
    /// Byte offset of the header within the archive.
    pub offset: u64,
}

impl Header {
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

fn hexfield(h: &[u8], i: usize, at: u64) -> Result<u64> {
    let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).ok();
    s.and_then(|s| u64::from_str_radix(s, 16).ok())
        .with_context(|| format!("cpio header at archive byte {at}: field {i} is not 8 hex digits"))
}

fn skip<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Read one archive from `r` up to its `TRAILER!!!`, calling `visit` for every entry with a
/// reader of its body. Returns the number of entries. `visit` returning an error stops the
/// walk with that error.
pub fn read<R: Read>(
    r: &mut R,
    visit: &mut dyn FnMut(&Header, &mut dyn Read) -> Result<()>,
) -> Result<usize> {
    let mut count = 0;
    let mut pos: u64 = 0;
    loop {
        let mut h = [0u8; 110];
        r.read_exact(&mut h)
            .with_context(|| format!("truncated cpio header at archive byte {pos}"))?;
        if &h[..6] != b"070701" && &h[..6] != b"070702" {
            bail!("not a newc cpio header at archive byte {pos}");
        }
        let mode = hexfield(&h, 1, pos)? as u32;
        let size = hexfield(&h, 6, pos)?;
        let namesize = hexfield(&h, 11, pos)?;
        if namesize == 0 || namesize > MAX_NAME {
            bail!("cpio header at archive byte {pos}: name size {namesize} (at most {MAX_NAME})");
        }
        let mut name = vec![0u8; namesize as usize];
        r.read_exact(&mut name)
            .with_context(|| format!("truncated cpio name at archive byte {pos}"))?;
        let name = String::from_utf8_lossy(&name[..name.len() - 1]).into_owned();
        let header = Header {
            name,
            mode,
            size,
            offset: pos,
        };
        pos += 110 + namesize;
        let pad = (4 - pos % 4) % 4;
        skip(r, pad)?;
        pos += pad;
        if header.name == "TRAILER!!!" {
            return Ok(count);
        }
        count += 1;
        let mut body = r.take(size);
        visit(&header, &mut body)?;
        let rest = body.limit();
        skip(r, rest).with_context(|| {
            format!(
                "truncated cpio entry {:?} at archive byte {}",
                header.name, header.offset
            )
        })?;
        pos += size;
        let pad = (4 - pos % 4) % 4;
        skip(r, pad)?;
        pos += pad;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::cpio as w;

    #[test]
    fn entries_are_visited_and_skipped() {
        let mut out = Vec::new();
        let mut wr = w::Writer::new(&mut out);
        wr.append(w::Entry::dir("usr", 0o755)).unwrap();
        wr.append(w::Entry::file_bytes("usr/a", 0o644, b"hello"))
            .unwrap();
        wr.append(w::Entry::file_bytes("b", 0o600, b"world!"))
            .unwrap();
        wr.finish().unwrap();
        let mut seen = Vec::new();
        let n = read(&mut &out[..], &mut |h, body| {
            let mut first = [0u8; 2];
            if h.is_file() {
                body.read_exact(&mut first)?;
            }
            seen.push((h.name.clone(), h.is_dir(), h.size, first));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen[0], ("usr".into(), true, 0, [0, 0]));
        assert_eq!(seen[1], ("usr/a".into(), false, 5, *b"he"));
        assert_eq!(seen[2], ("b".into(), false, 6, *b"wo"));
    }

    #[test]
    fn hostile_archives_are_refused_with_places() {
        let mut out = Vec::new();
        let mut wr = w::Writer::new(&mut out);
        wr.append(w::Entry::file_bytes("a", 0o644, b"x")).unwrap();
        wr.finish().unwrap();
        let mut huge = out.clone();
        huge[94..102].copy_from_slice(b"7FFFFFFF"); // namesize
        let e = read(&mut &huge[..], &mut |_, _| Ok(())).unwrap_err();
        assert!(format!("{e:#}").contains("name size 2147483647"), "{e:#}");
        let mut bad = out.clone();
        bad[54..62].copy_from_slice(b"zzzzzzzz"); // filesize
        let e = read(&mut &bad[..], &mut |_, _| Ok(())).unwrap_err();
        assert!(
            format!("{e:#}").contains("field 6 is not 8 hex digits"),
            "{e:#}"
        );
        let e = read(&mut &out[..out.len() - 200], &mut |_, _| Ok(())).unwrap_err();
        assert!(format!("{e:#}").contains("truncated"), "{e:#}");
        let e = read(&mut &b"garbage"[..], &mut |_, _| Ok(())).unwrap_err();
        assert!(
            format!("{e:#}").contains("truncated cpio header at archive byte 0"),
            "{e:#}"
        );
    }
}
