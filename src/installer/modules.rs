//! Kernel modules for the installer's initramfs: the profile names modules
//! (`[installer] modules.load`), they are found in a directory, their dependencies are added
//! from `modules.dep` (as `depmod` writes it) when the directory has one, and compressed
//! modules are decompressed so the initramfs holds plain `.ko` files the installer loads with
//! `finit_module` in order.
//!
//! Order: each listed module after its dependencies, depth first, each module once, the
//! listed ones in the order given. A module's dependencies are visited in reverse
//! `modules.dep` order, as `modprobe` loads them (`depmod` lists a module's closest
//! dependencies first); any order would do, since every dependency's own dependencies come
//! before it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::profile::installer::{profile_error, ModulesSpec};

pub use crate::kmod::{module_name, MAX_MODULE_SIZE};
/// Directory levels searched below `modules.dir` (a `lib/modules/<kver>` tree has about 8).
const MAX_DEPTH: usize = 24;

/// One module, ready for the initramfs.
#[derive(Clone, Debug)]
pub struct Module {
    /// The module's name as the kernel knows it (`-` written as `_`).
    pub name: String,
    /// Where it came from.
    pub origin: PathBuf,
    /// The plain ELF object.
    pub data: Vec<u8>,
}

impl Module {
    /// The file name in the initramfs: `<name>.ko`.
    pub fn file_name(&self) -> String {
        format!("{}.ko", self.name)
    }
}

/// Find, order and decompress the modules of `spec`; `profile` names the file in errors.
pub fn resolve(spec: &ModulesSpec, profile: &Path) -> Result<Vec<Module>> {
    let dir = &spec.dir;
    let err = |field: &str, msg: String| profile_error(profile, field, msg);
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                "installer.modules.dir",
                format!("{} is not a directory; give a lib/modules/<kernel release> tree or a directory of .ko files", dir.display()),
            ))
        }
        Err(e) => {
            return Err(err(
                "installer.modules.dir",
                format!("cannot read {}: {e}", dir.display()),
            ))
        }
    }
    let index = index(dir).map_err(|e| err("installer.modules.dir", e))?;
    let deps = match fs::read_to_string(dir.join("modules.dep")) {
        Ok(text) => Some(parse_modules_dep(&text).map_err(|e| {
            err(
                "installer.modules.dir",
                format!("{}/modules.dep: {e}", dir.display()),
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(err(
                "installer.modules.dir",
                format!("cannot read {}/modules.dep: {e}", dir.display()),
            ))
        }
    };
    let file_of = |name: &str| -> std::result::Result<PathBuf, String> {
        if let Some((path, _)) = deps.as_ref().and_then(|d| d.get(name)) {
            let p = dir.join(path);
            if p.is_file() {
                return Ok(p);
            }
            return Err(format!(
                "modules.dep names {} for module {name}, but that file is missing",
                p.display()
            ));
        }
        match index.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            Some(many) if many.len() > 1 => Err(format!(
                "module {name} is there {} times ({}); keep one, or add a modules.dep (depmod) that names the right one",
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Err(format!(
                "module {name} is not in {}: no {name}.ko, .ko.xz, .ko.zst or .ko.gz there or below (names with '-' and '_' are the same)",
                dir.display()
            )),
        }
    };
    let deps_of = |name: &str| -> Vec<String> {
        deps.as_ref()
            .and_then(|d| d.get(name))
            .map(|(_, ds)| ds.clone())
            .unwrap_or_default()
    };

    let mut order: Vec<String> = Vec::new();
    let mut done = BTreeSet::new();
    for (i, name) in spec.load.iter().enumerate() {
        let field = format!("installer.modules.load[{i}]");
        let name = &name.replace('-', "_");
        file_of(name).map_err(|e| err(&field, e))?;
        // Depth first, without recursion: (module, its dependencies left to visit).
        let mut stack: Vec<(String, Vec<String>)> = Vec::new();
        if !done.contains(name) {
            stack.push((name.clone(), deps_of(name)));
        }
        while let Some((top, pending)) = stack.last_mut() {
            let top = top.clone();
            match pending.pop() {
                Some(d) => {
                    if done.contains(&d) {
                        continue;
                    }
                    if stack.iter().any(|(m, _)| *m == d) {
                        let path: Vec<&str> = stack.iter().map(|(m, _)| m.as_str()).collect();
                        return Err(err(
                            &field,
                            format!(
                                "modules.dep has a dependency cycle: {} -> {d}",
                                path.join(" -> ")
                            ),
                        ));
                    }
                    file_of(&d).map_err(|e| err(&field, format!("{top} needs {d}, but: {e}")))?;
                    let next = deps_of(&d);
                    stack.push((d, next));
                }
                None => {
                    stack.pop();
                    done.insert(top.clone());
                    order.push(top);
                }
            }
        }
    }

    let mut out = Vec::with_capacity(order.len());
    for name in order {
        let path = file_of(&name).map_err(|e| err("installer.modules.dir", e))?;
        let data = read_module(&path).map_err(|e| {
            err(
                "installer.modules.dir",
                format!("module {name} ({}): {e}", path.display()),
            )
        })?;
        out.push(Module {
            name,
            origin: path,
            data,
        });
    }
    Ok(out)
}

/// Module name → the module files under `dir` (symlinked directories are not followed: a
/// `lib/modules` tree links `build` and `source` to kernel sources).
fn index(dir: &Path) -> std::result::Result<BTreeMap<String, Vec<PathBuf>>, String> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| format!("cannot list {}: {e}", d.display()))?;
        let mut paths = Vec::new();
        for e in entries {
            let e = e.map_err(|e| format!("cannot list {}: {e}", d.display()))?;
            paths.push(e.path());
        }
        paths.sort();
        for p in paths {
            let md = fs::symlink_metadata(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            if md.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    stack.push((p, depth + 1));
                }
                continue;
            }
            let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(module_name) else {
                continue;
            };
            // A symlink counts when it leads to a file.
            if md.file_type().is_symlink() && !p.is_file() {
                continue;
            }
            out.entry(name).or_default().push(p);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// `modules.dep`: module name → (its path relative to the directory, its dependencies' names).
pub fn parse_modules_dep(
    text: &str,
) -> std::result::Result<BTreeMap<String, (String, Vec<String>)>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((module, deps)) = line.split_once(':') else {
            return Err(format!(
                "line {}: {line:?} is not `module: dependencies`",
                i + 1
            ));
        };
        let name_of = |path: &str| -> std::result::Result<String, String> {
            path.rsplit('/')
                .next()
                .and_then(module_name)
                .ok_or_else(|| format!("line {}: {path:?} is not a module file", i + 1))
        };
        let module = module.trim();
        let name = name_of(module)?;
        let deps = deps
            .split_whitespace()
            .map(name_of)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let rel = module.trim_start_matches('/').to_string();
        if rel.split('/').any(|c| c == "..") {
            return Err(format!("line {}: {module:?} leaves the directory", i + 1));
        }
        out.entry(name).or_insert((rel, deps));
    }
    Ok(out)
}

/// A module file's plain bytes: decompressed by its name's ending, at most
/// [`MAX_MODULE_SIZE`], and an ELF object.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::kmod::decompress(&name, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stand-in module: an ELF header and the module's name.
    fn ko(name: &str) -> Vec<u8> {
        [b"\x7fELF\x02\x01\x01\x00".as_slice(), name.as_bytes()].concat()
    }

    fn spec(dir: &Path, load: &[&str]) -> ModulesSpec {
        ModulesSpec {
            dir: dir.to_path_buf(),
            load: load.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(m: &[Module]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    fn err(dir: &Path, load: &[&str]) -> String {
        format!(
            "{:#}",
            resolve(&spec(dir, load), Path::new("p.toml")).unwrap_err()
        )
    }

    #[test]
    fn names_of_module_files() {
        assert_eq!(
            module_name("virtio-blk.ko.zst").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(module_name("fat.ko").as_deref(), Some("fat"));
        assert_eq!(module_name("x.ko.gz").as_deref(), Some("x"));
        assert_eq!(module_name(".ko"), None);
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(module_name("a.ko.bz2"), None);
    }

    /// A lib/modules tree with compressed modules and a modules.dep: dependencies first, each
    /// once, decompressed.
    #[test]
    fn tree_with_modules_dep() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("kernel/drivers");
        fs::create_dir_all(k.join("block")).unwrap();
        fs::create_dir_all(k.join("virtio")).unwrap();
        fs::create_dir_all(d.path().join("kernel/fs")).unwrap();
        let xz = |data: &[u8]| {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        fs::write(k.join("block/virtio_blk.ko.xz"), xz(&ko("virtio_blk"))).unwrap();
        fs::write(
            k.join("virtio/virtio_ring.ko.zst"),
            zstd::encode_all(&ko("virtio_ring")[..], 3).unwrap(),
        )
        .unwrap();
        fs::write(k.join("virtio/virtio.ko"), ko("virtio")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&ko("usb-storage")).unwrap();
        fs::write(
            d.path().join("kernel/fs/usb-storage.ko.gz"),
            gz.finish().unwrap(),
        )
        .unwrap();
        fs::write(d.path().join("kernel/fs/unrelated.ko"), b"never read").unwrap();
        fs::write(
            d.path().join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.zst kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio_ring.ko.zst: kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/fs/usb-storage.ko.gz: kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        // The build and source links of a real tree are not followed.
        std::os::unix::fs::symlink("/", d.path().join("build")).unwrap();
        let m = resolve(
            &spec(d.path(), &["virtio_blk", "usb-storage"]),
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(
            names(&m),
            ["virtio", "virtio_ring", "virtio_blk", "usb_storage"]
        );
        assert_eq!(m[2].data, ko("virtio_blk"));
        assert_eq!(m[3].data, ko("usb-storage"));
        assert_eq!(m[3].file_name(), "usb_storage.ko");
    }

    #[test]
    fn flat_directory_without_modules_dep_has_no_dependencies() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("b.ko"), ko("b")).unwrap();
        fs::write(d.path().join("a.ko"), ko("a")).unwrap();
        let m = resolve(&spec(d.path(), &["b", "a"]), Path::new("p.toml")).unwrap();
        assert_eq!(names(&m), ["b", "a"]);
    }

    #[test]
    fn refusals_name_the_field_and_the_module() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.ko"), ko("a")).unwrap();
        let e = err(d.path(), &["a", "nope"]);
        assert!(
            e.contains("p.toml")
                && e.contains("`installer.modules.load[1]`")
                && e.contains("module nope is not in"),
            "{e}"
        );
        let e = err(&d.path().join("missing"), &["a"]);
        assert!(
            e.contains("`installer.modules.dir`") && e.contains("cannot read"),
            "{e}"
        );
        // The same module twice, no modules.dep to choose.
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(
            d.path().join("sub/a.ko.zst"),
            zstd::encode_all(&ko("a")[..], 1).unwrap(),
        )
        .unwrap();
        assert!(err(d.path(), &["a"]).contains("there 2 times"));
        // Not a module; a broken compressed one.
        fs::write(d.path().join("c.ko"), b"text").unwrap();
        fs::write(d.path().join("x.ko.xz"), b"not xz").unwrap();
        assert!(err(d.path(), &["c"]).contains("not a kernel module"));
        assert!(err(d.path(), &["x"]).contains("decompress"));
        // A dependency missing, a cycle.
        fs::write(
            d.path().join("modules.dep"),
            "c.ko: gone.ko\nx.ko.xz: y.ko\ny.ko: x.ko.xz\n",
        )
        .unwrap();
        fs::write(d.path().join("y.ko"), ko("y")).unwrap();
        let e = err(d.path(), &["c"]);
        assert!(
            e.contains("c needs gone") && e.contains("module gone is not in"),
            "{e}"
        );
        let e = err(d.path(), &["x"]);
        assert!(e.contains("cycle: x -> y -> x"), "{e}");
        fs::write(d.path().join("modules.dep"), "no colon here\n").unwrap();
        assert!(err(d.path(), &["c"]).contains("modules.dep: line 1"));
    }
}
