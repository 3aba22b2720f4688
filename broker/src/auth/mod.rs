//! Authentication (docs/security.md): who a call comes from — a SCRAM session token, a
//! client certificate, or no one — decided from the headers before any body is read.

pub mod bootstrap;
pub mod interceptor;
pub mod principal;
pub mod scram_server;
pub mod session;

pub use interceptor::Authenticate;
pub use principal::{AuthMethod, Principal};
pub use scram_server::ScramServer;
pub use session::SessionKeys;
