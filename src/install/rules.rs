//! Which disk the installer writes: the profile's rules applied to the disks sysfs shows.
//!
//! Every rule given must hold; the installer stick itself is never a candidate; exactly one
//! disk may match. Anything else is a refusal that lists the disks seen and why each was or
//! was not a candidate, so the rule can be fixed from the console's text alone.

use crate::flash::devices::{Disk, Transport};
use crate::progress::human_bytes;

use super::config::DiskRules;

/// Why a disk is not a candidate, or `None` when it is one.
pub fn mismatch(rules: &DiskRules, d: &Disk) -> Option<String> {
    let t = d.transport.name();
    if rules.transports.is_empty() {
        if matches!(d.transport, Transport::Usb | Transport::Loop) {
            return Some(format!(
                "transport {t} (USB and loop devices only when install.disk.transports names them)"
            ));
        }
    } else if !rules.transports.iter().any(|x| x == t) {
        return Some(format!(
            "transport {t} is not one of {}",
            rules.transports.join(", ")
        ));
    }
    if let Some(min) = rules.min_size {
        if d.size < min {
            return Some(format!(
                "{} is smaller than min_size {}",
                human_bytes(d.size),
                human_bytes(min)
            ));
        }
    }
    if let Some(max) = rules.max_size {
        if d.size > max {
            return Some(format!(
                "{} is larger than max_size {}",
                human_bytes(d.size),
                human_bytes(max)
            ));
        }
    }
    if let Some(pat) = &rules.model {
        let model = d.model.as_deref().unwrap_or("");
        if !glob(pat, model) {
            return Some(format!("model {model:?} does not match {pat:?}"));
        }
    }
    if !rules.serials.is_empty() {
        let s = d.serial.as_deref().unwrap_or("");
        if !rules.serials.iter().any(|x| x == s) {
            return Some(format!("serial {s:?} is not in serials"));
        }
    }
    if let Some(want) = &rules.by_id {
        let name = want.rsplit('/').next().unwrap_or(want);
        let hit = d
            .by_id
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name));
        if !hit {
            return Some(format!("no /dev/disk/by-id/{name} link points at it"));
        }
    }
    if d.read_only {
        return Some("it is read-only".into());
    }
    None
}

/// The one disk matching `rules` among `disks`, the disk named `stick` excluded; else a
/// refusal listing every disk and why it is or is not a candidate.
pub fn select<'a>(
    rules: &DiskRules,
    disks: &'a [Disk],
    stick: Option<&str>,
) -> Result<&'a Disk, String> {
    let mut lines = Vec::new();
    let mut hits = Vec::new();
    for d in disks {
        let why = if Some(d.name.as_str()) == stick {
            Some("the installer stick itself".to_string())
        } else {
            mismatch(rules, d)
        };
        lines.push(format!(
            "  {} ({} {}, serial {}, {}): {}",
            d.path.display(),
            d.transport.name(),
            d.model.as_deref().unwrap_or("-"),
            d.serial.as_deref().unwrap_or("-"),
            human_bytes(d.size),
            why.as_deref().unwrap_or("MATCHES")
        ));
        if why.is_none() {
            hits.push(d);
        }
    }
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no disk matches the install rules ({}); disks seen:\n{}",
            describe(rules),
            if lines.is_empty() {
                "  (none)".to_string()
            } else {
                lines.join("\n")
            }
        )),
        many => Err(format!(
            "{} disks match the install rules ({}), so none is chosen: narrow install.disk (serials or by_id); disks seen:\n{}",
            many.len(),
            describe(rules),
            lines.join("\n")
        )),
    }
}

/// The rules in one line.
pub fn describe(r: &DiskRules) -> String {
    let mut parts = Vec::new();
    if r.transports.is_empty() {
        parts.push("any transport but usb and loop".to_string());
    } else {
        parts.push(format!("transport {}", r.transports.join("|")));
    }
    if let Some(m) = r.min_size {
        parts.push(format!("at least {}", human_bytes(m)));
    }
    if let Some(m) = r.max_size {
        parts.push(format!("at most {}", human_bytes(m)));
    }
    if let Some(m) = &r.model {
        parts.push(format!("model {m:?}"));
    }
    if !r.serials.is_empty() {
        parts.push(format!("serial in [{}]", r.serials.join(", ")));
    }
    if let Some(b) = &r.by_id {
        parts.push(format!("by-id {b}"));
    }
    parts.join(", ")
}

/// Shell-style match: `*` any run, `?` one character, everything else literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last star.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn disk(name: &str, t: Transport, size: u64, model: &str, serial: &str) -> Disk {
        Disk {
            path: PathBuf::from(format!("/dev/{name}")),
            name: name.into(),
            dev: "8:0".into(),
            by_id: vec![PathBuf::from(format!("/dev/disk/by-id/x-{serial}"))],
            model: Some(model.into()),
            serial: Some(serial.into()),
            size,
            logical_block_size: 512,
            transport: t,
            removable: false,
            read_only: false,
            partitions: vec![],
            mounted: vec![],
            swap: vec![],
            holders: vec![],
            system: false,
            backing_file: None,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn globs() {
        assert!(glob("Samsung*", "Samsung SSD 980"));
        assert!(glob("*SSD*", "Samsung SSD 980"));
        assert!(glob("QEMU HARDDISK", "QEMU HARDDISK"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*", ""));
        assert!(!glob("x*", ""));
        assert!(glob("*a*b*c", "xxaxxbxxc"));
        assert!(!glob("*a*b*c", "xxaxxcxxb"));
    }

    #[test]
    fn exactly_one_match_is_chosen_and_the_stick_never() {
        let disks = vec![
            disk("sda", Transport::Usb, 16 * GIB, "Ultra", "STICK1"),
            disk("vda", Transport::Virtio, 64 * GIB, "", "VD1"),
            disk(
                "nvme0n1",
                Transport::Nvme,
                512 * GIB,
                "Samsung SSD 980",
                "S1",
            ),
        ];
        let rules = DiskRules {
            transports: vec!["virtio".into(), "usb".into()],
            ..Default::default()
        };
        assert_eq!(select(&rules, &disks, Some("sda")).unwrap().name, "vda");
        // Without naming usb, USB disks are never candidates.
        let any = DiskRules::default();
        let e = select(&any, &disks, None).unwrap_err();
        assert!(e.starts_with("2 disks match"), "{e}");
        assert!(
            e.contains("/dev/sda (usb Ultra, serial STICK1, 16.0 GiB): transport usb"),
            "{e}"
        );
        assert!(e.contains("narrow install.disk"), "{e}");
        let small = DiskRules {
            max_size: Some(100 * GIB),
            ..Default::default()
        };
        assert_eq!(select(&small, &disks, None).unwrap().name, "vda");
        let model = DiskRules {
            model: Some("Samsung*".into()),
            ..Default::default()
        };
        assert_eq!(select(&model, &disks, None).unwrap().name, "nvme0n1");
        let by_id = DiskRules {
            by_id: Some("/dev/disk/by-id/x-S1".into()),
            ..Default::default()
        };
        assert_eq!(select(&by_id, &disks, None).unwrap().name, "nvme0n1");
        let serial = DiskRules {
            serials: vec!["VD1".into()],
            ..Default::default()
        };
        assert_eq!(select(&serial, &disks, None).unwrap().name, "vda");
    }

    #[test]
    fn no_match_lists_every_disk_and_why() {
        let disks = vec![
            disk("sda", Transport::Usb, 16 * GIB, "Ultra", "STICK1"),
            disk("vda", Transport::Virtio, 8 * GIB, "", "VD1"),
        ];
        let rules = DiskRules {
            transports: vec!["virtio".into()],
            min_size: Some(32 * GIB),
            ..Default::default()
        };
        let e = select(&rules, &disks, Some("sda")).unwrap_err();
        assert!(
            e.starts_with(
                "no disk matches the install rules (transport virtio, at least 32.0 GiB)"
            ),
            "{e}"
        );
        assert!(
            e.contains("/dev/sda (usb Ultra, serial STICK1, 16.0 GiB): the installer stick itself"),
            "{e}"
        );
        assert!(
            e.contains("8.0 GiB is smaller than min_size 32.0 GiB"),
            "{e}"
        );
        let e = select(&rules, &[], None).unwrap_err();
        assert!(e.contains("(none)"), "{e}");
    }
}
