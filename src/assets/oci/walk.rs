//! A bounded walk over a tar stream: the outer image archive, every image layer and every
//! extension archive are read through this walk, so what a crafted archive can make edgeimage
//! hold in memory or do is bounded here.
//!
//! The `tar` crate runs in raw mode: PAX extended headers (`x`, `g`) and GNU long names and
//! link names (`L`, `K`) come back as entries of their own, and are read here only after their
//! size is checked (the crate would read them whole into memory, whatever their size). Every
//! entry's header is checked before its data is touched: its data must end inside the
//! stream's bound, its path and link target are at most [`MAX_PATH`] bytes (and, where asked
//! for, [`MAX_DEPTH`] levels deep), and the entries and path bytes of one input (all layers of
//! an image together) are counted against [`MAX_ENTRIES`] and [`MAX_PATH_BYTES`].
//!
//! Messages name the input (`label`), the entry's index (1-based; extension headers count with
//! the entry they describe) and the limit; never the path bytes of the archive.

use std::io::Read;

use anyhow::{anyhow, bail, Result};

/// The longest path or link target of a tar entry, bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The largest PAX extended header, GNU long name or long link name record, bytes. Real ones
/// hold a path, times and a few extended attributes: a few KiB.
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;
/// The most tar entries of one input: all layers of an image together, or one extension
/// archive. The Talos imager image, one squashed layer, holds some ten thousand.
pub const MAX_ENTRIES: u64 = 1 << 18;
/// The most bytes of entry paths and link targets of one input, counted like
/// [`MAX_ENTRIES`]: what the tree built from an archive holds. The imager's are a few MiB.
pub const MAX_PATH_BYTES: u64 = 32 << 20;
/// How deep the paths of a system extension may nest. Talos's deepest are kernel modules
/// (`rootfs/usr/lib/modules/<kver>/kernel/drivers/…`, about 12 levels).
pub const MAX_DEPTH: usize = 64;

/// The bounds of one stream.
pub(crate) struct Limits {
    /// No entry's data may reach past this offset of the (uncompressed) stream.
    pub end: u64,
    /// What `end` is, for messages ("the end of the file", "256.0 MiB, the most this layer
    /// may decompress to").
    pub end_name: String,
    /// The deepest entry path allowed, in components (link targets are not counted); `None`:
    /// only [`MAX_PATH`] bounds it.
    pub depth: Option<usize>,
}

/// What one input has used of [`MAX_ENTRIES`] and [`MAX_PATH_BYTES`], over all its streams.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub entries: u64,
    pub path_bytes: u64,
}

/// One entry as its headers describe it, extension headers applied.
#[derive(Debug)]
pub(crate) struct Member {
    /// 1-based position in the stream.
    pub index: u64,
    /// The path as stored (GNU long name, PAX `path` or the header's name), at most
    /// [`MAX_PATH`] bytes.
    pub path: Vec<u8>,
    /// The link target (GNU long link name, PAX `linkpath` or the header's), when there is
    /// one.
    pub link: Option<Vec<u8>>,
    /// PAX `mtime`, whole seconds (negative or unreadable: 0).
    pub mtime: Option<u64>,
    /// PAX `uid` and `gid`.
    pub uid: Option<u64>,
    pub gid: Option<u64>,
}

/// Path components (not empty, not `.`) of a raw path.
pub(crate) fn depth(path: &[u8]) -> usize {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .count()
}

/// A message from the `tar` crate or a decoder, safe to show: the crate quotes header names
/// in some messages, so control characters are replaced and the text is cut short.
pub(crate) fn clean(msg: &str) -> String {
    let mut out: String = msg
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(160)
        .collect();
    if msg.chars().count() > 160 {
        out.push('…');
    }
    out
}

/// A short, printable form of a path from an archive, for messages about an entry that is
/// otherwise fine: at most 64 characters, control characters replaced, quoted.
pub(crate) fn shown(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    format!("{out:?}")
}

#[derive(Default)]
struct Pending {
    pax: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }
}

/// Walk `entries` (of a `tar::Archive`, raw mode is switched on here), calling `each` with
/// every entry that is not an extension header, after every check above passed. `label`
/// names the stream in messages ("ARCHIVE: layer 1/2 (sha256:…)", "extension FILE").
pub(crate) fn walk<'a, R: Read + 'a>(
    entries: tar::Entries<'a, R>,
    label: &str,
    limits: &Limits,
    totals: &mut Totals,
    mut each: impl FnMut(&Member, &mut tar::Entry<'a, R>) -> Result<()>,
) -> Result<()> {
    let mut pending = Pending::default();
    let mut index = 0u64;
    for entry in entries.raw(true) {
        let at = index + 1;
        let mut entry = entry.map_err(|e| {
            if index == 0 && pending.is_empty() {
                // The cause could quote the junk header; keep the message short.
                let _ = e;
                anyhow!("{label}: not a tar archive (its first header is invalid)")
            } else {
                anyhow!(
                    "{label}: entry {at}: corrupt tar stream: {}",
                    clean(&e.to_string())
                )
            }
        })?;
        let size = entry.size();
        let end = entry.raw_file_position().checked_add(size);
        if end.is_none_or(|end| end > limits.end) {
            bail!(
                "{label}: entry {at}: its header claims {size} bytes of data, reaching past {}",
                limits.end_name
            );
        }
        let kind = entry.header().entry_type();
        let extension = match kind {
            tar::EntryType::XHeader => Some((&mut pending.pax, "PAX extended header")),
            tar::EntryType::GNULongName => Some((&mut pending.long_name, "GNU long name")),
            tar::EntryType::GNULongLink => Some((&mut pending.long_link, "GNU long link name")),
            _ => None,
        };
        if (kind == tar::EntryType::XGlobalHeader || extension.is_some())
            && size > MAX_EXTENSION_HEADER
        {
            bail!(
                "{label}: entry {at}: a tar extension header of {size} bytes, more than the \
                 {MAX_EXTENSION_HEADER}-byte limit: this is not an archive edgeimage reads \
                 (limits: README, \"Input limits\")"
            );
        }
        if kind == tar::EntryType::XGlobalHeader {
            // Global PAX headers carry nothing edgeimage uses; the data is skipped.
            index += 1;
            count_entry(label, at, totals)?;
            continue;
        }
        if let Some((slot, what)) = extension {
            if slot.is_some() {
                bail!("{label}: entry {at}: two {what}s for one entry");
            }
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut data)
                .map_err(|e| anyhow!("{label}: entry {at}: {what}: {}", clean(&e.to_string())))?;
            if data.len() as u64 != size {
                bail!(
                    "{label}: entry {at}: {what} truncated ({} of {size} bytes)",
                    data.len()
                );
            }
            *slot = Some(data);
            continue;
        }
        index += 1;
        count_entry(label, at, totals)?;
        let member = member(&entry, std::mem::take(&mut pending), at, label, size)?;
        check_path(label, at, "path", &member.path, limits.depth)?;
        if let Some(link) = &member.link {
            check_path(label, at, "link target", link, None)?;
        }
        totals.path_bytes += (member.path.len() + member.link.as_ref().map_or(0, Vec::len)) as u64;
        if totals.path_bytes > MAX_PATH_BYTES {
            bail!(
                "{label}: entry {at}: the paths and link targets of the entries so far take more \
                 than the {} limit: this is not an archive edgeimage reads (limits: README, \
                 \"Input limits\")",
                crate::progress::human_bytes(MAX_PATH_BYTES)
            );
        }
        each(&member, &mut entry)?;
    }
    if !pending.is_empty() {
        bail!(
            "{label}: entry {}: the archive ends after an extension header, without the entry \
             it describes",
            index + 1
        );
    }
    Ok(())
}

fn count_entry(label: &str, at: u64, totals: &mut Totals) -> Result<()> {
    totals.entries += 1;
    if totals.entries > MAX_ENTRIES {
        bail!(
            "{label}: entry {at}: more than {MAX_ENTRIES} entries: this is not an archive \
             edgeimage reads (limits: README, \"Input limits\")"
        );
    }
    Ok(())
}

fn check_path(
    label: &str,
    at: u64,
    what: &str,
    path: &[u8],
    depth_max: Option<usize>,
) -> Result<()> {
    if let Some(max) = depth_max {
        let d = depth(path);
        if d > max {
            bail!(
                "{label}: entry {at}: its {what} nests {d} levels deep, more than the {max}-level \
                 limit (limits: README, \"Input limits\")"
            );
        }
    }
    if path.len() > MAX_PATH {
        bail!(
            "{label}: entry {at}: its {what} is {} bytes, more than the {MAX_PATH}-byte limit \
             (limits: README, \"Input limits\")",
            path.len()
        );
    }
    Ok(())
}

/// The entry's path, link target and PAX values, from its extension headers or its header.
fn member<R: Read>(
    entry: &tar::Entry<'_, R>,
    pending: Pending,
    at: u64,
    label: &str,
    size: u64,
) -> Result<Member> {
    let mut m = Member {
        index: at,
        path: Vec::new(),
        link: None,
        mtime: None,
        uid: None,
        gid: None,
    };
    let mut pax_path = None;
    let mut pax_link = None;
    if let Some(pax) = &pending.pax {
        for ext in tar::PaxExtensions::new(pax) {
            let ext = ext.map_err(|_| {
                anyhow!("{label}: entry {at}: malformed PAX extended header record")
            })?;
            let value = ext.value_bytes();
            let number = || -> Option<u64> {
                let text = std::str::from_utf8(value).ok()?;
                let int = text.trim().split('.').next()?;
                Some(int.parse::<u64>().unwrap_or(0))
            };
            match ext.key_bytes() {
                b"path" => pax_path = Some(value.to_vec()),
                b"linkpath" => pax_link = Some(value.to_vec()),
                b"mtime" => m.mtime = Some(number().unwrap_or(0)),
                b"uid" => m.uid = number(),
                b"gid" => m.gid = number(),
                b"size" if number() != Some(size) => {
                    bail!(
                        "{label}: entry {at}: its PAX size differs from the size in its header \
                         ({size} bytes); such archives are not read"
                    );
                }
                _ => {}
            }
        }
    }
    let header = entry.header();
    m.path = match (pending.long_name, pax_path) {
        (Some(mut name), _) => {
            while name.last() == Some(&0) {
                name.pop();
            }
            name
        }
        (None, Some(p)) => p,
        (None, None) => header.path_bytes().into_owned(),
    };
    m.link = match (pending.long_link, pax_link) {
        (Some(mut link), _) => {
            while link.last() == Some(&0) {
                link.pop();
            }
            Some(link)
        }
        (None, Some(l)) => Some(l),
        (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h
    }

    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3;
        let mut len = body_len + 1;
        while format!("{len}").len() + body_len != len {
            len += 1;
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    /// A tar of entries `(pax records, name, data)`.
    fn tar_of(entries: &[(Vec<u8>, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (pax, name, data) in entries {
            if !pax.is_empty() {
                let mut x = header(tar::EntryType::XHeader, pax.len() as u64);
                x.set_path("PaxHeaders/x").unwrap();
                x.set_cksum();
                b.append(&x, &pax[..]).unwrap();
            }
            let mut h = header(tar::EntryType::Regular, data.len() as u64);
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn limits(end: u64, depth: Option<usize>) -> Limits {
        Limits {
            end,
            end_name: "the end".into(),
            depth,
        }
    }

    fn run(tar: &[u8], l: &Limits, totals: &mut Totals) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut ar = tar::Archive::new(Cursor::new(tar));
        let mut seen = Vec::new();
        walk(ar.entries()?, "t.tar", l, totals, |m, _| {
            seen.push((m.index, m.path.clone()));
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn pax_paths_times_and_owners_apply_to_the_next_entry() {
        let mut pax = pax_record("path", b"long/name");
        pax.extend(pax_record("mtime", b"1700000000.5"));
        pax.extend(pax_record("uid", b"1000"));
        let tar = tar_of(&[(pax, "short", b"x"), (Vec::new(), "plain", b"")]);
        let mut ar = tar::Archive::new(Cursor::new(&tar[..]));
        let mut got = Vec::new();
        walk(
            ar.entries().unwrap(),
            "t",
            &limits(1 << 20, None),
            &mut Totals::default(),
            |m, e| {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                got.push((m.index, m.path.clone(), m.mtime, m.uid, s));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            got,
            [
                (
                    1,
                    b"long/name".to_vec(),
                    Some(1_700_000_000),
                    Some(1000),
                    "x".to_string()
                ),
                (2, b"plain".to_vec(), None, None, String::new()),
            ]
        );
    }

    #[test]
    fn long_paths_deep_paths_and_big_headers_are_refused_by_index() {
        let long = vec![b'a'; MAX_PATH + 1];
        let tar = tar_of(&[
            (Vec::new(), "ok", b""),
            (pax_record("path", &long), "x", b""),
        ]);
        let e = format!(
            "{:#}",
            run(&tar, &limits(1 << 30, None), &mut Totals::default()).unwrap_err()
        );
        assert!(
            e.contains("t.tar: entry 2: its path is 4097 bytes, more than the 4096-byte limit"),
            "{e}"
        );
        assert!(!e.contains("aaaa"), "{e}");

        let deep = "d/".repeat(MAX_DEPTH + 1);
        let tar = tar_of(&[(pax_record("path", deep.as_bytes()), "x", b"")]);
        let e = format!(
            "{:#}",
            run(
                &tar,
                &limits(1 << 30, Some(MAX_DEPTH)),
                &mut Totals::default()
            )
            .unwrap_err()
        );
        assert!(
            e.contains("entry 1: its path nests 65 levels deep, more than the 64-level limit"),
            "{e}"
        );
        // Without a depth limit it passes.
        assert_eq!(
            run(&tar, &limits(1 << 30, None), &mut Totals::default())
                .unwrap()
                .len(),
            1
        );

        // A PAX header past the limit is refused before it is read.
        let mut b = tar::Builder::new(Vec::new());
        let mut x = header(tar::EntryType::XHeader, MAX_EXTENSION_HEADER + 1);
        x.set_path("PaxHeaders/x").unwrap();
        x.set_cksum();
        b.append(&x, std::io::repeat(b'7').take(MAX_EXTENSION_HEADER + 1))
            .unwrap();
        let tar = b.into_inner().unwrap();
        let e = format!(
            "{:#}",
            run(&tar, &limits(1 << 30, None), &mut Totals::default()).unwrap_err()
        );
        assert!(
            e.contains("entry 1: a tar extension header of 1048577 bytes, more than the"),
            "{e}"
        );
    }

    #[test]
    fn sizes_past_the_end_entries_and_path_bytes_are_capped() {
        let tar = tar_of(&[(Vec::new(), "a", b"0123456789")]);
        let e = format!(
            "{:#}",
            run(&tar, &limits(515, None), &mut Totals::default()).unwrap_err()
        );
        assert!(
            e.contains("entry 1: its header claims 10 bytes of data, reaching past the end"),
            "{e}"
        );
        // Totals carry over from one stream to the next (layers of one image).
        let one = tar_of(&[(Vec::new(), "a", b"")]);
        let mut totals = Totals {
            entries: MAX_ENTRIES,
            path_bytes: 0,
        };
        let e = format!(
            "{:#}",
            run(&one, &limits(1 << 20, None), &mut totals).unwrap_err()
        );
        assert!(e.contains("entry 1: more than 262144 entries"), "{e}");
        let mut totals = Totals {
            entries: 0,
            path_bytes: MAX_PATH_BYTES,
        };
        let e = format!(
            "{:#}",
            run(&one, &limits(1 << 20, None), &mut totals).unwrap_err()
        );
        assert!(e.contains("take more than the 32.0 MiB limit"), "{e}");
    }

    #[test]
    fn a_pax_size_override_and_a_dangling_header_are_refused() {
        let tar = tar_of(&[(pax_record("size", b"99"), "a", b"0123456789")]);
        let e = format!(
            "{:#}",
            run(&tar, &limits(1 << 20, None), &mut Totals::default()).unwrap_err()
        );
        assert!(e.contains("its PAX size differs"), "{e}");
        let mut b = tar::Builder::new(Vec::new());
        let rec = pax_record("path", b"x");
        let mut x = header(tar::EntryType::XHeader, rec.len() as u64);
        x.set_path("PaxHeaders/x").unwrap();
        x.set_cksum();
        b.append(&x, &rec[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = format!(
            "{:#}",
            run(&tar, &limits(1 << 20, None), &mut Totals::default()).unwrap_err()
        );
        assert!(e.contains("ends after an extension header"), "{e}");
    }

    #[test]
    fn shown_paths_are_short_and_printable() {
        assert_eq!(shown(b"usr/bin/x"), "\"usr/bin/x\"");
        let s = shown(&[b'a'; 5000]);
        assert!(s.chars().count() < 70, "{s}");
        assert_eq!(shown(b"a\x1b[2Jb"), "\"a?[2Jb\"");
        assert_eq!(clean("bad\nname\x07"), "bad?name?");
        assert_eq!(depth(b"./a//b/./c/"), 3);
    }
}
