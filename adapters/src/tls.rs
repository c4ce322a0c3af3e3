//! TLS for the operator's servers (secure metrics, the admission webhook): where the certificate comes from and the
//! rustls settings. I/O: reads certificate files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate or key could not be read or used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Error {
    /// The file, or the generated certificate.
    pub path: String,
    /// What is wrong, and the fix.
    pub reason: String,
}

/// Where the server's certificate comes from.
#[derive(Clone)]
pub enum TlsSource {
    /// Generated at start, self-signed, for these DNS names and IP addresses.
    SelfSigned(Vec<String>),
    /// PEM files (a certificate chain and its private key), re-read when either changes.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
        /// The flags that name the files (`--metrics-cert`), for error messages.
        flags: &'static str,
    },
    /// Certificates the caller keeps current itself (the webhook's own certificate authority).
    Resolver(Arc<dyn ResolvesServerCert>),
}

/// The TLS settings of a server (TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(source: &TlsSource) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver: Arc<dyn ResolvesServerCert> = match source {
        TlsSource::SelfSigned(names) => {
            let generated = rcgen::generate_simple_self_signed(names.clone())
                .map_err(|e| Error { path: "the self-signed certificate".to_owned(), reason: e.to_string() })?;
            let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .map_err(|e| Error { path: "the self-signed certificate".to_owned(), reason: e.to_owned() })?;
            let certified = certified_key(&provider, vec![generated.cert.der().clone()], &key, "generated")?;
            Arc::new(rustls::sign::SingleCertAndKey::from(certified))
        }
        TlsSource::Files { cert, key, flags } => Arc::new(CertificateFiles::load(provider.clone(), cert, key, flags)?),
        TlsSource::Resolver(resolver) => resolver.clone(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error { path: "TLS".to_owned(), reason: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certified_key(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
    path: &str,
) -> Result<CertifiedKey, Error> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| Error { path: path.to_owned(), reason: format!("the private key cannot be used: {e}") })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| Error {
        path: path.to_owned(),
        reason: format!("the private key does not belong to the certificate: {e}"),
    })?;
    Ok(certified)
}

/// A certificate and key read from PEM files and read again when either file's modification time changes
/// (checked at most once a second). A change that does not load (half-written files) keeps the previous pair
/// and is logged.
#[derive(Debug)]
pub struct CertificateFiles {
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
    flags: &'static str,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    certified: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl CertificateFiles {
    /// Reads `cert` and `key`; `flags` names the flags that set them (`--metrics-cert`), for error messages.
    pub fn load(provider: Arc<CryptoProvider>, cert: &Path, key: &Path, flags: &'static str) -> Result<Self, Error> {
        let stamps = (modified(cert), modified(key));
        let certified = Arc::new(read_pair(&provider, cert, key, flags)?);
        Ok(Self {
            provider,
            cert: cert.to_owned(),
            key: key.to_owned(),
            flags,
            state: Mutex::new(Loaded { certified, stamps, checked: Instant::now() }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= Duration::from_secs(1) {
            state.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                match read_pair(&self.provider, &self.cert, &self.key, self.flags) {
                    Ok(certified) => {
                        tracing::info!(cert = %self.cert.display(), "loaded the changed certificate");
                        state.certified = Arc::new(certified);
                        state.stamps = stamps;
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the previous certificate"),
                }
            }
        }
        state.certified.clone()
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pair(provider: &CryptoProvider, cert: &Path, key: &Path, flags: &str) -> Result<CertifiedKey, Error> {
    let shown = |p: &Path| p.display().to_string();
    let chain =
        CertificateDer::pem_file_iter(cert).and_then(Iterator::collect::<Result<Vec<_>, _>>).map_err(|e| Error {
            path: shown(cert),
            reason: format!("not a readable PEM certificate chain ({e}); set {flags}-path and {flags}-name"),
        })?;
    if chain.is_empty() {
        return Err(Error { path: shown(cert), reason: "holds no PEM certificate".to_owned() });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| Error {
        path: shown(key),
        reason: format!("not a readable PEM private key ({e}); set {flags}-path and {flags}-key"),
    })?;
    certified_key(provider, chain, &private, &shown(cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_files_that_do_not_load_name_the_file_and_the_flag() {
        let dir = std::env::temp_dir().join(format!("tsdb-metrics-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let source = TlsSource::Files { cert: cert.clone(), key: key.clone(), flags: "--metrics-cert" };
        let e = server_config(&source).unwrap_err().to_string();
        assert!(e.contains("tls.crt") && e.contains("--metrics-cert-path"), "{e}");

        let one = rcgen::generate_simple_self_signed(vec!["one.test".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other.test".to_owned()]).unwrap();
        std::fs::write(&cert, one.cert.pem()).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let e = server_config(&source).unwrap_err().to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");

        std::fs::write(&key, one.signing_key.serialize_pem()).unwrap();
        server_config(&source).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
