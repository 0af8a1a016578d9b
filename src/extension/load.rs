//! Reading an extension from one of its input forms into a [`Tree`], and its pin.
//!
//! Forms, told apart by content, never by name:
//! - a directory holding `manifest.yaml` (and `rootfs/`): walked with `lstat`, never following
//!   a symlink; a file is opened with `O_NOFOLLOW | O_NONBLOCK` and must be the inode the walk
//!   saw. Contents stay in those open files (file regions).
//! - a directory holding `index.json` or `manifest.json`: an OCI image layout (or an unpacked
//!   `docker save`), read by [`OciImage`].
//! - a file starting with gzip or zstd magic: a compressed tar of the extension tree, streamed
//!   and decompressed to at most [`expansion_limit`] of its size; file contents go to
//!   anonymous temporary files.
//! - a plain tar: if its top level holds `manifest.yaml` it is the extension tree (contents
//!   stay regions of the tar); otherwise, if it holds `index.json` or `manifest.json`, it is an
//!   OCI layout tar or a `docker save` archive, read by [`OciImage`] (the merged image must then
//!   hold the extension tree).
//!
//! Every tar is read through [`walk`] (bounded paths, PAX headers, entries), its paths at most
//! [`walk::MAX_DEPTH`] levels deep, as are a directory's and an image's: checked before the
//! tree is built.
//!
//! Nothing from an input is ever written to a host path. Problems with single entries (a `..`
//! or absolute name, an unsupported entry type, an escaping hard link) are collected, not
//! fatal, so validation can report them together with everything else.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::assets::oci::walk;
use crate::assets::oci::{
    expansion_limit, is_tar_header, Capped, EntryKind, OciImage, MAX_EXPANSION,
    MAX_EXPANSION_RATIO, MIN_EXPANSION,
};
use crate::layout::{Layout, SharedFile};
use crate::talos::{Arch, TalosVersion};
use crate::tree::{normalize, Node, NodeKind, Tree};

use super::validate::{self, Problem};
use super::Extension;

/// An extension as the profile names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionInput {
    /// A directory, a (compressed) tar, an OCI layout (directory or tar) or a `docker save`
    /// archive.
    pub path: PathBuf,
    /// The pinned digest, lowercase hex: see [`input_sha256`].
    pub sha256: String,
}

/// Read, pin-check and validate one extension for `talos`.
///
/// Every problem found in the extension is reported at once, each as
/// `<origin>: <path inside>: <rule>`.
pub fn load(spec: &ExtensionInput, arch: Arch, talos: &TalosVersion) -> Result<Extension> {
    let origin = spec.path.display().to_string();
    let pinned = &spec.sha256;
    if pinned.len() != 64
        || !pinned
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!(
            "extension {origin}: the pinned sha256 {pinned:?} is not 64 lowercase hex digits \
             (set the `sha256` of this extension in the profile)"
        );
    }
    let input = Input::open(&spec.path)?;
    let actual = input.sha256()?;
    if &actual != pinned {
        bail!(
            "extension {origin}: sha256 mismatch: the profile pins {pinned}, the input has \
             {actual}; if this input is the one you mean, update the `sha256` of this \
             extension in the profile"
        );
    }
    let (tree, problems) = input.read(arch)?;
    validate::validate(&origin, &actual, tree, problems, talos)
}

/// The digest [`load`] checks the pin against.
///
/// - A file: SHA-256 of its bytes.
/// - A directory: SHA-256 of this serialization of the tree below it (`lstat`, symlinks not
///   followed), entries in byte order of their relative `/`-separated paths (the directory
///   itself excluded):
///   ```text
///   "edgeimage-tree-v1\n"
///   per entry:  path NUL kind NUL mode NUL payload
///   ```
///   `kind` is one letter: `d` directory, `f` regular file, `l` symlink, `h` hard link, `c`
///   character device, `b` block device, `p` fifo, `s` socket; `mode` the permission bits
///   (`& 0o7777`) as four octal digits; `payload` is, for a file, its size in decimal, NUL,
///   then its bytes; for a symlink or hard link, its target then NUL; for a device,
///   `major,minor` then NUL; empty otherwise. Owners and times are not covered (a checkout does
///   not keep them), so they do not change the pin.
pub fn input_sha256(path: &Path) -> Result<String> {
    Input::open(path)?.sha256()
}

/// SHA-256 of a tree in the serialization documented at [`input_sha256`].
pub fn tree_sha256(tree: &Tree) -> io::Result<String> {
    let mut h = Sha256::new();
    h.update(b"edgeimage-tree-v1\n");
    let mut buf = vec![0u8; 64 * 1024];
    for (path, node) in &tree.entries {
        let kind = match &node.kind {
            NodeKind::Dir => "d",
            NodeKind::File(_) => "f",
            NodeKind::Symlink(_) => "l",
            NodeKind::Hardlink(_) => "h",
            NodeKind::CharDevice { .. } => "c",
            NodeKind::BlockDevice { .. } => "b",
            NodeKind::Fifo => "p",
            NodeKind::Socket => "s",
        };
        h.update(path.as_bytes());
        h.update(format!("\0{kind}\0{:04o}\0", node.mode & 0o7777).as_bytes());
        match &node.kind {
            NodeKind::File(l) => {
                h.update(format!("{}\0", l.len()).as_bytes());
                let mut r = l.reader();
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
            NodeKind::Symlink(t) | NodeKind::Hardlink(t) => {
                h.update(t.as_bytes());
                h.update(b"\0");
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                h.update(format!("{major},{minor}\0").as_bytes());
            }
            _ => {}
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// An opened input.
enum Input {
    Dir {
        path: PathBuf,
        tree: Tree,
        problems: Vec<Problem>,
    },
    File {
        path: PathBuf,
        file: SharedFile,
        len: u64,
        ino: (u64, u64),
    },
}

impl Input {
    fn open(path: &Path) -> Result<Input> {
        let origin = path.display();
        let meta =
            std::fs::metadata(path).with_context(|| format!("extension {origin}: cannot open"))?;
        if meta.is_dir() {
            let (tree, problems) = walk_dir(path)?;
            return Ok(Input::Dir {
                path: path.to_path_buf(),
                tree,
                problems,
            });
        }
        if !meta.is_file() {
            bail!("extension {origin}: neither a directory nor a regular file");
        }
        let f = crate::input::open(path, crate::input::Kind::Extension)
            .with_context(|| format!("extension {origin}"))?
            .into_file();
        let m = f.metadata()?;
        Ok(Input::File {
            path: path.to_path_buf(),
            file: SharedFile::new(f, path),
            len: m.len(),
            ino: (m.dev(), m.ino()),
        })
    }

    fn sha256(&self) -> Result<String> {
        match self {
            Input::Dir { path, tree, .. } => {
                tree_sha256(tree).with_context(|| format!("extension {}: reading", path.display()))
            }
            Input::File {
                path, file, len, ..
            } => {
                let mut h = Sha256::new();
                io::copy(&mut file.region(0, *len), &mut h)
                    .with_context(|| format!("extension {}: reading", path.display()))?;
                Ok(hex::encode(h.finalize()))
            }
        }
    }

    /// The extension tree (`manifest.yaml`, `rootfs/…`) and the problems met reading it.
    fn read(self, arch: Arch) -> Result<(Tree, Vec<Problem>)> {
        match self {
            Input::Dir {
                path,
                tree,
                problems,
            } => {
                let has = |n: &str| tree.entries.contains_key(n);
                if !has("manifest.yaml") && (has("index.json") || has("manifest.json")) {
                    oci_tree(&path, arch)
                } else {
                    Ok((tree, problems))
                }
            }
            Input::File {
                path,
                file,
                len,
                ino,
            } => {
                let origin = path.display().to_string();
                let mut head = vec![0u8; 512];
                let n = read_up_to(&mut file.region(0, len), &mut head)?;
                head.truncate(n);
                if head.starts_with(&[0x1f, 0x8b]) {
                    let r =
                        flate2::read::MultiGzDecoder::new(io::BufReader::new(file.region(0, len)));
                    read_tar(r, Stored::Compressed(len), &origin)
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    let mut r = zstd::stream::read::Decoder::new(file.region(0, len))
                        .with_context(|| format!("extension {origin}: zstd"))?;
                    r.window_log_max(ZSTD_WINDOW_LOG_MAX)
                        .with_context(|| format!("extension {origin}: zstd"))?;
                    read_tar(r, Stored::Compressed(len), &origin)
                } else if is_tar_header(&head) {
                    let (tree, problems) =
                        read_tar(file.region(0, len), Stored::Plain(&file, len), &origin)?;
                    let has = |n: &str| tree.entries.contains_key(n);
                    if !has("manifest.yaml") && (has("index.json") || has("manifest.json")) {
                        drop(tree);
                        let out = oci_tree(&path, arch)?;
                        // The archive OciImage opened must be the file that was pinned.
                        let m = std::fs::metadata(&path)?;
                        if (m.dev(), m.ino()) != ino {
                            bail!("extension {origin}: the file was replaced while reading it");
                        }
                        Ok(out)
                    } else {
                        Ok((tree, problems))
                    }
                } else {
                    let shown: Vec<String> =
                        head.iter().take(4).map(|b| format!("{b:02x}")).collect();
                    bail!(
                        "extension {origin}: not a directory, tar, tar.gz, tar.zst, OCI layout \
                         or docker-save archive (first bytes {})",
                        shown.join(" ")
                    )
                }
            }
        }
    }
}

use crate::layout::read_up_to;

fn problem(path: impl Into<String>, rule: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        rule: rule.into(),
    }
}

/// zstd's window is at most 2^27 bytes (128 MiB), zstd's own default ceiling.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// What a tar stream of an extension is read from.
enum Stored<'a> {
    /// An uncompressed tar file of this size: file contents stay regions of it.
    Plain(&'a SharedFile, u64),
    /// A compressed file of this size: contents are copied to anonymous temporary files, and
    /// the stream may expand to [`expansion_limit`] of it.
    Compressed(u64),
}

/// Read a tar stream of the extension tree, through [`walk`]: paths at most
/// [`walk::MAX_DEPTH`] levels deep, checked (with the walk's other caps) before the entry is
/// added to the tree.
fn read_tar<R: Read>(r: R, stored: Stored<'_>, origin: &str) -> Result<(Tree, Vec<Problem>)> {
    let human = crate::progress::human_bytes;
    let label = format!("extension {origin}");
    let (limit, end_name) = match stored {
        Stored::Plain(_, len) => (len, "the end of the file".to_string()),
        Stored::Compressed(len) => {
            let limit = expansion_limit(len);
            (
                limit,
                format!(
                    "{}, the most a compressed extension of {} may decompress to (max({}, \
                     {MAX_EXPANSION_RATIO} × its size), at most {})",
                    human(limit),
                    human(len),
                    human(MIN_EXPANSION),
                    human(MAX_EXPANSION)
                ),
            )
        }
    };
    let regions = match stored {
        Stored::Plain(f, _) => Some(f),
        Stored::Compressed(_) => None,
    };
    let limits = walk::Limits {
        end: limit,
        end_name: end_name.clone(),
        depth: Some(walk::MAX_DEPTH),
    };
    let mut ar = tar::Archive::new(Capped::new(r, limit));
    let walked = ar
        .entries()
        .map_err(|e| anyhow!("{label}: not a tar stream: {}", walk::clean(&e.to_string())))
        .and_then(|entries| read_entries(entries, regions, &label, &limits));
    let capped = ar.into_inner();
    if capped.over() {
        bail!("{label}: decompresses past {end_name}: refused (limits: README, \"Input limits\")");
    }
    let (mut tree, mut problems) = walked?;
    resolve_hardlinks(&mut tree, &mut problems);
    Ok((tree, problems))
}

fn read_entries<'a, R: Read + 'a>(
    entries: tar::Entries<'a, R>,
    regions: Option<&SharedFile>,
    label: &str,
    limits: &walk::Limits,
) -> Result<(Tree, Vec<Problem>)> {
    let mut tree = Tree::new();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut totals = walk::Totals::default();
    walk::walk(entries, label, limits, &mut totals, |m, entry| {
        let i = m.index;
        let shown = String::from_utf8_lossy(&m.path).into_owned();
        let et = entry.header().entry_type();
        let Ok(name) = String::from_utf8(m.path.clone()) else {
            problems.push(problem(shown, "the name is not valid UTF-8"));
            return Ok(());
        };
        if name.starts_with('/') {
            problems.push(problem(
                name,
                "absolute path in the archive (entries must be relative)",
            ));
            return Ok(());
        }
        let Some(path) = normalize(&name) else {
            problems.push(problem(
                name,
                "the path climbs out of the tree with `..` (never followed)",
            ));
            return Ok(());
        };
        if path.is_empty() {
            return Ok(());
        }
        if !seen.insert(path.clone()) {
            problems.push(problem(&path, "appears more than once in the archive"));
            return Ok(());
        }
        let h = entry.header();
        let at = format!("{label}: entry {i} ({})", walk::shown(path.as_bytes()));
        let bad =
            |what: &str, e: io::Error| anyhow!("{at}: {what}: {}", walk::clean(&e.to_string()));
        let mode = h.mode().map_err(|e| bad("bad mode", e))? & 0o7777;
        // Owners and times are replaced by the writers; an unreadable one is not an error.
        let uid = m.uid.unwrap_or_else(|| h.uid().unwrap_or(0));
        let gid = m.gid.unwrap_or_else(|| h.gid().unwrap_or(0));
        let mtime = m.mtime.unwrap_or_else(|| h.mtime().unwrap_or(0));
        use tar::EntryType as T;
        let kind = match et {
            T::Directory => NodeKind::Dir,
            T::Regular | T::Continuous => {
                let size = entry.size();
                let mut l = Layout::new(size);
                match regions {
                    Some(f) => l.put_file(0, f.clone(), entry.raw_file_position(), size)?,
                    None => {
                        let mut tmp = tempfile::tempfile().map_err(|e| {
                            anyhow!(
                                "{label}: cannot create a temporary file: {e}; set TMPDIR to a \
                                 writable directory with room"
                            )
                        })?;
                        let n = io::copy(entry, &mut tmp).map_err(|e| bad("reading", e))?;
                        if n != size {
                            bail!("{at}: truncated ({n} of {size} bytes)");
                        }
                        l.put_file(0, SharedFile::new(tmp, format!("{label}: {path}")), 0, size)?;
                    }
                }
                NodeKind::File(l)
            }
            T::Symlink | T::Link => {
                let t = m.link.clone().unwrap_or_default();
                let Ok(t) = String::from_utf8(t) else {
                    problems.push(problem(&path, "the link target is not valid UTF-8"));
                    return Ok(());
                };
                if et == T::Symlink {
                    NodeKind::Symlink(t)
                } else {
                    NodeKind::Hardlink(t)
                }
            }
            T::Char | T::Block => {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if et == T::Char {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            }
            T::Fifo => NodeKind::Fifo,
            T::GNUSparse => {
                problems.push(problem(&path, "sparse files are not supported"));
                return Ok(());
            }
            other => {
                problems.push(problem(
                    &path,
                    format!(
                        "unsupported tar entry type {:?}",
                        char::from(other.as_byte())
                    ),
                ));
                return Ok(());
            }
        };
        let mut node = Node::new(kind, mode);
        node.uid = u32::try_from(uid).unwrap_or(u32::MAX);
        node.gid = u32::try_from(gid).unwrap_or(u32::MAX);
        node.mtime = mtime;
        tree.insert(path, node);
        Ok(())
    })?;
    Ok((tree, problems))
}

/// Replace hard links whose target is a regular file of the tree by that file; report the
/// others (and remove them).
fn resolve_hardlinks(tree: &mut Tree, problems: &mut Vec<Problem>) {
    let links: Vec<(String, String)> = tree
        .entries
        .iter()
        .filter_map(|(p, n)| match &n.kind {
            NodeKind::Hardlink(t) => Some((p.clone(), t.clone())),
            _ => None,
        })
        .collect();
    for (path, target) in links {
        let resolved = if target.starts_with('/') {
            None
        } else {
            normalize(&target)
        };
        let Some(t) = resolved else {
            problems.push(problem(
                &path,
                format!("hard link target {target:?} lies outside the tree"),
            ));
            tree.entries.remove(&path);
            continue;
        };
        match tree.entries.get(&t) {
            Some(n) if matches!(n.kind, NodeKind::File(_)) => {
                let n = n.clone();
                tree.entries.insert(path, n);
            }
            _ => {
                problems.push(problem(
                    &path,
                    format!("hard link target {target:?} is not a regular file of the archive"),
                ));
                tree.entries.remove(&path);
            }
        }
    }
}

/// Walk a directory with `lstat`, never following symlinks.
fn walk_dir(root: &Path) -> Result<(Tree, Vec<Problem>)> {
    let mut tree = Tree::new();
    let mut problems = Vec::new();
    let origin = root.display().to_string();
    let mut stack = vec![String::new()];
    let mut totals = walk::Totals::default();
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let rd = std::fs::read_dir(&dir)
            .with_context(|| format!("extension {origin}: cannot list {}", dir.display()))?;
        for ent in rd {
            let ent = ent.with_context(|| format!("extension {origin}: listing {rel}"))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else {
                problems.push(problem(
                    format!("{rel}/{}", name.to_string_lossy()),
                    "the name is not valid UTF-8",
                ));
                continue;
            };
            let path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            check_dir_entry(&origin, &path, &mut totals)?;
            let full = root.join(&path);
            let m = std::fs::symlink_metadata(&full)
                .with_context(|| format!("extension {origin}: cannot stat {path}"))?;
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                NodeKind::Dir
            } else if ft.is_file() {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&full)
                    .with_context(|| format!("extension {origin}: cannot open {path}"))?;
                let fm = f.metadata()?;
                if !fm.is_file() || (fm.dev(), fm.ino()) != (m.dev(), m.ino()) {
                    bail!("extension {origin}: {path} changed while reading the directory");
                }
                let len = fm.len();
                let mut l = Layout::new(len);
                l.put_file(0, SharedFile::new(f, &full), 0, len)?;
                NodeKind::File(l)
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&full)
                    .with_context(|| format!("extension {origin}: cannot read link {path}"))?;
                match t.into_os_string().into_string() {
                    Ok(t) => NodeKind::Symlink(t),
                    Err(_) => {
                        problems.push(problem(&path, "the link target is not valid UTF-8"));
                        continue;
                    }
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                let rdev = m.rdev();
                let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                if ft.is_char_device() {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            } else if ft.is_fifo() {
                NodeKind::Fifo
            } else {
                NodeKind::Socket
            };
            let mut node = Node::new(kind, m.mode() & 0o7777);
            node.uid = m.uid();
            node.gid = m.gid();
            node.mtime = u64::try_from(m.mtime()).unwrap_or(0);
            tree.insert(path, node);
        }
    }
    Ok((tree, problems))
}

/// The caps of [`walk`] for an entry of an extension directory: depth, entry count, path
/// bytes.
fn check_dir_entry(origin: &str, path: &str, totals: &mut walk::Totals) -> Result<()> {
    totals.entries += 1;
    totals.path_bytes += path.len() as u64;
    if totals.entries > walk::MAX_ENTRIES {
        bail!(
            "extension {origin}: more than {} entries: this is not an extension edgeimage reads \
             (limits: README, \"Input limits\")",
            walk::MAX_ENTRIES
        );
    }
    if totals.path_bytes > walk::MAX_PATH_BYTES {
        bail!(
            "extension {origin}: its paths take more than {}: this is not an extension \
             edgeimage reads (limits: README, \"Input limits\")",
            crate::progress::human_bytes(walk::MAX_PATH_BYTES)
        );
    }
    check_depth(origin, path)
}

/// A path of an extension tree must nest at most [`walk::MAX_DEPTH`] levels.
fn check_depth(origin: &str, path: &str) -> Result<()> {
    let d = walk::depth(path.as_bytes());
    if d > walk::MAX_DEPTH {
        bail!(
            "extension {origin}: {} nests {d} levels deep, more than the {}-level limit \
             (limits: README, \"Input limits\")",
            walk::shown(path.as_bytes()),
            walk::MAX_DEPTH
        );
    }
    Ok(())
}

/// The merged tree of an OCI layout / docker-save archive.
fn oci_tree(path: &Path, arch: Arch) -> Result<(Tree, Vec<Problem>)> {
    let origin = path.display().to_string();
    let img = OciImage::open_arch(path, arch).with_context(|| format!("extension {origin}"))?;
    let merged = img
        .merged_tree(&|_| true)
        .with_context(|| format!("extension {origin}"))?;
    let mut tree = Tree::new();
    let mut problems = Vec::new();
    for p in merged.entries.keys() {
        check_depth(&origin, p)?;
    }
    for (p, e) in merged.entries {
        let kind = match e.kind {
            EntryKind::Dir => NodeKind::Dir,
            EntryKind::File { size, content } => {
                let mut l = Layout::new(size);
                l.put_file(0, content, 0, size)?;
                NodeKind::File(l)
            }
            EntryKind::Symlink(t) => NodeKind::Symlink(t),
            EntryKind::Hardlink(t) => {
                problems.push(problem(
                    &p,
                    format!("hard link target {t:?} is not a regular file of the image"),
                ));
                continue;
            }
            EntryKind::Other("block device") => NodeKind::BlockDevice { major: 0, minor: 0 },
            EntryKind::Other("fifo") => NodeKind::Fifo,
            EntryKind::Other(_) => NodeKind::CharDevice { major: 0, minor: 0 },
        };
        let mut node = Node::new(kind, e.mode);
        node.uid = u32::try_from(e.uid).unwrap_or(u32::MAX);
        node.gid = u32::try_from(e.gid).unwrap_or(u32::MAX);
        node.mtime = e.mtime;
        tree.insert(p, node);
    }
    Ok((tree, problems))
}
