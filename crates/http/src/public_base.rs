//! The server's public address. Absolute URLs (`Location`, Bundle and paging links) are built
//! from it, never from the client's `Host` header; a request addressed to a host name this
//! server does not answer for is refused with 421 Misdirected Request before any handler runs,
//! so a forged `Host` can neither reach a link nor lead a client to send its token elsewhere.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::header;

use carevault_server::config::Config;

/// The origin links are built from and the authorities requests may address.
#[derive(Clone, Debug)]
pub struct PublicBase {
    /// `scheme://host[:port][/path]`, without a trailing slash.
    origin: String,
    /// `origin` + `/fhir`: FHIR's `[base]`.
    fhir_base: String,
    /// Every accepted form, lowercase: `host:port`, and `host` alone where the port is the
    /// scheme's default, so that a request is checked without allocating.
    accepted: Vec<String>,
}

impl PublicBase {
    /// From `public_base_url` and `allowed_hosts`; without `public_base_url`, the address the
    /// listener is bound to (`bound`), and `localhost` too on a loopback address.
    pub fn new(config: &Config, bound: SocketAddr) -> Self {
        let (origin, own, default_port) = match &config.public_base_url {
            Some(url) => (
                url.origin().to_owned(),
                vec![url.authority().to_owned()],
                url.default_port(),
            ),
            None => {
                let (scheme, port) = if config.plain_http {
                    ("http", 80)
                } else {
                    ("https", 443)
                };
                let mut own = vec![bound.to_string()];
                if bound.ip().is_loopback() {
                    own.push(format!("localhost:{}", bound.port()));
                }
                (format!("{scheme}://{bound}"), own, port)
            }
        };
        let default_suffix = format!(":{default_port}");
        let mut accepted = Vec::new();
        for authority in own.iter().chain(&config.allowed_hosts) {
            let with_port = normalize(authority, default_port);
            if let Some(host) = with_port.strip_suffix(&default_suffix) {
                accepted.push(host.to_owned());
            }
            accepted.push(with_port);
        }
        Self {
            fhir_base: format!("{origin}/fhir"),
            origin,
            accepted,
        }
    }

    /// `scheme://host[:port][/path]`: what every absolute URL this server writes starts with.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// FHIR's `[base]`: the origin and `/fhir`.
    pub fn fhir_base(&self) -> &str {
        &self.fhir_base
    }

    /// Whether `authority` (a `Host` header or an HTTP/2 `:authority`) names this server.
    pub fn admits(&self, authority: &str) -> bool {
        let authority = authority.trim();
        self.accepted
            .iter()
            .any(|a| a.eq_ignore_ascii_case(authority))
    }

    /// Whether every host name `req` addresses names this server: its `Host` header and, in
    /// HTTP/2 or an absolute-form request line, its URI authority. A request naming none
    /// (HTTP/1.0 without `Host`) is admitted: nothing it sends reaches a link.
    pub fn admits_request(&self, req: &Request) -> bool {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let by_header = match (hosts.next(), hosts.next()) {
            (None, _) => true,
            (Some(host), None) => host.to_str().is_ok_and(|h| self.admits(h)),
            // Two Host headers (RFC 9112, section 3.2).
            (Some(_), Some(_)) => false,
        };
        by_header
            && req
                .uri()
                .authority()
                .is_none_or(|a| self.admits(a.as_str()))
    }
}

/// `Host:8443` -> `host:8443`; `host` -> `host:443` (with the scheme's default port).
fn normalize(authority: &str, default_port: u16) -> String {
    let lower = authority.trim().to_ascii_lowercase();
    // The port follows the last ':', unless that ':' is inside an IPv6 literal (`[::1]`).
    let has_port = match (lower.rfind(':'), lower.rfind(']')) {
        (Some(colon), Some(bracket)) => colon > bracket,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if has_port {
        lower
    } else {
        format!("{lower}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carevault_server::config::FileConfig;

    fn config(env: &[(&str, &str)]) -> Config {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::from_file(FileConfig::load(None, env).unwrap()).unwrap()
    }

    /// `base` admits every one of `admitted` and none of `refused`.
    fn assert_hosts(base: &PublicBase, admitted: &[&str], refused: &[&str]) {
        for host in admitted {
            assert!(base.admits(host), "{host} should be admitted");
        }
        for host in refused {
            assert!(!base.admits(host), "{host} should be refused");
        }
    }

    #[test]
    fn without_a_public_url_the_bound_address_and_localhost_are_admitted() {
        let base = PublicBase::new(&config(&[]), "127.0.0.1:8443".parse().unwrap());
        assert_eq!(base.origin(), "https://127.0.0.1:8443");
        assert_eq!(base.fhir_base(), "https://127.0.0.1:8443/fhir");
        assert_hosts(
            &base,
            &["127.0.0.1:8443", "LOCALHOST:8443", " localhost:8443"],
            &[
                "evil.example:666",
                "127.0.0.1",
                "localhost",
                "127.0.0.1:8444",
                "127.0.0.1:8443.evil.example",
                "",
            ],
        );
    }

    #[test]
    fn a_public_url_and_aliases_are_admitted_with_or_without_the_default_port() {
        let base = PublicBase::new(
            &config(&[
                ("CAREVAULT_PUBLIC_BASE_URL", "https://FHIR.example.org/"),
                ("CAREVAULT_ALLOWED_HOSTS", "10.0.0.5:8443, [2001:db8::1]"),
            ]),
            "127.0.0.1:8443".parse().unwrap(),
        );
        assert_eq!(base.origin(), "https://fhir.example.org");
        assert_hosts(
            &base,
            &[
                "fhir.example.org",
                "fhir.example.org:443",
                "10.0.0.5:8443",
                "[2001:db8::1]",
                "[2001:db8::1]:443",
            ],
            &[
                "127.0.0.1:8443",
                "fhir.example.org:8443",
                "10.0.0.5",
                "[2001:db8::2]",
            ],
        );
    }

    #[test]
    fn a_public_url_behind_a_proxy_keeps_its_path_and_port() {
        let base = PublicBase::new(
            &config(&[(
                "CAREVAULT_PUBLIC_BASE_URL",
                "https://proxy.example.org:9443/carevault/",
            )]),
            "127.0.0.1:8443".parse().unwrap(),
        );
        assert_eq!(base.origin(), "https://proxy.example.org:9443/carevault");
        assert_eq!(
            base.fhir_base(),
            "https://proxy.example.org:9443/carevault/fhir"
        );
        assert_hosts(
            &base,
            &["proxy.example.org:9443"],
            &["proxy.example.org", "proxy.example.org:443"],
        );
    }

    #[test]
    fn a_request_with_a_foreign_or_doubled_host_is_refused() {
        let base = PublicBase::new(&config(&[]), "127.0.0.1:8443".parse().unwrap());
        let request = |hosts: &[&str], uri: &str| {
            let mut builder = Request::builder().uri(uri);
            for h in hosts {
                builder = builder.header(header::HOST, *h);
            }
            builder.body(axum::body::Body::empty()).unwrap()
        };
        assert!(base.admits_request(&request(&["127.0.0.1:8443"], "/fhir/metadata")));
        assert!(base.admits_request(&request(&[], "/fhir/metadata")));
        assert!(!base.admits_request(&request(&["evil.example"], "/fhir/metadata")));
        assert!(!base.admits_request(&request(
            &["127.0.0.1:8443", "evil.example"],
            "/fhir/metadata"
        )));
        assert!(!base.admits_request(&request(
            &["127.0.0.1:8443"],
            "https://evil.example/fhir/metadata"
        )));
    }
}
