//! OCSP for stapling (RFC 6960, RFC 6066 section 8): the served certificate's responder, the
//! request for its status, and the checks a response passes before it is stapled. Serving the
//! staple is `carevault-http`'s job.
//!
//! A response is stapled only when it is signed by the certificate's issuer, or by a responder
//! certificate the issuer signed for OCSP signing, says "good" for this certificate, and is
//! current. Clients check all of that again; the server checks it so that it never staples what
//! a client would reject (a forged answer from a network attacker, a stale one, a revocation).

use std::time::Duration;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::CertificateDer;
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, ExtendedKeyUsage};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest, Version,
};

/// id-pe-authorityInfoAccess.
const AUTHORITY_INFO_ACCESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");
/// id-ad-ocsp: the access method naming an OCSP responder.
const ACCESS_OCSP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
/// id-pkix-ocsp-basic: the only response type there is.
const BASIC_RESPONSE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-kp-OCSPSigning: what a delegated responder's certificate must be issued for.
const OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
/// id-ce-extKeyUsage.
const EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// SHA-1, which RFC 5019 (the profile every responder implements) prescribes for `CertID`.
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");

/// An answer larger than this is not an OCSP response for one certificate.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// How long one fetch may take, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A response whose `thisUpdate` is this far in the future is still accepted (clock skew).
const CLOCK_SKEW_SECS: i64 = 300;
/// A response without `nextUpdate` ("newer information is always available") is fetched again
/// after this long.
const REFRESH_WITHOUT_NEXT_UPDATE: Duration = Duration::from_secs(3600);

/// Why no response was stapled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The responder says the certificate is revoked: an operator must replace it.
    Revoked,
    /// No usable answer (unreachable, malformed, badly signed, stale, not about this
    /// certificate): said in words that hold no secret.
    Unusable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Revoked => f.write_str("the OCSP responder says the certificate is revoked"),
            Self::Unusable(why) => f.write_str(why),
        }
    }
}

fn unusable(why: impl Into<String>) -> Refusal {
    Refusal::Unusable(why.into())
}

/// Where and how to ask about one certificate's status.
#[derive(Clone, Debug)]
pub struct Target {
    /// The responder's URL, from the certificate's Authority Information Access.
    pub url: String,
    request: Vec<u8>,
    cert_id: CertId,
    issuer: SubjectPublicKeyInfoOwned,
    issuer_name: Vec<u8>,
}

/// A response fit to staple, and when it stops being current.
#[derive(Clone, Debug)]
pub struct Staple {
    pub der: Vec<u8>,
    pub this_update_secs: i64,
    pub next_update_secs: Option<i64>,
}

impl Staple {
    /// Whether the response is still current at `now_secs`.
    pub fn current_at(&self, now_secs: i64) -> bool {
        self.next_update_secs.is_none_or(|next| now_secs < next)
    }

    /// When to fetch a fresh one: half-way to `nextUpdate`, between one minute and twelve
    /// hours from now (a responder's answers are typically valid for days and refreshed daily).
    pub fn refresh_after(&self, now_secs: i64) -> Duration {
        match self.next_update_secs {
            Some(next) => {
                let half = u64::try_from((next - now_secs) / 2).unwrap_or(0);
                Duration::from_secs(half.clamp(60, 12 * 3600))
            }
            None => REFRESH_WITHOUT_NEXT_UPDATE,
        }
    }
}

/// The served chain's OCSP target: None when the certificate names no responder (nothing to
/// staple). An error when it names one that cannot be asked: no issuer certificate in the chain
/// to identify it by, or a responder that is not plain `http://` (RFC 6960 appendix A; the
/// answer is signed, and fetching it over TLS could depend on this very staple).
pub fn target(chain: &[CertificateDer<'_>]) -> Result<Option<Target>, Refusal> {
    let Some(leaf_der) = chain.first() else {
        return Ok(None);
    };
    let leaf = Certificate::from_der(leaf_der)
        .map_err(|_| unusable("the served certificate does not parse"))?;
    let Some(url) = responder_url(&leaf) else {
        return Ok(None);
    };
    if !url.starts_with("http://") {
        return Err(unusable(format!(
            "the OCSP responder {url} is not an http:// URL; only those are fetched"
        )));
    }
    let issuer_name = leaf
        .tbs_certificate
        .issuer
        .to_der()
        .map_err(|_| unusable("the served certificate's issuer does not encode"))?;
    let issuer = chain[1..]
        .iter()
        .filter_map(|der| Certificate::from_der(der).ok())
        .find(|c| c.tbs_certificate.subject == leaf.tbs_certificate.issuer)
        .ok_or_else(|| {
            unusable(
                "the certificate names an OCSP responder, but its issuer's certificate is not \
                 in the certificate file: append it after the server's certificate",
            )
        })?;
    let issuer_key = issuer.tbs_certificate.subject_public_key_info;
    let sha1 = AlgorithmIdentifierOwned {
        oid: SHA1,
        parameters: None,
    };
    let cert_id = CertId {
        hash_algorithm: sha1,
        issuer_name_hash: octets(sha1_digest(&issuer_name))?,
        issuer_key_hash: octets(sha1_digest(issuer_key.subject_public_key.raw_bytes()))?,
        serial_number: leaf.tbs_certificate.serial_number.clone(),
    };
    let request = OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id.clone(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(|_| unusable("the OCSP request does not encode"))?;
    Ok(Some(Target {
        url,
        request,
        cert_id,
        issuer: issuer_key,
        issuer_name,
    }))
}

/// Ask the responder (blocking: run it on the blocking pool) and check its answer.
pub fn fetch(target: &Target, now_secs: i64) -> Result<Staple, Refusal> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(0)
        .build()
        .new_agent();
    let mut response = agent
        .post(&target.url)
        .header("Content-Type", "application/ocsp-request")
        .send(&target.request[..])
        .map_err(|e| unusable(format!("the OCSP responder {} failed: {e}", target.url)))?;
    if response.status() != 200 {
        return Err(unusable(format!(
            "the OCSP responder {} answered HTTP {}",
            target.url,
            response.status().as_u16()
        )));
    }
    let der = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| unusable(format!("reading the OCSP response failed: {e}")))?;
    check(target, der, now_secs)
}

/// Whether `der` is a response to staple for `target` at `now_secs`.
pub fn check(target: &Target, der: Vec<u8>, now_secs: i64) -> Result<Staple, Refusal> {
    let response =
        OcspResponse::from_der(&der).map_err(|_| unusable("the OCSP response does not parse"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(unusable(format!(
            "the OCSP responder refused: {:?}",
            response.response_status
        )));
    }
    let bytes = response
        .response_bytes
        .filter(|b| b.response_type == BASIC_RESPONSE)
        .ok_or_else(|| unusable("the OCSP response is not a basic response"))?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|_| unusable("the basic OCSP response does not parse"))?;
    verify_signer(target, &basic, now_secs)?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| same_certificate(&r.cert_id, &target.cert_id))
        .ok_or_else(|| unusable("the OCSP response is not about the served certificate"))?;
    match single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => return Err(Refusal::Revoked),
        CertStatus::Unknown(_) => {
            return Err(unusable(
                "the OCSP responder does not know the served certificate",
            ));
        }
    }
    let this_update_secs = unix_secs(&single.this_update.0);
    let next_update_secs = single.next_update.as_ref().map(|t| unix_secs(&t.0));
    if this_update_secs > now_secs + CLOCK_SKEW_SECS {
        return Err(unusable("the OCSP response is not yet valid"));
    }
    let staple = Staple {
        der,
        this_update_secs,
        next_update_secs,
    };
    if !staple.current_at(now_secs) {
        return Err(unusable("the OCSP response is out of date"));
    }
    Ok(staple)
}

/// The response is signed by the issuer, or by a responder certificate the issuer signed,
/// issued for OCSP signing and valid now (RFC 6960 section 4.2.2.2).
fn verify_signer(target: &Target, basic: &BasicOcspResponse, now_secs: i64) -> Result<(), Refusal> {
    let signed = basic
        .tbs_response_data
        .to_der()
        .map_err(|_| unusable("the OCSP response data does not encode"))?;
    let signature = basic.signature.raw_bytes();
    if verifies(
        &target.issuer,
        &basic.signature_algorithm,
        &signed,
        signature,
    ) {
        return Ok(());
    }
    let delegated = basic.certs.iter().flatten().any(|responder| {
        let tbs = &responder.tbs_certificate;
        let issued_by_issuer = tbs.issuer.to_der().is_ok_and(|n| n == target.issuer_name)
            && tbs.to_der().is_ok_and(|der| {
                verifies(
                    &target.issuer,
                    &responder.signature_algorithm,
                    &der,
                    responder.signature.raw_bytes(),
                )
            });
        let valid_now = unix_secs_of(&tbs.validity.not_before) <= now_secs
            && now_secs < unix_secs_of(&tbs.validity.not_after);
        issued_by_issuer
            && valid_now
            && for_ocsp_signing(responder)
            && verifies(
                &tbs.subject_public_key_info,
                &basic.signature_algorithm,
                &signed,
                signature,
            )
    });
    if delegated {
        Ok(())
    } else {
        Err(unusable(
            "the OCSP response is not signed by the certificate's issuer or its responder",
        ))
    }
}

/// `signature` over `message` verifies under `key` with `algorithm`, by the algorithms rustls
/// verifies certificates with (webpki's: ECDSA P-256/P-384, Ed25519, RSA PKCS#1 and PSS).
fn verifies(
    key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let (Ok(signature_alg), Ok(key_alg)) = (algorithm.to_der(), key.algorithm.to_der()) else {
        return false;
    };
    let supported: WebPkiSupportedAlgorithms =
        rustls::crypto::ring::default_provider().signature_verification_algorithms;
    supported.all.iter().any(|alg| {
        sequence_contents(&signature_alg) == Some(alg.signature_alg_id().as_ref())
            && sequence_contents(&key_alg) == Some(alg.public_key_alg_id().as_ref())
            && alg
                .verify_signature(key.subject_public_key.raw_bytes(), message, signature)
                .is_ok()
    })
}

/// The contents of a short DER SEQUENCE (webpki names algorithms by their AlgorithmIdentifier
/// without its outer tag and length).
fn sequence_contents(der: &[u8]) -> Option<&[u8]> {
    match der {
        [0x30, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => Some(rest),
        _ => None,
    }
}

fn for_ocsp_signing(cert: &Certificate) -> bool {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == EXTENDED_KEY_USAGE)
        .filter_map(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .any(|eku| eku.0.contains(&OCSP_SIGNING))
}

/// Responders may echo the hash algorithm with or without NULL parameters.
fn same_certificate(a: &CertId, b: &CertId) -> bool {
    a.hash_algorithm.oid == b.hash_algorithm.oid
        && a.issuer_name_hash == b.issuer_name_hash
        && a.issuer_key_hash == b.issuer_key_hash
        && a.serial_number == b.serial_number
}

fn responder_url(cert: &Certificate) -> Option<String> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == AUTHORITY_INFO_ACCESS)
        .filter_map(|e| AuthorityInfoAccessSyntax::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|aia| aia.0)
        .filter(|access| access.access_method == ACCESS_OCSP)
        .find_map(|access| match access.access_location {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
}

fn sha1_digest(bytes: &[u8]) -> Vec<u8> {
    use sha1::Digest;
    sha1::Sha1::digest(bytes).to_vec()
}

fn octets(bytes: Vec<u8>) -> Result<x509_cert::der::asn1::OctetString, Refusal> {
    x509_cert::der::asn1::OctetString::new(bytes).map_err(|_| unusable("a hash does not encode"))
}

fn unix_secs(t: &x509_cert::der::asn1::GeneralizedTime) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

fn unix_secs_of(t: &x509_cert::time::Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_header_is_stripped_only_when_it_spans_the_input() {
        assert_eq!(sequence_contents(&[0x30, 2, 5, 0]), Some(&[5u8, 0][..]));
        assert_eq!(sequence_contents(&[0x30, 3, 5, 0]), None);
        assert_eq!(sequence_contents(&[0x31, 2, 5, 0]), None);
        assert_eq!(sequence_contents(&[]), None);
    }

    #[test]
    fn a_staple_is_refreshed_half_way_to_its_next_update_within_bounds() {
        let staple = |next| Staple {
            der: Vec::new(),
            this_update_secs: 0,
            next_update_secs: next,
        };
        assert_eq!(
            staple(Some(7_200)).refresh_after(0),
            Duration::from_secs(3_600)
        );
        assert_eq!(staple(Some(10)).refresh_after(0), Duration::from_secs(60));
        assert_eq!(
            staple(Some(7 * 86_400)).refresh_after(0),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(staple(None).refresh_after(0), REFRESH_WITHOUT_NEXT_UPDATE);
        assert!(staple(Some(100)).current_at(99));
        assert!(!staple(Some(100)).current_at(100));
    }

    #[test]
    fn a_certificate_without_a_responder_has_no_target() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(target(&[cert.der().clone()]).unwrap().is_none());
        assert!(target(&[]).unwrap().is_none());
    }
}
