//! The output set `DIR/<name>/` is replaced as a whole: a build killed at any instant leaves
//! either the whole old set or the whole new set, each of which verifies; the next build
//! removes what the killed one left. Two sets of the small fixture differ by
//! `SOURCE_DATE_EPOCH` (A: 1700000000, B: 1800000000); each kill interrupts a build of the set
//! that is not in place, so every kill tests a real replacement.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EPOCH_A: &str = "1700000000";
const EPOCH_B: &str = "1800000000";
/// Every file of a signed build's set.
const SET_FILES: [&str; 4] = [
    "t.bmap",
    "t.manifest.json",
    "t.manifest.json.minisig",
    "t.raw.zst",
];

/// The files of a set, by name.
type Files = BTreeMap<String, Vec<u8>>;

struct Scene {
    f: Fixture,
    key: Key,
    trust: PathBuf,
    /// The output directory under test.
    out: PathBuf,
    /// Reference copies of set A and set B.
    a: Files,
    b: Files,
    /// How long one build that replaces a set takes (the median of three).
    took: Duration,
}

fn read_set(dir: &Path) -> Files {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

impl Scene {
    fn new() -> Scene {
        let f = small_fixture("");
        let key = new_key(&f.dir.path().join("keys"), "release");
        let trust = f.dir.path().join("trust");
        fs::create_dir_all(trust.join("trusted")).unwrap();
        fs::copy(&key.public, trust.join("trusted/release.pub")).unwrap();
        let out = f.dir.path().join("out");
        let mut s = Scene {
            f,
            key,
            trust,
            out,
            a: Files::new(),
            b: Files::new(),
            took: Duration::ZERO,
        };
        let o = s.command(EPOCH_A, &s.out).output().unwrap();
        assert!(o.status.success(), "build A: {}", stderr(&o));
        s.a = read_set(&set_dir(&s.out));
        // Set B, built over set A elsewhere three times (B, A, B): its files and the time a
        // replacing build takes.
        let other = s.f.dir.path().join("out-b");
        fs::create_dir_all(&other).unwrap();
        fs::rename(set_dir(&s.out), set_dir(&other)).unwrap();
        let o = s.command(EPOCH_A, &s.out).output().unwrap();
        assert!(o.status.success(), "build A: {}", stderr(&o));
        let mut times = Vec::new();
        for epoch in [EPOCH_B, EPOCH_A, EPOCH_B] {
            let t = Instant::now();
            let o = s.command(epoch, &other).output().unwrap();
            assert!(o.status.success(), "build: {}", stderr(&o));
            times.push(t.elapsed());
        }
        times.sort();
        s.took = times[1];
        s.b = read_set(&set_dir(&other));
        let want: Vec<&str> = SET_FILES.to_vec();
        assert_eq!(s.a.keys().collect::<Vec<_>>(), want);
        assert_eq!(s.b.keys().collect::<Vec<_>>(), want);
        assert_ne!(s.a["t.manifest.json"], s.b["t.manifest.json"]);
        s
    }

    /// `edgeimage build -q` of the fixture, signed, with `epoch`, into `out`.
    fn command(&self, epoch: &str, out: &Path) -> Command {
        let mut c = Command::new(bin());
        c.args([
            "build",
            "-q",
            "--profile",
            s(&self.f.profile),
            "--out",
            s(out),
        ])
        .args(["--sign-key", s(&self.key.secret)])
        .env("SOURCE_DATE_EPOCH", epoch)
        .env_remove(edgeimage::artifact::set::STOP_ENV)
        .env_remove(edgeimage::artifact::set::NO_EXCHANGE_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c
    }

    /// Which set is in place: `'A'` or `'B'`. Checks that `out/t/` holds exactly that set's
    /// files, byte for byte, that it verifies, and that `out` holds nothing but the set and a
    /// killed build's leftovers.
    fn check(&self, verify: bool) -> char {
        let set = set_dir(&self.out);
        assert!(
            set.is_dir(),
            "{} is missing: {:?}",
            set.display(),
            names(&self.out)
        );
        let got = read_set(&set);
        let which = if got == self.a {
            'A'
        } else if got == self.b {
            'B'
        } else {
            let m = got.get("t.manifest.json");
            panic!(
                "{} is neither set A nor set B: files {:?}, manifest is A's: {}, B's: {}",
                set.display(),
                got.keys().collect::<Vec<_>>(),
                m == self.a.get("t.manifest.json"),
                m == self.b.get("t.manifest.json"),
            );
        };
        for n in names(&self.out) {
            let leftover = n == ".t.lock"
                || n.strip_prefix(".t.new-")
                    .or_else(|| n.strip_prefix(".t.old-"))
                    .is_some_and(|h| h.len() == 16);
            assert!(
                n == "t" || leftover,
                "unexpected entry {n} in the output directory"
            );
        }
        if verify {
            verify_with(&self.trust, &set.join("t.raw.zst"), &[]).expect(0, "VERIFIED");
        }
        which
    }

    /// A build of the set that is not in place (`current`), stopped at `step` of the commit
    /// (`EDGEIMAGE_TEST_STOP_AT`), with or without `RENAME_EXCHANGE`.
    fn stopped(&self, current: char, step: &str, no_exchange: bool) -> ExitStatus {
        let mut c = self.command(if current == 'A' { EPOCH_B } else { EPOCH_A }, &self.out);
        c.env(edgeimage::artifact::set::STOP_ENV, step);
        if no_exchange {
            c.env(edgeimage::artifact::set::NO_EXCHANGE_ENV, "1");
        }
        let o = c.output().unwrap();
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{step}: the build should have killed itself: {:?} {}",
            o.status,
            stderr(&o)
        );
        o.status
    }

    /// The entries of `out` starting with `prefix`.
    fn hidden(&self, prefix: &str) -> Vec<PathBuf> {
        names(&self.out)
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| self.out.join(n))
            .collect()
    }
}

/// A small deterministic generator for the kill times' jitter (xorshift64*).
struct Jitter(u64);

impl Jitter {
    /// A number in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_build_killed_at_any_time_leaves_the_old_or_the_new_set_whole() {
    let started = Instant::now();
    let sc = Scene::new();
    let t = sc.took;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("one build takes {t:?}; jitter seed {seed}");
    let mut t = t;
    let mut jitter = Jitter(seed);
    const KILLS: usize = 30;
    let mut current = sc.check(false);
    assert_eq!(current, 'A');
    let (mut kept, mut replaced, mut finished) = (0, 0, 0);
    let mut i = 0;
    // A build that ends before its kill is no kill: the time is tried again, against the
    // shorter duration it showed.
    while i < KILLS && i + finished < 2 * KILLS {
        // Spread evenly over the build's duration with jitter; the last ones just before
        // its end (97-100 %), where the swap happens.
        let frac = if i + 4 >= KILLS {
            0.97 + 0.03 * jitter.next()
        } else {
            (i as f64 + jitter.next()) / (KILLS - 4) as f64
        };
        let at = t.mul_f64(frac);
        let epoch = if current == 'A' { EPOCH_B } else { EPOCH_A };
        let mut child = sc.command(epoch, &sc.out).spawn().unwrap();
        let spawned = Instant::now();
        std::thread::sleep(at);
        let done = child.try_wait().unwrap();
        if done.is_none() {
            child.kill().unwrap();
        }
        let status = child.wait().unwrap();
        let lived = spawned.elapsed();
        let was = current;
        current = sc.check(true);
        assert!(
            status.success() || status.signal() == Some(9),
            "the build failed by itself: {status:?}"
        );
        eprintln!(
            "kill {i:2} at {:5.1} % of {t:?} (lived {lived:?}): {status:?}, set {was} -> {current}",
            frac * 100.0
        );
        match (status.success(), current == was) {
            (true, _) => {
                assert_ne!(current, was, "a finished build must leave its own set");
                finished += 1;
                t = t.min(lived);
                continue;
            }
            (false, true) => kept += 1,
            (false, false) => replaced += 1,
        }
        i += 1;
    }
    eprintln!(
        "{i} kills: old set kept {kept}, new set in place {replaced}; {finished} builds finished before their kill"
    );
    assert_eq!(i, KILLS, "too many builds ended before their kill");
    // One build completes and removes every leftover.
    let epoch = if current == 'A' { EPOCH_B } else { EPOCH_A };
    let o = sc.command(epoch, &sc.out).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(sc.check(true), current);
    assert_eq!(names(&sc.out), ["t"], "leftovers after a complete build");
    eprintln!("total {:?}", started.elapsed());
}

#[test]
fn a_build_killed_at_each_step_of_the_swap_leaves_a_whole_set() {
    let sc = Scene::new();
    assert_eq!(sc.check(false), 'A');
    let prefix_new = ".t.new-";
    let prefix_old = ".t.old-";

    // Before the exchange: the old set, and a complete staging directory the next build
    // removes.
    sc.stopped('A', "before-exchange", false);
    assert_eq!(sc.check(true), 'A');
    let staged = sc.hidden(prefix_new);
    assert_eq!(staged.len(), 1, "{:?}", names(&sc.out));
    assert_eq!(read_set(&staged[0]), sc.b);

    // After the exchange, before the old set is removed: the new set; the old one at the
    // staging name. The leftover of the previous kill is gone.
    sc.stopped('A', "after-exchange", false);
    assert_eq!(sc.check(true), 'B');
    let old = sc.hidden(prefix_new);
    assert_eq!(old.len(), 1, "{:?}", names(&sc.out));
    assert_ne!(old, staged, "the earlier leftover was removed");
    assert_eq!(read_set(&old[0]), sc.a);

    // After the removal: the new set and only the lock file.
    sc.stopped('B', "after-removal", false);
    assert_eq!(sc.check(true), 'A');
    assert_eq!(names(&sc.out), [".t.lock", "t"]);

    // Without RENAME_EXCHANGE: killed between its two renames, no set is in place; both are
    // under hidden names and the next build of the profile (even one that fails) puts the old
    // set back before anything else.
    sc.stopped('A', "fallback-between", true);
    assert!(!set_dir(&sc.out).exists());
    let (aside, staged) = (sc.hidden(prefix_old), sc.hidden(prefix_new));
    assert_eq!((aside.len(), staged.len()), (1, 1), "{:?}", names(&sc.out));
    assert_eq!(read_set(&aside[0]), sc.a);
    assert_eq!(read_set(&staged[0]), sc.b);
    let o = sc
        .command(EPOCH_B, &sc.out)
        .args(["--assets", s(&sc.f.dir.path().join("no-such-assets"))])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(sc.check(true), 'A');
    assert_eq!(names(&sc.out), ["t"]);

    // The fallback's other steps leave a whole set too.
    sc.stopped('A', "before-exchange", true);
    assert_eq!(sc.check(false), 'A');
    sc.stopped('A', "after-exchange", true);
    assert_eq!(sc.check(true), 'B');
    assert_eq!(sc.hidden(prefix_old).len(), 1);
    assert_eq!(read_set(&sc.hidden(prefix_old)[0]), sc.a);

    // A complete build removes every leftover.
    let o = sc.command(EPOCH_A, &sc.out).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sc.check(false), 'A');
    assert_eq!(names(&sc.out), ["t"]);
}

#[test]
fn a_second_build_of_the_profile_into_the_same_directory_is_refused() {
    let f = small_fixture("");
    let out = f.dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let lock = fs::File::create(out.join(".t.lock")).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let o = try_build(&f, &out, &["-q"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("another edgeimage build of profile t is writing into")
            && e.contains(".t.lock")
            && e.contains("wait for it to finish"),
        "{e}"
    );
    assert!(!set_dir(&out).exists());
    drop(lock);
    let o = try_build(&f, &out, &["-q", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The report names the paths inside the set.
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let set = set_dir(&out);
    assert_eq!(r["set"], s(&set));
    assert_eq!(r["outputs"]["zst"], s(&set.join("t.raw.zst")));
    assert_eq!(r["manifest"], s(&set.join("t.manifest.json")));
    assert_eq!(r["bmap"], s(&set.join("t.bmap")));
    assert!(r["signature"].is_null());
    assert_eq!(names(&out), ["t"]);
    assert_eq!(
        names(&set),
        ["t.bmap", "t.manifest.json", "t.raw.zst"],
        "an unsigned set has no signature"
    );
}
