//! The trust store: which keys may sign the media a site accepts.
//!
//! A directory (the repository's `signing/`, or any copy of it on an installer stick):
//!
//! - `trusted/*.pub`: minisign public keys; every one is trusted.
//! - `revoked` (optional): key IDs that are no longer trusted, one per line as minisign
//!   prints them (16 hex digits); `#` starts a comment. A revoked key is refused even when
//!   its `.pub` is still under `trusted/`, so revoking is one line and needs no deletion.
//!
//! Files are read through [`crate::input::open_beneath`]: a symbolic link inside the store is
//! refused, not followed, and no error quotes a line of a file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::input::{open_beneath, Kind};
use crate::sign::PublicKey;

/// The most public keys a trust store holds.
const MAX_KEYS: usize = 1024;

/// What the trust store says about a key ID.
pub enum Lookup<'a> {
    Trusted(&'a TrustedKey),
    /// Listed in `revoked` (line number).
    Revoked(usize),
    Unknown,
}

pub struct TrustedKey {
    pub key: PublicKey,
    pub path: PathBuf,
}

pub struct TrustStore {
    pub dir: PathBuf,
    /// The files read, as read: `trusted/<name>.pub` and `revoked` (relative paths), sorted.
    files: Vec<(String, Vec<u8>)>,
    /// By key ID (uppercase hex).
    keys: BTreeMap<String, TrustedKey>,
    /// Key ID (uppercase hex) → line in `revoked`.
    revoked: BTreeMap<String, usize>,
}

impl TrustStore {
    /// Load `dir/trusted/*.pub` and `dir/revoked`. A store without keys is an error: nothing
    /// could ever verify against it.
    pub fn load(dir: &Path) -> Result<TrustStore> {
        let trusted = dir.join("trusted");
        let entries = fs::read_dir(&trusted).with_context(|| {
            format!(
                "cannot read the trust store's key directory {}: pass the directory that holds trusted/*.pub (and revoked) with --trust DIR",
                trusted.display()
            )
        })?;
        let mut names = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("listing {}", trusted.display()))?;
            let name = e.file_name();
            if Path::new(&name).extension().is_some_and(|x| x == "pub") {
                let name = name.into_string().map_err(|n| {
                    anyhow!(
                        "{}: a key file name that is not UTF-8 ({}): rename it",
                        trusted.display(),
                        Path::new(&n).display()
                    )
                })?;
                names.push(name);
            }
        }
        names.sort();
        if names.len() > MAX_KEYS {
            bail!(
                "{} holds {} public keys, more than the {MAX_KEYS} a trust store may hold",
                trusted.display(),
                names.len()
            );
        }
        let mut files = Vec::new();
        let mut keys: BTreeMap<String, TrustedKey> = BTreeMap::new();
        for name in names {
            let rel = format!("trusted/{name}");
            let p = dir.join(&rel);
            let Some(input) = open_beneath(dir, Path::new(&rel), Kind::PublicKey)? else {
                continue; // removed while listing
            };
            let bytes = input.read_all()?;
            let text = crate::input::text(bytes.clone(), &p, Kind::PublicKey)?;
            let key =
                PublicKey::parse(&text).with_context(|| format!("reading {}", p.display()))?;
            files.push((rel, bytes));
            let id = key.key_id_hex();
            if let Some(other) = keys.get(&id) {
                if other.key.key != key.key {
                    bail!(
                        "{} and {} both claim key ID {id} with different keys: remove the wrong one",
                        other.path.display(),
                        p.display()
                    );
                }
                continue;
            }
            keys.insert(id, TrustedKey { key, path: p });
        }
        if keys.is_empty() {
            bail!(
                "the trust store {} holds no public keys (trusted/*.pub): add the release key's .pub file",
                dir.display()
            );
        }
        let revoked_path = dir.join("revoked");
        let revoked = match open_beneath(dir, Path::new("revoked"), Kind::Revoked)? {
            Some(input) => {
                let bytes = input.read_all()?;
                let text = crate::input::text(bytes.clone(), &revoked_path, Kind::Revoked)?;
                files.push(("revoked".to_string(), bytes));
                parse_revoked(&text).map_err(|e| anyhow!("{}: {e}", revoked_path.display()))?
            }
            None => BTreeMap::new(),
        };
        Ok(TrustStore {
            dir: dir.to_path_buf(),
            files,
            keys,
            revoked,
        })
    }

    /// What the store says about a key ID (as [`PublicKey::key_id_hex`] prints it).
    pub fn lookup(&self, key_id: &str) -> Lookup<'_> {
        let id = key_id.to_ascii_uppercase();
        if let Some(line) = self.revoked.get(&id) {
            return Lookup::Revoked(*line);
        }
        match self.keys.get(&id) {
            Some(k) => Lookup::Trusted(k),
            None => Lookup::Unknown,
        }
    }

    /// The store's files as read (`trusted/<name>.pub`, `revoked`), to copy it whole.
    pub fn files(&self) -> &[(String, Vec<u8>)] {
        &self.files
    }

    /// Key IDs of the trusted keys (for messages).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }
}

fn parse_revoked(text: &str) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.split('#').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        // minisign 0.11 prints key IDs without leading zeros, newer releases with 16 digits.
        let id = (t.len() <= 16 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(t, 16).ok())
            .flatten()
            .ok_or_else(|| {
                anyhow!(
                    "line {} is not a key ID (up to 16 hex digits, as in the public key's comment line)",
                    i + 1
                )
            })?;
        out.insert(format!("{id:016X}"), i + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::SecretKey;

    fn store_with(keys: &[&SecretKey], revoked: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("trusted")).unwrap();
        for (i, k) in keys.iter().enumerate() {
            fs::write(
                d.path().join(format!("trusted/k{i}.pub")),
                k.public().to_file_text(),
            )
            .unwrap();
        }
        if let Some(r) = revoked {
            fs::write(d.path().join("revoked"), r).unwrap();
        }
        d
    }

    #[test]
    fn trusted_revoked_unknown() {
        let (a, b, c) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let d = store_with(
            &[&a, &b],
            Some(&format!(
                "# rotated out\n\n{}  # old\n",
                b.key_id_hex().to_lowercase()
            )),
        );
        let s = TrustStore::load(d.path()).unwrap();
        assert!(matches!(s.lookup(&a.key_id_hex()), Lookup::Trusted(_)));
        assert!(matches!(s.lookup(&b.key_id_hex()), Lookup::Revoked(3)));
        assert!(matches!(s.lookup(&c.key_id_hex()), Lookup::Unknown));
        assert_eq!(s.key_ids().len(), 2);
    }

    #[test]
    fn bad_stores_are_refused_with_reasons() {
        let d = tempfile::tempdir().unwrap();
        let e = TrustStore::load(d.path()).err().unwrap().to_string();
        assert!(e.contains("--trust DIR") && e.contains("trusted"), "{e}");
        fs::create_dir(d.path().join("trusted")).unwrap();
        let e = TrustStore::load(d.path()).err().unwrap().to_string();
        assert!(e.contains("holds no public keys"), "{e}");
        let a = SecretKey::generate().unwrap();
        let d = store_with(&[&a], Some("not-a-key-id\n"));
        let e = format!("{:#}", TrustStore::load(d.path()).err().unwrap());
        assert!(
            e.contains("revoked: line 1") && e.contains("16 hex digits"),
            "{e}"
        );
        let d = store_with(&[&a], None);
        fs::write(d.path().join("trusted/bad.pub"), "garbage\n").unwrap();
        let e = format!("{:#}", TrustStore::load(d.path()).err().unwrap());
        assert!(e.contains("bad.pub"), "{e}");
    }
}
