//! An output set: every file one build of a profile writes, in one directory `DIR/<name>/`
//! that is replaced as a whole, so after a kill at any instant `DIR/<name>/` holds either the
//! whole old set or the whole new set.
//!
//! [`OutputSet::begin`]:
//!
//! 1. `mkdir -p DIR`; `open(DIR/.<name>.lock, O_CREAT)` and `flock(LOCK_EX | LOCK_NB)`: two
//!    builds of one profile into one directory never interleave; the second fails at once
//!    (the lock is checked to still be the file at that name, and unlinked when the set is
//!    dropped, so a finished build leaves no lock file);
//! 2. what a killed build left is cleaned up: when `DIR/<name>` is missing and one
//!    `DIR/.<name>.old-<hex>` exists (a kill inside the fallback's window, below), it is
//!    renamed back to `DIR/<name>`; then every `DIR/.<name>.new-<hex>` and
//!    `DIR/.<name>.old-<hex>` is removed;
//! 3. `mkdir DIR/.<name>.new-<16 hex>`: the staging directory the build writes into.
//!
//! [`OutputSet::commit`]:
//!
//! 1. `fsync` of every file in the staging directory, then of the directory;
//! 2. `renameat2(staging, DIR/<name>, RENAME_EXCHANGE)` when `DIR/<name>` exists (the old set
//!    is now at the staging name), else `renameat2(staging, DIR/<name>, RENAME_NOREPLACE)`;
//! 3. `fsync(DIR)`;
//! 4. the old set is removed.
//!
//! A kill before step 2 leaves the old set in place, after it the new one; a leftover staging
//! directory (holding a partial new set or the old set) is removed by the next build.
//!
//! On a filesystem that refuses `RENAME_EXCHANGE` (EINVAL, ENOSYS, EOPNOTSUPP: NFS, some FUSE
//! filesystems) step 2 becomes two renames: `DIR/<name>` → `DIR/.<name>.old-<hex>`, then
//! staging → `DIR/<name>`. Between them `DIR/<name>` does not exist: a kill in that window
//! leaves the old set at `.<name>.old-<hex>` and the new one at `.<name>.new-<hex>`, and the
//! next build of the profile puts the old set back before it starts (step 2 of `begin`).
//!
//! Dropping a set that was not committed removes its staging directory: a failed build leaves
//! the old set untouched.
//!
//! Debug builds stop at a step of the commit when `EDGEIMAGE_TEST_STOP_AT` names it
//! ([`STOP_STEPS`]: the process sends itself SIGKILL there), and take the fallback when
//! `EDGEIMAGE_TEST_NO_EXCHANGE=1`; the kill tests use both.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// The steps of [`OutputSet::commit`] a debug build can be stopped at: after the staging
/// directory is synced and before the swap, after the swap (and `fsync(DIR)`) before the old
/// set is removed, after the removal, and, in the fallback, between its two renames.
pub const STOP_STEPS: [&str; 4] = [
    "before-exchange",
    "after-exchange",
    "after-removal",
    "fallback-between",
];

/// The environment variable naming the step to stop at (debug builds only).
pub const STOP_ENV: &str = "EDGEIMAGE_TEST_STOP_AT";
/// The environment variable that makes debug builds swap without `RENAME_EXCHANGE`.
pub const NO_EXCHANGE_ENV: &str = "EDGEIMAGE_TEST_NO_EXCHANGE";

/// The set directory of profile `name` in `out_dir`: `out_dir/<name>`.
pub fn set_dir(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join(name)
}

/// A set being written: the staging directory, under the profile's lock.
pub struct OutputSet {
    out_dir: PathBuf,
    name: String,
    target: PathBuf,
    staging: PathBuf,
    /// Held until the set is dropped.
    _lock: Lock,
    /// Swap with two renames instead of `RENAME_EXCHANGE`.
    no_exchange: bool,
    /// The staging directory has been swapped in (or handed over): dropping leaves it.
    committed: bool,
}

/// Which hidden entry of `out_dir` a name is, for profile `name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leftover {
    /// `.<name>.new-<hex>`: a staging directory (a partial new set, or an old set after the
    /// swap).
    New,
    /// `.<name>.old-<hex>`: an old set moved aside by the fallback.
    Old,
}

/// Length of the random suffix of staging and old-set names (hex digits).
const SUFFIX_LEN: usize = 16;

fn leftover(name: &str, entry: &std::ffi::OsStr) -> Option<Leftover> {
    let rest = entry.to_str()?.strip_prefix('.')?.strip_prefix(name)?;
    let (kind, hex) = if let Some(h) = rest.strip_prefix(".new-") {
        (Leftover::New, h)
    } else if let Some(h) = rest.strip_prefix(".old-") {
        (Leftover::Old, h)
    } else {
        return None;
    };
    let is_suffix = hex.len() == SUFFIX_LEN
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_suffix.then_some(kind)
}

fn random_suffix() -> Result<String> {
    let mut b = [0u8; SUFFIX_LEN / 2];
    getrandom::getrandom(&mut b)
        .map_err(|e| anyhow!("reading random bytes from the operating system: {e}"))?;
    Ok(hex::encode(b))
}

impl OutputSet {
    /// Lock profile `name`'s set in `out_dir`, clean up after a killed build and create the
    /// staging directory.
    pub fn begin(out_dir: &Path, name: &str) -> Result<OutputSet> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
            bail!(
                "cannot name an output set {name:?}: a profile name is a plain file name that does not start with '.'"
            );
        }
        fs::create_dir_all(out_dir).with_context(|| {
            format!(
                "cannot create the output directory {}; choose a writable one with --out DIR",
                out_dir.display()
            )
        })?;
        let lock = Lock::acquire(&out_dir.join(format!(".{name}.lock")), name, out_dir)?;
        // Something else in the set's place is refused before the build does any work.
        exists(&set_dir(out_dir, name))?;
        let mut set = OutputSet {
            out_dir: out_dir.to_path_buf(),
            name: name.to_string(),
            target: set_dir(out_dir, name),
            staging: PathBuf::new(),
            _lock: lock,
            no_exchange: cfg!(debug_assertions)
                && std::env::var_os(NO_EXCHANGE_ENV).is_some_and(|v| v == "1"),
            committed: true,
        };
        set.clean_up()?;
        set.staging = set.create_staging()?;
        set.committed = false;
        Ok(set)
    }

    /// The staging directory: where the build writes the set's files.
    pub fn dir(&self) -> &Path {
        &self.staging
    }

    /// Where the file `p` (written into [`OutputSet::dir`]) is once the set is committed.
    pub fn final_path(&self, p: &Path) -> PathBuf {
        match p.strip_prefix(&self.staging) {
            Ok(rel) => self.target.join(rel),
            Err(_) => p.to_path_buf(),
        }
    }

    /// Put back an old set the fallback moved aside when a kill left no set, then remove
    /// every leftover staging and old-set directory of this profile.
    fn clean_up(&self) -> Result<()> {
        let entries = fs::read_dir(&self.out_dir).with_context(|| {
            format!(
                "listing the output directory {}; choose a readable one with --out DIR",
                self.out_dir.display()
            )
        })?;
        let mut found = Vec::new();
        for e in entries {
            let e = e.with_context(|| {
                format!("listing the output directory {}", self.out_dir.display())
            })?;
            if let Some(kind) = leftover(&self.name, &e.file_name()) {
                found.push((kind, e.path()));
            }
        }
        let olds: Vec<&PathBuf> = found
            .iter()
            .filter(|(k, _)| *k == Leftover::Old)
            .map(|(_, p)| p)
            .collect();
        let mut restored = None;
        if let [old] = olds[..] {
            if !exists(&self.target)? {
                fs::rename(old, &self.target).with_context(|| {
                    format!(
                        "putting the previous output set {} back at {} (an earlier build was interrupted while swapping); move it there by hand",
                        old.display(),
                        self.target.display()
                    )
                })?;
                sync_dir(&self.out_dir)?;
                restored = Some(old.clone());
            }
        }
        for (_, p) in found.iter().filter(|(_, p)| Some(p) != restored.as_ref()) {
            remove_all(p).with_context(|| {
                format!(
                    "removing {}, left by an interrupted build of {}; remove it by hand",
                    p.display(),
                    self.name
                )
            })?;
        }
        Ok(())
    }

    fn create_staging(&self) -> Result<PathBuf> {
        let mut last = None;
        for _ in 0..8 {
            let p = self
                .out_dir
                .join(format!(".{}.new-{}", self.name, random_suffix()?));
            match fs::DirBuilder::new().mode(0o755).create(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot create the staging directory {}; choose a writable output directory with --out DIR",
                            p.display()
                        )
                    })
                }
            }
        }
        Err(anyhow!(
            "cannot create a staging directory in {}: every random name was taken ({})",
            self.out_dir.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    /// Sync the staged files and swap them in as `DIR/<name>`; returns the set directory.
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_tree(&self.staging)?;
        stop_at("before-exchange");
        let old = if exists(&self.target)? {
            let exchanged = if self.no_exchange {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                renameat2(&self.staging, &self.target, libc::RENAME_EXCHANGE)
            };
            match exchanged {
                Ok(()) => {
                    self.committed = true;
                    self.staging.clone()
                }
                Err(e) if unsupported(&e) => self.swap_by_renames()?,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "swapping the new output set {} with {}",
                            self.staging.display(),
                            self.target.display()
                        )
                    })
                }
            }
        } else {
            match renameat2(&self.staging, &self.target, libc::RENAME_NOREPLACE) {
                Err(e) if unsupported(&e) => fs::rename(&self.staging, &self.target),
                r => r,
            }
            .with_context(|| {
                format!(
                    "renaming the new output set {} to {}",
                    self.staging.display(),
                    self.target.display()
                )
            })?;
            self.committed = true;
            PathBuf::new()
        };
        sync_dir(&self.out_dir)?;
        stop_at("after-exchange");
        if !old.as_os_str().is_empty() {
            remove_all(&old).with_context(|| {
                format!(
                    "the new output set is in place at {}, but the previous one at {} could not be removed; remove it by hand (the next build of {} also does)",
                    self.target.display(),
                    old.display(),
                    self.name
                )
            })?;
        }
        stop_at("after-removal");
        Ok(self.target.clone())
    }

    /// The swap without `RENAME_EXCHANGE`: old set aside, new set in; returns where the old
    /// set is. Between the two renames `DIR/<name>` does not exist (see the module comment).
    fn swap_by_renames(&mut self) -> Result<PathBuf> {
        let aside = self
            .out_dir
            .join(format!(".{}.old-{}", self.name, random_suffix()?));
        fs::rename(&self.target, &aside).with_context(|| {
            format!(
                "moving the previous output set {} aside to {}",
                self.target.display(),
                aside.display()
            )
        })?;
        stop_at("fallback-between");
        if let Err(e) = fs::rename(&self.staging, &self.target) {
            let back = fs::rename(&aside, &self.target);
            return Err(anyhow::Error::new(e).context(match back {
                Ok(()) => format!(
                    "renaming the new output set {} to {}; the previous set is back in place",
                    self.staging.display(),
                    self.target.display()
                ),
                Err(b) => format!(
                    "renaming the new output set {} to {}, and moving the previous set back from {} failed too ({b}); rename it to {} by hand",
                    self.staging.display(),
                    self.target.display(),
                    aside.display(),
                    self.target.display()
                ),
            }));
        }
        self.committed = true;
        Ok(aside)
    }
}

impl Drop for OutputSet {
    fn drop(&mut self) {
        if !self.committed && !self.staging.as_os_str().is_empty() {
            let _ = remove_all(&self.staging);
        }
        // The lock is released after this, when the field is dropped.
    }
}

/// An exclusive `flock` on `DIR/.<name>.lock`.
struct Lock {
    path: PathBuf,
    file: Option<File>,
}

impl Lock {
    fn acquire(path: &Path, name: &str, out_dir: &Path) -> Result<Lock> {
        let ctx = || {
            format!(
                "cannot create the lock file {}; choose a writable output directory with --out DIR",
                path.display()
            )
        };
        // A build that finishes unlinks the lock file while holding it; a file locked after
        // it was unlinked is no lock, so take it again until the name and the lock agree.
        for _ in 0..100 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .with_context(ctx)?;
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    bail!(
                        "another edgeimage build of profile {name} is writing into {} (it holds {}); wait for it to finish, or build into another --out directory",
                        out_dir.display(),
                        path.display()
                    );
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            let held = file
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?;
            match fs::symlink_metadata(path) {
                Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => {
                    return Ok(Lock {
                        path: path.to_path_buf(),
                        file: Some(file),
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        bail!(
            "cannot lock {}: other builds of profile {name} keep replacing it; wait for them to finish",
            path.display()
        )
    }
}

impl Drop for Lock {
    /// Unlink the lock file (still holding the lock), then unlock.
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = fs::remove_file(&self.path);
            drop(f);
        }
    }
}

fn exists(p: &Path) -> Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => bail!(
            "{} exists and is not a directory, but the build writes its output set there; move it away or choose another --out directory",
            p.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn remove_all(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// `fsync` every file under `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir)
        .with_context(|| format!("listing the staging directory {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing the staging directory {}", dir.display()))?;
        let p = e.path();
        let t = e
            .file_type()
            .with_context(|| format!("reading {}", p.display()))?;
        if t.is_dir() {
            sync_tree(&p)?;
        } else if t.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    sync_dir(dir)
}

/// `renameat2(from, to, flags)` by system call (the C library may not have the wrapper).
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The filesystem (or kernel) does not do this kind of rename.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// Debug builds: SIGKILL this process when `EDGEIMAGE_TEST_STOP_AT` names `step`.
fn stop_at(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os(STOP_ENV).is_some_and(|v| v == step) {
        // SAFETY: kill(2) on this process; SIGKILL cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A set holding `files` (name, content), committed.
    fn write_set(out: &Path, files: &[(&str, &str)], no_exchange: bool) -> PathBuf {
        let mut s = OutputSet::begin(out, "t").unwrap();
        s.no_exchange = no_exchange;
        assert!(s.dir().starts_with(out));
        for (n, c) in files {
            fs::write(s.dir().join(n), c).unwrap();
        }
        s.commit().unwrap()
    }

    #[test]
    fn first_set_appears_whole_and_leaves_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let mut s = OutputSet::begin(&out, "t").unwrap();
        fs::write(s.dir().join("t.raw.zst"), "image").unwrap();
        fs::set_permissions(s.dir().join("t.raw.zst"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            s.final_path(&s.dir().join("t.raw.zst")),
            out.join("t/t.raw.zst")
        );
        assert!(!out.join("t").exists(), "nothing named before the commit");
        assert!(names(&out).contains(&".t.lock".to_string()));
        s.no_exchange = false;
        let dir = s.commit().unwrap();
        assert_eq!(dir, out.join("t"));
        assert_eq!(names(&out), ["t"]);
        assert_eq!(names(&dir), ["t.raw.zst"]);
        let mode = fs::metadata(dir.join("t.raw.zst"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "modes are kept");
    }

    #[test]
    fn a_new_set_replaces_the_old_one_whole() {
        for no_exchange in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let out = d.path();
            write_set(
                out,
                &[("a", "old"), ("b", "old"), ("gone", "old")],
                no_exchange,
            );
            let dir = write_set(out, &[("a", "new"), ("b", "new")], no_exchange);
            assert_eq!(names(out), ["t"], "fallback: {no_exchange}");
            assert_eq!(names(&dir), ["a", "b"]);
            assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "new");
        }
    }

    #[test]
    fn failure_leaves_the_old_set_untouched() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        write_set(out, &[("a", "old")], false);
        let s = OutputSet::begin(out, "t").unwrap();
        fs::write(s.dir().join("a"), "partial").unwrap();
        let staging = s.dir().to_path_buf();
        drop(s);
        assert!(!staging.exists());
        assert_eq!(names(out), ["t"]);
        assert_eq!(fs::read_to_string(out.join("t/a")).unwrap(), "old");
    }

    #[test]
    fn leftovers_are_removed_and_others_kept() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        write_set(out, &[("a", "old")], false);
        let hex = "0123456789abcdef";
        for n in [
            format!(".t.new-{hex}"),
            format!(".t.old-{hex}"),
            // Not leftovers of profile `t`.
            format!(".t.new-{hex}x"),
            ".t.new-x".to_string(),
            format!(".u.new-{hex}"),
            format!(".t.new-{hex}.new-{hex}"),
        ] {
            fs::create_dir(out.join(&n)).unwrap();
            fs::write(out.join(&n).join("f"), "x").unwrap();
        }
        fs::write(out.join(format!(".t.new-{}", "f".repeat(16))), "file").unwrap();
        let s = OutputSet::begin(out, "t").unwrap();
        let staging = s.dir().file_name().unwrap().to_string_lossy().into_owned();
        let mut want = vec![
            ".t.lock".to_string(),
            format!(".t.new-{hex}.new-{hex}"),
            format!(".t.new-{hex}x"),
            ".t.new-x".to_string(),
            format!(".u.new-{hex}"),
            "t".to_string(),
            staging,
        ];
        want.sort();
        assert_eq!(names(out), want);
        assert_eq!(fs::read_to_string(out.join("t/a")).unwrap(), "old");
        drop(s);
    }

    #[test]
    fn an_old_set_left_aside_is_put_back() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        let hex = "00000000000000aa";
        let old = out.join(format!(".t.old-{hex}"));
        let new = out.join(format!(".t.new-{hex}"));
        for (dir, c) in [(&old, "old"), (&new, "new")] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join("a"), c).unwrap();
        }
        drop(OutputSet::begin(out, "t").unwrap());
        assert_eq!(names(out), ["t"]);
        assert_eq!(fs::read_to_string(out.join("t/a")).unwrap(), "old");
    }

    #[test]
    fn a_second_build_of_the_profile_is_refused_while_one_runs() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        let s = OutputSet::begin(out, "t").unwrap();
        let e = OutputSet::begin(out, "t").err().unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("another edgeimage build of profile t") && msg.contains(".t.lock"),
            "{msg}"
        );
        // Another profile is not held up.
        drop(OutputSet::begin(out, "u").unwrap());
        drop(s);
        drop(OutputSet::begin(out, "t").unwrap());
        assert!(names(out).is_empty(), "{:?}", names(out));
    }

    #[test]
    fn a_file_in_the_sets_place_is_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("t"), "x").unwrap();
        let e = OutputSet::begin(d.path(), "t").err().unwrap();
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
        assert_eq!(names(d.path()), ["t"]);
        fs::remove_file(d.path().join("t")).unwrap();
        let s = OutputSet::begin(d.path(), "t").unwrap();
        fs::write(d.path().join("t"), "x").unwrap();
        let e = s.commit().unwrap_err();
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
        assert_eq!(names(d.path()), ["t"]);
    }

    #[test]
    fn names_and_directories_are_checked() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", ".t", "a/b"] {
            assert!(OutputSet::begin(d.path(), bad).is_err(), "{bad:?}");
        }
        let e = OutputSet::begin(Path::new("/proc/edgeimage-out"), "t")
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("/proc/edgeimage-out") && msg.contains("--out"),
            "{msg}"
        );
    }
}
