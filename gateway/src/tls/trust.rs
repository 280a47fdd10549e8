//! Whom the gateway trusts when it is the TLS client: identity providers (JWKS, discovery,
//! introspection), Redis and upstreams.
//!
//! A `ca_file` is a CA bundle, and may also pin a server's own self-signed certificate, as nginx
//! and Envoy allow. webpki refuses a certificate marked `CA:TRUE` as a server's own
//! (`CaUsedAsEndEntity`), and `openssl req -x509` marks it so by default; so a certificate that
//! is byte for byte one of the bundle's self-signed ones is accepted when its name and validity
//! period fit. The TLS handshake itself (the server proving it holds the key) is checked by
//! rustls either way.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificates of one `ca_file`, parsed and checked once.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    /// The file as read, for clients that take PEM (Redis).
    pub pem: Vec<u8>,
    /// SHA-256 of the file: a reload that changes the bundle makes new clients.
    pub fingerprint: [u8; 32],
    pins: Arc<[Arc<Pin>]>,
}

/// A self-signed certificate of the bundle, usable as a server's own certificate.
#[derive(Debug)]
pub struct Pin {
    der: CertificateDer<'static>,
    pub sha256: [u8; 32],
    not_before: i64,
    not_after: i64,
    /// The subject's common name, for certificates without any subjectAltName.
    common_name: Option<String>,
    has_san: bool,
}

impl Pin {
    /// Whether the certificate is within its validity period at `now` (seconds since 1970).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Whether the certificate names `name`: a subjectAltName (through webpki), or, for a
    /// certificate without any, its common name, as OpenSSL's host check does.
    pub fn names(&self, name: &ServerName<'_>) -> bool {
        if let Ok(parsed) = rustls::server::ParsedCertificate::try_from(&self.der) {
            if rustls::client::verify_server_name(&parsed, name).is_ok() {
                return true;
            }
        }
        let wanted = match name {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => return false,
        };
        !self.has_san
            && self
                .common_name
                .as_deref()
                .is_some_and(|cn| cn.eq_ignore_ascii_case(&wanted))
    }
}

impl CaBundle {
    /// Reads a PEM bundle; every certificate must parse, and there must be at least one.
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut certs = Vec::new();
        let mut pins = Vec::new();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            let (_, x509) = x509_parser::parse_x509_certificate(&cert).map_err(|_| {
                format!(
                    "{}: a certificate in the CA file is not valid X.509",
                    path.display()
                )
            })?;
            if x509.subject().as_raw() == x509.issuer().as_raw() {
                let validity = x509.validity();
                let has_san = x509.subject_alternative_name().ok().flatten().is_some();
                let common_name = x509
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_owned);
                pins.push(Arc::new(Pin {
                    sha256: Sha256::digest(&cert).into(),
                    der: cert.clone(),
                    not_before: validity.not_before.timestamp(),
                    not_after: validity.not_after.timestamp(),
                    common_name,
                    has_san,
                }));
            }
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(format!("{}: no certificate in the CA file", path.display()));
        }
        Ok(CaBundle {
            path: path.to_path_buf(),
            certs,
            fingerprint: Sha256::digest(&pem).into(),
            pem,
            pins: pins.into(),
        })
    }

    /// The bundle's self-signed certificates that name `host`: a server presenting one of
    /// them exactly is trusted.
    pub fn pins_for(&self, host: &str) -> Vec<Arc<Pin>> {
        let Ok(name) = ServerName::try_from(host) else {
            return Vec::new();
        };
        self.pins
            .iter()
            .filter(|p| p.names(&name))
            .cloned()
            .collect()
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in &self.certs {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "{}: a certificate cannot be a trust anchor: {e}",
                    self.path.display()
                )
            })?;
        }
        Ok(roots)
    }
}

/// The rustls client configuration for https identity-provider endpoints: the bundle's
/// certificates (and pins) when a `ca_file` is given, else the Mozilla roots built in, so the
/// image needs no system certificate store.
pub fn client_config(bundle: Option<&CaBundle>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verifier(bundle, provider.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

fn verifier(
    bundle: Option<&CaBundle>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<PinnedOrWebPki>, String> {
    let roots = match bundle {
        Some(b) => b.roots()?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("TLS verifier: {e}"))?;
    Ok(Arc::new(PinnedOrWebPki {
        webpki,
        pins: bundle.map_or_else(|| Arc::from([]), |b| b.pins.clone()),
    }))
}

/// webpki's verification, then exact pins for what it refused.
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<WebPkiServerVerifier>,
    pins: Arc<[Arc<Pin>]>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(refused) => {
                let now = now.as_secs() as i64;
                let pinned = self.pins.iter().any(|p| {
                    p.der.as_ref() == end_entity.as_ref() && p.valid_at(now) && p.names(server_name)
                });
                if pinned {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(refused)
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// An HTTP client for an identity provider: TLS as above, no proxy from the environment (a
/// `HTTPS_PROXY` would see every token), no redirects (a 307 would re-post the token
/// elsewhere). Callers add their timeouts and pooling.
pub fn idp_client_builder(bundle: Option<&CaBundle>) -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(client_config(bundle)?)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none()))
}

/// An error and its causes on one line ("error sending request: ...: invalid peer
/// certificate: UnknownIssuer"), so a TLS failure is logged with what actually went wrong.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn self_signed(names: &[&str], ca: bool) -> (String, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), cert.der().to_vec())
    }

    fn bundle(pem: &str) -> CaBundle {
        let dir = std::env::temp_dir().join(format!("authgate-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!(
            "{}.pem",
            hex::encode(&Sha256::digest(pem.as_bytes())[..8])
        ));
        std::fs::write(&path, pem).expect("write");
        CaBundle::load(&path).expect("bundle")
    }

    fn verify(bundle: Option<&CaBundle>, der: &[u8], name: &str) -> Result<(), rustls::Error> {
        let verifier =
            verifier(bundle, Arc::new(rustls::crypto::ring::default_provider())).expect("verifier");
        let now = UnixTime::now();
        verifier
            .verify_server_cert(
                &CertificateDer::from(der.to_vec()),
                &[],
                &ServerName::try_from(name.to_string()).expect("name"),
                &[],
                now,
            )
            .map(|_| ())
    }

    #[test]
    fn a_pinned_self_signed_ca_certificate_is_accepted_for_its_own_name_only() {
        let (pem, der) = self_signed(&["idp.test"], true);
        let b = bundle(&pem);
        assert_eq!(b.pins_for("idp.test").len(), 1);
        assert!(b.pins_for("other.test").is_empty());
        client_config(Some(&b)).expect("config");
        verify(Some(&b), &der, "idp.test").expect("pinned CA:TRUE certificate");
        assert!(verify(Some(&b), &der, "other.test").is_err(), "wrong name");
        let (_, stranger) = self_signed(&["idp.test"], true);
        assert!(
            verify(Some(&b), &stranger, "idp.test").is_err(),
            "not the pinned one"
        );
        // Without the pin the same certificate is not trusted.
        assert!(verify(None, &der, "idp.test").is_err());
    }

    #[test]
    fn bad_bundles_are_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("authgate-trust-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here").expect("write");
        let e = CaBundle::load(&empty).expect_err("empty");
        assert!(e.contains("no certificate"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert!(CaBundle::load(&junk).is_err());
        assert!(CaBundle::load(&dir.join("missing.pem")).is_err());
    }
}
