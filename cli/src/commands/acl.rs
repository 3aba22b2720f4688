//! `sluice acl add|remove|list`.

use std::io::Write;

use serde_json::json;
use sluice_client::{AclEntry, Client};

use crate::args::{AclArgs, AclCommand, Format};
use crate::failure::Failure;
use crate::output::{json_line, table};

/// Runs an ACL command.
pub async fn run(
    client: &Client,
    command: AclCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let admin = client.admin();
    match command {
        AclCommand::Add(args) => {
            admin.create_acls(vec![entry(&args)?]).await?;
            match format {
                Format::Json => json_line(out, &json!({ "added": entry_json(&entry(&args)?) }))?,
                Format::Text => writeln!(out, "ACL added")?,
            }
        }
        AclCommand::Remove(args) => {
            let deleted = admin.delete_acls(vec![entry(&args)?]).await?;
            match format {
                Format::Json => json_line(out, &json!({ "deleted": deleted }))?,
                Format::Text => writeln!(out, "{deleted} ACL(s) removed")?,
            }
        }
        AclCommand::List => {
            let acls = admin.list_acls().await?;
            match format {
                Format::Json => {
                    json_line(out, &json!(acls.iter().map(entry_json).collect::<Vec<_>>()))?
                }
                Format::Text => {
                    let mut rows = vec![
                        [
                            "PRINCIPAL",
                            "HOST",
                            "OPERATION",
                            "RESOURCE",
                            "PATTERN",
                            "NAME",
                            "PERMISSION",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ];
                    rows.extend(acls.iter().map(|a| {
                        vec![
                            a.principal.clone(),
                            a.host.clone(),
                            a.operation.clone(),
                            a.resource_type.clone(),
                            a.pattern_type.clone(),
                            a.resource_name.clone(),
                            a.permission.clone(),
                        ]
                    }));
                    table(out, &rows)?;
                }
            }
        }
    }
    Ok(())
}

fn entry(args: &AclArgs) -> Result<AclEntry, Failure> {
    let (resource_type, resource_name) = match (&args.topic, &args.group, args.cluster) {
        (Some(t), None, false) => ("TOPIC", t.clone()),
        (None, Some(g), false) => ("GROUP", g.clone()),
        (None, None, true) => ("CLUSTER", "cluster".to_string()),
        _ => return Err(Failure::usage("give one of --topic, --group or --cluster")),
    };
    Ok(AclEntry {
        principal: args.principal.clone(),
        host: args.host.clone(),
        operation: args.operation.to_ascii_uppercase(),
        resource_type: resource_type.into(),
        pattern_type: if args.prefixed { "PREFIXED" } else { "LITERAL" }.into(),
        resource_name,
        permission: if args.deny { "DENY" } else { "ALLOW" }.into(),
    })
}

fn entry_json(a: &AclEntry) -> serde_json::Value {
    json!({
        "principal": a.principal,
        "host": a.host,
        "operation": a.operation,
        "resource_type": a.resource_type,
        "pattern_type": a.pattern_type,
        "resource_name": a.resource_name,
        "permission": a.permission,
    })
}
