//! Semantic versions and version ranges with the semantics of `github.com/blang/semver/v4`,
//! which Talos uses to check an extension's `compatibility.talos.version`.
//!
//! Mirrored from blang/semver `v4/semver.go` (`Parse`, `Compare`) and `v4/range.go`
//! (`ParseRange`), quirks included:
//! - a range is split at spaces, except right after `>`, `<` or `=` (so `>= 1.0.0` is one
//!   part); a part of a single character is dropped (`splitAndTrim`'s `last < i-1`);
//! - `||` separates alternatives (OR), the parts of an alternative are ANDed; a leading or
//!   trailing `||` is an error;
//! - a part containing an `x` anywhere is a wildcard (`1.x`, `1.2.x`, `>=1.2.x`, `!=1.x`) and is
//!   expanded as `expandWildcardVersion` does (`1.2.x` → `>=1.2.0 <1.3.0`, `<=1.x` → `<2.0.0`,
//!   an unknown operator before a wildcard is dropped);
//! - the operator is everything before the first digit: `=`, `==`, empty (equal), `!=`, `!`,
//!   `>`, `>=`, `<`, `<=`; anything else is an error;
//! - versions are strict semver 2 (`MAJOR.MINOR.PATCH[-pre][+build]`, no leading zeros, no `v`).
//!
//! Talos first removes every `v` that stands right before a digit (`trim` in
//! `pkg/machinery/extensions/validate.go`) and checks the Talos version reduced to
//! major.minor.patch (`coreVersion`). [`talos_compatible`] does both.
//!
//! Differences: Go finds the first Unicode digit, this code the first ASCII digit (a
//! non-ASCII digit is an error either way). An alternative left empty by `|| ||` makes Go call a
//! nil function when evaluated; here it is a parse error.

use std::cmp::Ordering;
use std::fmt;

use crate::talos::TalosVersion;

/// A pre-release identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pre {
    Num(u64),
    Alpha(String),
}

/// A semantic version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Vec<Pre>,
    pub build: Vec<String>,
}

impl Version {
    pub fn new(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
            pre: Vec::new(),
            build: Vec::new(),
        }
    }

    /// Precedence (build metadata ignored), as blang's `Compare`.
    pub fn compare(&self, o: &Version) -> Ordering {
        let core = (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch));
        if core != Ordering::Equal {
            return core;
        }
        match (self.pre.is_empty(), o.pre.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => {}
        }
        for (a, b) in self.pre.iter().zip(&o.pre) {
            let c = match (a, b) {
                (Pre::Num(_), Pre::Alpha(_)) => Ordering::Less,
                (Pre::Alpha(_), Pre::Num(_)) => Ordering::Greater,
                (Pre::Num(x), Pre::Num(y)) => x.cmp(y),
                (Pre::Alpha(x), Pre::Alpha(y)) => x.as_bytes().cmp(y.as_bytes()),
            };
            if c != Ordering::Equal {
                return c;
            }
        }
        self.pre.len().cmp(&o.pre.len())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, p) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match p {
                Pre::Num(n) => write!(f, "{n}")?,
                Pre::Alpha(s) => f.write_str(s)?,
            }
        }
        for (i, b) in self.build.iter().enumerate() {
            f.write_str(if i == 0 { "+" } else { "." })?;
            f.write_str(b)?;
        }
        Ok(())
    }
}

fn only_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn only_alphanum(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn leading_zero(s: &str) -> bool {
    s.len() > 1 && s.starts_with('0')
}

fn number(s: &str, what: &str) -> Result<u64, String> {
    if !only_digits(s) {
        return Err(format!("invalid character(s) found in {what} number {s:?}"));
    }
    if leading_zero(s) {
        return Err(format!(
            "{what} number must not contain leading zeroes {s:?}"
        ));
    }
    s.parse::<u64>()
        .map_err(|_| format!("{what} number {s:?} is not a 64-bit number"))
}

/// blang's `Parse`: a strict semver 2.0 version.
pub fn parse_version(s: &str) -> Result<Version, String> {
    if s.is_empty() {
        return Err("version string empty".into());
    }
    let parts: Vec<&str> = s.splitn(3, '.').collect();
    if parts.len() != 3 {
        return Err("no Major.Minor.Patch elements found".into());
    }
    let major = number(parts[0], "major")?;
    let minor = number(parts[1], "minor")?;
    let mut patch_str = parts[2];
    let mut build: Vec<&str> = Vec::new();
    let mut pre: Vec<&str> = Vec::new();
    if let Some(i) = patch_str.find('+') {
        build = patch_str[i + 1..].split('.').collect();
        patch_str = &patch_str[..i];
    }
    if let Some(i) = patch_str.find('-') {
        pre = patch_str[i + 1..].split('.').collect();
        patch_str = &patch_str[..i];
    }
    let patch = number(patch_str, "patch")?;
    let mut v = Version::new(major, minor, patch);
    for p in pre {
        if p.is_empty() {
            return Err("prerelease is empty".into());
        }
        if only_digits(p) {
            if leading_zero(p) {
                return Err(format!(
                    "numeric prerelease version must not contain leading zeroes {p:?}"
                ));
            }
            let n = p
                .parse::<u64>()
                .map_err(|_| format!("prerelease {p:?} is not a 64-bit number"))?;
            v.pre.push(Pre::Num(n));
        } else if only_alphanum(p) {
            v.pre.push(Pre::Alpha(p.to_string()));
        } else {
            return Err(format!("invalid character(s) found in prerelease {p:?}"));
        }
    }
    for b in build {
        if b.is_empty() {
            return Err("build meta data is empty".into());
        }
        if !only_alphanum(b) {
            return Err(format!(
                "invalid character(s) found in build meta data {b:?}"
            ));
        }
        v.build.push(b.to_string());
    }
    Ok(v)
}

/// A comparison operator of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "" | "=" | "==" => Op::Eq,
            "!" | "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            _ => return None,
        })
    }

    fn holds(self, c: Ordering) -> bool {
        match self {
            Op::Eq => c == Ordering::Equal,
            Op::Ne => c != Ordering::Equal,
            Op::Gt => c == Ordering::Greater,
            Op::Ge => c != Ordering::Less,
            Op::Lt => c == Ordering::Less,
            Op::Le => c != Ordering::Greater,
        }
    }
}

/// A parsed range: alternatives (OR) of comparisons (AND).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub alternatives: Vec<Vec<(Op, Version)>>,
}

impl Range {
    pub fn matches(&self, v: &Version) -> bool {
        self.alternatives
            .iter()
            .any(|all| all.iter().all(|(op, w)| op.holds(v.compare(w))))
    }
}

/// blang's `splitAndTrim`, byte for byte.
fn split_and_trim(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut result = Vec::new();
    let mut last = 0usize;
    let mut last_char = 0u8;
    for i in 0..b.len() {
        if b[i] == b' ' && !matches!(last_char, b'>' | b'<' | b'=') {
            if (last as i64) < i as i64 - 1 {
                result.push(&s[last..i]);
            }
            last = i + 1;
        } else if b[i] != b' ' {
            last_char = b[i];
        }
    }
    if (last as i64) < b.len() as i64 - 1 {
        result.push(&s[last..]);
    }
    result.into_iter().map(|p| p.replace(' ', "")).collect()
}

fn split_or_parts(parts: Vec<String>) -> Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let n = parts.len();
    let mut last = 0;
    for (i, p) in parts.into_iter().enumerate() {
        if p == "||" {
            if i == 0 {
                return Err("first element in range is '||'".into());
            }
            out.push(std::mem::take(&mut cur));
            last = i + 1;
        } else {
            cur.push(p);
        }
    }
    if last == n {
        return Err("last element in range is '||'".into());
    }
    out.push(cur);
    Ok(out)
}

/// blang's `splitComparatorVersion`: the operator is everything before the first digit.
fn split_comparator_version(s: &str) -> Result<(String, String), String> {
    match s.find(|c: char| c.is_ascii_digit()) {
        Some(i) => Ok((s[..i].trim().to_string(), s[i..].to_string())),
        None => Err(format!("could not get version from string: {s:?}")),
    }
}

/// Go's `strconv.Atoi` on a part, plus one; `None` when it is not a number.
fn increment_part(v: &str, idx: usize) -> String {
    let mut parts: Vec<String> = v.split('.').map(str::to_string).collect();
    match parts.get(idx).and_then(|p| p.parse::<i64>().ok()) {
        Some(n) => {
            parts[idx] = n.wrapping_add(1).to_string();
            parts.join(".")
        }
        None => String::new(),
    }
}

fn expand_wildcards(parts: Vec<Vec<String>>) -> Result<Vec<Vec<String>>, String> {
    let mut expanded = Vec::new();
    for p in parts {
        let mut new_parts = Vec::new();
        for ap in p {
            if !ap.contains('x') {
                new_parts.push(ap);
                continue;
            }
            let (op, v) = split_comparator_version(&ap)?;
            // getWildcardType
            let vparts: Vec<&str> = v.split('.').collect();
            let wildcard = match (vparts.last() == Some(&"x"), vparts.len()) {
                (true, 2) => 2, // minor wildcard: 1.x
                (true, 3) => 3, // patch wildcard: 1.2.x
                (true, 1) => 1,
                _ => 0,
            };
            // createVersionFromWildcard
            let flat = v.replacen(".x.x", ".x", 1).replacen(".x", ".0", 1);
            let flat = if flat.split('.').count() == 2 {
                format!("{flat}.0")
            } else {
                flat
            };
            let (result_op, increment) = match op.as_str() {
                ">" => (">=", true),
                ">=" => (">=", false),
                "<" => ("<", false),
                "<=" => ("<", true),
                "" | "=" | "==" => {
                    new_parts.push(format!(">={flat}"));
                    ("<", true)
                }
                "!=" | "!" => {
                    new_parts.push(format!("<{flat}"));
                    (">=", true)
                }
                _ => ("", false),
            };
            let result_version = if increment {
                match wildcard {
                    3 => increment_part(&flat, 1),
                    2 => increment_part(&flat, 0),
                    _ => String::new(),
                }
            } else {
                flat
            };
            new_parts.push(format!("{result_op}{result_version}"));
        }
        expanded.push(new_parts);
    }
    Ok(expanded)
}

/// blang's `ParseRange`.
pub fn parse_range(s: &str) -> Result<Range, String> {
    let parts = split_and_trim(s);
    let or_parts = split_or_parts(parts)?;
    let expanded = expand_wildcards(or_parts)?;
    let mut alternatives = Vec::new();
    for p in expanded {
        if p.is_empty() {
            return Err("empty alternative between '||'".into());
        }
        let mut all = Vec::new();
        for ap in p {
            let (op_str, v_str) = split_comparator_version(&ap)?;
            let Some(op) = Op::parse(&op_str) else {
                return Err(format!(
                    "could not parse range {ap:?}: could not parse comparator {op_str:?}"
                ));
            };
            let v = parse_version(&v_str).map_err(|e| {
                format!("could not parse range {ap:?}: could not parse version {v_str:?}: {e}")
            })?;
            all.push((op, v));
        }
        alternatives.push(all);
    }
    Ok(Range { alternatives })
}

/// Talos's `trim`: remove every `v` that stands right before an ASCII digit.
pub fn talos_trim(constraint: &str) -> String {
    let mut b = constraint.as_bytes().to_vec();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'v' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            b.remove(i);
        }
        i += 1;
    }
    // Only ASCII bytes were removed, so the rest is still UTF-8.
    String::from_utf8(b).unwrap_or_default()
}

/// Whether an extension with `compatibility.talos.version: constraint` may run on `talos`:
/// `Ok(true)` for an empty constraint, `Err` for an unparsable one.
pub fn talos_compatible(constraint: &str, talos: &TalosVersion) -> Result<bool, String> {
    if constraint.is_empty() {
        return Ok(true);
    }
    let range = parse_range(&talos_trim(constraint))?;
    let core = Version::new(
        u64::from(talos.major),
        u64::from(talos.minor),
        u64::from(talos.patch),
    );
    Ok(range.matches(&core))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        parse_version(s).unwrap()
    }

    #[test]
    fn blang_split_and_trim() {
        for (i, want) in [
            ("1.2.3 1.2.3", vec!["1.2.3", "1.2.3"]),
            ("     1.2.3     1.2.3     ", vec!["1.2.3", "1.2.3"]),
            ("  >=   1.2.3   <=  1.2.3   ", vec![">=1.2.3", "<=1.2.3"]),
            (
                "1.2.3 || >=1.2.3 <1.2.3",
                vec!["1.2.3", "||", ">=1.2.3", "<1.2.3"],
            ),
            (
                "      1.2.3      ||     >=1.2.3     <1.2.3    ",
                vec!["1.2.3", "||", ">=1.2.3", "<1.2.3"],
            ),
            // The single-character quirk.
            ("1 >=1.0.0", vec![">=1.0.0"]),
        ] {
            assert_eq!(split_and_trim(i), want, "{i:?}");
        }
    }

    #[test]
    fn blang_wildcards() {
        for (i, want) in [
            (">=1.2.x", vec![">=1.2.0"]),
            ("<=1.2.x", vec!["<1.3.0"]),
            (">1.2.x", vec![">=1.3.0"]),
            ("<1.2.x", vec!["<1.2.0"]),
            ("!=1.2.x", vec!["<1.2.0", ">=1.3.0"]),
            (">=1.x", vec![">=1.0.0"]),
            ("<=1.x", vec!["<2.0.0"]),
            (">1.x", vec![">=2.0.0"]),
            ("<1.x", vec!["<1.0.0"]),
            ("!=1.x", vec!["<1.0.0", ">=2.0.0"]),
            ("1.2.x", vec![">=1.2.0", "<1.3.0"]),
            ("1.x", vec![">=1.0.0", "<2.0.0"]),
        ] {
            let got = expand_wildcards(vec![vec![i.to_string()]]).unwrap();
            assert_eq!(got, vec![want], "{i:?}");
        }
        assert!(expand_wildcards(vec![vec!["foox".into()]]).is_err());
    }

    #[test]
    fn blang_parse_range_table() {
        type Case<'a> = (&'a str, &'a [(&'a str, bool)]);
        let cases: &[Case] = &[
            (
                ">1.2.3",
                &[("1.2.2", false), ("1.2.3", false), ("1.2.4", true)],
            ),
            (
                ">=1.2.3",
                &[("1.2.3", true), ("1.2.4", true), ("1.2.2", false)],
            ),
            (
                "<1.2.3",
                &[("1.2.2", true), ("1.2.3", false), ("1.2.4", false)],
            ),
            (
                "<=1.2.3",
                &[("1.2.2", true), ("1.2.3", true), ("1.2.4", false)],
            ),
            (
                "1.2.3",
                &[("1.2.2", false), ("1.2.3", true), ("1.2.4", false)],
            ),
            (
                "=1.2.3",
                &[("1.2.2", false), ("1.2.3", true), ("1.2.4", false)],
            ),
            (
                "==1.2.3",
                &[("1.2.2", false), ("1.2.3", true), ("1.2.4", false)],
            ),
            (
                "!=1.2.3",
                &[("1.2.2", true), ("1.2.3", false), ("1.2.4", true)],
            ),
            (
                "!1.2.3",
                &[("1.2.2", true), ("1.2.3", false), ("1.2.4", true)],
            ),
            (
                ">1.2.2 <1.2.4",
                &[("1.2.2", false), ("1.2.3", true), ("1.2.4", false)],
            ),
            (
                "<1.2.2 <1.2.4",
                &[
                    ("1.2.1", true),
                    ("1.2.2", false),
                    ("1.2.3", false),
                    ("1.2.4", false),
                ],
            ),
            (
                ">1.2.2 <1.2.5 !=1.2.4",
                &[
                    ("1.2.2", false),
                    ("1.2.3", true),
                    ("1.2.4", false),
                    ("1.2.5", false),
                ],
            ),
            (
                ">1.2.2 <1.2.5 !1.2.4",
                &[
                    ("1.2.2", false),
                    ("1.2.3", true),
                    ("1.2.4", false),
                    ("1.2.5", false),
                ],
            ),
            (
                ">1.2.2 || <1.2.4",
                &[("1.2.2", true), ("1.2.3", true), ("1.2.4", true)],
            ),
            (
                "<1.2.2 || >1.2.4",
                &[("1.2.2", false), ("1.2.3", false), ("1.2.4", false)],
            ),
            (
                ">1.x",
                &[
                    ("0.1.9", false),
                    ("1.2.6", false),
                    ("1.9.0", false),
                    ("2.0.0", true),
                ],
            ),
            (
                ">1.2.x",
                &[("1.1.9", false), ("1.2.6", false), ("1.3.0", true)],
            ),
            (
                ">1.2.2 <1.2.4 || >=2.0.0",
                &[
                    ("1.2.2", false),
                    ("1.2.3", true),
                    ("1.2.4", false),
                    ("2.0.0", true),
                    ("2.0.1", true),
                ],
            ),
            (
                "1.x || >=2.0.x <2.2.x",
                &[
                    ("0.9.2", false),
                    ("1.2.2", true),
                    ("2.0.0", true),
                    ("2.1.8", true),
                    ("2.2.0", false),
                ],
            ),
            (
                ">1.2.2 <1.2.4 || >=2.0.0 <3.0.0",
                &[
                    ("1.2.2", false),
                    ("1.2.3", true),
                    ("1.2.4", false),
                    ("2.0.0", true),
                    ("2.0.1", true),
                    ("2.9.9", true),
                    ("3.0.0", false),
                ],
            ),
            // Spaces after operators (splitAndTrim keeps them together).
            (
                ">= 1.10.0  <  1.13.0",
                &[("1.9.9", false), ("1.10.0", true), ("1.13.0", false)],
            ),
            // Pre-releases order below their release.
            (">=1.10.0-alpha.1", &[("1.10.0", true), ("1.9.0", false)]),
        ];
        for (range, checks) in cases {
            let r = parse_range(range).unwrap_or_else(|e| panic!("{range:?}: {e}"));
            for (ver, want) in *checks {
                assert_eq!(r.matches(&v(ver)), *want, "{range:?} vs {ver}");
            }
        }
        for bad in [
            ">>1.2.3",
            "1.0",
            "string",
            "",
            "fo.ob.ar.x",
            "|| 1.0.0",
            "1.0.0 ||",
            "~1.0.0",
            ">=01.0.0",
            "1.0.0 || || 2.0.0",
            "v1.0.0",
            "   ",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn versions_and_precedence() {
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
        ];
        for w in order.windows(2) {
            assert_eq!(v(w[0]).compare(&v(w[1])), Ordering::Less, "{w:?}");
        }
        assert_eq!(v("1.0.0+build.1").compare(&v("1.0.0")), Ordering::Equal);
        assert_eq!(v("1.2.3-rc.1+b.5").to_string(), "1.2.3-rc.1+b.5");
        for bad in [
            "1.2",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3+a..b",
            "a.b.c",
            "1.2.3-a$",
        ] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn talos_rules() {
        let t = |s: &str| TalosVersion::parse(s).unwrap();
        assert_eq!(talos_trim(">= v1.10.0 <v2"), ">= 1.10.0 <2");
        assert_eq!(talos_trim("vv1.0.0"), "v1.0.0");
        // Pre-release and build of the Talos version are dropped.
        assert_eq!(
            talos_compatible(">= v1.12.5", &t("v1.12.5-stackit.v1.7.1")),
            Ok(true)
        );
        assert_eq!(talos_compatible("", &t("v1.9.0")), Ok(true));
        assert_eq!(talos_compatible(">= v1.10.0", &t("v1.9.3")), Ok(false));
        assert_eq!(talos_compatible("v1.10.x", &t("v1.10.7")), Ok(true));
        assert_eq!(
            talos_compatible("< v1.10.0 || >= v1.12.0", &t("v1.11.0")),
            Ok(false)
        );
        assert!(talos_compatible(">= banana", &t("v1.10.0")).is_err());
    }
}
