//! Who may be reached through a session's CONNECT proxy, decided without touching the network:
//! the session's [`EgressPolicy`], the [`Target`] a CONNECT names, and which addresses a name may
//! resolve to ([`is_public`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// How a session's sandbox may reach hosts other than its model providers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressMode {
    /// No host at all.
    Deny,
    /// The configured providers' hosts and the environment's list.
    #[default]
    Allowlist,
    /// Every host with a public address (each tunnel still logged).
    Open,
}

impl EgressMode {
    /// The name environments use.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Deny => "deny",
            EgressMode::Allowlist => "allowlist",
            EgressMode::Open => "open",
        }
    }
}

impl FromStr for EgressMode {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<EgressMode, PolicyError> {
        match s {
            "deny" => Ok(EgressMode::Deny),
            "allowlist" => Ok(EgressMode::Allowlist),
            "open" => Ok(EgressMode::Open),
            other => Err(PolicyError(format!(
                "egress policy must be deny, allowlist or open, not {other:?}"
            ))),
        }
    }
}

/// A session's egress policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// What is allowed.
    pub mode: EgressMode,
    /// The hosts an [`EgressMode::Allowlist`] allows besides the providers'.
    pub allow: Vec<HostPattern>,
}

/// A host an allowlist names: `example.com`, `*.example.com` (any name below it, not itself),
/// either with `:port` for exactly that port, or without for ports 443 and 80.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    suffix: bool,
    name: String,
    port: Option<u16>,
}

/// Ports a pattern without one allows: HTTPS, and HTTP (Node tunnels plain `http://` with
/// CONNECT too).
const DEFAULT_PORTS: [u16; 2] = [443, 80];

impl HostPattern {
    /// Whether the pattern allows `name:port` (`name` lower-case).
    pub fn matches(&self, name: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        };
        let name_ok = if self.suffix {
            name.len() > self.name.len() + 1
                && name.ends_with(&self.name)
                && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
        } else {
            name == self.name
        };
        port_ok && name_ok
    }

    /// The pattern for exactly `name`, on its default ports.
    pub fn exact(name: &str) -> Result<HostPattern, PolicyError> {
        let name = name.to_ascii_lowercase();
        check_name(&name)?;
        Ok(HostPattern {
            suffix: false,
            name,
            port: None,
        })
    }
}

impl FromStr for HostPattern {
    type Err = PolicyError;
    fn from_str(raw: &str) -> Result<HostPattern, PolicyError> {
        let s = raw.trim().to_ascii_lowercase();
        if s.contains("://") || s.contains('/') {
            return Err(PolicyError(format!(
                "{raw:?}: a host pattern is a host name, optionally `*.` before it and `:port` \
                 after it, without a scheme or path"
            )));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p).map_err(|e| e.about(raw))?)),
            None => (s.as_str(), None),
        };
        let (suffix, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if name.contains('*') {
            return Err(PolicyError(format!(
                "{raw:?}: `*` may only start a pattern, as in `*.example.com`"
            )));
        }
        if name.parse::<IpAddr>().is_ok() {
            return Err(PolicyError(format!(
                "{raw:?}: an allowlist names hosts, not addresses (map a name to an address with \
                 the relay's --egress-resolve)"
            )));
        }
        check_name(name).map_err(|e| e.about(raw))?;
        Ok(HostPattern {
            suffix,
            name: name.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.suffix {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// A policy or target that does not parse; the message says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl PolicyError {
    fn about(self, raw: &str) -> PolicyError {
        PolicyError(format!("{raw:?}: {}", self.0))
    }
}

fn parse_port(p: &str) -> Result<u16, PolicyError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(PolicyError(format!("port must be 1-65535, not {p:?}"))),
    }
}

/// Checks a DNS name (lower-case): labels of letters, digits, `-` and `_`, at most 63 bytes
/// each and 253 in all, not starting or ending with `-`.
fn check_name(name: &str) -> Result<(), PolicyError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(PolicyError("host name must be 1-253 characters".into()));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(PolicyError(format!("{name:?} is not a valid host name")));
        }
    }
    Ok(())
}

/// What a CONNECT asks for: `host:port`, the host a name or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host, lower-case, without brackets or a trailing dot.
    pub host: Host,
    /// The port.
    pub port: u16,
}

/// A target's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name.
    Name(String),
    /// An address literal (refused unless the operator mapped it, which only names can be).
    Ip(IpAddr),
}

impl Target {
    /// Parses a CONNECT request's authority (`host:port`; the port is required).
    pub fn parse(authority: &str) -> Result<Target, PolicyError> {
        let bad = || {
            PolicyError(format!(
                "CONNECT needs host:port, as in `example.com:443`, not {authority:?}"
            ))
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port = parse_port(port)?;
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip = v6.parse::<Ipv6Addr>().map_err(|_| bad())?;
            return Ok(Target {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Target {
                host: Host::Ip(IpAddr::V4(ip)),
                port,
            });
        }
        let name = host.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
        check_name(&name)?;
        Ok(Target {
            host: Host::Name(name),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{n}:{}", self.port),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
        }
    }
}

/// Why a CONNECT is refused before any connection is tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The policy is `deny`.
    PolicyDeny,
    /// Not on the allowlist.
    NotAllowed,
    /// An address literal instead of a name.
    AddressLiteral,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denial::PolicyDeny => "this session's egress policy is deny: no host may be reached",
            Denial::NotAllowed => "the host is not on this session's egress allowlist",
            Denial::AddressLiteral => {
                "addresses are refused: connect by host name (the relay resolves it)"
            }
        })
    }
}

/// Whether `policy` lets a sandbox open a tunnel to `target`; `provider` says whether a name
/// is one of the configured model providers' hosts, `configured` whether a `name:port` is one
/// a secret is bound to (both always allowed unless the policy is `deny`).
pub fn decide(
    policy: &EgressPolicy,
    target: &Target,
    provider: impl Fn(&str) -> bool,
    configured: impl Fn(&str, u16) -> bool,
) -> Result<(), Denial> {
    if policy.mode == EgressMode::Deny {
        return Err(Denial::PolicyDeny);
    }
    let name = match &target.host {
        Host::Ip(_) => return Err(Denial::AddressLiteral),
        Host::Name(n) => n,
    };
    match policy.mode {
        EgressMode::Open => Ok(()),
        _ if DEFAULT_PORTS.contains(&target.port) && provider(name) => Ok(()),
        _ if configured(name, target.port) => Ok(()),
        _ if policy.allow.iter().any(|p| p.matches(name, target.port)) => Ok(()),
        _ => Err(Denial::NotAllowed),
    }
}

/// Whether a sandbox may be connected to `ip`: a globally routed unicast address, never the
/// relay's host, its private networks, link-local, multicast or reserved ranges. (Names the
/// operator maps to an address are not checked: that is how a test or an internal mirror is
/// reached on purpose.)
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 = Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32);
                return is_public_v4(v4);
            }
            let reserved = v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x2001 && seg[1] < 0x0200) // IETF protocol assignments, Teredo
                || seg[0] == 0x2002 // 6to4: would reach an embedded IPv4 address
                || seg[..6] == [0, 0, 0, 0, 0, 0]; // IPv4-compatible (deprecated)
            !reserved
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let reserved = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240; // reserved
    !reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_match_exact_names_wildcards_and_ports() {
        let gh = pattern(" GitHub.com ");
        assert!(gh.matches("github.com", 443));
        assert!(gh.matches("github.com", 80));
        assert!(!gh.matches("github.com", 22));
        assert!(!gh.matches("api.github.com", 443));
        assert!(!gh.matches("evilgithub.com", 443));

        let sub = pattern("*.npmjs.org");
        assert!(sub.matches("registry.npmjs.org", 443));
        assert!(sub.matches("a.b.npmjs.org", 443));
        assert!(
            !sub.matches("npmjs.org", 443),
            "a wildcard names hosts below it"
        );
        assert!(!sub.matches("evilnpmjs.org", 443));

        let ssh = pattern("git.example.com:22");
        assert!(ssh.matches("git.example.com", 22));
        assert!(!ssh.matches("git.example.com", 443));
        assert_eq!(ssh.to_string(), "git.example.com:22");
        assert_eq!(sub.to_string(), "*.npmjs.org");
    }

    #[test]
    fn patterns_that_are_not_host_names_are_refused_with_the_reason() {
        for (bad, why) in [
            ("https://github.com", "without a scheme"),
            ("github.com/x", "without a scheme or path"),
            ("gi*hub.com", "`*` may only start"),
            ("*.*.com", "`*` may only start"),
            ("10.0.0.1", "not addresses"),
            ("github.com:0", "port must be"),
            ("github.com:99999", "port must be"),
            ("github.com:+1", "port must be"),
            ("bad host", "not a valid host name"),
            ("-x.com", "not a valid host name"),
            ("", "1-253"),
        ] {
            let e = bad.parse::<HostPattern>().unwrap_err().0;
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn targets_parse_names_and_addresses_and_need_a_port() {
        assert_eq!(
            Target::parse("Example.COM.:443").unwrap(),
            Target {
                host: Host::Name("example.com".into()),
                port: 443
            }
        );
        assert_eq!(
            Target::parse("[::1]:8080").unwrap().host,
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            Target::parse("127.0.0.1:18080").unwrap().to_string(),
            "127.0.0.1:18080"
        );
        for bad in [
            "example.com",
            "example.com:",
            ":443",
            "exa mple.com:443",
            "[::1:443",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_decides_by_mode_list_and_providers() {
        let t = |s: &str| Target::parse(s).unwrap();
        let providers = |n: &str| n == "api.anthropic.com";
        let allow = EgressPolicy {
            mode: EgressMode::Allowlist,
            allow: vec![pattern("github.com"), pattern("*.npmjs.org")],
        };
        assert_eq!(
            decide(&allow, &t("github.com:443"), providers, |_, _| false),
            Ok(())
        );
        let bound = |n: &str, p: u16| n == "api.bound.test" && p == 8443;
        assert_eq!(
            decide(&allow, &t("api.bound.test:8443"), providers, bound),
            Ok(())
        );
        assert_eq!(
            decide(&allow, &t("api.bound.test:443"), providers, bound),
            Err(Denial::NotAllowed)
        );
        assert_eq!(
            decide(&allow, &t("registry.npmjs.org:443"), providers, |_, _| {
                false
            }),
            Ok(())
        );
        assert_eq!(
            decide(&allow, &t("api.anthropic.com:443"), providers, |_, _| false),
            Ok(())
        );
        assert_eq!(
            decide(&allow, &t("api.anthropic.com:22"), providers, |_, _| false),
            Err(Denial::NotAllowed)
        );
        assert_eq!(
            decide(&allow, &t("evil.com:443"), providers, |_, _| false),
            Err(Denial::NotAllowed)
        );
        assert_eq!(
            decide(&allow, &t("140.82.112.3:443"), providers, |_, _| false),
            Err(Denial::AddressLiteral)
        );
        let deny = EgressPolicy {
            mode: EgressMode::Deny,
            ..allow.clone()
        };
        assert_eq!(
            decide(&deny, &t("api.anthropic.com:443"), providers, |_, _| false),
            Err(Denial::PolicyDeny)
        );
        let open = EgressPolicy {
            mode: EgressMode::Open,
            allow: vec![],
        };
        assert_eq!(
            decide(&open, &t("anything.example:8443"), providers, |_, _| false),
            Ok(())
        );
        assert_eq!(
            decide(&open, &t("[2606:4700::1]:443"), providers, |_, _| false),
            Err(Denial::AddressLiteral)
        );
        assert_eq!(EgressPolicy::default().mode, EgressMode::Allowlist);
        assert_eq!("open".parse::<EgressMode>().unwrap(), EgressMode::Open);
        assert!("allow".parse::<EgressMode>().is_err());
    }

    #[test]
    fn only_globally_routed_addresses_are_public() {
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
