//! What makes several brokers one cluster: each node's durable identity, the secret every
//! internal call proves, controller membership and node registration, forwarding metadata
//! changes to the controller's leader, and where new replicas go.

pub mod forward;
pub mod fresh_start;
pub mod identity;
pub mod internal_auth;
pub mod membership;
pub mod placement;
pub mod reassignment;
