//! TLS for the coordinator's gRPC port: loads and checks the certificate chain and private key
//! an operator names (`conclave serve --tls-cert --tls-key`), so that a bad file is refused at
//! startup with the file and the reason, not at the first handshake.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Identity, ServerTlsConfig};

/// Why the TLS files were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate { path: String },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    BadKey { path: String, reason: String },
    #[error(
        "{path} is readable by group or others (mode {mode:o}): a TLS private key must be private (chmod 600)"
    )]
    KeyNotPrivate { path: String, mode: u32 },
    #[error("{key} does not go with the certificate in {cert}: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// Reads `cert` (PEM chain, leaf first) and `key` (PEM private key, mode 0600 or stricter) and
/// returns the server's TLS configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    let name = |p: &Path| p.display().to_string();
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: name(cert),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: name(cert),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: name(cert) });
    }
    // The mode is checked on the handle the key is then read from.
    let read_err = |source| TlsError::Read {
        path: name(key),
        source,
    };
    let mut file = std::fs::File::open(key).map_err(read_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyNotPrivate {
                path: name(key),
                mode,
            });
        }
    }
    let mut key_pem = zeroize::Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(&mut file, &mut key_pem).map_err(read_err)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: name(key),
        reason: e.to_string(),
    })?;
    let config = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &*key_pem));
    // Built once here so that a key that does not match the certificate is refused now,
    // naming the files, rather than when the server starts.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| TlsError::Mismatch {
            cert: name(cert),
            key: name(key),
            reason: conclave_proto::error_chain(&e),
        })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_missing_empty_garbled_and_shared_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let missing = server_config(&p("nope.pem"), &p("nope.key")).unwrap_err();
        assert!(matches!(missing, TlsError::Read { .. }), "{missing}");
        std::fs::write(p("empty.pem"), "not a pem\n").unwrap();
        std::fs::write(p("k.pem"), "").unwrap();
        let empty = server_config(&p("empty.pem"), &p("k.pem")).unwrap_err();
        assert!(matches!(empty, TlsError::NoCertificate { .. }), "{empty}");
        std::fs::write(
            p("bad.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = server_config(&p("bad.pem"), &p("k.pem")).unwrap_err();
        assert!(matches!(bad, TlsError::BadCertificate { .. }), "{bad}");
    }

    #[test]
    fn accepts_a_private_key_with_its_chain_and_refuses_a_shared_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(p("cert.pem"), pair.cert.pem()).unwrap();
        std::fs::write(p("key.pem"), pair.signing_key.serialize_pem()).unwrap();
        let mode = |m: u32| {
            std::fs::set_permissions(p("key.pem"), std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(0o600);
        server_config(&p("cert.pem"), &p("key.pem")).unwrap();
        mode(0o640);
        let shared = server_config(&p("cert.pem"), &p("key.pem")).unwrap_err();
        assert!(
            matches!(shared, TlsError::KeyNotPrivate { mode: 0o640, .. }),
            "{shared}"
        );
        // Another certificate's key.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(p("key.pem"), other.signing_key.serialize_pem()).unwrap();
        mode(0o600);
        let mismatch = server_config(&p("cert.pem"), &p("key.pem")).unwrap_err();
        assert!(matches!(mismatch, TlsError::Mismatch { .. }), "{mismatch}");
        // A certificate where the key should be is not a key.
        std::fs::write(p("key.pem"), pair.cert.pem()).unwrap();
        mode(0o600);
        let swapped = server_config(&p("cert.pem"), &p("key.pem")).unwrap_err();
        assert!(matches!(swapped, TlsError::BadKey { .. }), "{swapped}");
    }
}
