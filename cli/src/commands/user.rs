//! `sluice user create|delete|list|whoami`.

use std::io::{BufRead, Write};

use serde_json::json;
use sluice_client::Client;

use crate::args::{Format, UserCommand};
use crate::failure::Failure;
use crate::output::{json_line, table};

/// Runs a user command.
pub async fn run(
    client: &Client,
    command: UserCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let admin = client.admin();
    match command {
        UserCommand::Create { name, iterations } => {
            let password = read_password()?;
            admin
                .upsert_user(&name, &password, Some(iterations))
                .await?;
            match format {
                Format::Json => json_line(out, &json!({ "user": name, "created": true }))?,
                Format::Text => writeln!(out, "user {name} created")?,
            }
        }
        UserCommand::Delete { name } => {
            admin.delete_user(&name).await?;
            match format {
                Format::Json => json_line(out, &json!({ "user": name, "deleted": true }))?,
                Format::Text => writeln!(out, "user {name} deleted")?,
            }
        }
        UserCommand::List => {
            let users = admin.list_users().await?;
            match format {
                Format::Json => json_line(
                    out,
                    &json!(
                        users
                            .iter()
                            .map(|u| json!({
                                "user": u.name,
                                "mechanism": u.mechanism,
                                "iterations": u.iterations,
                            }))
                            .collect::<Vec<_>>()
                    ),
                )?,
                Format::Text => {
                    let mut rows = vec![
                        ["USER", "MECHANISM", "ITERATIONS"]
                            .map(String::from)
                            .to_vec(),
                    ];
                    rows.extend(users.iter().map(|u| {
                        vec![
                            u.name.clone(),
                            u.mechanism.clone(),
                            u.iterations.to_string(),
                        ]
                    }));
                    table(out, &rows)?;
                }
            }
        }
        UserCommand::Whoami => {
            let me = admin.who_am_i().await?;
            match format {
                Format::Json => json_line(
                    out,
                    &json!({ "principal": me.principal, "method": me.method }),
                )?,
                Format::Text => writeln!(out, "{} ({})", me.principal, me.method)?,
            }
        }
    }
    Ok(())
}

/// The new password: the first line of standard input, never a flag (flags show in `ps`).
fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
        Failure::usage(format!("cannot read the password from standard input: {e}"))
    })?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(Failure::usage(
            "no password: give it as the first line of standard input",
        ));
    }
    Ok(password)
}
