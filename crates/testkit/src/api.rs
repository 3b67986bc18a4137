//! The HTTPS client tests speak to a server with, and the accounts they log in as.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, RustlsConnector, Transport,
};

use crate::totp::Authenticator;

/// A response, fully read.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first OperationOutcome issue's diagnostics, if this is one.
    pub fn diagnostics(&self) -> String {
        self.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// An HTTPS client for one server, optionally with a bearer token.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str, ca_pem: &Path) -> Self {
        let pem = std::fs::read(ca_pem).unwrap_or_default();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let agent = ureq::Agent::config_builder()
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(certs)))
                    .build(),
            )
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    pub fn rebased(&self, base: &str) -> Self {
        let mut api = self.clone();
        api.base = base.trim_end_matches('/').to_owned();
        api
    }

    /// The same client, its connections made from `local` (any 127.0.0.0/8 address works on
    /// Linux loopback), so a test can play many clients.
    pub fn from_address(&self, local: IpAddr) -> Self {
        let mut api = self.clone();
        api.agent = ureq::Agent::with_parts(
            self.agent.config().clone(),
            ().chain(BoundConnector(local))
                .chain(RustlsConnector::default()),
            DefaultResolver::default(),
        );
        api
    }

    pub fn with_token(&self, token: &str) -> Self {
        let mut api = self.clone();
        api.token = Some(token.to_owned());
        api
    }

    /// Send any request. `headers` are added as given (a test may send hostile ones).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed at the transport level: {e}"))
    }

    /// `GET`, or the transport error (a refused connection, a failed TLS handshake).
    pub fn try_get(&self, path: &str) -> Result<Reply, String> {
        self.try_request("GET", path, &[], None)
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, String> {
        let url = format!("{}{}", self.base, path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let result = match body {
            Some(b) => match builder.body(b.to_vec()) {
                Ok(req) => self.agent.run(req),
                Err(e) => panic!("bad test request: {e}"),
            },
            None => match builder.body(()) {
                Ok(req) => self.agent.run(req),
                Err(e) => panic!("bad test request: {e}"),
            },
        };
        let response = result.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let mut body = Vec::new();
        let _ = response.into_body().into_reader().read_to_end(&mut body);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// `GET` a body too large to hold, counting its lines and bytes as it streams in: the
    /// status, the number of newline-terminated lines and the bytes.
    pub fn get_counting_lines(&self, path: &str) -> Result<(u16, u64, u64), String> {
        let url = format!("{}{}", self.base, path);
        let mut builder = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {t}"));
        }
        let request = builder.body(()).map_err(|e| e.to_string())?;
        let response = self.agent.run(request).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut reader = response.into_body().into_reader();
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        Ok((status, lines, bytes))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, &[], None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&bytes),
        )
    }

    pub fn post_fhir(&self, path: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/fhir+json")],
            Some(&bytes),
        )
    }

    pub fn put_fhir(&self, path: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut headers = vec![("Content-Type", "application/fhir+json")];
        headers.extend_from_slice(extra);
        self.request("PUT", path, &headers, Some(&bytes))
    }
}

/// Opens plain TCP connections from one local address (TLS is the next connector's job).
#[derive(Debug)]
struct BoundConnector(IpAddr);

impl Connector<()> for BoundConnector {
    type Out = BoundTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        use socket2::{Domain, Socket, Type};
        let Some(&remote) = details.addrs.first() else {
            return Err(ureq::Error::HostNotFound);
        };
        let socket = Socket::new(Domain::for_address(remote), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(self.0, 0).into())?;
        socket.connect_timeout(&remote.into(), Duration::from_secs(30))?;
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true)?;
        let config = details.config;
        Ok(Some(BoundTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        }))
    }
}

/// A blocking TCP stream as a ureq transport (ureq keeps its own private).
#[derive(Debug)]
struct BoundTransport {
    stream: TcpStream,
    buffers: LazyBuffers,
}

impl Transport for BoundTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write().not_zero().map(|t| *t);
        self.stream.set_write_timeout(timeout)?;
        self.stream.write_all(&self.buffers.output()[..amount])?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read().not_zero().map(|t| *t);
        self.stream.set_read_timeout(timeout)?;
        let amount = self.stream.read(self.buffers.input_append_buf())?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Not pooled for long: a closed stream shows up as an error on the next request.
        self.stream.peer_addr().is_ok()
    }
}

/// A strong password for test accounts (passes the policy).
pub const TEST_PASSWORD: &str = "lantern-quarry-velvet-omnibus-42";

/// An enrolled account: its API handle (logged in), authenticator and recovery codes.
pub struct Account {
    pub username: String,
    pub api: Api,
    pub auth: Authenticator,
    pub recovery_codes: Vec<String>,
}
