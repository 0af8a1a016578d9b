//! Running the binary as a hostile input would have it run: under a watchdog (a regression
//! fails the test instead of hanging it), with `TMPDIR` a fresh directory, measuring its time,
//! its peak memory and the temporary space it held.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bin;

const MIB: u64 = 1 << 20;

/// What a watched run of the binary did.
pub struct Ran {
    /// The exit code; `None` when a signal ended the binary.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The child's peak resident memory, MiB.
    pub peak_rss_mib: u64,
    /// The most space files under the child's `TMPDIR` held while it ran (open files,
    /// unlinked ones included), MiB.
    pub peak_tmp_mib: u64,
    /// What is left under `TMPDIR` after it ended, bytes.
    pub tmp_left: u64,
}

impl Ran {
    /// A refusal: a non-zero exit that is not a panic's (101), no panic message, every one of
    /// `words` in the output (stdout and stderr).
    pub fn refused(&self, words: &[&str]) -> &Self {
        assert!(
            self.code.is_some_and(|c| c != 0 && c != 101),
            "expected a refusal, got {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        let all = format!("{}{}", self.stdout, self.stderr);
        for w in words {
            assert!(all.contains(w), "no {w:?} in: {all}");
        }
        self
    }

    /// A refusal (see [`Ran::refused`]) with exit code `code`.
    pub fn refused_with_code(&self, code: i32, words: &[&str]) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self.refused(words)
    }

    /// Neither stdout nor stderr contains `secret`.
    pub fn never_shows(&self, secret: &str) -> &Self {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "the output shows {secret:?}: {}{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Peak memory below `max_rss_mib`; the space held under `TMPDIR` while it ran, and what
    /// it left there, below `max_tmp_mib`.
    pub fn bounded(&self, max_rss_mib: u64, max_tmp_mib: u64) -> &Self {
        assert!(
            self.peak_rss_mib < max_rss_mib,
            "peak memory {} MiB\n{}",
            self.peak_rss_mib,
            self.stderr
        );
        assert!(
            self.peak_tmp_mib < max_tmp_mib,
            "held {} MiB in TMPDIR",
            self.peak_tmp_mib
        );
        assert!(
            self.tmp_left < max_tmp_mib * MIB,
            "left {} bytes in TMPDIR",
            self.tmp_left
        );
        self
    }

    /// Print `what` with the time, peak memory and peak `TMPDIR` of the run.
    pub fn report(&self, what: &str) -> &Self {
        eprintln!(
            "{what}: {:.2} s, peak memory {} MiB, peak TMPDIR {} MiB",
            self.elapsed.as_secs_f64(),
            self.peak_rss_mib,
            self.peak_tmp_mib
        );
        self
    }
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes of storage held by the files `pid` has open below `dir` (unlinked ones too).
fn open_tmp_bytes(pid: i32, dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut total = 0;
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if !target.starts_with(dir) {
            continue;
        }
        if let Ok(m) = fs::metadata(fd.path()) {
            if m.is_file() {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += tree_bytes(&e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// The first child of `pid`, if it has one.
fn child_of(pid: i32) -> Option<i32> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    list.split_whitespace().next()?.parse().ok()
}

/// All that `r` gives, read on a thread of its own (so that neither pipe fills and blocks the
/// child).
fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Run `edgeimage args` with `envs`, `TMPDIR` a fresh directory (whatever `envs` say) and
/// stdin empty, watching its memory and temporary space; killed, and the test failed, if it
/// runs past `limit`.
///
/// The peak memory is GNU time's `%M` when `/usr/bin/time` is there: it forks the binary from
/// its own small process, so the count starts from nothing. (`wait4` from here would report
/// at least this test process's own peak: a child spawned sharing our memory until `exec`
/// inherits it.) Without it, `VmHWM` is polled every 5 ms, and `wait4`'s peak is taken only
/// when it is above ours, where it can only be the child's.
pub fn run(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let tmpdir = tmp.path().canonicalize().unwrap();
    let report = tempfile::NamedTempFile::new().unwrap();
    let gnu_time = Path::new("/usr/bin/time");
    let timed = gnu_time.exists();
    let mut cmd = if timed {
        let mut c = Command::new(gnu_time);
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(report.path())
            .arg(bin());
        c
    } else {
        Command::new(bin())
    };
    let start = Instant::now();
    // Reaped below with `wait4`, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .args(args)
        .envs(envs.iter().copied())
        .env("TMPDIR", &tmpdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let pid = child.id() as i32;
    let mut hwm_kib = 0;
    let mut tmp_peak = 0;
    let mut killed = false;
    let mut status = 0;
    // SAFETY: a plain struct filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let target = if timed { child_of(pid) } else { Some(pid) };
        if let Some(t) = target {
            if let Some(k) = status_kib(t, "VmHWM:") {
                hwm_kib = hwm_kib.max(k);
            }
            tmp_peak = tmp_peak.max(open_tmp_bytes(t, &tmpdir));
        }
        // SAFETY: waits for our own child, without blocking; `status`, `usage` are writable.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > limit && !killed {
            // SAFETY: neither has been reaped by us, so the pids are still theirs.
            unsafe {
                if let Some(t) = target.filter(|&t| t != pid) {
                    libc::kill(t, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        !killed,
        "edgeimage {args:?} ran past {limit:?} (killed)\nstderr: {stderr}"
    );
    let mut code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    if timed {
        // GNU time writes "Command exited with non-zero status N" first when it did, and
        // "Command terminated by signal N" when a signal ended the binary (it then exits
        // 128 + N, which is no exit code of ours).
        let text = fs::read_to_string(report.path()).unwrap();
        if text.starts_with("Command terminated by signal") {
            code = None;
        }
        let kib: u64 = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("GNU time said {text:?}"));
        hwm_kib = hwm_kib.max(kib);
    } else {
        let ours = status_kib(std::process::id() as i32, "VmHWM:").unwrap_or(u64::MAX);
        let max_rss = usage.ru_maxrss as u64;
        if max_rss > ours {
            hwm_kib = hwm_kib.max(max_rss);
        }
    }
    Ran {
        code,
        stdout,
        stderr,
        elapsed,
        peak_rss_mib: hwm_kib / 1024,
        peak_tmp_mib: tmp_peak / MIB,
        tmp_left: tree_bytes(&tmpdir),
    }
}
