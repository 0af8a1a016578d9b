//! A normalized filesystem tree: what extension readers produce, what validators check, and
//! what the squashfs and cpio writers consume.
//!
//! Paths are relative, `/`-separated, without `.`/`..` components or a leading `/`
//! (`usr/local/bin/agent`), and sorted (a `BTreeMap`), so every walk is deterministic. A
//! directory may be listed explicitly or only implied by its children; writers create implied
//! directories with mode 0755. File contents are [`Layout`]s, so they can be regions of input
//! files or bytes made in memory, and are never copied before they are written.

use std::collections::BTreeMap;

use crate::layout::Layout;

/// What a node is.
#[derive(Clone, Debug)]
pub enum NodeKind {
    Dir,
    File(Layout),
    Symlink(String),
    /// A hard link to another path of the same tree (readers resolve these to files where they
    /// can; validators refuse what is left).
    Hardlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl NodeKind {
    /// A short name for messages ("regular file", "symlink", "character device", …).
    pub fn describe(&self) -> &'static str {
        match self {
            NodeKind::Dir => "directory",
            NodeKind::File(_) => "regular file",
            NodeKind::Symlink(_) => "symlink",
            NodeKind::Hardlink(_) => "hard link",
            NodeKind::CharDevice { .. } => "character device",
            NodeKind::BlockDevice { .. } => "block device",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
        }
    }
}

/// One entry of a tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits (`0o7777`), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since 1970 (writers normally replace it with `SOURCE_DATE_EPOCH`).
    pub mtime: u64,
    /// Extended attributes, e.g. `security.selinux`.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Node {
    pub fn dir(mode: u32) -> Node {
        Node::new(NodeKind::Dir, mode)
    }

    pub fn file(content: Layout, mode: u32) -> Node {
        Node::new(NodeKind::File(content), mode)
    }

    pub fn symlink(target: impl Into<String>) -> Node {
        Node::new(NodeKind::Symlink(target.into()), 0o777)
    }

    pub fn new(kind: NodeKind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// A filesystem tree.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub entries: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Insert a node; the path must already be normalized (see [`normalize`]).
    pub fn insert(&mut self, path: impl Into<String>, node: Node) {
        self.entries.insert(path.into(), node);
    }

    /// Total bytes of regular-file content.
    pub fn content_len(&self) -> u64 {
        self.entries
            .values()
            .map(|n| match &n.kind {
                NodeKind::File(l) => l.len(),
                _ => 0,
            })
            .sum()
    }

    /// The subtree below `prefix` (a directory path), with paths relative to it.
    pub fn subtree(&self, prefix: &str) -> Tree {
        let p = format!("{}/", prefix.trim_end_matches('/'));
        Tree {
            entries: self
                .entries
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, v)| (k[p.len()..].to_string(), v.clone()))
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        }
    }

    /// Every directory the tree needs: listed ones and those implied by deeper paths.
    pub fn all_dirs(&self) -> Vec<String> {
        let mut dirs = std::collections::BTreeSet::new();
        for (path, node) in &self.entries {
            if matches!(node.kind, NodeKind::Dir) {
                dirs.insert(path.clone());
            }
            let mut p = path.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                dirs.insert(p.to_string());
            }
        }
        dirs.into_iter().collect()
    }
}

/// Normalize a path from an archive or a directory walk: strip `./` and leading `/`, drop
/// empty and `.` components. Returns `None` when a `..` component would climb (the caller
/// reports it: such paths are never followed).
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Lexically resolve a symlink `target` relative to the directory `base` (or against the
/// root when it is absolute, as a layer mounted at `/` sees it). `None` when it climbs above
/// the root.
pub fn resolve_within(base: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if !target.starts_with('/') {
        parts.extend(base.split('/').filter(|c| !c.is_empty()));
    }
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The directory part of a normalized path (`""` for a top-level entry).
pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_subtree() {
        assert_eq!(
            normalize("./usr//local/./bin/").as_deref(),
            Some("usr/local/bin")
        );
        assert_eq!(normalize("/abs/path").as_deref(), Some("abs/path"));
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(
            resolve_within("usr/lib", "../bin/x").as_deref(),
            Some("usr/bin/x")
        );
        assert_eq!(resolve_within("usr", "/etc/x").as_deref(), Some("etc/x"));
        assert_eq!(resolve_within("usr", "../../x"), None);
        let mut t = Tree::new();
        t.insert(
            "rootfs/usr/local/bin/x",
            Node::file(Layout::from_bytes(b"hi".to_vec()), 0o755),
        );
        t.insert("rootfs", Node::dir(0o755));
        t.insert(
            "manifest.yaml",
            Node::file(Layout::from_bytes(b"v".to_vec()), 0o644),
        );
        let r = t.subtree("rootfs");
        assert_eq!(r.entries.keys().collect::<Vec<_>>(), ["usr/local/bin/x"]);
        assert_eq!(r.all_dirs(), ["usr", "usr/local", "usr/local/bin"]);
        assert_eq!(t.content_len(), 3);
    }
}
