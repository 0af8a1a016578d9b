//! Validation of an extension tree: layout, manifest, compatibility, rootfs contents and
//! extension services. Every problem is collected; one error lists them all.
//!
//! Sources mirrored (siderolabs/talos):
//! - `pkg/machinery/extensions/load.go`: only `manifest.yaml` and `rootfs` at the top, both
//!   present, `version: v1alpha1`.
//! - `pkg/machinery/extensions/metadata.go`: the manifest fields.
//! - `pkg/machinery/extensions/validate.go`: the compatibility check (`trim`, `coreVersion`,
//!   blang/semver `ParseRange`, see [`super::semver`]); contents: no world-writable entries, no
//!   special files, regular files and symlinks only under `AllowedPaths`.
//! - `pkg/machinery/extensions/extensions.go`: `AllowedPaths` (see [`allowed_paths`]).
//! - `pkg/machinery/extensions/services/services.go` and `restart_kind.go`: the service spec.
//!
//! Stricter than Talos, on purpose:
//! - unknown fields are refused (Talos's YAML decoder ignores them), and `metadata.author` /
//!   `description` are required; metadata scalars are read as Talos reads them (an unquoted
//!   `version: 1.20` is the text "1.20"), service fields must be of the right YAML type;
//! - `metadata.name` must match `^[a-z0-9][a-z0-9._-]*$` (Talos accepts any string);
//! - prefixes match whole path components (Talos's `strings.HasPrefix` lets `/usr/localx` pass);
//! - the world-writable check really applies (Talos tests `fs.DirEntry.Type().Perm()`, which
//!   holds no permission bits, so its check never fires), to directories too;
//! - nothing at all under `/boot`, `/lib64`, `/usr/lib64` but an allowed path (Talos lets
//!   empty directories be anywhere); on Talos ≥ 1.10 (usr merge) a `lib` directory is refused
//!   too;
//! - symlink targets must resolve (lexically, against the rootfs mounted at `/`) into the
//!   allowed paths; hard links must name a regular file of the extension;
//! - services: the entrypoint must exist as an executable regular file in the extension,
//!   `name` must equal the file name, `restart` is case-sensitive (Talos's enumer accepts any
//!   case), each `depends` item must have exactly one key, with a non-empty/true value.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use serde_norway::{Mapping, Value};

use crate::talos::TalosVersion;
use crate::tree::{normalize, NodeKind, Tree};

use super::semver::talos_compatible;
use super::{Extension, Metadata};

/// One problem: where inside the extension, and which rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub rule: String,
}

/// The largest manifest or service definition read.
const MAX_YAML: u64 = 1 << 20;

/// Trees where an extension may not put anything, not even a directory, unless one of
/// Talos's allowed paths for that version lies there (v1.8 and v1.9 allow the single file
/// `/lib64/ld-linux-x86-64.so.2`).
pub const FORBIDDEN: [&str; 3] = ["boot", "lib64", "usr/lib64"];

/// Talos's `AllowedPaths` (`pkg/machinery/extensions/extensions.go`) for `talos`, without the
/// leading `/`, in Talos's order. Read at every release tag v1.8.4 … v1.14.0-rc.1:
/// - v1.8: `/etc/cri/conf.d`, `/lib/firmware`, `/lib/modules`, `/lib64/ld-linux-x86-64.so.2`,
///   `/usr/etc/udev/rules.d`, `/usr/local`, `/usr/share/glvnd`, `/usr/share/egl`, `/etc/vulkan`;
/// - v1.9: `/sbin/ldconfig` added, udev rules moved to `/usr/lib/udev/rules.d`;
/// - v1.10 (usr merge, also v1.11): `/usr/lib/firmware`, `/usr/lib/modules`,
///   `/usr/lib/ld-linux-x86-64.so.2`, `/usr/bin/ldconfig` instead of the `/lib…`, `/sbin` forms;
/// - v1.12: `/usr/lib/ld-linux-aarch64.so.1` added;
/// - v1.13 (also v1.14): `/etc/ld.so.conf`, `/etc/ld.so.cache`, `/usr/bin/nvidia-modprobe`,
///   `/usr/bin/nvidia-pcc`, `/usr/bin/nvidia-smi`, `/usr/bin/nvidia-ctk`,
///   `/usr/bin/nvidia-cdi-hook`, `/usr/bin/nvme` added.
///
/// Talos matches them with `strings.HasPrefix` (so `/usr/localx` passes there); edgeimage
/// matches whole path components (see [`under`]).
pub fn allowed_paths(talos: &TalosVersion) -> Vec<&'static str> {
    let m = talos.minor;
    let mut v = vec!["etc/cri/conf.d"];
    if m >= 10 {
        v.extend([
            "usr/lib/firmware",
            "usr/lib/modules",
            "usr/lib/ld-linux-x86-64.so.2",
        ]);
        if m >= 12 {
            v.push("usr/lib/ld-linux-aarch64.so.1");
        }
        v.push("usr/bin/ldconfig");
        if m >= 13 {
            v.extend([
                "etc/ld.so.conf",
                "etc/ld.so.cache",
                "usr/bin/nvidia-modprobe",
                "usr/bin/nvidia-pcc",
                "usr/bin/nvidia-smi",
                "usr/bin/nvidia-ctk",
                "usr/bin/nvidia-cdi-hook",
                "usr/bin/nvme",
            ]);
        }
    } else {
        v.extend(["lib/firmware", "lib/modules", "lib64/ld-linux-x86-64.so.2"]);
        if m >= 9 {
            v.push("sbin/ldconfig");
        }
    }
    v.push(if m >= 9 {
        "usr/lib/udev/rules.d"
    } else {
        "usr/etc/udev/rules.d"
    });
    v.extend([
        "usr/local",
        "usr/share/glvnd",
        "usr/share/egl",
        "etc/vulkan",
    ]);
    v
}

/// The kernel module tree of `talos`: `usr/lib/modules` from v1.10 (usr merge), `lib/modules`
/// before.
pub fn modules_root(talos: &TalosVersion) -> &'static str {
    if usr_merged(talos) {
        "usr/lib/modules"
    } else {
        "lib/modules"
    }
}

fn usr_merged(talos: &TalosVersion) -> bool {
    (talos.major, talos.minor) >= (1, 10)
}

/// `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

/// Collects problems for one place ("manifest.yaml", "rootfs/…").
struct Sink<'a> {
    path: String,
    out: &'a mut Vec<Problem>,
}

impl Sink<'_> {
    fn add(&mut self, rule: impl Into<String>) {
        self.out.push(Problem {
            path: self.path.clone(),
            rule: rule.into(),
        });
    }
}

/// Validate a read extension tree (`manifest.yaml`, `rootfs/…`) for `talos`. `problems` are
/// those found while reading it; they are reported first.
pub(crate) fn validate(
    origin: &str,
    sha256: &str,
    tree: Tree,
    mut problems: Vec<Problem>,
    talos: &TalosVersion,
) -> Result<Extension> {
    // Top level.
    let tops: BTreeSet<&str> = tree
        .entries
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for t in &tops {
        if *t != "manifest.yaml" && *t != "rootfs" {
            problems.push(Problem {
                path: (*t).to_string(),
                rule: "only `manifest.yaml` and `rootfs/` may be at the top of an extension".into(),
            });
        }
    }
    let mut metadata = None;
    {
        let mut sink = Sink {
            path: "manifest.yaml".into(),
            out: &mut problems,
        };
        match tree.entries.get("manifest.yaml").map(|n| &n.kind) {
            None => sink.add("missing"),
            Some(NodeKind::File(l)) if l.len() > MAX_YAML => {
                sink.add(format!("larger than {MAX_YAML} bytes"))
            }
            Some(NodeKind::File(l)) => match l.to_vec() {
                Ok(bytes) => metadata = parse_manifest(&bytes, talos, &mut sink),
                Err(e) => sink.add(format!("cannot be read: {e}")),
            },
            Some(k) => sink.add(format!("must be a regular file, not a {}", k.describe())),
        }
    }
    match tree.entries.get("rootfs").map(|n| &n.kind) {
        Some(NodeKind::Dir) => {}
        None if tops.contains("rootfs") => {}
        None => problems.push(Problem {
            path: "rootfs/".into(),
            rule: "missing".into(),
        }),
        Some(k) => problems.push(Problem {
            path: "rootfs".into(),
            rule: format!("must be a directory, not a {}", k.describe()),
        }),
    }
    let rootfs = tree.subtree("rootfs");
    check_rootfs(&rootfs, talos, &mut problems);
    check_services(&rootfs, &mut problems);

    if !problems.is_empty() {
        let n = problems.len();
        let mut msg = format!(
            "extension {origin} is refused ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        );
        for p in &problems {
            msg.push_str(&format!("\n  {origin}: {}: {}", p.path, p.rule));
        }
        bail!(msg);
    }
    let Some(metadata) = metadata else {
        bail!("extension {origin}: manifest.yaml: no metadata");
    };
    Ok(Extension {
        metadata,
        origin: origin.to_string(),
        sha256: sha256.to_string(),
        rootfs,
    })
}

// ---------------------------------------------------------------------------------------------
// YAML helpers
// ---------------------------------------------------------------------------------------------

fn parse_yaml(bytes: &[u8], sink: &mut Sink) -> Option<Mapping> {
    if let Err(e) = crate::format::yaml::check_depth(bytes, crate::format::yaml::MAX_DEPTH) {
        sink.add(&e);
        return None;
    }
    match serde_norway::from_slice::<Value>(bytes) {
        Ok(Value::Mapping(m)) => Some(m),
        Ok(Value::Null) => {
            sink.add("is empty");
            None
        }
        Ok(_) => {
            sink.add("must be a YAML mapping");
            None
        }
        Err(e) => {
            sink.add(format!("is not valid YAML: {e}"));
            None
        }
    }
}

fn check_keys(m: &Mapping, allowed: &[&str], at: &str, sink: &mut Sink) {
    for k in m.keys() {
        match k.as_str() {
            Some(k) if allowed.contains(&k) => {}
            Some(k) => sink.add(format!(
                "{at}{k}: unknown field (allowed here: {})",
                allowed.join(", ")
            )),
            None => sink.add(format!("{at}: a key is not a string")),
        }
    }
}

/// A string field; `None` when absent/null (a problem if `required`) or of another type.
fn get_str(m: &Mapping, key: &str, at: &str, required: bool, sink: &mut Sink) -> Option<String> {
    match m.get(key) {
        None | Some(Value::Null) => {
            if required {
                sink.add(format!("{at}{key}: required"));
            }
            None
        }
        Some(Value::String(s)) => {
            if required && s.is_empty() {
                sink.add(format!("{at}{key}: must not be empty"));
            }
            Some(s.clone())
        }
        Some(_) => {
            sink.add(format!("{at}{key}: must be a string (quote it)"));
            None
        }
    }
}

fn get_map<'m>(m: &'m Mapping, key: &str, at: &str, sink: &mut Sink) -> Option<&'m Mapping> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(x)) => Some(x),
        Some(_) => {
            sink.add(format!("{at}{key}: must be a mapping"));
            None
        }
    }
}

fn get_bool(m: &Mapping, key: &str, at: &str, sink: &mut Sink) -> Option<bool> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            sink.add(format!("{at}{key}: must be true or false"));
            None
        }
    }
}

fn get_str_list(m: &Mapping, key: &str, at: &str, sink: &mut Sink) -> Option<Vec<String>> {
    match m.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Sequence(items)) => {
            let mut v = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match it {
                    Value::String(s) => v.push(s.clone()),
                    _ => sink.add(format!("{at}{key}[{i}]: must be a string (quote it)")),
                }
            }
            Some(v)
        }
        Some(_) => {
            sink.add(format!("{at}{key}: must be a list of strings"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

fn valid_extension_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// The manifest's scalars as their text: Talos decodes `manifest.yaml` into Go string fields
/// (`pkg/machinery/extensions/metadata.go`), and its YAML decoder (`yaml.v3`, `yaml/v4`) puts
/// any plain scalar there as written, so `version: 1.20` is the string "1.20", not a number.
/// serde_norway does the same for `String` targets.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct ScalarText {
    metadata: Option<MetadataText>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct MetadataText {
    name: Option<String>,
    version: Option<String>,
    author: Option<String>,
    description: Option<String>,
    extra_info: Option<String>,
}

/// A metadata field that Talos reads as text: a YAML string, or a number or boolean taken as
/// written ([`ScalarText`]).
fn get_text(
    m: &Mapping,
    key: &str,
    text: Option<&String>,
    required: bool,
    sink: &mut Sink,
) -> Option<String> {
    let at = "metadata.";
    match (m.get(key), text) {
        (Some(Value::Number(_) | Value::Bool(_)), Some(t)) => Some(t.clone()),
        (Some(Value::Number(_) | Value::Bool(_)), None) => {
            sink.add(format!("{at}{key}: must be a string (quote it)"));
            None
        }
        _ => get_str(m, key, at, required, sink),
    }
}

fn parse_manifest(bytes: &[u8], talos: &TalosVersion, sink: &mut Sink) -> Option<Metadata> {
    let m = parse_yaml(bytes, sink)?;
    let text = serde_norway::from_slice::<ScalarText>(bytes)
        .ok()
        .and_then(|t| t.metadata)
        .unwrap_or_default();
    check_keys(&m, &["version", "metadata"], "", sink);
    match m.get("version") {
        Some(Value::String(s)) if s == "v1alpha1" => {}
        None | Some(Value::Null) => sink.add("version: required, must be \"v1alpha1\""),
        Some(Value::String(s)) => sink.add(format!(
            "version: unsupported manifest version {s:?} (must be \"v1alpha1\")"
        )),
        Some(_) => sink.add("version: must be the string \"v1alpha1\""),
    }
    let Some(md) = get_map(&m, "metadata", "", sink) else {
        if !matches!(m.get("metadata"), Some(v) if !v.is_null()) {
            sink.add("metadata: required");
        }
        return None;
    };
    let at = "metadata.";
    check_keys(
        md,
        &[
            "name",
            "version",
            "author",
            "description",
            "compatibility",
            "extraInfo",
        ],
        at,
        sink,
    );
    let name = get_text(md, "name", text.name.as_ref(), true, sink);
    if let Some(n) = &name {
        // Talos accepts any name; this stricter rule keeps names safe in file names and logs.
        if !n.is_empty() && !valid_extension_name(n) {
            sink.add(format!(
                "metadata.name: {n:?} must match ^[a-z0-9][a-z0-9._-]*$"
            ));
        }
    }
    let version = get_text(md, "version", text.version.as_ref(), true, sink);
    let author = get_text(md, "author", text.author.as_ref(), true, sink);
    let description = get_text(md, "description", text.description.as_ref(), true, sink);
    let extra_info = get_text(md, "extraInfo", text.extra_info.as_ref(), false, sink);
    let mut compatibility = None;
    if let Some(c) = get_map(md, "compatibility", at, sink) {
        check_keys(c, &["talos"], "metadata.compatibility.", sink);
        if let Some(t) = get_map(c, "talos", "metadata.compatibility.", sink) {
            check_keys(t, &["version"], "metadata.compatibility.talos.", sink);
            compatibility = get_str(t, "version", "metadata.compatibility.talos.", false, sink);
        }
    }
    let compatibility = compatibility.filter(|c| !c.is_empty());
    if let Some(c) = &compatibility {
        match talos_compatible(c, talos) {
            Ok(true) => {}
            Ok(false) => sink.add(format!(
                "metadata.compatibility.talos.version: the range {c:?} excludes Talos {} \
                 (checked as {}.{}.{})",
                talos.tag, talos.major, talos.minor, talos.patch
            )),
            Err(e) => sink.add(format!(
                "metadata.compatibility.talos.version: {c:?} is not a valid version range: {e}"
            )),
        }
    }
    Some(Metadata {
        name: name?,
        version: version?,
        author: author?,
        description: description?,
        compatibility,
        extra_info: extra_info.filter(|s| !s.is_empty()),
    })
}

// ---------------------------------------------------------------------------------------------
// rootfs contents
// ---------------------------------------------------------------------------------------------

/// Resolve a symlink target lexically: relative to the link's directory, or absolute against
/// the rootfs root (the layer is mounted at `/`). `None` when it climbs above the root.
fn resolve_link(link: &str, target: &str) -> Option<String> {
    crate::tree::resolve_within(crate::tree::parent_of(link), target)
}

fn check_rootfs(rootfs: &Tree, talos: &TalosVersion, problems: &mut Vec<Problem>) {
    let allowed = allowed_paths(talos);
    let is_allowed = |p: &str| allowed.iter().any(|a| under(p, a));
    // A directory on the way to an allowed path (`lib64` for `/lib64/ld-linux-x86-64.so.2`).
    let leads_to_allowed = |p: &str| allowed.iter().any(|a| under(a, p));
    let allowed_list = allowed
        .iter()
        .map(|a| format!("/{a}"))
        .collect::<Vec<_>>()
        .join(", ");
    for (p, node) in &rootfs.entries {
        let mut sink = Sink {
            path: format!("rootfs/{p}"),
            out: problems,
        };
        if let Some(f) = FORBIDDEN.iter().find(|f| under(p, f)) {
            let exempt = match node.kind {
                NodeKind::Dir => leads_to_allowed(p) || is_allowed(p),
                _ => is_allowed(p),
            };
            if !exempt {
                sink.add(format!(
                    "nothing may be under /{f}: that tree belongs to Talos itself"
                ));
                continue;
            }
        }
        let world_writable = node.mode & 0o002 != 0;
        match &node.kind {
            NodeKind::Dir => {
                if p == "lib" && usr_merged(talos) {
                    sink.add(format!(
                        "Talos {} has a merged /usr (/lib is a symlink to /usr/lib): a lib \
                         directory would hide it; use usr/lib/…",
                        talos.tag
                    ));
                }
                if world_writable {
                    sink.add(format!("world-writable directory (mode {:04o})", node.mode));
                }
            }
            NodeKind::File(_) | NodeKind::Symlink(_) => {
                if !is_allowed(p) {
                    sink.add(format!(
                        "not an allowed path: on Talos {} an extension may hold files and \
                         symlinks only under {allowed_list}",
                        talos.tag
                    ));
                }
                if let NodeKind::Symlink(t) = &node.kind {
                    match resolve_link(p, t) {
                        _ if t.is_empty() => sink.add("symlink with an empty target"),
                        None => sink.add(format!(
                            "symlink target {t:?} escapes the extension's rootfs"
                        )),
                        Some(r) if !is_allowed(&r) => sink.add(format!(
                            "symlink target {t:?} resolves to /{r}, outside the paths an \
                             extension may provide (the layer is mounted at /, so it would \
                             point into the host system)"
                        )),
                        Some(_) => {}
                    }
                } else if world_writable {
                    sink.add(format!("world-writable file (mode {:04o})", node.mode));
                }
            }
            NodeKind::Hardlink(t) => sink.add(format!(
                "hard link to {t:?}, which is not a regular file of the extension"
            )),
            k => sink.add(format!(
                "special files are not allowed (this is a {})",
                k.describe()
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extension services
// ---------------------------------------------------------------------------------------------

const SERVICE_DIR: &str = "usr/local/etc/containers";
const CONTAINER_DIR: &str = "usr/local/lib/containers";
const NETWORK_STATUSES: [&str; 4] = ["addresses", "connectivity", "hostname", "etcfiles"];
const DEPENDENCY_KEYS: [&str; 5] = ["service", "path", "network", "time", "configuration"];

fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

fn check_services(rootfs: &Tree, problems: &mut Vec<Problem>) {
    let prefix = format!("{SERVICE_DIR}/");
    for (p, node) in rootfs.entries.range(prefix.clone()..) {
        let Some(file) = p.strip_prefix(&prefix) else {
            break;
        };
        let Some(stem) = file.strip_suffix(".yaml") else {
            continue;
        };
        if stem.contains('/') {
            continue;
        }
        let mut sink = Sink {
            path: format!("rootfs/{p}"),
            out: problems,
        };
        match &node.kind {
            NodeKind::File(l) if l.len() <= MAX_YAML => match l.to_vec() {
                Ok(bytes) => check_service(stem, &bytes, rootfs, &mut sink),
                Err(e) => sink.add(format!("cannot be read: {e}")),
            },
            NodeKind::File(_) => sink.add(format!("larger than {MAX_YAML} bytes")),
            k => sink.add(format!(
                "a service definition must be a regular file, not a {}",
                k.describe()
            )),
        }
    }
}

fn check_service(stem: &str, bytes: &[u8], rootfs: &Tree, sink: &mut Sink) {
    let Some(m) = parse_yaml(bytes, sink) else {
        return;
    };
    check_keys(
        &m,
        &["name", "container", "depends", "restart", "logToConsole"],
        "",
        sink,
    );
    if let Some(n) = get_str(&m, "name", "", true, sink) {
        if !valid_service_name(&n) {
            sink.add(format!("name: {n:?} must match ^[-_a-z0-9]+$"));
        } else if n != stem {
            sink.add(format!(
                "name: {n:?} must equal the file name's stem {stem:?}"
            ));
        }
    }
    match get_map(&m, "container", "", sink) {
        None => {
            if !matches!(m.get("container"), Some(v) if !v.is_null()) {
                sink.add("container: required");
            }
        }
        Some(c) => check_container(stem, c, rootfs, sink),
    }
    match m.get("depends") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, it) in items.iter().enumerate() {
                check_dependency(&format!("depends[{i}]"), it, sink);
            }
        }
        Some(_) => sink.add("depends: must be a list"),
    }
    match m.get("restart") {
        None | Some(Value::Null) => sink.add("restart: required (always, never or untilSuccess)"),
        Some(Value::String(s)) if ["always", "never", "untilSuccess"].contains(&s.as_str()) => {}
        Some(v) => sink.add(format!(
            "restart: {} is not one of always, never, untilSuccess",
            serde_norway::to_string(v).unwrap_or_default().trim_end()
        )),
    }
    get_bool(&m, "logToConsole", "", sink);
}

fn check_container(stem: &str, c: &Mapping, rootfs: &Tree, sink: &mut Sink) {
    let at = "container.";
    check_keys(
        c,
        &[
            "entrypoint",
            "environment",
            "environmentFile",
            "args",
            "mounts",
            "security",
        ],
        at,
        sink,
    );
    if let Some(ep) = get_str(c, "entrypoint", at, true, sink).filter(|e| !e.is_empty()) {
        let root = format!("{CONTAINER_DIR}/{stem}");
        match normalize(&ep).filter(|n| !n.is_empty()) {
            None => sink.add(format!(
                "container.entrypoint: {ep:?} does not name a file inside the container root \
                 rootfs/{root}/"
            )),
            Some(rel) => {
                let full = format!("{root}/{rel}");
                match rootfs.entries.get(&full).map(|n| (&n.kind, n.mode)) {
                    None => sink.add(format!(
                        "container.entrypoint: {ep:?} is missing: no file rootfs/{full}"
                    )),
                    Some((NodeKind::File(_), mode)) if mode & 0o111 == 0 => sink.add(format!(
                        "container.entrypoint: rootfs/{full} is not executable (mode {mode:04o})"
                    )),
                    Some((NodeKind::File(_), _)) => {}
                    Some((k, _)) => sink.add(format!(
                        "container.entrypoint: rootfs/{full} must be a regular file, not a {}",
                        k.describe()
                    )),
                }
            }
        }
    }
    get_str_list(c, "environment", at, sink);
    get_str(c, "environmentFile", at, false, sink);
    get_str_list(c, "args", at, sink);
    match c.get("mounts") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, it) in items.iter().enumerate() {
                let at = format!("container.mounts[{i}].");
                let Value::Mapping(mm) = it else {
                    sink.add(format!("container.mounts[{i}]: must be a mapping"));
                    continue;
                };
                // specs.Mount of the OCI runtime spec.
                check_keys(
                    mm,
                    &[
                        "destination",
                        "type",
                        "source",
                        "options",
                        "uidMappings",
                        "gidMappings",
                    ],
                    &at,
                    sink,
                );
                get_str(mm, "destination", &at, true, sink);
                get_str(mm, "type", &at, false, sink);
                get_str(mm, "source", &at, false, sink);
                get_str_list(mm, "options", &at, sink);
            }
        }
        Some(_) => sink.add("container.mounts: must be a list"),
    }
    if let Some(s) = get_map(c, "security", at, sink) {
        let at = "container.security.";
        check_keys(
            s,
            &[
                "writeableSysfs",
                "maskedPaths",
                "readonlyPaths",
                "writeableRootfs",
                "rootfsPropagation",
            ],
            at,
            sink,
        );
        get_bool(s, "writeableSysfs", at, sink);
        get_str_list(s, "maskedPaths", at, sink);
        get_str_list(s, "readonlyPaths", at, sink);
        get_bool(s, "writeableRootfs", at, sink);
        get_str(s, "rootfsPropagation", at, false, sink);
    }
}

fn check_dependency(at: &str, it: &Value, sink: &mut Sink) {
    let Value::Mapping(d) = it else {
        sink.add(format!("{at}: must be a mapping"));
        return;
    };
    check_keys(d, &DEPENDENCY_KEYS, &format!("{at}."), sink);
    let set: Vec<&str> = DEPENDENCY_KEYS
        .iter()
        .copied()
        .filter(|k| d.contains_key(*k))
        .collect();
    match set.as_slice() {
        [] => sink.add(format!(
            "{at}: no dependency specified (set one of service, path, network, time, \
             configuration)"
        )),
        [key] => {
            let v = &d[*key];
            let ok = match *key {
                "service" => matches!(v, Value::String(s) if !s.is_empty()),
                "path" => match v {
                    Value::String(s) if s.starts_with('/') => true,
                    Value::String(s) => {
                        sink.add(format!("{at}.path: {s:?} is not absolute"));
                        return;
                    }
                    _ => false,
                },
                "network" => match v {
                    Value::Sequence(xs) if !xs.is_empty() => {
                        for x in xs {
                            match x.as_str() {
                                Some(s) if NETWORK_STATUSES.contains(&s) => {}
                                _ => sink.add(format!(
                                    "{at}.network: {} is not one of {}",
                                    serde_norway::to_string(x).unwrap_or_default().trim_end(),
                                    NETWORK_STATUSES.join(", ")
                                )),
                            }
                        }
                        true
                    }
                    _ => false,
                },
                _ => matches!(v, Value::Bool(true)),
            };
            if !ok {
                sink.add(format!(
                    "{at}.{key}: must be {}",
                    match *key {
                        "service" => "a non-empty service name",
                        "path" => "an absolute path",
                        "network" => "a non-empty list of network statuses",
                        _ => "true (false sets no dependency)",
                    }
                ));
            }
        }
        keys => sink.add(format!(
            "{at}: sets {}: each item must set exactly one of service, path, network, time, \
             configuration",
            keys.join(" and ")
        )),
    }
}
