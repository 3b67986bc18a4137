//! The baseline: the least an HTTPS server can do to serve the same FHIR documents. It answers
//! `GET /fhir/{type}/{id}` (and `/_history/{vid}`) from a SQLite file in WAL mode, with no
//! authentication, authorization, encryption, validation or audit. CareVault's figures divided
//! by this one's are the price of its security.
//!
//! Not part of the product: it exists only to be measured against.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Copy NDJSON documents into a plaintext SQLite file for the baseline to serve.
pub fn build_db(ndjson_dir: &Path, db: &Path) -> Result<usize> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS resource (type TEXT NOT NULL, id TEXT NOT NULL, json BLOB NOT NULL, PRIMARY KEY (type, id)) WITHOUT ROWID;",
    )?;
    let tx = conn.transaction()?;
    let mut count = 0;
    {
        let mut insert =
            tx.prepare("INSERT OR REPLACE INTO resource (type, id, json) VALUES (?1, ?2, ?3)")?;
        for entry in std::fs::read_dir(ndjson_dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let value: serde_json::Value = serde_json::from_str(line)?;
                let (Some(t), Some(id)) = (value["resourceType"].as_str(), value["id"].as_str())
                else {
                    continue;
                };
                insert.execute(rusqlite::params![t, id, line.as_bytes()])?;
                count += 1;
            }
        }
    }
    tx.commit()?;
    Ok(count)
}

thread_local! {
    static CONNECTION: RefCell<Option<rusqlite::Connection>> = const { RefCell::new(None) };
}

fn lookup(db: &Path, rtype: &str, id: &str) -> Result<Option<Vec<u8>>> {
    CONNECTION.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let conn = rusqlite::Connection::open_with_flags(
                db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            *slot = Some(conn);
        }
        let conn = slot.as_ref().context("no connection")?;
        let mut stmt =
            conn.prepare_cached("SELECT json FROM resource WHERE type = ?1 AND id = ?2")?;
        let mut rows = stmt.query(rusqlite::params![rtype, id])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    })
}

async fn handle(
    db: Arc<PathBuf>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (rtype, id) = match parts.as_slice() {
        ["fhir", t, id] | ["fhir", t, id, "_history", _] => ((*t).to_owned(), (*id).to_owned()),
        _ => return status(404),
    };
    let found = tokio::task::spawn_blocking(move || lookup(&db, &rtype, &id)).await??;
    match found {
        Some(json) => Ok(Response::builder()
            .status(200)
            .header("content-type", "application/fhir+json")
            .body(Full::new(Bytes::from(json)))?),
        None => status(404),
    }
}

fn status(code: u16) -> Result<Response<Full<Bytes>>> {
    Ok(Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))?)
}

/// Serve until killed; prints `listening on https://ADDR` once bound.
pub async fn serve(db: PathBuf, cert: &Path, key: &Path, listen: &str) -> Result<()> {
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen).await?;
    #[allow(clippy::print_stdout)]
    {
        println!("listening on https://{}", listener.local_addr()?);
    }
    let db = Arc::new(db);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let db = db.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req| handle(db.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
