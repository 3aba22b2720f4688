//! Proof of the cluster secret on every internal call. The internal port carries Raft: one
//! forged Vote deposes a leader and one forged AppendEntries injects records, so a caller
//! without the secret is refused by an interceptor, before its request body is decoded.
//! Calls also name the caller's cluster, so a node started on another cluster's data is
//! refused instead of voting in this one.

use std::sync::{Arc, RwLock};

use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::identity::ClusterId;

/// Binary metadata key carrying the secret.
pub const SECRET_KEY: &str = "sluice-cluster-secret-bin";
/// Metadata key carrying the caller's cluster id, once it has one.
pub const CLUSTER_ID_KEY: &str = "sluice-cluster-id";

/// The secret and the cluster id this node proves and checks.
#[derive(Clone)]
pub struct ClusterAuth {
    secret: Arc<[u8]>,
    cluster_id: Arc<RwLock<Option<ClusterId>>>,
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAuth")
            .field("cluster_id", &self.cluster_id())
            .finish_non_exhaustive()
    }
}

impl ClusterAuth {
    /// Auth with `secret`, and the cluster id if the data dir knows it.
    pub fn new(secret: Arc<[u8]>, cluster_id: Option<ClusterId>) -> Self {
        Self {
            secret,
            cluster_id: Arc::new(RwLock::new(cluster_id)),
        }
    }

    /// The cluster this node belongs to, once known.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        *self.cluster_id.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the cluster id learnt from the controller.
    pub fn set_cluster_id(&self, id: ClusterId) {
        *self.cluster_id.write().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    /// Checks an incoming call's proof.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get_bin(SECRET_KEY)
            .and_then(|v| v.to_bytes().ok());
        let proven = presented.is_some_and(|p| constant_time_eq(&p, &self.secret));
        if !proven {
            return Err(Status::unauthenticated(
                "internal calls must prove the cluster secret",
            ));
        }
        let theirs = request
            .metadata()
            .get(CLUSTER_ID_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ClusterId::parse);
        if let (Some(theirs), Some(ours)) = (theirs, self.cluster_id())
            && theirs != ours
        {
            return Err(Status::failed_precondition(format!(
                "the caller belongs to cluster {theirs}, this node to cluster {ours}"
            )));
        }
        Ok(())
    }

    /// Adds this node's proof to an outgoing call.
    pub fn stamp<T>(&self, request: &mut Request<T>) {
        let metadata = request.metadata_mut();
        metadata.insert_bin(SECRET_KEY, BinaryMetadataValue::from_bytes(&self.secret));
        if let Some(id) = self.cluster_id()
            && let Ok(value) = AsciiMetadataValue::try_from(id.to_string())
        {
            metadata.insert(CLUSTER_ID_KEY, value);
        }
    }
}

/// Equality whose time depends on the lengths only, never on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// The server side: refuses unproven calls.
#[derive(Clone, Debug)]
pub struct RequireSecret(pub ClusterAuth);

impl Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.check(&request)?;
        Ok(request)
    }
}

/// The client side: proves the secret on every call (a single node has none to prove).
#[derive(Clone, Debug)]
pub struct ProveSecret(pub Option<ClusterAuth>);

impl Interceptor for ProveSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(auth) = &self.0 {
            auth.stamp(&mut request);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_of_this_cluster_passes() {
        let secret: Arc<[u8]> = Arc::from(&b"0123456789abcdef"[..]);
        let ours = ClusterId(7);
        let server = ClusterAuth::new(Arc::clone(&secret), Some(ours));
        let mut request = Request::new(());
        assert_eq!(
            server.check(&request).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        ClusterAuth::new(Arc::from(&b"0123456789abcdeF"[..]), None).stamp(&mut request);
        assert!(server.check(&request).is_err(), "a wrong secret");
        let mut request = Request::new(());
        ClusterAuth::new(Arc::clone(&secret), None).stamp(&mut request);
        assert!(
            server.check(&request).is_ok(),
            "a new node without a cluster id"
        );
        let mut request = Request::new(());
        ClusterAuth::new(Arc::clone(&secret), Some(ClusterId(8))).stamp(&mut request);
        assert_eq!(
            server.check(&request).map_err(|s| s.code()),
            Err(tonic::Code::FailedPrecondition)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"\xff"));
    }
}
