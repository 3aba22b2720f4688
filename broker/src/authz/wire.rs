//! ACLs on the wire: enumerations as their upper-case names, as the CLI prints them.

use sluice_protocol::v1::AclEntry;

use super::acl::{Acl, Operation, PatternType, Permission, ResourceType};
use super::rules::CLUSTER;
use crate::auth::session::USER_NAME_BYTES_MAX;

const OPERATIONS: [(Operation, &str); 8] = [
    (Operation::All, "ALL"),
    (Operation::Read, "READ"),
    (Operation::Write, "WRITE"),
    (Operation::Create, "CREATE"),
    (Operation::Delete, "DELETE"),
    (Operation::Alter, "ALTER"),
    (Operation::Describe, "DESCRIBE"),
    (Operation::ClusterAction, "CLUSTER_ACTION"),
];
const RESOURCES: [(ResourceType, &str); 3] = [
    (ResourceType::Topic, "TOPIC"),
    (ResourceType::Group, "GROUP"),
    (ResourceType::Cluster, "CLUSTER"),
];
const PATTERNS: [(PatternType, &str); 2] = [
    (PatternType::Literal, "LITERAL"),
    (PatternType::Prefixed, "PREFIXED"),
];
const PERMISSIONS: [(Permission, &str); 2] =
    [(Permission::Allow, "ALLOW"), (Permission::Deny, "DENY")];

fn parse<T: Copy>(table: &[(T, &str)], what: &str, text: &str) -> Result<T, String> {
    table
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(text))
        .map(|(value, _)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
            format!("{what} {text:?} is not one of {}", names.join(", "))
        })
}

fn name<T: PartialEq>(table: &[(T, &'static str)], value: &T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| v == value)
        .map_or("?", |(_, n)| n)
}

impl Acl {
    /// An entry from the wire, checked: known names, a `User:` principal, a resource name.
    pub fn from_entry(e: &AclEntry) -> Result<Acl, String> {
        let principal_ok = e
            .principal
            .strip_prefix("User:")
            .is_some_and(|n| !n.is_empty() && n.len() <= USER_NAME_BYTES_MAX);
        if !principal_ok {
            return Err(format!(
                "principal {:?} is not User:NAME or User:*",
                e.principal
            ));
        }
        // Stored as the authorizer compares: canonical text (an IPv4-mapped IPv6 address
        // as IPv4, IPv6 in its short lower-case form).
        let host = match e.host.as_str() {
            "" | "*" => "*".to_string(),
            text => text
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.to_canonical().to_string())
                .map_err(|_| format!("host {text:?} is not an IP address or *"))?,
        };
        let resource_type = parse(&RESOURCES, "resource type", &e.resource_type)?;
        let resource_name = match resource_type {
            ResourceType::Cluster => CLUSTER.to_string(),
            _ if e.resource_name.is_empty() || e.resource_name.len() > 255 => {
                return Err("a resource name is 1 to 255 bytes".into());
            }
            _ => e.resource_name.clone(),
        };
        Ok(Acl {
            principal: e.principal.clone(),
            host,
            operation: parse(&OPERATIONS, "operation", &e.operation)?,
            resource_type,
            pattern_type: if e.pattern_type.is_empty() {
                PatternType::Literal
            } else {
                parse(&PATTERNS, "pattern type", &e.pattern_type)?
            },
            resource_name,
            permission: parse(&PERMISSIONS, "permission", &e.permission)?,
        })
    }

    /// The entry as it travels.
    pub fn to_entry(&self) -> AclEntry {
        AclEntry {
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: name(&OPERATIONS, &self.operation).into(),
            resource_type: name(&RESOURCES, &self.resource_type).into(),
            pattern_type: name(&PATTERNS, &self.pattern_type).into(),
            resource_name: self.resource_name.clone(),
            permission: name(&PERMISSIONS, &self.permission).into(),
        }
    }
}
