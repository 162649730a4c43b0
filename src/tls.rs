//! TLS for the gRPC and REST listeners, with rustls (ring provider) through `futures-rustls` over
//! glommio's `TcpStream`.
//!
//! # What is loaded, and when
//!
//! [`Material::load`] reads `--ssl_cert` (a PEM chain, leaf first), `--ssl_key` (a PEM private
//! key: PKCS#8, PKCS#1 or SEC1) and the optional `--ssl_client_ca` (PEM certificates) once, in
//! `main`, before any shard starts; it builds one `rustls::ServerConfig` from them to prove they
//! work together (the key parses and matches the leaf certificate's public key, every CA
//! certificate is a usable trust anchor). Every error names the flag, the file and what is wrong;
//! `main` exits 64 with it.
//!
//! # Per shard
//!
//! Each shard builds its own [`Acceptor`] per listener from its own copy of the [`Material`] at
//! start (`Material::acceptor`): its own `ServerConfig`, session cache and client verifier. So no
//! handshake touches a lock or an `Arc` another core touches; rustls's `Arc`s (the API takes
//! `Arc<ServerConfig>`) stay on the shard that made them. TLS 1.2 and 1.3, rustls's safe defaults.
//!
//! ALPN: the gRPC listeners advertise `h2` only (grpcio refuses a server that does not select
//! it), the REST listener `http/1.1` only. A client that offers no ALPN is served; one that offers
//! only other protocols gets rustls's `no_application_protocol` alert.
//!
//! With `--ssl_client_ca`, every client must present a certificate that chains to one of its
//! certificates (webpki verification, no revocation lists); a client without one fails the
//! handshake.
//!
//! # Limits and failures
//!
//! A handshake runs inside the connection's task, after the listener took a connection slot, so
//! handshakes count toward `--grpc_max_connections` / `--rest_max_connections`. It must finish
//! within `--ssl_handshake_timeout_seconds` (default 10), or the connection is closed: a client
//! that connects and sends nothing holds its slot that long at most. A failed or late handshake
//! closes that connection only, without an answer beyond rustls's alert; it is logged at INFO at
//! most once per [`FAILURE_LOG_INTERVAL`] per listener, with the count of failures since the last
//! line. Nothing a client sends during a handshake reaches a panic here (rustls returns errors).

use crate::config::TlsFiles;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use futures_rustls::server::TlsStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a listener may log failed handshakes.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The application protocol a listener advertises (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`: the gRPC listeners.
    H2,
    /// `http/1.1`: the REST listener.
    Http11,
}

impl Alpn {
    fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// The certificate chain, key and client CAs, checked; plain data, copied to every shard.
#[derive(Debug)]
pub struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Option<Vec<CertificateDer<'static>>>,
    handshake_timeout: Duration,
}

impl Clone for Material {
    fn clone(&self) -> Material {
        Material {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            client_cas: self.client_cas.clone(),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--{flag} {}: cannot read the file: {e}", path.display()))
}

fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(flag, path)?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        certs.push(c.map_err(|e| format!("--{flag} {}: not valid PEM: {e}", path.display()))?);
    }
    if certs.is_empty() {
        return Err(format!("--{flag} {}: no PEM certificate (BEGIN CERTIFICATE) in the file", path.display()));
    }
    Ok(certs)
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl Material {
    /// Reads and checks the files (see the module doc); the error names the flag and the file.
    pub fn load(files: &TlsFiles) -> Result<Material, String> {
        let chain = certificates("ssl_cert", &files.cert)?;
        let key_pem = read("ssl_key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "--ssl_key {}: no usable PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY): {e}",
                files.key.display()
            )
        })?;
        let client_cas = match &files.client_ca {
            Some(path) => Some(certificates("ssl_client_ca", path)?),
            None => None,
        };
        let material = Material {
            chain,
            key,
            client_cas,
            handshake_timeout: Duration::from_secs(files.handshake_timeout_seconds),
        };
        // Everything a shard will do with the material, once, so a shard cannot fail on it.
        material.server_config(Alpn::H2).map_err(|e| match e {
            Fail::Key(e) => {
                format!("--ssl_key {} does not fit --ssl_cert {}: {e}", files.key.display(), files.cert.display())
            }
            Fail::ClientCa(e) => match &files.client_ca {
                Some(p) => format!("--ssl_client_ca {}: {e}", p.display()),
                None => e,
            },
        })?;
        Ok(material)
    }

    /// Whether clients must present a certificate (`--ssl_client_ca`).
    pub fn client_auth(&self) -> bool {
        self.client_cas.is_some()
    }

    #[allow(clippy::disallowed_types, reason = "rustls takes its configuration and verifier as Arc; made per shard")]
    fn server_config(&self, alpn: Alpn) -> Result<ServerConfig, Fail> {
        use std::sync::Arc;
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Fail::Key(e.to_string()))?;
        let builder = match &self.client_cas {
            None => builder.with_no_client_auth(),
            Some(cas) => {
                let mut roots = RootCertStore::empty();
                for (i, ca) in cas.iter().enumerate() {
                    roots
                        .add(ca.clone())
                        .map_err(|e| Fail::ClientCa(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| Fail::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        // Checks that the key parses and matches the leaf certificate.
        let mut config =
            builder.with_single_cert(self.chain.clone(), self.key.clone_key()).map_err(|e| Fail::Key(e.to_string()))?;
        config.alpn_protocols = vec![alpn.id().to_vec()];
        Ok(config)
    }

    /// This shard's acceptor for one listener (its own `ServerConfig`; see the module doc).
    #[allow(clippy::disallowed_types, reason = "rustls takes its configuration as Arc; made per shard")]
    pub fn acceptor(&self, alpn: Alpn) -> Result<Acceptor, String> {
        let config = self.server_config(alpn).map_err(|e| match e {
            Fail::Key(e) | Fail::ClientCa(e) => e,
        })?;
        Ok(Acceptor {
            inner: futures_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
            timeout: self.handshake_timeout,
            alpn,
            failures: RefCell::new(crate::log::Throttle::new(FAILURE_LOG_INTERVAL)),
        })
    }
}

enum Fail {
    Key(String),
    ClientCa(String),
}

/// One listener's TLS server side on one shard.
pub struct Acceptor {
    inner: futures_rustls::TlsAcceptor,
    timeout: Duration,
    alpn: Alpn,
    /// Failed handshakes: logged at most once per `FAILURE_LOG_INTERVAL`, with a count.
    failures: RefCell<crate::log::Throttle>,
}

impl Acceptor {
    /// Runs the server side of the handshake on `stream`, within the handshake timeout; `None`
    /// when it failed or took too long (the stream is then dropped, which closes it).
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Option<TlsStream<S>> {
        let timeout = self.timeout;
        let handshake = async { self.inner.accept(stream).await.map_err(|e| e.to_string()) };
        let late = async {
            glommio::timer::sleep(timeout).await;
            Err(format!("not done within {} s", timeout.as_secs()))
        };
        match handshake.or(late).await {
            Ok(tls) => Some(tls),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    fn failed(&self, error: &str) {
        let Some(unlogged) = self.failures.borrow_mut().hit(Instant::now()) else { return };
        let failures = unlogged + 1;
        let what = match self.alpn {
            Alpn::H2 => "gRPC",
            Alpn::Http11 => "REST",
        };
        crate::log!(
            Info,
            "{what} listener: {failures} TLS handshake(s) failed since the last report; the last: {error}"
        );
    }
}
