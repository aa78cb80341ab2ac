//! Where webhooks may go. Merchants choose their webhook URLs, so without a guard the notifier
//! would POST wherever a merchant points it — at the platform's own services, a cloud metadata
//! endpoint, the database (server-side request forgery). A host that is, or resolves to, a
//! loopback, private, link-local, unique-local, shared (CGNAT), multicast, reserved or
//! unspecified address is refused, unless an operator allow-listed its network (an on-premise
//! receiver). The check runs when a setting is saved ([`check_url`], the merchant API) and again
//! on every connection: the connector resolves each name once, drops every address the guard
//! refuses and connects only to an address it checked ([`GuardedResolver`]), so a name that
//! changes its answer between check and connect (DNS rebinding) gains nothing. Redirects are
//! never followed (a 3xx is a refused delivery: webhook.rs).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The allow-list setting, shared by the notifier (on connect) and the merchant API (on save):
/// both must be given the same list.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// Networks webhooks may reach although they are internal (on-premise receivers), e.g.
    /// `10.20.0.0/16,fd00:1::/64`. Empty: only public addresses.
    #[arg(long, env = "POSFLOW_WEBHOOK_ALLOW_NETWORKS", default_value = "")]
    pub webhook_allow_networks: String,
}

impl EgressArgs {
    pub fn check(&self, e: &mut posflow_runtime::ConfigErrors) {
        if let Err(bad) = Egress::parse(&self.webhook_allow_networks) {
            for m in bad {
                e.push(format!("--webhook-allow-networks: {m}"));
            }
        }
    }
    pub fn egress(&self) -> Egress {
        Egress::parse(&self.webhook_allow_networks).unwrap_or_default()
    }
}

/// One allow-listed network, `10.20.0.0/16` or `fd00:1::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a network (address/prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix must be 0..={max}"))?;
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is
/// judged as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            ip
        }
        v4 => v4,
    }
}

/// The range an address falls in if it is not on the public internet, else `None`.
pub fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let [o1, o2, ..] = a.octets();
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_private() {
                Some("private")
            } else if a == Ipv4Addr::new(169, 254, 169, 254) {
                Some("cloud metadata")
            } else if a.is_link_local() {
                Some("link-local")
            } else if o1 == 100 && (64..128).contains(&o2) {
                Some("shared address space (CGNAT)")
            } else if a.is_unspecified() || o1 == 0 {
                Some("unspecified")
            } else if a.is_broadcast() || a.is_multicast() || o1 >= 240 {
                Some("multicast, broadcast or reserved")
            } else if o1 == 198 && (18..20).contains(&o2) {
                Some("benchmarking")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_unspecified() {
                Some("unspecified")
            } else if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else if first == 0x0100 && a.segments()[1..4] == [0, 0, 0] {
                Some("discard-only")
            } else {
                None
            }
        }
    }
}

/// The guard: what is refused, and the operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allow: Vec<Network>,
}

impl Egress {
    /// `10.0.0.0/8,fd00::/8` — every mistake listed.
    pub fn parse(list: &str) -> Result<Self, Vec<String>> {
        let (ok, bad): (Vec<_>, Vec<_>) = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Network::parse)
            .partition(Result::is_ok);
        if bad.is_empty() {
            Ok(Egress {
                allow: ok.into_iter().map(Result::unwrap).collect(),
            })
        } else {
            Err(bad.into_iter().map(|e| e.unwrap_err()).collect())
        }
    }

    /// Why `ip` may not be called, or `None` if it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let range = internal_range(ip)?;
        if self.allow.iter().any(|n| n.contains(ip)) {
            return None;
        }
        Some(format!(
            "{ip} is a {range} address (not allowed for webhooks)"
        ))
    }

    /// Resolves `host` once; every address must be allowed (a name answering with one inside
    /// address among public ones is refused outright: that is what a rebinding attack looks
    /// like). The addresses returned are the ones checked, for the connector to use.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("{host} does not resolve: {e}"))?
                .collect(),
        };
        if let Some(why) = found.iter().find_map(|a| self.refusal(a.ip())) {
            return Err(format!("{host}: {why}"));
        }
        if found.is_empty() {
            return Err(format!("{host} has no address"));
        }
        Ok(found)
    }

    /// Checks a webhook URL as a setting is saved (the same check as on connect).
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| format!("{url:?} is not a valid URL"))?;
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
        self.resolve(host, uri.port_u16().unwrap_or(443))
            .await
            .map(drop)
    }
}

/// The webhook client's resolver: resolves once, hands the connector only checked addresses.
#[derive(Clone)]
pub struct GuardedResolver(pub Arc<Egress>);

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, Refused>> + Send>>;

/// A connection the guard refused; the delivery's error says why.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "egress refused: {}", self.0)
    }
}
impl std::error::Error for Refused {}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Refused;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refused>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            // Port 0: the connector sets the URL's port on each address.
            egress
                .resolve(name.as_str(), 0)
                .await
                .map(Vec::into_iter)
                .map_err(Refused)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_internal_range_is_refused_and_public_addresses_pass() {
        let g = Egress::default();
        for (addr, range) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("224.0.0.1", "multicast, broadcast or reserved"),
            ("255.255.255.255", "multicast, broadcast or reserved"),
            ("198.18.0.1", "benchmarking"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("64:ff9b::a00:1", "private"),
        ] {
            assert_eq!(internal_range(ip(addr)), Some(range), "{addr}");
            assert!(g.refusal(ip(addr)).is_some(), "{addr}");
        }
        for public in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "8.8.8.8",
        ] {
            assert_eq!(internal_range(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_networks() {
        let g = Egress::parse("10.20.0.0/16, fd00:1::/64,127.0.0.1/32").unwrap();
        assert!(g.refusal(ip("10.20.9.9")).is_none());
        assert!(g.refusal(ip("10.21.0.1")).is_some());
        assert!(g.refusal(ip("fd00:1::5")).is_none());
        assert!(g.refusal(ip("fd00:2::5")).is_some());
        assert!(g.refusal(ip("127.0.0.1")).is_none());
        assert!(g.refusal(ip("::ffff:127.0.0.1")).is_none());
        assert!(g.refusal(ip("127.0.0.2")).is_some());
        let e = Egress::parse("10.0.0.0/33,nonsense,fe80::/200").unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[tokio::test]
    async fn a_name_resolving_inside_is_refused_on_save_and_on_connect() {
        let g = Egress::default();
        let e = g
            .check_url("https://localhost:8443/hook")
            .await
            .unwrap_err();
        assert!(e.starts_with("localhost: "), "{e}");
        assert!(e.contains("loopback"), "{e}");
        let e = g.resolve("localhost", 0).await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = g.check_url("https://[::1]/x").await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = g
            .check_url("https://169.254.169.254/latest/meta-data")
            .await
            .unwrap_err();
        assert!(e.contains("cloud metadata"), "{e}");
        let open = Egress::parse("127.0.0.0/8,::1/128").unwrap();
        assert!(open.check_url("https://localhost:8443/hook").await.is_ok());
    }
}
