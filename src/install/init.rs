//! Being `/init`: what the installer needs from a bare kernel, with nothing else in the
//! initramfs (no shell, no udev, no modprobe).

use std::ffi::CString;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::config::Action;

/// Mount proc, sysfs, devtmpfs, and tmpfs on /run and /tmp (creating the directories).
/// Returns what could not be done (the caller prints it; the install may still work).
pub fn mount_basics() -> Vec<String> {
    let mut problems = Vec::new();
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/run"),
        ("tmpfs", "/tmp"),
    ] {
        let _ = fs::create_dir_all(target);
        let (Ok(src), Ok(dst), Ok(ty)) = (
            CString::new(fstype),
            CString::new(target),
            CString::new(fstype),
        ) else {
            continue;
        };
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                ty.as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                problems.push(format!("mounting {fstype} on {target}: {e}"));
            }
        }
    }
    problems
}

/// Load kernel modules (`<dir>/<file>`, in order) with `finit_module`. Already loaded (or
/// built in) is fine. Returns one line per module that failed.
pub fn load_modules(dir: &Path, files: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let empty = c"";
    for name in files {
        let path = dir.join(name);
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("module {}: {e}", path.display()));
                continue;
            }
        };
        // SAFETY: finit_module reads the module from the open descriptor; the parameter
        // string is a valid empty C string.
        let r = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                f.as_raw_fd(),
                empty.as_ptr(),
                0 as libc::c_int,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                problems.push(format!("loading module {name}: {e}"));
            }
        }
    }
    problems
}

/// Facts about the host from DMI (`/sys/class/dmi/id`), for the install record.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Host {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub board_serial: Option<String>,
}

/// Read the host's DMI identity under `root` (`/` normally).
pub fn host(root: &Path) -> Host {
    let read = |f: &str| -> Option<String> {
        let v = fs::read_to_string(root.join("sys/class/dmi/id").join(f)).ok()?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    };
    Host {
        vendor: read("sys_vendor"),
        product: read("product_name"),
        serial: read("product_serial"),
        uuid: read("product_uuid"),
        board_serial: read("board_serial"),
    }
}

/// End the installer as `action` says. Never returns: after a reboot or power-off request the
/// kernel takes over; `Halt` (or a refused request) waits forever, so the verdict stays on the
/// screen and PID 1 never exits.
pub fn finish(action: Action) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let cmd = match action {
        Action::Reboot => Some(libc::RB_AUTOBOOT),
        Action::Poweroff => Some(libc::RB_POWER_OFF),
        Action::Halt => None,
    };
    if let Some(c) = cmd {
        // SAFETY: reboot(2) with a valid command; only returns on failure.
        unsafe { libc::reboot(c) };
        eprintln!(
            "edgeimage install: the {action:?} request failed: {}; switch the machine off",
            std::io::Error::last_os_error()
        );
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
