//! TLS for the doors that carry their own protocol (Postgres wire, Flight SQL): a
//! certificate chain and key from PEM files, served with rustls on the ring provider
//! (the one provider of this build, named explicitly so a second one in the dependency
//! tree never makes the choice ambiguous).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::state::StartError;

/// A door's certificate chain and key as read from their PEM files, checked to make a
/// TLS server configuration.
pub struct Pem {
    /// The certificate chain, PEM.
    pub cert: Vec<u8>,
    /// The private key, PEM.
    pub key: Vec<u8>,
    /// The checked server configuration (rustls on ring).
    pub config: ServerConfig,
}

impl Pem {
    /// Reads both files once and checks that they make a server configuration.
    pub fn read(cert: &Path, key: &Path) -> Result<Pem, StartError> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| StartError::new(&p.display().to_string(), e));
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| StartError::new(&cert.display().to_string(), e))?;
        if chain.is_empty() {
            return Err(StartError::new(
                &cert.display().to_string(),
                "no PEM certificate in the file",
            ));
        }
        let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| StartError::new(&key.display().to_string(), e))?
            .ok_or_else(|| {
                StartError::new(&key.display().to_string(), "no PEM private key in the file")
            })?;
        let config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::new("tls", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| StartError::new(&cert.display().to_string(), e))?;
        Ok(Pem {
            cert: cert_pem,
            key: key_pem,
            config,
        })
    }

    /// A TLS acceptor for a door that speaks TLS itself (Postgres wire).
    pub fn acceptor(self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.config))
    }
}

/// Writes a self-signed certificate and key for `localhost` and `127.0.0.1` (the demo's
/// doors), returning their paths.
pub fn write_self_signed(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(std::io::Error::other)?;
    let cert = dir.join("door.crt");
    let key = dir.join("door.key");
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((cert, key))
}
