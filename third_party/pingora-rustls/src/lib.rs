// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! This module contains all the rustls specific pingora integration for things
//! like loading certificates and private keys

#![warn(clippy::all)]

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use log::warn;
pub use no_debug::{Ellipses, NoDebug, WithTypeInfo};
use pingora_error::{Error, ErrorType, OrErr, Result};

pub use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
pub use rustls::server::{
    ClientCertVerifierBuilder, ClientHello, ResolvesServerCert, WebPkiClientVerifier,
};
pub use rustls::sign;
pub use rustls::{
    client::WebPkiServerVerifier, crypto::CryptoProvider, version, CertificateError, ClientConfig,
    DigitallySignedStruct, Error as RusTlsError, KeyLogFile, RootCertStore, ServerConfig,
    SignatureScheme, Stream,
};

/// Install the default `ring` CryptoProvider for rustls.
///
/// rustls 0.23+ requires an explicit provider. This function installs `ring`
/// as the process-level default. Safe to call multiple times — subsequent
/// calls are no-ops.
pub fn install_default_crypto_provider() {
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
}
pub use rustls_native_certs::load_native_certs;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
pub use tokio_rustls::{Accept, Connect, TlsAcceptor, TlsConnector, TlsStream};

// This allows to skip certificate verification. Be highly cautious.
pub use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};

/// Load the given file from disk as a buffered reader and use the pingora Error
/// type instead of the std::io version
fn load_file<P>(path: P) -> Result<BufReader<File>>
where
    P: AsRef<Path>,
{
    File::open(path)
        .or_err(ErrorType::FileReadError, "Failed to load file")
        .map(BufReader::new)
}

/// Read the pem file at the given path from disk: every section, in order, with its kind
/// (sections of kinds rustls-pki-types does not know are skipped, as rustls-pemfile did)
fn load_pem_file<P>(path: P) -> Result<Vec<(SectionKind, Vec<u8>)>>
where
    P: AsRef<Path>,
{
    let mut reader = load_file(path)?;
    let mut items = Vec::new();
    while let Some(item) = pem::from_buf(&mut reader).or_err(
        ErrorType::InvalidCert,
        "Certificate in pem file could not be read",
    )? {
        items.push(item);
    }
    Ok(items)
}

/// Load the certificates from the given pem file path into the given
/// certificate store
pub fn load_ca_file_into_store<P>(path: P, cert_store: &mut RootCertStore) -> Result<()>
where
    P: AsRef<Path>,
{
    for (kind, der) in load_pem_file(path)? {
        // only loading certificates, handling a CA file
        if kind != SectionKind::Certificate {
            return Error::e_explain(
                ErrorType::InvalidCert,
                "Pem file contains un-loadable certificate type",
            );
        }
        cert_store.add(CertificateDer::from(der)).or_err(
            ErrorType::InvalidCert,
            "Failed to load X509 certificate into root store",
        )?;
    }

    Ok(())
}

/// Attempt to load the native cas into the given root-certificate store
pub fn load_platform_certs_incl_env_into_store(ca_certs: &mut RootCertStore) -> Result<()> {
    // this includes handling of ENV vars SSL_CERT_FILE & SSL_CERT_DIR
    // rustls-native-certs 0.8 reports what it could not read beside what it could: as 0.7
    // did, an error only when nothing could be loaded.
    let native = load_native_certs();
    if native.certs.is_empty() {
        if let Some(e) = native.errors.into_iter().next() {
            return Err(e).or_err(ErrorType::InvalidCert, "Failed to load native certificates");
        }
    }
    for cert in native.certs {
        ca_certs.add(cert).or_err(
            ErrorType::InvalidCert,
            "Failed to load native certificate into root store",
        )?;
    }

    Ok(())
}

/// Load the certificates and private key files
pub fn load_certs_and_key_files<'a>(
    cert: &str,
    key: &str,
) -> Result<Option<(Vec<CertificateDer<'a>>, PrivateKeyDer<'a>)>> {
    let certs_file = load_pem_file(cert)?;
    let key_file = load_pem_file(key)?;

    let certs = certs_file
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect::<Vec<_>>();

    // These are the currently supported pk types -
    // [https://doc.servo.org/rustls/key/struct.PrivateKey.html]
    let private_key_opt = key_file
        .into_iter()
        .find_map(|(kind, der)| match kind {
            SectionKind::RsaPrivateKey
            | SectionKind::PrivateKey
            | SectionKind::EcPrivateKey => PrivateKeyDer::from_pem(kind, der),
            _ => None,
        });

    if let (Some(private_key), false) = (private_key_opt, certs.is_empty()) {
        Ok(Some((certs, private_key)))
    } else {
        Ok(None)
    }
}

/// Load the certificate
pub fn load_pem_file_ca(path: &String) -> Result<Vec<u8>> {
    let cas_file_items = CertificateDer::pem_reader_iter(load_file(path)?)
        .map(|item_res| {
            item_res.or_err(
                ErrorType::InvalidCert,
                "Failed to load certificate from file",
            )
        })
        .collect::<Result<Vec<_>>>()?;

    Ok(cas_file_items
        .first()
        .map(|ca| ca.to_vec())
        .unwrap_or_default())
}

pub fn load_pem_file_private_key(path: &String) -> Result<Vec<u8>> {
    // No key in the file is an empty answer, not an error (as rustls-pemfile's `private_key`).
    match PrivateKeyDer::from_pem_reader(load_file(path)?) {
        Ok(key) => Ok(key.secret_der().to_vec()),
        Err(pem::Error::NoItemsFound) => Ok(Vec::new()),
        Err(e) => Err(e).or_err(
            ErrorType::InvalidCert,
            "Failed to load private key from file",
        ),
    }
}

pub fn hash_certificate(cert: &CertificateDer) -> Vec<u8> {
    let hash = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    hash.as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    // PEM reading through rustls-pki-types (in place of rustls-pemfile): the same answers for
    // every kind of file this crate reads. Keys and certificates in tests/data are test-only,
    // made with openssl.
    use super::*;

    fn data(name: &str) -> String {
        format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn certificates_and_each_supported_key_kind_load() {
        for key in ["rsa-pkcs1.key", "ec-sec1.key", "pkcs8.key"] {
            let (certs, k) = load_certs_and_key_files(&data("chain.pem"), &data(key))
                .expect("read")
                .expect("a certificate and a key");
            assert_eq!(certs.len(), 2, "{key}: both certificates of the chain, in order");
            let kind_ok = matches!(
                (key, &k),
                ("rsa-pkcs1.key", PrivateKeyDer::Pkcs1(_))
                    | ("ec-sec1.key", PrivateKeyDer::Sec1(_))
                    | ("pkcs8.key", PrivateKeyDer::Pkcs8(_))
            );
            assert!(kind_ok, "{key}: read as the wrong kind");
        }
        // A key file with a certificate in front of the key: the key is found.
        let (_, k) = load_certs_and_key_files(&data("cert.pem"), &data("cert-and-key.pem"))
            .expect("read")
            .expect("found");
        assert!(matches!(k, PrivateKeyDer::Sec1(_)));
        // No key: nothing, not an error.
        assert!(load_certs_and_key_files(&data("cert.pem"), &data("cert2.pem"))
            .expect("read")
            .is_none());
        assert!(load_certs_and_key_files(&data("missing.pem"), &data("pkcs8.key")).is_err());
    }

    #[test]
    fn a_ca_file_holds_certificates_only() {
        let mut store = RootCertStore::empty();
        load_ca_file_into_store(data("chain.pem"), &mut store).expect("a chain loads");
        assert_eq!(store.len(), 2);
        let mut store = RootCertStore::empty();
        assert!(
            load_ca_file_into_store(data("cert-and-key.pem"), &mut store).is_err(),
            "a key in a CA file is refused"
        );
    }

    #[test]
    fn the_first_certificate_and_the_key_as_der() {
        let first = load_pem_file_ca(&data("chain.pem")).expect("read");
        let cert = CertificateDer::from_pem_file(data("cert.pem")).expect("cert");
        assert_eq!(first, cert.as_ref());
        let key = load_pem_file_private_key(&data("pkcs8.key")).expect("read");
        assert!(!key.is_empty());
        assert_eq!(
            load_pem_file_private_key(&data("cert.pem")).expect("no key is no error"),
            Vec::<u8>::new()
        );
        assert!(load_pem_file_ca(&data("missing.pem")).is_err());
    }
}
