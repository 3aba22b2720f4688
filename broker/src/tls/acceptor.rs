//! The TLS handshake in front of tonic: accepted connections are handshaken concurrently
//! (a slow or silent client holds up no one else), bounded in time, and yielded as one
//! stream type whether the listener has TLS or not.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::server::Connected;

use super::ServerTls;
use crate::auth::Principal;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes under way at once per listener; more wait to be accepted.
const HANDSHAKES_MAX: usize = 256;

/// A served connection: plaintext, or TLS with the principal of the client's certificate
/// if it gave one.
pub enum MaybeTls<IO> {
    /// No TLS on this listener.
    Plain(IO),
    /// TLS; who the client's verified certificate names, if it presented one.
    Tls(
        Box<tokio_rustls::server::TlsStream<IO>>,
        Option<Arc<Principal>>,
    ),
}

/// What each request learns of its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Who the client's verified certificate names (mutual TLS), if anyone.
    pub principal: Option<Arc<Principal>>,
}

impl Connected for MaybeTls<TcpStream> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            MaybeTls::Plain(io) => ConnInfo {
                remote: io.peer_addr().ok(),
                principal: None,
            },
            MaybeTls::Tls(tls, principal) => ConnInfo {
                remote: tls.get_ref().0.peer_addr().ok(),
                principal: principal.clone(),
            },
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(tls, _) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(tls, _) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(tls, _) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(io) => io.is_write_vectored(),
            MaybeTls::Tls(tls, _) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(tls, _) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(tls, _) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream of served connections.
pub type Incoming<IO> = Pin<Box<dyn Stream<Item = io::Result<MaybeTls<IO>>> + Send>>;

/// The connections of `accepted`, handshaken with `tls` when given (`listener` names it in
/// logs and metrics). A failed or slow handshake drops that connection only.
pub fn incoming<S, IO>(
    accepted: S,
    tls: Option<Arc<ServerTls>>,
    listener: &'static str,
) -> Incoming<IO>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = tls else {
        return Box::pin(accepted.map(|io| io.map(MaybeTls::Plain)));
    };
    let (tx, rx) = mpsc::channel(HANDSHAKES_MAX);
    tokio::spawn(handshake_all(accepted, tls, listener, tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Accepts and handshakes until the server drops the stream (it does at shutdown).
async fn handshake_all<S, IO>(
    accepted: S,
    tls: Arc<ServerTls>,
    listener: &'static str,
    tx: mpsc::Sender<io::Result<MaybeTls<IO>>>,
) where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut accepted = Box::pin(accepted);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => return,
            Some(done) = handshakes.join_next() => {
                if let Ok(Some(conn)) = done
                    && tx.send(Ok(conn)).await.is_err()
                {
                    return;
                }
            }
            next = accepted.next(), if handshakes.len() < HANDSHAKES_MAX => match next {
                None => return,
                Some(Ok(io)) => {
                    handshakes.spawn(handshake(io, tls.current(), listener));
                }
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

async fn handshake<IO>(
    io: IO,
    config: Arc<rustls::ServerConfig>,
    listener: &'static str,
) -> Option<MaybeTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let failure = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
        Ok(Ok(tls)) => {
            let principal = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(Principal::from_certificate)
                .map(Arc::new);
            return Some(MaybeTls::Tls(Box::new(tls), principal));
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
    };
    // A port scanner or a plaintext client ends here: not worth more than debug.
    tracing::debug!(listener, error = %failure, "TLS handshake failed");
    metrics::counter!("sluice_tls_handshake_failures_total", "listener" => listener).increment(1);
    None
}
