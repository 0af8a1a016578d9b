//! Key files on disk: reading them with the right checks, writing a new key pair.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use zeroize::{Zeroize, Zeroizing};

use super::kdf::Kdf;
use super::keys::{PublicKey, SecretKey};

/// A key name must be `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`: it becomes `<name>.pub` and
/// `<name>.key`, so no path separators, no leading dot or dash.
pub fn validate_key_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        bail!(
            "invalid key name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -, starting \
             with a letter or digit"
        );
    }
    Ok(())
}

/// Read a small text file (public key, signature). Errors name the file, never its content.
pub(crate) fn read_public_file(path: &Path, kind: crate::input::Kind) -> Result<String> {
    crate::input::read_text(path, kind)
}

/// Read a secret key file, refusing it when others may access it. The checks are made on the
/// open descriptor (`fstat`), so they apply to the file actually read. Symbolic links are
/// followed: what protects the key is the mode of the file itself.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<String>> {
    let ctx = || format!("reading secret key {}", path.display());
    let file = crate::input::open(path, crate::input::Kind::SecretKey)?.into_file();
    let meta = file.metadata().with_context(ctx)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        let how = if mode & 0o044 != 0 {
            "readable by others"
        } else {
            "accessible to others"
        };
        bail!(
            "{p} is {how} (mode {mode:04o}): run chmod 600 {p}",
            p = path.display()
        );
    }
    // Capacity reserved up front: reading never reallocates, so no stray copy is left.
    let mut buf = Zeroizing::new(Vec::with_capacity(
        crate::input::Kind::SecretKey.max() as usize + 1,
    ));
    file.take(crate::input::Kind::SecretKey.max())
        .read_to_end(&mut buf)
        .with_context(ctx)?;
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            e.into_bytes().zeroize();
            bail!(
                "{} is not text: it is not a minisign secret key file",
                path.display()
            )
        }
    }
}

/// Create `path` exclusively (`O_CREAT|O_EXCL`, which also refuses a symbolic link there) with
/// `mode`, write `data` and sync it. The mode is given at creation and never widened afterwards
/// for the secret key; the umask can only narrow it.
fn create_exclusive(path: &Path, mode: u32, data: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(f)
}

/// Generate a key pair and write `<dir>/<name>.pub` (mode 0644) and `<dir>/<name>.key` (created
/// 0600). Existing files are refused unless `force`, which replaces them. `passphrase` `None`
/// writes an unencrypted secret key. Returns the public key path, the secret key path and the
/// public key.
pub fn generate_key_pair(
    dir: &Path,
    name: &str,
    passphrase: Option<&[u8]>,
    kdf: Kdf,
    force: bool,
) -> Result<(PathBuf, PathBuf, PublicKey)> {
    validate_key_name(name)?;
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory: name a directory for the keys",
            dir.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Created private: it is where a secret key lives.
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the key directory {}", dir.display()))?;
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", dir.display()))),
    }
    let pub_path = dir.join(format!("{name}.pub"));
    let key_path = dir.join(format!("{name}.key"));
    for p in [&key_path, &pub_path] {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => bail!("{} is a directory: choose another key name", p.display()),
            Ok(_) if !force => bail!(
                "{} already exists: choose another key name, or use --force to replace the key pair",
                p.display()
            ),
            _ => {}
        }
    }

    // The slow part (the KDF) before any file is touched.
    let secret = SecretKey::generate()?;
    let public = secret.public();
    let secret_text = Zeroizing::new(secret.to_file_text(passphrase, kdf)?);
    let public_text = public.to_file_text();

    if force {
        for p in [&key_path, &pub_path] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("removing the old key file {}", p.display())))
                }
            }
        }
    }
    let exists_hint = |p: &Path, e: io::Error| {
        let hint = if e.kind() == io::ErrorKind::AlreadyExists {
            ": it was created meanwhile; run again"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("writing {}{hint}", p.display()))
    };
    if let Err(e) = create_exclusive(&key_path, 0o600, secret_text.as_bytes()) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            let _ = fs::remove_file(&key_path);
        }
        return Err(exists_hint(&key_path, e));
    }
    let written = create_exclusive(&pub_path, 0o644, public_text.as_bytes()).and_then(|f| {
        // A public key is meant to be read: set 0644 whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(0o644))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&key_path);
        if e.kind() != io::ErrorKind::AlreadyExists {
            let _ = fs::remove_file(&pub_path);
        }
        return Err(exists_hint(&pub_path, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok((pub_path, key_path, public))
}
