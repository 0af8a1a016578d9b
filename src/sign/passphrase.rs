//! Where a secret key's passphrase comes from: an environment variable or the terminal. Never
//! the command line, where other users could read it (`/proc/<pid>/cmdline`).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use zeroize::Zeroizing;

/// Longest passphrase minisign can read back: `get_line` reads it with
/// `fgets(pwd, PASSWORDMAXBYTES)` (1024, i.e. 1023 bytes including the `\n`; `src/get_line.c`,
/// `src/minisign.h`).
pub const MAX_PASSPHRASE: usize = 1022;

const NO_TTY: &str =
    "no terminal to ask for the passphrase: name an environment variable with --passphrase-env VAR";

/// Where to get a passphrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// The environment variable of this name.
    Env(String),
    /// Ask on the controlling terminal (`/dev/tty`), without echo.
    Prompt,
}

impl PassphraseSource {
    /// The variable named by a `--passphrase-env`-style option, else the terminal.
    pub fn env_or_prompt(var: Option<String>) -> PassphraseSource {
        var.map_or(PassphraseSource::Prompt, PassphraseSource::Env)
    }
}

/// Get a passphrase for `what` (e.g. "secret key edge.key"). With `confirm` (a new key) it is
/// asked twice on the terminal, and it must be one minisign can read back (see
/// [`check_new_passphrase`]). Without `confirm` (decrypting a key) an empty answer on the
/// terminal is returned as it is, since minisign lets a key have an empty passphrase; an empty
/// environment variable is always an error.
pub fn read_passphrase(
    src: &PassphraseSource,
    what: &str,
    confirm: bool,
) -> Result<Zeroizing<Vec<u8>>> {
    let pw = match src {
        PassphraseSource::Env(var) => from_env(var)?,
        PassphraseSource::Prompt => prompt_on(Path::new("/dev/tty"), what, confirm)?,
    };
    if confirm {
        check_new_passphrase(&pw)?;
    }
    Ok(pw)
}

/// A passphrase for a new key must be non-empty, at most [`MAX_PASSPHRASE`] bytes and free of
/// CR, LF and NUL: minisign reads passphrases as one line of a C string (`get_line`,
/// `src/get_line.c`), so it could not decrypt the key otherwise.
pub fn check_new_passphrase(pw: &[u8]) -> Result<()> {
    if pw.is_empty() {
        bail!("the passphrase is empty: choose a passphrase");
    }
    if pw.len() > MAX_PASSPHRASE {
        bail!(
            "the passphrase is {} bytes long; minisign reads at most {MAX_PASSPHRASE}: choose a \
             shorter one",
            pw.len()
        );
    }
    if pw.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        bail!(
            "the passphrase contains a line break or a NUL byte, which minisign cannot read: \
             choose another"
        );
    }
    Ok(())
}

fn from_env(var: &str) -> Result<Zeroizing<Vec<u8>>> {
    // `var_os` panics on these names.
    if var.is_empty() || var.contains(['=', '\0']) {
        bail!(
            "{var:?} is not a valid environment variable name: name the variable that holds the \
             passphrase"
        );
    }
    env_value(var, std::env::var_os(OsStr::new(var)))
}

fn env_value(var: &str, value: Option<OsString>) -> Result<Zeroizing<Vec<u8>>> {
    match value {
        None => bail!(
            "environment variable {var} is not set: put the passphrase in it, or name another \
             variable"
        ),
        Some(v) if v.is_empty() => {
            bail!("environment variable {var} is empty: put the passphrase in it")
        }
        Some(v) => Ok(Zeroizing::new(v.into_vec())),
    }
}

/// Restores the terminal's attributes when dropped, also on error.
struct EchoOff<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a File) -> std::io::Result<EchoOff<'a>> {
        let fd = tty.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is an open descriptor owned by `tty`; `saved` is a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ICANON;
        // TCSAFLUSH (as minisign's `disable_echo`): input typed before the prompt is dropped.
        // SAFETY: as above.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // SAFETY: the descriptor is still open (`tty` outlives the guard).
        unsafe {
            libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved);
        }
    }
}

/// Ask on the terminal at `tty_path` (`/dev/tty` outside tests).
pub(crate) fn prompt_on(tty_path: &Path, what: &str, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(tty_path)
        .map_err(|e| anyhow!(e).context(NO_TTY))?;
    let first = ask(&tty, &format!("Passphrase for {what}: "))?;
    if !confirm {
        return Ok(first);
    }
    if first.is_empty() {
        bail!("the passphrase is empty: choose a passphrase");
    }
    let second = ask(&tty, &format!("Passphrase for {what} (again): "))?;
    if *first != *second {
        bail!("the two passphrases differ: nothing was written; run again");
    }
    Ok(first)
}

/// Show `prompt` and read one line with echo off.
fn ask(tty: &File, prompt: &str) -> Result<Zeroizing<Vec<u8>>> {
    let ctx = "asking for the passphrase on the terminal";
    let guard = EchoOff::new(tty).map_err(|e| anyhow!(e).context(NO_TTY))?;
    let mut out = tty;
    out.write_all(prompt.as_bytes()).context(ctx)?;
    out.flush().context(ctx)?;
    // Byte by byte from the terminal (canonical mode delivers whole lines anyway), into a buffer
    // whose capacity never changes, so no copy of the passphrase is left behind.
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE + 2));
    let mut too_long = false;
    let mut got_newline = false;
    let mut byte = Zeroizing::new([0u8; 1]);
    let mut input = tty;
    loop {
        match input.read(&mut byte[..]) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => {
                got_newline = true;
                break;
            }
            Ok(_) => {
                if line.len() < line.capacity() {
                    line.push(byte[0]);
                } else {
                    too_long = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow!(e).context(ctx)),
        }
    }
    drop(guard);
    // The Enter key was not echoed.
    let _ = out.write_all(b"\n");
    if !got_newline && line.is_empty() {
        bail!("no passphrase was entered (end of input)");
    }
    if too_long {
        bail!("the passphrase is longer than {MAX_PASSPHRASE} bytes: choose a shorter one");
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::os::unix::io::FromRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn env_source() {
        // Reading the environment only: setting variables races with other test threads.
        let e = read_passphrase(
            &PassphraseSource::Env("EDGEIMAGE_TEST_PASSPHRASE_UNSET".into()),
            "k",
            false,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("environment variable EDGEIMAGE_TEST_PASSPHRASE_UNSET is not set"),
            "{e:#}"
        );
        let e = read_passphrase(&PassphraseSource::Env("A=B".into()), "k", false).unwrap_err();
        assert!(
            format!("{e:#}").contains("not a valid environment variable name"),
            "{e:#}"
        );
        if std::env::var_os("PATH").is_some_and(|p| !p.is_empty()) {
            assert!(read_passphrase(&PassphraseSource::Env("PATH".into()), "k", false).is_ok());
        }

        let pw = env_value("V", Some("correct horse".into())).unwrap();
        assert_eq!(&pw[..], b"correct horse");
        let e = env_value("EDGE_PW", Some("".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("environment variable EDGE_PW is empty"),
            "{e}"
        );
    }

    #[test]
    fn new_passphrase_rules() {
        assert!(check_new_passphrase(b"fine").is_ok());
        let e = check_new_passphrase(b"").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = check_new_passphrase(b"a\nb").unwrap_err();
        assert!(e.to_string().contains("line break"), "{e}");
    }

    #[test]
    fn no_terminal_names_the_alternative() {
        let e = prompt_on(Path::new("/nonexistent/tty"), "k", false).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(
                "no terminal to ask for the passphrase: name an environment variable with \
                 --passphrase-env VAR"
            ),
            "{msg}"
        );
    }

    /// A pseudo-terminal: (master, slave path).
    fn open_pty() -> Option<(File, std::path::PathBuf)> {
        // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes into `buf`.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            if m < 0 {
                return None;
            }
            let master = File::from_raw_fd(m);
            if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
                return None;
            }
            let mut buf = [0 as libc::c_char; 128];
            if libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()) != 0 {
                return None;
            }
            let path = CStr::from_ptr(buf.as_ptr()).to_str().ok()?.to_string();
            Some((master, path.into()))
        }
    }

    fn echo_on(f: &File) -> bool {
        // SAFETY: as in EchoOff::new.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
            t.c_lflag & libc::ECHO != 0
        }
    }

    /// Drive `prompt_on` through a pseudo-terminal, answering each prompt with the next line.
    fn converse(confirm: bool, answers: &[&'static str]) -> Option<(Result<Vec<u8>>, String)> {
        let Some((master, slave)) = open_pty() else {
            eprintln!("note: no pseudo-terminal available; terminal prompt test skipped");
            return None;
        };
        // Kept open so the terminal's attributes can be checked afterwards.
        let keep = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave)
            .unwrap();
        assert!(echo_on(&keep));
        let path = slave.clone();
        let worker =
            std::thread::spawn(move || prompt_on(&path, "test key", confirm).map(|z| z.to_vec()));
        let mut seen = String::new();
        let mut sent = 0;
        let start = Instant::now();
        let read_some = |seen: &mut String, wait_ms: i32| {
            let mut pfd = libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, wait_ms) } > 0 {
                let mut buf = [0u8; 256];
                if let Ok(n) = (&master).read(&mut buf) {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    return n > 0;
                }
            }
            false
        };
        while !worker.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "prompt stuck: {seen:?}"
            );
            read_some(&mut seen, 50);
            if sent < answers.len() && seen.matches("Passphrase").count() > sent {
                let mut m = &master;
                m.write_all(answers[sent].as_bytes()).unwrap();
                sent += 1;
            }
        }
        // Whatever the terminal still has to say (an echo would show here).
        while read_some(&mut seen, 200) {}
        let result = worker.join().unwrap();
        assert!(echo_on(&keep), "echo must be restored");
        Some((result, seen))
    }

    #[test]
    fn terminal_prompt_without_echo() {
        let Some((pw, seen)) = converse(true, &["hunter22\n", "hunter22\n"]) else {
            return;
        };
        assert_eq!(pw.unwrap(), b"hunter22");
        assert!(seen.contains("Passphrase for test key: "), "{seen:?}");
        assert!(
            seen.contains("Passphrase for test key (again): "),
            "{seen:?}"
        );
        assert!(!seen.contains("hunter22"), "echoed: {seen:?}");

        let Some((pw, _)) = converse(true, &["one\n", "two\n"]) else {
            return;
        };
        let e = pw.unwrap_err();
        assert!(e.to_string().contains("the two passphrases differ"), "{e}");

        let Some((pw, _)) = converse(false, &["single\r\n"]) else {
            return;
        };
        assert_eq!(pw.unwrap(), b"single");
    }
}
