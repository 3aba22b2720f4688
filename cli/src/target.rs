//! The cluster the CLI talks to: bootstrap brokers and how to connect (TLS).

use std::sync::Arc;

use sluice_client::{Client, ClientError, ClientTls, ClientTlsFiles, ConnectOptions, Credentials};

use crate::args::Cli;
use crate::failure::Failure;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Bootstrap brokers.
    pub brokers: Vec<String>,
    /// TLS and the like.
    pub options: ConnectOptions,
}

impl Target {
    /// The target the global flags describe; unreadable TLS files are a usage error.
    pub fn from_cli(cli: &Cli) -> Result<Self, Failure> {
        let tls = match &cli.tls_ca {
            Some(ca) => Some(load_tls(ClientTlsFiles {
                ca: ca.clone(),
                cert: cli.tls_cert.clone(),
                key: cli.tls_key.clone(),
                server_name: cli.tls_server_name.clone(),
            })?),
            None => None,
        };
        let credentials = match &cli.user {
            Some(user) => Some(Credentials {
                user: user.clone(),
                password: std::env::var("SLUICE_PASSWORD").map_err(|_| {
                    Failure::usage(
                        "--user needs the password in the SLUICE_PASSWORD environment variable",
                    )
                })?,
            }),
            None => None,
        };
        Ok(Self {
            brokers: cli.brokers.clone(),
            options: ConnectOptions { tls, credentials },
        })
    }

    /// A client connected to the cluster.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.brokers, self.options.clone()).await
    }
}

fn load_tls(files: ClientTlsFiles) -> Result<Arc<ClientTls>, Failure> {
    ClientTls::load(files).map_err(|e| Failure::usage(format!("TLS: {e}")))
}
