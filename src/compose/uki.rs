//! The Unified Kernel Image: `systemd-stub.efi` with the kernel, initramfs, command line and
//! os-release added as PE sections, the way Talos's imager (and systemd's ukify) builds it.
//!
//! Sections are added in Talos's order `.osrel`, `.cmdline`, `.uname`, `.linux`, `.initrd`,
//! then per boot profile a `.profile` section and the profile's own sections (its `.cmdline`),
//! each `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`, each at the next virtual address
//! aligned to the stub's SectionAlignment (read from the stub: Debian 12's stub uses 0x200,
//! others 0x1000) and with file data aligned to its FileAlignment. NumberOfSections,
//! SizeOfImage, SizeOfInitializedData, TimeDateStamp (`SOURCE_DATE_EPOCH`) and CheckSum are
//! updated. A certificate table on the stub is dropped: adding sections invalidates it, and
//! signing is a later step over the finished UKI. `.cmdline` has no trailing newline.

use std::io::Read;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::layout::Layout;
use crate::pe::{self, PeHeaders, Section};

/// A boot profile of a multi-profile UKI (systemd ≥ 257): the `.profile` section's text and
/// the sections that follow it, which replace the base ones when the profile is booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UkiProfile {
    /// `ID=<id>`, then `\nTITLE=<title>` when there is one (Talos's `Profile.String()`, no
    /// trailing newline).
    pub text: String,
    /// The profile's own `.cmdline`, if it has one.
    pub cmdline: Option<String>,
}

impl UkiProfile {
    pub fn new(id: &str, title: Option<&str>, cmdline: Option<String>) -> Self {
        let mut text = format!("ID={id}");
        if let Some(t) = title {
            text.push_str(&format!("\nTITLE={t}"));
        }
        UkiProfile { text, cmdline }
    }
}

/// What goes into a UKI.
pub struct UkiInput<'a> {
    /// The whole `systemd-stub.efi`.
    pub stub: &'a [u8],
    pub osrel: &'a str,
    pub cmdline: &'a str,
    pub uname: Option<&'a str>,
    pub kernel: &'a Layout,
    pub initrd: &'a Layout,
    /// Boot profiles, in order (none: a single-profile UKI).
    pub profiles: &'a [UkiProfile],
    /// `SOURCE_DATE_EPOCH` (the COFF timestamp; truncated to 32 bits as PE requires).
    pub epoch: u64,
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Assemble the UKI as a layout (the kernel and initramfs stay file regions).
pub fn build(input: &UkiInput) -> Result<Layout> {
    let h = PeHeaders::parse(input.stub).context("systemd-stub")?;
    if h.sections.is_empty() {
        bail!("systemd-stub: has no sections; it is not a systemd EFI stub");
    }
    if h.subsystem != pe::SUBSYSTEM_EFI_APPLICATION {
        bail!(
            "systemd-stub: PE subsystem is {} but an EFI application (10) is required",
            h.subsystem
        );
    }
    for name in [
        ".linux", ".initrd", ".cmdline", ".osrel", ".uname", ".profile",
    ] {
        if h.section(name).is_some() {
            bail!("systemd-stub: already has a {name} section: it is a UKI, not a bare stub");
        }
    }
    let fa = u64::from(h.file_alignment);
    let sa = u64::from(h.section_alignment);

    let mut parts: Vec<(&str, Layout)> = vec![
        (
            ".osrel",
            Layout::from_bytes(input.osrel.as_bytes().to_vec()),
        ),
        (
            ".cmdline",
            Layout::from_bytes(input.cmdline.as_bytes().to_vec()),
        ),
    ];
    if let Some(u) = input.uname {
        parts.push((".uname", Layout::from_bytes(u.as_bytes().to_vec())));
    }
    parts.push((".linux", input.kernel.clone()));
    parts.push((".initrd", input.initrd.clone()));
    for p in input.profiles {
        parts.push((".profile", Layout::from_bytes(p.text.as_bytes().to_vec())));
        if let Some(c) = &p.cmdline {
            parts.push((".cmdline", Layout::from_bytes(c.as_bytes().to_vec())));
        }
    }

    let table_end = h.section_table + (h.sections.len() + parts.len()) * pe::SECTION_HEADER_LEN;
    let first_raw = h
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_ptr as usize)
        .min()
        .unwrap_or(h.size_of_headers as usize);
    if table_end > h.size_of_headers as usize || table_end > first_raw {
        bail!(
            "systemd-stub: its headers have no room for {} more section headers (SizeOfHeaders {:#x}); use a systemd-stub.efi built for UKIs",
            parts.len(),
            h.size_of_headers
        );
    }
    let stub_end = h
        .sections
        .iter()
        .map(Section::raw_end)
        .max()
        .unwrap_or(0)
        .max(u64::from(h.size_of_headers));
    if stub_end > input.stub.len() as u64 {
        bail!(
            "systemd-stub: truncated: its sections end at byte {stub_end} but the file has {} bytes",
            input.stub.len()
        );
    }

    let mut vaddr = align(
        h.sections
            .iter()
            .map(Section::virtual_end)
            .max()
            .unwrap_or(0),
        sa,
    );
    let mut raw = align(stub_end, fa);
    let mut added = Vec::new();
    let mut init_data: u64 = 0;
    for (name, data) in &parts {
        let len = data.len();
        let raw_size = align(len, fa);
        let too_big = |what: &str| anyhow::anyhow!("UKI: {name} makes the {what} exceed 4 GiB");
        added.push(Section {
            name: name.to_string(),
            virtual_size: u32::try_from(len).map_err(|_| too_big("section"))?,
            virtual_address: u32::try_from(vaddr).map_err(|_| too_big("image"))?,
            raw_size: u32::try_from(raw_size).map_err(|_| too_big("section"))?,
            raw_ptr: u32::try_from(raw).map_err(|_| too_big("file"))?,
            characteristics: pe::SCN_CNT_INITIALIZED_DATA | pe::SCN_MEM_READ,
        });
        init_data += raw_size;
        vaddr = align(vaddr + len.max(1), sa);
        raw += raw_size;
    }
    let size_of_image = u32::try_from(vaddr).map_err(|_| anyhow::anyhow!("UKI exceeds 4 GiB"))?;

    // The stub's bytes with patched headers.
    let mut head = input.stub[..stub_end as usize].to_vec();
    let nsec = u16::try_from(h.sections.len() + added.len())
        .map_err(|_| anyhow::anyhow!("UKI: too many sections"))?;
    head[h.coff + 2..h.coff + 4].copy_from_slice(&nsec.to_le_bytes());
    head[h.coff + 4..h.coff + 8].copy_from_slice(&(input.epoch as u32).to_le_bytes());
    let sid = h.opt + 8;
    let old_init = u32::from_le_bytes(head[sid..sid + 4].try_into()?);
    let new_init = u64::from(old_init) + init_data;
    head[sid..sid + 4].copy_from_slice(&(new_init.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    head[h.opt + 56..h.opt + 60].copy_from_slice(&size_of_image.to_le_bytes());
    let ck = h.checksum_offset();
    head[ck..ck + 4].fill(0);
    if h.data_dir_count > 4 {
        // Certificate table (directory 4): now invalid, so removed.
        let d = h.data_dirs + 4 * 8;
        head[d..d + 8].fill(0);
    }
    for (i, s) in added.iter().enumerate() {
        let off = h.section_table + (h.sections.len() + i) * pe::SECTION_HEADER_LEN;
        head[off..off + pe::SECTION_HEADER_LEN].copy_from_slice(&s.to_bytes());
    }

    let total = raw;
    let assemble = |head: Vec<u8>| -> Result<Layout> {
        let mut l = Layout::new(total);
        let head_len = head.len() as u64;
        l.put_bytes(0, Arc::<[u8]>::from(head))?;
        l.put_zeros(head_len, align(stub_end, fa) - head_len)?;
        for (s, (_, data)) in added.iter().zip(&parts) {
            let at = u64::from(s.raw_ptr);
            l.put_layout(at, data)?;
            // Padding is part of the file (it is hashed and measured): map it.
            let pad_at = at + data.len();
            l.put_zeros(pad_at, u64::from(s.raw_size) - data.len())?;
            // A nested layout's own gaps are zeros too; map them (rare: inputs are files).
            for gap in gaps(data) {
                l.put_zeros(at + gap.0, gap.1)?;
            }
        }
        Ok(l)
    };
    let draft = assemble(head.clone())?;
    let mut sum = pe::Checksum::default();
    let mut r = draft.reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .context("UKI: reading inputs for the PE checksum")?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    head[ck..ck + 4].copy_from_slice(&sum.finish().to_le_bytes());
    assemble(head)
}

/// Unmapped ranges `(offset, len)` of a layout.
fn gaps(l: &Layout) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for e in l.extents() {
        if e.offset > pos {
            out.push((pos, e.offset - pos));
        }
        pos = e.end();
    }
    if l.len() > pos {
        out.push((pos, l.len() - pos));
    }
    out
}

/// What `inspect` shows of a UKI.
#[derive(Debug, serde::Serialize)]
pub struct UkiInfo {
    pub machine: String,
    pub sections: Vec<SectionInfo>,
    pub cmdline: Option<String>,
    pub osrel: Option<String>,
    pub uname: Option<String>,
    /// Boot profiles (`.profile` sections), in order, with the command line each boots with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileInfo>,
}

/// One boot profile of a UKI.
#[derive(Debug, serde::Serialize)]
pub struct ProfileInfo {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The profile's own `.cmdline`, or the base one when it has none.
    pub cmdline: Option<String>,
    /// Whether the profile has its own `.cmdline`.
    pub own_cmdline: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct SectionInfo {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub file_offset: u32,
    pub file_size: u32,
}

/// Describe a UKI read through `read_at(offset, buf)`.
pub fn describe(
    len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<UkiInfo> {
    let mut head = vec![0u8; len.min(64 * 1024) as usize];
    read_at(0, &mut head)?;
    let h = PeHeaders::parse(&head)?;
    let mut read_text = |s: &Section| -> Result<String> {
        let n = s.virtual_size.min(s.raw_size).min(64 * 1024) as usize;
        if u64::from(s.raw_ptr) + n as u64 > len {
            bail!("section {} lies outside the file", s.name);
        }
        let mut b = vec![0u8; n];
        read_at(u64::from(s.raw_ptr), &mut b)?;
        Ok(String::from_utf8_lossy(&b)
            .trim_end_matches('\0')
            .to_string())
    };
    // The base sections come before the first `.profile`; each profile's own sections follow
    // its `.profile` (systemd's UKI profile layout).
    let first_profile = h
        .sections
        .iter()
        .position(|s| s.name == ".profile")
        .unwrap_or(h.sections.len());
    let (base, rest) = h.sections.split_at(first_profile);
    let base_text = |name: &str, read_text: &mut dyn FnMut(&Section) -> Result<String>| {
        base.iter()
            .find(|s| s.name == name)
            .map(read_text)
            .transpose()
    };
    let cmdline = base_text(".cmdline", &mut read_text)?;
    let osrel = base_text(".osrel", &mut read_text)?;
    let uname = base_text(".uname", &mut read_text)?;
    let mut profiles: Vec<ProfileInfo> = Vec::new();
    for s in rest {
        match s.name.as_str() {
            ".profile" => {
                let t = read_text(s)?;
                let field = |k: &str| {
                    t.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(str::to_string)
                };
                profiles.push(ProfileInfo {
                    id: field("ID=").unwrap_or_default(),
                    title: field("TITLE="),
                    cmdline: cmdline.clone(),
                    own_cmdline: false,
                });
            }
            ".cmdline" => {
                if let Some(p) = profiles.last_mut() {
                    p.cmdline = Some(read_text(s)?);
                    p.own_cmdline = true;
                }
            }
            _ => {}
        }
    }
    Ok(UkiInfo {
        machine: match crate::talos::Arch::from_pe_machine(h.machine) {
            Some(a) => a.to_string(),
            None => format!("{:#x}", h.machine),
        },
        cmdline,
        osrel,
        uname,
        profiles,
        sections: h
            .sections
            .iter()
            .map(|s| SectionInfo {
                name: s.name.clone(),
                virtual_address: s.virtual_address,
                virtual_size: s.virtual_size,
                file_offset: s.raw_ptr,
                file_size: s.raw_size,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub() -> Vec<u8> {
        crate::synthetic::pe_image(
            0x8664,
            &[
                (".text", vec![0xc3; 16]),
                (".sdmagic", b"#### LoaderInfo".to_vec()),
            ],
            None,
        )
    }

    fn describe_layout(l: &Layout) -> UkiInfo {
        let bytes = l.to_vec().unwrap();
        describe(bytes.len() as u64, &mut |off, buf| {
            buf.copy_from_slice(&bytes[off as usize..off as usize + buf.len()]);
            Ok(())
        })
        .unwrap()
    }

    /// Talos's multi-profile UKI (`internal/pkg/uki/uki.go`, `Build` → `generateProfiles`;
    /// profiles from `pkg/imager/imager.go`, `buildUKI`): the base sections, then `.profile`
    /// `ID=main` with no sections of its own, then `ID=reset-maintenance` with its title and
    /// its own `.cmdline`.
    #[test]
    fn profiles_follow_the_base_sections() {
        let stub = stub();
        let kernel = Layout::from_bytes(vec![1u8; 3000]);
        let initrd = Layout::from_bytes(vec![2u8; 5000]);
        let profiles = [
            UkiProfile::new("main", None, None),
            UkiProfile::new(
                "reset-maintenance",
                Some("Reset to maintenance mode"),
                Some("a=1 talos.experimental.wipe=system:EPHEMERAL,STATE".into()),
            ),
        ];
        let uki = build(&UkiInput {
            stub: &stub,
            osrel: "ID=talos\n",
            cmdline: "a=1",
            uname: Some("6.18.15-talos"),
            kernel: &kernel,
            initrd: &initrd,
            profiles: &profiles,
            epoch: 1,
        })
        .unwrap();
        let info = describe_layout(&uki);
        let names: Vec<&str> = info.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".text", ".sdmagic", ".osrel", ".cmdline", ".uname", ".linux", ".initrd",
                ".profile", ".profile", ".cmdline"
            ]
        );
        assert_eq!(info.cmdline.as_deref(), Some("a=1"));
        assert_eq!(info.profiles.len(), 2);
        assert_eq!(info.profiles[0].id, "main");
        assert_eq!(info.profiles[0].title, None);
        assert!(!info.profiles[0].own_cmdline);
        assert_eq!(info.profiles[0].cmdline.as_deref(), Some("a=1"));
        assert_eq!(info.profiles[1].id, "reset-maintenance");
        assert_eq!(
            info.profiles[1].title.as_deref(),
            Some("Reset to maintenance mode")
        );
        assert_eq!(
            info.profiles[1].cmdline.as_deref(),
            Some("a=1 talos.experimental.wipe=system:EPHEMERAL,STATE")
        );
        // The exact `.profile` text (no trailing newline).
        let bytes = uki.to_vec().unwrap();
        let p = info
            .sections
            .iter()
            .filter(|s| s.name == ".profile")
            .nth(1)
            .unwrap();
        let at = p.file_offset as usize;
        assert_eq!(
            &bytes[at..at + p.virtual_size as usize],
            b"ID=reset-maintenance\nTITLE=Reset to maintenance mode"
        );
        // A stub that already has profiles is a UKI, not a stub.
        let e = build(&UkiInput {
            stub: &crate::synthetic::pe_image(0x8664, &[(".profile", b"ID=x".to_vec())], None),
            osrel: "",
            cmdline: "",
            uname: None,
            kernel: &kernel,
            initrd: &initrd,
            profiles: &[],
            epoch: 1,
        })
        .unwrap_err();
        assert!(e.to_string().contains(".profile"), "{e}");
    }
}
