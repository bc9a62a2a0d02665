//! The SSRF guard: which webhook URLs the broker may call.
//!
//! Only `http` and `https`. The host is resolved by the broker and every address is checked
//! (after `to_canonical`, so `::ffff:127.0.0.1` is loopback); the HTTP client connects only to
//! addresses that passed ([`GuardedResolver`]), at creation and again at every delivery, so a
//! name that later resolves elsewhere (DNS rebinding) is caught. `CPOD_WEBHOOK_ALLOW_PRIVATE`
//! lifts the address check, not the scheme check.
//!
//! "Public" is read off the IANA special-purpose address registries of both families
//! ([`SPECIAL_V4`], [`SPECIAL_V6`], one row each, each row tested) and, for IPv6, the global
//! unicast space `2000::/3`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::Url;

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("the URL may not carry a user name or password")]
    Credentials,
    #[error("{0} is not a public address")]
    NotPublic(IpAddr),
    #[error("the host {0} does not resolve")]
    Unresolvable(String),
}

/// Parses a webhook URL and checks its scheme and form (not yet its addresses).
pub fn parse(raw: &str) -> Result<Url, UrlRefused> {
    let url = Url::parse(raw).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    if url.host().is_none() {
        return Err(UrlRefused::Invalid("the URL has no host".into()));
    }
    Ok(url)
}

/// Checks every address the URL's host stands for (resolving a name).
pub async fn check(url: &Url, allow_private: bool) -> Result<(), UrlRefused> {
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| UrlRefused::Unresolvable(name.to_owned()))?
            .map(|a| a.ip())
            .collect(),
        None => return Err(UrlRefused::Invalid("the URL has no host".into())),
    };
    if addresses.is_empty() {
        return Err(UrlRefused::Unresolvable(
            url.host_str().unwrap_or_default().to_owned(),
        ));
    }
    match addresses.into_iter().find(|ip| !is_public(*ip)) {
        Some(ip) => Err(UrlRefused::NotPublic(ip)),
        None => Ok(()),
    }
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// The IANA IPv4 Special-Purpose Address Registry (RFC 6890, as of 2025), every row, plus the
/// rest of the IPv4 address space that is not unicast (multicast, RFC 5771). Every row is
/// refused, the "globally reachable" ones too: they are anycast service addresses (PCP, TURN,
/// AS112 DNS sinks, AMT relays), never a webhook receiver.
const SPECIAL_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network (RFC 791)"),
    (Ipv4Addr::new(0, 0, 0, 0), 32, "this host on this network"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private-use (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (RFC 6598)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local, cloud metadata",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private-use (RFC 1918)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        29,
        "IPv4 service continuity prefix",
    ),
    (Ipv4Addr::new(192, 0, 0, 8), 32, "IPv4 dummy address"),
    (
        Ipv4Addr::new(192, 0, 0, 9),
        32,
        "port control protocol anycast",
    ),
    (Ipv4Addr::new(192, 0, 0, 10), 32, "TURN anycast"),
    (Ipv4Addr::new(192, 0, 0, 170), 32, "NAT64/DNS64 discovery"),
    (Ipv4Addr::new(192, 0, 0, 171), 32, "NAT64/DNS64 discovery"),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (TEST-NET-1)",
    ),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112-v4"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay anycast",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private-use (RFC 1918)"),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "direct delegation AS112 service",
    ),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (TEST-NET-2)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (TEST-NET-3)",
    ),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (RFC 5771)"),
];

/// What an IPv6 special-purpose row means for a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V6Rule {
    Refuse,
    /// A translation prefix: as public as the IPv4 address in the last 32 bits (NAT64 through
    /// DNS64 is how an IPv6-only broker reaches IPv4 receivers).
    LastBitsV4,
    /// 6to4: as public as the IPv4 address in bits 16 to 48.
    SixToFourV4,
}

/// The IANA IPv6 Special-Purpose Address Registry (RFC 6890, as of 2025), every row, plus the
/// deprecated or non-unicast ranges around them. Besides this table only global unicast
/// (`2000::/3`, the IANA IPv6 Address Space registry) is public: everything else there is
/// reserved, multicast, or local. As for IPv4, "globally reachable" anycast and identifier rows
/// are refused too.
const SPECIAL_V6: &[(Ipv6Addr, u8, V6Rule, &str)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
        128,
        V6Rule::Refuse,
        "loopback",
    ),
    (Ipv6Addr::UNSPECIFIED, 128, V6Rule::Refuse, "unspecified"),
    // Canonicalised to IPv4 before this table is read; refused here should that ever change.
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        V6Rule::Refuse,
        "IPv4-mapped",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        V6Rule::Refuse,
        "IPv4-translated (RFC 2765)",
    ),
    (
        Ipv6Addr::UNSPECIFIED,
        96,
        V6Rule::Refuse,
        "IPv4-compatible (deprecated, RFC 4291)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        V6Rule::LastBitsV4,
        "IPv4-IPv6 translation (NAT64)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse,
        "IPv4-IPv6 translation, local use",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        V6Rule::Refuse,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        V6Rule::Refuse,
        "dummy IPv6 prefix",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        V6Rule::Refuse,
        "IETF protocol assignments",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        V6Rule::Refuse,
        "Teredo",
    ),
    (
        Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 1),
        128,
        V6Rule::Refuse,
        "port control protocol anycast",
    ),
    (
        Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 2),
        128,
        V6Rule::Refuse,
        "TURN anycast",
    ),
    (
        Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 3),
        128,
        V6Rule::Refuse,
        "DNS-SD service registration anycast",
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse,
        "benchmarking",
    ),
    (
        Ipv6Addr::new(0x2001, 3, 0, 0, 0, 0, 0, 0),
        32,
        V6Rule::Refuse,
        "AMT",
    ),
    (
        Ipv6Addr::new(0x2001, 4, 0x112, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse,
        "AS112-v6",
    ),
    (
        Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        V6Rule::Refuse,
        "deprecated ORCHID",
    ),
    (
        Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0),
        28,
        V6Rule::Refuse,
        "ORCHIDv2",
    ),
    (
        Ipv6Addr::new(0x2001, 0x30, 0, 0, 0, 0, 0, 0),
        28,
        V6Rule::Refuse,
        "drone remote ID entity tags",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        V6Rule::Refuse,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        V6Rule::SixToFourV4,
        "6to4",
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse,
        "direct delegation AS112 service",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        V6Rule::Refuse,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        V6Rule::Refuse,
        "segment routing (SRv6) SIDs",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        V6Rule::Refuse,
        "unique-local",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        V6Rule::Refuse,
        "link-local unicast",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        V6Rule::Refuse,
        "site-local (deprecated)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        V6Rule::Refuse,
        "multicast",
    ),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !SPECIAL_V4
        .iter()
        .any(|(net, prefix, _)| in_v4(ip, *net, *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // The most specific row decides (64:ff9b:1::/48 is not the NAT64 /96 beside it, and
    // 2001:1::1 sits inside 2001::/23).
    let row = SPECIAL_V6
        .iter()
        .filter(|(net, prefix, _, _)| in_v6(ip, *net, *prefix))
        .max_by_key(|(_, prefix, _, _)| *prefix);
    let bits = u128::from(ip);
    match row.map(|(_, _, rule, _)| *rule) {
        Some(V6Rule::Refuse) => false,
        Some(V6Rule::LastBitsV4) => is_public_v4(Ipv4Addr::from(bits as u32)),
        Some(V6Rule::SixToFourV4) => is_public_v4(Ipv4Addr::from((bits >> 80) as u32)),
        // Global unicast is 2000::/3; the rest of the space is reserved, local or multicast.
        None => in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3),
    }
}

/// A DNS resolver for the webhook client that hands out only public addresses, so the
/// connection goes to an address that was checked.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addresses
                .into_iter()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to no public address"),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver as reqwest takes it.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_non_public_range_is_refused() {
        for blocked in [
            "127.0.0.1",
            "127.255.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "::127.0.0.1",
            "fec0::1",
            "2001::1",
            "100::1",
        ] {
            let ip: IpAddr = blocked.parse().unwrap();
            assert!(!is_public(ip), "{blocked} passed");
        }
    }

    /// The first and last address of a range.
    fn ends_v4(net: Ipv4Addr, prefix: u8) -> [Ipv4Addr; 2] {
        let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        [net, Ipv4Addr::from(u32::from(net) | host)]
    }

    fn ends_v6(net: Ipv6Addr, prefix: u8) -> [Ipv6Addr; 2] {
        let host = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        [net, Ipv6Addr::from(u128::from(net) | host)]
    }

    #[test]
    fn every_ipv4_special_purpose_row_is_refused_from_its_first_to_its_last_address() {
        for (net, prefix, name) in SPECIAL_V4 {
            for ip in ends_v4(*net, *prefix) {
                assert!(!is_public(IpAddr::V4(ip)), "{ip} ({name}) passed");
                // The same address written as IPv4-mapped IPv6 is the same address.
                assert!(!is_public(IpAddr::V6(ip.to_ipv6_mapped())), "{ip} mapped");
            }
        }
    }

    #[test]
    fn every_ipv6_special_purpose_row_is_refused_unless_it_embeds_a_public_ipv4_address() {
        let public_v4 = u128::from(u32::from(Ipv4Addr::new(8, 8, 8, 8)));
        let private_v4 = u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)));
        for (net, prefix, rule, name) in SPECIAL_V6 {
            let base = u128::from(*net);
            match rule {
                V6Rule::Refuse => {
                    for ip in ends_v6(*net, *prefix) {
                        assert!(!is_public(IpAddr::V6(ip)), "{ip} ({name}) passed");
                    }
                }
                V6Rule::LastBitsV4 => {
                    assert!(is_public(Ipv6Addr::from(base | public_v4).into()), "{name}");
                    assert!(
                        !is_public(Ipv6Addr::from(base | private_v4).into()),
                        "{name}"
                    );
                }
                V6Rule::SixToFourV4 => {
                    assert!(
                        is_public(Ipv6Addr::from(base | public_v4 << 80).into()),
                        "{name}"
                    );
                    assert!(
                        !is_public(Ipv6Addr::from(base | private_v4 << 80).into()),
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_ranges_the_hardening_review_found_open_are_refused() {
        for blocked in [
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff::1",
            "::ffff:0:808:808",
            "::ffff:0:7f00:1",
            "5f00::1",
            "5f00:ffff::1",
            "2001:2::1",
            "2001:2:0:ffff::1",
            "2001:1::1",
            "2001:4:112::1",
            "2620:4f:8000::1",
            "100:0:0:1::1",
            // outside global unicast 2000::/3
            "4000::1",
            "e000::1",
        ] {
            let ip: IpAddr = blocked.parse().unwrap();
            assert!(!is_public(ip), "{blocked} passed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "192.0.1.1",
            "192.0.3.1",
            "2001:200::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public} refused");
        }
    }

    #[test]
    fn only_http_and_https_urls_without_credentials_parse() {
        assert!(parse("https://example.com/hook").is_ok());
        assert!(parse("http://example.com:8080/hook?x=1").is_ok());
        assert_eq!(parse("ftp://example.com/").unwrap_err(), UrlRefused::Scheme);
        assert_eq!(parse("file:///etc/passwd").unwrap_err(), UrlRefused::Scheme);
        assert_eq!(
            parse("https://user:pw@example.com/").unwrap_err(),
            UrlRefused::Credentials
        );
        assert!(matches!(parse("not a url"), Err(UrlRefused::Invalid(_))));
    }

    #[tokio::test]
    async fn literal_and_resolved_private_hosts_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:8080/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            let parsed = parse(url).unwrap();
            assert!(
                matches!(
                    check(&parsed, false).await,
                    Err(UrlRefused::NotPublic(_)) | Err(UrlRefused::Unresolvable(_))
                ),
                "{url}"
            );
            assert_eq!(check(&parsed, true).await, Ok(()), "{url}");
        }
    }
}
