//! Talos machine configuration: loaded, patched, checked the way Talos checks it at boot.
//!
//! A configuration is multi-document YAML. The main document has `version: v1alpha1`; every
//! other document has `apiVersion: v1alpha1` and a `kind` (`ExtensionServiceConfig`,
//! `HostnameConfig`, …). The checks mirror what Talos's `v1alpha1_validation.go` rejects
//! (`Config.Validate`, `ClusterConfig.Validate`) plus what a node needs to join a cluster
//! (`machine.token`, the cluster CA of a control plane node). Values are never quoted in
//! errors: they contain private keys and tokens.
//!
//! Patches (`talosctl --config-patch` style), applied in order:
//! - a YAML/JSON list of `{op, path, value}`: an RFC 6902 JSON patch of the v1alpha1
//!   document;
//! - mappings: RFC 7396 merge patches. A document with `apiVersion`/`kind` merges into the
//!   document of the same `kind` (and `name`, if it has one) or is added; any other mapping
//!   merges into the v1alpha1 document. (Talos's own strategic merge appends lists and knows
//!   `$patch: delete`; RFC 7396 replaces lists and deletes with `null`.)
//!
//! Unpatched configurations keep their exact bytes; patched ones are re-serialized (keys
//! sorted, documents joined with `---`).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{parse_yaml_documents, type_name};

/// `machine.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    ControlPlane,
    Worker,
    /// Legacy: the first control plane node, which bootstraps etcd.
    Init,
}

impl MachineType {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::ControlPlane => "controlplane",
            MachineType::Worker => "worker",
            MachineType::Init => "init",
        }
    }

    pub fn is_control_plane(self) -> bool {
        self != MachineType::Worker
    }
}

/// Fields of a configuration that are not secret, for `inspect` and build reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConfigInfo {
    /// `cluster.clusterName`.
    pub cluster_name: Option<String>,
    /// `cluster.controlPlane.endpoint`.
    pub control_plane_endpoint: Option<String>,
    /// `machine.network.hostname`, or `hostname` of a `HostnameConfig` document.
    pub hostname: Option<String>,
    /// `machine.install.disk`.
    pub install_disk: Option<String>,
    /// `kind` of every document besides the v1alpha1 one, in order.
    pub other_documents: Vec<String>,
    /// What decides which container images the node pulls (not shown by `inspect`).
    #[serde(skip)]
    pub images: ImageSettings,
}

/// The fields that decide which container images a node pulls, and whether it may take them
/// from its local image cache. Field names are Talos v1alpha1's; the Talos functions that read
/// them are cited where they are used ([`crate::imagecache::required`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSettings {
    /// `machine.kubelet.image`.
    pub kubelet: Option<String>,
    /// `cluster.etcd.image`.
    pub etcd: Option<String>,
    /// `cluster.apiServer.image`.
    pub api_server: Option<String>,
    /// `cluster.controllerManager.image`.
    pub controller_manager: Option<String>,
    /// `cluster.scheduler.image`.
    pub scheduler: Option<String>,
    /// `cluster.proxy.image`.
    pub proxy: Option<String>,
    /// `cluster.proxy.disabled`.
    pub proxy_disabled: bool,
    /// `cluster.coreDNS.image`.
    pub coredns: Option<String>,
    /// `cluster.coreDNS.disabled`.
    pub coredns_disabled: bool,
    /// `cluster.network.cni.name` (`flannel` when absent).
    pub cni: Option<String>,
    /// `machine.install.image`.
    pub install_image: Option<String>,
    /// `machine.controlPlane.controllerManager.disabled`.
    pub controller_manager_disabled: bool,
    /// `machine.controlPlane.scheduler.disabled`.
    pub scheduler_disabled: bool,
    /// `machine.features.imageCache.localEnabled`.
    pub cache_local_enabled: bool,
    /// `local.enabled` of an `ImageCacheConfig` document (Talos 1.14), when there is one.
    pub cache_config_document: Option<bool>,
    /// Whether a `VolumeConfig` document named `IMAGECACHE` is present.
    pub cache_volume: bool,
    /// Its `provisioning.grow`.
    pub cache_volume_grow: bool,
}

/// A checked machine configuration. Its bytes are secret: `Debug` prints the digest and the
/// machine type only, and the buffer is zeroed when dropped.
pub struct MachineConfig {
    bytes: Vec<u8>,
    sha256: String,
    machine_type: MachineType,
    patched: bool,
    info: ConfigInfo,
}

impl MachineConfig {
    /// Check configuration bytes (from a file, or a schematic's
    /// `embeddedMachineConfiguration`); `origin` names them in errors.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<Self> {
        match parse(&bytes, origin) {
            Ok(docs) => Self::finish(bytes, &docs, origin, false),
            Err(e) => {
                zero(bytes);
                Err(e)
            }
        }
    }

    fn finish(bytes: Vec<u8>, docs: &[Value], origin: &str, patched: bool) -> Result<Self> {
        let checked = check_documents(docs, origin)
            .and_then(|main| Ok((main, check_v1alpha1(&docs[main], origin)?)));
        let (main, machine_type) = match checked {
            Ok(x) => x,
            Err(e) => {
                zero(bytes);
                return Err(e);
            }
        };
        let info = info(docs, main);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Self {
            bytes,
            sha256,
            machine_type,
            patched,
            info,
        })
    }

    /// The configuration as delivered to the node.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lowercase hex SHA-256 of [`MachineConfig::bytes`].
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn machine_type(&self) -> MachineType {
        self.machine_type
    }

    /// Whether patches changed it (then the bytes are re-serialized YAML).
    pub fn patched(&self) -> bool {
        self.patched
    }

    pub fn info(&self) -> &ConfigInfo {
        &self.info
    }
}

impl fmt::Debug for MachineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineConfig")
            .field("sha256", &self.sha256)
            .field("type", &self.machine_type)
            .field("len", &self.bytes.len())
            .field("patched", &self.patched)
            .finish_non_exhaustive()
    }
}

impl Drop for MachineConfig {
    fn drop(&mut self) {
        for b in self.bytes.iter_mut() {
            // Volatile so the zeroing is not optimized away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// Load the configuration at `path`, apply `patches` in order, and check the result.
pub fn load(path: &Path, patches: &[PathBuf]) -> Result<MachineConfig> {
    let origin = format!("machine config {}", path.display());
    let bytes = crate::input::read(path, crate::input::Kind::MachineConfig)?;
    if patches.is_empty() {
        return MachineConfig::from_bytes(bytes, &origin);
    }
    let mut docs = parse(&bytes, &origin)?;
    zero(bytes);
    // The shape of the documents must be known before patches can target them.
    check_documents(&docs, &origin)?;
    for p in patches {
        apply_patch_file(&mut docs, p)?;
    }
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let s = serde_norway::to_string(d).map_err(|_| {
            anyhow::anyhow!("{origin}: the patched document {} cannot be written", i + 1)
        })?;
        out.push_str(&s);
    }
    let origin = format!("{origin} (after {} patch(es))", patches.len());
    MachineConfig::finish(out.into_bytes(), &docs, &origin, true)
}

fn zero(mut v: Vec<u8>) {
    for b in v.iter_mut() {
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

fn parse(bytes: &[u8], origin: &str) -> Result<Vec<Value>> {
    let docs = parse_yaml_documents(bytes).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    if docs.is_empty() {
        bail!("{origin}: no YAML documents");
    }
    Ok(docs)
}

/// Check every document's header; returns the index of the v1alpha1 document.
fn check_documents(docs: &[Value], origin: &str) -> Result<usize> {
    let mut main = None;
    for (i, d) in docs.iter().enumerate() {
        let n = i + 1;
        let Value::Object(m) = d else {
            bail!(
                "{origin}: document {n} is {}, expected a mapping",
                type_name(d)
            );
        };
        if let Some(v) = m.get("version") {
            if v.as_str() != Some("v1alpha1") {
                bail!("{origin}: document {n}: field `version` must be \"v1alpha1\"");
            }
            if main.is_some() {
                bail!("{origin}: document {n}: a second `version: v1alpha1` document");
            }
            main = Some(i);
            continue;
        }
        match m.get("apiVersion") {
            Some(Value::String(s)) if s == "v1alpha1" => {}
            Some(_) => bail!("{origin}: document {n}: field `apiVersion` must be \"v1alpha1\""),
            None => bail!(
                "{origin}: document {n} has neither `version: v1alpha1` (the main document) \
                 nor `apiVersion` and `kind`"
            ),
        }
        match m.get("kind") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => bail!("{origin}: document {n}: field `kind` is required (a non-empty string)"),
        }
    }
    main.ok_or_else(|| {
        anyhow::anyhow!("{origin}: no `version: v1alpha1` document (the one with `machine.type`)")
    })
}

/// Value at a dotted path, if every step is a mapping.
fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.as_object()?.get(k))
}

fn nonempty_str(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(s)) if !s.is_empty())
}

/// Talos's checks of the v1alpha1 document.
fn check_v1alpha1(doc: &Value, origin: &str) -> Result<MachineType> {
    let field = |path: &str, rule: &str| -> anyhow::Error {
        anyhow::anyhow!("{origin}: field `{path}`: {rule}")
    };
    let mapping = |path: &str| -> Result<Option<&Map<String, Value>>> {
        match get(doc, path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(field(
                path,
                &format!("is {}, expected a mapping", type_name(v)),
            )),
        }
    };
    if mapping("machine")?.is_none() {
        return Err(field("machine", "required (machine instructions)"));
    }
    let t = match get(doc, "machine.type") {
        Some(Value::String(s)) => match s.as_str() {
            "controlplane" => MachineType::ControlPlane,
            "worker" => MachineType::Worker,
            "init" => MachineType::Init,
            _ => {
                return Err(field(
                    "machine.type",
                    "unknown machine type (expected controlplane, worker or init)",
                ))
            }
        },
        None | Some(Value::Null) => {
            return Err(field(
                "machine.type",
                "required (controlplane, worker or init)",
            ))
        }
        Some(v) => {
            return Err(field(
                "machine.type",
                &format!("is {}, expected a string", type_name(v)),
            ))
        }
    };
    if !nonempty_str(get(doc, "machine.token")) {
        return Err(field(
            "machine.token",
            "required (a non-empty string: the token nodes use to join)",
        ));
    }
    // The machine CA: the Talos API's issuing CA, or accepted CAs.
    let ca = mapping("machine.ca")?;
    let accepted =
        matches!(get(doc, "machine.acceptedCAs"), Some(Value::Array(a)) if !a.is_empty());
    if ca.is_none() && !accepted {
        return Err(field(
            "machine.ca",
            "issuing CA or some accepted CAs are required (machine.ca, machine.acceptedCAs)",
        ));
    }
    check_pem_pair(doc, "machine.ca", origin)?;
    let ca_key = nonempty_str(get(doc, "machine.ca.key"));
    let ca_crt = nonempty_str(get(doc, "machine.ca.crt"));
    if t.is_control_plane() {
        if !ca_crt {
            return Err(field(
                "machine.ca.crt",
                "issuing CA is required (machine.ca)",
            ));
        }
        if !ca_key {
            return Err(field(
                "machine.ca.key",
                "issuing CA key is required for controlplane nodes",
            ));
        }
    } else {
        if ca_key {
            return Err(field(
                "machine.ca.key",
                "issuing Talos API CA key is not allowed on non-controlplane nodes",
            ));
        }
        if ca.is_some() && !ca_crt && !accepted {
            return Err(field(
                "machine.ca.crt",
                "trusted CA certificates are required on non-controlplane nodes \
                 (machine.ca.crt, machine.acceptedCAs)",
            ));
        }
    }
    if mapping("cluster")?.is_none() {
        return Err(field("cluster", "required (cluster instructions)"));
    }
    mapping("cluster.controlPlane")?;
    match get(doc, "cluster.controlPlane.endpoint") {
        None | Some(Value::Null) => {
            return Err(field(
                "cluster.controlPlane.endpoint",
                "cluster controlplane endpoint is required",
            ))
        }
        Some(Value::String(s)) if valid_endpoint(s) => {}
        Some(_) => {
            return Err(field(
                "cluster.controlPlane.endpoint",
                "invalid controlplane endpoint: expected an http:// or https:// URL with a host",
            ))
        }
    }
    mapping("cluster.ca")?;
    check_pem_pair(doc, "cluster.ca", origin)?;
    if t.is_control_plane() {
        for part in ["crt", "key"] {
            if !nonempty_str(get(doc, &format!("cluster.ca.{part}"))) {
                return Err(field(
                    &format!("cluster.ca.{part}"),
                    "the Kubernetes cluster CA certificate and key are required on controlplane nodes",
                ));
            }
        }
    } else {
        if nonempty_str(get(doc, "cluster.ca.key")) {
            return Err(field(
                "cluster.ca.key",
                "cluster CA key is not allowed on non-controlplane nodes",
            ));
        }
        if get(doc, "cluster.etcd").is_some_and(|v| !v.is_null()) {
            return Err(field(
                "cluster.etcd",
                "etcd config is only allowed on control plane machines",
            ));
        }
    }
    if get(doc, "persist") == Some(&Value::Bool(false)) {
        return Err(field("persist", "should be enabled"));
    }
    for (path, want) in [
        ("machine.install.disk", "a string"),
        ("cluster.clusterName", "a string"),
        ("machine.network.hostname", "a string"),
    ] {
        if let Some(v) = get(doc, path) {
            if !v.is_string() && !v.is_null() {
                return Err(field(
                    path,
                    &format!("is {}, expected {want}", type_name(v)),
                ));
            }
        }
    }
    Ok(t)
}

/// `crt` and `key` of a CA, when present, are base64 (of PEM) as Talos decodes them.
fn check_pem_pair(doc: &Value, base: &str, origin: &str) -> Result<()> {
    for part in ["crt", "key"] {
        let path = format!("{base}.{part}");
        match get(doc, &path) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok();
                let pem = decoded
                    .as_deref()
                    .is_some_and(|d| d.windows(11).any(|w| w == b"-----BEGIN "));
                if !s.is_empty() && !pem {
                    bail!("{origin}: field `{path}`: not base64-encoded PEM");
                }
            }
            Some(v) => bail!(
                "{origin}: field `{path}`: is {}, expected a string",
                type_name(v)
            ),
        }
    }
    Ok(())
}

fn valid_endpoint(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.starts_with(':') && !host.contains(char::is_whitespace)
    })
}

fn info(docs: &[Value], main: usize) -> ConfigInfo {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let d = &docs[main];
    let mut info = ConfigInfo {
        cluster_name: s(get(d, "cluster.clusterName")),
        control_plane_endpoint: s(get(d, "cluster.controlPlane.endpoint")),
        hostname: s(get(d, "machine.network.hostname")),
        install_disk: s(get(d, "machine.install.disk")),
        other_documents: Vec::new(),
        images: ImageSettings::default(),
    };
    let b = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
    let nonempty = |v: Option<&Value>| s(v).filter(|x| !x.is_empty());
    info.images = ImageSettings {
        kubelet: nonempty(get(d, "machine.kubelet.image")),
        etcd: nonempty(get(d, "cluster.etcd.image")),
        api_server: nonempty(get(d, "cluster.apiServer.image")),
        controller_manager: nonempty(get(d, "cluster.controllerManager.image")),
        scheduler: nonempty(get(d, "cluster.scheduler.image")),
        proxy: nonempty(get(d, "cluster.proxy.image")),
        proxy_disabled: b(get(d, "cluster.proxy.disabled")),
        coredns: nonempty(get(d, "cluster.coreDNS.image")),
        coredns_disabled: b(get(d, "cluster.coreDNS.disabled")),
        cni: nonempty(get(d, "cluster.network.cni.name")),
        install_image: nonempty(get(d, "machine.install.image")),
        controller_manager_disabled: b(get(d, "machine.controlPlane.controllerManager.disabled")),
        scheduler_disabled: b(get(d, "machine.controlPlane.scheduler.disabled")),
        cache_local_enabled: b(get(d, "machine.features.imageCache.localEnabled")),
        cache_config_document: None,
        cache_volume: false,
        cache_volume_grow: false,
    };
    for (i, doc) in docs.iter().enumerate() {
        if i == main {
            continue;
        }
        let kind = s(doc.get("kind")).unwrap_or_default();
        if kind == "HostnameConfig" && info.hostname.is_none() {
            info.hostname = s(doc.get("hostname"));
        }
        if kind == "VolumeConfig" && s(doc.get("name")).as_deref() == Some("IMAGECACHE") {
            info.images.cache_volume = true;
            info.images.cache_volume_grow = b(get(doc, "provisioning.grow"));
        }
        if kind == "ImageCacheConfig" {
            info.images.cache_config_document = Some(b(get(doc, "local.enabled")));
        }
        info.other_documents.push(kind);
    }
    info
}

// ---------------------------------------------------------------------------------------
// Patches

const OPS: [&str; 6] = ["add", "remove", "replace", "move", "copy", "test"];

fn apply_patch_file(docs: &mut Vec<Value>, path: &Path) -> Result<()> {
    let origin = format!("patch {}", path.display());
    let bytes = crate::input::read(path, crate::input::Kind::ConfigPatch)?;
    let patch_docs = parse_yaml_documents(&bytes).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    zero(bytes);
    if patch_docs.is_empty() {
        bail!("{origin}: no YAML documents");
    }
    let main = docs
        .iter()
        .position(|d| d.get("version").is_some())
        .expect("checked before patching");
    if let [Value::Array(ops)] = patch_docs.as_slice() {
        return apply_json_patch(&mut docs[main], ops, &origin);
    }
    for (i, p) in patch_docs.into_iter().enumerate() {
        let n = i + 1;
        let Value::Object(m) = &p else {
            bail!(
                "{origin}: document {n} is {}: a patch is one list of JSON patch operations, \
                 or mappings to merge",
                type_name(&p)
            );
        };
        let kind = m.get("kind").and_then(Value::as_str).map(str::to_string);
        match kind {
            Some(kind) if m.get("version").is_none() => {
                let name = m.get("name").cloned();
                let target = docs.iter().position(|d| {
                    d.get("kind").and_then(Value::as_str) == Some(kind.as_str())
                        && (name.is_none() || d.get("name") == name.as_ref())
                });
                match target {
                    Some(t) => json_patch::merge(&mut docs[t], &p),
                    None => docs.push(p),
                }
            }
            _ => json_patch::merge(&mut docs[main], &p),
        }
    }
    Ok(())
}

fn apply_json_patch(doc: &mut Value, ops: &[Value], origin: &str) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        let Value::Object(m) = op else {
            bail!(
                "{origin}: operation {i} is {}, expected a mapping {{op, path, value}}",
                type_name(op)
            );
        };
        let name = m.get("op").and_then(Value::as_str).unwrap_or("");
        if !OPS.contains(&name) {
            bail!(
                "{origin}: operation {i}: field `op` must be one of {}",
                OPS.join(", ")
            );
        }
        if !m.get("path").is_some_and(Value::is_string) {
            bail!("{origin}: operation {i} ({name}): field `path` is required (a JSON pointer)");
        }
        if matches!(name, "add" | "replace" | "test") && !m.contains_key("value") {
            bail!("{origin}: operation {i} ({name}): field `value` is required");
        }
        if matches!(name, "move" | "copy") && !m.get("from").is_some_and(Value::is_string) {
            bail!("{origin}: operation {i} ({name}): field `from` is required (a JSON pointer)");
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec()))
        .map_err(|_| anyhow::anyhow!("{origin}: not a JSON patch (RFC 6902)"))?;
    json_patch::patch(doc, &patch).map_err(|e| {
        let i = e.operation;
        let (name, ptr) = ops
            .get(i)
            .map(|o| {
                (
                    o["op"].as_str().unwrap_or("?").to_string(),
                    o["path"].as_str().unwrap_or("?").to_string(),
                )
            })
            .unwrap_or_default();
        let why = match e.kind {
            json_patch::PatchErrorKind::TestFailed => "the value does not match".to_string(),
            json_patch::PatchErrorKind::InvalidPointer => {
                "the path does not exist in the v1alpha1 document".to_string()
            }
            _ => "failed".to_string(),
        };
        anyhow::anyhow!("{origin}: operation {i} ({name} at `{ptr}`): {why}")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub use crate::config::fixtures::{b64, controlplane_yaml, worker_yaml, SECRET};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    /// The error message of a failing load; asserts it holds no secret.
    fn err(text: &str, patches: &[&str]) -> String {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(d.path(), "c.yaml", text);
        let ps: Vec<PathBuf> = patches
            .iter()
            .enumerate()
            .map(|(i, t)| write(d.path(), &format!("p{i}.yaml"), t))
            .collect();
        let e = format!("{:#}", load(&cfg, &ps).unwrap_err());
        assert!(
            !e.contains(SECRET) && !e.contains("q7w8e9"),
            "secret leaked: {e}"
        );
        e
    }

    fn ok(text: &str, patches: &[&str]) -> MachineConfig {
        let d = tempfile::tempdir().unwrap();
        let cfg = write(d.path(), "c.yaml", text);
        let ps: Vec<PathBuf> = patches
            .iter()
            .enumerate()
            .map(|(i, t)| write(d.path(), &format!("p{i}.yaml"), t))
            .collect();
        load(&cfg, &ps).unwrap()
    }

    #[test]
    fn loads_unpatched_bytes_unchanged() {
        let text = controlplane_yaml();
        let c = ok(&text, &[]);
        assert_eq!(c.bytes(), text.as_bytes());
        assert_eq!(c.sha256(), hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(c.machine_type(), MachineType::ControlPlane);
        assert!(!c.patched());
        let i = c.info();
        assert_eq!(i.cluster_name.as_deref(), Some("edge"));
        assert_eq!(
            i.control_plane_endpoint.as_deref(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(i.hostname.as_deref(), Some("edge-01"));
        assert_eq!(i.install_disk.as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(i.other_documents, ["ExtensionServiceConfig"]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(SECRET), "{dbg}");
        assert!(
            dbg.contains(c.sha256()) && dbg.contains("ControlPlane"),
            "{dbg}"
        );
        let w = ok(&worker_yaml(), &[]);
        assert_eq!(w.machine_type(), MachineType::Worker);
        assert_eq!(w.info().hostname, None);
    }

    #[test]
    fn merge_and_json_patches() {
        let c = ok(
            &controlplane_yaml(),
            &[
                "machine:\n  network:\n    hostname: edge-02\n  install:\n    disk: null\n",
                "- op: add\n  path: /machine/install/disk\n  value: /dev/sda\n\
                 - op: replace\n  path: /cluster/clusterName\n  value: edge-b\n",
                "apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: ignored-first-wins\n\
                 ---\napiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: edgehostlet\n\
                 environment: [A=B]\n",
                "[{\"op\": \"test\", \"path\": \"/machine/type\", \"value\": \"controlplane\"}]",
            ],
        );
        assert!(c.patched());
        let i = c.info();
        assert_eq!(i.hostname.as_deref(), Some("edge-02"));
        assert_eq!(i.install_disk.as_deref(), Some("/dev/sda"));
        assert_eq!(i.cluster_name.as_deref(), Some("edge-b"));
        assert_eq!(
            i.other_documents,
            ["ExtensionServiceConfig", "HostnameConfig"]
        );
        let text = std::str::from_utf8(c.bytes()).unwrap();
        assert!(text.contains("- A=B") && !text.contains("TOKEN="), "{text}");
        assert_eq!(text.matches("\n---\n").count(), 2, "{text}");
        // Re-serialized output loads again and is stable.
        let again = ok(text, &[]);
        assert_eq!(again.bytes(), c.bytes());
    }

    #[test]
    fn hostile_configs_are_rejected_without_quoting_values() {
        let cp = controlplane_yaml();
        for (text, want) in [
            (
                "machine: [\n".to_string(),
                "document 1 is not valid YAML at line",
            ),
            ("".to_string(), "no YAML documents"),
            (
                "- a\n".to_string(),
                "document 1 is a list, expected a mapping",
            ),
            (
                cp.replace("type: controlplane", "type: SECRETTOKEN.q7w8e9r0t1y2u3i4"),
                "field `machine.type`: unknown machine type",
            ),
            (
                cp.replace("  type: controlplane\n", ""),
                "field `machine.type`: required",
            ),
            (
                cp.replace(&format!("  token: {SECRET}\n"), ""),
                "field `machine.token`: required",
            ),
            (
                cp.replace("endpoint: https://10.0.0.1:6443", "endpoint: 10.0.0.1"),
                "field `cluster.controlPlane.endpoint`: invalid controlplane endpoint",
            ),
            (
                cp.replace("version: v1alpha1\ndebug", "version: v1alpha2\ndebug"),
                "document 1: field `version` must be \"v1alpha1\"",
            ),
            (
                cp.replace("kind: ExtensionServiceConfig\n", ""),
                "document 2: field `kind` is required",
            ),
            (
                cp.replace("apiVersion: v1alpha1\nkind", "apiVersion: v1\nkind"),
                "document 2: field `apiVersion` must be \"v1alpha1\"",
            ),
            (
                "apiVersion: v1alpha1\nkind: HostnameConfig\n".to_string(),
                "no `version: v1alpha1` document",
            ),
            (
                cp.replace(
                    "  clusterName: edge\n  controlPlane:\n    endpoint: https://10.0.0.1:6443\n",
                    "  clusterName: edge\n",
                ),
                "cluster controlplane endpoint is required",
            ),
            (
                worker_yaml().replace("  ca:\n    crt: ", "  ca:\n    key: "),
                "field `machine.ca.key`: issuing Talos API CA key is not allowed",
            ),
            (
                worker_yaml() + "persist: false\n",
                "field `persist`: should be enabled",
            ),
            (
                cp.replace("machine:\n  type", "machine:\n  ca2: x\n  type")
                    .replace("    key: ", "    kez: "),
                "field `machine.ca.key`: issuing CA key is required for controlplane nodes",
            ),
            (
                worker_yaml().replace("cluster:\n", "cluster:\n  etcd: {}\n"),
                "field `cluster.etcd`: etcd config is only allowed on control plane",
            ),
            (
                cp.replacen("crt: ", "crt: SECRETTOKEN.q7w8e9r0t1y2u3i4", 1),
                "field `machine.ca.crt`: not base64-encoded PEM",
            ),
            (
                format!("{cp}token2: {SECRET}\ntoken2: {SECRET}\n"),
                "not valid YAML",
            ),
        ] {
            let e = err(&text, &[]);
            assert!(e.contains(want), "want {want:?}, got: {e}");
            assert!(e.starts_with("machine config "), "{e}");
        }
        // Controlplane without the cluster CA key.
        let e = err(
            &cp.replace(
                &format!(
                    "  secret: {SECRET}\n  ca:\n    crt: {}\n    key: ",
                    b64("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
                ),
                "  ca:\n    kez: ",
            ),
            &[],
        );
        assert!(
            e.contains("field `cluster.ca.crt`") || e.contains("field `cluster.ca.key`"),
            "{e}"
        );
    }

    #[test]
    fn hostile_patches_are_rejected() {
        let cp = controlplane_yaml();
        for (patch, want) in [
            ("- op: frobnicate\n  path: /machine\n", "operation 0: field `op` must be one of"),
            ("- op: add\n  value: 1\n", "operation 0 (add): field `path` is required"),
            ("- op: add\n  path: /a\n", "operation 0 (add): field `value` is required"),
            ("- op: copy\n  path: /a\n", "field `from` is required"),
            (
                "- op: replace\n  path: /machine/nope/deeper\n  value: SECRETTOKEN.q7w8e9r0t1y2u3i4\n",
                "operation 0 (replace at `/machine/nope/deeper`): the path does not exist",
            ),
            (
                "- op: remove\n  path: /machine/token\n- op: remove\n  path: /machine/token\n",
                "operation 1 (remove at `/machine/token`): the path does not exist",
            ),
            (
                "- op: test\n  path: /machine/token\n  value: wrong\n",
                "the value does not match",
            ),
            ("- 3\n", "operation 0 is a number"),
            ("machine: [\n", "not valid YAML"),
            ("---\n", "no YAML documents"),
            ("a: 1\n---\n- b\n", "document 2 is a list"),
            // A patch that breaks the result is caught by the final checks.
            ("machine:\n  token: null\n", "field `machine.token`: required"),
            (
                "- op: remove\n  path: /machine/type\n",
                "(after 1 patch(es)): field `machine.type`: required",
            ),
        ] {
            let e = err(&cp, &[patch]);
            assert!(e.contains(want), "want {want:?}, got: {e}");
        }
        let e = err(
            &cp,
            &[
                "- op: add\n  path: /x\n  value: 1\n",
                "- op: remove\n  path: /y\n",
            ],
        );
        assert!(e.starts_with("patch ") && e.contains("p1.yaml"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = load(&d.path().join("missing.yaml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read the machine configuration") && e.contains("missing.yaml"),
            "{e}"
        );
    }
}
