//! TLS: `--tls-cert FILE --tls-key FILE` (PEM) serve `https://` and
//! `wss://` with rustls (the ring provider), on the same port and routes.
//!
//! The files are read once at start; a missing or bad file stops the
//! server with a message naming it. The handshake gets the same deadline
//! as the request headers.
//!
//! Idle memory: after the upgrade the TLS stream is taken back from hyper
//! like the plain socket, split (tokio's split: reader and writer take a
//! short lock per poll, never across an await), and read through
//! [`Lookahead`]: while idle, the reader waits for the next frame by
//! reading one byte, so no 8 KiB frame buffer is held; what stays is
//! rustls' own connection state (see BENCHMARKS.md for the figure).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_rustls::TlsAcceptor;

use crate::bounded::WaitReadable;

/// Where the certificate chain and its key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The acceptor every shard's connections go through.
#[derive(Clone)]
pub struct Acceptor(pub TlsAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

/// Reads the PEM files and builds the acceptor.
///
/// # Errors
/// A message naming the file that is missing, unreadable or not what it
/// should be, or a key that does not fit the certificate.
pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "--tls-key {} does not fit --tls-cert {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read --tls-cert {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            path.display()
        )),
        Err(e) => Err(format!("--tls-cert {}: bad PEM: {e}", path.display())),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read --tls-key {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "--tls-key {}: no usable PEM private key: {e}",
            path.display()
        )
    })
}

/// A byte source that waits for input by reading one byte ahead: for
/// streams (TLS) whose readiness cannot be asked without reading.
pub struct Lookahead<R> {
    leftover: Bytes,
    ahead: Option<u8>,
    inner: R,
}

impl<R> Lookahead<R> {
    /// `leftover`: bytes hyper had read past the handshake (copied, so
    /// hyper's read buffer is not kept alive).
    #[must_use]
    pub fn new(leftover: &Bytes, inner: R) -> Self {
        let leftover = if leftover.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(leftover)
        };
        Self {
            leftover,
            ahead: None,
            inner,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Lookahead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(b) = self.ahead.take() {
            buf.put_slice(&[b]);
            return Poll::Ready(Ok(()));
        }
        if self.leftover.has_remaining() {
            let n = self.leftover.len().min(buf.remaining());
            buf.put_slice(&self.leftover[..n]);
            self.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin + Send> WaitReadable for Lookahead<R> {
    async fn wait_readable(&mut self) -> io::Result<()> {
        if self.ahead.is_some() || self.leftover.has_remaining() {
            return Ok(());
        }
        let mut one = [0u8; 1];
        // End of stream: nothing is kept; the next read sees it too.
        if self.inner.read(&mut one).await? == 1 {
            self.ahead = Some(one[0]);
        }
        Ok(())
    }
}
