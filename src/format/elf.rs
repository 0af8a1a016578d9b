//! Reading what a kernel module (an ELF64 little-endian relocatable object, as on amd64 and
//! arm64) says about itself: its sections, the symbols it exports and needs, and its
//! `.modinfo` strings. What is read follows what kmod's `depmod` reads (`libkmod-elf.c`):
//!
//! - exported symbols: the `.symtab` entries named `__crc_<symbol>` (kernels with
//!   `CONFIG_MODVERSIONS`); when there are none, the NUL-separated names of the
//!   `__ksymtab_strings` section;
//! - needed symbols: the `.symtab` entries in section `SHN_UNDEF` with a name, weak ones
//!   marked (a weak reference makes no dependency error, but still a dependency when some
//!   module exports it);
//! - `.modinfo`: NUL-separated `key=value` strings in section order.
//!
//! Every offset is checked against the file, counts are bounded by the file's size, and
//! errors name the section and byte range, never the bytes.

use anyhow::{anyhow, bail, Result};

use super::le::{u16_at, u32_at, u64_at};

const SHN_UNDEF: u16 = 0;
const STB_WEAK: u8 = 2;
const SYM_SIZE: usize = 24;
const SHDR_SIZE: usize = 64;
/// More sections than this is not a module anyone built (large modules have about 60).
const MAX_SECTIONS: usize = 65_280;

/// One section header.
#[derive(Clone, Debug)]
pub struct Section {
    pub name: String,
    pub kind: u32,
    pub offset: u64,
    pub size: u64,
}

/// A parsed module object.
pub struct Module<'a> {
    data: &'a [u8],
    pub machine: u16,
    pub sections: Vec<Section>,
}

/// A symbol a module needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    pub name: String,
    pub weak: bool,
}

/// The NUL-terminated string at `off` of `table` (empty when out of range).
fn cstr(table: &[u8], off: usize) -> &[u8] {
    let s = table.get(off..).unwrap_or_default();
    &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
}

impl<'a> Module<'a> {
    /// Parse the headers of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Module<'a>> {
        if data.len() < 64 || &data[..4] != b"\x7fELF" {
            bail!("not an ELF file");
        }
        if data[4] != 2 || data[5] != 1 {
            bail!("not a 64-bit little-endian ELF file (kernel modules of amd64 and arm64 are)");
        }
        let machine = u16_at(data, 18);
        let shoff = u64_at(data, 40);
        let shentsize = usize::from(u16_at(data, 58));
        let shnum = usize::from(u16_at(data, 60));
        let shstrndx = usize::from(u16_at(data, 62));
        if shentsize < SHDR_SIZE || shnum == 0 || shnum > MAX_SECTIONS {
            bail!("ELF header: {shnum} section headers of {shentsize} bytes");
        }
        let table_len = (shnum * shentsize) as u64;
        let table_at = usize::try_from(shoff)
            .ok()
            .filter(|&o| {
                (o as u64)
                    .checked_add(table_len)
                    .is_some_and(|e| e <= data.len() as u64)
            })
            .ok_or_else(|| {
                anyhow!(
                    "ELF header: the section headers (bytes {shoff}..+{table_len}) lie past the \
                     {}-byte file",
                    data.len()
                )
            })?;
        let mut raw = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let h = &data[table_at + i * shentsize..];
            let name = u32_at(h, 0);
            let kind = u32_at(h, 4);
            let offset = u64_at(h, 24);
            let size = u64_at(h, 32);
            // SHT_NOBITS (8) occupies nothing in the file.
            if kind != 8
                && offset
                    .checked_add(size)
                    .is_none_or(|e| e > data.len() as u64)
            {
                bail!(
                    "section header {i}: its data (bytes {offset}..+{size}) lies past the \
                     {}-byte file",
                    data.len()
                );
            }
            raw.push((name, kind, offset, size));
        }
        let names: &[u8] = match raw.get(shstrndx) {
            Some(&(_, kind, off, size)) if kind != 8 => &data[off as usize..(off + size) as usize],
            _ => bail!("ELF header: section name table index {shstrndx} is not a section"),
        };
        let sections = raw
            .into_iter()
            .map(|(name, kind, offset, size)| Section {
                name: String::from_utf8_lossy(cstr(names, name as usize)).into_owned(),
                kind,
                offset,
                size,
            })
            .collect();
        Ok(Module {
            data,
            machine,
            sections,
        })
    }

    /// The bytes of the first section named `name`.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        self.sections
            .iter()
            .find(|s| s.name == name && s.kind != 8)
            .map(|s| &self.data[s.offset as usize..(s.offset + s.size) as usize])
    }

    /// `.symtab` entries (skipping the null symbol 0) as (name, section index, bind) with
    /// names read from `.strtab`.
    fn symtab(&self) -> Result<Vec<(&'a [u8], u16, u8)>> {
        let (Some(symtab), Some(strtab)) = (self.section(".symtab"), self.section(".strtab"))
        else {
            return Ok(Vec::new());
        };
        if symtab.len() % SYM_SIZE != 0 {
            bail!(
                ".symtab: {} bytes is not a whole number of {SYM_SIZE}-byte symbols",
                symtab.len()
            );
        }
        let mut out = Vec::with_capacity(symtab.len() / SYM_SIZE);
        for s in symtab.chunks_exact(SYM_SIZE).skip(1) {
            let name = u32_at(s, 0) as usize;
            if name >= strtab.len() {
                bail!(
                    ".symtab: a name at offset {name} of the {}-byte .strtab",
                    strtab.len()
                );
            }
            out.push((cstr(strtab, name), u16_at(s, 6), s[4] >> 4));
        }
        Ok(out)
    }

    /// The symbols the module exports (see the module documentation).
    pub fn exported(&self) -> Result<Vec<String>> {
        let crc: Vec<String> = self
            .symtab()?
            .into_iter()
            .filter_map(|(n, _, _)| n.strip_prefix(b"__crc_"))
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        if !crc.is_empty() {
            return Ok(crc);
        }
        Ok(self
            .section("__ksymtab_strings")
            .unwrap_or_default()
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// The symbols the module needs from elsewhere.
    pub fn needed(&self) -> Result<Vec<Needed>> {
        Ok(self
            .symtab()?
            .into_iter()
            .filter(|(n, shndx, _)| *shndx == SHN_UNDEF && !n.is_empty())
            .map(|(n, _, bind)| Needed {
                name: String::from_utf8_lossy(n).into_owned(),
                weak: bind == STB_WEAK,
            })
            .collect())
    }

    /// `.modinfo` as (key, value) pairs, in order.
    pub fn modinfo(&self) -> Vec<(String, String)> {
        self.section(".modinfo")
            .unwrap_or_default()
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let t = String::from_utf8_lossy(s);
                t.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// A kernel module object made in code, for tests and fixtures: an ELF64 little-endian
/// relocatable file for `machine` with `.modinfo` (`key=value` strings), `__ksymtab_strings`
/// (the exported names), and a `.symtab`/`.strtab` holding one defined symbol per export and
/// one undefined symbol per needed name (`!name` makes it weak). kmod's `depmod` reads it as a
/// module; it cannot be loaded.
pub fn fake_module(
    machine: u16,
    modinfo: &[(&str, &str)],
    exports: &[&str],
    needs: &[&str],
) -> Vec<u8> {
    let mut shstr = vec![0u8];
    let mut name_of = |n: &str| {
        let at = shstr.len() as u32;
        shstr.extend_from_slice(n.as_bytes());
        shstr.push(0);
        at
    };
    let names = [
        name_of(".text"),
        name_of(".modinfo"),
        name_of("__ksymtab_strings"),
        name_of(".symtab"),
        name_of(".strtab"),
        name_of(".shstrtab"),
    ];
    let mut info = Vec::new();
    for (k, v) in modinfo {
        info.extend_from_slice(format!("{k}={v}").as_bytes());
        info.push(0);
    }
    let mut ksym = Vec::new();
    for e in exports {
        ksym.extend_from_slice(e.as_bytes());
        ksym.push(0);
    }
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; SYM_SIZE];
    let mut sym = |name: &str, shndx: u16, bind: u8| {
        let mut s = [0u8; SYM_SIZE];
        s[..4].copy_from_slice(&(strtab.len() as u32).to_le_bytes());
        s[4] = bind << 4;
        s[6..8].copy_from_slice(&shndx.to_le_bytes());
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        symtab.extend_from_slice(&s);
    };
    for e in exports {
        sym(e, 1, 1);
    }
    for n in needs {
        match n.strip_prefix('!') {
            Some(w) => sym(w, SHN_UNDEF, STB_WEAK),
            None => sym(n, SHN_UNDEF, 1),
        }
    }
    let text = vec![0xc3u8; 16];
    let bodies: [(&[u8], u32); 6] = [
        (&text, 1),
        (&info, 1),
        (&ksym, 1),
        (&symtab, 2),
        (&strtab, 3),
        (&shstr, 3),
    ];
    let mut out = vec![0u8; 64];
    let mut placed = Vec::new();
    for (body, _) in &bodies {
        while out.len() % 8 != 0 {
            out.push(0);
        }
        placed.push((out.len() as u64, body.len() as u64));
        out.extend_from_slice(body);
    }
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let shoff = out.len() as u64;
    out.extend_from_slice(&[0u8; SHDR_SIZE]);
    for (i, ((body, kind), (off, size))) in bodies.iter().zip(&placed).enumerate() {
        let mut h = [0u8; SHDR_SIZE];
        h[..4].copy_from_slice(&names[i].to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        if *kind == 2 {
            // .symtab: sh_link = .strtab (section 5), sh_info = first global (1), entsize 24.
            h[40..44].copy_from_slice(&5u32.to_le_bytes());
            h[44..48].copy_from_slice(&1u32.to_le_bytes());
            h[56..64].copy_from_slice(&(SYM_SIZE as u64).to_le_bytes());
        }
        h[48..56].copy_from_slice(&1u64.to_le_bytes());
        let _ = body;
        out.extend_from_slice(&h);
    }
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[58..60].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
    out[60..62].copy_from_slice(&7u16.to_le_bytes());
    out[62..64].copy_from_slice(&6u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_module_back() {
        let m = fake_module(
            62,
            &[
                ("alias", "pci:v00008086d*"),
                ("depends", "a"),
                ("name", "x"),
            ],
            &["x_export", "x_other"],
            &["a_export", "!maybe", "printk"],
        );
        let p = Module::parse(&m).unwrap();
        assert_eq!(p.machine, 62);
        assert_eq!(p.exported().unwrap(), ["x_export", "x_other"]);
        assert_eq!(
            p.needed().unwrap(),
            [
                Needed {
                    name: "a_export".into(),
                    weak: false
                },
                Needed {
                    name: "maybe".into(),
                    weak: true
                },
                Needed {
                    name: "printk".into(),
                    weak: false
                },
            ]
        );
        assert_eq!(p.modinfo()[0], ("alias".into(), "pci:v00008086d*".into()));
    }

    /// Hostile headers: every offset is checked, nothing panics, messages name places.
    #[test]
    fn hostile_objects_are_refused() {
        let good = fake_module(62, &[], &["e"], &["n"]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x7fELF".to_vec(), "not an ELF"),
            (
                {
                    let mut b = good.clone();
                    b[4] = 1;
                    b
                },
                "64-bit little-endian",
            ),
            (
                {
                    let mut b = good.clone();
                    b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
                    b
                },
                "past the",
            ),
            (
                {
                    let mut b = good.clone();
                    b[60..62].copy_from_slice(&0u16.to_le_bytes());
                    b
                },
                "section headers",
            ),
            (
                {
                    let mut b = good.clone();
                    b[62..64].copy_from_slice(&99u16.to_le_bytes());
                    b
                },
                "name table index 99",
            ),
        ];
        for (bytes, want) in cases {
            let e = Module::parse(&bytes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{want}: {e}");
        }
        // A symbol name past .strtab.
        let mut b = good.clone();
        let p = Module::parse(&good).unwrap();
        let symtab = p
            .sections
            .iter()
            .find(|s| s.name == ".symtab")
            .unwrap()
            .offset as usize;
        b[symtab + SYM_SIZE..symtab + SYM_SIZE + 4].copy_from_slice(&9999u32.to_le_bytes());
        let e = Module::parse(&b).unwrap().needed().unwrap_err().to_string();
        assert!(e.contains(".symtab: a name at offset 9999"), "{e}");
    }
}
