//! Reloading every TLS config of the broker, listeners' and outgoing channels' alike, from
//! their files: on SIGHUP, so certificates are rotated without a restart.

use std::sync::Arc;

use sluice_protocol::tls::ClientTls;

use super::ServerTls;

/// Every reloadable TLS config of one broker.
#[derive(Debug, Clone, Default)]
pub struct Reloader {
    /// The listeners'.
    pub servers: Vec<Arc<ServerTls>>,
    /// The outgoing channels'.
    pub clients: Vec<Arc<ClientTls>>,
}

impl Reloader {
    /// Whether there is anything to reload.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.clients.is_empty()
    }

    /// Reloads each config from its files, logging each failure; a config that fails to
    /// load keeps what it had. Returns how many failed.
    pub fn reload(&self) -> usize {
        let failures = self
            .servers
            .iter()
            .map(|s| s.reload())
            .chain(self.clients.iter().map(|c| c.reload()))
            .filter_map(Result::err)
            .inspect(|e| tracing::error!(error = %e, "TLS reload failed; the old certificates stay in use"))
            .count();
        let outcome = if failures == 0 { "ok" } else { "failed" };
        metrics::counter!("sluice_tls_reloads_total", "outcome" => outcome).increment(1);
        if failures == 0 {
            tracing::info!("TLS certificates reloaded");
        }
        failures
    }

    /// Reloads on every SIGHUP until the process ends. Installed before the ready line:
    /// SIGHUP's default action ends the process.
    pub fn on_sighup(self) -> anyhow::Result<()> {
        use anyhow::Context;
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                self.reload();
            }
        });
        Ok(())
    }
}
