//! Access control entries and the decision over them: a matching deny wins over any allow,
//! and nothing matching means deny. Super-users bypass ACLs (checked by the caller).

use serde::{Deserialize, Serialize};

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Every operation (in an ACL only).
    All,
    /// Read records or offsets.
    Read,
    /// Produce records, commit offsets.
    Write,
    /// Create topics.
    Create,
    /// Delete topics or groups.
    Delete,
    /// Change configs, partitions or assignments.
    Alter,
    /// See that a resource exists and how it is configured.
    Describe,
    /// Cluster-wide actions (decommissioning nodes, managing users and ACLs).
    ClusterAction,
}

/// What a call acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// The cluster (its name is always `cluster`).
    Cluster,
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name itself (`*` matches every name).
    Literal,
    /// Every name starting with it.
    Prefixed,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Grants the operation.
    Allow,
    /// Refuses it, whatever else allows it.
    Deny,
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    /// `User:NAME`, or `User:*` for every authenticated user.
    pub principal: String,
    /// The client's IP address as text, or `*`.
    pub host: String,
    /// What it may (not) do.
    pub operation: Operation,
    /// On what kind of resource.
    pub resource_type: ResourceType,
    /// How `resource_name` matches.
    pub pattern_type: PatternType,
    /// The name (or prefix).
    pub resource_name: String,
    /// Allow or deny.
    pub permission: Permission,
}

impl std::fmt::Display for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {} from {} {:?} {:?}:{} ({:?})",
            self.permission,
            self.principal,
            self.host,
            self.operation,
            self.resource_type,
            self.resource_name,
            self.pattern_type
        )
    }
}

/// A call to decide: who, from where, doing what, to what.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `User:NAME`.
    pub principal: &'a str,
    /// The client's IP address as text, if known.
    pub host: Option<&'a str>,
    /// The operation.
    pub operation: Operation,
    /// The resource's kind.
    pub resource_type: ResourceType,
    /// The resource's name.
    pub resource_name: &'a str,
}

impl Acl {
    /// Whether this entry speaks about `request` (whatever its permission).
    pub fn matches(&self, request: &Request<'_>) -> bool {
        let principal = self.principal == request.principal || self.principal == "User:*";
        let host = self.host == "*" || Some(self.host.as_str()) == request.host;
        let resource = self.resource_type == request.resource_type
            && match self.pattern_type {
                PatternType::Literal => {
                    self.resource_name == "*" || self.resource_name == request.resource_name
                }
                PatternType::Prefixed => request.resource_name.starts_with(&self.resource_name),
            };
        principal && host && resource && self.grants(request.operation)
    }

    /// Whether this entry's operation covers `operation`: `All` covers everything, and an
    /// allowed Read, Write, Delete or Alter implies Describe (as in Kafka).
    fn grants(&self, operation: Operation) -> bool {
        self.operation == Operation::All
            || self.operation == operation
            || (operation == Operation::Describe
                && self.permission == Permission::Allow
                && matches!(
                    self.operation,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }
}

/// The decision: allowed only if some entry allows it and none denies it.
pub fn allowed<'a>(acls: impl IntoIterator<Item = &'a Acl>, request: &Request<'_>) -> bool {
    let mut allow = false;
    for acl in acls.into_iter().filter(|a| a.matches(request)) {
        match acl.permission {
            Permission::Deny => return false,
            Permission::Allow => allow = true,
        }
    }
    allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(principal: &str, op: Operation, pattern: PatternType, name: &str, p: Permission) -> Acl {
        Acl {
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            resource_type: ResourceType::Topic,
            pattern_type: pattern,
            resource_name: name.into(),
            permission: p,
        }
    }

    fn write(principal: &'static str, topic: &'static str) -> Request<'static> {
        Request {
            principal,
            host: Some("10.0.0.1"),
            operation: Operation::Write,
            resource_type: ResourceType::Topic,
            resource_name: topic,
        }
    }

    #[test]
    fn deny_wins_nothing_means_deny_and_prefixes_match_starts() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        assert!(!allowed(&[], &write("User:alice", "orders")));
        let acls = [
            acl("User:alice", Write, Prefixed, "ord", Allow),
            acl("User:alice", Write, Literal, "orders-secret", Deny),
        ];
        assert!(allowed(&acls, &write("User:alice", "orders")));
        assert!(!allowed(&acls, &write("User:alice", "orders-secret")));
        assert!(!allowed(&acls, &write("User:bob", "orders")));
        assert!(!allowed(&acls, &write("User:alice", "payments")));
        // Describe is implied by an allowed Write, not by a Deny.
        let describe = Request {
            operation: Describe,
            ..write("User:alice", "orders")
        };
        assert!(allowed(&acls, &describe));
        let everyone = [acl("User:*", All, Literal, "*", Allow)];
        assert!(allowed(&everyone, &write("User:carol", "x")));
    }

    /// KAFKA-14435: Kafka's KRaft authorizer let a principal with no ACL of its own through
    /// a resource that had ACLs for others (with `allow.everyone.if.no.acl.found`). Here no
    /// "no ACL found" fallback exists: someone else's entries, allow or deny, literal or
    /// prefixed, never speak for another principal.
    #[test]
    fn kafka_14435_acls_for_others_do_not_admit_a_principal_without_its_own() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        let others = [
            acl("User:alice", Write, Literal, "orders", Allow),
            acl("User:alice", All, Prefixed, "ord", Allow),
            acl("User:carol", Write, Prefixed, "orders", Deny),
        ];
        // Carol's deny is carol's: alice's own allow still admits her.
        assert!(allowed(&others, &write("User:alice", "orders")));
        assert!(!allowed(&others, &write("User:bob", "orders")));
        assert!(!allowed(&others, &write("User:bob", "ord")));
        let read = Request {
            operation: Read,
            ..write("User:bob", "orders")
        };
        assert!(!allowed(&others, &read));
        assert!(!allowed(&others, &write("User:carol", "orders")));
    }

    /// The reference: the rule written as plainly as possible.
    fn naive(acls: &[Acl], r: &Request<'_>) -> bool {
        let speaks: Vec<&Acl> = acls
            .iter()
            .filter(|a| {
                (a.principal == r.principal || a.principal == "User:*")
                    && (a.host == "*" || Some(a.host.as_str()) == r.host)
                    && a.resource_type == r.resource_type
                    && (if a.pattern_type == PatternType::Literal {
                        a.resource_name == "*" || a.resource_name == r.resource_name
                    } else {
                        r.resource_name.starts_with(a.resource_name.as_str())
                    })
                    && (a.operation == Operation::All
                        || a.operation == r.operation
                        || (r.operation == Operation::Describe
                            && a.permission == Permission::Allow
                            && [
                                Operation::Read,
                                Operation::Write,
                                Operation::Delete,
                                Operation::Alter,
                            ]
                            .contains(&a.operation)))
            })
            .collect();
        !speaks.iter().any(|a| a.permission == Permission::Deny)
            && speaks.iter().any(|a| a.permission == Permission::Allow)
    }

    fn arb_acl() -> impl Strategy<Value = Acl> {
        (
            prop::sample::select(vec!["User:a", "User:b", "User:*"]),
            prop::sample::select(vec!["*", "10.0.0.1", "10.0.0.2"]),
            prop::sample::select(vec![
                Operation::All,
                Operation::Read,
                Operation::Write,
                Operation::Describe,
                Operation::Delete,
            ]),
            prop::sample::select(vec![ResourceType::Topic, ResourceType::Group]),
            prop::sample::select(vec![PatternType::Literal, PatternType::Prefixed]),
            prop::sample::select(vec!["*", "t", "to", "top", "g"]),
            prop::sample::select(vec![Permission::Allow, Permission::Deny]),
        )
            .prop_map(
                |(principal, host, operation, resource_type, pattern_type, name, permission)| Acl {
                    principal: principal.into(),
                    host: host.into(),
                    operation,
                    resource_type,
                    pattern_type,
                    resource_name: name.into(),
                    permission,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn the_authorizer_agrees_with_a_naive_reference(
            acls in prop::collection::vec(arb_acl(), 0..8),
            principal in prop::sample::select(vec!["User:a", "User:b"]),
            host in prop::sample::select(vec!["10.0.0.1", "10.0.0.2"]),
            operation in prop::sample::select(vec![Operation::Read, Operation::Write, Operation::Describe, Operation::Delete]),
            resource_type in prop::sample::select(vec![ResourceType::Topic, ResourceType::Group]),
            name in prop::sample::select(vec!["t", "top", "topic", "g", "*"]),
        ) {
            let request = Request { principal, host: Some(host), operation, resource_type, resource_name: name };
            prop_assert_eq!(allowed(&acls, &request), naive(&acls, &request));
        }
    }
}
