//! gRPC over turmoil's simulated network: the dialer every channel uses, and the accept
//! stream the broker's servers take.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use sluice_protocol::transport::{self, BoxStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Routes every gRPC channel of this process over turmoil (idempotent).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        sluice_storage::install_wall_clock(Box::new(super::cluster::SimClock));
        // The simulation's links heal within seconds and carry little: notice dead
        // connections as fast as the production defaults would on a real network.
        transport::set_keepalive(Duration::from_secs(2), Duration::from_secs(4));
        // h2 forgets a stream it reset after 1 s of *wall-clock* time (or once it remembers
        // 50): whether a late frame for it is ignored or answered with a RST_STREAM (one more
        // message, one more draw of turmoil's rng) must not depend on how fast this machine
        // runs the seed. Remembered for the whole run, as a real network's late frames are.
        transport::set_reset_stream_memory(Duration::MAX, usize::MAX);
        transport::install_dialer(Arc::new(|address: String| {
            Box::pin(async move {
                let stream = turmoil::net::TcpStream::connect(address).await?;
                Ok(Box::new(stream) as BoxStream)
            })
        }));
    });
}

/// An accepted simulated connection.
pub struct SimConnection(turmoil::net::TcpStream);

impl Connected for SimConnection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connections accepted on `port` of the current simulated host.
pub async fn listen(
    port: u16,
) -> std::io::Result<impl Stream<Item = std::io::Result<SimConnection>> + Send + 'static> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| SimConnection(s));
        Some((accepted, listener))
    }))
}
