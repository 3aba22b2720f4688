//! The authorization rule of every RPC in the protos. A test enumerates the methods from the
//! compiled descriptors and fails if one has no rule here (TESTPLAN T23).

use super::acl::{Operation, ResourceType};

/// How a method is authorized once the authorizer is on (`--require-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, even unauthenticated: where sessions begin.
    Public,
    /// Any authenticated principal (cluster metadata that every client needs to route).
    Authenticated,
    /// The operation on the resource the request names.
    On(Operation, ResourceType),
    /// A listing, filtered to the resources the principal may do the operation on.
    Filtered(Operation, ResourceType),
    /// Super-users only (`--superuser`): users and ACLs, so no ACL can hand out the power
    /// to rewrite ACLs or a super-user's password.
    SuperUser,
    /// Brokers only: the internal port, authenticated by the cluster secret (and mutual TLS).
    Broker,
}

/// The name the cluster resource always has.
pub const CLUSTER: &str = "cluster";

/// Every method, by its full gRPC path, with its rule.
pub const RULES: &[(&str, Rule)] = &[
    ("/sluice.v1.Producer/InitProducerId", Rule::Authenticated),
    (
        "/sluice.v1.Producer/Produce",
        Rule::On(Operation::Write, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Producer/ProduceStream",
        Rule::On(Operation::Write, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Consumer/Fetch",
        Rule::On(Operation::Read, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Consumer/Subscribe",
        Rule::On(Operation::Read, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Consumer/ListOffsets",
        Rule::On(Operation::Describe, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Admin/CreateTopic",
        Rule::On(Operation::Create, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Admin/DeleteTopic",
        Rule::On(Operation::Delete, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Admin/ListTopics",
        Rule::Filtered(Operation::Describe, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Admin/DescribeTopic",
        Rule::On(Operation::Describe, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Admin/AlterTopicConfig",
        Rule::On(Operation::Alter, ResourceType::Topic),
    ),
    (
        "/sluice.v1.Admin/AddPartitions",
        Rule::On(Operation::Alter, ResourceType::Topic),
    ),
    ("/sluice.v1.Admin/DescribeCluster", Rule::Authenticated),
    (
        "/sluice.v1.Admin/ReassignPartition",
        Rule::On(Operation::Alter, ResourceType::Cluster),
    ),
    (
        "/sluice.v1.Admin/DecommissionNode",
        Rule::On(Operation::ClusterAction, ResourceType::Cluster),
    ),
    (
        "/sluice.v1.ConsumerGroups/FindCoordinator",
        Rule::On(Operation::Describe, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/Heartbeat",
        Rule::On(Operation::Read, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/CommitOffsets",
        Rule::On(Operation::Read, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/FetchOffsets",
        Rule::On(Operation::Describe, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/ListGroups",
        Rule::Filtered(Operation::Describe, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/DescribeGroup",
        Rule::On(Operation::Describe, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/ResetOffsets",
        Rule::On(Operation::Read, ResourceType::Group),
    ),
    (
        "/sluice.v1.ConsumerGroups/DeleteGroup",
        Rule::On(Operation::Delete, ResourceType::Group),
    ),
    ("/sluice.v1.Auth/ScramStart", Rule::Public),
    ("/sluice.v1.Auth/ScramFinish", Rule::Public),
    ("/sluice.v1.Auth/WhoAmI", Rule::Public),
    ("/sluice.v1.Auth/UpsertUser", Rule::SuperUser),
    ("/sluice.v1.Auth/DeleteUser", Rule::SuperUser),
    ("/sluice.v1.Auth/ListUsers", Rule::SuperUser),
    ("/sluice.v1.Auth/CreateAcls", Rule::SuperUser),
    ("/sluice.v1.Auth/DeleteAcls", Rule::SuperUser),
    ("/sluice.v1.Auth/ListAcls", Rule::SuperUser),
    ("/sluice.v1.Auth/SetQuota", Rule::SuperUser),
    ("/sluice.v1.Auth/DeleteQuota", Rule::SuperUser),
    ("/sluice.v1.Auth/ListQuotas", Rule::SuperUser),
    ("/sluice.internal.v1.Raft/AppendEntries", Rule::Broker),
    ("/sluice.internal.v1.Raft/Vote", Rule::Broker),
    ("/sluice.internal.v1.Raft/InstallSnapshot", Rule::Broker),
    (
        "/sluice.internal.v1.Raft/ForwardControllerCommand",
        Rule::Broker,
    ),
    ("/sluice.internal.v1.Raft/Ping", Rule::Broker),
];

/// The rule of the method at `path` (`/package.Service/Method`).
pub fn rule_for(path: &str) -> Option<Rule> {
    RULES.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

/// The rule a handler is checked by; a method missing from [`RULES`] is a build-time bug
/// (the coverage test fails), and is denied here.
pub fn rule(path: &str) -> Rule {
    rule_for(path).unwrap_or(Rule::Broker)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn every_method_in_the_protos_has_a_rule_and_every_rule_a_method() {
        let set = prost_types::FileDescriptorSet::decode(sluice_protocol::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors");
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert!(methods.len() >= 30, "{methods:?}");
        let missing: Vec<&String> = methods.iter().filter(|m| rule_for(m).is_none()).collect();
        assert!(
            missing.is_empty(),
            "methods without an authorization rule: {missing:?}"
        );
        let stale: Vec<&str> = RULES
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !methods.iter().any(|m| m == p))
            .collect();
        assert!(
            stale.is_empty(),
            "rules for methods that do not exist: {stale:?}"
        );
    }
}
