//! TLS on the broker's listeners (docs/security.md): server configs reloadable on SIGHUP,
//! the handshake in front of tonic, and the peer's certificate for each request.

pub mod acceptor;
pub mod reload;
pub mod server_config;

pub use acceptor::{ConnInfo, MaybeTls, incoming};
pub use reload::Reloader;
pub use server_config::ServerTls;
