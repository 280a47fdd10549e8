//! TLS: the listener's certificate (swapped on reload, so renewed certificates need no
//! restart), and whom the gateway trusts as a client (`trust`).

pub mod trust;

pub use trust::CaBundle;

use arc_swap::ArcSwap;
use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::path::Path;
use std::sync::Arc;

/// The listener certificate, read from its files at start and again on every reload.
#[derive(Debug)]
pub struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadableCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Ok(ReloadableCert {
            current: ArcSwap::from(load_certified_key(cert, key)?),
        })
    }

    /// Reads the files into a certificate ready to serve, changing nothing yet: a reload
    /// that fails later must leave the running certificate in place.
    pub fn prepare(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
        load_certified_key(cert, key)
    }

    /// Serves `prepared` from the next handshake on.
    pub fn commit(&self, prepared: Arc<CertifiedKey>) {
        self.current.store(prepared);
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    pingora_rustls::install_default_crypto_provider();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let (certs, key_der) = match pingora_rustls::load_certs_and_key_files(&c, &k) {
        Ok(Some(pair)) => pair,
        _ => {
            return Err(format!(
                "server.tls: cannot load a certificate from {c} and a private key from {k}"
            ))
        }
    };
    let provider = CryptoProvider::get_default().ok_or("server.tls: no TLS crypto provider")?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("server.tls.key_file: unsupported private key: {e}"))?;
    let pair = CertifiedKey::new(certs, signing);
    // A key that is not the certificate's would start a listener whose every handshake fails.
    // (A key type rustls cannot compare is let through, as before.)
    if let Err(e @ rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        pair.keys_match()
    {
        return Err(format!(
            "the private key in {k} is not the key of the certificate in {c} ({e})"
        ));
    }
    Ok(Arc::new(pair))
}

/// A bundle's certificates as pingora's per-peer CA list.
pub fn pingora_cas(bundle: &CaBundle) -> Arc<CaType> {
    // Each certificate was parsed when the bundle was loaded (pingora's parse_x509 panics on
    // bad DER).
    let cas: Vec<WrappedX509> = bundle
        .certs
        .iter()
        .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
        .collect();
    Arc::from(cas.into_boxed_slice())
}
