//! Image Factory schematics and their IDs.
//!
//! The model follows `siderolabs/image-factory` `pkg/schematic/schematic.go`: `Unmarshal` uses
//! `yaml.v3` with `KnownFields(true)` (unknown fields are errors), and the ID is the lowercase
//! hex SHA-256 of `yaml.Marshal(schematic)`: fields in struct order, empty ones omitted
//! (`omitempty`), 4-space indentation, sequences indented inside mappings. Struct order:
//!
//! ```yaml
//! overlay: {image, name, options}            # omitted when all empty
//! customization:                             # always present (`{}` when empty)
//!     embeddedMachineConfiguration: |        # a secret
//!     extraKernelArgs: [...]
//!     meta: [{key: <uint8>, value: <string>}]
//!     systemExtensions: {officialExtensions: [...]}
//!     bootloader: dual-boot | sd-boot | grub  # Talos's BootloaderKind; `none` is zero, omitted
//!     secureboot: {enrollKeys, includeWellKnownCertificates}
//!     diskImage: {sectorSize}
//! ```
//!
//! The upstream file available offline predates `embeddedMachineConfiguration`, `bootloader`,
//! `secureboot.enrollKeys` and `diskImage`; their positions and types come from Talos's
//! `imageropts.BootloaderKind` (enumer, case-insensitive names, written lowercase) and
//! from image-factory PR #482 (`enrollKeys`: `off`, `manual`, `if-safe`, `force`, omitempty),
//! with field order as reproduced by third-party ports. Strings are written as yaml.v3 writes
//! them (plain, `'single'`, `"double"` for strings that would read back as another type,
//! `|` blocks for multi-line text); a string whose yaml.v3 form is not certain (control
//! characters, multi-line text that cannot be a literal block) is refused rather than
//! guessed, since a wrong guess is a different ID.

use std::fmt;

use anyhow::{bail, Result};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{parse_yaml_documents, type_name};

/// Name of the layer that carries the schematic ID (the Image Factory's name for it).
pub const SCHEMATIC_EXTENSION: &str = "schematic";

/// A parsed schematic.
#[derive(Clone, Default, PartialEq)]
pub struct Schematic {
    overlay_image: String,
    overlay_name: String,
    overlay_options: Map<String, Value>,
    embedded_config: String,
    extra_kernel_args: Vec<String>,
    meta: Vec<(u8, String)>,
    official_extensions: Vec<String>,
    bootloader: String,
    enroll_keys: String,
    include_well_known_certificates: bool,
    sector_size: u64,
}

impl fmt::Debug for Schematic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schematic")
            .field("id", &self.id())
            .field("overlay", &(&self.overlay_image, &self.overlay_name))
            .field(
                "embeddedMachineConfiguration",
                &format_args!("<{} bytes>", self.embedded_config.len()),
            )
            .field("extraKernelArgs", &self.extra_kernel_args)
            .field(
                "meta_keys",
                &self.meta.iter().map(|m| m.0).collect::<Vec<_>>(),
            )
            .field("officialExtensions", &self.official_extensions)
            .field("bootloader", &self.bootloader)
            .finish_non_exhaustive()
    }
}

const BOOTLOADERS: [&str; 4] = ["none", "dual-boot", "sd-boot", "grub"];
const ENROLL_KEYS: [&str; 4] = ["if-safe", "manual", "force", "off"];

impl Schematic {
    /// Parse schematic YAML (one document; JSON is YAML too). Unknown fields are errors.
    pub fn parse(yaml: &[u8]) -> Result<Schematic> {
        let docs = parse_yaml_documents(yaml).map_err(|e| anyhow::anyhow!("schematic: {e}"))?;
        let doc = match docs.as_slice() {
            [] => Value::Object(Map::new()),
            [d] => d.clone(),
            _ => bail!("schematic: {} YAML documents, expected one", docs.len()),
        };
        let mut s = Schematic::default();
        let top = fields(&doc, "", &["overlay", "customization"])?;
        if let Some(o) = top.get("overlay").filter(|v| !v.is_null()) {
            let m = fields(o, "overlay", &["image", "name", "options"])?;
            s.overlay_image = string(m.get("image"), "overlay.image")?;
            s.overlay_name = string(m.get("name"), "overlay.name")?;
            match m.get("options") {
                None | Some(Value::Null) => {}
                Some(Value::Object(opts)) => s.overlay_options = opts.clone(),
                Some(v) => bail!(
                    "schematic: field `overlay.options`: is {}, expected a mapping",
                    type_name(v)
                ),
            }
        }
        if let Some(c) = top.get("customization").filter(|v| !v.is_null()) {
            let m = fields(
                c,
                "customization",
                &[
                    "embeddedMachineConfiguration",
                    "extraKernelArgs",
                    "meta",
                    "systemExtensions",
                    "bootloader",
                    "secureboot",
                    "diskImage",
                ],
            )?;
            s.embedded_config = string(
                m.get("embeddedMachineConfiguration"),
                "customization.embeddedMachineConfiguration",
            )?;
            s.extra_kernel_args =
                strings(m.get("extraKernelArgs"), "customization.extraKernelArgs")?;
            if let Some(meta) = m.get("meta").filter(|v| !v.is_null()) {
                let Value::Array(items) = meta else {
                    bail!(
                        "schematic: field `customization.meta`: is {}, expected a list",
                        type_name(meta)
                    );
                };
                for (i, item) in items.iter().enumerate() {
                    let path = format!("customization.meta[{i}]");
                    let im = fields(item, &path, &["key", "value"])?;
                    let key = match im.get("key") {
                        None | Some(Value::Null) => 0,
                        Some(Value::Number(n)) => match n.as_u64() {
                            Some(k) if k <= 255 => k as u8,
                            _ => bail!("schematic: field `{path}.key`: must be 0 to 255"),
                        },
                        Some(v) => bail!(
                            "schematic: field `{path}.key`: is {}, expected a number",
                            type_name(v)
                        ),
                    };
                    let value = string(im.get("value"), &format!("{path}.value"))?;
                    s.meta.push((key, value));
                }
            }
            if let Some(se) = m.get("systemExtensions").filter(|v| !v.is_null()) {
                let sm = fields(
                    se,
                    "customization.systemExtensions",
                    &["officialExtensions"],
                )?;
                s.official_extensions = strings(
                    sm.get("officialExtensions"),
                    "customization.systemExtensions.officialExtensions",
                )?;
            }
            let bl = string(m.get("bootloader"), "customization.bootloader")?;
            if !bl.is_empty() {
                let lower = bl.to_ascii_lowercase();
                if !BOOTLOADERS.contains(&lower.as_str()) {
                    bail!(
                        "schematic: field `customization.bootloader`: must be one of {}",
                        BOOTLOADERS.join(", ")
                    );
                }
                if lower != "none" {
                    s.bootloader = lower;
                }
            }
            if let Some(sb) = m.get("secureboot").filter(|v| !v.is_null()) {
                let path = "customization.secureboot";
                let sm = fields(sb, path, &["enrollKeys", "includeWellKnownCertificates"])?;
                s.enroll_keys = string(sm.get("enrollKeys"), &format!("{path}.enrollKeys"))?;
                if !s.enroll_keys.is_empty() && !ENROLL_KEYS.contains(&s.enroll_keys.as_str()) {
                    bail!(
                        "schematic: field `{path}.enrollKeys`: must be one of {}",
                        ENROLL_KEYS.join(", ")
                    );
                }
                s.include_well_known_certificates = match sm.get("includeWellKnownCertificates") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => bail!(
                        "schematic: field `{path}.includeWellKnownCertificates`: is {}, \
                         expected true or false",
                        type_name(v)
                    ),
                };
            }
            if let Some(di) = m.get("diskImage").filter(|v| !v.is_null()) {
                let dm = fields(di, "customization.diskImage", &["sectorSize"])?;
                s.sector_size = match dm.get("sectorSize") {
                    None | Some(Value::Null) => 0,
                    Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap(),
                    Some(_) => bail!(
                        "schematic: field `customization.diskImage.sectorSize`: expected an \
                         unsigned number"
                    ),
                };
            }
        }
        // Every value must have a certain canonical form.
        s.canonical_yaml()?;
        Ok(s)
    }

    /// The schematic ID: lowercase hex SHA-256 of the canonical YAML.
    /// The virtual extension that records the schematic ID in the image, as the Image
    /// Factory does (a layer named `schematic` whose version is the ID, with an empty root
    /// filesystem), so `talosctl get extensions` on the host shows it. No `extraInfo`: the
    /// schematic may embed a machine configuration.
    pub fn extension(&self) -> crate::extension::Extension {
        let id = self.id();
        crate::extension::Extension {
            metadata: crate::extension::Metadata {
                name: SCHEMATIC_EXTENSION.to_string(),
                version: id.clone(),
                author: "edgeimage".to_string(),
                description: "Virtual extension which specifies the schematic of the image built with edgeimage.".to_string(),
                compatibility: Some(">= 1.0.0".to_string()),
                extra_info: None,
            },
            origin: "virtual (schematic)".to_string(),
            sha256: id,
            rootfs: crate::tree::Tree::new(),
        }
    }

    pub fn id(&self) -> String {
        let yaml = self
            .canonical_yaml()
            .expect("checked when the schematic was parsed");
        hex::encode(Sha256::digest(yaml.as_bytes()))
    }

    /// `customization.extraKernelArgs`.
    pub fn extra_kernel_args(&self) -> &[String] {
        &self.extra_kernel_args
    }

    /// `customization.meta`, in order: (key, value).
    pub fn meta(&self) -> &[(u8, String)] {
        &self.meta
    }

    /// `customization.systemExtensions.officialExtensions` (e.g. `siderolabs/iscsi-tools`).
    pub fn official_extensions(&self) -> &[String] {
        &self.official_extensions
    }

    /// `customization.embeddedMachineConfiguration`: a secret (check it with
    /// [`super::machine::MachineConfig::from_bytes`]; never print it).
    pub fn embedded_machine_configuration(&self) -> Option<&str> {
        Some(self.embedded_config.as_str()).filter(|s| !s.is_empty())
    }

    /// `customization.bootloader`, lowercase; `None` when unset or `none`.
    pub fn bootloader(&self) -> Option<&str> {
        Some(self.bootloader.as_str()).filter(|s| !s.is_empty())
    }

    /// `overlay.image` and `overlay.name`, when set.
    pub fn overlay(&self) -> Option<(&str, &str)> {
        (!self.overlay_image.is_empty() || !self.overlay_name.is_empty())
            .then_some((self.overlay_image.as_str(), self.overlay_name.as_str()))
    }

    /// `customization.diskImage.sectorSize`; `None` when unset (0).
    pub fn sector_size(&self) -> Option<u64> {
        Some(self.sector_size).filter(|&n| n != 0)
    }

    /// `customization.secureboot`: (enrollKeys, includeWellKnownCertificates).
    pub fn secureboot(&self) -> (Option<&str>, bool) {
        (
            Some(self.enroll_keys.as_str()).filter(|s| !s.is_empty()),
            self.include_well_known_certificates,
        )
    }

    /// The YAML the ID hashes, as yaml.v3 marshals the Image Factory's struct. It contains
    /// the embedded machine configuration: do not print it.
    fn canonical_yaml(&self) -> Result<String> {
        let mut out = String::new();
        let overlay_empty = self.overlay_image.is_empty()
            && self.overlay_name.is_empty()
            && self.overlay_options.is_empty();
        if !overlay_empty {
            out.push_str("overlay:\n");
            out.push_str(&format!("    image: {}\n", scalar(&self.overlay_image, 4)?));
            out.push_str(&format!("    name: {}\n", scalar(&self.overlay_name, 4)?));
            if !self.overlay_options.is_empty() {
                out.push_str("    options:");
                emit_value(&Value::Object(self.overlay_options.clone()), 4, &mut out)?;
            }
        }
        let mut c = String::new();
        if !self.embedded_config.is_empty() {
            c.push_str(&format!(
                "    embeddedMachineConfiguration: {}\n",
                scalar(&self.embedded_config, 4)?
            ));
        }
        if !self.extra_kernel_args.is_empty() {
            c.push_str("    extraKernelArgs:\n");
            for a in &self.extra_kernel_args {
                c.push_str(&format!("        - {}\n", scalar(a, 8)?));
            }
        }
        if !self.meta.is_empty() {
            c.push_str("    meta:\n");
            for (k, v) in &self.meta {
                c.push_str(&format!("        - key: {k}\n"));
                c.push_str(&format!("          value: {}\n", scalar(v, 10)?));
            }
        }
        if !self.official_extensions.is_empty() {
            c.push_str("    systemExtensions:\n        officialExtensions:\n");
            for e in &self.official_extensions {
                c.push_str(&format!("            - {}\n", scalar(e, 12)?));
            }
        }
        if !self.bootloader.is_empty() {
            c.push_str(&format!("    bootloader: {}\n", self.bootloader));
        }
        if !self.enroll_keys.is_empty() || self.include_well_known_certificates {
            c.push_str("    secureboot:\n");
            if !self.enroll_keys.is_empty() {
                c.push_str(&format!("        enrollKeys: {}\n", self.enroll_keys));
            }
            if self.include_well_known_certificates {
                c.push_str("        includeWellKnownCertificates: true\n");
            }
        }
        if self.sector_size != 0 {
            c.push_str(&format!(
                "    diskImage:\n        sectorSize: {}\n",
                self.sector_size
            ));
        }
        if c.is_empty() {
            out.push_str("customization: {}\n");
        } else {
            out.push_str("customization:\n");
            out.push_str(&c);
        }
        Ok(out)
    }
}

/// The mapping `v` with only `known` keys; the error names the unknown one.
fn fields<'a>(v: &'a Value, path: &str, known: &[&str]) -> Result<&'a Map<String, Value>> {
    let what = if path.is_empty() {
        "the top level".to_string()
    } else {
        format!("field `{path}`")
    };
    let Value::Object(m) = v else {
        bail!("schematic: {what}: is {}, expected a mapping", type_name(v));
    };
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        let full = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        bail!(
            "schematic: field `{full}`: unknown field (known: {})",
            known.join(", ")
        );
    }
    Ok(m)
}

fn string(v: Option<&Value>, path: &str) -> Result<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => bail!(
            "schematic: field `{path}`: is {}, expected a string",
            type_name(v)
        ),
    }
}

fn strings(v: Option<&Value>, path: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| string(Some(x), &format!("{path}[{i}]")))
            .collect(),
        Some(v) => bail!(
            "schematic: field `{path}`: is {}, expected a list",
            type_name(v)
        ),
    }
}

// ---------------------------------------------------------------------------------------
// yaml.v3 scalar styles

/// Whether yaml.v3's `resolve` reads `s` as something other than a string (then the encoder
/// asks for double quotes), including YAML 1.1 booleans and base-60 floats it guards.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: [&str; 26] = [
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", ".inf",
        ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN",
        ".NAN", "<<", "y", "Y",
    ];
    const OLD_BOOLS: [&str; 20] = [
        "n", "N", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
        "y", "Y", "n", "N", "true", "false",
    ];
    if WORDS.contains(&s) || OLD_BOOLS.contains(&s) {
        return true;
    }
    let t = s.replace('_', "");
    let body = t.strip_prefix(['+', '-']).unwrap_or(&t);
    let int = !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit());
    let radix = ["0x", "0o", "0b"].iter().any(|p| {
        body.strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    let float = s.parse::<f64>().is_ok() && s.bytes().any(|b| b.is_ascii_digit());
    // Base-60 floats (`1:20`), which yaml.v3 quotes for YAML 1.1 readers.
    let base60 = {
        let parts: Vec<&str> = body.split(':').collect();
        parts.len() > 1
            && parts[0]
                .bytes()
                .next()
                .is_some_and(|b| (b'1'..=b'9').contains(&b))
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    };
    int || radix || float || base60
}

/// libyaml's `yaml_emitter_analyze_scalar` verdict for plain style in block context.
fn plain_allowed(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() || s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    if chars[0] == ' ' || chars[chars.len() - 1] == ' ' {
        return false;
    }
    for (i, &c) in chars.iter().enumerate() {
        let next_ws = chars.get(i + 1).is_none_or(|n| *n == ' ');
        let prev_ws = i == 0 || chars[i - 1] == ' ';
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => return false,
                '?' | ':' if next_ws => return false,
                '-' if next_ws => return false,
                _ => {}
            }
        } else {
            match c {
                ':' if next_ws => return false,
                '#' if prev_ws => return false,
                _ => {}
            }
        }
        if !printable(c) || c == '\t' {
            return false;
        }
    }
    true
}

fn printable(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && c != '\u{FEFF}'
}

/// A string as yaml.v3 writes it after `key: ` (or `- `), at `indent` columns.
fn scalar(s: &str, indent: usize) -> Result<String> {
    if s.contains('\n') {
        return literal(s, indent);
    }
    if s.chars().any(|c| !printable(c)) {
        bail!(
            "schematic: a string with control characters has no certain canonical YAML form \
             (its ID cannot be computed offline)"
        );
    }
    if resolves_to_non_string(s) {
        return Ok(format!(
            "\"{}\"",
            s.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    if plain_allowed(s) {
        return Ok(s.to_string());
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// A literal block scalar (`|`, `|-`, `|+`), as libyaml writes it.
fn literal(s: &str, indent: usize) -> Result<String> {
    let lines: Vec<&str> = s.split('\n').collect();
    let ok = s.chars().all(|c| c == '\n' || printable(c))
        && !lines.iter().any(|l| l.ends_with(' '))
        && !s.starts_with(' ')
        && !s.starts_with('\n');
    if !ok {
        bail!(
            "schematic: a multi-line string with leading or trailing spaces or control \
             characters has no certain canonical YAML form (its ID cannot be computed offline)"
        );
    }
    let chomp = if !s.ends_with('\n') {
        "-"
    } else if s.ends_with("\n\n") {
        "+"
    } else {
        ""
    };
    let body = s.strip_suffix('\n').unwrap_or(s);
    let mut out = format!("|{chomp}\n");
    let pad = " ".repeat(indent + 4);
    for l in body.split('\n') {
        if !l.is_empty() {
            out.push_str(&pad);
            out.push_str(l);
        }
        out.push('\n');
    }
    out.pop(); // the caller ends the line
    Ok(out)
}

/// yaml.v3's map key order (`keyList.Less`) for string keys.
fn key_less(a: &str, b: &str) -> bool {
    let (ar, br): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut digits = false;
    let n = ar.len().min(br.len());
    for i in 0..n {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            continue;
        }
        let (al, bl) = (ar[i].is_alphabetic(), br[i].is_alphabetic());
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return if digits { al } else { bl };
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            for j in (0..i).rev() {
                if !ar[j].is_ascii_digit() {
                    break;
                }
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .saturating_mul(10)
                .saturating_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .saturating_mul(10)
                .saturating_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

/// A value after `key:` (no space yet) at mapping indentation `indent`, ending the line(s).
fn emit_value(v: &Value, indent: usize, out: &mut String) -> Result<()> {
    let pad = " ".repeat(indent + 4);
    match v {
        Value::Null => out.push_str(" null\n"),
        Value::Bool(b) => out.push_str(&format!(" {b}\n")),
        Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&format!(" {n}\n")),
        Value::Number(_) => bail!(
            "schematic: field `overlay.options`: floating-point values have no certain \
             canonical YAML form"
        ),
        Value::String(s) => out.push_str(&format!(" {}\n", scalar(s, indent)?)),
        Value::Array(a) if a.is_empty() => out.push_str(" []\n"),
        Value::Object(m) if m.is_empty() => out.push_str(" {}\n"),
        Value::Array(a) => {
            out.push('\n');
            for x in a {
                match x {
                    Value::Array(_) | Value::Object(_) if !is_empty(x) => bail!(
                        "schematic: field `overlay.options`: nested lists and mappings inside \
                         lists are not supported"
                    ),
                    _ => {
                        out.push_str(&pad);
                        out.push('-');
                        emit_value(x, indent + 4, out)?;
                    }
                }
            }
        }
        Value::Object(m) => {
            out.push('\n');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| {
                if key_less(a, b) {
                    std::cmp::Ordering::Less
                } else if key_less(b, a) {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            });
            for k in keys {
                out.push_str(&pad);
                out.push_str(&scalar(k, indent + 4)?);
                out.push(':');
                emit_value(&m[k], indent + 4, out)?;
            }
        }
    }
    Ok(())
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(y: &str) -> String {
        Schematic::parse(y.as_bytes()).unwrap().id()
    }

    /// Vectors from image-factory's `pkg/schematic/schematic_test.go` (TestID, TestUnmarshalID).
    #[test]
    fn image_factory_vectors() {
        const EMPTY: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";
        const ARGS: &str = "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c";
        const META: &str = "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f";
        const OVERLAY: &str = "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9";
        const SB: &str = "fa8e05f142a851d3ee568eb0a8e5841eaf6b0ebc8df9a63df16ac5ed2c04f3e6";
        for (y, want) in [
            ("", EMPTY),
            ("{}", EMPTY),
            ("customization: {}\n", EMPTY),
            ("customization: {\"extraKernelArgs\": []}", EMPTY),
            ("customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n", ARGS),
            ("{\"customization\": {\"extraKernelArgs\": [\"noapic\", \"nolapic\"]}}", ARGS),
            (
                "{\"customization\": {\"extraKernelArgs\": [\"noapic\", \"nolapic\"], \
                 \"systemExtensions\": {}}}",
                ARGS,
            ),
            (
                "{\"customization\": {\"meta\": [{\"key\": 10, \"value\": \"foo\"}], \
                 \"extraKernelArgs\": [], \"systemExtensions\": {}}}",
                META,
            ),
            ("customization:\n  meta:\n    - key: 0xa\n      value: foo\n", META),
            (
                "{\"overlay\": {\"name\": \"rpi_generic\", \"image\": \"siderolabs/sbc-raspberrypi\"}}",
                OVERLAY,
            ),
            (
                "{\"overlay\": {\"name\": \"rpi_generic\", \"image\": \
                 \"siderolabs/sbc-raspberrypi\"},\"customization\":{}}",
                OVERLAY,
            ),
            (
                "{\"customization\":{\"secureboot\": {\"includeWellKnownCertificates\": true}}}",
                SB,
            ),
            // Unset and zero values are omitted.
            ("customization:\n  bootloader: none\n  secureboot: {}\n  diskImage: {}\n", EMPTY),
        ] {
            assert_eq!(id(y), want, "{y:?}");
        }
    }

    #[test]
    fn canonical_form_and_accessors() {
        let s = Schematic::parse(
            b"customization:\n  embeddedMachineConfiguration: |\n    version: v1alpha1\n\n    machine: {}\n\
              \x20 extraKernelArgs: [-console, 'console=ttyS0,115200', '10', 'a: b', '#x']\n\
              \x20 meta:\n    - {key: 12, value: '{}'}\n\
              \x20 systemExtensions:\n    officialExtensions: [siderolabs/iscsi-tools]\n\
              \x20 bootloader: SD-Boot\n\
              \x20 secureboot: {enrollKeys: force, includeWellKnownCertificates: true}\n\
              overlay:\n  image: siderolabs/sbc-rockchip\n  name: rock4se\n  options:\n    b10: 1\n    b9: [x]\n    a: {z: true}\n",
        )
        .unwrap();
        assert_eq!(
            s.canonical_yaml().unwrap(),
            "overlay:\n    image: siderolabs/sbc-rockchip\n    name: rock4se\n    options:\n\
             \x20       a:\n            z: true\n        b9:\n            - x\n        b10: 1\n\
             customization:\n    embeddedMachineConfiguration: |\n        version: v1alpha1\n\n\
             \x20       machine: {}\n\
             \x20   extraKernelArgs:\n        - -console\n        - console=ttyS0,115200\n\
             \x20       - \"10\"\n        - 'a: b'\n        - '#x'\n\
             \x20   meta:\n        - key: 12\n          value: '{}'\n\
             \x20   systemExtensions:\n        officialExtensions:\n            - siderolabs/iscsi-tools\n\
             \x20   bootloader: sd-boot\n\
             \x20   secureboot:\n        enrollKeys: force\n        includeWellKnownCertificates: true\n"
        );
        assert_eq!(s.official_extensions(), ["siderolabs/iscsi-tools"]);
        assert_eq!(s.meta(), [(12, "{}".to_string())]);
        assert_eq!(s.extra_kernel_args()[0], "-console");
        assert_eq!(s.bootloader(), Some("sd-boot"));
        assert_eq!(s.secureboot(), (Some("force"), true));
        assert_eq!(s.overlay(), Some(("siderolabs/sbc-rockchip", "rock4se")));
        assert_eq!(
            s.embedded_machine_configuration(),
            Some("version: v1alpha1\n\nmachine: {}\n")
        );
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("v1alpha1") && dbg.contains("<31 bytes>"),
            "{dbg}"
        );
        assert_eq!(s.id().len(), 64);
    }

    #[test]
    fn literal_chomping_and_scalar_styles() {
        assert_eq!(literal("a\nb", 4).unwrap(), "|-\n        a\n        b");
        assert_eq!(literal("a\n", 4).unwrap(), "|\n        a");
        assert_eq!(literal("a\n\n", 4).unwrap(), "|+\n        a\n");
        assert!(literal(" a\nb", 4).is_err());
        assert!(literal("a \nb", 4).is_err());
        for (s, want) in [
            ("plain", "plain"),
            ("", "\"\""),
            ("true", "\"true\""),
            ("yes", "\"yes\""),
            ("0x1F", "\"0x1F\""),
            ("1.5", "\"1.5\""),
            ("1:20", "\"1:20\""),
            ("- x", "'- x'"),
            ("it's: x", "'it''s: x'"),
            ("a #b", "'a #b'"),
            ("a#b", "a#b"),
            (" lead", "' lead'"),
            ("x:", "'x:'"),
            ("x:y", "x:y"),
            ("*ref", "'*ref'"),
        ] {
            assert_eq!(scalar(s, 4).unwrap(), want, "{s:?}");
        }
        assert!(scalar("bell\u{7}", 4).is_err());
        assert!(key_less("b9", "b10") && !key_less("b10", "b9"));
        assert!(key_less("a", "b") && key_less("a", "ab"));
    }

    #[test]
    fn hostile_schematics_are_rejected() {
        for (y, want) in [
            (
                "customization:\n  extraKernelArgz: [x]\n",
                "field `customization.extraKernelArgz`: unknown field",
            ),
            (
                "owner: me\n",
                "field `owner`: unknown field (known: overlay, customization)",
            ),
            (
                "customization:\n  secureboot:\n    enroll: force\n",
                "`customization.secureboot.enroll`: unknown field",
            ),
            (
                "customization:\n  secureboot:\n    enrollKeys: always\n",
                "must be one of if-safe, manual, force, off",
            ),
            (
                "customization:\n  bootloader: auto\n",
                "must be one of none, dual-boot, sd-boot, grub",
            ),
            (
                "customization:\n  meta:\n    - key: 256\n      value: x\n",
                "`customization.meta[0].key`: must be 0 to 255",
            ),
            (
                "customization:\n  meta:\n    - key: 10\n      val: x\n",
                "`customization.meta[0].val`: unknown field",
            ),
            (
                "customization:\n  extraKernelArgs: noapic\n",
                "is a string, expected a list",
            ),
            (
                "customization:\n  extraKernelArgs: [1]\n",
                "`customization.extraKernelArgs[0]`: is a number",
            ),
            ("customization: [\n", "not valid YAML"),
            ("a: 1\n---\nb: 2\n", "2 YAML documents"),
            (
                "customization:\n  extraKernelArgs: [\"a\\u0007\"]\n",
                "control characters",
            ),
        ] {
            let e = Schematic::parse(y.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{y:?}: want {want:?}, got {e}");
        }
        // The embedded configuration never shows in errors.
        let e = Schematic::parse(
            b"customization:\n  embeddedMachineConfiguration: \"SECRETTOKEN \\u0001\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("SECRETTOKEN"), "{e}");
    }
}
