//! Which kind of destination an address is: the classes that matter on AKS first (IMDS,
//! WireServer, the cluster's own ranges), then the generic ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Azure (and most clouds') instance metadata service.
pub const IMDS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Azure WireServer (host agent / DNS / health): never a workload's business.
pub const WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// AWS's IPv6 IMDS address, the one IPv6 metadata endpoint in use.
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// An address range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a CIDR (e.g. 10.244.0.0/16)"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("`/{p}` is not a prefix length up to {max}"))?;
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                _ => (addr, prefix),
            },
            v4 => (v4, prefix),
        };
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is a.b.c.d: an AF_INET6 socket to a mapped IMDS address is IMDS too.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn classify(ip: IpAddr, pod_cidrs: &[Cidr], service_cidrs: &[Cidr]) -> &'static str {
    let ip = unmap(ip);
    if ip == IpAddr::V4(IMDS) || ip == IpAddr::V6(IMDS_V6) {
        return "imds";
    }
    if ip == IpAddr::V4(WIRESERVER) {
        return "wireserver";
    }
    if ip.is_loopback() {
        return "loopback";
    }
    if ip.is_unspecified() {
        return "unspecified";
    }
    if ip.is_multicast() {
        return "multicast";
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return "link-local";
    }
    if service_cidrs.iter().any(|c| c.contains(ip)) {
        return "service";
    }
    if pod_cidrs.iter().any(|c| c.contains(ip)) {
        return "pod";
    }
    let private = match ip {
        // RFC 1918, and 100.64/10 (carrier-grade NAT, used by some AKS network setups).
        IpAddr::V4(v4) => v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
        // Unique local addresses, fc00::/7.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if private { "private" } else { "public" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn aks_destinations() {
        let none: &[Cidr] = &[];
        assert_eq!(classify("169.254.169.254".parse().unwrap(), none, none), "imds");
        assert_eq!(classify("::ffff:169.254.169.254".parse().unwrap(), none, none), "imds");
        // Classified only: tests never send to it.
        assert_eq!(classify("168.63.129.16".parse().unwrap(), none, none), "wireserver");
        assert_eq!(classify("::ffff:168.63.129.16".parse().unwrap(), none, none), "wireserver");
        assert_eq!(classify("fd00:ec2::254".parse().unwrap(), none, none), "imds");
        assert_eq!(classify("169.254.10.1".parse().unwrap(), none, none), "link-local");
        assert_eq!(classify("fe80::1".parse().unwrap(), none, none), "link-local");
    }

    #[test]
    fn generic_classes() {
        let pods = [c("10.244.0.0/16")];
        let svcs = [c("10.0.0.0/16"), c("fd10::/108")];
        let cls = |s: &str| classify(s.parse().unwrap(), &pods, &svcs);
        assert_eq!(cls("127.0.0.1"), "loopback");
        assert_eq!(cls("::1"), "loopback");
        assert_eq!(cls("::ffff:127.0.0.1"), "loopback");
        assert_eq!(cls("10.244.3.7"), "pod");
        assert_eq!(cls("10.0.12.1"), "service");
        assert_eq!(cls("fd10::5"), "service");
        assert_eq!(cls("10.1.0.1"), "private");
        assert_eq!(cls("192.168.1.1"), "private");
        assert_eq!(cls("100.64.0.1"), "private");
        assert_eq!(cls("fd00::1"), "private");
        assert_eq!(cls("203.0.113.10"), "public");
        assert_eq!(cls("2001:db8::1"), "public");
        assert_eq!(cls("224.0.0.1"), "multicast");
        assert_eq!(cls("0.0.0.0"), "unspecified");
    }

    #[test]
    fn cidr_parsing_and_edges() {
        assert!(c("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(c("10.0.0.1/32").contains("10.0.0.1".parse().unwrap()));
        assert!(!c("10.0.0.1/32").contains("10.0.0.2".parse().unwrap()));
        assert!(c("10.0.0.0/8").contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }
}
