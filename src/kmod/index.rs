//! kmod's binary index, the `modules.*.bin` files that libkmod (`modprobe`, udev) reads: a
//! prefix-compressed trie of 7-bit ASCII keys, each key holding values sorted by priority.
//!
//! Format (kmod `tools/depmod.c`, `index_write`; read by `libkmod/libkmod-index.c`), all
//! integers big-endian:
//!
//! ```text
//! u32 magic 0xB007F457, u32 version 0x00020001, u32 offset of the root node
//! nodes, each child written before its parent (post-order), each node:
//!   [prefix bytes, NUL]                          if flag 0x80000000 (PREFIX)
//!   [u8 first, u8 last, u32 offset × (last-first+1)]  if flag 0x20000000 (CHILDS); 0 = none
//!   [u32 count, (u32 priority, value bytes, NUL) × count]  if flag 0x40000000 (VALUES)
//! ```
//!
//! A node's offset (in the parent's child table and the header) carries those flags in its
//! high nibble. Values of one key are kept in ascending priority; an equal priority goes in
//! front of the values already there, as kmod inserts it.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

const MAGIC: u32 = 0xB007_F457;
const VERSION: u32 = 0x0002_0001;
const PREFIX: u32 = 0x8000_0000;
const VALUES: u32 = 0x4000_0000;
const CHILDS: u32 = 0x2000_0000;

#[derive(Default)]
struct Node {
    prefix: Vec<u8>,
    values: Vec<(u32, Vec<u8>)>,
    children: BTreeMap<u8, Node>,
}

/// An index being built.
#[derive(Default)]
pub struct Index {
    root: Node,
}

fn check(s: &str, what: &str) -> Result<()> {
    if let Some(c) = s.bytes().find(|&c| c >= 128 || c == 0) {
        bail!("module index: {what} {s:?} has byte {c:#04x}; the index holds 7-bit ASCII only");
    }
    Ok(())
}

fn add_value(values: &mut Vec<(u32, Vec<u8>)>, value: &[u8], priority: u32) {
    let at = values
        .iter()
        .position(|(p, _)| *p >= priority)
        .unwrap_or(values.len());
    values.insert(at, (priority, value.to_vec()));
}

impl Index {
    /// Add `value` under `key` with `priority`.
    pub fn insert(&mut self, key: &str, value: &str, priority: u32) -> Result<()> {
        check(key, "key")?;
        check(value, "value")?;
        let key = key.as_bytes();
        let mut node = &mut self.root;
        let mut i = 0;
        loop {
            // Split the node where its prefix and the key part ways.
            let common = node
                .prefix
                .iter()
                .zip(&key[i..])
                .take_while(|(a, b)| a == b)
                .count();
            if common < node.prefix.len() {
                let ch = node.prefix[common];
                let rest = node.prefix[common + 1..].to_vec();
                let moved = Node {
                    prefix: rest,
                    values: std::mem::take(&mut node.values),
                    children: std::mem::take(&mut node.children),
                };
                node.prefix.truncate(common);
                node.children.insert(ch, moved);
            }
            i += common;
            let Some(&ch) = key.get(i) else {
                add_value(&mut node.values, value.as_bytes(), priority);
                return Ok(());
            };
            match node.children.entry(ch) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut child = Node {
                        prefix: key[i + 1..].to_vec(),
                        ..Node::default()
                    };
                    add_value(&mut child.values, value.as_bytes(), priority);
                    e.insert(child);
                    return Ok(());
                }
                std::collections::btree_map::Entry::Occupied(e) => node = e.into_mut(),
            }
            i += 1;
        }
    }

    /// The index file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let root = write_node(&self.root, &mut out);
        out[8..12].copy_from_slice(&root.to_be_bytes());
        out
    }
}

fn write_node(node: &Node, out: &mut Vec<u8>) -> u32 {
    let mut table = Vec::new();
    let range = node
        .children
        .keys()
        .next()
        .zip(node.children.keys().next_back());
    if let Some((&first, &last)) = range {
        for c in first..=last {
            table.push(node.children.get(&c).map_or(0, |n| write_node(n, out)));
        }
    }
    let mut offset = out.len() as u32;
    if !node.prefix.is_empty() {
        out.extend_from_slice(&node.prefix);
        out.push(0);
        offset |= PREFIX;
    }
    if let Some((&first, &last)) = range {
        out.push(first);
        out.push(last);
        for t in table {
            out.extend_from_slice(&t.to_be_bytes());
        }
        offset |= CHILDS;
    }
    if !node.values.is_empty() {
        out.extend_from_slice(&(node.values.len() as u32).to_be_bytes());
        for (p, v) in &node.values {
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(v);
            out.push(0);
        }
        offset |= VALUES;
    }
    offset
}

/// Look `key` up in index bytes the way libkmod's exact lookup does (for tests and
/// `inspect`): the values stored under exactly that key, in order.
pub fn lookup(bytes: &[u8], key: &str) -> Result<Vec<(u32, String)>> {
    let be = |at: usize| -> Result<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "module index: offset {at} past the {}-byte file",
                    bytes.len()
                )
            })
    };
    if be(0)? != MAGIC || be(4)? != VERSION {
        bail!("module index: not a kmod index (magic or version differ)");
    }
    let mut off = be(8)?;
    let key = key.as_bytes();
    let mut i = 0;
    for _ in 0..=key.len() + 1 {
        let mut at = (off & 0x0fff_ffff) as usize;
        if off & PREFIX != 0 {
            let end = bytes[at.min(bytes.len())..]
                .iter()
                .position(|&c| c == 0)
                .ok_or_else(|| anyhow::anyhow!("module index: a prefix runs off the file"))?;
            let prefix = &bytes[at..at + end];
            if !key[i..].starts_with(prefix) {
                return Ok(Vec::new());
            }
            i += prefix.len();
            at += end + 1;
        }
        let mut child = None;
        if off & CHILDS != 0 {
            let (first, last) = (bytes[at], bytes[at + 1]);
            let n = usize::from(last.saturating_sub(first)) + 1;
            if let Some(&c) = key.get(i) {
                if (first..=last).contains(&c) {
                    child = Some(be(at + 2 + 4 * usize::from(c - first))?);
                }
            }
            at += 2 + 4 * n;
        }
        if i == key.len() {
            if off & VALUES == 0 {
                return Ok(Vec::new());
            }
            let count = be(at)? as usize;
            at += 4;
            let mut out = Vec::new();
            for _ in 0..count.min(bytes.len()) {
                let p = be(at)?;
                at += 4;
                let end = bytes[at.min(bytes.len())..]
                    .iter()
                    .position(|&c| c == 0)
                    .ok_or_else(|| anyhow::anyhow!("module index: a value runs off the file"))?;
                out.push((
                    p,
                    String::from_utf8_lossy(&bytes[at..at + end]).into_owned(),
                ));
                at += end + 1;
            }
            return Ok(out);
        }
        match child {
            Some(c) if c != 0 => {
                off = c;
                i += 1;
            }
            _ => return Ok(Vec::new()),
        }
    }
    bail!("module index: the trie is deeper than its key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_splits_and_finds_every_key() {
        let mut ix = Index::default();
        let keys = [
            ("virtio_blk", "kernel/virtio_blk.ko: kernel/virtio.ko", 3),
            ("virtio", "kernel/virtio.ko:", 1),
            ("virtio_pci", "kernel/virtio_pci.ko: kernel/virtio.ko", 2),
            ("vfat", "kernel/vfat.ko: kernel/fat.ko", 4),
            ("a", "a.ko:", 0),
        ];
        for (k, v, p) in keys {
            ix.insert(k, v, p).unwrap();
        }
        ix.insert("virtio", "extras/virtio.ko:", 0).unwrap();
        let b = ix.to_bytes();
        assert_eq!(&b[..8], &[0xB0, 0x07, 0xF4, 0x57, 0, 2, 0, 1]);
        for (k, v, p) in keys {
            assert!(lookup(&b, k).unwrap().contains(&(p, v.to_string())), "{k}");
        }
        // Ascending priority.
        assert_eq!(
            lookup(&b, "virtio").unwrap(),
            [
                (0, "extras/virtio.ko:".into()),
                (1, "kernel/virtio.ko:".into())
            ]
        );
        assert!(lookup(&b, "virt").unwrap().is_empty());
        assert!(lookup(&b, "virtio_blkx").unwrap().is_empty());
        assert!(ix.insert("naïve", "x", 0).is_err());
    }
}
