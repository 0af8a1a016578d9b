//! Container image references, normalized the way containerd and Talos's registry see them,
//! and where Talos's image cache keeps each one.
//!
//! The grammar and the normalization are those of the `distribution/reference` Go package
//! that Talos's registry parses requests with (`resolveCanonicalRef` in
//! `internal/app/machined/pkg/system/services/registry/registry.go`, v1.12.5, calls
//! `reference.ParseDockerRef`):
//! - a first component with a `.` or `:`, or `localhost`, or any upper-case letter, is a
//!   registry; otherwise the registry is `docker.io`, and a one-component Docker Hub name
//!   gets `library/` (`busybox` → `docker.io/library/busybox`); `index.docker.io` is
//!   `docker.io`;
//! - path components are lower-case alphanumerics joined by `.`, `_`, `__` or dashes; a tag
//!   is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a reference without tag or digest means
//!   `:latest`;
//! - the name (registry and path) is at most 255 characters.
//!
//! In the cache (`pkg/imager/cache/cache.go`, `processImage` and `rewriteRegistry`), a
//! reference's manifest is `manifests/<registry>/<path>/reference/<tag>` and every manifest
//! by digest `manifests/<registry>/<path>/digest/sha256-<hex>`; a registry port `host:5000`
//! is written `host_5000_` (so the tree fits on FAT too), which the registry maps back
//! (`handleRegistryWithPort`).

use std::fmt;

use anyhow::{bail, Result};

/// A normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// `registry.k8s.io`, `docker.io`, `host:5000`.
    pub registry: String,
    /// `kube-apiserver`, `library/busybox`.
    pub path: String,
    /// `None` only when a digest is given and no tag.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

const MAX_NAME: usize = 255;

impl Reference {
    /// Parse and normalize a reference; errors quote it (references are never secret).
    pub fn parse(s: &str) -> Result<Reference> {
        let shown: String = s.chars().take(300).collect();
        let bad = |why: &str| anyhow::anyhow!("{shown:?} is not an image reference: {why}");
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > 1024 {
            return Err(bad("it is longer than 1024 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let Some(hex) = d.strip_prefix("sha256:") else {
                    return Err(bad("the digest must be sha256:<64 hex digits>"));
                };
                if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(bad("the digest must be sha256:<64 lowercase hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/' (a registry port comes before a '/').
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let b = t.as_bytes();
            let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
            if b.is_empty()
                || b.len() > 128
                || !word(b[0])
                || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
            {
                return Err(bad(
                    "a tag is 1 to 128 of A-Z a-z 0-9 _ . - (not starting with . or -)",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        check_registry(&registry).map_err(|w| bad(&w))?;
        let path = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for c in path.split('/') {
            if !path_component(c) {
                return Err(bad(
                    "a name component is lower-case letters and digits, joined by '.', '_', \
                     '__' or dashes",
                ));
            }
        }
        if registry.len() + 1 + path.len() > MAX_NAME {
            return Err(bad("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// `registry/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// The directory of this name below `manifests/` in the cache.
    pub fn cache_dir(&self) -> String {
        let reg = match self.registry.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => format!("{host}_{port}_"),
            _ => self.registry.clone(),
        };
        format!("manifests/{reg}/{}", self.path)
    }

    /// The same name and tag, without the digest (what a tag file in the cache answers).
    pub fn without_digest(&self) -> Reference {
        Reference {
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `host[:port]`: DNS labels of letters, digits and inner dashes, or an IPv6 literal in
/// brackets; a port of digits.
fn check_registry(r: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                (&r[..ip.len() + 2], tail.strip_prefix(':'))
            }
            _ => return Err("a bracketed registry must be an IPv6 address".into()),
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a registry port is 1 to 5 digits".into());
        }
    }
    if !host.starts_with('[') {
        let ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err("a registry host is DNS labels of letters, digits and dashes".into());
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The cache's name of a digest: `sha256-<hex>` (from `sha256:<hex>`).
pub fn digest_file(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Parse a list of references, naming the first bad one by its place.
pub fn parse_all(list: &[String], field: &str) -> Result<Vec<Reference>> {
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match Reference::parse(s) {
            Ok(r) => out.push(r),
            Err(e) => bail!("{field}[{i}]: {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_as_containerd_does() {
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(n("index.docker.io/foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(
            n("registry.k8s.io/kube-apiserver:v1.35.2"),
            "registry.k8s.io/kube-apiserver:v1.35.2"
        );
        assert_eq!(n("localhost/app"), "localhost/app:latest");
        assert_eq!(n("host:5000/team/app:1"), "host:5000/team/app:1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/x/y:v1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        let r = Reference::parse(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.without_digest().to_string(), "ghcr.io/x/y");
    }

    #[test]
    fn cache_paths() {
        let r = Reference::parse("host:5000/team/app:1").unwrap();
        assert_eq!(r.cache_dir(), "manifests/host_5000_/team/app");
        let r = Reference::parse("registry.k8s.io/coredns/coredns:v1.13.2").unwrap();
        assert_eq!(r.cache_dir(), "manifests/registry.k8s.io/coredns/coredns");
        assert_eq!(digest_file("sha256:ab"), "sha256-ab");
    }

    #[test]
    fn refuses_bad_references() {
        for (s, why) in [
            ("", "empty"),
            ("Foo", "name component"),
            ("a/b:", "a tag"),
            ("a/b:-x", "a tag"),
            ("a/b@sha256:xyz", "digest"),
            ("a/b@md5:00", "digest"),
            ("a//b", "name component"),
            ("a/b-", "name component"),
            ("a/b..c", "name component"),
            ("host:99999999/x", "port"),
        ] {
            let e = Reference::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(Reference::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than 255"));
        assert!(path_component("a__b") && path_component("a---b") && !path_component("a___b"));
    }
}
