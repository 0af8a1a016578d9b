//! The profile's `[[personalize]]` entries: personalization slots, values a flasher writes per
//! device into a META key or the `metal-iso` configuration partition (see
//! [`crate::personalize`]).
//!
//! Parsed as strictly as the rest of the profile: unknown fields are errors, and every error
//! names the profile file and the field (`personalize[1].meta_key`). Templates are read and
//! their placeholders checked here, so a malformed template stops the build before anything
//! is built.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use super::{parse_meta_key, ConfigSpec, Delivery, MetaValue};
use crate::personalize::{self, MAX_SLOT_PARTITION};

/// One `[[personalize]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlot {
    name: String,
    meta_key: Option<RawKey>,
    metal_iso: Option<bool>,
    template: PathBuf,
    #[serde(default)]
    secret: bool,
}

/// A META key as text (`"0x0a"`, `"10"`) or a TOML integer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawKey {
    Int(i64),
    Text(String),
}

/// Where a slot's value goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotTarget {
    /// A META key (0x0a, 0x0c-0x0e).
    Meta(u8),
    /// `config.yaml` on the `metal-iso` partition.
    MetalIso,
}

/// A validated `[[personalize]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// 1-32 characters `a-z`, `0-9`, `-`; unique in the profile.
    pub name: String,
    pub target: SlotTarget,
    /// The template file.
    pub template: PathBuf,
    /// Its text (UTF-8, placeholders checked).
    pub template_text: String,
    /// SHA-256 of the template file's bytes.
    pub template_sha256: String,
    /// The rendered value is a secret: never shown by flashers and readers.
    pub secret: bool,
}

/// Validate the `[[personalize]]` entries against the rest of the profile (its `[meta]`
/// values, whether `network` sets META 0x0a, `[config]`). `field_err(field, message)` makes
/// the error that names the profile file.
pub(super) fn parse(
    raw: Vec<RawSlot>,
    base: &Path,
    meta: &[MetaValue],
    network: bool,
    config: Option<&ConfigSpec>,
    field_err: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Vec<SlotSpec>> {
    let mut out: Vec<SlotSpec> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let f = |field: &str| format!("personalize[{i}].{field}");
        if !personalize::valid_name(&r.name) {
            return Err(field_err(
                &f("name"),
                format!(
                    "{:?} is not a slot name: use 1-{} characters a-z, 0-9 and '-'",
                    r.name,
                    personalize::MAX_NAME
                ),
            ));
        }
        if out.iter().any(|s| s.name == r.name) {
            return Err(field_err(
                &f("name"),
                format!(
                    "slot {:?} is named twice; give each slot its own name",
                    r.name
                ),
            ));
        }
        let target = match (r.meta_key, r.metal_iso) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(field_err(
                    &format!("personalize[{i}]"),
                    "set exactly one of `meta_key` (a META key: \"0x0a\", \"0x0c\"-\"0x0e\") and `metal_iso = true`".into(),
                ))
            }
            (None, Some(false)) => {
                return Err(field_err(
                    &f("metal_iso"),
                    "`metal_iso = false` names no slot: write `metal_iso = true`, or `meta_key` instead".into(),
                ))
            }
            (Some(k), None) => {
                let text = match k {
                    RawKey::Int(n) => n.to_string(),
                    RawKey::Text(t) => t,
                };
                let key = parse_meta_key(&text).map_err(|e| field_err(&f("meta_key"), e))?;
                if !personalize::is_meta_key(key) {
                    return Err(field_err(
                        &f("meta_key"),
                        format!(
                            "key 0x{key:02x} cannot be a slot: use \"0x0a\" (network configuration) or \"0x0c\", \"0x0d\", \"0x0e\" (user keys)"
                        ),
                    ));
                }
                if meta.iter().any(|m| m.key == key) {
                    return Err(field_err(
                        &f("meta_key"),
                        format!(
                            "key 0x{key:02x} is also set in [meta]; a slot's key has no value in the base image: remove it from [meta]"
                        ),
                    ));
                }
                if network && key == crate::plan::META_NETWORK {
                    return Err(field_err(
                        &f("meta_key"),
                        "key 0x0a is also set by the top-level `network` file; remove `network` or this slot".into(),
                    ));
                }
                if let Some(other) = out.iter().find(|s| s.target == SlotTarget::Meta(key)) {
                    return Err(field_err(
                        &f("meta_key"),
                        format!("key 0x{key:02x} is already slot {:?}", other.name),
                    ));
                }
                SlotTarget::Meta(key)
            }
            (None, Some(true)) => {
                match config {
                    Some(c) if c.delivery == Delivery::MetalIso => {
                        if c.metal_iso_size > MAX_SLOT_PARTITION {
                            return Err(field_err(
                                "config.metal_iso_size",
                                format!(
                                    "{} MiB is more than a personalized metal-iso partition may be ({} MiB)",
                                    c.metal_iso_size >> 20,
                                    MAX_SLOT_PARTITION >> 20
                                ),
                            ));
                        }
                    }
                    _ => {
                        return Err(field_err(
                            &f("metal_iso"),
                            "a metal-iso slot needs [config] with delivery = \"metal-iso\" (the base configuration the partition holds)".into(),
                        ))
                    }
                }
                if let Some(other) = out.iter().find(|s| s.target == SlotTarget::MetalIso) {
                    return Err(field_err(
                        &f("metal_iso"),
                        format!(
                            "slot {:?} is already the metal-iso slot; there is one metal-iso partition",
                            other.name
                        ),
                    ));
                }
                SlotTarget::MetalIso
            }
        };
        let path = base.join(&r.template);
        let text = crate::input::read_text(&path, crate::input::Kind::Template)
            .map_err(|e| field_err(&f("template"), format!("{e:#}")))?;
        personalize::fields(&text)
            .map_err(|e| field_err(&f("template"), format!("{}: {e}", path.display())))?;
        use sha2::Digest;
        out.push(SlotSpec {
            name: r.name,
            target,
            template: path,
            template_sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
            template_text: text,
            secret: r.secret,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::profile::Profile;

    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// A profile in a temporary directory with `body` and two templates (`net.tmpl`,
    /// `cfg.tmpl`) next to it.
    fn parse(body: &str) -> Result<Profile, String> {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("net.tmpl"), "hostname: {{ host }}\n").unwrap();
        std::fs::write(d.path().join("cfg.tmpl"), "machine: {{ x }}\n").unwrap();
        std::fs::write(d.path().join("bad.tmpl"), "a\nb: {{ host \n").unwrap();
        std::fs::write(d.path().join("bin.tmpl"), b"\xff\xfe").unwrap();
        let text = format!(
            "name = \"t\"\narch = \"amd64\"\ntalos_version = \"v1.12.5\"\ndisk_size = \"3GiB\"\n{body}\n\
             [assets]\nkernel = {{ sha256 = \"{ZERO}\" }}\ninitramfs = {{ sha256 = \"{ZERO}\" }}\n\
             systemd_boot = {{ sha256 = \"{ZERO}\" }}\nsystemd_stub = {{ sha256 = \"{ZERO}\" }}\n"
        );
        let p = d.path().join("p.toml");
        Profile::parse(&p, text.as_bytes()).map_err(|e| format!("{e:#}"))
    }

    const ISO: &str = "[config]\npath = \"m.yaml\"\ndelivery = \"metal-iso\"\n";

    #[test]
    fn slots_parse_with_defaults() {
        let p = parse(&format!(
            "[[personalize]]\nname = \"network\"\nmeta_key = \"0x0a\"\ntemplate = \"net.tmpl\"\n\
             [[personalize]]\nname = \"reg\"\nmeta_key = 13\ntemplate = \"net.tmpl\"\nsecret = true\n\
             [[personalize]]\nname = \"config\"\nmetal_iso = true\ntemplate = \"cfg.tmpl\"\n{ISO}"
        ))
        .unwrap();
        let s = &p.personalize;
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "network");
        assert_eq!(s[0].target, super::SlotTarget::Meta(0x0a));
        assert!(!s[0].secret);
        assert_eq!(s[1].target, super::SlotTarget::Meta(0x0d));
        assert!(s[1].secret);
        assert_eq!(s[2].target, super::SlotTarget::MetalIso);
        assert_eq!(s[0].template_text, "hostname: {{ host }}\n");
        use sha2::Digest;
        assert_eq!(
            s[0].template_sha256,
            hex::encode(sha2::Sha256::digest(b"hostname: {{ host }}\n"))
        );
        assert!(s[0].template.ends_with("net.tmpl"));
        assert!(parse("").unwrap().personalize.is_empty());
    }

    #[test]
    fn bad_slots_are_refused_naming_the_field() {
        let slot = |extra: &str| {
            format!("[[personalize]]\nname = \"s\"\ntemplate = \"net.tmpl\"\n{extra}\n")
        };
        let cases: Vec<(String, &[&str])> = vec![
            (
                slot("meta_key = \"0x0a\"").replace("\"s\"", "\"Bad_Name\""),
                &["`personalize[0].name`", "\"Bad_Name\"", "1-32 characters"],
            ),
            (
                slot("meta_key = \"0x0a\"").replace("\"s\"", &format!("\"{}\"", "a".repeat(33))),
                &["`personalize[0].name`"],
            ),
            (
                format!(
                    "{}{}",
                    slot("meta_key = \"0x0a\""),
                    slot("meta_key = \"0x0c\"")
                ),
                &["`personalize[1].name`", "named twice"],
            ),
            (slot(""), &["`personalize[0]`", "exactly one of `meta_key`"]),
            (
                slot("meta_key = \"0x0a\"\nmetal_iso = true"),
                &["`personalize[0]`", "exactly one"],
            ),
            (
                slot("metal_iso = false"),
                &["`personalize[0].metal_iso`", "names no slot"],
            ),
            (
                slot("meta_key = \"0x0b\""),
                &["`personalize[0].meta_key`", "0x0b cannot be a slot"],
            ),
            (
                slot("meta_key = \"0x07\""),
                &["`personalize[0].meta_key`", "reserved"],
            ),
            (
                slot("meta_key = \"zz\""),
                &["`personalize[0].meta_key`", "not a META key"],
            ),
            (
                slot("meta_key = 300"),
                &["`personalize[0].meta_key`", "outside 1-255"],
            ),
            (
                format!("{}[meta]\n\"0x0c\" = \"x\"\n", slot("meta_key = \"0x0c\"")),
                &["`personalize[0].meta_key`", "also set in [meta]"],
            ),
            (
                format!("network = \"n.yaml\"\n{}", slot("meta_key = \"0x0a\"")),
                &["`personalize[0].meta_key`", "`network`"],
            ),
            (
                format!(
                    "{}{}",
                    slot("meta_key = \"0x0c\""),
                    slot("meta_key = \"12\"").replace("\"s\"", "\"t\"")
                ),
                &["`personalize[1].meta_key`", "already slot \"s\""],
            ),
            (
                slot("metal_iso = true"),
                &["`personalize[0].metal_iso`", "delivery = \"metal-iso\""],
            ),
            (
                format!(
                    "{}[config]\npath = \"m.yaml\"\ndelivery = \"embedded\"\n",
                    slot("metal_iso = true")
                ),
                &["`personalize[0].metal_iso`", "delivery = \"metal-iso\""],
            ),
            (
                format!(
                    "{}{}{ISO}",
                    slot("metal_iso = true"),
                    slot("metal_iso = true").replace("\"s\"", "\"t\"")
                ),
                &["`personalize[1].metal_iso`", "already the metal-iso slot"],
            ),
            (
                format!(
                    "{}{}metal_iso_size = \"65MiB\"\n",
                    slot("metal_iso = true"),
                    ISO
                ),
                &["`config.metal_iso_size`", "65 MiB"],
            ),
            (
                slot("meta_key = \"0x0a\"").replace("net.tmpl", "nope.tmpl"),
                &["`personalize[0].template`", "nope.tmpl", "cannot read"],
            ),
            (
                slot("meta_key = \"0x0a\"").replace("net.tmpl", "bad.tmpl"),
                &[
                    "`personalize[0].template`",
                    "bad.tmpl",
                    "line 2, column 4",
                    "never closed",
                ],
            ),
            (
                slot("meta_key = \"0x0a\"").replace("net.tmpl", "bin.tmpl"),
                &["`personalize[0].template`", "not UTF-8"],
            ),
            (
                slot("meta_key = \"0x0a\"\ncolour = 1"),
                &["unknown field `colour`"],
            ),
            (slot("meta_key = \"0x0a\"\nsecret = \"yes\""), &["secret"]),
        ];
        for (body, wants) in cases {
            let e = parse(&body).expect_err(&body);
            assert!(e.contains("p.toml"), "{body}\n{e}");
            for w in wants {
                assert!(e.contains(w), "{body}\nwanted {w:?} in: {e}");
            }
        }
        // The limit is inclusive.
        parse(&format!(
            "{}{}metal_iso_size = \"64MiB\"\n",
            slot("metal_iso = true"),
            ISO
        ))
        .unwrap();
    }
}
