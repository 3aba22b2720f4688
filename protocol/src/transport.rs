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

/// Routes every channel made from now on through `dialer`; set once per process, before any
/// channel exists (the simulation does, at start). False if one was set already.
pub fn install_dialer(dialer: Dialer) -> bool {
    DIALER.set(dialer).is_ok()
}

/// A channel that connects on first use (and reconnects), over the installed dialer if any.
pub fn connect_lazy(endpoint: Endpoint) -> Channel {
    match DIALER.get() {
        None => endpoint.connect_lazy(),
        Some(dialer) => endpoint.connect_with_connector_lazy(connector(Arc::clone(dialer))),
    }
}

/// A channel connected now, over the installed dialer if any.
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    match DIALER.get() {
        None => endpoint.connect().await,
        Some(dialer) => {
            endpoint
                .connect_with_connector(connector(Arc::clone(dialer)))
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

fn connector(dialer: Dialer) -> Connector {
    tower::service_fn(Box::new(move |uri: Uri| {
        let address = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let dialing = dialer(address);
        Box::pin(async move { dialing.await.map(TokioIo::new) })
    }))
}
