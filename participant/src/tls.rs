//! Whom a participant trusts when it dials an `https://` coordinator. By default the system's
//! certificate store (which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`); with
//! [`trust_only`] (the CLI's `--tls-ca`), only the given CA certificates, as a consortium with
//! its own certificate authority would want. Set once per process, before connecting.

use std::sync::OnceLock;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::ParticipantError;

/// The PEM file given to [`trust_only`], already checked to hold certificates.
static TRUSTED: OnceLock<Certificate> = OnceLock::new();

/// Trusts only the CA certificates in `pem` (one or more PEM certificates) for every
/// `https://` connection this process makes. Returns how many certificates it read.
pub fn trust_only(pem: &[u8]) -> Result<usize, ParticipantError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ParticipantError::Tls(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(ParticipantError::Tls(
            "no PEM certificate found (expected \"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    // Each must be a usable trust anchor: a certificate the TLS stack would silently drop
    // would leave nothing trusted and every connection failing for an unclear reason.
    for (i, cert) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| {
            ParticipantError::Tls(format!(
                "certificate {} is not a usable CA certificate: {e}",
                i + 1
            ))
        })?;
    }
    TRUSTED
        .set(Certificate::from_pem(pem))
        .map_err(|_| ParticipantError::Tls("trusted CA certificates were already set".into()))?;
    Ok(certs.len())
}

/// Whether [`trust_only`] was called: the user asked for TLS to a named CA.
pub(crate) fn ca_given() -> bool {
    TRUSTED.get().is_some()
}

/// The TLS settings of an `https://` connection. The handshake has its own deadline: the TCP
/// connect timeout does not cover a server that accepts and then stalls.
pub(crate) fn client_config() -> ClientTlsConfig {
    let config = match TRUSTED.get() {
        Some(ca) => ClientTlsConfig::new().ca_certificate(ca.clone()),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    config.timeout(std::time::Duration::from_secs(10))
}
