//! What `depmod` computes for one kernel's module tree, in Rust: which module wins when two
//! have the same name, each module's dependencies from the symbols it needs and the symbols
//! the others export, and every file `depmod` writes next to the modules. Talos's imager runs
//! kmod's `depmod --all --basedir … --config /etc/modules.d/10-extra-modules.conf <kver>` over
//! the base modules and every extension's (`internal/pkg/extensions/kernel_modules.go`,
//! `depmod`); that configuration is the one line `search extras built-in` (`hack/
//! extra-modules.conf`), so a module under `extras/` wins over one of the same name elsewhere.
//!
//! The algorithm follows kmod 30's `tools/depmod.c`:
//! - candidates are `*.ko`, `*.ko.xz`, `*.ko.zst`, `*.ko.gz` under the tree (`build` and
//!   `source` directories skipped); of two with the same name the one of higher search
//!   priority stays (`extras/` over the rest), and of equal priority the one found first
//!   (kmod: directory order; here: path order, which is reproducible);
//! - the module array: the modules listed in `modules.order` first, in its order (matched by
//!   their path with the compression ending replaced by `.ko`), then the rest (kmod: hash
//!   order; here: path order); a module's priority in the indexes is its array position;
//! - exported symbols ([`crate::format::elf::Module::exported`]) go into one symbol table, a
//!   later module taking a name over from an earlier one (kmod's `hash_add` replaces); each
//!   needed symbol another module exports makes that module a dependency (each once, in the
//!   order first needed);
//! - a topological sort (kmod's `depmod_calculate_dependencies`: modules nobody depends on
//!   first, a stack of them taken from the end) numbers every module; a cycle is an error
//!   that names the modules in it; every dependency list is sorted by that number;
//! - a module's `modules.dep` line lists all its dependencies, direct and indirect, each once,
//!   sorted by that number: every module before the modules it needs, so loading goes from
//!   the right.
//!
//! The files written are kmod 30's: `modules.dep`, `modules.dep.bin`, `modules.alias`,
//! `modules.alias.bin`, `modules.softdep`, `modules.symbols`, `modules.symbols.bin`,
//! `modules.builtin.bin`, `modules.builtin.alias.bin`, `modules.devname`. kmod ≥ 33 also
//! writes `modules.weakdep`, which is not made here. Symbols in `modules.symbols` are sorted by
//! name (kmod: hash order).

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Context, Result};

use super::index::Index;
use crate::format::elf;

/// The search priority of a module path under `search extras built-in`: `extras/` first.
fn priority(relpath: &str) -> u8 {
    if relpath.starts_with("extras/") {
        1
    } else {
        0
    }
}

/// The most modules of one tree (kmod keeps module numbers in 16 bits).
pub const MAX_MODULES: usize = u16::MAX as usize - 1;

/// A module as read.
#[derive(Clone, Debug)]
struct Module {
    /// Path relative to `lib/modules/<kver>`, as found (with its compression ending).
    relpath: String,
    name: String,
    exported: Vec<String>,
    needed: Vec<String>,
    modinfo: Vec<(String, String)>,
}

/// The module tree being read.
#[derive(Default)]
pub struct Depmod {
    modules: BTreeMap<String, Module>,
}

/// One output file.
pub type Output = (String, Vec<u8>);

impl Depmod {
    /// Add the module at `relpath` (relative to `lib/modules/<kver>`) whose decompressed ELF
    /// is `elf`. Returns whether it was kept (a module of the same name and higher or equal
    /// priority already there keeps its place).
    pub fn add(&mut self, relpath: &str, elf: &[u8]) -> Result<bool> {
        let file = relpath.rsplit('/').next().unwrap_or(relpath);
        let name =
            super::module_name(file).ok_or_else(|| anyhow!("{relpath}: not a module file name"))?;
        if relpath.split('/').any(|c| c == "build" || c == "source") {
            return Ok(false);
        }
        if let Some(old) = self.modules.get(&name) {
            if priority(relpath) <= priority(&old.relpath) {
                return Ok(false);
            }
        }
        if !self.modules.contains_key(&name) && self.modules.len() >= MAX_MODULES {
            bail!("more than {MAX_MODULES} modules");
        }
        let m = elf::Module::parse(elf).with_context(|| format!("{relpath}: reading its ELF"))?;
        let module = Module {
            relpath: relpath.to_string(),
            exported: m
                .exported()
                .with_context(|| format!("{relpath}: its symbols"))?,
            needed: m
                .needed()
                .with_context(|| format!("{relpath}: its symbols"))?
                .into_iter()
                .map(|n| n.name)
                .collect(),
            modinfo: m.modinfo(),
            name: name.clone(),
        };
        self.modules.insert(name, module);
        Ok(true)
    }

    /// The kept modules' paths, by module name.
    pub fn paths(&self) -> impl Iterator<Item = (&str, &str)> {
        self.modules
            .iter()
            .map(|(n, m)| (n.as_str(), m.relpath.as_str()))
    }

    /// Every output file, given the tree's `modules.order`, `modules.builtin` and
    /// `modules.builtin.modinfo` (empty when absent).
    pub fn outputs(
        &self,
        order: &str,
        builtin: &str,
        builtin_modinfo: &[u8],
    ) -> Result<Vec<Output>> {
        // The module array.
        let uncompressed = |p: &str| {
            super::SUFFIXES[1..]
                .iter()
                .find_map(|s| p.strip_suffix(s))
                .map(|stem| format!("{stem}.ko"))
                .unwrap_or_else(|| p.to_string())
        };
        let by_uncrelpath: HashMap<String, &Module> = self
            .modules
            .values()
            .map(|m| (uncompressed(&m.relpath), m))
            .collect();
        let mut array: Vec<&Module> = Vec::new();
        let mut placed: HashMap<&str, ()> = HashMap::new();
        for line in order.lines() {
            if let Some(m) = by_uncrelpath.get(line.trim_end()) {
                if placed.insert(m.name.as_str(), ()).is_none() {
                    array.push(m);
                }
            }
        }
        let mut rest: Vec<&Module> = self
            .modules
            .values()
            .filter(|m| !placed.contains_key(m.name.as_str()))
            .collect();
        rest.sort_by(|a, b| a.relpath.cmp(&b.relpath));
        array.extend(rest);

        // Symbols and dependencies.
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (i, m) in array.iter().enumerate() {
            for s in &m.exported {
                owner.insert(s.as_str(), i);
            }
        }
        let n = array.len();
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut users = vec![0usize; n];
        for (i, m) in array.iter().enumerate() {
            for s in &m.needed {
                if let Some(&o) = owner.get(s.as_str()) {
                    if o != i && !deps[i].contains(&o) {
                        deps[i].push(o);
                        users[o] += 1;
                    }
                }
            }
        }
        // Topological numbering: modules nobody needs first, a stack taken from the end.
        let mut left = users.clone();
        let mut roots: Vec<usize> = (0..n).filter(|&i| left[i] == 0).collect();
        let mut sort_idx = vec![usize::MAX; n];
        let mut sorted = 0;
        while let Some(src) = roots.pop() {
            sort_idx[src] = sorted;
            sorted += 1;
            for &d in &deps[src] {
                left[d] -= 1;
                if left[d] == 0 {
                    roots.push(d);
                }
            }
        }
        if sorted < n {
            let mut cycle: Vec<&str> = (0..n)
                .filter(|&i| left[i] > 0)
                .map(|i| array[i].relpath.as_str())
                .collect();
            cycle.sort();
            bail!(
                "the modules depend on each other in a cycle: {}; depmod refuses such a tree \
                 (rebuild the modules, or leave one of them out)",
                cycle.join(", ")
            );
        }
        for d in &mut deps {
            d.sort_by_key(|&x| sort_idx[x]);
        }

        // All dependencies of each module, each once, in topological order.
        let all_deps = |i: usize| -> Vec<usize> {
            let mut out: Vec<usize> = Vec::new();
            let mut stack: Vec<usize> = deps[i].iter().rev().copied().collect();
            while let Some(d) = stack.pop() {
                if out.contains(&d) {
                    continue;
                }
                out.push(d);
                stack.extend(deps[d].iter().rev().copied());
            }
            out.sort_by_key(|&x| sort_idx[x]);
            out
        };
        let mut dep_text = String::new();
        let mut dep_bin = Index::default();
        for (i, m) in array.iter().enumerate() {
            let mut line = format!("{}:", m.relpath);
            for d in all_deps(i) {
                line.push(' ');
                line.push_str(&array[d].relpath);
            }
            dep_bin.insert(&m.name, &line, i as u32)?;
            dep_text.push_str(&line);
            dep_text.push('\n');
        }

        // Aliases, soft dependencies, device names.
        let mut alias_text = String::from("# Aliases extracted from modules themselves.\n");
        let mut alias_bin = Index::default();
        let mut softdep = String::from("# Soft dependencies extracted from modules themselves.\n");
        let mut devname = String::new();
        for (i, m) in array.iter().enumerate() {
            let mut dev: Option<&str> = None;
            let mut node: Option<(char, u32, u32)> = None;
            for (k, v) in &m.modinfo {
                match k.as_str() {
                    "alias" => {
                        alias_text.push_str(&format!("alias {v} {}\n", m.name));
                        if let Some(a) = alias_normalize(v) {
                            alias_bin.insert(&a, &m.name, i as u32)?;
                        }
                        if dev.is_none() || node.is_none() {
                            if let Some(d) = v.strip_prefix("devname:") {
                                dev = Some(d);
                            } else if let Some(n) = major_minor(v, "char-major-") {
                                node = Some(('c', n.0, n.1));
                            } else if let Some(n) = major_minor(v, "block-major-") {
                                node = Some(('b', n.0, n.1));
                            }
                        }
                    }
                    "softdep" => softdep.push_str(&format!("softdep {} {v}\n", m.name)),
                    _ => {}
                }
            }
            if let (Some(d), Some((t, maj, min))) = (dev, node) {
                if devname.is_empty() {
                    devname.push_str("# Device nodes to trigger on-demand module loading.\n");
                }
                devname.push_str(&format!("{} {d} {t}{maj}:{min}\n", m.name));
            }
        }

        // Symbols.
        let mut symbols: Vec<(&str, usize)> = owner.into_iter().collect();
        symbols.sort();
        let mut sym_text = String::from("# Aliases for symbols, used by symbol_request().\n");
        let mut sym_bin = Index::default();
        for (s, o) in &symbols {
            sym_text.push_str(&format!("alias symbol:{s} {}\n", array[*o].name));
            sym_bin.insert(&format!("symbol:{s}"), &array[*o].name, *o as u32)?;
        }

        // Built-in modules.
        let mut builtin_bin = Index::default();
        for line in builtin.lines() {
            if line.starts_with(|c: char| c.is_ascii_alphabetic()) {
                builtin_bin.insert(&super::normalize(line), "", 0)?;
            }
        }
        let mut builtin_alias = Index::default();
        for rec in builtin_modinfo.split(|&c| c == 0) {
            let rec = String::from_utf8_lossy(rec);
            let Some((modname, kv)) = rec.split_once('.') else {
                continue;
            };
            let Some(value) = kv.strip_prefix("alias=") else {
                continue;
            };
            if modname.is_empty() || value.is_empty() {
                continue;
            }
            if let Some(a) = alias_normalize(value) {
                builtin_alias.insert(&a, modname, 0)?;
            }
        }
        Ok(vec![
            ("modules.dep".into(), dep_text.into_bytes()),
            ("modules.dep.bin".into(), dep_bin.to_bytes()),
            ("modules.alias".into(), alias_text.into_bytes()),
            ("modules.alias.bin".into(), alias_bin.to_bytes()),
            ("modules.softdep".into(), softdep.into_bytes()),
            ("modules.symbols".into(), sym_text.into_bytes()),
            ("modules.symbols.bin".into(), sym_bin.to_bytes()),
            ("modules.builtin.bin".into(), builtin_bin.to_bytes()),
            ("modules.builtin.alias.bin".into(), builtin_alias.to_bytes()),
            ("modules.devname".into(), devname.into_bytes()),
        ])
    }
}

/// kmod's `alias_normalize`: `-` written `_` except inside `[...]`; an unmatched bracket makes
/// the alias unusable (`None`, kmod warns and skips it).
pub fn alias_normalize(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut chars = alias.chars();
    while let Some(c) = chars.next() {
        match c {
            '-' => out.push('_'),
            ']' => return None,
            '[' => {
                out.push('[');
                loop {
                    match chars.next() {
                        Some(']') => {
                            out.push(']');
                            break;
                        }
                        Some(x) => out.push(x),
                        None => return None,
                    }
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// `<prefix><major>-<minor>` as numbers.
fn major_minor(v: &str, prefix: &str) -> Option<(u32, u32)> {
    let (a, b) = v.strip_prefix(prefix)?.split_once('-')?;
    let num = |s: &str| {
        let d: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        d.parse().ok()
    };
    Some((num(a)?, num(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::elf::fake_module;
    use crate::kmod::index::lookup;

    fn tree() -> Depmod {
        let mut d = Depmod::default();
        let m = |info: &[(&str, &str)], e: &[&str], n: &[&str]| fake_module(62, info, e, n);
        d.add("kernel/lib/a.ko", &m(&[], &["a_fn"], &["printk"]))
            .unwrap();
        d.add(
            "kernel/lib/b.ko",
            &m(&[("softdep", "pre: a")], &["b_fn"], &["a_fn"]),
        )
        .unwrap();
        d.add(
            "kernel/drivers/c.ko",
            &m(
                &[
                    ("alias", "pci:v00001AF4d*"),
                    ("alias", "devname:cdev"),
                    ("alias", "char-major-10-99"),
                ],
                &["c_fn"],
                &["b_fn", "a_fn", "!weak_missing"],
            ),
        )
        .unwrap();
        // extras/ wins over kernel/ for the same name, whatever the order they are found in.
        d.add("extras/d.ko.xz", &m(&[], &["d_new"], &["c_fn"]))
            .unwrap();
        assert!(!d.add("kernel/d.ko", &m(&[], &["d_old"], &[])).unwrap());
        d
    }

    #[test]
    fn dependencies_lines_and_indexes() {
        let d = tree();
        let out: BTreeMap<String, Vec<u8>> = d
            .outputs(
                "kernel/lib/a.ko\nkernel/lib/b.ko\nkernel/drivers/c.ko\n",
                "kernel/fs/ext4/ext4.ko\n",
                b"ext4.alias=fs-ext4\0",
            )
            .unwrap()
            .into_iter()
            .collect();
        let dep = String::from_utf8(out["modules.dep"].clone()).unwrap();
        assert_eq!(
            dep,
            "kernel/lib/a.ko:\n\
             kernel/lib/b.ko: kernel/lib/a.ko\n\
             kernel/drivers/c.ko: kernel/lib/b.ko kernel/lib/a.ko\n\
             extras/d.ko.xz: kernel/drivers/c.ko kernel/lib/b.ko kernel/lib/a.ko\n"
        );
        let bin = &out["modules.dep.bin"];
        assert_eq!(
            lookup(bin, "d").unwrap(),
            [(
                3,
                "extras/d.ko.xz: kernel/drivers/c.ko kernel/lib/b.ko kernel/lib/a.ko".to_string()
            )]
        );
        assert_eq!(
            lookup(&out["modules.alias.bin"], "pci:v00001AF4d*").unwrap()[0].1,
            "c"
        );
        assert_eq!(
            lookup(&out["modules.symbols.bin"], "symbol:b_fn").unwrap()[0],
            (1, "b".into())
        );
        assert_eq!(
            lookup(&out["modules.builtin.bin"], "ext4").unwrap(),
            [(0, String::new())]
        );
        assert_eq!(
            lookup(&out["modules.builtin.alias.bin"], "fs_ext4").unwrap()[0].1,
            "ext4"
        );
        assert_eq!(
            String::from_utf8_lossy(&out["modules.devname"]),
            "# Device nodes to trigger on-demand module loading.\nc cdev c10:99\n"
        );
        assert!(String::from_utf8_lossy(&out["modules.softdep"]).ends_with("softdep b pre: a\n"));
        assert!(String::from_utf8_lossy(&out["modules.symbols"]).contains("alias symbol:d_new d\n"));
        assert!(!String::from_utf8_lossy(&out["modules.symbols"]).contains("d_old"));
    }

    #[test]
    fn cycles_are_named() {
        let mut d = Depmod::default();
        d.add("kernel/x.ko", &fake_module(62, &[], &["x"], &["y"]))
            .unwrap();
        d.add("kernel/y.ko", &fake_module(62, &[], &["y"], &["x"]))
            .unwrap();
        let e = d.outputs("", "", b"").unwrap_err().to_string();
        assert!(e.contains("cycle: kernel/x.ko, kernel/y.ko"), "{e}");
    }

    #[test]
    fn alias_normalization() {
        assert_eq!(
            alias_normalize("usb:v1D6Bp*d*dc*dsc*dp*ic09isc*ip*in*").as_deref(),
            Some("usb:v1D6Bp*d*dc*dsc*dp*ic09isc*ip*in*")
        );
        assert_eq!(alias_normalize("fs-ext4").as_deref(), Some("fs_ext4"));
        assert_eq!(alias_normalize("a-[0-9]-b").as_deref(), Some("a_[0-9]_b"));
        assert_eq!(alias_normalize("a[0-9"), None);
        assert_eq!(alias_normalize("a]"), None);
    }
}
