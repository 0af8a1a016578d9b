//! The META network configuration (key `0x0a`): YAML of Talos's `PlatformNetworkConfig`
//! (`internal/app/machined/pkg/runtime/platform_network_config.go`), read by the metal
//! platform (`platform/metal/metal.go`, `NetworkConfiguration`) with a plain
//! `yaml.Unmarshal`.
//!
//! Talos ignores fields it does not know; this check rejects them (a typo would silently drop
//! a setting). Field names and value types follow the resource specs in
//! `pkg/machinery/resources/network` (`AddressSpecSpec`, `LinkSpecSpec`, `RouteSpecSpec`,
//! `HostnameSpecSpec`, `ResolverSpecSpec`, `TimeServerSpecSpec`, `OperatorSpecSpec`,
//! `ProbeSpecSpec`) and `runtime.PlatformMetadataSpec`. Nested link settings (`vlan`,
//! `bondMaster`, `bridgeMaster`, `vrfMaster`, `wireguard`) and operator settings (`dhcp4`,
//! `dhcp6`, `vip`) are only checked to be mappings.

use std::net::IpAddr;

use anyhow::{bail, Result};
use serde_json::Value;

use super::{parse_yaml_documents, type_name};

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    UInt,
    /// `netip.Prefix`: `ADDR/BITS`.
    Prefix,
    /// `netip.Addr`.
    Addr,
    /// One of the listed strings.
    OneOf(&'static [&'static str]),
    /// A string or a number (Talos enums that marshal as names, e.g. a routing table).
    Enum,
    /// A mapping, not checked deeper.
    Map,
    List(&'static Kind),
    Object(&'static [(&'static str, Kind)]),
}

const FAMILY: Kind = Kind::OneOf(&["inet4", "inet6"]);
const SCOPE: Kind = Kind::OneOf(&["global", "site", "link", "host", "nowhere"]);
const LAYER: Kind = Kind::OneOf(&[
    "default",
    "cmdline",
    "platform",
    "operator",
    "configuration",
]);

const ADDRESS: &[(&str, Kind)] = &[
    ("address", Kind::Prefix),
    ("linkName", Kind::Str),
    ("family", FAMILY),
    ("scope", SCOPE),
    ("flags", Kind::Enum),
    ("announceWithARP", Kind::Bool),
    ("layer", LAYER),
];

const LINK: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("logical", Kind::Bool),
    ("up", Kind::Bool),
    ("mtu", Kind::UInt),
    ("kind", Kind::Str),
    ("type", Kind::Enum),
    ("hardwareAddr", Kind::Str),
    ("parentName", Kind::Str),
    ("masterName", Kind::Str),
    ("slaveIndex", Kind::UInt),
    ("bridgeSlave", Kind::Map),
    ("vrfSlave", Kind::Map),
    ("vlan", Kind::Map),
    ("bondMaster", Kind::Map),
    ("bridgeMaster", Kind::Map),
    ("vrfMaster", Kind::Map),
    ("wireguard", Kind::Map),
    ("layer", LAYER),
    ("multicast", Kind::Bool),
];

const ROUTE: &[(&str, Kind)] = &[
    ("family", FAMILY),
    ("dst", Kind::Prefix),
    ("src", Kind::Addr),
    ("gateway", Kind::Addr),
    ("outLinkName", Kind::Str),
    ("table", Kind::Enum),
    ("priority", Kind::UInt),
    ("scope", SCOPE),
    ("type", Kind::Enum),
    ("flags", Kind::Enum),
    ("protocol", Kind::Enum),
    ("layer", LAYER),
    ("mtu", Kind::UInt),
];

const HOSTNAME: &[(&str, Kind)] = &[
    ("hostname", Kind::Str),
    ("domainname", Kind::Str),
    ("layer", LAYER),
];

const NAME_SERVER: &[(&str, Kind)] = &[
    ("addr", Kind::Addr),
    ("protocol", Kind::Enum),
    ("tlsServerName", Kind::Str),
];

const RESOLVER: &[(&str, Kind)] = &[
    ("dnsServers", Kind::List(&Kind::Addr)),
    ("nameServers", Kind::List(&Kind::Object(NAME_SERVER))),
    ("layer", LAYER),
    ("searchDomains", Kind::List(&Kind::Str)),
];

const TIME_SERVER: &[(&str, Kind)] = &[("timeServers", Kind::List(&Kind::Str)), ("layer", LAYER)];

const OPERATOR: &[(&str, Kind)] = &[
    ("operator", Kind::OneOf(&["dhcp4", "dhcp6", "vip"])),
    ("linkName", Kind::Str),
    ("requireUp", Kind::Bool),
    ("dhcp4", Kind::Map),
    ("dhcp6", Kind::Map),
    ("vip", Kind::Map),
    ("layer", LAYER),
];

const TCP_PROBE: &[(&str, Kind)] = &[("endpoint", Kind::Str), ("timeout", Kind::Enum)];

const PROBE: &[(&str, Kind)] = &[
    ("interval", Kind::Enum),
    ("failureThreshold", Kind::UInt),
    ("tcp", Kind::Object(TCP_PROBE)),
    ("layer", LAYER),
];

const METADATA: &[(&str, Kind)] = &[
    ("platform", Kind::Str),
    ("hostname", Kind::Str),
    ("region", Kind::Str),
    ("zone", Kind::Str),
    ("instanceType", Kind::Str),
    ("instanceId", Kind::Str),
    ("providerId", Kind::Str),
    ("spot", Kind::Bool),
    ("internalDNS", Kind::Str),
    ("externalDNS", Kind::Str),
    ("tags", Kind::Map),
];

const TOP: &[(&str, Kind)] = &[
    ("addresses", Kind::List(&Kind::Object(ADDRESS))),
    ("links", Kind::List(&Kind::Object(LINK))),
    ("routes", Kind::List(&Kind::Object(ROUTE))),
    ("hostnames", Kind::List(&Kind::Object(HOSTNAME))),
    ("resolvers", Kind::List(&Kind::Object(RESOLVER))),
    ("timeServers", Kind::List(&Kind::Object(TIME_SERVER))),
    ("operators", Kind::List(&Kind::Object(OPERATOR))),
    ("externalIPs", Kind::List(&Kind::Addr)),
    ("probes", Kind::List(&Kind::Object(PROBE))),
    ("metadata", Kind::Object(METADATA)),
];

/// Check META network configuration YAML against `PlatformNetworkConfig`. Errors name the
/// path inside the YAML (`addresses[0].address`).
pub fn check_network_config(yaml: &[u8]) -> Result<()> {
    let docs = parse_yaml_documents(yaml).map_err(|e| anyhow::anyhow!("network config: {e}"))?;
    match docs.as_slice() {
        [] => bail!("network config: empty"),
        [doc] => {
            check(doc, &Kind::Object(TOP), "").map_err(|e| anyhow::anyhow!("network config: {e}"))
        }
        _ => bail!(
            "network config: {} YAML documents, expected one",
            docs.len()
        ),
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "the top level".to_string()
    } else {
        format!("`{path}`")
    }
}

fn check(v: &Value, kind: &Kind, path: &str) -> Result<(), String> {
    let want = |what: &str| format!("{}: is {}, expected {what}", at(path), type_name(v));
    if v.is_null() {
        return Ok(()); // Go's zero value
    }
    match kind {
        Kind::Str => v.as_str().map(|_| ()).ok_or_else(|| want("a string")),
        Kind::Bool => v.as_bool().map(|_| ()).ok_or_else(|| want("true or false")),
        Kind::UInt => match v.as_u64() {
            Some(n) if n <= u64::from(u32::MAX) => Ok(()),
            _ => Err(want("an unsigned 32-bit number")),
        },
        Kind::Enum => match v {
            Value::String(_) | Value::Number(_) => Ok(()),
            _ => Err(want("a name or a number")),
        },
        Kind::Map => v.as_object().map(|_| ()).ok_or_else(|| want("a mapping")),
        Kind::OneOf(names) => match v.as_str() {
            Some(s) if names.contains(&s) => Ok(()),
            Some(_) => Err(format!("{}: must be one of {}", at(path), names.join(", "))),
            None => Err(want("a string")),
        },
        Kind::Addr => {
            let s = v.as_str().ok_or_else(|| want("an IP address"))?;
            if s.is_empty() {
                return Ok(()); // the zero netip.Addr
            }
            s.parse::<IpAddr>()
                .map(|_| ())
                .map_err(|_| format!("{}: {s:?} is not an IP address", at(path)))
        }
        Kind::Prefix => {
            let s = v
                .as_str()
                .ok_or_else(|| want("an address with prefix length"))?;
            if s.is_empty() {
                return Ok(()); // the zero netip.Prefix (e.g. a default route's `dst`)
            }
            let bad = || {
                format!(
                    "{}: {s:?} is not an address with a prefix length (like 10.0.0.5/24)",
                    at(path)
                )
            };
            let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if bits > max || bits.to_string().len() != s.len() - s.find('/').unwrap() - 1 {
                return Err(bad());
            }
            Ok(())
        }
        Kind::List(item) => {
            let a = v.as_array().ok_or_else(|| want("a list"))?;
            a.iter()
                .enumerate()
                .try_for_each(|(i, x)| check(x, item, &format!("{path}[{i}]")))
        }
        Kind::Object(fields) => {
            let m = v.as_object().ok_or_else(|| want("a mapping"))?;
            for (k, x) in m {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let Some((_, fk)) = fields.iter().find(|(n, _)| n == k) else {
                    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "{}: unknown field (known: {})",
                        at(&sub),
                        names.join(", ")
                    ));
                };
                check(x, fk, &sub)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
addresses:
  - address: 192.168.10.5/24
    linkName: eth0
    family: inet4
    scope: global
    flags: permanent
    layer: platform
  - address: 2001:db8::5/64
    linkName: eth0
    family: inet6
links:
  - name: eth0
    logical: false
    up: true
    mtu: 1500
    kind: ''
    type: ether
    layer: platform
  - name: bond0
    logical: true
    up: true
    kind: bond
    type: ether
    bondMaster:
      mode: 802.3ad
routes:
  - family: inet4
    dst: ''
    gateway: 192.168.10.1
    outLinkName: eth0
    table: main
    priority: 1024
    scope: global
    type: unicast
    protocol: static
    layer: platform
hostnames:
  - hostname: edge-01
    domainname: example.com
    layer: platform
resolvers:
  - dnsServers: [1.1.1.1, 2606:4700:4700::1111]
    layer: platform
timeServers:
  - timeServers: [pool.ntp.org]
    layer: platform
operators:
  - operator: dhcp4
    linkName: eth1
    requireUp: true
    dhcp4:
      routeMetric: 1024
externalIPs: [203.0.113.7]
";

    #[test]
    fn a_full_config_passes() {
        check_network_config(GOOD.as_bytes()).unwrap();
        check_network_config(b"addresses: []\n").unwrap();
        check_network_config(b"{}\n").unwrap();
    }

    #[test]
    fn hostile_configs_name_the_path() {
        for (yaml, want) in [
            (
                "addresses:\n  - address: 10.0.0.300/24\n",
                "`addresses[0].address`: \"10.0.0.300/24\" is not an address with a prefix length",
            ),
            (
                "addresses:\n  - address: 10.0.0.3\n",
                "`addresses[0].address`: \"10.0.0.3\" is not an address with a prefix",
            ),
            (
                "addresses:\n  - address: 10.0.0.3/33\n",
                "is not an address with a prefix",
            ),
            (
                "addresses:\n  - adress: 10.0.0.3/24\n",
                "`addresses[0].adress`: unknown field (known: address, linkName",
            ),
            (
                "addresses:\n  - address: 10.0.0.3/24\n    family: ipv4\n",
                "`addresses[0].family`: must be one of inet4, inet6",
            ),
            (
                "routes:\n  - gateway: 10.0.0.256\n",
                "`routes[0].gateway`: \"10.0.0.256\" is not an IP address",
            ),
            (
                "routes:\n  - dst: 0.0.0.0/0\n    priority: -1\n",
                "`routes[0].priority`: is a number, expected an unsigned",
            ),
            (
                "links:\n  - name: eth0\n    mtu: '1500'\n",
                "`links[0].mtu`: is a string, expected an unsigned",
            ),
            (
                "links:\n  - name: eth0\n    up: yes please\n",
                "`links[0].up`: is a string, expected true or false",
            ),
            (
                "resolvers:\n  - dnsServers: [1.1.1.1, dns.google]\n",
                "`resolvers[0].dnsServers[1]`: \"dns.google\" is not an IP address",
            ),
            (
                "externalIPs: 1.2.3.4\n",
                "`externalIPs`: is a string, expected a list",
            ),
            (
                "hostname: edge\n",
                "`hostname`: unknown field (known: addresses, links",
            ),
            (
                "operators:\n  - operator: dhcp\n",
                "`operators[0].operator`: must be one of dhcp4, dhcp6, vip",
            ),
            ("- a\n", "the top level: is a list, expected a mapping"),
            (
                "addresses: [\n",
                "network config: document 1 is not valid YAML",
            ),
            ("a: 1\n---\nb: 2\n", "2 YAML documents, expected one"),
            ("", "network config: empty"),
        ] {
            let e = check_network_config(yaml.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml:?}: want {want:?}, got {e}");
        }
    }
}
