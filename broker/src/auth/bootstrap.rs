//! `--bootstrap-password-file`: the first super-user of a cluster without users, so that a
//! cluster started with `--require-auth` can be administered at all.

use anyhow::Context;
use sluice_protocol::scram::{Credential, ITERATIONS_MIN, secret_bytes};

use crate::controller::{ControllerCommand, ControllerResponse, UserCredential};
use crate::node::Node;

/// Creates the first `--superuser` with the password in the bootstrap file, if the cluster
/// has no users yet (a no-op otherwise, also when several founders race: the controller
/// applies only the first).
pub async fn create_first_superuser(node: &Node) -> anyhow::Result<()> {
    let config = node.config();
    let (Some(file), Some(name)) = (&config.bootstrap_password_file, config.superusers.first())
    else {
        return Ok(());
    };
    if !node.metadata().users.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the bootstrap password file {}", file.display()))?;
    // A trailing newline from an editor or `echo` is not part of the password.
    let password = text.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(
        !password.is_empty(),
        "the bootstrap password file {} is empty",
        file.display()
    );
    let salt: [u8; 16] = secret_bytes()?;
    let credential = Credential::new(password, &salt, ITERATIONS_MIN)?;
    let answer = node
        .propose(ControllerCommand::BootstrapUser {
            name: name.clone(),
            credential: UserCredential {
                salt: credential.salt,
                iterations: credential.iterations,
                stored_key: credential.stored_key.to_vec(),
                server_key: credential.server_key.to_vec(),
            },
        })
        .await
        .context("cannot create the bootstrap super-user")?;
    if answer != ControllerResponse::Ok {
        // Another founder created the first user.
        return Ok(());
    }
    let context = crate::audit::Context {
        principal: crate::auth::Principal {
            name: crate::auth::session::Session::broker().user,
            method: crate::auth::AuthMethod::Broker,
        },
        source: None,
        request_id: None,
    };
    let audit = node.audit();
    audit.note(audit.event(&context, "user.bootstrap", &format!("user:{name}"), Ok(())));
    tracing::info!(
        user = name,
        "bootstrap super-user created (if the cluster had no users)"
    );
    Ok(())
}
