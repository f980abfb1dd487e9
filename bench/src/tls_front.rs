//! HTTPS in front of the fake issuer, for a `--server` that only accepts
//! `https://` issuers and JWKS URLs. Each accepted TLS connection is
//! spliced to the plain-HTTP fake issuer on loopback; the server under test
//! fetches keys once, so the splice costs nothing that is measured.
//!
//! The certificate and key are PEM files of the operator's choosing; the
//! server under test must trust the certificate (for example through
//! `SSL_CERT_FILE`, which rustls' and OpenSSL's platform verifiers read).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A running HTTPS front; it stops when dropped.
pub struct TlsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Listens on `listen` with the certificate chain and key in the PEM
    /// files, forwarding every connection to `upstream`.
    pub async fn start(listen: SocketAddr, cert: &Path, key: &Path, upstream: SocketAddr) -> anyhow::Result<TlsFront> {
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading the certificate chain {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing the certificate chain {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading the private key {} (PKCS#8, PKCS#1 or SEC1 PEM)", key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the TLS certificate and key do not form a usable pair")?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("binding the issuer's HTTPS front to {listen}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Err(e) = splice(acceptor, socket, upstream).await {
                        eprintln!("  (issuer HTTPS front: {e:#})");
                    }
                });
            }
        });
        Ok(TlsFront { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn splice(acceptor: TlsAcceptor, socket: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    let mut tls = acceptor.accept(socket).await.context("TLS handshake")?;
    let mut plain = TcpStream::connect(upstream).await.context("connecting to the fake issuer")?;
    tokio::io::copy_bidirectional(&mut tls, &mut plain).await.context("forwarding")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_reaches_the_upstream_through_tls() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let upstream_addr = upstream.local_addr().expect("upstream address");
        tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.expect("accept");
            let mut asked = [0u8; 4];
            socket.read_exact(&mut asked).await.expect("read");
            socket.write_all(if &asked == b"ping" { b"pong" } else { b"what" }).await.expect("write");
        });
        let front = TlsFront::start(
            "127.0.0.1:0".parse().expect("address"),
            &testdata("issuer-cert.pem"),
            &testdata("issuer-key.pem"),
            upstream_addr,
        )
        .await
        .expect("front starts");

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(testdata("issuer-ca.pem")).expect("CA file") {
            roots.add(cert.expect("CA certificate")).expect("CA is usable");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(front.addr()).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("the certificate verifies for 127.0.0.1");
        tls.write_all(b"ping").await.expect("write");
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"pong");
    }

    #[tokio::test]
    async fn a_key_file_without_a_key_is_refused_by_name() {
        let cert = testdata("issuer-cert.pem");
        let err = match TlsFront::start(
            "127.0.0.1:0".parse().expect("address"),
            &cert,
            &cert,
            "127.0.0.1:9".parse().expect("address"),
        )
        .await
        {
            Ok(_) => panic!("a certificate is not a key"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("reading the private key") && err.contains("issuer-cert.pem"), "{err}");
    }
}
