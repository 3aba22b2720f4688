//! How gRPC channels reach an address: TCP by default, or a dialer the deterministic
//! simulation installs (its own in-memory network), so one broker and client build runs in
//! both.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::ClientTls;

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A boxed connected stream.
pub type BoxStream = Box<dyn Stream>;

/// A connection in progress.
pub type Dialing = Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send>>;

/// Opens connections to `host:port` addresses.
pub type Dialer = Arc<dyn Fn(String) -> Dialing + Send + Sync>;

static DIALER: OnceLock<Dialer> = OnceLock::new();
static KEEPALIVE: OnceLock<(Duration, Duration)> = OnceLock::new();
static RESET_MEMORY: OnceLock<(Duration, usize)> = OnceLock::new();

/// Sets the HTTP/2 keepalive (PING interval, PING timeout) of every channel and server made
/// from now on; once per process (the simulation's network heals in seconds). False if set.
pub fn set_keepalive(interval: Duration, timeout: Duration) -> bool {
    KEEPALIVE.set((interval, timeout)).is_ok()
}

/// The HTTP/2 keepalive in force: (PING interval, PING timeout).
pub fn keepalive() -> (Duration, Duration) {
    KEEPALIVE.get().copied().unwrap_or((
        crate::HTTP2_KEEPALIVE_INTERVAL,
        crate::HTTP2_KEEPALIVE_TIMEOUT,
    ))
}

/// Sets how long, and how many, locally reset HTTP/2 streams every channel made from now on
/// remembers (h2 ignores frames for a remembered one and answers a forgotten one's with
/// RST_STREAM(STREAM_CLOSED)); once per process. False if set. h2 times this memory with the
/// wall clock (`std::time::Instant`, 1 s and 50 streams by default), not tokio's: the
/// simulation makes it never expire nor fill, or a run would depend on the machine's speed.
pub fn set_reset_stream_memory(duration: Duration, max: usize) -> bool {
    RESET_MEMORY.set((duration, max)).is_ok()
}

/// `endpoint` with the reset-stream memory set by [`set_reset_stream_memory`], if any.
fn with_reset_memory(endpoint: Endpoint) -> Endpoint {
    match RESET_MEMORY.get() {
        Some(&(duration, max)) => endpoint
            .http2_reset_stream_duration(duration)
            .http2_max_concurrent_reset_streams(max),
        None => endpoint,
    }
}

/// Routes every channel made from now on through `dialer`; set once per process, before any
/// channel exists (the simulation does, at start). False if one was set already.
pub fn install_dialer(dialer: Dialer) -> bool {
    DIALER.set(dialer).is_ok()
}

/// A channel that connects on first use (and reconnects), over the installed dialer if any,
/// and over TLS when `tls` is given.
pub fn connect_lazy(endpoint: Endpoint, tls: Option<Arc<ClientTls>>) -> Channel {
    let endpoint = with_reset_memory(endpoint);
    match (DIALER.get(), tls) {
        (None, None) => endpoint.connect_lazy(),
        (dialer, tls) => endpoint.connect_with_connector_lazy(connector(dialer.cloned(), tls)),
    }
}

/// A channel connected now, over the installed dialer if any, and over TLS when `tls` is
/// given.
pub async fn connect(
    endpoint: Endpoint,
    tls: Option<Arc<ClientTls>>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = with_reset_memory(endpoint);
    match (DIALER.get(), tls) {
        (None, None) => endpoint.connect().await,
        (dialer, tls) => {
            endpoint
                .connect_with_connector(connector(dialer.cloned(), tls))
                .await
        }
    }
}

type Connector = tower::util::ServiceFn<
    Box<
        dyn Fn(Uri) -> Pin<Box<dyn Future<Output = std::io::Result<TokioIo<BoxStream>>> + Send>>
            + Send
            + Sync,
    >,
>;

/// TCP with `TCP_NODELAY`, as tonic's own connector does: a request written in several
/// frames must not wait for the peer's delayed ACK.
fn tcp_dial(address: String) -> Dialing {
    Box::pin(async move {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream) as BoxStream)
    })
}

fn connector(dialer: Option<Dialer>, tls: Option<Arc<ClientTls>>) -> Connector {
    tower::service_fn(Box::new(move |uri: Uri| {
        let address = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let host = uri.host().unwrap_or_default().to_string();
        let dialing = match &dialer {
            Some(dialer) => dialer(address),
            None => tcp_dial(address),
        };
        let tls = tls.clone();
        Box::pin(async move {
            let stream = dialing.await?;
            let stream = match tls {
                Some(tls) => tls.wrap(stream, &host).await?,
                None => stream,
            };
            Ok(TokioIo::new(stream))
        })
    }))
}
