//! API key details: SMART App Launch v2 scopes, the `metrics` scope, and client CIDR ranges.

use std::net::IpAddr;

use carevault_fhir::ResourceType;

use crate::error::{Error, Result};

/// The scope of a key that reads `/metrics` and nothing else (a Prometheus scraper's).
pub const METRICS_SCOPE: &str = "metrics";

/// Parse SMART v2 scopes (`system/Observation.rs`, `user/*.cruds`) into the normalized form the
/// policies check (`Observation.r`, `Observation.s`, `*.c`, ...), or the lone scope `metrics`.
pub fn parse_scopes(scopes: &[String]) -> Result<Vec<String>> {
    if scopes.is_empty() {
        return Err(Error::BadRequest("at least one scope is required".into()));
    }
    if scopes.iter().any(|s| s == METRICS_SCOPE) {
        // A scraper's credential sits in a config file on the monitoring host: it must not
        // also open patient data.
        if scopes.iter().any(|s| s != METRICS_SCOPE) {
            return Err(Error::BadRequest(
                "the metrics scope stands alone: make a separate key for FHIR scopes".into(),
            ));
        }
        return Ok(vec![METRICS_SCOPE.to_owned()]);
    }
    let mut out = Vec::new();
    for scope in scopes {
        let bad = || {
            Error::BadRequest(
                "scopes use SMART v2 syntax: system/<Type|*>.<letters from cruds, in that order>, e.g. system/Observation.rs"
                    .into(),
            )
        };
        let (context, rest) = scope.split_once('/').ok_or_else(bad)?;
        if !matches!(context, "system" | "user") {
            return Err(bad());
        }
        let (rtype, letters) = rest.split_once('.').ok_or_else(bad)?;
        if rtype != "*" {
            ResourceType::parse(rtype).map_err(|_| bad())?;
        }
        if letters.is_empty() || !is_ordered_subset(letters, "cruds") {
            return Err(bad());
        }
        for letter in letters.chars() {
            let normalized = format!("{rtype}.{letter}");
            if !out.contains(&normalized) {
                out.push(normalized);
            }
        }
    }
    Ok(out)
}

fn is_ordered_subset(letters: &str, order: &str) -> bool {
    let mut allowed = order.chars();
    letters.chars().all(|c| allowed.by_ref().any(|a| a == c))
}

/// A CIDR range such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::BadRequest(
                "allowed_cidrs entries must look like 10.0.0.0/8 or 2001:db8::/32".into(),
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, if s.contains(':') { 128 } else { 32 }),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            // An IPv4 client reached over an IPv6 socket.
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_v2_scopes() {
        let s = |v: &[&str]| parse_scopes(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(
            s(&["system/Observation.rs"]).unwrap(),
            ["Observation.r", "Observation.s"]
        );
        assert_eq!(
            s(&["user/*.cruds"]).unwrap(),
            ["*.c", "*.r", "*.u", "*.d", "*.s"]
        );
        for bad in [
            "Observation.rs",
            "system/Observation.sr",
            "system/Spaceship.r",
            "patient/Observation.r",
            "system/Observation.",
            "system/Observation.x",
        ] {
            assert!(s(&[bad]).is_err(), "{bad}");
        }
        assert!(s(&[]).is_err());
        assert_eq!(s(&["metrics", "metrics"]).unwrap(), ["metrics"]);
        assert!(s(&["metrics", "system/Observation.r"]).is_err());
        assert!(s(&["system/*.r", "metrics"]).is_err());
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        let loopback = Cidr::parse("127.0.0.1").unwrap();
        assert!(loopback.contains("127.0.0.1".parse().unwrap()));
        assert!(!loopback.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
