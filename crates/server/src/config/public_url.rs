//! `public_base_url` and `allowed_hosts`: where clients reach this server, validated. The HTTP
//! layer builds every absolute URL from it and refuses requests for other host names.

use std::net::SocketAddr;

use super::ConfigError;

/// `public_base_url`, validated: where clients reach this server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    origin: String,
    authority: String,
    default_port: u16,
}

impl PublicUrl {
    /// `scheme://host[:port][/path]`, without a trailing slash: what `[base]` URLs start with.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `host:port` (lowercase, the port always written).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The port a `Host` header without one means (the scheme's).
    pub fn default_port(&self) -> u16 {
        self.default_port
    }
}

pub(crate) fn public_url(
    value: Option<String>,
    listen: SocketAddr,
    plain_http: bool,
) -> Result<Option<PublicUrl>, ConfigError> {
    const KEY: &str = "public_base_url";
    let Some(text) = value else {
        if listen.ip().is_unspecified() {
            return Err(ConfigError::new(
                KEY,
                "is required when listening on every interface (0.0.0.0 or [::]): the URL clients \
                 use, e.g. https://fhir.example.org:8443, from which links are built",
            ));
        }
        return Ok(None);
    };
    let expected = "expected a URL like https://fhir.example.org:8443 (no user, query or fragment)";
    let url = url::Url::parse(text.trim()).map_err(|_| ConfigError::new(KEY, expected))?;
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(ConfigError::new(KEY, expected));
    };
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(ConfigError::new(KEY, expected));
    }
    let default_port = match url.scheme() {
        "https" => 443,
        // Behind a proxy that terminates TLS on this machine, the public URL is still https;
        // plain http is for a loopback-only development server.
        "http" if plain_http => 80,
        _ => {
            return Err(ConfigError::new(
                KEY,
                "must start with https:// (http:// only with allow_plain_http)",
            ));
        }
    };
    Ok(Some(PublicUrl {
        origin: url.as_str().trim_end_matches('/').to_owned(),
        authority: format!("{host}:{port}"),
        default_port,
    }))
}

pub(crate) fn allowed_hosts(value: Option<String>) -> Result<Vec<String>, ConfigError> {
    let Some(text) = value else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            // A host name or address with an optional port, and nothing else.
            match url::Url::parse(&format!("https://{h}/")) {
                Ok(u)
                    if u.path() == "/"
                        && u.username().is_empty()
                        && u.query().is_none()
                        && u.host_str().is_some()
                        && !h.contains(['/', '@', '?', '#']) =>
                {
                    Ok(h.to_ascii_lowercase())
                }
                _ => Err(ConfigError::new(
                    "allowed_hosts",
                    "expected host names like fhir.example.org or 10.0.0.5:8443, comma-separated",
                )),
            }
        })
        .collect()
}

/// `cors.allowed_origins`: exact origins (`scheme://host[:port]`, lowercase), comma-separated.
/// A wildcard is refused: a browser app must be named to read PHI across origins.
pub(crate) fn cors_origins(value: Option<String>) -> Result<Vec<String>, ConfigError> {
    let Some(text) = value else {
        return Ok(Vec::new());
    };
    let refused = || {
        ConfigError::new(
            "cors.allowed_origins",
            "expected exact origins like https://app.example.org, comma-separated (no wildcard, no path)",
        )
    };
    text.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let url = url::Url::parse(o).map_err(|_| refused())?;
            // An origin is a scheme, host and port: anything more is not one.
            let origin = url.origin();
            if !origin.is_tuple()
                || !matches!(url.scheme(), "https" | "http")
                || url.path() != "/"
                || o.ends_with('/')
                || o.contains('*')
                || url.query().is_some()
                || url.fragment().is_some()
                || !url.username().is_empty()
                || url.password().is_some()
            {
                return Err(refused());
            }
            Ok(origin.ascii_serialization())
        })
        .collect()
}
