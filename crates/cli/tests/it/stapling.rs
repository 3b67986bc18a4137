//! OCSP stapling against a real responder: the test's PKI is made with the `openssl` command,
//! and each OCSP request the server sends is answered by `openssl ocsp` (over a small HTTP loop
//! in the test, on a port the test holds, so no port can be taken in between). An outside client
//! (`openssl s_client -status`) sees the staple.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carevault_testkit::{TestServer, wait_for};

use crate::server;

/// Who signs the responder's answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// A responder certificate the CA issued for OCSP signing (RFC 6960's delegated responder).
    Delegated,
    /// The CA itself.
    Issuer,
    /// A key the CA never certified: a forged answer.
    Rogue,
}

struct Responder {
    url: String,
    signer: Arc<Mutex<Signer>>,
    requests: Arc<AtomicUsize>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 key pair and a certificate signed by the CA in `dir` (self-signed for the CA).
fn certificate(dir: &Path, name: &str, subject: &str, extensions: &str, issuer: Option<&str>) {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), extensions).unwrap();
    let newkey = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    match issuer {
        None => {
            let mut args = vec!["req", "-x509"];
            args.extend(newkey);
            args.extend([
                "-keyout", &key, "-out", &pem, "-days", "30", "-subj", subject,
            ]);
            args.extend(["-extensions", "v3", "-config", &ext]);
            openssl(dir, &args);
        }
        Some(ca) => {
            let csr = format!("{name}.csr");
            let mut args = vec!["req"];
            args.extend(newkey);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
            openssl(dir, &args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-set_serial",
                    "0x1001",
                    "-days",
                    "30",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ],
            );
        }
    }
}

/// The CA, the server's certificate (naming `responder_url`), the delegated responder's and a
/// rogue one; and the CA's index, which says the server's certificate (serial 1001) is valid.
fn pki(dir: &Path, responder_url: &str) {
    let ca_config = "[req]\ndistinguished_name=dn\n[dn]\n[v3]\n\
        basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";
    certificate(dir, "ca", "/CN=CareVault Test OCSP CA", ca_config, None);
    let rogue_config = "[req]\ndistinguished_name=dn\n[dn]\n[v3]\nextendedKeyUsage=OCSPSigning\n";
    certificate(
        dir,
        "rogue",
        "/CN=CareVault Test OCSP CA",
        rogue_config,
        None,
    );
    let leaf = format!(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
         authorityInfoAccess=OCSP;URI:{responder_url}\n"
    );
    certificate(dir, "leaf", "/CN=localhost", &leaf, Some("ca"));
    let responder = "extendedKeyUsage=OCSPSigning\nkeyUsage=critical,digitalSignature\n";
    certificate(
        dir,
        "responder",
        "/CN=CareVault Test OCSP Responder",
        responder,
        Some("ca"),
    );
    set_status(dir, 'V');
}

/// The CA's index: `V` (valid) or `R` (revoked) for the server's certificate.
fn set_status(dir: &Path, status: char) {
    let revoked_at = if status == 'R' { "261201000000Z" } else { "" };
    let line = format!("{status}\t301231235959Z\t{revoked_at}\t1001\tunknown\t/CN=localhost\n");
    std::fs::write(dir.join("index.txt"), line).unwrap();
}

impl Responder {
    /// Answers each POSTed OCSP request with `openssl ocsp`, signed as `signer` says.
    fn start(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let signer = Arc::new(Mutex::new(Signer::Delegated));
        let requests = Arc::new(AtomicUsize::new(0));
        let (dir, who, count) = (dir.to_path_buf(), signer.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let signer = *who.lock().unwrap();
                if answer(&dir, stream, signer).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self {
            url,
            signer,
            requests,
        }
    }

    fn sign_as(&self, signer: Signer) {
        *self.signer.lock().unwrap() = signer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(dir: &Path, stream: std::net::TcpStream, signer: Signer) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut request = vec![0u8; length];
    reader.read_exact(&mut request)?;
    std::fs::write(dir.join("request.der"), &request)?;
    let (cert, key) = match signer {
        Signer::Delegated => ("responder.pem", "responder.key"),
        Signer::Issuer => ("ca.pem", "ca.key"),
        Signer::Rogue => ("rogue.pem", "rogue.key"),
    };
    openssl(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            cert,
            "-rkey",
            key,
            "-reqin",
            "request.der",
            "-respout",
            "response.der",
            "-nmin",
            "60",
        ],
    );
    let response = std::fs::read(dir.join("response.der"))?;
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.len()
    )?;
    stream.write_all(&response)
}

/// What `openssl s_client -status` says of the server's stapled OCSP response.
fn stapled_status(srv: &TestServer, ca: &Path) -> String {
    let addr = srv.base.trim_start_matches("https://");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "localhost",
            "-status",
        ])
        .arg("-CAfile")
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("OCSP response: no response sent") {
        "none".to_owned()
    } else if let Some(status) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cert Status: "))
    {
        status.to_owned()
    } else {
        format!("unreadable: {text}")
    }
}

fn hangup(srv: &TestServer) {
    let status = Command::new("kill")
        .args(["-HUP", &srv.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_certificate_naming_an_ocsp_responder_is_served_with_its_status_stapled() {
    let srv = server();
    let admin = srv.admin();
    let auditor = srv.user(&admin, "auditor.ocsp", &["auditor"], None);
    let dir: PathBuf = srv.tmp_dir().join("ocsp");
    std::fs::create_dir_all(&dir).unwrap();
    let responder = Responder::start(&dir);
    pki(&dir, &responder.url);
    let ca = dir.join("ca.pem");

    // Before: the generated certificate names no responder, so nothing is stapled or fetched.
    assert_eq!(stapled_status(&srv, &srv.ca_pem()), "none");
    assert_eq!(responder.requests(), 0);

    // The operator's certificate, with its issuer after it, replaces it without a restart.
    let tls_dir = srv.ca_pem().parent().unwrap().to_path_buf();
    let chain = std::fs::read_to_string(dir.join("leaf.pem")).unwrap()
        + &std::fs::read_to_string(&ca).unwrap();
    std::fs::write(
        tls_dir.join("key.pem"),
        std::fs::read(dir.join("leaf.key")).unwrap(),
    )
    .unwrap();
    std::fs::write(tls_dir.join("cert.pem"), chain).unwrap();
    hangup(&srv);
    wait_for("a stapled 'good'", Duration::from_secs(30), || {
        stapled_status(&srv, &ca) == "good"
    });
    assert!(srv.logs().contains("ocsp_stapled"));

    // A forged answer (signed by a key the CA never certified) is refused; the valid staple
    // stays.
    responder.sign_as(Signer::Rogue);
    let asked = responder.requests();
    hangup(&srv);
    wait_for(
        "the forged answer's refusal",
        Duration::from_secs(30),
        || responder.requests() > asked && srv.logs().contains("is not signed by the certificate"),
    );
    assert_eq!(stapled_status(&srv, &ca), "good");

    // Revoked, in the CA's own signed words: the staple is withdrawn and the operator told.
    set_status(&dir, 'R');
    responder.sign_as(Signer::Issuer);
    hangup(&srv);
    wait_for("the revocation", Duration::from_secs(30), || {
        srv.logs().contains("tls_certificate_revoked")
    });
    assert_eq!(stapled_status(&srv, &ca), "none");
    crate::detection::wait_for_rule(&auditor.api, "integrity.tls-certificate-revoked");
    // The server keeps serving (clients that check revocation themselves will refuse it).
    let api = carevault_testkit::Api::new(&srv.base, &ca);
    assert_eq!(api.get("/healthz").status, 200);
}
